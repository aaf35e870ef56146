//! Sagas through the `Hypervisor`, with every step inside a real agent (the
//! `scripted` test instrument or the draft → review → publish trio):
//! compensation that restores files and state byte for byte, deadlines and
//! retries, fan-out policies, breaches, escalation, events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahv_core::event::{EventKind, EventPayload, EventQuery};
use ahv_core::{FakeClock, Ring, RingLimits, RingPolicy, SessionId};
use ahv_governance::files::{Caller, FileSpace};
use ahv_governance::session_core::SessionCore;
use ahv_governance::vfs::EntryKind;
use ahv_hypervisor::{Escalation, EscalationHook};
use ahv_saga::{FakeSleeper, FixedJitter, SagaDefinition, SagaState, StepState};

use crate::sessions::{Hv, id};

const SCRIPTED: &[u8] = ahv_agents::SCRIPTED;

/// Every file of the session (both areas of `agents`) and every state key,
/// with the content's SHA-256: what "byte for byte the same" compares.
fn fingerprint(core: &SessionCore, agents: &[&str]) -> Vec<String> {
    fn walk(core: &SessionCore, who: Caller<'_>, dir: &str, out: &mut Vec<String>) {
        for name in core.list(who, dir).unwrap() {
            if dir.is_empty() && name == "shared" {
                continue;
            }
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            match core.stat(who, &path).unwrap().kind {
                EntryKind::Directory => walk(core, who, &path, out),
                EntryKind::File => {
                    let h = core.hash(who, &path).unwrap();
                    out.push(format!("{}:{path} {}", who.agent, hex::encode(h)));
                }
            }
        }
    }
    let mut out = Vec::new();
    let host = id("did:test:host");
    walk(
        core,
        Caller::untraced(&host, Ring::Root),
        "shared",
        &mut out,
    );
    for a in agents {
        let a = id(a);
        walk(core, Caller::untraced(&a, Ring::Root), "", &mut out);
    }
    for key in core.state().keys(&host, "").unwrap() {
        let v = core
            .state()
            .peek(&key)
            .map(|v| hex::encode(ahv_governance::files::sha256(&v.value)));
        out.push(format!("state {key} {v:?}"));
    }
    out.sort();
    out
}

/// A session with `scripted` agents joined at σ 0.8 (ring 2) and activated.
async fn scripted_session(hv: &Hv, agents: &[(&str, f64)]) -> SessionId {
    let s = hv.session();
    for (a, sigma) in agents {
        hv.join(&s, a, *sigma, SCRIPTED).await;
    }
    hv.hv.activate_session(&s).unwrap();
    s
}

fn kinds(hv: &Hv, s: &SessionId) -> Vec<EventKind> {
    hv.hv
        .events()
        .query(&EventQuery::default().session(s.clone()))
        .iter()
        .map(|e| e.payload.kind())
        .filter(|k| k.name().starts_with("saga."))
        .collect()
}

