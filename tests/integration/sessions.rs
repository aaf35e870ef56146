//! Shared sessions through the `Hypervisor`, with real guest programs:
//! lifecycle, isolation between sessions, ring and ACL enforcement on every
//! VFS and state operation, conflicts, deadlocks, locks of killed holders,
//! quotas, snapshots and the maximum duration.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ahv_core::event::{EventKind, EventPayload, EventQuery, TerminationReason};
use ahv_core::{AgentId, Capability, FakeClock, Ring, SessionId};
use ahv_governance::files::{Caller, FileSpace};
use ahv_governance::session::{Consistency, SessionConfig, SessionError, SessionState};
use ahv_governance::session_vfs::FileQuotas;
use ahv_governance::state::Isolation;
use ahv_hypervisor::{Hypervisor, HypervisorBuilder, HypervisorError, JoinRequest};
use ahv_runtime::{AgentError, TrapCause};

use crate::cache_dir;

/// A hypervisor over a fresh state directory.
pub struct Hv {
    pub hv: Hypervisor,
    pub state: tempfile::TempDir,
}

impl Hv {
    pub fn new() -> Hv {
        Hv::with(|b| b)
    }

    pub fn with(f: impl FnOnce(HypervisorBuilder) -> HypervisorBuilder) -> Hv {
        let state = tempfile::tempdir().unwrap();
        let b = Hypervisor::builder()
            .state_dir(state.path())
            .cache_dir(cache_dir())
            .max_instances(32);
        Hv {
            hv: f(b).build().unwrap(),
            state,
        }
    }

    pub fn session(&self) -> SessionId {
        self.hv
            .create_session(SessionConfig::default(), id("did:test:operator"))
            .unwrap()
    }

    pub async fn join(&self, s: &SessionId, agent: &str, sigma: f64, wasm: &[u8]) -> Ring {
        let c = self.hv.load(wasm).unwrap();
        self.hv
            .join_session(s, JoinRequest::new(id(agent), sigma).component(c))
            .await
            .unwrap()
    }

    /// Runs `script` in the `scripted` agent `agent` and returns its report.
    pub async fn script(&self, s: &SessionId, agent: &str, script: &str) -> String {
        match self.hv.run_agent(s, &id(agent), script).await {
            Ok(out) => out.result.unwrap_or_else(|e| panic!("script failed: {e}")),
            Err(e) => panic!("{agent} trapped: {e}"),
        }
    }

    /// `<state>/sessions/<id>`.
    pub fn dir(&self, s: &SessionId) -> PathBuf {
        self.state.path().join("sessions").join(s.as_str())
    }

    /// Writes a file into the session's shared area, as the host (through
    /// the session VFS: files put on disk behind its back do not exist for it).
    pub fn put_shared(&self, s: &SessionId, rel: &str, text: &str) {
        let core = self.hv.session_core(s).unwrap();
        let host = id("did:test:host");
        core.write(
            Caller::untraced(&host, Ring::Root),
            &format!("shared/{rel}"),
            text.as_bytes(),
        )
        .unwrap();
    }

    pub fn kinds(&self, s: &SessionId) -> Vec<EventKind> {
        self.hv
            .events()
            .query(&EventQuery::default().session(s.clone()))
            .iter()
            .map(|e| e.kind())
            .collect()
    }
}

pub fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

/// The report line for `command`.
pub fn line<'a>(report: &'a str, command: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{command} -> ")))
        .unwrap_or_else(|| panic!("no line for {command:?} in:\n{report}"))
}

pub fn ok(report: &str, command: &str) -> String {
    let l = line(report, command);
    let rest = &l[command.len() + 4..];
    assert!(rest.starts_with("ok"), "{command} must succeed:\n{report}");
    rest.trim_start_matches("ok").trim().to_string()
}

pub fn err(report: &str, command: &str, kind: &str) {
    let l = line(report, command);
    assert!(
        l.contains(&format!("-> err {kind}:")),
        "{command} must fail with {kind}:\n{report}"
    );
}

fn breach_of(r: Result<ahv_runtime::RunOutput, HypervisorError>) -> ahv_runtime::RingBreach {
    match r {
        Err(HypervisorError::Agent(AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            ..
        })) => b,
        Err(e) => panic!("expected a breach, got {e}"),
        Ok(out) => panic!("expected a breach, got {:?}", out.result),
    }
}

