//! Session snapshots record the participants, and a restore reports how
//! they differ from the snapshot (the files come back, the participants do
//! not), both in its answer and in the audited `vfs.restore` event.

use ahv_core::Ring;
use ahv_core::event::{EventKind, EventPayload, EventQuery};
use ahv_governance::files::{Caller, FileSpace};
use ahv_governance::session::{ParticipantsDiff, RingChange, ScoreChange};
use ahv_hypervisor::JoinRequest;

use crate::sessions::{Hv, id};

#[tokio::test]
async fn restore_reports_who_joined_left_and_changed_since_the_snapshot() {
    let h = Hv::new();
    let s = h.session();
    let join =
        |agent: &'static str, sigma: f64| h.hv.join_session(&s, JoinRequest::new(id(agent), sigma));
    assert_eq!(join("did:test:a", 0.8).await.unwrap(), Ring::Standard);
    join("did:test:b", 0.9).await.unwrap();
    join("did:test:d", 0.7).await.unwrap();
    h.hv.activate_session(&s).unwrap();
    h.put_shared(&s, "doc", "v1");
    let snap = h.hv.snapshot(&s).unwrap();

    // Restoring at once: nothing to report.
    assert_eq!(
        h.hv.restore(&s, snap.id).unwrap(),
        ParticipantsDiff::default()
    );

    h.hv.leave_session(&s, &id("did:test:b")).unwrap();
    join("did:test:c", 0.3).await.unwrap();
    h.hv.leave_session(&s, &id("did:test:a")).unwrap();
    assert_eq!(join("did:test:a", 0.5).await.unwrap(), Ring::Sandbox);
    // The host reads after the first restore (strict clocks), then writes.
    let host = id("did:test:host");
    let core = h.hv.session_core(&s).unwrap();
    assert_eq!(
        core.read(Caller::untraced(&host, Ring::Root), "shared/doc")
            .unwrap(),
        b"v1"
    );
    h.put_shared(&s, "doc", "v2");

    let diff = h.hv.restore(&s, snap.id).unwrap();
    assert_eq!(
        diff,
        ParticipantsDiff {
            joined: vec![id("did:test:c")],
            left: vec![id("did:test:b")],
            rings: vec![RingChange {
                agent: id("did:test:a"),
                then: Ring::Standard,
                now: Ring::Sandbox,
            }],
            scores: vec![ScoreChange {
                agent: id("did:test:a"),
                then: 0.8,
                now: 0.5,
            }],
        }
    );
    // The files came back; the participants did not.
    assert_eq!(
        core.read(Caller::untraced(&host, Ring::Root), "shared/doc")
            .unwrap(),
        b"v1"
    );
    assert_eq!(
        core.files().snapshot_ids(),
        [snap.id],
        "the snapshot is kept"
    );
    assert!(
        h.hv.participants(&s)
            .unwrap()
            .iter()
            .any(|p| p.agent == id("did:test:c"))
    );

    let restores = h.hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::VfsRestore),
    );
    assert_eq!(restores.len(), 2);
    match &restores[1].payload {
        EventPayload::VfsRestore {
            snapshot,
            joined,
            left,
            rings,
            scores,
        } => {
            assert_eq!(*snapshot, snap.id);
            assert_eq!(joined, &[id("did:test:c")]);
            assert_eq!(left, &[id("did:test:b")]);
            assert_eq!(rings, "did:test:a 2->3");
            assert_eq!(scores, "did:test:a 0.8->0.5");
        }
        other => panic!("not a restore: {other:?}"),
    }
    // An unknown snapshot is refused before anything changes.
    assert!(h.hv.restore(&s, snap.id + 1).is_err());
}
