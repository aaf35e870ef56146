//! Rings that change at run time, with real guests: elevation and its
//! expiry, live demotion, quarantine, rate limits, the breach policies and
//! the breaker, and administration by a ring 0 agent — each through the
//! one gate every governed host call passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::event::{EventKind, EventPayload, EventQuery};
use ahv_core::{FakeClock, Ring, SessionId};
use ahv_governance::actions::builtin;
use ahv_governance::files::Caller;
use ahv_hypervisor::{HypervisorError, JoinRequest};
use ahv_runtime::{AgentError, TrapCause};
use ahv_security::breach::{BreachAction, BreachPolicy, BreachRule, BreachTrigger};
use ahv_security::elevation::{Attestation, Sponsor};
use ed25519_dalek::SigningKey;

use crate::sessions::{Hv, err, id, ok};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fake() -> (Hv, FakeClock) {
    let clock = FakeClock::new();
    let c = clock.clone();
    (Hv::with(move |b| b.clock(Arc::new(c))), clock)
}

fn events(h: &Hv, s: &SessionId, kind: EventKind) -> Vec<EventPayload> {
    h.hv.events()
        .query(&EventQuery::default().session(s.clone()).kind(kind))
        .into_iter()
        .map(|e| e.payload)
        .collect()
}

/// Runs a script that must trap; returns the breach.
async fn breach(h: &Hv, s: &SessionId, agent: &str, script: &str) -> ahv_runtime::RingBreach {
    match h.hv.run_agent(s, &id(agent), script).await {
        Err(HypervisorError::Agent(AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            ..
        })) => b,
        other => panic!("{agent} must breach, got {other:?}"),
    }
}

#[tokio::test]
async fn an_elevated_guest_writes_and_after_the_ttl_the_same_write_is_a_recorded_breach() {
    let (h, clock) = fake();
    let s = h.session();
    // σ 0.55: below the session's 0.60 minimum, so ring 3; enough for ring 2 (≥ 0.50).
    assert_eq!(
        h.join(&s, "did:test:e", 0.55, ahv_agents::SCRIPTED).await,
        Ring::Sandbox
    );
    h.hv.activate_session(&s).unwrap();
    let run =
        h.hv.run_agent(
            &s,
            &id("did:test:e"),
            "elevate 2 60 write the report\nwrite report.txt one\nring\nelevation",
        )
        .await
        .unwrap();
    let out = run.result.unwrap();
    let elevated =
        h.hv.events()
            .query(&EventQuery::default().kind(EventKind::RingElevated));
    assert_eq!(
        elevated[0].trace, run.trace,
        "decided inside the call: its trace id"
    );
    assert_eq!(ok(&out, "elevate 2 60 write the report"), "ring 2");
    ok(&out, "write report.txt one");
    assert_eq!(ok(&out, "ring"), "2");
    assert_eq!(ok(&out, "elevation"), "ring 2");
    assert_eq!(h.hv.ring(&s, &id("did:test:e")).unwrap(), Ring::Standard);

    clock.advance(Duration::from_secs(60));
    let b = breach(&h, &s, "did:test:e", "write report.txt two").await;
    assert_eq!(
        (b.ring, b.capability.interface()),
        (Ring::Sandbox, "vfs-write")
    );
    let file = h.dir(&s).join("files/agents/did:test:e/report.txt");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "one");
    assert_eq!(
        events(&h, &s, EventKind::RingElevationExpired),
        [EventPayload::RingElevationExpired {
            ring: Ring::Standard,
            back_to: Ring::Sandbox
        }],
        "expiry reported exactly once"
    );
    assert_eq!(events(&h, &s, EventKind::RingBreachDetected).len(), 1);
    assert!(matches!(
        &events(&h, &s, EventKind::RingElevated)[..],
        [EventPayload::RingElevated { from: Ring::Sandbox, to: Ring::Standard, ttl, sponsor, .. }]
            if *ttl == Duration::from_secs(60) && sponsor.is_empty()
    ));
}

