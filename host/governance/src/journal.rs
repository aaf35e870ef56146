//! The change journal: every governed change one step (one agent call) made,
//! in order, with what is needed to undo it.
//!
//! The runtime's capability adapters push a [`Change`] for each file write,
//! delete, rename, ACL change, directory creation, state write or delete,
//! action and effect that went through; the journal of a call is handed back
//! with the call's outcome (trapped calls included). A saga compensating a
//! step calls [`undo_changes`] on that step's changes: newest first, past
//! failures, so that after compensating every step the session's files and
//! state values are byte for byte what they were before (a key's version is
//! put back too, but its clock and the file space's undo-record ids move
//! forward: they are history, not content).
//!
//! A `Change` is persisted in saga journals: its serde form (field names,
//! variant tags) is stable.
//!
//! ```
//! use std::sync::Arc;
//! use ahv_core::{event::EventBus, AgentId, FakeClock, Ring, SessionId};
//! use ahv_governance::actions::ActionRegistry;
//! use ahv_governance::files::{Caller, FileSpace};
//! use ahv_governance::journal::{undo_changes, Change, ChangeJournal};
//! use ahv_governance::session_core::{SessionCore, SessionCoreConfig};
//! use cap_std::{ambient_authority, fs::Dir};
//!
//! let tmp = tempfile::tempdir()?;
//! let dir = Arc::new(Dir::open_ambient_dir(tmp.path(), ambient_authority())?);
//! let bus = Arc::new(EventBus::new(64, Arc::new(FakeClock::new())));
//! let core = SessionCore::new(SessionId::new("s")?, dir, &SessionCoreConfig::default(), bus);
//! let agent = AgentId::new("did:ex:a")?;
//! let who = Caller::untraced(&agent, Ring::Standard);
//!
//! // What the runtime does during a call:
//! let mut journal = ChangeJournal::new();
//! journal.push(Change::file(&core.write(who, "shared/plan.md", b"v1")?));
//! journal.push(Change::State(core.state_put(who, "status", b"draft", 0)?));
//! let step = journal.take();
//!
//! // What a saga does when it compensates the step:
//! let failures = undo_changes(&core, &ActionRegistry::new(), who, &step);
//! assert!(failures.is_empty());
//! assert!(core.read(who, "shared/plan.md").is_err());
//! assert_eq!(core.state().peek("status"), None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::actions::{ActionError, ActionRegistry, UndoRecord};
use crate::files::{Caller, FileChange, FileOp};
use crate::session_core::SessionCore;
use crate::state::{StateError, StateUndo};
use crate::vfs::VfsError;

/// One governed change, with what is needed to undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A file operation in the session's file space.
    File {
        /// The operation (by its name: `write`, `append`, `delete`, …).
        op: FileOp,
        /// The normalised guest path (the source, for a rename).
        path: String,
        /// The destination of a rename.
        to: Option<String>,
        /// The session file space's undo record (`None`: the file space
        /// keeps none, as the standalone VFS).
        undo: Option<u64>,
        /// Hex SHA-256 of the content before, when known.
        before: Option<String>,
        /// Hex SHA-256 of the content after, when known.
        after: Option<String>,
    },
    /// A state put or delete.
    State(StateUndo),
    /// A reversible action.
    Action {
        /// The action's registered name.
        name: String,
        /// What it returned to the guest.
        output: String,
        /// Its undo data.
        undo: String,
        /// When it ran on the registry's clock, in milliseconds (its undo
        /// window starts here).
        at_ms: u64,
        /// The session files it changed (guest paths), first change first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        touched: Vec<String>,
    },
    /// An effect: it cannot be undone.
    Effect {
        /// The effect's registered name.
        name: String,
        /// The session files it changed (guest paths), first change first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        touched: Vec<String>,
    },
}

impl Change {
    /// The journal entry of a file change.
    pub fn file(c: &FileChange) -> Change {
        Change::File {
            op: c.op,
            path: c.path.clone(),
            to: c.to.clone(),
            undo: c.undo,
            before: c.before.map(hex::encode),
            after: c.after.map(hex::encode),
        }
    }

    /// The journal entry of a performed reversible action.
    pub fn action(r: &UndoRecord) -> Change {
        Change::Action {
            name: r.action.clone(),
            output: r.output.clone(),
            undo: r.undo.clone(),
            at_ms: u64::try_from(r.at.as_millis()).unwrap_or(u64::MAX),
            touched: r.touched.clone(),
        }
    }