#[tokio::test]
async fn compensation_restores_the_sessions_files_and_state_byte_for_byte() {
    let hv = Hv::new();
    let s = scripted_session(&hv, &[("did:t:a", 0.8), ("did:t:b", 0.8)]).await;
    hv.put_shared(&s, "doc.md", "version one\n");
    hv.script(&s, "did:t:a", "put status draft\nwrite notes/keep.txt mine")
        .await;
    let core = hv.hv.session_core(&s).unwrap();
    let before = fingerprint(&core, &["did:t:a", "did:t:b"]);

    let def = SagaDefinition::from_yaml(
        r#"
name: four-steps
steps:
  - id: one
    agent: did:t:a
    action: edit
    execute: "write shared/doc.md version two\nput status review\nmkdir shared/out/deep"
  - id: two
    agent: did:t:b
    action: add
    depends_on: [one]
    execute: "write shared/out/deep/b.txt from b\nappend shared/doc.md  and more\nput counter 1"
  - id: three
    agent: did:t:a
    action: move
    depends_on: [two]
    execute: "rename shared/out/deep/b.txt shared/b-moved.txt\ndelete notes/keep.txt\ndel status\nsetacl shared/doc.md did:t:a everyone owner"
  - id: four
    agent: did:t:b
    action: fail
    depends_on: [three]
    execute: "write shared/partial.txt half done\nfail the fourth step cannot finish"
"#,
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Failed, "{report:?}");
    for step in ["one", "two", "three"] {
        assert_eq!(
            report.step(step).unwrap().state,
            StepState::Compensated,
            "{step}"
        );
    }
    assert_eq!(report.step("four").unwrap().state, StepState::Failed);
    let after = fingerprint(&core, &["did:t:a", "did:t:b"]);
    assert_eq!(before, after, "files and state differ after compensation");
    // Blame, by Shapley values of the saga's causal record: b's step four
    // failed (the direct cause); a's and b's earlier steps enabled it.
    let blame = hv
        .hv
        .saga_attribution(&report.saga, &ahv_trust::AttributionPolicy::default())
        .unwrap();
    assert_eq!(
        blame.direct_cause.as_ref().map(|a| a.as_str()),
        Some("did:t:b")
    );
    let (a, b) = (
        blame.share("did:t:a").unwrap(),
        blame.share("did:t:b").unwrap(),
    );
    assert!(b > a && a > 0.0, "{blame:?}");
    assert!((a + b - 1.0).abs() < 1e-9, "{blame:?}");
    // The fourth step's partial write was undone too.
    let host = id("did:test:host");
    assert!(
        core.read(Caller::untraced(&host, Ring::Root), "shared/partial.txt")
            .is_err()
    );
    // Compensated newest first.
    let order: Vec<String> = hv
        .hv
        .events()
        .query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::SagaStepCompensated),
        )
        .iter()
        .map(|e| match &e.payload {
            EventPayload::SagaStepCompensated { step, .. } => step.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(order, ["three", "two", "one"]);
}

#[tokio::test]
async fn a_successful_saga_reaches_completed_with_an_event_for_every_transition() {
    let hv = Hv::new();
    let s = scripted_session(&hv, &[("did:t:a", 0.8)]).await;
    let def = SagaDefinition::from_yaml(
        "name: ok\nsteps:\n  - id: one\n    agent: did:t:a\n    action: w\n    execute: write shared/x.txt 1\n    checkpoint: goal\n  - id: two\n    agent: did:t:a\n    action: w\n    depends_on: [one]\n    execute: append shared/x.txt 2\n",
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Completed);
    assert_eq!(
        kinds(&hv, &s),
        [
            EventKind::SagaCreated,
            EventKind::SagaStepStarted,
            EventKind::SagaStepCommitted,
            EventKind::SagaCheckpointSaved,
            EventKind::SagaStepStarted,
            EventKind::SagaStepCommitted,
            EventKind::SagaCompleted,
        ]
    );
    // Each carries the step's agent; the records are in the saga's journal.
    let started = hv.hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::SagaStepStarted),
    );
    assert!(started.iter().all(|e| e.agent == Some(id("did:t:a"))));
    let records = hv.hv.saga_records(&report.saga).unwrap();
    assert_eq!(records.len(), 7);
}

/// One run of a saga keeps at most `max_saga_bytes` of step outputs and
/// undo data (64 MiB by default; each step's own limits let a guest fill
/// ~5 MiB per step, over up to 1,024 steps): here 8 KiB, and steps that
/// answer ~3 KiB each. The third is refused, its change undone, and the
/// first two are compensated.
#[tokio::test]
async fn a_saga_keeps_at_most_its_byte_budget_of_outputs_and_undo_data() {
    let hv = Hv::with(|b| b.max_saga_bytes(8 << 10));
    let s = scripted_session(&hv, &[("did:t:a", 0.8)]).await;
    hv.put_shared(&s, "big.txt", &"b".repeat(3000));
    let step = |n: u32| {
        let after = if n > 1 {
            format!("\n    depends_on: [s{}]", n - 1)
        } else {
            String::new()
        };
        format!(
            "  - id: s{n}\n    agent: did:t:a\n    action: w\n    execute: \"write shared/s{n}.txt {n}\\nread shared/big.txt\"{after}\n"
        )
    };
    let yaml = format!("name: budget\nsteps:\n{}{}{}", step(1), step(2), step(3));
    let def = SagaDefinition::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Failed, "{report:?}");
    let failed: Vec<_> = hv
        .hv
        .saga_records(&report.saga)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            ahv_saga::SagaRecord::StepFailed { step, error, .. } => Some((step, error)),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&failed[..], [(step, e)] if step == "s3" && e.contains("8192-byte limit")),
        "{failed:?}"
    );
    assert_eq!(
        shared_files(&hv, &s),
        ["big.txt"],
        "every step's file was undone"
    );
}

#[tokio::test]
async fn a_spinning_step_stops_at_its_deadline_and_is_retried_after_the_formulas_delays() {
    let clock = FakeClock::new();
    let sleeper = Arc::new(FakeSleeper::new(clock.clone()));
    // Fuel enough to spin past the step's deadline: time, not fuel, stops it.
    let mut standard = RingLimits::default_for(Ring::Standard);
    standard.fuel_per_call = u64::MAX / 2;
    let policy = RingPolicy::default()
        .with_limits(Ring::Standard, standard)
        .unwrap();
    let hv = Hv::with(|b| {
        b.policy(policy)
            .saga_sleeper(sleeper.clone())
            .saga_jitter(Arc::new(FixedJitter(0.5)))
    });
    let s = scripted_session(&hv, &[("did:t:a", 0.8)]).await;
    // Ring 2's deadline is 30 s: the step's own 1 s is what stops it.
    let def = SagaDefinition::from_yaml(
        "name: spin\nbackoff: { base_ms: 100, cap_ms: 150 }\nsteps:\n  - id: spin\n    agent: did:t:a\n    action: spin\n    execute: spin\n    timeout_secs: 1\n    retries: 2\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "three 1 s attempts, not 30 s ones"
    );
    let step = report.step("spin").unwrap();
    assert_eq!(
        (report.state, step.state, step.attempts),
        (SagaState::Failed, StepState::Failed, 3)
    );
    assert!(
        step.error.as_deref().unwrap().contains("deadline"),
        "{step:?}"
    );
    // Retry n waits c/2 + r·c/2 with c = min(cap, base·2^(n-1)), r = 0.5:
    // c = 100 → 75 ms, c = min(150, 200) = 150 → 112.5 ms (whole ms: 112).
    assert_eq!(
        sleeper.delays(),
        [Duration::from_millis(75), Duration::from_millis(112)]
    );
}

