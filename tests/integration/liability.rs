//! Joint liability with real guests: a vouch lifts a guest's ring and a
//! slash of its voucher takes it back at the very next host call; a
//! quarantined guest is refused until release or expiry; breaches, floods,
//! quarantines, slashes and blamed sagas feed the ledger, which admission
//! consults at join (deny, probation at ring 3, admit) — across restarts.

use std::sync::Arc;
use std::time::Duration;

use ahv_core::event::{EventKind, EventPayload, EventQuery};
use ahv_core::{FakeClock, Ring, SessionId};
use ahv_hypervisor::{HypervisorError, JoinRequest, LiabilityPolicy};
use ahv_runtime::{AgentError, TrapCause};
use ahv_saga::{SagaDefinition, SagaState};
use ahv_trust::{Admission, EntryKind, QuarantineReason};

use crate::sessions::{Hv, err, id, ok};

fn events(h: &Hv, s: &SessionId, kind: EventKind) -> Vec<EventPayload> {
    h.hv.events()
        .query(&EventQuery::default().session(s.clone()).kind(kind))
        .into_iter()
        .map(|e| e.payload)
        .collect()
}

/// Runs one command that must trap with a ring breach.
async fn must_breach(h: &Hv, s: &SessionId, agent: &str, script: &str) {
    match h.hv.run_agent(s, &id(agent), script).await {
        Err(HypervisorError::Agent(AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            ..
        })) => assert_eq!(b.ring, Ring::Sandbox, "{b:?}"),
        other => panic!("{agent} must breach, got {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn a_vouch_lifts_a_guest_to_ring_2_and_a_slash_of_its_voucher_demotes_it_at_the_next_call() {
    let h = Hv::new();
    let s = h.session();
    // σ 0.55 is below the session's 0.60 minimum: ring 3, where a write is a breach.
    assert_eq!(
        h.join(&s, "did:test:vouchee", 0.55, ahv_agents::SCRIPTED)
            .await,
        Ring::Sandbox
    );
    h.join(&s, "did:test:voucher", 0.9, ahv_agents::SCRIPTED)
        .await;
    h.hv.activate_session(&s).unwrap();
    // (A breach here would expel it: the default policy. The ring says enough.)
    let out = h.script(&s, "did:test:vouchee", "ring").await;
    assert_eq!(ok(&out, "ring"), "3");

    // 20 % of 0.9 bonded, ω 0.5: 0.55 + 0.5 × 0.18 = 0.64 > 0.60 → ring 2.
    let receipt =
        h.hv.vouch(&s, &id("did:test:voucher"), &id("did:test:vouchee"), None)
            .unwrap();
    assert!(close(receipt.bond, 0.18), "{receipt:?}");
    assert!(close(receipt.effective, 0.64), "{receipt:?}");
    assert_eq!(receipt.ring, Ring::Standard);
    let out = h
        .script(&s, "did:test:vouchee", "write lifted.txt yes\nring")
        .await;
    ok(&out, "write lifted.txt yes");
    assert_eq!(ok(&out, "ring"), "2");

    // The voucher is slashed: σ 0.9 → 0, its bond goes, the vouchee is back at 0.55.
    let outcome =
        h.hv.slash(&s, &id("did:test:voucher"), None, 1.0, "manual review")
            .unwrap();
    assert_eq!(outcome.report.released.len(), 1);
    assert!(
        outcome
            .rings
            .contains(&(id("did:test:vouchee"), Ring::Sandbox))
    );
    assert!(close(
        h.hv.effective_trust(&s, &id("did:test:vouchee")).unwrap(),
        0.55
    ));
    // The slash is in the ledger, the vouchee's record is clean.
    let entries = h.hv.ledger_entries(&id("did:test:voucher")).await.unwrap();
    assert!(
        matches!(&entries[..], [e] if matches!(e.kind, EntryKind::Slash { severity } if severity.get() == 1.0)),
        "{entries:?}"
    );
    assert!(
        h.hv.ledger_entries(&id("did:test:vouchee"))
            .await
            .unwrap()
            .is_empty()
    );
    // Its very next write is judged at ring 3: a breach.
    must_breach(&h, &s, "did:test:vouchee", "write after.txt no").await;

    let created = events(&h, &s, EventKind::LiabilityVouchCreated);
    assert!(
        matches!(&created[..], [EventPayload::LiabilityVouchCreated { vouchee, bond, .. }]
            if vouchee.as_str() == "did:test:vouchee" && close(*bond, 0.18)),
        "{created:?}"
    );
    let slashed = events(&h, &s, EventKind::LiabilitySlashExecuted);
    assert!(
        matches!(&slashed[..], [EventPayload::LiabilitySlashExecuted { cause, before, after, hop: 0, .. }]
            if cause == "slashed" && close(*before, 0.9) && *after == 0.0),
        "{slashed:?}"
    );
    let released = events(&h, &s, EventKind::LiabilityVouchReleased);
    assert!(
        matches!(&released[..], [EventPayload::LiabilityVouchReleased { reason, .. }] if reason == "slashed"),
        "{released:?}"
    );
    assert!(
        events(&h, &s, EventKind::RingDemoted)
            .iter()
            .any(|e| matches!(
                e,
                EventPayload::RingDemoted {
                    from: Ring::Standard,
                    to: Ring::Sandbox,
                    ..
                }
            )),
        "the vouchee's demotion is on the record"
    );
}

#[tokio::test]
async fn a_release_of_the_vouch_demotes_and_a_vouch_never_lifts_above_probation_or_a_breach() {
    let h = Hv::new();
    let s = h.session();
    h.join(&s, "did:test:v", 0.45, ahv_agents::SCRIPTED).await;
    h.join(&s, "did:test:backer", 0.9, ahv_agents::SCRIPTED)
        .await;
    h.hv.activate_session(&s).unwrap();
    // Half of 0.9 bonded, ω 0.5: 0.45 + 0.225 = 0.675 → ring 2.
    let r =
        h.hv.vouch(&s, &id("did:test:backer"), &id("did:test:v"), Some(0.5))
            .unwrap();
    assert_eq!(r.ring, Ring::Standard);
    h.hv.release_vouch(&s, r.vouch, "released").unwrap();
    assert_eq!(h.hv.ring(&s, &id("did:test:v")).unwrap(), Ring::Sandbox);
    let out = h.script(&s, "did:test:v", "ring").await;
    assert_eq!(ok(&out, "ring"), "3", "judged at ring 3 at its next call");
    // A refused vouch says why.
    let e =
        h.hv.vouch(&s, &id("did:test:v"), &id("did:test:v"), None)
            .unwrap_err()
            .to_string();
    assert!(e.contains("itself"), "{e}");
    let e =
        h.hv.vouch(&s, &id("did:test:v"), &id("did:test:backer"), None)
            .unwrap_err()
            .to_string();
    assert!(e.contains("0.5"), "a voucher needs σ ≥ 0.50: {e}");
    // An operator's demotion is a ceiling: a new vouch does not undo it.
    h.hv.demote(&s, &id("did:test:v"), Ring::Sandbox, "operator")
        .unwrap();
    let r =
        h.hv.vouch(&s, &id("did:test:backer"), &id("did:test:v"), Some(0.5))
            .unwrap();
    assert!(r.effective > 0.6, "{r:?}");
    assert_eq!(r.ring, Ring::Sandbox, "{r:?}");
    must_breach(&h, &s, "did:test:v", "write x.txt x").await;
}

#[tokio::test]
async fn a_quarantined_guest_is_refused_until_its_time_runs_out_on_the_fake_clock() {
    let clock = FakeClock::new();
    let c = clock.clone();
    let h = Hv::with(move |b| b.clock(Arc::new(c)));
    let s = h.session();
    h.join(&s, "did:test:q", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    let record =
        h.hv.quarantine(
            &s,
            &id("did:test:q"),
            QuarantineReason::RateLimitExceeded,
            "too many calls",
            Some(Duration::from_secs(300)),
        )
        .unwrap();
    assert_eq!(record.escalations, 0);
    let out = h.script(&s, "did:test:q", "write a x\nring").await;
    err(&out, "write a x", "quarantined");
    assert_eq!(ok(&out, "ring"), "2", "context still answers");
    // Quarantining again escalates the same record: twice the hold from now.
    clock.advance(Duration::from_secs(100));
    let again =
        h.hv.quarantine(
            &s,
            &id("did:test:q"),
            QuarantineReason::Manual,
            "again",
            Some(Duration::from_secs(300)),
        )
        .unwrap();
    assert_eq!(again.escalations, 1);
    assert_eq!(again.started_at, record.started_at, "the same record");
    clock.advance(Duration::from_secs(599));
    let out = h.script(&s, "did:test:q", "write a x").await;
    err(&out, "write a x", "quarantined");
    clock.advance(Duration::from_secs(1));
    let out = h.script(&s, "did:test:q", "write a x\nread a").await;
    ok(&out, "write a x");
    assert_eq!(ok(&out, "read a"), "x");
    let released = events(&h, &s, EventKind::LiabilityQuarantineReleased);
    assert!(
        matches!(&released[..], [EventPayload::LiabilityQuarantineReleased { reason }] if reason == "expired"),
        "{released:?}"
    );
    // Both quarantines are in the ledger, weighted by their reasons.
    let entries = h.hv.ledger_entries(&id("did:test:q")).await.unwrap();
    let sev: Vec<f64> = entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::Quarantine { severity } => severity.get(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sev, [0.4, 0.5]);
}

/// Records `n` slashes of `agent` at severity 1 (0.15 risk each) through a
/// throwaway session of `h`.
async fn slash_n(h: &Hv, agent: &str, n: usize) {
    for _ in 0..n {
        let s = h.session();
        h.hv.join_session(&s, JoinRequest::new(id(agent), 0.8))
            .await
            .unwrap();
        h.hv.slash(&s, &id(agent), None, 1.0, "test").unwrap();
        h.hv.terminate_session(&s).unwrap();
    }
}

#[tokio::test]
async fn admission_consults_the_ledger_probation_holds_at_ring_3_deny_refuses_and_it_survives_a_restart()
 {
    let h = Hv::new();
    // Two slashes: 0.30 → probation.
    slash_n(&h, "did:test:bad", 2).await;
    let a = h.hv.assess(&id("did:test:bad")).await.unwrap();
    assert!(close(a.risk, 0.30), "{a:?}");
    assert_eq!(a.admission, Admission::Probation);
    let s = h.session();
    let ring =
        h.hv.join_session(&s, JoinRequest::new(id("did:test:bad"), 0.9))
            .await
            .unwrap();
    assert_eq!(ring, Ring::Sandbox, "probation: ring 3 whatever the score");
    h.hv.join_session(&s, JoinRequest::new(id("did:test:good"), 0.9))
        .await
        .unwrap();
    let r =
        h.hv.vouch(&s, &id("did:test:good"), &id("did:test:bad"), Some(0.5))
            .unwrap();
    assert_eq!(r.ring, Ring::Sandbox, "a vouch does not lift a probation");
    h.hv.terminate_session(&s).unwrap();
    // That session was clean for it: a credit of 0.05.
    let a = h.hv.assess(&id("did:test:bad")).await.unwrap();
    assert!(close(a.risk, 0.25), "{a:?}");
    // Three more slashes: 0.70 → deny.
    slash_n(&h, "did:test:bad", 3).await;
    let s = h.session();
    match h
        .hv
        .join_session(&s, JoinRequest::new(id("did:test:bad"), 0.9))
        .await
    {
        Err(HypervisorError::AdmissionDenied { agent, risk }) => {
            assert_eq!(agent.as_str(), "did:test:bad");
            assert!(close(risk, 0.70), "{risk}");
        }
        other => panic!("must be denied, got {other:?}"),
    }
    assert!(h.hv.participants(&s).unwrap().is_empty(), "no seat taken");
    // A new hypervisor on the same state directory reads the same SQLite ledger.
    let state = h.state;
    let dir = state.path().to_path_buf();
    h.hv.shutdown().unwrap();
    drop(h.hv);
    let hv2 = ahv_hypervisor::Hypervisor::builder()
        .state_dir(&dir)
        .cache_dir(crate::cache_dir())
        .build()
        .unwrap();
    assert_eq!(hv2.ledger_backend(), "sqlite");
    let a = hv2.assess(&id("did:test:bad")).await.unwrap();
    assert_eq!(a.admission, Admission::Deny, "{a:?}");
    // did:test:good finished a session clean at risk 0: nothing to credit,
    // nothing booked; did:test:bad's credit is on record.
    assert!(
        hv2.ledger_entries(&id("did:test:good"))
            .await
            .unwrap()
            .is_empty()
    );
    let bad = hv2.ledger_entries(&id("did:test:bad")).await.unwrap();
    assert!(
        bad.iter().any(|e| e.kind == EntryKind::CleanSession),
        "{bad:?}"
    );
    let s = hv2
        .create_session(Default::default(), id("did:test:operator"))
        .unwrap();
    assert!(matches!(
        hv2.join_session(&s, JoinRequest::new(id("did:test:bad"), 0.9))
            .await,
        Err(HypervisorError::AdmissionDenied { .. })
    ));
    drop(state);
}

#[tokio::test]
async fn a_ring_breach_and_a_rate_limit_flood_are_booked_as_faults() {
    // A clock that stands still: the bucket never refills, so the count is exact.
    let clock = FakeClock::new();
    let h = Hv::with(move |b| b.clock(Arc::new(clock)));
    let s = h.session();
    h.join(&s, "did:test:low", 0.3, ahv_agents::SCRIPTED).await;
    h.join(&s, "did:test:busy", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    must_breach(&h, &s, "did:test:low", "write x.txt x").await;
    let low = h.hv.ledger_entries(&id("did:test:low")).await.unwrap();
    assert!(
        low.iter()
            .any(|e| matches!(e.kind, EntryKind::Fault { .. })),
        "{low:?}"
    );
    // Ring 2 allows a burst of 40 writes; 100 refusals in a row are a flood.
    let script: Vec<String> = (0..140).map(|n| format!("write f{n} x")).collect();
    let out = h.script(&s, "did:test:busy", &script.join("\n")).await;
    err(&out, "write f139 x", "rate-limited");
    let busy = h.hv.ledger_entries(&id("did:test:busy")).await.unwrap();
    assert!(
        matches!(&busy[..], [e] if matches!(e.kind, EntryKind::Fault { severity } if severity.get() == 0.3)),
        "one flood, one fault: {busy:?}"
    );
    // Neither gets a clean-session credit.
    h.hv.terminate_session(&s).unwrap();
    for a in ["did:test:low", "did:test:busy"] {
        let e = h.hv.ledger_entries(&id(a)).await.unwrap();
        assert!(
            !e.iter().any(|e| e.kind == EntryKind::CleanSession),
            "{a}: {e:?}"
        );
    }
}

#[tokio::test]
async fn an_escalated_saga_is_attributed_and_its_most_liable_agent_is_slashed_and_demoted() {
    let h = Hv::with(|b| {
        b.liability(LiabilityPolicy {
            slash_share: 0.5,
            ..LiabilityPolicy::default()
        })
    });
    let s = h.session();
    for a in ["did:t:a", "did:t:b"] {
        h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
    }
    h.hv.activate_session(&s).unwrap();
    // b's step commits a change it cannot undo, then a's later step fails.
    let def = SagaDefinition::from_yaml(
        "name: esc\nsteps:\n  - id: one\n    agent: did:t:b\n    action: w\n    execute: write shared/one.txt 1\n    undo: fail cannot take it back\n  - id: two\n    agent: did:t:a\n    action: w\n    depends_on: [one]\n    execute: fail no\n",
    )
    .unwrap();
    let report = h.hv.run_saga(&s, def).await.unwrap();
    assert_eq!(report.state, SagaState::Escalated);
    let attributed = events(&h, &s, EventKind::LiabilityFaultAttributed);
    assert!(!attributed.is_empty(), "blame is on the record");
    let total: f64 = attributed
        .iter()
        .map(|e| match e {
            EventPayload::LiabilityFaultAttributed { share, .. } => *share,
            _ => 0.0,
        })
        .sum();
    assert!(close(total, 1.0), "shares sum to 1: {attributed:?}");
    // Whoever carries at least half the blame was slashed: σ 0, ring 3.
    let blamed: Vec<String> =
        h.hv.events()
            .query(
                &EventQuery::default()
                    .session(s.clone())
                    .kind(EventKind::LiabilitySlashExecuted),
            )
            .into_iter()
            .map(|e| e.agent.unwrap().to_string())
            .collect();
    assert!(!blamed.is_empty(), "someone was slashed");
    for a in &blamed {
        assert_eq!(h.hv.ring(&s, &id(a)).unwrap(), Ring::Sandbox, "{a}");
        let entries = h.hv.ledger_entries(&id(a)).await.unwrap();
        assert!(
            entries
                .iter()
                .any(|e| matches!(e.kind, EntryKind::Slash { .. }))
                && entries
                    .iter()
                    .any(|e| matches!(e.kind, EntryKind::Fault { .. })),
            "{a}: {entries:?}"
        );
    }
}

/// Waits (bounded) until the session's state has `key`.
async fn wait_for_key(h: &Hv, s: &SessionId, key: &str) {
    let core = h.hv.session_core(s).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while core.state().peek(key).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 60 s waiting for the step to put {key:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A saga whose step `pay` (in did:t:payer) announces itself, waits for the
/// host's `go`, then appends to a log: killed while it waits.
fn pay_saga(first: Option<&str>) -> SagaDefinition {
    let mut yaml = String::from("name: pay\nsteps:\n");
    if let Some(agent) = first {
        yaml.push_str(&format!(
            "  - id: prepare\n    agent: {agent}\n    action: w\n    execute: write shared/prepared.txt yes\n"
        ));
    }
    yaml.push_str(
        "  - id: pay\n    agent: did:t:payer\n    action: w\n    timeout_secs: 120\n    execute: \"put started 1\\nawait go\\nappend shared/pay.log paid;\"\n",
    );
    if first.is_some() {
        yaml.push_str("    depends_on: [prepare]\n");
    }
    SagaDefinition::from_yaml(&yaml).unwrap()
}

#[tokio::test]
async fn a_killed_agents_in_flight_step_is_re_executed_once_by_its_substitute() {
    let h = Hv::new();
    let s = h.session();
    for a in ["did:t:payer", "did:t:standby"] {
        h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
    }
    h.hv.activate_session(&s).unwrap();
    h.hv.register_substitute(&s, &id("did:t:payer"), &id("did:t:standby"))
        .unwrap();
    let hv = h.hv.clone();
    let s2 = s.clone();
    let run = tokio::spawn(async move { hv.run_saga(&s2, pay_saga(None)).await });
    wait_for_key(&h, &s, "started").await;
    let report = h.hv.kill_agent(&s, &id("did:t:payer"), "manual").unwrap();
    assert_eq!(report.terminated, [id("did:t:payer")]);
    assert!(
        matches!(&report.handed_off[..], [(step, sub)] if step.step == "pay" && sub.as_str() == "did:t:standby"),
        "{report:?}"
    );
    assert!(report.compensated.is_empty());
    // Only now may the step go on: the killed attempt can never append.
    let core = h.hv.session_core(&s).unwrap();
    core.state()
        .put(&id("did:test:host"), "go", b"1", 0)
        .unwrap();
    let saga = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the saga did not finish within 120 s")
        .unwrap()
        .unwrap();
    assert_eq!(saga.state, SagaState::Completed, "{saga:?}");
    let log = std::fs::read_to_string(h.dir(&s).join("files/shared/pay.log")).unwrap();
    assert_eq!(log, "paid;", "done once, by the substitute");
    let handoffs = events(&h, &s, EventKind::SecuritySagaHandoff);
    assert!(
        matches!(&handoffs[..], [EventPayload::SecuritySagaHandoff { step, substitute, .. }]
            if step == "pay" && substitute.as_str() == "did:t:standby"),
        "{handoffs:?}"
    );
}

/// Joins `did:t:payer`, its registered substitute `did:t:standby` and
/// `did:t:other` (all `scripted`, ring 2) and activates the session.
async fn payer_standby_and_other(h: &Hv, s: &SessionId) {
    for a in ["did:t:payer", "did:t:standby", "did:t:other"] {
        h.join(s, a, 0.8, ahv_agents::SCRIPTED).await;
    }
    h.hv.activate_session(s).unwrap();
    h.hv.register_substitute(s, &id("did:t:payer"), &id("did:t:standby"))
        .unwrap();
}

/// A committed step of an agent killed since is compensated in its
/// substitute's instance when a later step fails: whether the agent was
/// killed and removed (`kill_agent`) or only its instance was killed (its
/// kill handle). (The lookup once held the session's slot table while
/// asking for the substitute's slot, which takes it again: the saga hung,
/// and the session with it; and a killed instance that was still in place
/// was asked to compensate, and failed.) On a runtime of its own, shut down
/// in the background if the saga hangs, so that the bound on the wait
/// holds even then.
#[test]
fn a_killed_agents_committed_step_is_compensated_by_its_substitute() {
    for removed in [true, false] {
        committed_step_compensated_by_the_substitute(removed);
    }
}

fn committed_step_compensated_by_the_substitute(removed: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = Hv::new();
    let s = h.session();
    let (saga, core) = rt.block_on(async {
        payer_standby_and_other(&h, &s).await;
        let saga = SagaDefinition::from_yaml(
            "name: pay\nsteps:\n  - id: prepare\n    agent: did:t:payer\n    action: w\n    execute: write shared/prepared.txt yes\n    undo: put undone 1\n  - id: pay\n    agent: did:t:other\n    action: w\n    timeout_secs: 120\n    depends_on: [prepare]\n    execute: \"put started 1\\nawait go\\nfail the payment was refused\"\n",
        )
        .unwrap();
        let hv = h.hv.clone();
        let s2 = s.clone();
        let run = tokio::spawn(async move { hv.run_saga(&s2, saga).await });
        wait_for_key(&h, &s, "started").await;
        if removed {
            h.hv.kill_agent(&s, &id("did:t:payer"), "manual").unwrap();
        } else {
            h.hv.kill_handle(&s, &id("did:t:payer")).unwrap().kill("manual");
        }
        let core = h.hv.session_core(&s).unwrap();
        core.state()
            .put(&id("did:test:host"), "go", b"1", 0)
            .unwrap();
        (tokio::time::timeout(Duration::from_secs(60), run).await, core)
    });
    let Ok(saga) = saga else {
        // A worker is stuck on the session's lock: leave it behind.
        rt.shutdown_background();
        std::mem::forget(h);
        panic!("removed {removed}: the saga did not finish within 60 s of its failing step");
    };
    let saga = saga.unwrap().unwrap();
    assert_eq!(saga.state, SagaState::Failed, "removed {removed}: {saga:?}");
    assert_eq!(
        saga.step("prepare").unwrap().state,
        ahv_saga::StepState::Compensated,
        "removed {removed}: {saga:?}"
    );
    assert!(
        core.state().peek("undone").is_some(),
        "removed {removed}: the substitute ran the step's own compensation"
    );
    assert!(!h.dir(&s).join("files/shared/prepared.txt").exists());
    // The session still answers.
    assert!(h.hv.participants(&s).is_ok());
}

/// A fan-out branch handed to a substitute (its agent killed mid-step)
/// and then cancelled (another branch won) has what the substitute's
/// attempt changed undone: the changes are collected from the instance
/// that ran the attempt, not only from the agent's own. The winning branch
/// waits on a lock the test holds (a wait, not polling, which the rate
/// limit would cut short).
#[tokio::test]
async fn a_cancelled_branch_run_by_a_substitute_has_its_changes_undone() {
    use ahv_governance::locks::{LockMode, LockResource};
    let h = Hv::new();
    let s = h.session();
    payer_standby_and_other(&h, &s).await;
    let core = h.hv.session_core(&s).unwrap();
    let (host, gate) = (id("did:test:host"), LockResource::key("gate"));
    core.locks()
        .acquire(&host, &gate, LockMode::Write, Duration::from_secs(1))
        .await
        .unwrap();
    // b0 sleeps well within its ring's 30 s deadline, and well past the test.
    let saga = SagaDefinition::from_yaml(
        "name: race\nsteps:\n  - id: b0\n    agent: did:t:payer\n    action: w\n    timeout_secs: 120\n    execute: \"write partial.txt x\\nsleep 25000\"\n  - id: b1\n    agent: did:t:other\n    action: w\n    timeout_secs: 120\n    execute: \"lock key:gate write 100000\\nwrite shared/won.txt y\"\nfanout:\n  - id: g\n    policy: any\n    branches: [b0, b1]\n",
    )
    .unwrap();
    let hv = h.hv.clone();
    let s2 = s.clone();
    let run = tokio::spawn(async move { hv.run_saga(&s2, saga).await });
    let written = |agent: &str| h.dir(&s).join(format!("files/agents/{agent}/partial.txt"));
    let until_written = |path: std::path::PathBuf, whose: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after 60 s waiting for {whose} attempt to write {path:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    until_written(written("did:t:payer"), "the payer's").await;
    let report = h.hv.kill_agent(&s, &id("did:t:payer"), "manual").unwrap();
    assert!(
        matches!(&report.handed_off[..], [(step, sub)] if step.step == "b0" && sub.as_str() == "did:t:standby"),
        "{report:?}"
    );
    until_written(written("did:t:standby"), "the substitute's").await;
    core.locks().release(&host, &gate).unwrap();
    let saga = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the saga did not finish within 120 s")
        .unwrap()
        .unwrap();
    assert_eq!(saga.state, SagaState::Completed, "{saga:?}");
    assert_eq!(
        saga.step("b1").unwrap().state,
        ahv_saga::StepState::Committed
    );
    assert!(
        !written("did:t:standby").exists(),
        "the cancelled attempt's write in the substitute was undone: {saga:?}"
    );
    assert!(!written("did:t:payer").exists(), "the killed attempt's too");
}

#[tokio::test]
async fn without_a_substitute_a_killed_agents_step_fails_and_its_saga_compensates() {
    let h = Hv::new();
    let s = h.session();
    for a in ["did:t:payer", "did:t:prep"] {
        h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
    }
    h.hv.activate_session(&s).unwrap();
    let hv = h.hv.clone();
    let s2 = s.clone();
    let run = tokio::spawn(async move { hv.run_saga(&s2, pay_saga(Some("did:t:prep"))).await });
    wait_for_key(&h, &s, "started").await;
    let report = h.hv.kill_agent(&s, &id("did:t:payer"), "manual").unwrap();
    assert!(report.handed_off.is_empty(), "{report:?}");
    assert!(
        matches!(&report.compensated[..], [step] if step.step == "pay"),
        "{report:?}"
    );
    let saga = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the saga did not finish within 120 s")
        .unwrap()
        .unwrap();
    assert_eq!(saga.state, SagaState::Failed, "{saga:?}");
    assert_eq!(
        saga.step("prepare").unwrap().state,
        ahv_saga::StepState::Compensated
    );
    let shared = h.dir(&s).join("files/shared");
    assert!(!shared.join("prepared.txt").exists());
    assert!(!shared.join("pay.log").exists());
}

#[tokio::test]
async fn another_processs_slashes_count_at_join_once_the_ledger_refresh_has_passed() {
    // Two hypervisors on one ledger file, as two processes would share it.
    let shared = tempfile::tempdir().unwrap();
    let url = ahv_store::sqlite_url(shared.path());
    let clock = FakeClock::new();
    let (c, u) = (clock.clone(), url.clone());
    let h1 = Hv::with(move |b| b.clock(Arc::new(c)).database(u));
    let u = url.clone();
    let h2 = Hv::with(move |b| b.database(u));
    let s = h1.session();
    h1.hv
        .join_session(&s, JoinRequest::new(id("did:test:x"), 0.8))
        .await
        .unwrap();
    // The other one slashes it four times: risk 0.60.
    slash_n(&h2, "did:test:x", 4).await;
    h2.hv.flush_liability().await.unwrap();
    // Within the refresh (1 s by default) the first still admits from memory...
    let s = h1.session();
    assert_eq!(
        h1.hv
            .join_session(&s, JoinRequest::new(id("did:test:x"), 0.8))
            .await
            .unwrap(),
        Ring::Standard
    );
    // ...and once it has passed, it reads the store and refuses.
    clock.advance(Duration::from_secs(1));
    let s = h1.session();
    assert!(matches!(
        h1.hv
            .join_session(&s, JoinRequest::new(id("did:test:x"), 0.8))
            .await,
        Err(HypervisorError::AdmissionDenied { .. })
    ));
    // Its own entries count at once, refresh or not.
    slash_n(&h1, "did:test:y", 4).await;
    let s = h1.session();
    assert!(matches!(
        h1.hv
            .join_session(&s, JoinRequest::new(id("did:test:y"), 0.8))
            .await,
        Err(HypervisorError::AdmissionDenied { .. })
    ));
}

#[tokio::test]
async fn a_guest_on_probation_cannot_ask_its_way_out_of_ring_3() {
    let h = Hv::new();
    slash_n(&h, "did:test:p", 2).await;
    let s = h.session();
    // σ 0.9 would earn ring 2 and qualify for an elevation to it; probation caps it.
    assert_eq!(
        h.join(&s, "did:test:p", 0.9, ahv_agents::SCRIPTED).await,
        Ring::Sandbox
    );
    h.hv.activate_session(&s).unwrap();
    let out = h
        .script(&s, "did:test:p", "elevate 2 60 let me out\nring")
        .await;
    err(&out, "elevate 2 60 let me out", "denied");
    assert_eq!(ok(&out, "ring"), "3");
    let denied = events(&h, &s, EventKind::RingElevationDenied);
    assert!(
        matches!(&denied[..], [EventPayload::RingElevationDenied { reason, .. }] if reason.contains("capped")),
        "{denied:?}"
    );
}

#[tokio::test]
async fn a_killed_or_quarantined_agent_cannot_come_back_by_leaving_and_rejoining() {
    let h = Hv::new();
    let s = h.session();
    for a in ["did:test:k", "did:test:q"] {
        h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
    }
    h.hv.activate_session(&s).unwrap();
    h.hv.kill_agent(&s, &id("did:test:k"), "manual").unwrap();
    h.hv.quarantine(
        &s,
        &id("did:test:q"),
        QuarantineReason::Manual,
        "review",
        Some(Duration::from_secs(300)),
    )
    .unwrap();
    h.hv.leave_session(&s, &id("did:test:q")).unwrap();
    for a in ["did:test:k", "did:test:q"] {
        let c = h.hv.load(ahv_agents::SCRIPTED).unwrap();
        let e =
            h.hv.join_session(&s, JoinRequest::new(id(a), 0.8).component(c))
                .await
                .unwrap_err()
                .to_string();
        assert!(e.contains("may not join it again"), "{a}: {e}");
    }
    // The kill is in the ledger as the heaviest quarantine.
    let k = h.hv.ledger_entries(&id("did:test:k")).await.unwrap();
    assert!(
        k.iter()
            .any(|e| matches!(e.kind, EntryKind::Quarantine { severity } if severity.get() == 1.0)),
        "{k:?}"
    );
}

#[tokio::test]
async fn leaving_earns_no_clean_session_credit_and_credit_cannot_be_banked() {
    let h = Hv::new();
    // Joining and leaving forty times earns nothing.
    for _ in 0..40 {
        let s = h.session();
        h.hv.join_session(&s, JoinRequest::new(id("did:test:farmer"), 0.8))
            .await
            .unwrap();
        h.hv.leave_session(&s, &id("did:test:farmer")).unwrap();
    }
    assert!(
        h.hv.ledger_entries(&id("did:test:farmer"))
            .await
            .unwrap()
            .is_empty()
    );
    // Sessions that end with it in them do, but only against what came
    // before (at risk 0, nothing is even booked).
    for _ in 0..3 {
        let s = h.session();
        h.hv.join_session(&s, JoinRequest::new(id("did:test:farmer"), 0.8))
            .await
            .unwrap();
        h.hv.terminate_session(&s).unwrap();
    }
    slash_n(&h, "did:test:farmer", 1).await;
    let a = h.hv.assess(&id("did:test:farmer")).await.unwrap();
    assert!(close(a.risk, 0.15), "{a:?}");
}

#[tokio::test]
async fn an_agent_that_left_before_its_saga_escalated_is_still_slashed_in_the_ledger() {
    let h = Hv::new();
    let s = h.session();
    for a in ["did:t:a", "did:t:b"] {
        h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
    }
    h.hv.activate_session(&s).unwrap();
    // b commits a step, announces it, and the host lets b go before a's
    // step fails.
    let def = SagaDefinition::from_yaml(
        "name: esc\nsteps:\n  - id: one\n    agent: did:t:b\n    action: w\n    execute: \"write shared/one.txt 1\\nput one-done 1\"\n    undo: fail cannot take it back\n  - id: two\n    agent: did:t:a\n    action: w\n    depends_on: [one]\n    timeout_secs: 120\n    execute: \"await b-gone\\nfail no\"\n",
    )
    .unwrap();
    let hv = h.hv.clone();
    let s2 = s.clone();
    let run = tokio::spawn(async move { hv.run_saga(&s2, def).await });
    wait_for_key(&h, &s, "one-done").await;
    // Someone changes b's file after b's commit: b's step can no longer be
    // undone (its own compensate cannot run either, once b is gone).
    {
        use ahv_governance::files::FileSpace;
        let core = h.hv.session_core(&s).unwrap();
        let host = id("did:test:host");
        let who = ahv_governance::files::Caller::untraced(&host, Ring::Root);
        core.read(who, "shared/one.txt").unwrap();
        core.write(who, "shared/one.txt", b"changed since").unwrap();
    }
    h.hv.leave_session(&s, &id("did:t:b")).unwrap();
    h.hv.session_core(&s)
        .unwrap()
        .state()
        .put(&id("did:test:host"), "b-gone", b"1", 0)
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the saga did not finish within 120 s")
        .unwrap()
        .unwrap();
    assert_eq!(report.state, SagaState::Escalated, "{report:?}");
    let attributed: Vec<(String, f64)> =
        h.hv.events()
            .query(
                &EventQuery::default()
                    .session(s.clone())
                    .kind(EventKind::LiabilityFaultAttributed),
            )
            .into_iter()
            .filter_map(|e| match e.payload {
                EventPayload::LiabilityFaultAttributed { share, .. } => {
                    Some((e.agent.unwrap().to_string(), share))
                }
                _ => None,
            })
            .collect();
    let b_share = attributed
        .iter()
        .find(|(a, _)| a == "did:t:b")
        .map(|(_, s)| *s)
        .unwrap_or(0.0);
    let b = h.hv.ledger_entries(&id("did:t:b")).await.unwrap();
    // Its commit is the harm that remains: at least half the blame.
    assert!(b_share >= 0.5, "{attributed:?}");
    assert!(
        b.iter().any(|e| matches!(e.kind, EntryKind::Slash { .. })),
        "b carries {b_share} of the blame but was not slashed: {b:?}"
    );
}

#[tokio::test]
async fn a_vouch_does_not_lift_an_agent_a_breach_re_admitted_at_ring_3() {
    use ahv_security::breach::{BreachAction, BreachPolicy, BreachRule, BreachTrigger};
    let p = BreachPolicy::default()
        .with_rule(
            Ring::Standard,
            BreachRule {
                action: BreachAction::Readmit {
                    ring: Ring::Sandbox,
                },
                trigger: BreachTrigger::EveryBreach,
            },
        )
        .unwrap();
    let h = Hv::with(move |b| b.breach_policy(p));
    let s = h.session();
    h.join(&s, "did:test:b", 0.7, ahv_agents::SCRIPTED).await;
    h.join(&s, "did:test:backer", 0.9, ahv_agents::SCRIPTED)
        .await;
    h.hv.activate_session(&s).unwrap();
    // A ring 2 agent calls an effect (ring 1): re-admitted at ring 3.
    match h
        .hv
        .run_agent(&s, &id("did:test:b"), "effect notify.send hi")
        .await
    {
        Err(HypervisorError::Agent(AgentError::Trapped {
            cause: TrapCause::RingBreach(_),
            ..
        })) => {}
        other => panic!("must breach, got {other:?}"),
    }
    assert_eq!(h.hv.ring(&s, &id("did:test:b")).unwrap(), Ring::Sandbox);
    // σ 0.7 + 0.5 × 0.45 would earn ring 2; the breach's cap holds.
    let r =
        h.hv.vouch(&s, &id("did:test:backer"), &id("did:test:b"), Some(0.5))
            .unwrap();
    assert!(r.effective > 0.9, "{r:?}");
    assert_eq!(r.ring, Ring::Sandbox, "{r:?}");
    let out = h.script(&s, "did:test:b", "ring").await;
    assert_eq!(ok(&out, "ring"), "3");
}

/// A store whose ledger appends fail while `failing` is set (a database that
/// went away), or panic while `panicking` is (a store with a bug); everything
/// else is a real in-memory store.
#[derive(Debug, Default)]
struct Unreachable {
    inner: ahv_store::MemoryStore,
    failing: std::sync::atomic::AtomicBool,
    panicking: std::sync::atomic::AtomicBool,
}

impl Unreachable {
    fn refuse(&self) -> ahv_store::StoreError {
        ahv_store::StoreError::Unstorable {
            table: "ledger",
            column: "agent",
            value: "(any)".into(),
            reason: "the database is unreachable in this test",
        }
    }
}

impl ahv_store::TrustStore for Unreachable {
    fn backend(&self) -> &'static str {
        "memory"
    }
    fn append_entry(&self, entry: ahv_trust::LedgerEntry) -> ahv_store::StoreFuture<'_, ()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            let e = self.refuse();
            return Box::pin(async move { Err(e) });
        }
        self.inner.append_entry(entry)
    }
    fn append_entries(
        &self,
        entries: Vec<ahv_trust::LedgerEntry>,
    ) -> ahv_store::StoreFuture<'_, ()> {
        assert!(
            !self.panicking.load(std::sync::atomic::Ordering::SeqCst),
            "a store with a bug (this test's)"
        );
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            let e = self.refuse();
            return Box::pin(async move { Err(e) });
        }
        self.inner.append_entries(entries)
    }
    fn entries_for<'a>(
        &'a self,
        agent: &'a ahv_core::AgentId,
    ) -> ahv_store::StoreFuture<'a, Vec<ahv_trust::LedgerEntry>> {
        self.inner.entries_for(agent)
    }
    fn agents(&self) -> ahv_store::StoreFuture<'_, Vec<ahv_core::AgentId>> {
        self.inner.agents()
    }
    fn put_vouch(&self, row: ahv_store::VouchRow) -> ahv_store::StoreFuture<'_, ()> {
        self.inner.put_vouch(row)
    }
    fn vouches<'a>(
        &'a self,
        agent: Option<&'a ahv_core::AgentId>,
    ) -> ahv_store::StoreFuture<'a, Vec<ahv_store::VouchRow>> {
        self.inner.vouches(agent)
    }
    fn put_quarantine(&self, row: ahv_store::QuarantineRow) -> ahv_store::StoreFuture<'_, ()> {
        self.inner.put_quarantine(row)
    }
    fn quarantines<'a>(
        &'a self,
        agent: Option<&'a ahv_core::AgentId>,
    ) -> ahv_store::StoreFuture<'a, Vec<ahv_store::QuarantineRow>> {
        self.inner.quarantines(agent)
    }
}