/// Every file under `dir` with its bytes, relative and sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, p: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.push((rel + "/", Vec::new()));
                walk(root, &path, out);
            } else {
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn lifecycle_events_and_queries_through_the_hypervisor() {
    let h = Hv::new();
    let s = h.session();
    assert_eq!(h.hv.session(&s).unwrap().state, SessionState::Handshaking);
    assert!(
        !h.dir(&s).exists(),
        "a session that never touched files has no directory"
    );
    // Running before activation is refused.
    assert_eq!(
        h.join(&s, "did:test:a", 0.8, ahv_agents::SCRIPTED).await,
        Ring::Standard
    );
    assert!(matches!(
        h.hv.run_agent(&s, &id("did:test:a"), "keys x").await,
        Err(HypervisorError::Session(
            SessionError::InvalidTransition { .. }
        ))
    ));
    // Without a component: a participant with no instance.
    let r =
        h.hv.join_session(&s, JoinRequest::new(id("did:test:host-only"), 0.3))
            .await
            .unwrap();
    assert_eq!(r, Ring::Sandbox, "below min σ 0.60: sandbox only");
    assert!(matches!(
        h.hv.join_session(&s, JoinRequest::new(id("did:test:a"), 0.9))
            .await,
        Err(HypervisorError::Session(SessionError::AlreadyJoined { .. }))
    ));
    h.hv.activate_session(&s).unwrap();
    assert!(matches!(
        h.hv.activate_session(&s),
        Err(HypervisorError::Session(
            SessionError::InvalidTransition { .. }
        ))
    ));
    let out = h
        .script(
            &s,
            "did:test:a",
            "write shared/x.txt hello\nread shared/x.txt",
        )
        .await;
    assert_eq!(ok(&out, "read shared/x.txt"), "hello");
    assert!(matches!(
        h.hv.run_agent(&s, &id("did:test:host-only"), "").await,
        Err(HypervisorError::NoInstance { .. })
    ));
    assert_eq!(h.hv.participants(&s).unwrap().len(), 2);
    assert_eq!(h.hv.ring(&s, &id("did:test:a")).unwrap(), Ring::Standard);
    h.hv.leave_session(&s, &id("did:test:host-only")).unwrap();
    let t = h.hv.terminate_session(&s).unwrap();
    assert_eq!(
        (t.reason, t.participants),
        (TerminationReason::Requested, 1)
    );
    assert_eq!(h.hv.session(&s).unwrap().state, SessionState::Archived);
    assert!(matches!(
        h.hv.terminate_session(&s),
        Err(HypervisorError::UnknownSession { .. })
    ));
    assert!(matches!(
        h.hv.join_session(&s, JoinRequest::new(id("did:test:late"), 0.8))
            .await,
        Err(HypervisorError::UnknownSession { .. })
    ));
    use EventKind::*;
    let kinds = h.kinds(&s);
    let lifecycle: Vec<_> = kinds
        .iter()
        .copied()
        .filter(|k| k.name().starts_with("session.") || *k == RingAssigned)
        .collect();
    assert_eq!(
        lifecycle,
        [
            SessionCreated,
            SessionJoined,
            RingAssigned,
            SessionJoined,
            RingAssigned,
            SessionActivated,
            SessionLeft,
            SessionTerminated,
            SessionArchived
        ]
    );
    assert!(kinds.contains(&VfsWrite), "{kinds:?}");
    // The write event carries the content hash and the call's trace id.
    let w =
        h.hv.events()
            .query(&EventQuery::default().session(s.clone()).kind(VfsWrite));
    let EventPayload::VfsWrite { path, after, .. } = &w[0].payload else {
        panic!()
    };
    assert_eq!(path, "shared/x.txt");
    assert_eq!(*after, Some(ahv_governance::files::sha256(b"hello")));
    assert_ne!(w[0].trace.0, 0, "carries the call's trace id");
}

#[tokio::test]
async fn a_non_reversible_action_forces_strong_consistency() {
    let h = Hv::new();
    let s =
        h.hv.create_session(
            SessionConfig {
                consistency: Consistency::Eventual,
                ..Default::default()
            },
            id("did:test:op"),
        )
        .unwrap();
    let effect = ahv_core::ActionDescriptor {
        id: "deploy".into(),
        reversibility: ahv_core::Reversibility::None,
        read_only: false,
        admin: false,
    };
    h.hv.join_session(
        &s,
        JoinRequest::new(id("did:test:d"), 0.8).actions(vec![effect]),
    )
    .await
    .unwrap();
    assert_eq!(h.hv.session(&s).unwrap().consistency, Consistency::Strong);
}

pub mod researcher {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn researcher_and_editor_write_a_report_together() {
        let h = Hv::new();
        let s = h.session();
        h.put_shared(
            &s,
            "sources/a.txt",
            "Wasm is portable. Cats sleep. WASM sandboxes code.",
        );
        h.put_shared(
            &s,
            "sources/b.txt",
            "Nothing here. Wasm components compose.",
        );
        h.put_shared(&s, "sources/c.txt", "No match at all.");
        assert_eq!(
            h.join(&s, "did:test:researcher", 0.75, ahv_agents::RESEARCHER)
                .await,
            Ring::Standard
        );
        assert_eq!(
            h.join(&s, "did:test:editor", 0.85, ahv_agents::EDITOR)
                .await,
            Ring::Standard
        );
        h.hv.activate_session(&s).unwrap();
        let r =
            h.hv.run_agent(&s, &id("did:test:researcher"), "wasm")
                .await
                .unwrap();
        assert_eq!(
            r.result.as_deref(),
            Ok("3 finding(s) on \"wasm\" from 3 source(s)")
        );
        let core = h.hv.session_core(&s).unwrap();
        let a = core.state().peek("findings/a.txt").unwrap();
        assert_eq!(a.value, b"Wasm is portable.\nWASM sandboxes code.");
        assert_eq!(a.writer, id("did:test:researcher"));
        assert!(core.state().peek("findings/c.txt").is_none());

        let e =
            h.hv.run_agent(&s, &id("did:test:editor"), "Wasm notes")
                .await
                .unwrap();
        let answer = e.result.unwrap();
        assert!(
            answer.starts_with("shared/report.md: 3 finding(s), sha256 "),
            "{answer}"
        );
        let report = std::fs::read_to_string(h.dir(&s).join("files/shared/report.md")).unwrap();
        assert!(
            report.starts_with("# Wasm notes\n\nTopic: wasm\n"),
            "{report}"
        );
        assert!(
            report.contains("- WASM sandboxes code.\n")
                && report.contains("- Wasm components compose.\n")
        );
        let hash = core.state().peek("report/sha256").unwrap().value;
        assert_eq!(
            String::from_utf8(hash).unwrap(),
            ahv_governance::files::sha256(report.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            "the recorded hash is the file's"
        );
        assert!(
            core.locks().held_by(&id("did:test:editor")).is_empty(),
            "the editor released its lock"
        );
        let kinds = h.kinds(&s);
        for k in [
            EventKind::StateWrite,
            EventKind::LockAcquired,
            EventKind::LockReleased,
            EventKind::VfsWrite,
        ] {
            assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
        }
    }
}

pub mod editor {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn editor_waits_for_the_report_lock_and_times_out_when_it_is_held() {
        let h = Hv::new();
        let s = h.session();
        h.join(&s, "did:test:editor", 0.85, ahv_agents::EDITOR)
            .await;
        h.join(&s, "did:test:holder", 0.85, ahv_agents::SCRIPTED)
            .await;
        h.hv.activate_session(&s).unwrap();
        // The holder takes the report lock and keeps it (locks outlive calls).
        let out = h
            .script(
                &s,
                "did:test:holder",
                "lock path:shared/report.md exclusive 0",
            )
            .await;
        ok(&out, "lock path:shared/report.md exclusive 0");
        let r =
            h.hv.run_agent(&s, &id("did:test:editor"), "T")
                .await
                .unwrap();
        let msg = r.result.unwrap_err();
        assert!(msg.starts_with("cannot lock shared/report.md: "), "{msg}");
        assert!(msg.contains("timeout") || msg.contains("Timeout"), "{msg}");
        assert!(!h.dir(&s).join("files/shared/report.md").exists());
        // Released: the editor now succeeds.
        h.script(&s, "did:test:holder", "unlock path:shared/report.md")
            .await;
        let r =
            h.hv.run_agent(&s, &id("did:test:editor"), "T")
                .await
                .unwrap();
        assert!(
            r.result
                .unwrap()
                .starts_with("shared/report.md: 0 finding(s)")
        );
    }
}

pub mod scripted {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn ring_3_reads_but_every_write_capability_is_a_breach_and_expels() {
        let h = Hv::new();
        let s =
            h.hv.create_session(
                SessionConfig {
                    max_participants: 20,
                    ..Default::default()
                },
                id("did:test:operator"),
            )
            .unwrap();
        h.put_shared(&s, "doc.txt", "shared text");
        let tries = [
            ("write shared/doc.txt x", Capability::VfsWrite, "write"),
            ("append notes.txt x", Capability::VfsWrite, "append"),
            ("delete shared/doc.txt", Capability::VfsWrite, "delete"),
            (
                "rename shared/doc.txt shared/y",
                Capability::VfsWrite,
                "rename",
            ),
            ("mkdir d", Capability::VfsWrite, "create-dir"),
            (
                "setacl shared/doc.txt did:test:r0 owner owner",
                Capability::VfsWrite,
                "set-acl",
            ),
            ("put k v", Capability::StateWrite, "put"),
            ("del k", Capability::StateWrite, "delete"),
            ("lock key:k read 0", Capability::Locks, "acquire"),
            ("unlock key:k", Capability::Locks, "release"),
            ("held", Capability::Locks, "held"),
        ];
        for (i, _) in tries.iter().enumerate() {
            assert_eq!(
                h.join(&s, &format!("did:test:r{i}"), 0.3, ahv_agents::SCRIPTED)
                    .await,
                Ring::Sandbox
            );
        }
        h.hv.activate_session(&s).unwrap();
        // Reads are within ring 3.
        let out = h.script(&s, "did:test:r0", "read shared/doc.txt\nlist shared\nstat shared/doc.txt\nhash shared/doc.txt\nacl shared/doc.txt\nget k\nkeys").await;
        assert_eq!(ok(&out, "read shared/doc.txt"), "shared text");
        assert_eq!(ok(&out, "list shared"), "doc.txt");
        assert_eq!(ok(&out, "get k"), "none");
        for (i, (script, cap, function)) in tries.iter().enumerate() {
            let agent = format!("did:test:r{i}");
            let b = breach_of(h.hv.run_agent(&s, &id(&agent), script).await);
            assert_eq!(
                (b.capability, b.function.as_str(), b.ring),
                (*cap, *function, Ring::Sandbox),
                "{script}"
            );
            assert!(h.hv.ring(&s, &id(&agent)).is_err(), "{agent} was expelled");
        }
        assert_eq!(
            std::fs::read_to_string(h.dir(&s).join("files/shared/doc.txt")).unwrap(),
            "shared text"
        );
        let core = h.hv.session_core(&s).unwrap();
        assert!(core.state().peek("k").is_none());
        let ev = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::RingBreachDetected),
        );
        assert_eq!(ev.len(), tries.len(), "every breach recorded as an event");
        let left = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::SessionLeft),
        );
        assert!(left.iter().all(|e| matches!(&e.payload, EventPayload::SessionLeft { reason } if reason.starts_with("expelled: ring breach"))));
    }

    /// A guest that writes one key over and over in one call leaves one
    /// journal entry, holding the value before its first write: the host
    /// keeps one previous value, not one per write (the 16 KiB values of
    /// 30 writes would have been 480 KiB, and 1 MiB ones 30 MiB; the rate
    /// limit allows ~40 at ring 2, hundreds at rings 1 and 0).
    #[tokio::test]
    async fn a_key_rewritten_in_one_call_keeps_one_previous_value() {
        let h = Hv::new();
        let s = h.session();
        h.join(&s, "did:test:w", 0.8, ahv_agents::SCRIPTED).await;
        h.hv.activate_session(&s).unwrap();
        h.script(&s, "did:test:w", "put k first").await;
        let value = "v".repeat(16 << 10);
        let script = vec![format!("get k\nput k {value}"); 30].join("\n");
        let out =
            h.hv.run_agent(&s, &id("did:test:w"), &script)
                .await
                .unwrap();
        let report = out.result.unwrap();
        let failed: Vec<&str> = report.lines().filter(|l| !l.contains("-> ok")).collect();
        assert!(
            failed.is_empty(),
            "{:?}",
            failed
                .iter()
                .map(|l| &l[l.len().saturating_sub(160)..])
                .collect::<Vec<_>>()
        );
        let states: Vec<_> = out
            .changes
            .iter()
            .filter_map(|c| match c {
                ahv_governance::journal::Change::State(s) => Some(s),
                _ => None,
            })
            .collect();
        assert!(
            matches!(&states[..], [s] if s.previous.as_deref() == Some(&b"first"[..])
                && s.previous_version == 1 && s.version == 31),
            "{:?}",
            states
                .iter()
                .map(|s| (s.previous_version, s.version))
                .collect::<Vec<_>>()
        );
    }

    /// A guest cannot hoard memory in ACLs: the ids an ACL lists count
    /// against the session's byte quota as file contents do (here 8 KiB),
    /// so an ACL of 100 long ids is refused as over quota and a short one
    /// goes through; the `vfs.acl_changed` event names what was set.
    #[tokio::test]
    async fn acl_lists_from_a_real_guest_count_against_the_quota() {
        let h = Hv::with(|b| {
            b.quotas(FileQuotas {
                max_total_bytes: 8 << 10,
                ..FileQuotas::default()
            })
        });
        let s = h.session();
        h.join(&s, "did:test:alice", 0.8, ahv_agents::SCRIPTED)
            .await;
        h.hv.activate_session(&s).unwrap();
        let ids = |n: usize| -> String {
            (0..n)
                .map(|i| format!("did:test:reader-{i:03}-{}", "x".repeat(40)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let long = format!("setacl shared/f did:test:alice {} owner", ids(100));
        let short = format!("setacl shared/f did:test:alice {} owner", ids(5));
        let out = h
            .script(
                &s,
                "did:test:alice",
                &format!("write shared/f x\n{long}\n{short}"),
            )
            .await;
        ok(&out, "write shared/f x");
        err(&out, &long, "quota");
        ok(&out, &short);
        let acls: Vec<_> =
            h.hv.events()
                .query(
                    &EventQuery::default()
                        .session(s.clone())
                        .kind(EventKind::VfsAclChanged),
                )
                .into_iter()
                .map(|e| e.payload)
                .collect();
        assert!(
            matches!(&acls[..], [EventPayload::VfsAclChanged { acl, .. }] if acl.contains("reader-004") && !acl.contains("reader-005")),
            "{acls:?}"
        );
    }

    #[tokio::test]
    async fn acls_private_areas_and_strict_clocks_from_real_guests() {
        let h = Hv::new();
        let s = h.session();
        for a in ["did:test:alice", "did:test:bob"] {
            h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
        }
        h.hv.activate_session(&s).unwrap();
        let out = h.script(&s, "did:test:alice", "write notes.txt alice private\nwrite shared/plan.md v1\nsetacl shared/plan.md did:test:alice everyone owner\nacl shared/plan.md").await;
        assert_eq!(
            ok(&out, "acl shared/plan.md"),
            "owner=did:test:alice read=everyone write=owner"
        );
        let out = h.script(&s, "did:test:bob", "read notes.txt\nwrite notes.txt bob private\nread shared/plan.md\nwrite shared/plan.md v2\nsetacl shared/plan.md did:test:bob everyone everyone\nlist .").await;
        err(&out, "read notes.txt", "not-found");
        ok(&out, "write notes.txt bob private");
        assert_eq!(ok(&out, "read shared/plan.md"), "v1");
        err(&out, "write shared/plan.md v2", "denied");
        err(
            &out,
            "setacl shared/plan.md did:test:bob everyone everyone",
            "denied",
        );
        assert_eq!(ok(&out, "list ."), "notes.txt,shared");
        let files = h.dir(&s).join("files");
        assert_eq!(
            std::fs::read_to_string(files.join("agents/did:test:alice/notes.txt")).unwrap(),
            "alice private"
        );
        assert_eq!(
            std::fs::read_to_string(files.join("agents/did:test:bob/notes.txt")).unwrap(),
            "bob private"
        );
        assert_eq!(
            std::fs::read_to_string(files.join("shared/plan.md")).unwrap(),
            "v1"
        );

        // Strict consistency: bob overwrites a shared file he has not read -> conflict.
        h.script(&s, "did:test:alice", "write shared/open.md a1")
            .await;
        let out = h
            .script(&s, "did:test:bob", "write shared/open.md b1")
            .await;
        err(&out, "write shared/open.md b1", "conflict");
        let out = h
            .script(
                &s,
                "did:test:bob",
                "read shared/open.md\nwrite shared/open.md b1",
            )
            .await;
        ok(&out, "write shared/open.md b1");
        let conflicts = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::VfsConflict),
        );
        assert_eq!(conflicts.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_state_writers_conflict_never_silently_accepted() {
        let h = Hv::new();
        let s = h.session();
        for a in ["did:test:a", "did:test:b"] {
            h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
        }
        h.hv.activate_session(&s).unwrap();
        assert_eq!(
            ok(&h.script(&s, "did:test:a", "put k a1").await, "put k a1"),
            "v1"
        );
        assert_eq!(
            ok(&h.script(&s, "did:test:b", "get k").await, "get k"),
            "v1 a1 by did:test:a"
        );
        assert_eq!(
            ok(
                &h.script(&s, "did:test:a", "putv k 1 a2").await,
                "putv k 1 a2"
            ),
            "v2"
        );
        // b names the version it read (1): stale.
        err(
            &h.script(&s, "did:test:b", "putv k 1 b2").await,
            "putv k 1 b2",
            "conflict",
        );
        // b never read k2 at all: its clock does not cover a's write.
        h.script(&s, "did:test:a", "put k2 a").await;
        err(
            &h.script(&s, "did:test:b", "putv k2 1 b").await,
            "putv k2 1 b",
            "conflict",
        );
        let out = h.script(&s, "did:test:b", "get k2\nput k2 b").await;
        assert_eq!(ok(&out, "put k2 b"), "v2");
        let core = h.hv.session_core(&s).unwrap();
        assert_eq!(core.state().peek("k").unwrap().value, b"a2");
        let ev = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::StateConflict),
        );
        assert_eq!(ev.len(), 2);
    }

    #[tokio::test]
    async fn opposite_lock_order_is_a_deadlock_and_neither_agent_hangs() {
        let h = Hv::new();
        let s = h.session();
        for a in ["did:test:a", "did:test:b"] {
            h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
        }
        h.hv.activate_session(&s).unwrap();
        let a_script = "lock key:r1 write 0\nput a-has-r1 1\nawait b-has-r2\nlock key:r2 write 10000\nunlock key:r2\nunlock key:r1";
        // b asks second (after a is already waiting), so b closes the cycle.
        let b_script = "lock key:r2 write 0\nput b-has-r2 1\nawait a-has-r1\nsleep 200\nlock key:r1 write 10000\nunlock key:r2";
        let started = std::time::Instant::now();
        let (ida, idb) = (id("did:test:a"), id("did:test:b"));
        let (ra, rb) = tokio::join!(
            h.hv.run_agent(&s, &ida, a_script),
            h.hv.run_agent(&s, &idb, b_script),
        );
        let (a, b) = (ra.unwrap().result.unwrap(), rb.unwrap().result.unwrap());
        err(&b, "lock key:r1 write 10000", "deadlock");
        ok(&a, "lock key:r2 write 10000");
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "nobody waited for the 10 s timeout"
        );
        let d = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::LockDeadlock),
        );
        assert_eq!(d.len(), 1);
        let EventPayload::LockDeadlock { cycle, .. } = &d[0].payload else {
            panic!()
        };
        assert_eq!(cycle, &[id("did:test:b"), id("did:test:a")]);
    }

    #[tokio::test]
    async fn a_killed_lock_holder_releases_its_locks() {
        let h = Hv::new();
        let s = h.session();
        for a in ["did:test:holder", "did:test:next"] {
            h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
        }
        h.hv.activate_session(&s).unwrap();
        let core = h.hv.session_core(&s).unwrap();
        let hv = h.hv.clone();
        let s2 = s.clone();
        let holder = tokio::spawn(async move {
            hv.run_agent(
                &s2,
                &id("did:test:holder"),
                // Waits in the host (a WASI sleep), where it cannot run out of
                // fuel and release its locks before the kill: only the kill
                // ends it (the ring's deadline is 30 s).
                "lock key:r exclusive 0\nlock path:shared/doc write 0\nsleep 25000",
            )
            .await
        });
        ahv_tests::wait_until(
            Duration::from_secs(20),
            "the holder to hold both its locks",
            || core.locks().held_by(&id("did:test:holder")).len() == 2,
        )
        .await;
        assert!(!holder.is_finished(), "the holder is still running");
        let out = h.script(&s, "did:test:next", "lock key:r write 0").await;
        err(&out, "lock key:r write 0", "conflict");
        h.hv.kill_agent(&s, &id("did:test:holder"), "operator")
            .unwrap();
        let r = ahv_tests::within(
            Duration::from_secs(10),
            "the killed holder's call to end",
            holder,
        )
        .await
        .unwrap();
        assert!(matches!(
            r,
            Err(HypervisorError::Agent(AgentError::Trapped {
                cause: TrapCause::Killed(_),
                ..
            }))
        ));
        assert!(core.locks().held_by(&id("did:test:holder")).is_empty());
        let out = h
            .script(
                &s,
                "did:test:next",
                "lock key:r write 0\nlock path:shared/doc write 0",
            )
            .await;
        ok(&out, "lock key:r write 0");
        ok(&out, "lock path:shared/doc write 0");
        assert!(h.kinds(&s).contains(&EventKind::SecurityAgentKilled));
        // The releases are part of the kill: same trace.
        let events =
            h.hv.events()
                .query(&EventQuery::default().session(s.clone()));
        let killed = events
            .iter()
            .find(|e| e.kind() == EventKind::SecurityAgentKilled)
            .unwrap();
        let released: Vec<_> = events
            .iter()
            .filter(|e| {
                e.kind() == EventKind::LockReleased
                    && e.agent.as_ref() == Some(&id("did:test:holder"))
            })
            .collect();
        assert_eq!(released.len(), 2);
        assert_ne!(killed.trace.0, 0);
        assert!(
            released.iter().all(|e| e.trace == killed.trace),
            "{released:?}"
        );
    }

    /// A call whose future is dropped mid-way (its caller gave up) releases
    /// its agent's locks, and the releases carry the call's trace.
    #[tokio::test]
    async fn a_cancelled_call_releases_its_locks_under_its_trace() {
        let h = Hv::new();
        let s = h.session();
        h.join(&s, "did:test:holder", 0.8, ahv_agents::SCRIPTED)
            .await;
        h.hv.activate_session(&s).unwrap();
        let core = h.hv.session_core(&s).unwrap();
        let holder = id("did:test:holder");
        let call =
            h.hv.run_agent(&s, &holder, "lock key:r exclusive 0\nsleep 60000");
        let gave_up = tokio::time::timeout(Duration::from_millis(300), call).await;
        assert!(gave_up.is_err(), "the call was still sleeping");
        assert!(core.locks().held_by(&holder).is_empty());
        let events =
            h.hv.events()
                .query(&EventQuery::default().session(s.clone()));
        let of = |k: EventKind| {
            events
                .iter()
                .find(|e| e.kind() == k && e.agent.as_ref() == Some(&holder))
                .unwrap_or_else(|| panic!("no {k:?} in {events:?}"))
        };
        let (acquired, released) = (of(EventKind::LockAcquired), of(EventKind::LockReleased));
        assert_ne!(acquired.trace.0, 0);
        assert_eq!(released.trace, acquired.trace, "{released:?}");
    }

    #[tokio::test]
    async fn a_trapped_lock_holder_releases_its_locks() {
        let h = Hv::with(|b| {
            let mut l = ahv_core::RingLimits::default_for(Ring::Standard);
            l.fuel_per_call = 50_000_000;
            b.policy(
                ahv_core::RingPolicy::default()
                    .with_limits(Ring::Standard, l)
                    .unwrap(),
            )
        });
        let s = h.session();
        for a in ["did:test:holder", "did:test:next"] {
            h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
        }
        h.hv.activate_session(&s).unwrap();
        let r =
            h.hv.run_agent(&s, &id("did:test:holder"), "lock key:r exclusive 0\nspin")
                .await;
        assert!(matches!(
            r,
            Err(HypervisorError::Agent(AgentError::Trapped {
                cause: TrapCause::OutOfFuel { .. },
                ..
            }))
        ));
        let out = h
            .script(&s, "did:test:next", "lock key:r exclusive 0")
            .await;
        ok(&out, "lock key:r exclusive 0");
    }

    #[tokio::test]
    async fn quota_exhaustion_leaves_earlier_data_intact() {
        let h = Hv::with(|b| {
            b.quotas(FileQuotas {
                max_total_bytes: 90,
                max_files: 2,
                max_file_bytes: 60,
                ..FileQuotas::default()
            })
        });
        let s = h.session();
        h.join(&s, "did:test:a", 0.8, ahv_agents::SCRIPTED).await;
        h.hv.activate_session(&s).unwrap();
        let (x40, y61, z55, w20) = (
            "x".repeat(40),
            "y".repeat(61),
            "z".repeat(55),
            "w".repeat(20),
        );
        let cmds = [
            format!("write shared/1 {x40}"),
            format!("write shared/2 {x40}"),
            "write shared/3 ab".to_string(),
            format!("write shared/big {y61}"),
            format!("write shared/1 {z55}"),
            format!("append shared/2 {w20}"),
            format!("append mine.txt {w20}"),
        ];
        let out = h.script(&s, "did:test:a", &cmds.join("\n")).await;
        ok(&out, &cmds[0]);
        ok(&out, &cmds[1]);
        for (c, why) in cmds[2..]
            .iter()
            .zip(["count", "file size", "total", "total", "count"])
        {
            err(&out, c, "quota");
            assert!(line(&out, c).contains("limit"), "{why}: {out}");
        }
        let shared = h.dir(&s).join("files/shared");
        assert_eq!(std::fs::read_to_string(shared.join("1")).unwrap(), x40);
        assert_eq!(std::fs::read_to_string(shared.join("2")).unwrap(), x40);
        assert!(!shared.join("3").exists() && !shared.join("big").exists());
        assert!(!h.dir(&s).join("files/agents/did:test:a/mine.txt").exists());
        let u = h.hv.session_core(&s).unwrap().usage();
        assert_eq!((u.files, u.bytes), (2, 80));
    }

    /// Hundreds of live sessions using files keep a bounded number of
    /// directory descriptors (default soft limit: 1024 per process), and every
    /// one of them still works.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn many_live_sessions_share_a_bounded_number_of_directory_descriptors() {
        let h = Hv::with(|b| b.max_open_dirs(12));
        let sessions: Vec<SessionId> = (0..300).map(|_| h.session()).collect();
        for (n, s) in sessions.iter().enumerate() {
            h.put_shared(s, "n.txt", &n.to_string());
        }
        let dir = h.state.path().join("sessions");
        let held = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.starts_with(&dir) && t != &dir)
            .count();
        assert!(
            held <= 12,
            "{held} descriptors held under {}",
            dir.display()
        );
        let host = id("did:test:host");
        for (n, s) in sessions.iter().enumerate() {
            let core = h.hv.session_core(s).unwrap();
            let got = core
                .read(Caller::untraced(&host, Ring::Root), "shared/n.txt")
                .unwrap();
            assert_eq!(got, n.to_string().as_bytes());
        }
    }

    /// A hostile guest creating directories (explicitly, or as parents of
    /// files) stops at the directory quota with a `quota` error it can
    /// handle; every directory it did create is an audited change.
    #[tokio::test]
    async fn a_directory_storm_stops_at_the_quota_and_each_directory_is_audited() {
        // The quota is under test, not the rate limit (which would stop the
        // storm after 40 changes; see rings.rs).
        let h = Hv::with(|b| {
            b.quotas(FileQuotas {
                max_dirs: 4,
                ..FileQuotas::default()
            })
            .without_rate_limits()
        });
        let s = h.session();
        h.join(&s, "did:test:a", 0.8, ahv_agents::SCRIPTED).await;
        h.hv.activate_session(&s).unwrap();
        let mut cmds = vec![
            "mkdir a/b/c".to_string(),
            "mkdir a/b".to_string(),
            "mkdir d/e".to_string(),
            "mkdir d".to_string(),
            "write e/f x".to_string(),
            "write d/g x".to_string(),
        ];
        cmds.extend((0..200).map(|n| format!("mkdir storm{n}")));
        let out = h.script(&s, "did:test:a", &cmds.join("\n")).await;
        for c in ["mkdir a/b/c", "mkdir a/b", "mkdir d", "write d/g x"] {
            ok(&out, c);
        }
        for c in cmds
            .iter()
            .filter(|c| *c == "mkdir d/e" || *c == "write e/f x" || c.contains("storm"))
        {
            err(&out, c, "quota");
        }
        assert!(
            line(&out, "mkdir d/e").contains("the session's limit is 4"),
            "{out}"
        );
        let mine = h.dir(&s).join("files/agents/did:test:a");
        assert!(mine.join("a/b/c").is_dir() && mine.join("d/g").is_file());
        assert!(!mine.join("d/e").exists() && !mine.join("e").exists());
        assert!(!mine.join("storm0").exists());
        assert_eq!(h.hv.session_core(&s).unwrap().usage().dirs, 4);

        h.hv.terminate_session(&s).unwrap();
        h.hv.shutdown().unwrap();
        let deltas: Vec<ahv_audit::Delta> =
            ahv_audit::auditor::read_session_log(&h.state.path().join("audit"), s.as_str())
                .unwrap()
                .iter()
                .map(|r| ahv_audit::Delta::decode(&r.body).unwrap())
                .collect();
        let made: Vec<_> = deltas
            .iter()
            .filter(|d| d.kind == "vfs.dir_created")
            .map(|d| (d.field("path").cloned(), d.field("created").cloned()))
            .collect();
        use ahv_audit::Value::{Text, Uint};
        assert_eq!(
            made,
            [
                (Some(Text("a/b/c".into())), Some(Uint(3))),
                (Some(Text("d".into())), Some(Uint(1))),
            ],
            "one delta per change; none for a directory that existed"
        );
        let refused = deltas
            .iter()
            .filter(|d| d.kind == "vfs.quota_exceeded")
            .count();
        assert_eq!(refused, 202, "every refusal is on record");
    }

    #[tokio::test]
    async fn snapshot_writes_restore_gives_back_the_snapshot_exactly() {
        let h = Hv::new();
        let s = h.session();
        for a in ["did:test:a", "did:test:b"] {
            h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await;
        }
        assert!(
            matches!(
                h.hv.snapshot(&s),
                Err(HypervisorError::Session(
                    SessionError::InvalidTransition { .. }
                ))
            ),
            "only while active"
        );
        h.hv.activate_session(&s).unwrap();
        h.script(&s, "did:test:a", "write shared/keep.md one\nwrite shared/gone.md two\nwrite mine.txt a\nsetacl shared/keep.md did:test:a everyone owner").await;
        h.script(&s, "did:test:b", "write theirs.txt b").await;
        let files = h.dir(&s).join("files");
        let before = tree(&files);
        let snap = h.hv.snapshot(&s).unwrap();
        assert_eq!(snap.files, 4);
        h.script(&s, "did:test:a", "write shared/keep.md changed\ndelete shared/gone.md\nappend mine.txt more\nwrite shared/new.md n\nrename mine.txt moved.txt\nsetacl shared/keep.md did:test:a owner owner").await;
        h.script(&s, "did:test:b", "write theirs.txt b2\nwrite extra/x y")
            .await;
        assert_ne!(tree(&files), before);
        h.hv.restore(&s, snap.id).unwrap();
        assert_eq!(tree(&files), before, "byte for byte");
        let out = h
            .script(&s, "did:test:b", "acl shared/keep.md\nread shared/gone.md")
            .await;
        assert_eq!(
            ok(&out, "acl shared/keep.md"),
            "owner=did:test:a read=everyone write=owner"
        );
        assert_eq!(ok(&out, "read shared/gone.md"), "two");
        assert!(matches!(
            h.hv.restore(&s, 999),
            Err(HypervisorError::Files { .. })
        ));
    }

    #[tokio::test]
    async fn serializable_isolation_needs_intent_locks() {
        let h = Hv::new();
        let s =
            h.hv.create_session(
                SessionConfig {
                    isolation: Isolation::Serializable,
                    ..Default::default()
                },
                id("did:test:op"),
            )
            .unwrap();
        h.join(&s, "did:test:a", 0.8, ahv_agents::SCRIPTED).await;
        h.hv.activate_session(&s).unwrap();
        let out = h.script(&s, "did:test:a", "put k v\nwrite shared/f x\nwrite private.txt ok\nlock key:k write 0\nlock path:shared/f write 0\nput k v\nwrite shared/f x\nread shared/f").await;
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("put k v -> err denied:"), "{out}");
        assert!(
            lines[1].starts_with("write shared/f x -> err denied:"),
            "{out}"
        );
        assert_eq!(
            lines[2], "write private.txt ok -> ok",
            "private files need no lock"
        );
        assert_eq!(lines[5], "put k v -> ok v1");
        assert_eq!(lines[6], "write shared/f x -> ok");
        assert_eq!(lines[7], "read shared/f -> ok x");
    }

    #[tokio::test]
    async fn an_expired_session_is_terminated() {
        let clock = FakeClock::new();
        let c2 = clock.clone();
        let h = Hv::with(move |b| b.clock(Arc::new(c2)));
        let s =
            h.hv.create_session(
                SessionConfig {
                    max_duration: Duration::from_secs(60),
                    ..Default::default()
                },
                id("did:test:op"),
            )
            .unwrap();
        h.join(&s, "did:test:a", 0.8, ahv_agents::SCRIPTED).await;
        h.hv.activate_session(&s).unwrap();
        clock.advance(Duration::from_secs(59));
        assert!(h.hv.reap_expired().is_empty());
        h.script(&s, "did:test:a", "keys").await;
        clock.advance(Duration::from_secs(1));
        assert!(matches!(
            h.hv.run_agent(&s, &id("did:test:a"), "keys").await,
            Err(HypervisorError::Session(SessionError::Expired { .. }))
        ));
        assert!(matches!(
            h.hv.run_agent(&s, &id("did:test:a"), "keys").await,
            Err(HypervisorError::UnknownSession { .. })
        ));
        assert_eq!(h.hv.session(&s).unwrap().state, SessionState::Archived);
        let t = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::SessionTerminated),
        );
        assert!(matches!(
            t[0].payload,
            EventPayload::SessionTerminated {
                reason: TerminationReason::Expired
            }
        ));
        // An idle session is reaped.
        let idle = h.session();
        clock.advance(Duration::from_secs(3601));
        assert_eq!(h.hv.reap_expired(), [idle]);
    }
}