#[tokio::test]
async fn a_ring_3_step_that_writes_is_a_breach_the_step_fails_and_earlier_steps_are_compensated() {
    let hv = Hv::new();
    let s = scripted_session(&hv, &[("did:t:a", 0.8), ("did:t:low", 0.3)]).await;
    let def = SagaDefinition::from_yaml(
        "name: breach\nsteps:\n  - id: ok\n    agent: did:t:a\n    action: w\n    execute: write shared/a.txt yes\n  - id: sneaky\n    agent: did:t:low\n    action: w\n    depends_on: [ok]\n    retries: 3\n    execute: write shared/b.txt no\n",
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Failed);
    let sneaky = report.step("sneaky").unwrap();
    // A breach is punished, never retried.
    assert_eq!((sneaky.state, sneaky.attempts), (StepState::Failed, 1));
    assert!(
        sneaky.error.as_deref().unwrap().contains("breach"),
        "{sneaky:?}"
    );
    assert_eq!(report.step("ok").unwrap().state, StepState::Compensated);
    let breaches = hv.hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::RingBreachDetected),
    );
    assert_eq!(breaches.len(), 1);
    assert_eq!(breaches[0].agent, Some(id("did:t:low")));
    let core = hv.hv.session_core(&s).unwrap();
    let host = id("did:test:host");
    assert!(
        core.read(Caller::untraced(&host, Ring::Root), "shared/a.txt")
            .is_err()
    );
}

fn fanout(policy: &str, outcomes: [bool; 3]) -> SagaDefinition {
    let mut y = format!("name: fan-{policy}\nsteps:\n");
    for (i, ok) in outcomes.iter().enumerate() {
        let script = if *ok {
            format!("write shared/branch-{i}.txt done")
        } else {
            format!("write shared/branch-{i}.txt half\\nfail branch {i} failed")
        };
        y += &format!(
            "  - id: b{i}\n    agent: did:t:{i}\n    action: branch\n    execute: \"{script}\"\n"
        );
    }
    y += "  - id: after\n    agent: did:t:0\n    action: after\n    depends_on: [g]\n    execute: write shared/after.txt end\n";
    y += &format!("fanout:\n  - id: g\n    policy: {policy}\n    branches: [b0, b1, b2]\n");
    SagaDefinition::from_yaml(&y).unwrap()
}

async fn run_fanout(policy: &str, outcomes: [bool; 3]) -> (Hv, SessionId, ahv_saga::SagaReport) {
    let hv = Hv::new();
    let s = scripted_session(&hv, &[("did:t:0", 0.8), ("did:t:1", 0.8), ("did:t:2", 0.8)]).await;
    let report = hv.hv.run_saga(&s, fanout(policy, outcomes)).await.unwrap();
    (hv, s, report)
}

fn shared_files(hv: &Hv, s: &SessionId) -> Vec<String> {
    let core = hv.hv.session_core(s).unwrap();
    let host = id("did:test:host");
    let mut names = core
        .list(Caller::untraced(&host, Ring::Root), "shared")
        .unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn fan_out_all_needs_every_branch_and_compensates_the_winners_when_one_fails() {
    let (hv, s, r) = run_fanout("all", [true, true, true]).await;
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(
        shared_files(&hv, &s),
        ["after.txt", "branch-0.txt", "branch-1.txt", "branch-2.txt"]
    );

    let (hv, s, r) = run_fanout("all", [true, false, true]).await;
    assert_eq!(r.state, SagaState::Failed);
    assert_eq!(r.step("b0").unwrap().state, StepState::Compensated);
    assert_eq!(r.step("b2").unwrap().state, StepState::Compensated);
    assert_eq!(r.step("after").unwrap().state, StepState::Pending);
    assert!(
        shared_files(&hv, &s).is_empty(),
        "{:?}",
        shared_files(&hv, &s)
    );
    let resolved = hv.hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::SagaFanoutResolved),
    );
    assert!(matches!(
        &resolved[0].payload,
        EventPayload::SagaFanoutResolved {
            succeeded: 2,
            failed: 1,
            ..
        }
    ));
}

