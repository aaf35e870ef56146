//! One session's shared resources, as its participants reach them: the
//! session file space, the key-value state, the intent locks and the vector
//! clocks. Every change goes through here and leaves an event on the bus, so
//! callers (the runtime's capability adapters, the `Hypervisor`) never emit
//! events by hand.
//!
//! Isolation ([`Isolation`]) applies to the state and to the *shared* file
//! area: under `Serializable`, reading a shared file or key needs a READ
//! lock on it and changing one needs a WRITE (or EXCLUSIVE) lock; private
//! files have a single writer and need none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ahv_core::event::{EventBus, EventPayload};
use ahv_core::{AgentId, SessionId, TraceId};
use cap_std::fs::Dir;

use crate::actions::{ActionContext, ActionError, ActionRegistry, UndoRecord};
use crate::files::{Acl, Caller, FileChange, FileOp, FileSpace, Sha256Digest};
use crate::locks::{LockError, LockManager, LockMode, LockResource};
use crate::session::files::{
    Area, AreaPath, DEFAULT_OPEN_DIRS, FileQuotas, OpenDirs, SessionFiles, SnapshotInfo, Usage,
};
use crate::session::{Participant, ParticipantsDiff};
use crate::state::{Isolation, StateError, StateLimits, StateStore, StateUndo, Versioned};
use crate::vclock::ClockTable;
use crate::vfs::{Stat, VfsError};

/// What a lock protects, as a guest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTarget {
    /// A path, as the caller names it in `vfs-*` calls.
    Path(String),
    /// A state key.
    Key(String),
}

/// The limits and modes of one session's shared resources.
#[derive(Debug, Clone)]
pub struct SessionCoreConfig {
    /// File quotas.
    pub quotas: FileQuotas,
    /// State limits.
    pub state: StateLimits,
    /// Isolation level of the state and the shared files.
    pub isolation: Isolation,
    /// Strict (strong) consistency: stale or concurrent writes are conflicts.
    pub strict: bool,
    /// Most locks one agent may hold.
    pub max_locks_per_agent: usize,
    /// The descriptor budget the session's files share with the other
    /// sessions (one per hypervisor; see [`OpenDirs`]).
    pub open_dirs: Arc<OpenDirs>,
}

impl Default for SessionCoreConfig {
    fn default() -> Self {
        SessionCoreConfig {
            quotas: FileQuotas::default(),
            state: StateLimits::default(),
            isolation: Isolation::default(),
            strict: true,
            max_locks_per_agent: 1024,
            open_dirs: OpenDirs::new(DEFAULT_OPEN_DIRS),
        }
    }
}

/// One session's files, state, locks and clocks, with events.
#[derive(Debug)]
pub struct SessionCore {
    id: SessionId,
    files: SessionFiles,
    /// The participants each kept snapshot recorded, by snapshot id.
    snapshot_participants: Mutex<BTreeMap<u64, Vec<Participant>>>,
    state: StateStore,
    locks: Arc<LockManager>,
    clocks: Arc<ClockTable>,
    events: Arc<EventBus>,
}

