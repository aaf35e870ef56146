//! Capability adapters: the host side of each WIT interface.
//!
//! Each function is the same three steps: the call-time ring check (a failed
//! check records a breach and traps), a call into the domain type in
//! `ahv-governance`, and a conversion of its result. Refusals become WIT
//! `error` values through [`HostError`]; nothing here panics on guest input.

use std::time::{Duration, Instant};

use ahv_core::{AgentId, Capability};
use ahv_governance::actions::{ActionContext, ActionError};
use ahv_governance::files::{Access, Acl};
use ahv_governance::locks::{LockError, LockMode};
use ahv_governance::session_core::{LockTarget, SessionCore};
use ahv_governance::state::StateError;
use ahv_governance::vfs::{EntryKind, VfsError};

use crate::bindings::WitError;
use crate::bindings::agent_hypervisor::agent::{
    actions, context, effects, locks, log, state_read, state_write, types, vfs_read, vfs_write,
};
use crate::state::{AgentState, LogLevel, LogSource};

/// What a governed host function returns on failure: a refusal the guest sees
/// as a WIT `error`, or a trap (breach, host failure) that aborts it.
#[derive(Debug)]
pub enum HostError {
    /// An in-ring refusal: returned to the guest as a value.
    Refused(WitError),
    /// A trap: the guest is aborted with this error.
    Trap(wasmtime::Error),
}

impl From<wasmtime::Error> for HostError {
    fn from(e: wasmtime::Error) -> Self {
        HostError::Trap(e)
    }
}

impl From<VfsError> for HostError {
    fn from(e: VfsError) -> Self {
        let msg = e.to_string();
        HostError::Refused(match e {
            VfsError::InvalidPath(_) => WitError::InvalidPath(msg),
            VfsError::NotFound { .. } => WitError::NotFound(msg),
            VfsError::AlreadyExists { .. } => WitError::AlreadyExists(msg),
            VfsError::Denied { .. } => WitError::Denied(msg),
            VfsError::Quota { .. } => WitError::Quota(msg),
            VfsError::Conflict { .. } => WitError::Conflict(msg),
            VfsError::Io { .. } => WitError::Io(msg),
        })
    }
}

impl From<StateError> for HostError {
    fn from(e: StateError) -> Self {
        let msg = e.to_string();
        HostError::Refused(match e {
            StateError::InvalidKey { .. } => WitError::InvalidKey(msg),
            StateError::Conflict { .. } | StateError::Stale { .. } => WitError::Conflict(msg),
            StateError::Quota { .. } => WitError::Quota(msg),
            StateError::LockRequired { .. } => WitError::Denied(msg),
        })
    }
}

impl From<LockError> for HostError {
    fn from(e: LockError) -> Self {
        let msg = e.to_string();
        HostError::Refused(match e {
            LockError::Conflict { .. } => WitError::Conflict(msg),
            LockError::Deadlock { .. } => WitError::Deadlock(msg),
            LockError::Timeout { .. } => WitError::Timeout(msg),
            LockError::NotHeld { .. } => WitError::NotFound(msg),
            LockError::TooMany { .. } => WitError::Quota(msg),
            LockError::InvalidResource { .. } => WitError::InvalidKey(msg),
        })
    }
}

/// Outside a shared session there is no shared state and nothing to lock.
fn no_session(what: &str) -> HostError {
    HostError::Refused(WitError::Denied(format!(
        "{what}: this agent runs outside a shared session"
    )))
}

fn wit_access(a: Access) -> types::Access {
    match a {
        Access::Everyone => types::Access::Everyone,
        Access::Owner => types::Access::Owner,
        Access::Agents(list) => {
            types::Access::Agents(list.into_iter().map(|a| a.to_string()).collect())
        }
    }
}