#[tokio::test]
async fn fan_out_majority_holds_with_two_of_three_and_fails_with_one() {
    let (hv, s, r) = run_fanout("majority", [true, false, true]).await;
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(r.step("b1").unwrap().state, StepState::Failed);
    // The failed branch's partial write was undone; the others stand.
    assert_eq!(
        shared_files(&hv, &s),
        ["after.txt", "branch-0.txt", "branch-2.txt"]
    );

    let (hv, s, r) = run_fanout("majority", [false, true, false]).await;
    assert_eq!(r.state, SagaState::Failed);
    assert_eq!(r.step("b1").unwrap().state, StepState::Compensated);
    assert!(shared_files(&hv, &s).is_empty());
}

#[tokio::test]
async fn fan_out_any_holds_with_one_success_and_fails_with_none() {
    let (hv, s, r) = run_fanout("any", [false, false, true]).await;
    assert_eq!(r.state, SagaState::Completed);
    assert!(shared_files(&hv, &s).contains(&"after.txt".to_string()));

    let (hv, s, r) = run_fanout("any", [false, false, false]).await;
    assert_eq!(r.state, SagaState::Failed);
    assert!(shared_files(&hv, &s).is_empty());
}

#[tokio::test]
async fn fan_out_any_cancels_the_branches_still_running_once_one_succeeds() {
    let hv = Hv::new();
    let s = scripted_session(&hv, &[("did:t:0", 0.8), ("did:t:1", 0.8)]).await;
    let def = SagaDefinition::from_yaml(
        "name: race\nsteps:\n  - id: fast\n    agent: did:t:0\n    action: a\n    execute: write shared/fast.txt won\n  - id: slow\n    agent: did:t:1\n    action: a\n    timeout_secs: 30\n    execute: spin\nfanout:\n  - id: g\n    policy: any\n    branches: [fast, slow]\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the spinning branch was not cancelled"
    );
    assert_eq!(report.state, SagaState::Completed);
    let slow = report.step("slow").unwrap();
    assert_eq!(slow.state, StepState::Failed);
    assert_eq!(shared_files(&hv, &s), ["fast.txt"]);
}

#[tokio::test]
async fn a_cancelled_branch_has_what_it_changed_before_the_cancel_undone() {
    let hv = Hv::new();
    let s = scripted_session(&hv, &[("did:t:0", 0.8), ("did:t:1", 0.8)]).await;
    // `fast` finishes only once `slow` has written a file and a key, so the
    // cancel always finds changes to undo.
    let def = SagaDefinition::from_yaml(
        r#"
name: race
isolation: read-committed
steps:
  - id: fast
    agent: did:t:0
    action: a
    undo: ring
    execute: "await ready\nwrite shared/fast.txt won"
  - id: slow
    agent: did:t:1
    action: a
    undo: ring
    timeout_secs: 60
    execute: "write shared/slow.txt half done\nput ready 1\nsleep 60000"
fanout:
  - id: g
    policy: any
    branches: [fast, slow]
"#,
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Completed, "{report:?}");
    let slow = report.step("slow").unwrap();
    assert_eq!(slow.state, StepState::Failed);
    assert!(
        slow.error.as_deref().unwrap().contains("cancelled"),
        "{slow:?}"
    );
    // Its file and its key are gone again; the winner's file stays.
    assert_eq!(shared_files(&hv, &s), ["fast.txt"]);
    let core = hv.hv.session_core(&s).unwrap();
    assert!(core.state().peek("ready").is_none());
    // The undo is on the record: an event for the file, in slow's name.
    let undone = hv.hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::VfsUndone),
    );
    assert_eq!(undone.len(), 1, "{undone:?}");
    assert_eq!(undone[0].agent.as_ref().unwrap().as_str(), "did:t:1");
    assert!(
        undone[0]
            .payload
            .fields()
            .to_string()
            .contains("path=shared/slow.txt op=write"),
        "{undone:?}"
    );
}

struct Hook(Arc<Mutex<Vec<Escalation>>>);

impl EscalationHook for Hook {
    fn escalated(&self, e: &Escalation) {
        self.0.lock().unwrap().push(e.clone());
    }
}

#[tokio::test]
async fn a_failed_compensation_escalates_calls_the_hook_and_still_undoes_the_rest() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook = Hook(seen.clone());
    let hv = Hv::with(|b| b.on_escalation(hook));
    let s = scripted_session(&hv, &[("did:t:a", 0.8)]).await;
    let def = SagaDefinition::from_yaml(
        "name: esc\nsteps:\n  - id: one\n    agent: did:t:a\n    action: w\n    execute: write shared/one.txt 1\n  - id: two\n    agent: did:t:a\n    action: w\n    depends_on: [one]\n    execute: write shared/two.txt 2\n    undo: fail cannot take it back\n  - id: three\n    agent: did:t:a\n    action: w\n    depends_on: [two]\n    execute: fail no\n",
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Escalated);
    assert_eq!(
        report.step("two").unwrap().state,
        StepState::CompensationFailed
    );
    assert_eq!(report.step("one").unwrap().state, StepState::Compensated);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].session, s);
    assert_eq!(seen[0].failures[0].step, "two");
    assert!(
        seen[0].failures[0].error.contains("cannot take it back"),
        "{:?}",
        seen[0]
    );
    let esc = hv.hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::SagaEscalated),
    );
    assert!(matches!(
        esc[0].payload,
        EventPayload::SagaEscalated { failures: 1, .. }
    ));
}