impl SessionCore {
    /// The shared resources of session `id`; its directory under `sessions`
    /// is created on first use.
    pub fn new(
        id: SessionId,
        sessions: Arc<Dir>,
        config: &SessionCoreConfig,
        events: Arc<EventBus>,
    ) -> SessionCore {
        let clocks = Arc::new(ClockTable::new());
        let locks = Arc::new(LockManager::new(config.max_locks_per_agent));
        let files = SessionFiles::new(sessions, id.clone(), config.quotas.clone(), clocks.clone())
            .with_open_dirs(config.open_dirs.clone());
        let state = StateStore::new(config.state.clone(), clocks.clone(), locks.clone());
        files.set_strict(config.strict);
        state.set_strict(config.strict);
        state.set_isolation(config.isolation);
        SessionCore {
            id,
            files,
            snapshot_participants: Mutex::new(BTreeMap::new()),
            state,
            locks,
            clocks,
            events,
        }
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Switches between strict (strong) and eventual consistency.
    pub fn set_strict(&self, strict: bool) {
        self.files.set_strict(strict);
        self.state.set_strict(strict);
    }

    /// The isolation level in force.
    pub fn isolation(&self) -> Isolation {
        self.state.isolation()
    }

    /// The session file space (host view: snapshots, undo records, usage).
    pub fn files(&self) -> &SessionFiles {
        &self.files
    }

    /// The session's state store (host view).
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The session's lock manager (host view).
    pub fn locks(&self) -> &LockManager {
        &self.locks
    }

    /// The session's vector clocks.
    pub fn clocks(&self) -> &ClockTable {
        &self.clocks
    }

    /// Emits an event about `agent` in this session that the runtime
    /// observed outside the session's own operations (an outbound HTTP
    /// request of the `net` capability): the session's audit log records
    /// it like any other.
    pub fn record(&self, agent: &AgentId, trace: TraceId, payload: EventPayload) {
        self.emit(agent, trace, payload);
    }

    fn emit(&self, agent: &AgentId, trace: TraceId, payload: EventPayload) {
        self.events
            .emit(Some(&self.id), Some(agent), trace, None, payload);
    }

    /// Undoes the file change kept as undo record `record` (an `op` on
    /// `path`), for `who`; emits `vfs.undone`.
    ///
    /// # Errors
    /// [`VfsError`] from the file space (the record is unknown, or the
    /// file changed since).
    pub fn undo_file(
        &self,
        who: Caller<'_>,
        record: u64,
        op: FileOp,
        path: &str,
    ) -> Result<(), VfsError> {
        self.files.undo(record)?;
        self.emit(
            who.agent,
            who.trace,
            EventPayload::VfsUndone {
                path: path.to_string(),
                op: op.name().to_string(),
                record,
            },
        );
        Ok(())
    }

    /// A call into `agent` begins: its state transaction starts.
    pub fn begin_call(&self, agent: &AgentId) {
        self.state.begin(agent);
    }

    /// A call into `agent` ended (however it ended).
    pub fn end_call(&self, agent: &AgentId) {
        self.state.end(agent);
    }

    /// Releases every lock `agent` holds (it trapped, was killed, left, or its
    /// call was cancelled) and returns how many there were; the
    /// `lock.released` events carry `trace`, the operation that caused it.
    pub fn release_locks(&self, agent: &AgentId, reason: &str, trace: TraceId) -> usize {
        let released = self.locks.release_all(agent);
        for (resource, _) in &released {
            self.emit(
                agent,
                trace,
                EventPayload::LockReleased {
                    resource: resource.to_string(),
                },
            );
        }
        if !released.is_empty() {
            tracing::debug!(%agent, count = released.len(), reason, "locks released");
        }
        released.len()
    }

    /// `agent` left the session: its locks, transaction, clock and cached
    /// handles go (its private files stay on disk). `trace` is the operation
    /// that removed it.
    pub fn agent_left(&self, agent: &AgentId, reason: &str, trace: TraceId) {
        self.release_locks(agent, reason, trace);
        self.state.forget(agent);
        self.files.forget(agent);
        self.clocks.forget(agent);
    }

    /// Takes a snapshot of the session's files and records `participants`
    /// (with their rings and scores) beside it.
    ///
    /// # Errors
    /// [`VfsError`] if copying fails.
    pub fn snapshot(
        &self,
        by: &AgentId,
        trace: TraceId,
        participants: &[Participant],
    ) -> Result<SnapshotInfo, VfsError> {
        let info = self.files.snapshot()?;
        {
            let mut recorded = self.recorded();
            // Snapshots dropped through `files()` take their records along.
            let kept = self.files.snapshot_ids();
            recorded.retain(|id, _| kept.contains(id));
            recorded.insert(info.id, participants.to_vec());
        }
        self.emit(
            by,
            trace,
            EventPayload::VfsSnapshot {
                snapshot: info.id,
                files: info.files,
                bytes: info.bytes,
            },
        );
        Ok(info)
    }

    /// Restores a snapshot of the session's files and reports how
    /// `participants` (the session's now) differ from the ones the snapshot
    /// recorded; the report is in the `vfs.restore` event too.
    ///
    /// # Errors
    /// [`VfsError`] naming an unknown snapshot (or one not taken through
    /// [`SessionCore::snapshot`], which recorded no participants), or an I/O
    /// failure.
    pub fn restore(
        &self,
        snapshot: u64,
        by: &AgentId,
        trace: TraceId,
        participants: &[Participant],
    ) -> Result<ParticipantsDiff, VfsError> {
        let Some(then) = self.recorded().get(&snapshot).cloned() else {
            return Err(VfsError::Io {
                op: "restore",
                path: format!("snapshot {snapshot}"),
                message: "no such snapshot of the session (none recorded its participants)".into(),
            });
        };
        self.files.restore(snapshot)?;
        let diff = ParticipantsDiff::between(&then, participants);
        self.emit(
            by,
            trace,
            EventPayload::VfsRestore {
                snapshot,
                joined: diff.joined.clone(),
                left: diff.left.clone(),
                rings: diff.rings_text(),
                scores: diff.scores_text(),
            },
        );
        Ok(diff)
    }

    fn recorded(&self) -> MutexGuard<'_, BTreeMap<u64, Vec<Participant>>> {
        // A poisoned lock only means a panic elsewhere; the map is still usable.
        self.snapshot_participants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes and files in use.
    pub fn usage(&self) -> Usage {
        self.files.usage()
    }

    // ---- state ----

    fn state_refusal(&self, who: Caller<'_>, key: &str, e: &StateError) {
        if matches!(e, StateError::Conflict { .. } | StateError::Stale { .. }) {
            self.emit(
                who.agent,
                who.trace,
                EventPayload::StateConflict {
                    key: key.chars().take(256).collect(),
                    reason: e.to_string(),
                },
            );
        }
    }

    /// Reads a key (see [`StateStore::get`]).
    ///
    /// # Errors
    /// [`StateError`].
    pub fn state_get(&self, who: Caller<'_>, key: &str) -> Result<Option<Versioned>, StateError> {
        self.state.get(who.agent, key)
    }

    /// Keys with a prefix (see [`StateStore::keys`]).
    ///
    /// # Errors
    /// [`StateError`].
    pub fn state_keys(&self, who: Caller<'_>, prefix: &str) -> Result<Vec<String>, StateError> {
        self.state.keys(who.agent, prefix)
    }

    /// Emits `state.write` or `state.delete` for a change that went
    /// through, `state.conflict` for a refusal that matters.
    fn state_changed(
        &self,
        who: Caller<'_>,
        key: &str,
        r: Result<StateUndo, StateError>,
    ) -> Result<StateUndo, StateError> {
        match &r {
            Ok(change) => {
                let (key, version) = (change.key.clone(), change.version);
                let payload = if change.deleted {
                    EventPayload::StateDelete { key, version }
                } else {
                    EventPayload::StateWrite { key, version }
                };
                self.emit(who.agent, who.trace, payload);
            }
            Err(e) => self.state_refusal(who, key, e),
        }
        r
    }

    /// Compare-and-set write (see [`StateStore::put_undoable`]); emits
    /// `state.write` or `state.conflict`. Returns what it changed (the new
    /// version is its `version`), for [`SessionCore::state_undo`].
    ///
    /// # Errors
    /// [`StateError`].
    pub fn state_put(
        &self,
        who: Caller<'_>,
        key: &str,
        value: &[u8],
        expected: u64,
    ) -> Result<StateUndo, StateError> {
        let r = self.state.put_undoable(who.agent, key, value, expected);
        self.state_changed(who, key, r)
    }

    /// Compare-and-set delete; emits `state.delete` or `state.conflict`.
    /// Returns what it changed (the version deleted is its `version`).
    ///
    /// # Errors
    /// [`StateError`].
    pub fn state_delete(
        &self,
        who: Caller<'_>,
        key: &str,
        expected: u64,
    ) -> Result<StateUndo, StateError> {
        let r = self.state.delete_undoable(who.agent, key, expected);
        self.state_changed(who, key, r)
    }

    /// Undoes one put or delete (see [`StateStore::undo`]: the value comes
    /// back byte for byte, and so does the version number); emits `state.write`
    /// or `state.delete` for the compensating write, `state.conflict` when
    /// the key changed since ([`StateError::UndoConflict`]).
    ///
    /// # Errors
    /// [`StateError`].
    pub fn state_undo(&self, who: Caller<'_>, change: &StateUndo) -> Result<StateUndo, StateError> {
        let r = self.state.undo(who.agent, change);
        if let Err(e @ StateError::UndoConflict { .. }) = &r {
            self.emit(
                who.agent,
                who.trace,
                EventPayload::StateConflict {
                    key: change.key.chars().take(256).collect(),
                    reason: e.to_string(),
                },
            );
            return r;
        }
        self.state_changed(who, &change.key, r)
    }

    // ---- actions ----

    /// The context an action invoked by `who` in this session works in
    /// (its files are the session's, with isolation checks and events).
    pub fn action_context<'a>(&'a self, who: Caller<'a>) -> ActionContext<'a> {
        ActionContext {
            agent: who.agent,
            ring: who.ring,
            trace: who.trace,
            files: self,
        }
    }

    /// Runs a reversible action from `actions` for `who`; emits
    /// `action.invoked` (with its reversibility and undo window) once it
    /// ran. The undo record, which names the session files the action
    /// changed ([`UndoRecord::touched`]), is the caller's to keep.
    ///
    /// # Errors
    /// [`ActionError`] from the registry or the action.
    pub fn invoke_action(
        &self,
        who: Caller<'_>,
        actions: &ActionRegistry,
        name: &str,
        args: &str,
    ) -> Result<UndoRecord, ActionError> {
        let files = Recording::new(self);
        let ctx = ActionContext {
            files: &files,
            ..self.action_context(who)
        };
        let mut record = actions.invoke_reversible(ctx, name, args)?;
        record.touched = files.into_touched();
        let terms = actions.terms(name).unwrap_or_default();
        self.emit(
            who.agent,
            who.trace,
            EventPayload::ActionInvoked {
                action: record.action.clone(),
                reversibility: terms.reversibility.name().to_string(),
                undo_window_ms: terms.undo_window_ms(),
            },
        );
        Ok(record)
    }

    /// Runs an effect from `actions` for `who`; emits `effect.invoked` once
    /// it ran.
    ///
    /// # Errors
    /// [`ActionError`] from the registry or the effect.
    pub fn invoke_effect(
        &self,
        who: Caller<'_>,
        actions: &ActionRegistry,
        name: &str,
        args: &str,
    ) -> Result<Effected, ActionError> {
        let files = Recording::new(self);
        let ctx = ActionContext {
            files: &files,
            ..self.action_context(who)
        };
        let output = actions.invoke_effect(ctx, name, args)?;
        self.emit(
            who.agent,
            who.trace,
            EventPayload::EffectInvoked {
                effect: name.to_string(),
            },
        );
        Ok(Effected {
            output,
            touched: files.into_touched(),
        })
    }

    // ---- locks ----

    /// The lock resource a guest's target names (paths are resolved in the
    /// caller's namespace, so two agents' private `notes.md` are two resources).
    ///
    /// # Errors
    /// [`VfsError::InvalidPath`] for a bad path.
    pub fn lock_resource(
        &self,
        who: Caller<'_>,
        target: &LockTarget,
    ) -> Result<LockResource, VfsError> {
        Ok(match target {
            LockTarget::Path(p) => LockResource::path(&self.files.area_path(who, p)?),
            LockTarget::Key(k) => LockResource::key(k),
        })
    }

    /// Takes a lock, waiting up to `wait`; emits `lock.acquired` or `lock.deadlock`.
    ///
    /// # Errors
    /// [`LockError`].
    pub async fn lock(
        &self,
        who: Caller<'_>,
        resource: &LockResource,
        mode: LockMode,
        wait: Duration,
    ) -> Result<(), LockError> {
        match self.locks.acquire(who.agent, resource, mode, wait).await {
            Ok(()) => {
                self.emit(
                    who.agent,
                    who.trace,
                    EventPayload::LockAcquired {
                        resource: resource.to_string(),
                        mode: mode.to_string(),
                    },
                );
                Ok(())
            }
            Err(e) => {
                if let LockError::Deadlock { cycle, .. } = &e {
                    self.emit(
                        who.agent,
                        who.trace,
                        EventPayload::LockDeadlock {
                            resource: resource.to_string(),
                            cycle: cycle.clone(),
                        },
                    );
                }
                Err(e)
            }
        }
    }

    /// Releases a lock; emits `lock.released`.
    ///
    /// # Errors
    /// [`LockError::NotHeld`].
    pub fn unlock(&self, who: Caller<'_>, resource: &LockResource) -> Result<LockMode, LockError> {
        let mode = self.locks.release(who.agent, resource)?;
        self.emit(
            who.agent,
            who.trace,
            EventPayload::LockReleased {
                resource: resource.to_string(),
            },
        );
        Ok(mode)
    }

    /// The locks `agent` holds, named as it would name them (a place in
    /// its own private area by its bare path; anything else, the private
    /// area's root included, by the place's full name).
    pub fn held(&self, agent: &AgentId) -> Vec<(LockTarget, LockMode)> {
        self.locks
            .held_by(agent)
            .into_iter()
            .filter_map(|(r, m)| {
                let target = match r.place() {
                    Some(AreaPath {
                        area: Area::Private(owner),
                        rel,
                    }) if owner == agent && !rel.is_root() => LockTarget::Path(rel.to_string()),
                    Some(place) => LockTarget::Path(place.to_string()),
                    None => LockTarget::Key(r.key_name()?.to_string()),
                };
                Some((target, m))
            })
            .collect()
    }

    // ---- files ----

    /// Under `Serializable`, a shared path needs a lock of at least `mode`.
    fn check_isolation(&self, who: Caller<'_>, path: &str, mode: LockMode) -> Result<(), VfsError> {
        if self.state.isolation() != Isolation::Serializable {
            return Ok(());
        }
        let place = self.files.area_path(who, path)?;
        if place.area != Area::Shared {
            return Ok(());
        }
        if self
            .locks
            .holds(who.agent, &LockResource::path(&place), mode)
        {
            return Ok(());
        }
        Err(VfsError::Denied {
            path: place.to_string(),
            reason: format!(
                "serializable isolation: {} needs a {mode} lock on this shared path",
                who.agent
            ),
        })
    }

    /// Emits the event for a file change or for a refusal that matters
    /// (conflict, quota); `acl` is the new list of an ACL change.
    fn changed(
        &self,
        who: Caller<'_>,
        r: Result<FileChange, VfsError>,
        acl: Option<&Acl>,
    ) -> Result<FileChange, VfsError> {
        match &r {
            Ok(c) => {
                let payload = match c.op {
                    FileOp::Write | FileOp::Append | FileOp::Truncate => EventPayload::VfsWrite {
                        path: c.path.clone(),
                        op: c.op.name().to_string(),
                        size: c.size,
                        before: c.before,
                        after: c.after,
                    },
                    FileOp::Delete => EventPayload::VfsDelete {
                        path: c.path.clone(),
                        before: c.before,
                    },
                    FileOp::Rename => EventPayload::VfsRename {
                        from: c.path.clone(),
                        to: c.to.clone().unwrap_or_default(),
                        hash: c.after.or(c.before),
                    },
                    FileOp::SetAcl => EventPayload::VfsAclChanged {
                        path: c.path.clone(),
                        acl: acl.map(event_acl).unwrap_or_default(),
                    },
                    FileOp::CreateDir => EventPayload::VfsDirCreated {
                        path: c.path.clone(),
                        created: c.size,
                    },
                };
                self.emit(who.agent, who.trace, payload);
            }
            Err(VfsError::Conflict { path, reason }) => self.emit(
                who.agent,
                who.trace,
                EventPayload::VfsConflict {
                    path: path.clone(),
                    reason: reason.clone(),
                },
            ),
            Err(VfsError::Quota { path, reason }) => self.emit(
                who.agent,
                who.trace,
                EventPayload::VfsQuotaExceeded {
                    path: path.clone(),
                    reason: reason.clone(),
                },
            ),
            Err(_) => {}
        }
        r
    }
}

/// The session file space with isolation checks and events; what session
/// agents' `vfs-*` calls reach.
impl FileSpace for SessionCore {
    fn max_file_bytes(&self) -> u64 {
        self.files.max_file_bytes()
    }