#[tokio::test]
async fn elevation_rules_hold_against_a_guest_and_ring_1_needs_a_signed_sponsorship() {
    let operator = SigningKey::from_bytes(&[7; 32]);
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let clock = FakeClock::new();
    let c = clock.clone();
    let key = operator.verifying_key();
    let h = Hv::with(move |b| {
        b.clock(Arc::new(c))
            .operator_key(key)
            .actions(builtin::registry())
    });
    let s = h.session();
    h.join(&s, "did:test:low", 0.3, ahv_agents::SCRIPTED).await;
    h.join(&s, "did:test:high", 0.9, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();

    let out = h
        .script(&s, "did:test:low", "elevate 2 0 please\nelevate 0 0 everything\nelevate 3 0 sideways\nelevate 9 0 nonsense")
        .await;
    for c in [
        "elevate 2 0 please",
        "elevate 0 0 everything",
        "elevate 3 0 sideways",
        "elevate 9 0 nonsense",
    ] {
        err(&out, c, "denied");
    }
    assert!(
        out.contains("insufficient") || out.contains("trust"),
        "{out}"
    );

    let sign = |key: &SigningKey, sponsor: Sponsor| {
        Attestation::sign(
            sponsor,
            id("did:test:high"),
            s.clone(),
            Ring::Privileged,
            unix_now() + 600,
            key,
        )
        .to_text()
    };
    let forged = sign(&stranger, Sponsor::Operator);
    let genuine = sign(&operator, Sponsor::Operator);
    let script = format!(
        "elevate 1 0 deploy\nelevate-sponsored 1 0 {forged} deploy\nelevate-sponsored 1 0 garbage.text deploy\n\
         elevate-sponsored 1 7200 {genuine} deploy\nelevate 2 0 again\neffect notify.send hello"
    );
    let out = h.script(&s, "did:test:high", &script).await;
    err(&out, "elevate 1 0 deploy", "denied");
    err(
        &out,
        &format!("elevate-sponsored 1 0 {forged} deploy"),
        "denied",
    );
    err(&out, "elevate-sponsored 1 0 garbage.text deploy", "denied");
    assert_eq!(
        ok(&out, &format!("elevate-sponsored 1 7200 {genuine} deploy")),
        "ring 1"
    );
    err(&out, "elevate 2 0 again", "denied");
    ok(&out, "effect notify.send hello");
    match &events(&h, &s, EventKind::RingElevated)[..] {
        [
            EventPayload::RingElevated {
                to, ttl, sponsor, ..
            },
        ] => {
            assert_eq!(
                (*to, *ttl, sponsor.as_str()),
                (Ring::Privileged, Duration::from_secs(3600), "operator")
            );
        }
        other => panic!("one elevation expected, got {other:?}"),
    }
    // Every request the rules refused is recorded; `elevate 9` is refused
    // before the rules (no such ring) and is not a decision.
    assert_eq!(events(&h, &s, EventKind::RingElevationDenied).len(), 7);
}

#[tokio::test]
async fn a_demotion_between_two_host_calls_of_the_same_run_counts_at_the_next_call() {
    let h = Hv::new();
    let s = h.session();
    assert_eq!(
        h.join(&s, "did:test:d", 0.8, ahv_agents::SCRIPTED).await,
        Ring::Standard
    );
    h.hv.activate_session(&s).unwrap();
    let hv = h.hv.clone();
    let s2 = s.clone();
    let run = tokio::spawn(async move {
        hv.run_agent(
            &s2,
            &id("did:test:d"),
            "write a x\nput ready 1\nawait go\nwrite b y",
        )
        .await
    });
    let core = h.hv.session_core(&s).unwrap();
    let host = id("did:test:host");
    let start = Instant::now();
    while core
        .state_get(Caller::untraced(&host, Ring::Root), "ready")
        .unwrap()
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for the guest's `ready`"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        h.hv.set_trust(&s, &id("did:test:d"), 0.55).unwrap(),
        Ring::Sandbox
    );
    core.state_put(Caller::untraced(&host, Ring::Root), "go", b"1", 0)
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("timed out waiting for the run to end")
        .unwrap();
    match result {
        Err(HypervisorError::Agent(AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            ..
        })) => {
            assert_eq!((b.ring, b.function.as_str()), (Ring::Sandbox, "write"));
        }
        other => panic!("the second write must be a breach, got {other:?}"),
    }
    let mine = h.dir(&s).join("files/agents/did:test:d");
    assert!(mine.join("a").is_file() && !mine.join("b").exists());
    assert_eq!(
        events(&h, &s, EventKind::RingDemoted),
        [EventPayload::RingDemoted {
            from: Ring::Standard,
            to: Ring::Sandbox,
            reason: "trust fell to 0.55".into()
        }]
    );
}