#[tokio::test]
async fn a_saga_naming_an_agent_that_is_not_in_the_session_is_refused_before_it_starts() {
    let hv = Hv::new();
    let s = scripted_session(&hv, &[("did:t:a", 0.8)]).await;
    let def = SagaDefinition::from_yaml(
        "name: x\nsteps:\n  - id: one\n    agent: did:t:ghost\n    action: w\n",
    )
    .unwrap();
    let err = hv.hv.run_saga(&s, def).await.unwrap_err().to_string();
    assert!(err.contains("did:t:ghost") && err.contains("one"), "{err}");
    assert!(hv.hv.sagas().unwrap().is_empty());
}

#[tokio::test]
async fn a_saga_whose_step_agent_is_no_valid_id_or_has_no_instance_is_refused_naming_the_step() {
    let hv = Hv::new();
    let s = scripted_session(&hv, &[("did:t:a", 0.8)]).await;
    // A participant that joined without a component: it cannot run a step.
    hv.hv
        .join_session(&s, ahv_hypervisor::JoinRequest::new(id("did:t:bare"), 0.8))
        .await
        .unwrap();
    let def = |agent: &str| {
        let mut d = SagaDefinition::from_yaml(
            "name: x\nsteps:\n  - id: first\n    agent: did:t:a\n    action: w\n  - id: second\n    agent: did:t:a\n    action: w\n",
        )
        .unwrap();
        // Built in code, so the definition's own validation is bypassed
        // and the hypervisor's check is what refuses it.
        d.steps[1].agent = agent.to_string();
        d
    };
    let err = hv.hv.run_saga(&s, def("not an id!")).await.unwrap_err();
    assert!(
        matches!(err, ahv_hypervisor::HypervisorError::SagaSetup { .. }),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("step second: agent: "), "{err}");
    for (agent, why) in [
        ("did:t:bare", "has no instance in session"),
        ("did:t:ghost", "is not a participant of session"),
    ] {
        let err = hv
            .hv
            .run_saga(&s, def(agent))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("step second: agent {agent} {why}")),
            "{err}"
        );
    }
    // Refused before anything ran: no saga, and the valid definition runs.
    assert!(hv.hv.sagas().unwrap().is_empty());
    let ok = hv.hv.run_saga(&s, def("did:t:a")).await.unwrap();
    assert_eq!(ok.state, SagaState::Completed);
}

#[tokio::test]
async fn a_host_action_step_runs_in_the_agents_name_and_is_undone_by_its_action() {
    let hv = Hv::with(|b| b.actions(ahv_governance::actions::builtin::registry()));
    let s = scripted_session(&hv, &[("did:t:a", 0.8), ("did:t:low", 0.3)]).await;
    let def = SagaDefinition::from_yaml(
        "name: host\nsteps:\n  - id: note\n    agent: did:t:a\n    action: note.append\n    via: host\n    execute: remember this\n  - id: boom\n    agent: did:t:a\n    action: x\n    depends_on: [note]\n    execute: fail stop\n",
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Failed);
    assert_eq!(report.step("note").unwrap().state, StepState::Compensated);
    let invoked = hv.hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::ActionInvoked),
    );
    assert_eq!(invoked.len(), 1);
    // A ring 3 agent may not run a reversible action, even through the host.
    let def = SagaDefinition::from_yaml(
        "name: host3\nsteps:\n  - id: note\n    agent: did:t:low\n    action: note.append\n    via: host\n    execute: x\n    retries: 2\n",
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    let note = report.step("note").unwrap();
    assert_eq!((note.state, note.attempts), (StepState::Failed, 1));
    assert!(
        note.error.as_deref().unwrap().contains("actions"),
        "{note:?}"
    );
}