/// A hypervisor whose liability store is an [`Unreachable`] (working).
fn on_unreachable() -> (Arc<Unreachable>, Hv) {
    let store = Arc::new(Unreachable::default());
    let s2 = store.clone();
    (store, Hv::with(move |b| b.trust_store(s2)))
}

/// A hypervisor whose store refused a slash's ledger write (and its
/// retries), then came back: the loss is not reported yet.
async fn with_a_lost_slash() -> Hv {
    let (store, h) = on_unreachable();
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    slash_n(&h, "did:test:lost", 1).await;
    // Read through the store thread: the slash's write (and its retries) came first.
    let a = h.hv.assess(&id("did:test:lost")).await.unwrap();
    assert_eq!(a.risk, 0.0, "the slash was not stored");
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    h
}

#[tokio::test]
async fn a_ledger_write_the_store_refuses_makes_admission_fail_closed_until_it_is_reported() {
    let h = with_a_lost_slash().await;
    let s = h.session();
    match h
        .hv
        .join_session(&s, JoinRequest::new(id("did:test:other"), 0.8))
        .await
    {
        Err(HypervisorError::Ledger(m)) => assert!(m.contains("could not be stored"), "{m}"),
        other => panic!("a lost ledger write must refuse joins, got {other:?}"),
    }
    // The operator hears of it; joins are admitted again.
    let e = h.hv.flush_liability().await.unwrap_err().to_string();
    assert!(e.contains("unreachable"), "{e}");
    h.hv.join_session(&s, JoinRequest::new(id("did:test:other"), 0.8))
        .await
        .unwrap();
}

