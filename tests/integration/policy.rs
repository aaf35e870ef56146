//! Policy files against real guests: each field a file sets is enforced on a
//! guest's calls (capabilities, budgets, log, rate limits, breach and
//! elevation rules, grants), and a file the host cannot enforce is refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ahv_core::event::{EventKind, EventPayload, EventQuery};
use ahv_core::{FakeClock, Ring, SessionId};
use ahv_governance::actions::builtin;
use ahv_hypervisor::{Hypervisor, HypervisorError, JoinRequest};
use ahv_runtime::{AgentError, TrapCause};
use ahv_security::policy::{Policy, PolicyFile};

use crate::cache_dir;
use crate::sessions::{Hv, err, id, ok};

/// The example policy the docs show.
pub fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/policy.example.toml")
}

fn policy(text: &str) -> Policy {
    PolicyFile::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A hypervisor with the built-in actions and this policy.
fn hv(text: &str) -> Hv {
    let p = policy(text);
    Hv::with(move |b| b.actions(builtin::registry()).governance_policy(p))
}

fn events(h: &Hv, s: &SessionId, kind: EventKind) -> Vec<EventPayload> {
    h.hv.events()
        .query(&EventQuery::default().session(s.clone()).kind(kind))
        .into_iter()
        .map(|e| e.payload)
        .collect()
}

fn trap(r: Result<ahv_runtime::RunOutput, HypervisorError>) -> TrapCause {
    match r {
        Err(HypervisorError::Agent(AgentError::Trapped { cause, .. })) => cause,
        other => panic!("expected a trap, got {other:?}"),
    }
}

/// Ring 2 without `locks`.
const NO_LOCKS_AT_2: &str = r#"
[rings.standard]
capabilities = ["context", "log", "vfs-read", "state-read", "elevation", "vfs-write", "state-write", "actions"]
"#;

#[tokio::test]
async fn a_ring_narrowed_by_the_file_makes_a_guest_s_lock_call_a_breach() {
    for (text, narrowed) in [("", false), (NO_LOCKS_AT_2, true)] {
        let h = hv(text);
        let s = h.session();
        assert_eq!(
            h.join(&s, "did:test:l", 0.8, ahv_agents::SCRIPTED).await,
            Ring::Standard
        );
        h.hv.activate_session(&s).unwrap();
        let r =
            h.hv.run_agent(&s, &id("did:test:l"), "lock key:k write 0")
                .await;
        if narrowed {
            let TrapCause::RingBreach(b) = trap(r) else {
                panic!("not a breach")
            };
            assert_eq!(
                (b.ring, b.capability.interface(), b.function.as_str()),
                (Ring::Standard, "locks", "acquire")
            );
            assert_eq!(events(&h, &s, EventKind::RingBreachDetected).len(), 1);
        } else {
            let out = r.unwrap().result.unwrap();
            ok(&out, "lock key:k write 0");
        }
    }
}

#[tokio::test]
async fn a_fuel_budget_from_the_file_stops_a_spinning_guest() {
    let h = hv("[rings.standard]\nfuel_per_call = 20_000_000\n");
    let s = h.session();
    h.join(&s, "did:test:f", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let cause = trap(h.hv.run_agent(&s, &id("did:test:f"), "spin").await);
    assert_eq!(cause, TrapCause::OutOfFuel { limit: 20_000_000 }, "{cause}");
}

/// Calls of one agent run one at a time, and a call waits for the instance
/// at most its ring's deadline (here 1 s): behind a call that spins to its
/// deadline and one queued before it, a third gives up as `Busy` instead of
/// waiting (and holding its input) without a bound. The second, queued
/// first, still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_a_busy_instance_at_most_its_ring_s_deadline() {
    let h = hv("[rings.standard]\ndeadline_ms = 1000\nfuel_per_call = 100_000_000_000\n");
    let s = h.session();
    h.join(&s, "did:test:busy", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let call = |script: &'static str| {
        let (hv, s) = (h.hv.clone(), s.clone());
        tokio::spawn(async move { hv.run_agent(&s, &id("did:test:busy"), script).await })
    };
    let first = call("spin");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = call("spin");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = call("ring");
    let bound = Duration::from_secs(30);
    let third = tokio::time::timeout(bound, third)
        .await
        .expect("the third call ended within 30 s")
        .expect("the third call's task ended");
    assert!(
        matches!(&third, Err(HypervisorError::Busy { waited, .. }) if *waited == Duration::from_secs(1)),
        "{third:?}"
    );
    for (name, c) in [("first", first), ("second", second)] {
        let r = tokio::time::timeout(bound, c)
            .await
            .unwrap_or_else(|_| panic!("the {name} call ended within 30 s"))
            .expect("the call's task ended");
        assert!(
            matches!(trap(r), TrapCause::DeadlineExceeded(_)),
            "the {name} call ran to its deadline"
        );
    }
}

#[tokio::test]
async fn log_lines_from_the_file_truncate_a_guest_s_log() {
    let h = hv("[rings.standard]\nlog_lines = 3\n");
    let s = h.session();
    h.join(&s, "did:test:log", 0.8, ahv_agents::ABUSER).await;
    h.join(&s, "did:test:log3", 0.3, ahv_agents::ABUSER).await;
    h.hv.activate_session(&s).unwrap();
    let out =
        h.hv.run_agent(&s, &id("did:test:log"), "log-lines:10")
            .await
            .unwrap();
    assert_eq!(out.result.as_deref(), Ok("logged 10 empty lines"));
    assert_eq!((out.logs.len(), out.dropped_log_lines), (4, 7));
    assert_eq!(
        out.logs[3].message,
        "[ahv] 7 log line(s) dropped: the log budget is 3 lines and 262144 bytes per call"
    );
    // Ring 3 keeps the default budget.
    let out =
        h.hv.run_agent(&s, &id("did:test:log3"), "log-lines:10")
            .await
            .unwrap();
    assert_eq!((out.logs.len(), out.dropped_log_lines), (10, 0));
}

#[tokio::test]
async fn rate_limits_from_the_file_refuse_the_third_write() {
    let h = hv("[rate_limits.standard]\nchange = { rate_per_sec = 0.0, burst = 2 }\n");
    let s = h.session();
    h.join(&s, "did:test:r", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let out = h
        .script(&s, "did:test:r", "write a x\nwrite b x\nwrite c x\nread a")
        .await;
    ok(&out, "write a x");
    ok(&out, "write b x");
    err(&out, "write c x", "rate-limited");
    assert_eq!(ok(&out, "read a"), "x", "reads have their own bucket");
    assert_eq!(events(&h, &s, EventKind::SecurityRateLimited).len(), 1);
}

#[tokio::test]
async fn a_breach_rule_from_the_file_readmits_the_guest_at_ring_3() {
    let h = hv("[breach.rules.standard]\naction = \"readmit\"\nring = \"sandbox\"\n");
    let s = h.session();
    h.join(&s, "did:test:b", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let cause = trap(
        h.hv.run_agent(&s, &id("did:test:b"), "effect notify.send hi")
            .await,
    );
    assert!(matches!(cause, TrapCause::RingBreach(_)), "{cause}");
    assert_eq!(
        h.hv.ring(&s, &id("did:test:b")).unwrap(),
        Ring::Sandbox,
        "readmitted, not expelled (the default)"
    );
    assert_eq!(ok(&h.script(&s, "did:test:b", "ring").await, "ring"), "3");
}

#[tokio::test]
async fn elevation_rules_from_the_file_cap_the_ttl() {
    let clock = FakeClock::new();
    let c = clock.clone();
    let p = policy("[elevation]\ndefault_ttl_secs = 30\nmax_ttl_secs = 60\n");
    let h = Hv::with(move |b| b.clock(Arc::new(c)).governance_policy(p));
    let s = h.session();
    h.join(&s, "did:test:e", 0.55, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let out = h
        .script(&s, "did:test:e", "elevate 2 600 write the report")
        .await;
    assert_eq!(ok(&out, "elevate 2 600 write the report"), "ring 2");
    assert!(matches!(
        &events(&h, &s, EventKind::RingElevated)[..],
        [EventPayload::RingElevated { ttl, .. }] if *ttl == Duration::from_secs(60)
    ));
    clock.advance(Duration::from_secs(60));
    assert_eq!(ok(&h.script(&s, "did:test:e", "ring").await, "ring"), "3");
}

#[tokio::test]
async fn a_listed_agent_gets_exactly_its_grants_and_others_get_every_action() {
    let h = hv(r#"
        [agents."did:test:granted"]
        effects = ["notify.send"]
        [agents."did:test:root"]
        actions = ["note.append"]
    "#);
    let s = h.session();
    for agent in ["did:test:granted", "did:test:free"] {
        h.join(&s, agent, 0.8, ahv_agents::ESCALATOR).await;
    }
    let root = h.hv.load(ahv_agents::SCRIPTED).unwrap();
    h.hv.join_session(
        &s,
        JoinRequest::new(id("did:test:root"), 0.9)
            .component(root)
            .root("did:test:operator"),
    )
    .await
    .unwrap();
    h.hv.activate_session(&s).unwrap();

    let refused =
        h.hv.run_agent(&s, &id("did:test:granted"), "action:hi")
            .await
            .unwrap()
            .result
            .unwrap_err();
    assert!(
        refused.starts_with("action refused: Error::UnknownAction("),
        "{refused}"
    );
    let ran =
        h.hv.run_agent(&s, &id("did:test:free"), "action:hi")
            .await
            .unwrap()
            .result
            .unwrap();
    assert!(ran.starts_with("action ran:"), "{ran}");
    // Ring 0 may call `effects`, but its grants name no effect.
    let out = h.script(&s, "did:test:root", "effect notify.send hi").await;
    err(&out, "effect notify.send hi", "unknown-action");
}

#[tokio::test]
async fn a_grant_of_an_unregistered_action_or_a_bad_file_is_refused_at_build() {
    let p = policy("[agents.\"did:test:a\"]\nactions = [\"note.apend\"]\n");
    let state = tempfile::tempdir().unwrap();
    let r = Hypervisor::builder()
        .state_dir(state.path())
        .actions(builtin::registry())
        .governance_policy(p)
        .build();
    assert!(
        matches!(&r, Err(HypervisorError::Grant { agent, .. }) if agent.as_str() == "did:test:a"),
        "{r:?}"
    );

    let bad = state.path().join("bad.toml");
    std::fs::write(&bad, "[rings.sandbox]\ncapabilities = [\"vfs-write\"]\n").unwrap();
    let r = Hypervisor::builder()
        .state_dir(state.path())
        .policy_file(&bad)
        .build();
    let e = r.unwrap_err();
    assert!(matches!(e, HypervisorError::Policy(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("bad.toml")
            && msg.contains("rings.sandbox.capabilities")
            && msg.contains("widening"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_example_policy_loads_and_a_hypervisor_runs_under_it() {
    let p = PolicyFile::load(example_path()).unwrap();
    assert!(
        !p.rings
            .limits(Ring::Standard)
            .capabilities
            .contains(ahv_core::Capability::Locks)
    );
    assert_eq!(p.rings.limits(Ring::Sandbox).log_lines, 200);
    assert_eq!(p.grants.len(), 2);
    let state = tempfile::tempdir().unwrap();
    let hv = Hypervisor::builder()
        .state_dir(state.path())
        .cache_dir(cache_dir())
        .actions(builtin::registry())
        .policy_file(example_path())
        .build()
        .unwrap();
    assert_eq!(hv.runtime().policy(), &p.rings);
    let s = hv
        .create_session(Default::default(), id("did:test:operator"))
        .unwrap();
    let c = hv.load(ahv_agents::SCRIPTED).unwrap();
    hv.join_session(
        &s,
        JoinRequest::new(id("did:example:note-taker"), 0.8).component(c),
    )
    .await
    .unwrap();
    hv.activate_session(&s).unwrap();
    let r = hv
        .run_agent(&s, &id("did:example:note-taker"), "lock key:k write 0")
        .await;
    assert!(
        matches!(
            r,
            Err(HypervisorError::Agent(AgentError::Trapped {
                cause: TrapCause::RingBreach(_),
                ..
            }))
        ),
        "{r:?}"
    );
}
