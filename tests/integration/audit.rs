//! The audit log end to end: real guests in a hypervisor whose every governed
//! action is captured, sealed at termination, signed, and verified offline.

use std::sync::{Arc, Mutex, OnceLock};

use ahv_audit::verify::{ProblemKind, verify_dir};
use ahv_audit::{Delta, LogKind, Value, read_log};
use ahv_core::event::{EventKind, EventQuery};
use ahv_governance::session::SessionConfig;
use ahv_hypervisor::{Hypervisor, HypervisorError};
use ahv_runtime::{RingBreach, TrapCause};

use crate::sessions::{Hv, id};

fn deltas(h: &Hv, s: &ahv_core::SessionId) -> Vec<Delta> {
    ahv_audit::auditor::read_session_log(&h.state.path().join("audit"), s.as_str())
        .unwrap()
        .iter()
        .map(|r| Delta::decode(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn a_ring_breach_is_audited_before_the_trap_reaches_the_caller() {
    let cell: Arc<OnceLock<Hypervisor>> = Arc::new(OnceLock::new());
    let seen: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(Vec::new()));
    let (c2, s2) = (cell.clone(), seen.clone());
    let h = Hv::with(move |b| {
        b.on_breach(move |_: &RingBreach| {
            // Runs inside the guest's host call, before the trap unwinds:
            // the breach event must already have its audit delta.
            let hv = c2.get().expect("hypervisor set");
            let breach = hv
                .events()
                .query(&EventQuery::default().kind(EventKind::RingBreachDetected))
                .pop()
                .expect("breach event emitted first");
            let audited = hv
                .events()
                .query(&EventQuery::default().kind(EventKind::AuditDeltaCaptured))
                .iter()
                .any(|e| e.parent == Some(breach.id));
            s2.lock().unwrap().push(audited);
        })
    });
    cell.set(h.hv.clone()).unwrap();
    let s = h.session();
    h.join(&s, "did:test:intruder", 0.3, ahv_agents::ESCALATOR)
        .await;
    h.hv.activate_session(&s).unwrap();
    let r =
        h.hv.run_agent(&s, &id("did:test:intruder"), "state:x")
            .await;
    let Err(HypervisorError::Agent(e)) = r else {
        panic!("expected a trap, got {r:?}");
    };
    assert!(matches!(e.cause(), Some(TrapCause::RingBreach(_))), "{e}");
    assert_eq!(*seen.lock().unwrap(), vec![true]);

    let t = h.hv.terminate_session(&s).unwrap();
    h.hv.shutdown().unwrap();
    let d = deltas(&h, &s);
    let breach = d
        .iter()
        .find(|d| d.kind == "ring.breach_detected")
        .expect("breach delta");
    assert_eq!(breach.agent.as_deref(), Some("did:test:intruder"));
    assert_eq!(
        breach.field("capability"),
        Some(&Value::Text("state-write".into()))
    );
    assert_eq!(breach.field("ring"), Some(&Value::Ring(3)));
    // The expulsion that followed is audited too, after the breach.
    let left = d.iter().position(|d| d.kind == "session.left").unwrap();
    assert!(left > usize::try_from(breach.seq).unwrap());
    assert_eq!(t.commitment.unwrap().commitment.tree_size, d.len() as u64);
}

#[tokio::test]
async fn sealed_and_signed_sessions_verify_and_tampering_is_named() {
    let h = Hv::new();
    let key = *h.hv.audit().unwrap().public_key();
    let a = h.session();
    h.put_shared(&a, "sources/a.txt", "WebAssembly components are portable.");
    h.join(&a, "did:test:researcher", 0.75, ahv_agents::RESEARCHER)
        .await;
    h.hv.activate_session(&a).unwrap();
    h.hv.run_agent(&a, &id("did:test:researcher"), "portable")
        .await
        .unwrap();
    let quiet =
        h.hv.create_session(
            SessionConfig {
                audit: false,
                ..SessionConfig::default()
            },
            id("did:test:operator"),
        )
        .unwrap();
    h.put_shared(&quiet, "x.txt", "not audited");

    let ta = h.hv.terminate_session(&a).unwrap();
    let tq = h.hv.terminate_session(&quiet).unwrap();
    let receipt = ta.commitment.expect("audited session sealed");
    assert!(tq.commitment.is_none(), "audit off: nothing sealed");
    let head = h.hv.shutdown().unwrap().expect("signed head");
    assert_eq!(head.head.size, 1);
    assert_eq!(receipt.index, 0);

    // Every governed event of the session is a delta, in order.
    let d = deltas(&h, &a);
    let kinds: Vec<&str> = d.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"session.created"));
    assert!(kinds.contains(&"vfs.write"), "{kinds:?}");
    assert!(kinds.contains(&"state.write"), "{kinds:?}");
    assert!(kinds.contains(&"ring.assigned"), "{kinds:?}");
    assert_eq!(
        &kinds[kinds.len() - 2..],
        ["session.terminated", "session.archived"]
    );
    assert_eq!(receipt.commitment.tree_size, d.len() as u64);
    let write = d.iter().find(|d| d.kind == "vfs.write").unwrap();
    assert!(matches!(write.field("after"), Some(Value::Hash(Some(_)))));

    let audit = h.state.path().join("audit");
    let report = verify_dir(&audit, None, Some(&key)).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(
        report.sessions.len(),
        1,
        "the unaudited session left no log"
    );
    assert!(
        ahv_audit::auditor::read_session_log(&audit, quiet.as_str())
            .unwrap()
            .is_empty()
    );

    // One changed byte inside a delta: caught at its record, in its segment.
    let segments = ahv_audit::segments::segments_dir(&audit);
    let victim = ahv_audit::segments::session_records(&segments, a.as_str())
        .unwrap()
        .records
        .records[3]
        .clone();
    let path = ahv_audit::segments::segment_path(&segments, victim.segment);
    let mut raw = std::fs::read(&path).unwrap();
    raw[usize::try_from(victim.record.offset).unwrap() + 12] ^= 0x40;
    std::fs::write(&path, &raw).unwrap();
    let report = verify_dir(&audit, None, Some(&key)).unwrap();
    assert!(!report.ok());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Damaged
                && p.offset == Some(victim.record.offset)
                && p.detail
                    .contains(&path.file_name().unwrap().to_string_lossy().to_string())),
        "{report}"
    );
    // The session lost the round's records: its chain and size say so.
    assert!(!report.sessions[0].problems.is_empty(), "{report}");
}