#[tokio::test]
async fn a_step_that_ran_an_effect_and_then_failed_escalates_instead_of_retrying() {
    let hv = Hv::with(|b| b.actions(ahv_governance::actions::builtin::registry()));
    let s = scripted_session(&hv, &[("did:t:a", 0.8)]).await;
    // Ring 1 for the effect, on the operator's authority.
    hv.hv
        .grant_elevation(
            &s,
            &id("did:t:a"),
            Ring::Privileged,
            Duration::from_secs(600),
            "test",
        )
        .unwrap();
    let def = SagaDefinition::from_yaml(
        "name: residue\nsteps:\n  - id: notify\n    agent: did:t:a\n    action: n\n    retries: 3\n    execute: \"effect notify.send hello\\nfail then it failed\"\n",
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    let step = report.step("notify").unwrap();
    // Nothing committed, but the effect remains: not retried, escalated.
    assert_eq!(
        (report.state, step.state, step.attempts),
        (SagaState::Escalated, StepState::Failed, 1)
    );
    assert!(
        step.error
            .as_deref()
            .unwrap()
            .contains("could not be undone"),
        "{step:?}"
    );
}

#[tokio::test]
async fn host_action_steps_spend_the_agents_change_budget() {
    use ahv_security::rate::{BucketSpec, CallClass, RateTable};
    // Ring 2 may change one thing, and never again.
    let table = RateTable::default()
        .with_spec(
            CallClass::Change,
            Ring::Standard,
            BucketSpec {
                rate_per_sec: 0.0,
                burst: 1,
            },
        )
        .unwrap();
    let hv = Hv::with(|b| {
        b.actions(ahv_governance::actions::builtin::registry())
            .rate_limits(table)
    });
    let s = scripted_session(&hv, &[("did:t:a", 0.8)]).await;
    let def = SagaDefinition::from_yaml(
        "name: budget\nsteps:\n  - id: one\n    agent: did:t:a\n    action: note.append\n    via: host\n    execute: first\n  - id: two\n    agent: did:t:a\n    action: note.append\n    via: host\n    depends_on: [one]\n    execute: second\n",
    )
    .unwrap();
    let report = hv.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Failed);
    assert_eq!(report.step("one").unwrap().state, StepState::Compensated);
    let two = report.step("two").unwrap();
    assert!(
        two.error.as_deref().unwrap().contains("rate limited"),
        "{two:?}"
    );
}

/// A saga whose third step sleeps on its first attempt, so a "crash" can
/// stop the host there; every step's undo is harmless (`ring`), so only
/// the host's undo of the recorded changes acts.
const CRASHY: &str = r#"
name: crashy
steps:
  - id: one
    agent: did:t:a
    action: prepare
    undo: ring
    execute: "write shared/doc.md version one\nsetacl shared/doc.md did:t:a everyone owner\nmkdir shared/out\nput status draft\nwrite notes/private.txt mine"
  - id: two
    agent: did:t:a
    action: note.append
    via: host
    depends_on: [one]
    execute: noted once
  - id: three
    agent: did:t:a
    action: slow
    undo: ring
    depends_on: [two]
    timeout_secs: 120
    execute: "append shared/out/three.txt three;\n@1 sleep 60000"
  - id: four
    agent: did:t:a
    action: check
    undo: ring
    depends_on: [three]
    execute: "read shared/doc.md\nacl shared/doc.md\nread shared/out/three.txt\nread journal/notes.log\nget status\nread notes/private.txt"
"#;

fn builder_at(dir: &std::path::Path) -> ahv_hypervisor::HypervisorBuilder {
    ahv_hypervisor::Hypervisor::builder()
        .state_dir(dir)
        .cache_dir(crate::cache_dir())
        .actions(ahv_governance::actions::builtin::registry())
}

async fn session_of(hv: &ahv_hypervisor::Hypervisor) -> SessionId {
    let s = hv
        .create_session(
            ahv_governance::session::SessionConfig::default(),
            id("did:test:operator"),
        )
        .unwrap();
    let c = hv.load(SCRIPTED).unwrap();
    hv.join_session(
        &s,
        ahv_hypervisor::JoinRequest::new(id("did:t:a"), 0.8).component(c),
    )
    .await
    .unwrap();
    hv.activate_session(&s).unwrap();
    s
}

/// How many times `records` say `step` started.
fn started(records: &[ahv_saga::SagaRecord], step: &str) -> usize {
    records
        .iter()
        .filter(|r| matches!(r, ahv_saga::SagaRecord::StepStarted { step: s, .. } if s == step))
        .count()
}

/// Runs `yaml` in a hypervisor over `dir` (after the script `prelude`, if
/// any, in agent `did:t:a`) until step `three` has started, then drops the
/// run and the hypervisor, as a crash would (the sleeping attempt never
/// finishes); the saga's id.
async fn crash_in_step_three(
    dir: &std::path::Path,
    yaml: &str,
    prelude: Option<&str>,
) -> ahv_saga::SagaId {
    let hv = builder_at(dir).build().unwrap();
    let s = session_of(&hv).await;
    if let Some(script) = prelude {
        let out = hv.run_agent(&s, &id("did:t:a"), script).await.unwrap();
        assert!(!out.result.unwrap().contains("-> err"));
    }
    abort_in_step_three(&hv, &s, yaml).await
}