    fn read(&self, who: Caller<'_>, path: &str) -> Result<Vec<u8>, VfsError> {
        self.check_isolation(who, path, LockMode::Read)?;
        self.files.read(who, path)
    }

    fn list(&self, who: Caller<'_>, path: &str) -> Result<Vec<String>, VfsError> {
        self.files.list(who, path)
    }

    fn stat(&self, who: Caller<'_>, path: &str) -> Result<Stat, VfsError> {
        self.files.stat(who, path)
    }

    fn hash(&self, who: Caller<'_>, path: &str) -> Result<Sha256Digest, VfsError> {
        self.check_isolation(who, path, LockMode::Read)?;
        self.files.hash(who, path)
    }

    fn write(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        self.check_isolation(who, path, LockMode::Write)?;
        let r = self.files.write(who, path, contents);
        self.changed(who, r, None)
    }

    fn append(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        self.check_isolation(who, path, LockMode::Write)?;
        let r = self.files.append(who, path, contents);
        self.changed(who, r, None)
    }

    fn truncate(&self, who: Caller<'_>, path: &str, len: u64) -> Result<FileChange, VfsError> {
        self.check_isolation(who, path, LockMode::Write)?;
        let r = self.files.truncate(who, path, len);
        self.changed(who, r, None)
    }