/// `shutdown` reports a ledger write the store refused, as
/// `flush_liability` does, and so admits joins again.
#[tokio::test]
async fn shutdown_reports_a_lost_ledger_write_and_joins_are_admitted_again() {
    let h = with_a_lost_slash().await;
    let e = h.hv.shutdown().unwrap_err().to_string();
    assert!(e.contains("unreachable"), "{e}");
    let s = h.session();
    h.hv.join_session(&s, JoinRequest::new(id("did:test:other"), 0.8))
        .await
        .unwrap();
    h.hv.shutdown().unwrap();
}

/// A store thread that died (its store panicked) leaves the records queued
/// for it unstored: `shutdown` says so rather than reporting them stored,
/// and still writes the audit log (a session's seal, which no flusher
/// writes here, is durable after it).
#[tokio::test]
async fn shutdown_reports_a_liability_store_thread_that_died() {
    let store = Arc::new(Unreachable::default());
    let s2 = store.clone();
    let h = Hv::with(move |b| {
        b.trust_store(s2).audit(ahv_audit::AuditConfig {
            durability: ahv_audit::Durability::GroupCommit {
                max_records: usize::MAX,
                max_delay: Duration::from_secs(3600),
            },
            ..Default::default()
        })
    });
    let s = h.session();
    let ended = h.hv.terminate_session(&s).unwrap();
    let receipt = ended
        .commitment
        .as_ref()
        .expect("an audited session's seal");
    assert!(!receipt.is_durable(), "{receipt:?}");
    store
        .panicking
        .store(true, std::sync::atomic::Ordering::SeqCst);
    slash_n(&h, "did:test:doomed", 1).await;
    let e = h.hv.shutdown().unwrap_err().to_string();
    assert!(e.contains("thread ended"), "{e}");
    let ended = h.hv.wait_durable(ended, Duration::ZERO).unwrap();
    assert!(ended.commitment.unwrap().is_durable());
}

/// The SQLite ledger is created and migrated when the hypervisor starts,
/// in the background, not in the first join's ledger read.
#[test]
fn the_sqlite_ledger_is_ready_before_the_first_join() {
    let dir = tempfile::tempdir().unwrap();
    let hv = ahv_hypervisor::Hypervisor::builder()
        .state_dir(dir.path())
        .cache_dir(crate::cache_dir())
        .build()
        .unwrap();
    let file = dir.path().join(ahv_store::SQLITE_FILE);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&file).map_or(0, |m| m.len()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} was not created and migrated within 30 s of the build",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    hv.shutdown().unwrap();
}