/// Runs `yaml` in session `s` of `hv` until step `three` has started, then
/// drops the run; the saga's id.
async fn abort_in_step_three(
    hv: &ahv_hypervisor::Hypervisor,
    s: &SessionId,
    yaml: &str,
) -> ahv_saga::SagaId {
    let saga = hv.new_saga_id();
    let run = tokio::spawn({
        let (hv, s, saga) = (hv.clone(), s.clone(), saga.clone());
        let def = SagaDefinition::from_yaml(yaml).unwrap();
        async move { hv.run_saga_as(&s, saga, def).await }
    });
    let started = |hv: &ahv_hypervisor::Hypervisor| {
        hv.saga_records(&saga)
            .unwrap()
            .iter()
            .any(|r| matches!(r, ahv_saga::SagaRecord::StepStarted { step, .. } if step == "three"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !started(hv) {
        assert!(
            std::time::Instant::now() < deadline,
            "step three did not start within 60 s: {:?}",
            hv.saga_records(&saga)
        );
        assert!(!run.is_finished(), "the saga ended before step three");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    saga
}

/// A resumed saga's byte budget counts what earlier runs committed: the
/// first process commits two steps of ~3 KiB outputs, a new one with an
/// 8 KiB budget refuses the third, whose report echoes a 3 KiB write (a
/// fresh count would let it through).
#[tokio::test]
async fn a_resumed_saga_counts_what_it_kept_before_against_its_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let big = "b".repeat(3000);
    let yaml = format!(
        "name: budget\nsteps:\n  - id: one\n    agent: did:t:a\n    action: r\n    undo: ring\n    execute: read shared/big.txt\n  - id: two\n    agent: did:t:a\n    action: r\n    undo: ring\n    depends_on: [one]\n    execute: read shared/big.txt\n  - id: three\n    agent: did:t:a\n    action: r\n    undo: ring\n    depends_on: [two]\n    timeout_secs: 120\n    execute: \"@1 sleep 60000\\nwrite shared/t.txt {big}\"\n"
    );
    let saga = crash_in_step_three(
        tmp.path(),
        &yaml,
        Some(&format!("write shared/big.txt {big}")),
    )
    .await;
    let hv = builder_at(tmp.path())
        .max_saga_bytes(8 << 10)
        .build()
        .unwrap();
    let s = session_of(&hv).await;
    let report = hv.resume_saga(&s, &saga).await.unwrap();
    assert_eq!(report.state, SagaState::Failed, "{report:?}");
    let three = report.step("three").unwrap();
    assert!(
        three
            .error
            .as_deref()
            .unwrap_or("")
            .contains("8192-byte limit"),
        "{three:?}"
    );
}

#[tokio::test]
async fn a_saga_left_by_a_crash_resumes_in_a_new_process_without_running_a_committed_step_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let saga = crash_in_step_three(tmp.path(), CRASHY, None).await;

    // "A new process": a new hypervisor over the same state directory.
    let hv = builder_at(tmp.path()).build().unwrap();
    let s = session_of(&hv).await;
    let report = hv.resume_saga(&s, &saga).await.unwrap();
    assert_eq!(report.state, SagaState::Completed, "{report:?}");
    // Steps one and two ran once, ever; three ran again (its second attempt).
    let records = hv.saga_records(&saga).unwrap();
    let starts = |step| started(&records, step);
    assert_eq!((starts("one"), starts("two"), starts("three")), (1, 1, 2));
    // What one and two committed was put back (files, ACL, directory,
    // state, private file, the action's file), and the interrupted attempt
    // left nothing behind: each line is there once.
    let out = report.step("four").unwrap().output.clone().unwrap();
    for expected in [
        "read shared/doc.md -> ok version one",
        "acl shared/doc.md -> ok owner=did:t:a read=everyone write=owner",
        "read shared/out/three.txt -> ok three;\n",
        "read journal/notes.log -> ok did:t:a: noted once\n\n",
        "get status -> ok v1 draft",
        "read notes/private.txt -> ok mine",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    // The put-back changes are governed changes with events, in the agent's name.
    let writes = hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::VfsWrite),
    );
    assert!(
        writes
            .iter()
            .any(|e| e.agent.as_ref().map(|a| a.as_str()) == Some("did:t:a")),
        "{writes:?}"
    );
    // Resuming a finished saga does nothing.
    let again = hv.resume_saga(&s, &saga).await.unwrap();
    assert_eq!(again.state, SagaState::Completed);
    assert_eq!(hv.saga_records(&saga).unwrap().len(), records.len());
}

#[tokio::test]
async fn a_saga_whose_session_was_terminated_resumes_in_another_session_of_the_same_process() {
    let tmp = tempfile::tempdir().unwrap();
    let hv = builder_at(tmp.path()).build().unwrap();
    let first = session_of(&hv).await;
    let saga = abort_in_step_three(&hv, &first, CRASHY).await;
    let second = session_of(&hv).await;
    // While the session it ran in lives, the saga is undone only there.
    let err = hv
        .resume_saga(&second, &saga)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("can only be undone there"), "{err}");
    // Once that session is gone, the saga is taken up as after a restart:
    // what its committed steps left is replayed, nothing runs twice.
    hv.terminate_session(&first).unwrap();
    // Running it again is refused, and leaves it to be taken up by replay.
    let again = hv
        .run_saga_as(
            &second,
            saga.clone(),
            SagaDefinition::from_yaml(CRASHY).unwrap(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("resume or compensate"), "{again}");
    let report = hv.resume_saga(&second, &saga).await.unwrap();
    assert_eq!(report.state, SagaState::Completed, "{report:?}");
    let records = hv.saga_records(&saga).unwrap();
    let starts = |step| started(&records, step);
    assert_eq!((starts("one"), starts("two"), starts("three")), (1, 1, 2));
    let out = report.step("four").unwrap().output.clone().unwrap();
    assert!(out.contains("get status -> ok v1 draft"), "{out}");
}

#[tokio::test]
async fn a_saga_left_by_a_crash_is_compensated_in_a_new_process_leaving_the_session_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = CRASHY.replace("name: crashy", "name: crashy\non_crash: compensate");
    // The action's journal existed before the saga, in the old session only.
    let saga = crash_in_step_three(
        tmp.path(),
        &yaml,
        Some("write journal/notes.log kept from before\n"),
    )
    .await;

    let hv = builder_at(tmp.path()).build().unwrap();
    let s = session_of(&hv).await;
    let core = hv.session_core(&s).unwrap();
    let before = fingerprint(&core, &["did:t:a"]);
    let report = hv.resume_saga(&s, &saga).await.unwrap();
    // Compensated without escalation: the replayed files and state were
    // undone, and the action's own undo took its line out again.
    assert_eq!(report.state, SagaState::Failed, "{report:?}");
    for step in ["one", "two"] {
        assert_eq!(report.step(step).unwrap().state, StepState::Compensated);
    }
    assert_eq!(report.step("three").unwrap().state, StepState::Failed);
    assert_eq!(fingerprint(&core, &["did:t:a"]), before);
    assert!(core.state().peek("status").is_none());
}