    fn delete(&self, who: Caller<'_>, path: &str) -> Result<FileChange, VfsError> {
        self.check_isolation(who, path, LockMode::Write)?;
        let r = self.files.delete(who, path);
        self.changed(who, r, None)
    }

    fn rename(&self, who: Caller<'_>, src: &str, dst: &str) -> Result<FileChange, VfsError> {
        self.check_isolation(who, src, LockMode::Write)?;
        self.check_isolation(who, dst, LockMode::Write)?;
        let r = self.files.rename(who, src, dst);
        self.changed(who, r, None)
    }

    fn create_dir(&self, who: Caller<'_>, path: &str) -> Result<Option<FileChange>, VfsError> {
        self.check_isolation(who, path, LockMode::Write)?;
        match self.files.create_dir(who, path) {
            Ok(None) => Ok(None),
            Ok(Some(c)) => self.changed(who, Ok(c), None).map(Some),
            Err(e) => self.changed(who, Err(e), None).map(Some),
        }
    }

    fn get_acl(&self, who: Caller<'_>, path: &str) -> Result<Acl, VfsError> {
        self.files.get_acl(who, path)
    }

    fn set_acl(&self, who: Caller<'_>, path: &str, acl: Acl) -> Result<FileChange, VfsError> {
        self.check_isolation(who, path, LockMode::Write)?;
        let r = self.files.set_acl(who, path, acl.clone());
        self.changed(who, r, Some(&acl))
    }
}

/// What an effect run in a session returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effected {
    /// What the effect returned to its caller.
    pub output: String,
    /// The session files it changed (guest paths, first change first).
    pub touched: Vec<String>,
}