    /// The session paths this change touched (a rename: both ends; an
    /// action or effect: the files it changed); none for state.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Change::File { path, to, .. } => std::iter::once(path.as_str())
                .chain(to.as_deref())
                .collect(),
            Change::Action { touched, .. } | Change::Effect { touched, .. } => {
                touched.iter().map(String::as_str).collect()
            }
            Change::State(_) => Vec::new(),
        }
    }

    /// A short description for errors and logs (`write shared/a`, `state k`, …).
    pub fn summary(&self) -> String {
        match self {
            Change::File {
                op, path, to: None, ..
            } => format!("{} {path}", op.name()),
            Change::File {
                op,
                path,
                to: Some(to),
                ..
            } => format!("{} {path} -> {to}", op.name()),
            Change::State(s) if s.deleted => format!("state delete {}", s.key),
            Change::State(s) => format!("state put {}", s.key),
            Change::Action { name, .. } => format!("action {name}"),
            Change::Effect { name, .. } => format!("effect {name}"),
        }
    }
}

/// The changes of one call, oldest first.
///
/// A state change that continues the journal's last change of the same key
/// (it starts from the version that change left, so nobody wrote the key in
/// between) is folded into it: the entry keeps the first change's previous
/// value and version and takes the new version. Undoing the folded entry
/// does what undoing both, newest first, would; and a call that writes one
/// key over and over keeps one previous value, not one per write. (A delete
/// that would leave an entry starting and ending with the key absent is an
/// entry of its own, holding the value it deleted; the next write folds
/// into that one.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeJournal {
    changes: Vec<Change>,
    /// Where each state key's latest entry is in `changes`.
    state_at: std::collections::HashMap<String, usize>,
    /// The bytes of keys and previous values the state entries hold.
    state_bytes: u64,
}

impl ChangeJournal {
    /// An empty journal.
    pub fn new() -> ChangeJournal {
        ChangeJournal::default()
    }

    /// Records one change (a state change may be folded into an earlier
    /// one, as the type's docs say).
    pub fn push(&mut self, change: Change) {
        if let Change::State(next) = &change {
            // Not folded into an entry that would then both start and end
            // with the key absent: its undo would have nothing to delete.
            if let Some(&at) = self.state_at.get(&next.key)
                && let Some(Change::State(entry)) = self.changes.get_mut(at)
                && entry.version == next.previous_version
                && entry.deleted == next.previous.is_none()
                && !(next.deleted && entry.previous.is_none())
            {
                entry.version = next.version;
                entry.deleted = next.deleted;
                return;
            }
            let bytes = next.key.len() + next.previous.as_ref().map_or(0, Vec::len);
            self.state_bytes = self.state_bytes.saturating_add(bytes as u64);
            self.state_at.insert(next.key.clone(), self.changes.len());
        }
        self.changes.push(change);
    }

    /// The bytes of state keys and previous values recorded (what undoing
    /// the state changes needs kept).
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// Takes every change recorded so far, leaving the journal empty.
    pub fn take(&mut self) -> Vec<Change> {
        self.state_at.clear();
        self.state_bytes = 0;
        std::mem::take(&mut self.changes)
    }

    /// How many changes are recorded.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The recorded changes, oldest first.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The recorded changes, oldest first, by value.
    pub fn into_changes(self) -> Vec<Change> {
        self.changes
    }
}

impl From<Vec<Change>> for ChangeJournal {
    /// The journal of `changes` as they are (none is folded).
    fn from(changes: Vec<Change>) -> ChangeJournal {
        let mut state_at = std::collections::HashMap::new();
        let mut state_bytes = 0u64;
        for (i, c) in changes.iter().enumerate() {
            if let Change::State(s) = c {
                let bytes = s.key.len() + s.previous.as_ref().map_or(0, Vec::len);
                state_bytes = state_bytes.saturating_add(bytes as u64);
                state_at.insert(s.key.clone(), i);
            }
        }
        ChangeJournal {
            changes,
            state_at,
            state_bytes,
        }
    }
}