#[tokio::test]
async fn a_damaged_blob_refuses_the_resume_naming_the_step_and_undoes_the_replay_so_far() {
    let tmp = tempfile::tempdir().unwrap();
    let saga = crash_in_step_three(tmp.path(), CRASHY, None).await;
    // Damage the blob of step one's last file only: its first files are
    // replayed before the damage is found.
    let mine = tmp
        .path()
        .join("saga-blobs")
        .join(ahv_saga::blobs::blob_hash(b"mine"));
    std::fs::write(&mine, b"tampered").unwrap();
    let hv = builder_at(tmp.path()).build().unwrap();
    let s = session_of(&hv).await;
    let core = hv.session_core(&s).unwrap();
    let before = fingerprint(&core, &["did:t:a"]);
    let err = hv.resume_saga(&s, &saga).await.unwrap_err().to_string();
    assert!(
        err.contains("step one") && err.contains("damaged") && err.contains("notes/private.txt"),
        "{err}"
    );
    assert_eq!(fingerprint(&core, &["did:t:a"]), before);
    // Nothing was recorded: once repaired, the saga is taken up.
    assert!(!hv.saga_report(&saga).unwrap().state.is_final());
    std::fs::write(&mine, b"mine").unwrap();
    let report = hv.resume_saga(&s, &saga).await.unwrap();
    assert_eq!(report.state, SagaState::Completed, "{report:?}");
}

#[tokio::test]
async fn a_serializable_saga_that_moved_a_directory_and_rewrote_a_key_resumes_in_a_new_process() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = r#"
name: serial
isolation: serializable
steps:
  - id: one
    agent: did:t:a
    action: draft
    undo: ring
    execute: "lock key:count write 0\nput count 1\nlock path:shared/drafts/a.md write 0\nwrite shared/drafts/a.md draft"
  - id: two
    agent: did:t:a
    action: promote
    undo: ring
    depends_on: [one]
    execute: "lock key:count write 0\nget count\nput count 2\nlock path:shared/drafts write 0\nlock path:shared/final write 0\nrename shared/drafts shared/final"
  - id: three
    agent: did:t:a
    action: slow
    undo: ring
    depends_on: [two]
    timeout_secs: 120
    execute: "@1 sleep 60000"
  - id: four
    agent: did:t:a
    action: check
    undo: ring
    depends_on: [three]
    execute: "lock key:count read 0\nget count\nlock path:shared/final/a.md read 0\nread shared/final/a.md\nlist shared"
"#;
    let saga = crash_in_step_three(tmp.path(), yaml, None).await;
    let hv = builder_at(tmp.path()).build().unwrap();
    let s = session_of(&hv).await;
    let report = hv.resume_saga(&s, &saga).await.unwrap();
    assert_eq!(report.state, SagaState::Completed, "{report:?}");
    let out = report.step("four").unwrap().output.clone().unwrap();
    for expected in [
        "get count -> ok v2 2 by did:t:a",
        "read shared/final/a.md -> ok draft",
        "list shared -> ok final\n",
    ] {
        assert!(
            out.contains(expected),
            "{expected:?} missing from:\n{out}\n(two: {:?})",
            report.step("two")
        );
    }
}