/// Two sessions side by side: nothing in one can reach the other's files or state.
#[tokio::test]
async fn sessions_cannot_reach_each_others_files_or_state() {
    let h = Hv::new();
    let (a, b) = (h.session(), h.session());
    h.put_shared(&b, "secret.txt", "B's secret");
    h.join(&b, "did:test:owner", 0.8, ahv_agents::SCRIPTED)
        .await;
    h.hv.activate_session(&b).unwrap();
    h.script(
        &b,
        "did:test:owner",
        "write private.txt B-private\nput secret B-state",
    )
    .await;
    std::fs::write(h.state.path().join("sentinel.txt"), "outside all sessions").unwrap();
    // A symlink planted in A's shared area (as if by a compromised co-tenant) pointing at B.
    let a_shared = h.dir(&a).join("files/shared");
    std::fs::create_dir_all(&a_shared).unwrap();
    std::os::unix::fs::symlink(h.dir(&b).join("files/shared"), a_shared.join("to-b")).unwrap();
    std::os::unix::fs::symlink(
        h.dir(&b).join("files/shared/secret.txt"),
        a_shared.join("secret-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../../../..", a_shared.join("up")).unwrap();
    let before_b = tree(&h.dir(&b));

    h.join(&a, "did:test:intruder", 0.8, ahv_agents::SCRIPTED)
        .await;
    h.hv.activate_session(&a).unwrap();
    let bid = b.as_str();
    let paths = [
        format!("../{bid}/files/shared/secret.txt"),
        format!("../../sessions/{bid}/files/shared/secret.txt"),
        format!("shared/../../{bid}/files/shared/secret.txt"),
        format!("{}/files/shared/secret.txt", h.dir(&b).display()),
        "/etc/passwd".to_string(),
        "../../sentinel.txt".to_string(),
        "shared/to-b/secret.txt".to_string(),
        "shared/secret-link".to_string(),
        "shared/up/sentinel.txt".to_string(),
        format!("shared/up/sessions/{bid}/files/shared/secret.txt"),
        "agents/did:test:owner/private.txt".to_string(),
        "shared/../agents/did:test:owner/private.txt".to_string(),
        "private.txt".to_string(),
        format!("{}/x", "a".repeat(300)),
        "shared/\u{202e}txt.terces".to_string(),
        "shared\\..\\secret.txt".to_string(),
    ];
    let mut script = String::new();
    for p in &paths {
        for op in ["read", "stat", "hash", "list"] {
            script.push_str(&format!("{op} {p}\n"));
        }
        script.push_str(&format!("write {p} pwned\nappend {p} pwned\ndelete {p}\n"));
    }
    script.push_str(&format!(
        "get secret\nkeys\nlock path:../{bid}/files/shared/secret.txt write 0\n"
    ));
    let out = h.script(&a, "did:test:intruder", &script).await;
    for l in out.lines() {
        // Success is only allowed inside session A's own areas: never
        // through a planted link, an absolute path or a `..` component; state
        // queries must come back empty.
        let target = l.split(' ').nth(1).unwrap_or("");
        let planted = ["shared/to-b", "shared/secret-link", "shared/up"];
        let own_area = !planted.iter().any(|p| target.starts_with(p))
            && !target.starts_with('/')
            && !target.contains('\\')
            && !target.split('/').any(|c| c == "..");
        let allowed_ok = own_area || l == "keys -> ok" || l == "get secret -> ok none";
        assert!(l.contains("-> err ") || allowed_ok, "not refused: {l}");
        assert!(
            !l.contains("B's secret")
                && !l.contains("B-private")
                && !l.contains("B-state")
                && !l.contains("outside all"),
            "leaked: {l}"
        );
    }
    assert_eq!(ok(&out, "keys"), "", "no state of B visible");
    assert_eq!(tree(&h.dir(&b)), before_b, "B's files unchanged");
    assert_eq!(
        std::fs::read_to_string(h.state.path().join("sentinel.txt")).unwrap(),
        "outside all sessions"
    );
    // `private.txt` in A is the intruder's own file, not B's.
    assert!(!h.dir(&a).join("files/agents/did:test:owner").exists());
}

#[tokio::test]
async fn hypervisor_requires_a_state_dir_and_validates_configs() {
    assert!(matches!(
        Hypervisor::builder().build(),
        Err(HypervisorError::Setup(_))
    ));
    let h = Hv::new();
    let e =
        h.hv.create_session(
            SessionConfig {
                max_participants: 0,
                ..Default::default()
            },
            id("did:test:op"),
        )
        .unwrap_err();
    assert!(matches!(
        e,
        HypervisorError::Session(SessionError::InvalidConfig {
            field: "max_participants",
            ..
        })
    ));
    let s = h.session();
    let e =
        h.hv.join_session(&s, JoinRequest::new(id("did:test:x"), 1.5))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("sigma"), "{e}");
}