/// The session's files as an action sees them, noting each path a change
/// went through (a saga keeps them as the action's redo).
#[derive(Debug)]
struct Recording<'a> {
    core: &'a SessionCore,
    touched: Mutex<Vec<String>>,
}

impl<'a> Recording<'a> {
    fn new(core: &'a SessionCore) -> Recording<'a> {
        Recording {
            core,
            touched: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, r: Result<FileChange, VfsError>) -> Result<FileChange, VfsError> {
        if let Ok(c) = &r {
            let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            for p in std::iter::once(&c.path).chain(c.to.as_ref()) {
                if !t.contains(p) {
                    t.push(p.clone());
                }
            }
        }
        r
    }

    fn into_touched(self) -> Vec<String> {
        self.touched.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl FileSpace for Recording<'_> {
    fn max_file_bytes(&self) -> u64 {
        self.core.max_file_bytes()
    }
    fn read(&self, who: Caller<'_>, path: &str) -> Result<Vec<u8>, VfsError> {
        self.core.read(who, path)
    }
    fn list(&self, who: Caller<'_>, path: &str) -> Result<Vec<String>, VfsError> {
        self.core.list(who, path)
    }
    fn stat(&self, who: Caller<'_>, path: &str) -> Result<Stat, VfsError> {
        self.core.stat(who, path)
    }
    fn hash(&self, who: Caller<'_>, path: &str) -> Result<Sha256Digest, VfsError> {
        self.core.hash(who, path)
    }
    fn write(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        self.note(self.core.write(who, path, contents))
    }
    fn append(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        self.note(self.core.append(who, path, contents))
    }
    fn truncate(&self, who: Caller<'_>, path: &str, len: u64) -> Result<FileChange, VfsError> {
        self.note(self.core.truncate(who, path, len))
    }
    fn delete(&self, who: Caller<'_>, path: &str) -> Result<FileChange, VfsError> {
        self.note(self.core.delete(who, path))
    }
    fn rename(&self, who: Caller<'_>, src: &str, dst: &str) -> Result<FileChange, VfsError> {
        self.note(self.core.rename(who, src, dst))
    }
    fn create_dir(&self, who: Caller<'_>, path: &str) -> Result<Option<FileChange>, VfsError> {
        match self.core.create_dir(who, path)? {
            Some(c) => self.note(Ok(c)).map(Some),
            None => Ok(None),
        }
    }
    fn get_acl(&self, who: Caller<'_>, path: &str) -> Result<Acl, VfsError> {
        self.core.get_acl(who, path)
    }
    fn set_acl(&self, who: Caller<'_>, path: &str, acl: Acl) -> Result<FileChange, VfsError> {
        self.note(self.core.set_acl(who, path, acl))
    }
}

/// The most bytes of an ACL a `vfs.acl_changed` event carries.
pub const MAX_EVENT_ACL_BYTES: usize = 4096;

/// An ACL as its `vfs.acl_changed` event shows it: whole when it is at most
/// [`MAX_EVENT_ACL_BYTES`], else its start, its length and its SHA-256.
/// An ACL may list 1,000 agents of 256-byte ids per list: whole, every
/// change of one would put ~0.5 MB in the bus and the audit log.
fn event_acl(acl: &Acl) -> String {
    let full = acl.to_string();
    if full.len() <= MAX_EVENT_ACL_BYTES {
        return full;
    }
    let mut cut = MAX_EVENT_ACL_BYTES - 128;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}… ({} bytes in all, sha256 {})",
        &full[..cut],
        full.len(),
        hex::encode(crate::files::sha256(full.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::Access;

    /// An ACL's event shows a short ACL whole and a long one cut, with its
    /// length and hash: a guest cannot put ~0.5 MB in the bus and the
    /// audit log with each change of one.
    #[test]
    fn an_acl_event_carries_a_bounded_text() {
        let owner = AgentId::new("did:ex:owner").unwrap();
        let short = Acl {
            owner: owner.clone(),
            read: Access::Everyone,
            write: Access::Owner,
        };
        assert_eq!(event_acl(&short), short.to_string());
        let ids: Vec<AgentId> = (0..1000)
            .map(|i| AgentId::new(format!("did:ex:{i:04}-{}", "x".repeat(240))).unwrap())
            .collect();
        let long = Acl {
            owner,
            read: Access::Agents(ids.clone()),
            write: Access::Agents(ids),
        };
        let full = long.to_string();
        let text = event_acl(&long);
        assert!(full.len() > 400_000);
        assert!(text.len() <= MAX_EVENT_ACL_BYTES, "{}", text.len());
        assert!(text.contains(&format!("{} bytes in all", full.len())));
        assert!(text.contains(&hex::encode(crate::files::sha256(full.as_bytes()))));
        assert!(full.starts_with(text.split('…').next().unwrap()));
    }
}