/// Why one change could not be undone.
#[derive(Debug, Error)]
pub enum UndoError {
    /// The change has nothing to undo it with: an effect, or a file change
    /// made where no undo records are kept.
    #[error("{change} cannot be undone: {reason}")]
    NoUndo {
        /// The change ([`Change::summary`]).
        change: String,
        /// Why.
        reason: &'static str,
    },
    /// The file space refused the undo: the path changed since (a
    /// [`VfsError::Conflict`]), the record is gone, or I/O failed.
    #[error("undoing {change}: {source}")]
    File {
        /// The change ([`Change::summary`]).
        change: String,
        /// The file space's error.
        #[source]
        source: VfsError,
    },
    /// The state store refused the undo (the key changed since: a
    /// [`StateError::UndoConflict`]; or a quota or lock).
    #[error("undoing {change}: {source}")]
    State {
        /// The change ([`Change::summary`]).
        change: String,
        /// The store's error.
        #[source]
        source: StateError,
    },
    /// The action's compensation failed, its window closed
    /// ([`ActionError::UndoWindowClosed`]), or it is no longer registered.
    #[error("undoing {change}: {source}")]
    Action {
        /// The change ([`Change::summary`]).
        change: String,
        /// The registry's or the action's error.
        #[source]
        source: ActionError,
    },
}

impl UndoError {
    /// True when the undo was refused because something changed after the
    /// change being undone (files or state).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            UndoError::File {
                source: VfsError::Conflict { .. },
                ..
            } | UndoError::State {
                source: StateError::UndoConflict { .. },
                ..
            }
        )
    }
}

/// One change [`undo_changes`] could not undo.
#[derive(Debug)]
pub struct UndoFailure {
    /// Its position in the slice given to [`undo_changes`].
    pub index: usize,
    /// Why.
    pub error: UndoError,
}

/// Undoes `changes` newest first, on behalf of `who` (actions are
/// compensated in `who`'s name, through `core`'s files), and carries on past
/// a failure: every change that can be undone is. Returns the failures,
/// in the order they happened (newest change first). A change whose undo
/// failed stays in effect; one that depended on it may then fail too
/// (its file changed since), and is reported as well.
pub fn undo_changes(
    core: &SessionCore,
    actions: &ActionRegistry,
    who: Caller<'_>,
    changes: &[Change],
) -> Vec<UndoFailure> {
    changes
        .iter()
        .enumerate()
        .rev()
        .filter_map(|(index, change)| {
            undo_one(core, actions, who, change)
                .err()
                .map(|error| UndoFailure { index, error })
        })
        .collect()
}