#[tokio::test]
async fn an_agent_error_leaves_the_log_consistent() {
    // A trap that is not a breach (fuel) mid-session: the log stays a valid
    // chain and the session still seals.
    let h = Hv::new();
    let s = h.session();
    h.join(&s, "did:test:spinner", 0.3, ahv_agents::SPINNER)
        .await;
    h.hv.activate_session(&s).unwrap();
    let r = h.hv.run_agent(&s, &id("did:test:spinner"), "").await;
    assert!(
        matches!(
            r,
            Err(HypervisorError::Agent(ref e)) if matches!(e.cause(), Some(TrapCause::OutOfFuel { .. }))
        ),
        "{r:?}"
    );
    let t = h.hv.terminate_session(&s).unwrap();
    assert!(t.commitment.is_some());
    h.hv.shutdown().unwrap();
    let report = verify_dir(&h.state.path().join("audit"), None, None).unwrap();
    assert!(report.ok(), "{report}");
}

/// Host operations are traced like agent calls: each gets its own trace id,
/// its events chain (each the parent of the next), and the deltas keep the
/// trace, so an audit record names the operation that caused it.
#[tokio::test]
async fn each_host_operation_has_its_own_trace_and_its_deltas_keep_it() {
    let h = Hv::new();
    let s = h.session();
    h.join(&s, "did:test:agent", 0.8, ahv_agents::PINGER).await;
    h.hv.activate_session(&s).unwrap();
    h.hv.terminate_session(&s).unwrap();
    let events =
        h.hv.events()
            .query(&EventQuery::default().session(s.clone()));
    let of = |k: EventKind| events.iter().find(|e| e.kind() == k).unwrap();
    let created = of(EventKind::SessionCreated);
    let joined = of(EventKind::SessionJoined);
    let assigned = of(EventKind::RingAssigned);
    let activated = of(EventKind::SessionActivated);
    let terminated = of(EventKind::SessionTerminated);
    let archived = of(EventKind::SessionArchived);
    for e in [created, joined, assigned, activated, terminated, archived] {
        assert_ne!(e.trace.0, 0, "{e}");
    }
    // One trace per operation; within one, each event caused the next.
    assert_eq!(assigned.trace, joined.trace);
    assert_eq!(assigned.parent, Some(joined.id));
    assert_eq!(joined.parent, None);
    assert_eq!(archived.trace, terminated.trace);
    assert_eq!(archived.parent, Some(terminated.id));
    let traces: std::collections::HashSet<_> = [created, joined, activated, terminated]
        .iter()
        .map(|e| e.trace)
        .collect();
    assert_eq!(traces.len(), 4, "each operation its own trace");
    // Sealing is part of terminating: its event follows the archive.
    let committed = of(EventKind::AuditCommitted);
    assert_eq!(committed.trace, terminated.trace);
    assert_eq!(committed.parent, Some(archived.id));
    h.hv.shutdown().unwrap();
    let d = deltas(&h, &s);
    let delta = |kind: &str| d.iter().find(|d| d.kind == kind).unwrap();
    assert_eq!(delta("session.joined").trace, joined.trace.0);
    assert_eq!(delta("ring.assigned").trace, joined.trace.0);
    assert_eq!(delta("session.archived").trace, terminated.trace.0);
}

#[test]
fn a_termination_under_group_commit_is_pending_until_the_hypervisor_waits_for_its_seal() {
    let h = Hv::new();
    let s = h.session();
    let t = h.hv.terminate_session(&s).unwrap();
    let receipt = t.commitment.clone().expect("audited sessions are sealed");
    // The default group commit: terminating did not wait for the disk.
    assert_eq!(receipt.state, ahv_audit::SealState::Pending);
    let t = h.hv.wait_durable(t, ahv_audit::DURABLE_WAIT).unwrap();
    let durable = t.commitment.expect("still sealed");
    assert!(durable.is_durable());
    assert_eq!(
        (&durable.commitment, durable.index),
        (&receipt.commitment, receipt.index)
    );
    let on_disk = read_log(
        h.state.path().join("audit/commitments.log"),
        LogKind::COMMITMENTS,
    )
    .unwrap();
    let record = &on_disk.records[usize::try_from(receipt.index).unwrap()];
    assert_eq!(record.body, receipt.commitment.encode());
    // A session audited off has no receipt, and nothing to wait for.
    let off =
        h.hv.create_session(
            SessionConfig {
                audit: false,
                ..SessionConfig::default()
            },
            crate::sessions::id("did:test:operator"),
        )
        .unwrap();
    let t = h.hv.terminate_session(&off).unwrap();
    assert!(t.commitment.is_none());
    let t = h.hv.wait_durable(t, std::time::Duration::ZERO).unwrap();
    assert!(t.commitment.is_none());
}