#[tokio::test]
async fn quarantine_refuses_a_guests_writes_until_it_is_released() {
    let h = Hv::new();
    let s = h.session();
    h.join(&s, "did:test:q", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    h.hv.quarantine(
        &s,
        &id("did:test:q"),
        ahv_trust::QuarantineReason::Manual,
        "test",
        None,
    )
    .unwrap();
    let out = h.script(&s, "did:test:q", "write a x\nread a\nring").await;
    err(&out, "write a x", "quarantined");
    err(&out, "read a", "quarantined");
    assert_eq!(ok(&out, "ring"), "2", "context still answers");
    assert!(h.hv.release(&s, &id("did:test:q")).unwrap());
    let out = h.script(&s, "did:test:q", "write a x\nread a").await;
    ok(&out, "write a x");
    assert_eq!(ok(&out, "read a"), "x");
    assert_eq!(
        events(&h, &s, EventKind::LiabilityQuarantineEntered).len(),
        1
    );
    assert_eq!(
        events(&h, &s, EventKind::LiabilityQuarantineReleased).len(),
        1
    );
}

#[tokio::test]
async fn a_guest_gets_40_writes_at_ring_2_then_rate_limited_with_a_retry_after() {
    let (h, clock) = fake();
    let s = h.session();
    h.join(&s, "did:test:r", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let script: Vec<String> = (0..42).map(|n| format!("write f{n} x")).collect();
    let out = h.script(&s, "did:test:r", &script.join("\n")).await;
    for c in &script[..40] {
        ok(&out, c);
    }
    for c in &script[40..] {
        err(&out, c, "rate-limited");
    }
    assert!(
        crate::sessions::line(&out, "write f40 x").ends_with("Error::RateLimited(50)"),
        "20/s: one token every 50 ms:\n{out}"
    );
    let limited = events(&h, &s, EventKind::SecurityRateLimited);
    assert_eq!(
        limited.len(),
        1,
        "one event per run of refusals: {limited:?}"
    );
    clock.advance(Duration::from_millis(50));
    ok(
        &h.script(&s, "did:test:r", "write again x").await,
        "write again x",
    );
}

fn policy(ring: Ring, action: BreachAction, trigger: BreachTrigger) -> BreachPolicy {
    BreachPolicy::default()
        .with_rule(ring, BreachRule { action, trigger })
        .unwrap()
}

#[tokio::test]
async fn each_breach_policy_applies_to_a_real_guest() {
    for (name, action) in [
        ("expel", BreachAction::Expel),
        (
            "readmit",
            BreachAction::Readmit {
                ring: Ring::Sandbox,
            },
        ),
        ("quarantine", BreachAction::Quarantine { secs: 60 }),
        ("kill", BreachAction::Kill),
    ] {
        let p = policy(Ring::Standard, action, BreachTrigger::EveryBreach);
        let h = Hv::with(move |b| b.breach_policy(p));
        let s = h.session();
        let a = id("did:test:p");
        h.join(&s, "did:test:p", 0.8, ahv_agents::SCRIPTED).await;
        h.hv.activate_session(&s).unwrap();
        let b = breach(&h, &s, "did:test:p", "effect notify.send hi").await;
        assert_eq!(b.ring, Ring::Standard, "{name}");
        let member = h.hv.ring(&s, &a);
        match name {
            "expel" | "kill" => {
                let q = |k| {
                    h.hv.events()
                        .query(&EventQuery::default().session(s.clone()).kind(k))
                };
                if name == "expel" {
                    assert_eq!(
                        q(EventKind::SessionLeft)[0].trace,
                        q(EventKind::RingBreachDetected)[0].trace,
                        "the expulsion carries the breaching call's trace"
                    );
                }
                assert!(member.is_err(), "{name}: no longer a participant");
                let killed = events(&h, &s, EventKind::SecurityAgentKilled).len();
                assert_eq!(killed, usize::from(name == "kill"), "{name}");
            }
            "readmit" => {
                assert_eq!(member.unwrap(), Ring::Sandbox);
                let out = h.script(&s, "did:test:p", "read nothing\nring").await;
                assert_eq!(ok(&out, "ring"), "3", "a fresh instance at ring 3");
                assert_eq!(events(&h, &s, EventKind::RingDemoted).len(), 1);
            }
            _ => {
                assert_eq!(member.unwrap(), Ring::Standard);
                let out = h.script(&s, "did:test:p", "write a x").await;
                err(&out, "write a x", "quarantined");
            }
        }
    }
}

#[tokio::test]
async fn the_breaker_trips_on_a_flood_of_breaches_not_on_two() {
    let p = policy(
        Ring::Standard,
        BreachAction::Quarantine { secs: 300 },
        BreachTrigger::BreakerTrip,
    );
    let h = Hv::with(move |b| b.breach_policy(p));
    let s = h.session();
    let a = id("did:test:f");
    h.join(&s, "did:test:f", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    for _ in 0..2 {
        breach(&h, &s, "did:test:f", "effect notify.send hi").await;
    }
    assert!(
        !h.hv.standing(&s, &a).unwrap().is_quarantined(),
        "two breaches do not trip it"
    );
    let out = h.script(&s, "did:test:f", "elevate 1 0 x").await;
    assert!(
        out.contains("took privilege away"),
        "no elevation right after a breach: {out}"
    );
    ok(&h.script(&s, "did:test:f", "write a x").await, "write a x");
    let mut n = 2;
    while !h.hv.standing(&s, &a).unwrap().is_quarantined() {
        assert!(n < 50, "the breaker never tripped");
        breach(&h, &s, "did:test:f", "effect notify.send hi").await;
        n += 1;
    }
    assert!(n > 2);
    assert_eq!(events(&h, &s, EventKind::SecurityBreakerTripped).len(), 1);
    err(
        &h.script(&s, "did:test:f", "write a x").await,
        "write a x",
        "quarantined",
    );
}

#[tokio::test]
async fn a_ring_0_agent_administers_others_and_no_one_else_can() {
    let h = Hv::new();
    let s = h.session();
    let root = h.hv.load(ahv_agents::SCRIPTED).unwrap();
    let ring =
        h.hv.join_session(
            &s,
            JoinRequest::new(id("did:test:root"), 0.9)
                .component(root)
                .root("did:test:operator"),
        )
        .await
        .unwrap();
    assert_eq!(ring, Ring::Root);
    h.join(&s, "did:test:w", 0.8, ahv_agents::SCRIPTED).await;
    h.join(&s, "did:test:x", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();

    let out = h
        .script(&s, "did:test:root", "admin-list\nadmin-quarantine did:test:w 0 misbehaving\nadmin-inspect did:test:w\nadmin-inspect did:test:nobody\nadmin-kill did:test:root myself")
        .await;
    assert_eq!(
        ok(&out, "admin-list"),
        "did:test:root:0,did:test:w:2,did:test:x:2"
    );
    ok(&out, "admin-quarantine did:test:w 0 misbehaving");
    assert_eq!(
        ok(&out, "admin-inspect did:test:w"),
        "base=2 effective=2 quarantined=true"
    );
    err(&out, "admin-inspect did:test:nobody", "not-found");
    err(&out, "admin-kill did:test:root myself", "denied");
    err(
        &h.script(&s, "did:test:w", "write a x").await,
        "write a x",
        "quarantined",
    );

    let out = h
        .script(
            &s,
            "did:test:root",
            "admin-release did:test:w\nadmin-kill did:test:x enough",
        )
        .await;
    assert_eq!(ok(&out, "admin-release did:test:w"), "true");
    ok(&out, "admin-kill did:test:x enough");
    assert!(
        h.hv.ring(&s, &id("did:test:x")).is_err(),
        "killed and removed"
    );
    ok(&h.script(&s, "did:test:w", "write a x").await, "write a x");

    // A ring 2 agent calling admin is a breach, recorded.
    let b = breach(&h, &s, "did:test:w", "admin-kill did:test:root mutiny").await;
    assert_eq!(
        (b.capability.interface(), b.function.as_str()),
        ("admin", "kill")
    );
}

/// A root agent and the `scripted` component offered for spawning.
async fn family(h: &Hv) -> SessionId {
    let s = h.session();
    let c = h.hv.load(ahv_agents::SCRIPTED).unwrap();
    h.hv.offer_component("scripted", c.clone()).unwrap();
    let ring =
        h.hv.join_session(
            &s,
            JoinRequest::new(id("did:test:root"), 0.9)
                .component(c)
                .root("did:test:operator"),
        )
        .await
        .unwrap();
    assert_eq!(ring, Ring::Root);
    h.hv.activate_session(&s).unwrap();
    s
}

#[tokio::test]
async fn children_inherit_a_less_privileged_ring_and_killing_a_parent_kills_them() {
    let h = Hv::new();
    let s = family(&h).await;
    let out = h
        .script(
            &s,
            "did:test:root",
            "spawn scripted\nspawn no-such-component\nchildren",
        )
        .await;
    let child = ok(&out, "spawn scripted");
    assert_eq!(child, "did:test:root:child-0");
    err(&out, "spawn no-such-component", "not-found");
    assert_eq!(ok(&out, "children"), child);
    assert_eq!(
        h.hv.ring(&s, &id(&child)).unwrap(),
        Ring::Privileged,
        "min(0 + 1, 3)"
    );

    // The child (ring 1, depth 1) may not have children of its own by
    // default (ring 1 allows depth 1), and runs under its own ring.
    let out = h
        .script(
            &s,
            "did:test:root",
            &format!("spawn-run {child} ring;spawn scripted;write f x"),
        )
        .await;
    let report = ok(
        &out,
        &format!("spawn-run {child} ring;spawn scripted;write f x"),
    );
    assert!(
        report.starts_with("ring -> ok 1;spawn scripted -> err denied:"),
        "{report}"
    );
    assert!(report.contains("depth 2"), "{report}");
    assert!(report.ends_with("write f x -> ok"), "{report}");
    // Someone else's child is not the caller's.
    h.join(&s, "did:test:other", 0.8, ahv_agents::SCRIPTED)
        .await;
    match h
        .hv
        .run_agent(
            &s,
            &id("did:test:other"),
            &format!("spawn-run {child} ring"),
        )
        .await
    {
        Err(HypervisorError::Agent(AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            ..
        })) => {
            assert_eq!(
                (b.ring, b.capability.interface()),
                (Ring::Standard, "spawn")
            );
        }
        other => panic!("a ring 2 agent calling spawn must breach, got {other:?}"),
    }
    assert_eq!(events(&h, &s, EventKind::AgentSpawned).len(), 1);

    h.hv.kill_agent(&s, &id("did:test:root"), "test").unwrap();
    assert!(
        h.hv.ring(&s, &id(&child)).is_err(),
        "the child is gone with its parent"
    );
    let killed: Vec<_> =
        h.hv.events()
            .query(
                &EventQuery::default()
                    .session(s.clone())
                    .kind(EventKind::SecurityAgentKilled),
            )
            .into_iter()
            .filter_map(|e| e.agent)
            .collect();
    assert_eq!(killed, [id(&child), id("did:test:root")]);
}

#[tokio::test]
async fn the_ring_limits_how_many_children_an_agent_may_have() {
    let mut policy = ahv_core::RingPolicy::default();
    let mut root = policy.limits(Ring::Root).clone();
    root.max_children = 2;
    policy.set_limits(Ring::Root, root).unwrap();
    let h = Hv::with(move |b| b.policy(policy));
    let s = family(&h).await;
    let out = h
        .script(
            &s,
            "did:test:root",
            "spawn scripted\nspawn scripted\nspawn scripted",
        )
        .await;
    assert_eq!(
        out.matches("-> ok did:test:root:child-").count(),
        2,
        "{out}"
    );
    assert!(
        out.lines().nth(2).unwrap().contains("-> err denied:"),
        "{out}"
    );
    assert!(out.contains("2 live children"), "{out}");
    // Stopping one makes room again.
    let out = h
        .script(
            &s,
            "did:test:root",
            "spawn-stop did:test:root:child-0\nspawn scripted\nspawn-stop did:test:nobody",
        )
        .await;
    ok(&out, "spawn-stop did:test:root:child-0");
    assert_eq!(ok(&out, "spawn scripted"), "did:test:root:child-2");
    err(&out, "spawn-stop did:test:nobody", "not-found");
    assert!(h.hv.ring(&s, &id("did:test:root:child-0")).is_err());
}

/// An operator-keyed hypervisor with the built-in actions, one session,
/// and `agent` joined at σ 0.9 (ring 2).
async fn sponsored(agent: &str) -> (Hv, SessionId, SigningKey) {
    let operator = SigningKey::from_bytes(&[7; 32]);
    let key = operator.verifying_key();
    let h = Hv::with(move |b| b.operator_key(key).actions(builtin::registry()));
    let s = h.session();
    h.join(&s, agent, 0.9, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    (h, s, operator)
}

fn attestation(key: &SigningKey, agent: &str, s: &SessionId, expires: u64) -> String {
    Attestation::sign(
        Sponsor::Operator,
        id(agent),
        s.clone(),
        Ring::Privileged,
        expires,
        key,
    )
    .to_text()
}

#[tokio::test]
async fn a_demotion_ends_an_elevation_and_the_agent_cannot_take_it_back() {
    let (h, s, operator) = sponsored("did:test:v").await;
    let att = attestation(&operator, "did:test:v", &s, unix_now() + 600);
    let out = h
        .script(
            &s,
            "did:test:v",
            &format!("elevate-sponsored 1 600 {att} deploy"),
        )
        .await;
    assert_eq!(
        ok(&out, &format!("elevate-sponsored 1 600 {att} deploy")),
        "ring 1"
    );
    h.hv.set_trust(&s, &id("did:test:v"), 0.3).unwrap();
    assert_eq!(
        h.hv.ring(&s, &id("did:test:v")).unwrap(),
        Ring::Sandbox,
        "at once, elevation gone"
    );
    assert!(matches!(
        &events(&h, &s, EventKind::RingElevationRevoked)[..],
        [EventPayload::RingElevationRevoked {
            ring: Ring::Privileged,
            ..
        }]
    ));
    // Trust 0.3 is below ring 2's 0.50 anyway; the cooldown refuses before any rule.
    h.hv.set_trust(&s, &id("did:test:v"), 0.6).unwrap();
    let out = h.script(&s, "did:test:v", "elevate 2 60 again\nring").await;
    err(&out, "elevate 2 60 again", "denied");
    assert!(out.contains("took privilege away"), "{out}");
    assert_eq!(ok(&out, "ring"), "3");
}

#[tokio::test]
async fn a_sponsorship_is_single_use_and_no_longer_lived_than_the_longest_elevation() {
    let (h, s, operator) = sponsored("did:test:u").await;
    let att = attestation(&operator, "did:test:u", &s, unix_now() + 600);
    let long = attestation(&operator, "did:test:u", &s, unix_now() + 7200);
    let script = format!(
        "elevate-sponsored 1 60 {long} deploy\nelevate-sponsored 1 60 {att} deploy\nrelinquish\nelevate-sponsored 1 60 {att} deploy\nring"
    );
    let out = h.script(&s, "did:test:u", &script).await;
    err(
        &out,
        &format!("elevate-sponsored 1 60 {long} deploy"),
        "denied",
    );
    assert!(out.contains("longer than the longest elevation"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].ends_with("-> ok ring 1"), "{out}");
    assert!(lines[2].ends_with("-> ok true"), "{out}");
    assert!(
        lines[3].contains("-> err denied:") && lines[3].contains("already used"),
        "{out}"
    );
    assert_eq!(ok(&out, "ring"), "2");
}

#[tokio::test]
async fn queued_calls_after_a_breach_do_not_count_it_again() {
    let p = policy(
        Ring::Standard,
        BreachAction::Quarantine { secs: 60 },
        BreachTrigger::EveryBreach,
    );
    let h = Hv::with(move |b| b.breach_policy(p));
    let s = h.session();
    h.join(&s, "did:test:z", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let a = id("did:test:z");
    let (r1, r2, r3) = tokio::join!(
        h.hv.run_agent(&s, &a, "effect notify.send hi"),
        h.hv.run_agent(&s, &a, "effect notify.send hi"),
        h.hv.run_agent(&s, &a, "effect notify.send hi"),
    );
    let breaches = [r1, r2, r3]
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(HypervisorError::Agent(AgentError::Trapped {
                    cause: TrapCause::RingBreach(_),
                    ..
                }))
            )
        })
        .count();
    let quarantined = events(&h, &s, EventKind::LiabilityQuarantineEntered).len();
    assert_eq!(
        quarantined, breaches,
        "one consequence per breach, none for calls that found it poisoned"
    );
}

#[tokio::test]
async fn a_parent_that_loses_its_ring_takes_its_children_down_with_it() {
    let h = Hv::new();
    let s = family(&h).await;
    let out = h.script(&s, "did:test:root", "spawn scripted").await;
    let child = ok(&out, "spawn scripted");
    assert_eq!(h.hv.ring(&s, &id(&child)).unwrap(), Ring::Privileged);
    h.hv.demote(&s, &id("did:test:root"), Ring::Standard, "test")
        .unwrap();
    assert_eq!(
        h.hv.ring(&s, &id(&child)).unwrap(),
        Ring::Sandbox,
        "min(2 + 1, 3)"
    );
}

#[tokio::test]
async fn a_quarantined_sponsor_does_not_count_and_a_ring_0_one_does() {
    let h = Hv::new();
    let s = h.session();
    let sponsor_key = SigningKey::from_bytes(&[3; 32]);
    h.hv.join_session(
        &s,
        JoinRequest::new(id("did:test:sponsor"), 0.9).root("did:test:operator"),
    )
    .await
    .unwrap();
    h.hv.register_sponsor_key(id("did:test:sponsor"), sponsor_key.verifying_key());
    h.join(&s, "did:test:a", 0.9, ahv_agents::SCRIPTED).await;
    h.join(&s, "did:test:b", 0.9, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let att = |agent: &str| {
        Attestation::sign(
            Sponsor::Agent(id("did:test:sponsor")),
            id(agent),
            s.clone(),
            Ring::Privileged,
            unix_now() + 600,
            &sponsor_key,
        )
        .to_text()
    };
    let (a, b) = (att("did:test:a"), att("did:test:b"));
    let out = h
        .script(
            &s,
            "did:test:a",
            &format!("elevate-sponsored 1 60 {a} deploy"),
        )
        .await;
    assert_eq!(
        ok(&out, &format!("elevate-sponsored 1 60 {a} deploy")),
        "ring 1"
    );

    h.hv.quarantine(
        &s,
        &id("did:test:sponsor"),
        ahv_trust::QuarantineReason::Manual,
        "test",
        None,
    )
    .unwrap();
    let out = h
        .script(
            &s,
            "did:test:b",
            &format!("elevate-sponsored 1 60 {b} deploy"),
        )
        .await;
    err(
        &out,
        &format!("elevate-sponsored 1 60 {b} deploy"),
        "denied",
    );
    assert_eq!(h.hv.ring(&s, &id("did:test:b")).unwrap(), Ring::Standard);
}