fn domain_access(a: types::Access) -> Result<Access, HostError> {
    Ok(match a {
        types::Access::Everyone => Access::Everyone,
        types::Access::Owner => Access::Owner,
        types::Access::Agents(list) => Access::Agents(
            list.into_iter()
                .map(|id| {
                    AgentId::new(id)
                        .map_err(|e| HostError::Refused(WitError::Denied(format!("acl: {e}"))))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn wit_mode(m: LockMode) -> locks::LockMode {
    match m {
        LockMode::Read => locks::LockMode::Read,
        LockMode::Write => locks::LockMode::Write,
        LockMode::Exclusive => locks::LockMode::Exclusive,
    }
}

fn target(t: locks::LockTarget) -> LockTarget {
    match t {
        locks::LockTarget::Path(p) => LockTarget::Path(p),
        locks::LockTarget::Key(k) => LockTarget::Key(k),
    }
}

impl AgentState {
    fn session_core(&self, what: &str) -> Result<&SessionCore, HostError> {
        self.shared.as_deref().ok_or_else(|| no_session(what))
    }
}

impl From<ActionError> for HostError {
    fn from(e: ActionError) -> Self {
        let msg = e.to_string();
        match e {
            ActionError::Vfs { source, .. } => HostError::from(source),
            ActionError::Unknown { .. } => HostError::Refused(WitError::UnknownAction(msg)),
            ActionError::InvalidArgs { .. } | ActionError::Failed { .. } => {
                HostError::Refused(WitError::ActionFailed(msg))
            }
            // Registration errors cannot come out of an invocation.
            ActionError::BadName(_) | ActionError::Duplicate { .. } => HostError::Trap(
                wasmtime::format_err!("unexpected action registry error: {msg}"),
            ),
        }
    }
}

impl types::Host for AgentState {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<WitError> {
        match err {
            HostError::Refused(e) => Ok(e),
            HostError::Trap(e) => Err(e),
        }
    }
}

impl context::Host for AgentState {
    fn whoami(&mut self) -> wasmtime::Result<context::AgentInfo> {
        self.check(Capability::Context, "whoami")?;
        Ok(context::AgentInfo {
            agent_id: self.agent.to_string(),
            session_id: self.session.to_string(),
            ring: self.ring.number(),
            trace_id: self.trace.to_string(),
        })
    }

    fn current_ring(&mut self) -> wasmtime::Result<u8> {
        self.check(Capability::Context, "current-ring")?;
        Ok(self.ring.number())
    }
}

impl log::Host for AgentState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.check(Capability::Log, "log")?;
        self.log_line(level, &message);
        Ok(())
    }
}

/// The adapters of the functions that take bulk guest data. The linker calls
/// them with the data still in guest memory (see `crate::bulk`), so sizes are
/// checked before anything is copied; the generated `Host` impls, which get
/// owned copies, call them too.
impl AgentState {
    /// `log.log`: keeps at most [`crate::state::MAX_LOG_LINE`] bytes of `message`.
    pub(crate) fn log_line(&self, level: log::Level, message: &str) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(level, LogSource::Log, message);
    }

    /// `vfs-write.write` and `vfs-write.append`.
    pub(crate) fn write_file(
        &self,
        path: &str,
        contents: &[u8],
        append: bool,
    ) -> Result<(), HostError> {
        if append {
            self.files.append(self.caller(), path, contents)?;
        } else {
            self.files.write(self.caller(), path, contents)?;
        }
        Ok(())
    }

    /// `state-write.put`.
    pub(crate) fn put_state(
        &self,
        key: &str,
        value: &[u8],
        expected: u64,
    ) -> Result<u64, HostError> {
        Ok(self
            .session_core("state put")?
            .state_put(self.caller(), key, value, expected)?)
    }
}

impl vfs_read::Host for AgentState {
    fn read(&mut self, path: String) -> Result<Vec<u8>, HostError> {
        self.check(Capability::VfsRead, "read")?;
        Ok(self.files.read(self.caller(), &path)?)
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<String>, HostError> {
        self.check(Capability::VfsRead, "list-dir")?;
        Ok(self.files.list(self.caller(), &path)?)
    }

    fn stat(&mut self, path: String) -> Result<vfs_read::EntryStat, HostError> {
        self.check(Capability::VfsRead, "stat")?;
        let s = self.files.stat(self.caller(), &path)?;
        let kind = match s.kind {
            EntryKind::File => vfs_read::EntryKind::File,
            EntryKind::Directory => vfs_read::EntryKind::Directory,
        };
        Ok(vfs_read::EntryStat { kind, size: s.size })
    }

    fn hash(&mut self, path: String) -> Result<String, HostError> {
        self.check(Capability::VfsRead, "hash")?;
        Ok(hex::encode(self.files.hash(self.caller(), &path)?))
    }

    fn get_acl(&mut self, path: String) -> Result<types::Acl, HostError> {
        self.check(Capability::VfsRead, "get-acl")?;
        let acl = self.files.get_acl(self.caller(), &path)?;
        Ok(types::Acl {
            owner: acl.owner.to_string(),
            read: wit_access(acl.read),
            write: wit_access(acl.write),
        })
    }
}

impl vfs_write::Host for AgentState {
    fn write(&mut self, path: String, contents: Vec<u8>) -> Result<(), HostError> {
        self.check(Capability::VfsWrite, "write")?;
        self.write_file(&path, &contents, false)
    }

    fn append(&mut self, path: String, contents: Vec<u8>) -> Result<(), HostError> {
        self.check(Capability::VfsWrite, "append")?;
        self.write_file(&path, &contents, true)
    }

    fn delete(&mut self, path: String) -> Result<(), HostError> {
        self.check(Capability::VfsWrite, "delete")?;
        self.files.delete(self.caller(), &path)?;
        Ok(())
    }

    fn rename(&mut self, src: String, dst: String) -> Result<(), HostError> {
        self.check(Capability::VfsWrite, "rename")?;
        self.files.rename(self.caller(), &src, &dst)?;
        Ok(())
    }

    fn create_dir(&mut self, path: String) -> Result<(), HostError> {
        self.check(Capability::VfsWrite, "create-dir")?;
        self.files.create_dir(self.caller(), &path)?;
        Ok(())
    }

    fn set_acl(&mut self, path: String, acl: types::Acl) -> Result<(), HostError> {
        self.check(Capability::VfsWrite, "set-acl")?;
        let owner = AgentId::new(acl.owner)
            .map_err(|e| HostError::Refused(WitError::Denied(format!("acl owner: {e}"))))?;
        let acl = Acl {
            owner,
            read: domain_access(acl.read)?,
            write: domain_access(acl.write)?,
        };
        self.files.set_acl(self.caller(), &path, acl)?;
        Ok(())
    }
}

impl state_read::Host for AgentState {
    fn get(&mut self, key: String) -> Result<Option<state_read::Versioned>, HostError> {
        self.check(Capability::StateRead, "get")?;
        let v = self
            .session_core("state get")?
            .state_get(self.caller(), &key)?;
        Ok(v.map(|v| state_read::Versioned {
            value: v.value,
            version: v.version,
            clock: v
                .clock
                .entries()
                .map(|(agent, counter)| state_read::ClockEntry {
                    agent: agent.to_string(),
                    counter,
                })
                .collect(),
            writer: v.writer.to_string(),
        }))
    }

    fn keys(&mut self, prefix: String) -> Result<Vec<String>, HostError> {
        self.check(Capability::StateRead, "keys")?;
        Ok(self
            .session_core("state keys")?
            .state_keys(self.caller(), &prefix)?)
    }
}

impl state_write::Host for AgentState {
    fn put(&mut self, key: String, value: Vec<u8>, expected: u64) -> Result<u64, HostError> {
        self.check(Capability::StateWrite, "put")?;
        self.put_state(&key, &value, expected)
    }

    fn delete(&mut self, key: String, expected: u64) -> Result<(), HostError> {
        self.check(Capability::StateWrite, "delete")?;
        self.session_core("state delete")?
            .state_delete(self.caller(), &key, expected)?;
        Ok(())
    }
}

impl locks::Host for AgentState {
    async fn acquire(
        &mut self,
        t: locks::LockTarget,
        mode: locks::LockMode,
        wait_ms: u32,
    ) -> Result<(), HostError> {
        self.check(Capability::Locks, "acquire")?;
        let mode = match mode {
            locks::LockMode::Read => LockMode::Read,
            locks::LockMode::Write => LockMode::Write,
            locks::LockMode::Exclusive => LockMode::Exclusive,
        };
        // Never wait past the call's own deadline: the guest gets `timeout`
        // (a value it can handle) rather than a deadline trap.
        let left = self.call_deadline.saturating_duration_since(Instant::now());
        let wait = Duration::from_millis(u64::from(wait_ms)).min(left);
        let core = self.session_core("lock")?;
        let resource = core.lock_resource(self.caller(), &target(t))?;
        core.lock(self.caller(), &resource, mode, wait).await?;
        Ok(())
    }

    fn release(&mut self, t: locks::LockTarget) -> Result<(), HostError> {
        self.check(Capability::Locks, "release")?;
        let core = self.session_core("unlock")?;
        let resource = core.lock_resource(self.caller(), &target(t))?;
        core.unlock(self.caller(), &resource)?;
        Ok(())
    }

    fn held(&mut self) -> wasmtime::Result<Vec<(locks::LockTarget, locks::LockMode)>> {
        self.check(Capability::Locks, "held")?;
        Ok(match self.shared.as_deref() {
            Some(core) => core
                .held(&self.agent)
                .into_iter()
                .map(|(t, m)| {
                    let t = match t {
                        LockTarget::Path(p) => locks::LockTarget::Path(p),
                        LockTarget::Key(k) => locks::LockTarget::Key(k),
                    };
                    (t, wit_mode(m))
                })
                .collect(),
            None => Vec::new(),
        })
    }
}

impl actions::Host for AgentState {
    fn invoke(&mut self, name: String, args: String) -> Result<String, HostError> {
        self.check(Capability::Actions, "invoke")?;
        let ctx = ActionContext {
            agent: &self.agent,
            ring: self.ring,
            trace: self.trace,
            files: &*self.files,
        };
        let record = self.actions.invoke_reversible(ctx, &name, &args)?;
        let output = record.output.clone();
        self.undo_log.push(record);
        Ok(output)
    }

    fn available(&mut self) -> wasmtime::Result<Vec<String>> {
        self.check(Capability::Actions, "available")?;
        Ok(self.actions.reversible_names())
    }
}

impl effects::Host for AgentState {
    fn invoke(&mut self, name: String, args: String) -> Result<String, HostError> {
        self.check(Capability::Effects, "invoke")?;
        let ctx = ActionContext {
            agent: &self.agent,
            ring: self.ring,
            trace: self.trace,
            files: &*self.files,
        };
        Ok(self.actions.invoke_effect(ctx, &name, &args)?)
    }

    fn available(&mut self) -> wasmtime::Result<Vec<String>> {
        self.check(Capability::Effects, "available")?;
        Ok(self.actions.effect_names())
    }
}

#[cfg(test)]
mod tests {
    //! Capability adapters called directly, without Wasm.
    use super::*;
    use crate::state::{KillHandle, StateInit};
    use crate::trap::RingBreach;
    use ahv_core::{AgentId, Ring, RingPolicy, SessionId};
    use ahv_governance::actions::builtin;
    use ahv_governance::vfs::{Vfs, VfsLimits};
    use std::sync::{Arc, Mutex};

    fn state(ring: Ring) -> (tempfile::TempDir, AgentState, Arc<Mutex<Vec<RingBreach>>>) {
        let t = tempfile::tempdir().unwrap();
        let dir =
            cap_std::fs::Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let engine = wasmtime::Engine::default();
        let init = StateInit {
            agent: AgentId::new("did:test:a").unwrap(),
            session: SessionId::new("s1").unwrap(),
            ring,
            files: Arc::new(Vfs::new(dir, VfsLimits::default())),
            shared: None,
            actions: Arc::new(builtin::registry()),
            kill: KillHandle::new(engine),
            breach_recorder: Arc::new(move |b: &RingBreach| sink.lock().unwrap().push(b.clone())),
        };
        let s = AgentState::new(init, RingPolicy::default().limits(ring));
        (t, s, seen)
    }

    fn refused(r: Result<impl std::fmt::Debug, HostError>) -> WitError {
        match r {
            Err(HostError::Refused(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn trapped(r: Result<impl std::fmt::Debug, HostError>) -> RingBreach {
        match r {
            Err(HostError::Trap(e)) => e
                .downcast_ref::<RingBreach>()
                .expect("a RingBreach")
                .clone(),
            other => panic!("expected a trap, got {other:?}"),
        }
    }

    #[test]
    fn sandbox_reads_but_write_is_a_recorded_breach() {
        let (t, mut s, seen) = state(Ring::Sandbox);
        std::fs::write(t.path().join("f.txt"), b"data").unwrap();
        assert_eq!(
            vfs_read::Host::read(&mut s, "f.txt".into()).unwrap(),
            b"data"
        );
        let b = trapped(vfs_write::Host::write(
            &mut s,
            "g.txt".into(),
            b"x".to_vec(),
        ));
        assert_eq!(
            (b.capability, b.function.as_str(), b.ring),
            (Capability::VfsWrite, "write", Ring::Sandbox)
        );
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [b],
            "recorded exactly once, before the trap returned"
        );
        assert!(!t.path().join("g.txt").exists(), "nothing written");
        trapped(actions::Host::invoke(
            &mut s,
            "note.append".into(),
            "x".into(),
        ));
        assert!(effects::Host::available(&mut s).is_err());
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn in_ring_refusals_are_values_not_traps() {
        let (_t, mut s, seen) = state(Ring::Standard);
        assert!(matches!(
            refused(vfs_read::Host::read(&mut s, "../x".into())),
            WitError::InvalidPath(_)
        ));
        assert!(matches!(
            refused(vfs_read::Host::read(&mut s, "nope".into())),
            WitError::NotFound(_)
        ));
        assert!(matches!(
            refused(actions::Host::invoke(&mut s, "no.such".into(), "".into())),
            WitError::UnknownAction(_)
        ));
        assert!(matches!(
            refused(actions::Host::invoke(
                &mut s,
                "note.append".into(),
                "".into()
            )),
            WitError::ActionFailed(_)
        ));
        assert!(
            seen.lock().unwrap().is_empty(),
            "no breach for in-ring refusals"
        );
    }

    #[test]
    fn reversible_actions_leave_undo_records() {
        let (_t, mut s, _) = state(Ring::Standard);
        let out = actions::Host::invoke(&mut s, "note.append".into(), "hello".into()).unwrap();
        assert!(out.starts_with("appended"), "{out}");
        assert_eq!(s.undo_log.len(), 1);
        assert_eq!(s.undo_log[0].action, "note.append");
        assert_eq!(actions::Host::available(&mut s).unwrap(), ["note.append"]);
    }

    #[test]
    fn privileged_may_send_effects_and_context_reports_the_ring() {
        let (t, mut s, _) = state(Ring::Privileged);
        assert_eq!(
            effects::Host::invoke(&mut s, "notify.send".into(), "hi".into()).unwrap(),
            "notification #1 sent"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join(builtin::OUTBOX)).unwrap(),
            "did:test:a: hi\n"
        );
        assert_eq!(context::Host::current_ring(&mut s).unwrap(), 1);
        let me = context::Host::whoami(&mut s).unwrap();
        assert_eq!(
            (me.agent_id.as_str(), me.session_id.as_str(), me.ring),
            ("did:test:a", "s1", 1)
        );
    }
}