fn undo_one(
    core: &SessionCore,
    actions: &ActionRegistry,
    who: Caller<'_>,
    change: &Change,
) -> Result<(), UndoError> {
    match change {
        Change::File { undo: None, .. } => Err(UndoError::NoUndo {
            change: change.summary(),
            reason: "its file space keeps no undo records",
        }),
        Change::File {
            undo: Some(id),
            op,
            path,
            ..
        } => core
            .undo_file(who, *id, *op, path)
            .map_err(|source| UndoError::File {
                change: change.summary(),
                source,
            }),
        Change::State(s) => core
            .state_undo(who, s)
            .map(drop)
            .map_err(|source| UndoError::State {
                change: change.summary(),
                source,
            }),
        Change::Action {
            name,
            output,
            undo,
            at_ms,
            touched,
        } => {
            let record = UndoRecord {
                action: name.clone(),
                agent: who.agent.clone(),
                output: output.clone(),
                undo: undo.clone(),
                at: std::time::Duration::from_millis(*at_ms),
                touched: touched.clone(),
            };
            actions
                .compensate(core.action_context(who), &record)
                .map_err(|source| UndoError::Action {
                    change: change.summary(),
                    source,
                })
        }
        Change::Effect { .. } => Err(UndoError::NoUndo {
            change: change.summary(),
            reason: "an effect has no undo",
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use ahv_core::event::{EventBus, EventKind};
    use ahv_core::{AgentId, FakeClock, Ring, SessionId};
    use cap_std::fs::Dir;
    use proptest::prelude::*;

    use super::*;
    use crate::actions::{ActionTerms, Reversibility, builtin};
    use crate::files::{Access, Acl, FileSpace, sha256};
    use crate::session_core::SessionCoreConfig;

    struct Env {
        tmp: tempfile::TempDir,
        core: SessionCore,
        bus: Arc<EventBus>,
        clock: FakeClock,
        agent: AgentId,
    }

    impl Env {
        fn who(&self) -> Caller<'_> {
            Caller::untraced(&self.agent, Ring::Standard)
        }

        /// SHA-256 over the session's whole file tree (paths, kinds, bytes),
        /// every file's ACL and every state key's value.
        fn digest(&self) -> [u8; 32] {
            let mut text = String::new();
            walk(&self.tmp.path().join("s1/files"), "", &mut text);
            for line in text.clone().lines() {
                if let Some(path) = line.strip_prefix("file shared/")
                    && let Some((path, _)) = path.split_once(' ')
                {
                    let acl = self.core.get_acl(self.who(), &format!("shared/{path}"));
                    text += &format!("acl shared/{path} {acl:?}\n");
                }
            }
            for key in self.core.state_keys(self.who(), "").unwrap() {
                let v = self.core.state().peek(&key).unwrap();
                text += &format!("state {key} {}\n", hex::encode(&v.value));
            }
            sha256(text.as_bytes())
        }
    }

    fn walk(dir: &Path, rel: &str, out: &mut String) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().into_string().unwrap();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                *out += &format!("dir {child}\n");
                walk(&e.path(), &child, out);
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                *out += &format!("file {child} {}\n", hex::encode(sha256(&bytes)));
            }
        }
    }

    /// Writes of one key in a row are one entry; a write after someone
    /// else's is an entry of its own, so that undoing it still finds the
    /// other writer's value in the way (a conflict) instead of overwriting
    /// it. Undoing the journal puts back what was there before.
    #[test]
    fn a_key_written_in_a_row_is_one_entry_and_a_foreign_write_between_splits_it() {
        let e = env();
        let other = AgentId::new("did:ex:b").unwrap();
        let by_other = Caller::untraced(&other, Ring::Standard);
        e.core.state_put(by_other, "k", b"0", 0).unwrap();
        let mut j = ChangeJournal::new();
        let put = |j: &mut ChangeJournal, value: &[u8], expected| {
            let c = e.core.state_put(e.who(), "k", value, expected).unwrap();
            j.push(Change::State(c));
        };
        put(&mut j, b"1", 1);
        put(&mut j, b"2", 2);
        j.push(Change::State(e.core.state_delete(e.who(), "k", 3).unwrap()));
        put(&mut j, b"4", 0);
        let folded = |j: &ChangeJournal| match j.changes() {
            [Change::State(s)] => (s.previous.clone(), s.previous_version, s.version, s.deleted),
            other => panic!("{other:?}"),
        };
        assert_eq!(folded(&j), (Some(b"0".to_vec()), 1, 4, false));
        assert_eq!(j.state_bytes(), 2, "the key and one previous value");
        let undone = undo_changes(&e.core, &ActionRegistry::new(), e.who(), j.changes());
        assert!(undone.is_empty(), "{undone:?}");
        assert_eq!(e.core.state().peek("k").unwrap().value, b"0");

        // Created and deleted over and over: two entries (the creation,
        // and the first delete with what it deleted), however many times.
        let mut j = ChangeJournal::new();
        for _ in 0..10 {
            let at = e.core.state().peek("n").map_or(0, |_| unreachable!());
            let c = e.core.state_put(e.who(), "n", b"big", at).unwrap();
            let v = c.version;
            j.push(Change::State(c));
            j.push(Change::State(e.core.state_delete(e.who(), "n", v).unwrap()));
        }
        assert_eq!(j.len(), 2);
        assert_eq!(j.state_bytes(), 1 + 1 + 3);
        let undone = undo_changes(&e.core, &ActionRegistry::new(), e.who(), j.changes());
        assert!(undone.is_empty(), "{undone:?}");
        assert!(e.core.state().peek("n").is_none());

        // Another agent's write between two of ours: two entries, and the
        // undo refuses to overwrite its value.
        let mut j = ChangeJournal::new();
        put(&mut j, b"ours", 1);
        e.core.state_put(by_other, "k", b"theirs", 2).unwrap();
        put(&mut j, b"ours again", 3);
        assert_eq!(j.len(), 2);
        assert_eq!(j.state_bytes(), 2 + 1 + 6);
        let undone = undo_changes(&e.core, &ActionRegistry::new(), e.who(), j.changes());
        assert!(
            matches!(&undone[..], [f] if f.index == 0 && f.error.is_conflict()),
            "{undone:?}"
        );
        assert_eq!(e.core.state().peek("k").unwrap().value, b"theirs");
        assert_eq!(ChangeJournal::from(j.take()).state_bytes(), 9);
        assert_eq!(j.state_bytes(), 0);
    }

    fn env() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir =
            Arc::new(Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap());
        let clock = FakeClock::new();
        let bus = Arc::new(EventBus::new(1024, Arc::new(clock.clone())));
        let config = SessionCoreConfig {
            strict: false,
            ..SessionCoreConfig::default()
        };
        let core = SessionCore::new(SessionId::new("s1").unwrap(), dir, &config, bus.clone());
        let agent = AgentId::new("did:ex:a").unwrap();
        Env {
            tmp,
            core,
            bus,
            clock,
            agent,
        }
    }

    fn registry(clock: &FakeClock) -> ActionRegistry {
        let mut r = ActionRegistry::new().with_clock(Arc::new(clock.clone()));
        r.register_reversible_with(
            "note.append",
            builtin::NoteAppend,
            ActionTerms {
                reversibility: Reversibility::Partial,
                undo_window: Some(Duration::from_secs(60)),
            },
        )
        .unwrap();
        r.register_effect("notify.send", builtin::NotifySend)
            .unwrap();
        r
    }

    /// A step that touches every kind of change, journalled as the runtime does.
    fn step(e: &Env, actions: &ActionRegistry) -> Vec<Change> {
        let who = e.who();
        let mut j = ChangeJournal::new();
        let c = &e.core;
        j.push(Change::file(
            &c.write(who, "shared/doc", b"overwritten").unwrap(),
        ));
        j.push(Change::file(
            &c.append(who, "shared/doc", b" and more").unwrap(),
        ));
        j.push(Change::file(
            &c.write(who, "notes/new.txt", b"new").unwrap(),
        ));
        j.push(Change::file(&c.delete(who, "shared/gone").unwrap()));
        j.push(Change::file(
            &c.rename(who, "notes/keep.txt", "archive/keep.txt").unwrap(),
        ));
        let acl = Acl {
            owner: e.agent.clone(),
            read: Access::Owner,
            write: Access::Owner,
        };
        j.push(Change::file(&c.set_acl(who, "shared/doc", acl).unwrap()));
        j.push(Change::file(
            &c.create_dir(who, "made/deep").unwrap().unwrap(),
        ));
        j.push(Change::State(c.state_put(who, "k", b"changed", 1).unwrap()));
        j.push(Change::State(c.state_put(who, "fresh", b"x", 0).unwrap()));
        j.push(Change::State(c.state_delete(who, "doomed", 1).unwrap()));
        let rec = c
            .invoke_action(who, actions, "note.append", "hello")
            .unwrap();
        j.push(Change::action(&rec));
        assert_eq!(j.len(), 11);
        j.take()
    }

    fn seed(e: &Env) {
        let (who, c) = (e.who(), &e.core);
        c.write(who, "shared/doc", b"original").unwrap();
        c.write(who, "shared/gone", b"bye").unwrap();
        c.write(who, "notes/keep.txt", b"keep").unwrap();
        // note.append's undo truncates its journal back; it does not delete
        // a journal it created (that is what makes it partial here).
        c.write(who, builtin::JOURNAL, b"earlier\n").unwrap();
        c.state_put(who, "k", b"original \x00\xff", 0).unwrap();
        c.state_put(who, "doomed", b"d", 0).unwrap();
    }

    #[test]
    fn undoing_a_step_restores_files_acls_and_state_byte_for_byte() {
        let e = env();
        let actions = registry(&e.clock);
        seed(&e);
        let before = e.digest();
        let changes = step(&e, &actions);
        assert_ne!(e.digest(), before);
        let failures = undo_changes(&e.core, &actions, e.who(), &changes);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(e.digest(), before);
        assert_eq!(
            e.core.state().peek("k").unwrap().value,
            b"original \x00\xff",
            "the value, not the version, comes back"
        );
        assert_eq!(
            e.core.state().peek("k").unwrap().version,
            1,
            "its version comes back too"
        );
        assert_eq!(
            e.core.state_put(e.who(), "k", b"next", 1).unwrap().version,
            3,
            "but the next write never reuses a number"
        );
    }

    #[test]
    fn changes_are_undone_newest_first() {
        let e = env();
        let who = e.who();
        let none = ActionRegistry::new();
        // Each write depends on the one before: only newest-first succeeds.
        let changes: Vec<Change> = [&b"1"[..], b"2", b"3"]
            .iter()
            .map(|v| Change::file(&e.core.write(who, "f", v).unwrap()))
            .collect();
        let state: Vec<Change> = (0..3u64)
            .map(|i| Change::State(e.core.state_put(who, "k", &[i as u8], i).unwrap()))
            .collect();
        let all: Vec<Change> = changes.into_iter().chain(state).collect();
        assert!(undo_changes(&e.core, &none, who, &all).is_empty());
        assert!(e.core.read(who, "f").is_err(), "the first write created it");
        assert_eq!(e.core.state().peek("k"), None);
    }

    #[test]
    fn a_failure_is_reported_and_the_other_changes_are_still_undone() {
        let e = env();
        let actions = registry(&e.clock);
        let who = e.who();
        e.core.write(who, "a", b"a0").unwrap();
        let mut j = ChangeJournal::new();
        j.push(Change::file(&e.core.write(who, "a", b"a1").unwrap()));
        j.push(Change::Effect {
            name: "notify.send".into(),
            touched: Vec::new(),
        });
        j.push(Change::State(e.core.state_put(who, "k", b"v", 0).unwrap()));
        j.push(Change::file(&e.core.write(who, "b", b"b1").unwrap()));
        let changes = j.take();
        // Someone else changes `a` and `k` afterwards.
        e.core.write(who, "a", b"a2").unwrap();
        e.core.state_put(who, "k", b"w", 1).unwrap();
        let failures = undo_changes(&e.core, &actions, who, &changes);
        let got: Vec<(usize, bool)> = failures
            .iter()
            .map(|f| (f.index, f.error.is_conflict()))
            .collect();
        assert_eq!(got, [(2, true), (1, false), (0, true)], "{failures:?}");
        assert!(matches!(
            &failures[1].error,
            UndoError::NoUndo { change, .. } if change == "effect notify.send"
        ));
        assert!(matches!(
            &failures[0].error,
            UndoError::State {
                source: StateError::UndoConflict { .. },
                ..
            }
        ));
        assert!(e.core.read(who, "b").is_err(), "b's write was undone");
        assert_eq!(e.core.read(who, "a").unwrap(), b"a2", "a was left alone");
        assert_eq!(e.core.state().peek("k").unwrap().value, b"w");
    }

    #[test]
    fn an_action_past_its_undo_window_is_not_compensated() {
        let e = env();
        let actions = registry(&e.clock);
        let who = e.who();
        let rec = e
            .core
            .invoke_action(who, &actions, "note.append", "late")
            .unwrap();
        let changes = [Change::action(&rec)];
        e.clock.advance(Duration::from_secs(61));
        let failures = undo_changes(&e.core, &actions, who, &changes);
        assert!(
            matches!(
                &failures[..],
                [UndoFailure {
                    index: 0,
                    error: UndoError::Action {
                        source: ActionError::UndoWindowClosed { name, window, age },
                        ..
                    },
                }] if name == "note.append"
                    && *window == Duration::from_secs(60)
                    && *age == Duration::from_secs(61)
            ),
            "{failures:?}"
        );
        assert_eq!(
            e.core.read(who, builtin::JOURNAL).unwrap(),
            b"did:ex:a: late\n",
            "still there"
        );
        // Within the window it is compensated.
        let rec = e
            .core
            .invoke_action(who, &actions, "note.append", "soon")
            .unwrap();
        e.clock.advance(Duration::from_secs(60));
        assert!(undo_changes(&e.core, &actions, who, &[Change::action(&rec)]).is_empty());
        assert_eq!(
            e.core.read(who, builtin::JOURNAL).unwrap(),
            b"did:ex:a: late\n"
        );
    }

    #[test]
    fn a_file_change_without_an_undo_record_cannot_be_undone() {
        let e = env();
        let change = Change::File {
            op: FileOp::Write,
            path: "x".into(),
            to: None,
            undo: None,
            before: None,
            after: None,
        };
        let failures = undo_changes(&e.core, &ActionRegistry::new(), e.who(), &[change]);
        assert!(matches!(
            &failures[..],
            [UndoFailure {
                error: UndoError::NoUndo { .. },
                ..
            }]
        ));
    }

    #[test]
    fn actions_and_effects_invoked_in_a_session_leave_events() {
        let e = env();
        let actions = registry(&e.clock);
        let who = e.who();
        let rec = e
            .core
            .invoke_action(who, &actions, "note.append", "x")
            .unwrap();
        // Each names the session files it changed, as a saga's redo needs.
        assert_eq!(rec.touched, [builtin::JOURNAL]);
        assert_eq!(Change::action(&rec).paths(), [builtin::JOURNAL]);
        let done = e
            .core
            .invoke_effect(who, &actions, "notify.send", "y")
            .unwrap();
        assert_eq!(done.touched, [builtin::OUTBOX]);
        assert!(e.core.invoke_effect(who, &actions, "no.such", "y").is_err());
        let kinds: Vec<_> = e
            .bus
            .query(&Default::default())
            .iter()
            .map(|ev| (ev.kind(), ev.payload.fields().to_string()))
            .filter(|(k, _)| matches!(k, EventKind::ActionInvoked | EventKind::EffectInvoked))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    EventKind::ActionInvoked,
                    " action=note.append reversibility=partial undo_window_ms=60000".to_string()
                ),
                (EventKind::EffectInvoked, " effect=notify.send".to_string()),
            ]
        );
    }

    #[test]
    fn the_serde_form_is_stable() {
        let e = env();
        let c = Change::file(&e.core.write(e.who(), "shared/a", b"abc").unwrap());
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["kind"], "file");
        assert_eq!(json["op"], "write");
        assert_eq!(json["path"], "shared/a");
        assert_eq!(
            json["after"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(json["undo"].is_u64());
        for op in [
            FileOp::Write,
            FileOp::Append,
            FileOp::Truncate,
            FileOp::Delete,
            FileOp::Rename,
            FileOp::SetAcl,
            FileOp::CreateDir,
        ] {
            assert_eq!(serde_json::to_value(op).unwrap(), op.name());
        }
        let all = vec![
            c,
            Change::State(StateUndo {
                key: "k".into(),
                previous: Some(vec![0, 255]),
                previous_version: 2,
                version: 3,
                deleted: false,
            }),
            Change::Action {
                name: "note.append".into(),
                output: "o".into(),
                undo: "0:3".into(),
                at_ms: 7,
                touched: vec!["journal/notes.log".into()],
            },
            Change::Effect {
                name: "notify.send".into(),
                touched: Vec::new(),
            },
            Change::Action {
                name: "note.append".into(),
                output: "o".into(),
                undo: "0:3".into(),
                at_ms: 8,
                touched: Vec::new(),
            },
        ];
        let text = serde_json::to_string(&all).unwrap();
        assert!(
            text.contains(r#"{"kind":"effect","name":"notify.send"}"#),
            "{text}"
        );
        // No `touched` when nothing was: journals written before it existed read back.
        assert!(
            text.contains(r#""at_ms":7,"touched":["journal/notes.log"]}"#),
            "{text}"
        );
        assert!(text.contains(r#""undo":"0:3","at_ms":8}"#), "{text}");
        assert!(text.contains(r#""kind":"state","key":"k","previous":[0,255],"previous_version":2,"version":3,"deleted":false"#), "{text}");
        let back: Vec<Change> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, all);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Whatever puts and deletes a step made, undoing them restores
        /// every value (and every key's existence) exactly.
        #[test]
        fn undoing_state_changes_restores_every_value(
            ops in proptest::collection::vec((0..4usize, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6))), 1..20)
        ) {
            let e = env();
            let who = e.who();
            e.core.state_put(who, "k0", b"seed", 0).unwrap();
            let before = e.digest();
            let mut j = ChangeJournal::new();
            for (k, value) in ops {
                let key = format!("k{k}");
                let r = match value {
                    Some(v) => e.core.state_put(who, &key, &v, 0),
                    None => e.core.state_delete(who, &key, 0),
                };
                if let Ok(u) = r {
                    j.push(Change::State(u));
                }
            }
            let failures = undo_changes(&e.core, &ActionRegistry::new(), who, &j.take());
            prop_assert!(failures.is_empty(), "{:?}", failures);
            prop_assert_eq!(e.digest(), before);
        }
    }
}