#[tokio::test]
async fn pinger_vfs_mode_round_trips_1_kib_through_the_session_vfs() {
    let h = Hv::new();
    let s = h.session();
    h.join(&s, "did:test:ping", 0.8, ahv_agents::PINGER).await;
    h.hv.activate_session(&s).unwrap();
    for _ in 0..3 {
        let r =
            h.hv.run_agent(&s, &id("did:test:ping"), "vfs")
                .await
                .unwrap();
        assert_eq!(r.result.as_deref(), Ok("1024"));
    }
    assert_eq!(
        std::fs::read(h.dir(&s).join("files/shared/bench.bin")).unwrap(),
        [0x5a; 1024]
    );
}

/// The guest SDK's helpers, driven by the `scripted` agent: `state::update`
/// retries a lost compare-and-set (a rival write is slipped in after its
/// first read, and four agents increment one counter at once on two threads:
/// no increment is lost), `locks::lock`'s guard releases at the end of its
/// scope, and `?` on a host error fails `run` with the error's description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_update_loop_loses_no_write_its_lock_guard_releases_and_question_mark_fails_with_the_error()
 {
    let h = Hv::new();
    let s = h.session();
    let agents: Vec<String> = (0..4).map(|i| format!("did:test:sdk{i}")).collect();
    for a in &agents {
        assert_eq!(
            h.join(&s, a, 0.8, ahv_agents::SCRIPTED).await,
            Ring::Standard
        );
    }
    h.hv.activate_session(&s).unwrap();

    // A certain race: the first attempt loses to the rival "100", the loop
    // reads again and writes 101.
    let out = h
        .script(&s, &agents[0], "incr-raced raced\nget raced")
        .await;
    assert_eq!(ok(&out, "incr-raced raced"), "v2", "{out}");
    assert!(ok(&out, "get raced").starts_with("v2 101 by"), "{out}");

    // Four agents, ten increments each, at the same time.
    let per_agent = 10;
    let script = vec!["incr counter"; per_agent].join("\n");
    let mut tasks = tokio::task::JoinSet::new();
    for a in agents.clone() {
        let (hv, s, script) = (h.hv.clone(), s.clone(), script.clone());
        tasks.spawn(async move {
            let out = hv.run_agent(&s, &id(&a), &script).await;
            (a, out)
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        let mut reports = Vec::new();
        while let Some(done) = tasks.join_next().await {
            reports.push(done.expect("an incrementing task panicked"));
        }
        reports
    })
    .await
    .expect("four agents incrementing a counter did not finish within 60 s");
    for (a, out) in all {
        let report = out
            .unwrap_or_else(|e| panic!("{a} trapped: {e}"))
            .result
            .unwrap_or_else(|e| panic!("{a}'s script failed: {e}"));
        assert_eq!(
            report.lines().filter(|l| l.contains(" -> ok v")).count(),
            per_agent,
            "{a}: every increment must succeed:\n{report}"
        );
    }
    let out = h.script(&s, &agents[1], "get counter").await;
    assert!(
        ok(&out, "get counter").starts_with(&format!("v{} {} by", 4 * per_agent, 4 * per_agent)),
        "no increment may be lost: {out}"
    );

    // The guard holds the lock inside its scope and releases it after.
    let out = h.script(&s, &agents[2], "guarded key:k write\nheld").await;
    assert_eq!(ok(&out, "guarded key:k write"), "1 held", "{out}");
    assert_eq!(
        ok(&out, "held"),
        "",
        "the guard must have released the lock: {out}"
    );
    // A guard over a lock the agent already held leaves it held.
    let out = h
        .script(
            &s,
            &agents[2],
            "lock key:j read 0\nguarded key:j write\nheld",
        )
        .await;
    assert_eq!(ok(&out, "guarded key:j write"), "1 held", "{out}");
    assert_eq!(
        ok(&out, "held"),
        "key:j=LockMode::Write",
        "a guard must not release a lock held before it (upgraded, it stays): {out}"
    );

    // JSON state values and JSON input/answers (the SDK's `json` feature).
    let out = h
        .script(
            &s,
            &agents[2],
            "tally t\ntally t\nget t\nput bad not-json\ntally bad\ndouble {\"runs\":21}",
        )
        .await;
    assert_eq!(ok(&out, "tally t"), "v1", "{out}");
    assert!(ok(&out, "get t").starts_with("v2 {\"runs\":2} by"), "{out}");
    let refused = line(&out, "tally bad");
    assert!(
        refused.contains("err invalid-key")
            && refused.contains(r#"the value of \"bad\" is not JSON of type scripted::Tally"#),
        "a non-JSON value must be refused, naming the key: {out}"
    );
    assert_eq!(ok(&out, "double {\"runs\":21}"), "{\"runs\":42}", "{out}");
    let out =
        h.hv.run_agent(&s, &id(&agents[2]), "double {\"runs\":\"x\"}")
            .await
            .unwrap();
    let failure = out.result.expect_err("bad JSON input must fail the run");
    assert!(
        failure.starts_with("input is not the JSON expected (scripted::Tally): invalid type"),
        "{failure}"
    );

    // `?` turns the host's error into the failure message: case and reason.
    let out =
        h.hv.run_agent(
            &s,
            &id(&agents[3]),
            "copy shared/missing.txt shared/copy.txt",
        )
        .await
        .unwrap();
    let failure = out
        .result
        .expect_err("copying a missing file must fail the run");
    assert!(failure.starts_with("not-found: "), "{failure}");
    assert!(failure.contains("missing.txt"), "{failure}");
    let out = h
        .script(
            &s,
            &agents[3],
            "write shared/a.txt hello\ncopy shared/a.txt shared/b.txt\nread shared/b.txt",
        )
        .await;
    assert_eq!(
        ok(&out, "copy shared/a.txt shared/b.txt"),
        "5 bytes",
        "{out}"
    );
    assert_eq!(ok(&out, "read shared/b.txt"), "hello", "{out}");
}

/// A join whose instance never finishes being made: its component's start
/// function sleeps an hour in the host (a WASI monotonic-clock pollable it
/// blocks on), where no epoch check reaches it. Ending the session, killing
/// the agent or its leaving ends that join at once, not at its ring's
/// 30 s deadline: the hypervisor holds the instance's kill handle from the
/// moment the join starts making it.
mod a_join_waiting_in_its_start_function {
    use super::*;

    /// `run` answers "ok"; a core module instantiated before `run`'s own
    /// has a start function that subscribes to a one-hour duration and
    /// blocks on it.
    fn sleeps_at_start() -> Vec<u8> {
        wat::parse_str(
            r#"(component $c
  (import "wasi:io/poll@0.2.6" (instance $poll
    (export "pollable" (type $p (sub resource)))
    (export "[method]pollable.block" (func (param "self" (borrow $p))))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.6" (instance $clock
    (alias outer $c $pollable (type $outer))
    (export "pollable" (type $p (eq $outer)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $p))))))
  (alias export $poll "[method]pollable.block" (func $block))
  (alias export $clock "subscribe-duration" (func $subscribe))
  (core func $block_lowered (canon lower (func $block)))
  (core func $subscribe_lowered (canon lower (func $subscribe)))
  (core module $sleepy
    (import "clock" "subscribe" (func $subscribe (param i64) (result i32)))
    (import "clock" "block" (func $block (param i32)))
    (func $start (call $block (call $subscribe (i64.const 3600000000000))))
    (start $start))
  (core instance $imports
    (export "subscribe" (func $subscribe_lowered))
    (export "block" (func $block_lowered)))
  (core instance (instantiate $sleepy (with "clock" (instance $imports))))
  (core module $main
    (memory (export "memory") 1)
    (data (i32.const 64) "ok")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "run") (param i32 i32) (result i32)
      (i32.store (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (i32.const 64))
      (i32.store (i32.const 24) (i32.const 2))
      i32.const 16))
  (core instance $m (instantiate $main))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "run") (memory (core memory $m "memory")) (realloc (core func $m "realloc")))))"#,
        )
        .expect("the sleeping component parses")
    }

    const AGENT: &str = "did:test:sleepy";

    /// Starts the join of `AGENT` (σ 0.8: ring 2, a 30 s deadline) with the
    /// sleeping component and waits, at most 10 s, until it holds its seat
    /// (its instance being made), then 100 ms more for its start function
    /// to reach the host.
    async fn joining(
        h: &Hv,
        s: &SessionId,
    ) -> tokio::task::JoinHandle<Result<Ring, HypervisorError>> {
        let component = h.hv.load(&sleeps_at_start()).unwrap();
        let join = {
            let (hv, s) = (h.hv.clone(), s.clone());
            tokio::spawn(async move {
                hv.join_session(&s, JoinRequest::new(id(AGENT), 0.8).component(component))
                    .await
            })
        };
        let seated = async {
            loop {
                let seat =
                    h.hv.participants(s)
                        .unwrap()
                        .into_iter()
                        .find(|p| p.agent.as_str() == AGENT);
                if let Some(seat) = seat {
                    // Ring 2's deadline (30 s) is well past this test's waits.
                    assert_eq!(seat.ring, Ring::Standard);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), seated)
            .await
            .expect("the join of the sleeping agent took its seat within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!join.is_finished(), "the start function sleeps for an hour");
        join
    }

    /// The join's outcome, which must come within 10 s of `what`.
    async fn ended(
        join: tokio::task::JoinHandle<Result<Ring, HypervisorError>>,
        what: &str,
    ) -> HypervisorError {
        tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the join sleeping in its start function was still waiting 10 s after {what}"
                )
            })
            .expect("the join's task")
            .expect_err("a join whose instance was stopped is refused")
    }

    #[tokio::test]
    async fn ends_when_its_session_ends() {
        let h = Hv::new();
        let s = h.session();
        let join = joining(&h, &s).await;
        let termination = h.hv.terminate_session(&s).unwrap();
        assert_eq!(termination.participants, 0, "its join never completed");
        let err = ended(join, "the session ended").await;
        assert!(
            matches!(
                &err,
                HypervisorError::Session(SessionError::InvalidTransition {
                    operation: "join",
                    ..
                })
            ),
            "refused as a join into an ended session: {err}"
        );
    }

    #[tokio::test]
    async fn ends_when_the_agent_is_killed() {
        let h = Hv::new();
        let s = h.session();
        let join = joining(&h, &s).await;
        h.hv.kill_agent(&s, &id(AGENT), "operator").unwrap();
        let err = ended(join, "its kill").await;
        assert!(
            matches!(
                &err,
                HypervisorError::Agent(AgentError::Trapped {
                    cause: TrapCause::Killed(k),
                    ..
                }) if k.reason.contains("operator")
            ),
            "the instance being made was killed: {err}"
        );
        assert!(h.hv.participants(&s).unwrap().is_empty());
    }

    #[tokio::test]
    async fn ends_when_the_agent_leaves() {
        let h = Hv::new();
        let s = h.session();
        let join = joining(&h, &s).await;
        h.hv.leave_session(&s, &id(AGENT)).unwrap();
        let err = ended(join, "its leave").await;
        assert!(
            matches!(
                &err,
                HypervisorError::Session(SessionError::NotAParticipant { agent, .. })
                    if agent.as_str() == AGENT
            ),
            "refused as the join of an agent no longer in the session: {err}"
        );
        assert!(h.hv.participants(&s).unwrap().is_empty());
        // Its seat is free: the same agent joins again (without a component).
        h.hv.join_session(&s, JoinRequest::new(id(AGENT), 0.8))
            .await
            .unwrap();
    }
}
