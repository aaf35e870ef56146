//! `state-write`: compare-and-set writes to the session's shared state.
//! `put` is also linked over guest memory by [`crate::bulk`], which calls
//! [`Handles::state_put`]. Every write that goes through is recorded, with its undo
//! data, in the call's change journal.

use ahv_core::Capability;
use ahv_governance::files::Caller;
use ahv_governance::journal::Change;
use ahv_governance::session_core::SessionCore;
use ahv_governance::state::StateError;
use wasmtime::component::Linker;

use super::{Handles, Has, View};
use crate::adapters::{HostError, session_core};
use crate::bindings::agent_hypervisor::agent::state_write;
use crate::state::AgentState;

impl Handles {
    /// `put`, on a borrowed value.
    pub(crate) fn state_put(
        &self,
        caller: Caller<'_>,
        key: &str,
        value: &[u8],
        expected: u64,
    ) -> Result<u64, HostError> {
        let core = session_core(&self.shared, "state put")?;
        self.undo_room(core, key)?;
        let change = core.state_put(caller, key, value, expected)?;
        let version = change.version;
        self.changes.record(Change::State(change));
        Ok(version)
    }

    /// Refuses a state write once the call's journal holds as many bytes
    /// of keys and previous values as the session's state store may hold
    /// at once: what a call keeps to undo its writes is bounded like the
    /// store itself, however many keys it overwrites (a key written again
    /// keeps its first previous value only, [`ChangeJournal`]). The write
    /// that crosses the bound goes through, so a call holds at most the
    /// bound plus one value.
    ///
    /// [`ChangeJournal`]: ahv_governance::journal::ChangeJournal
    fn undo_room(&self, core: &SessionCore, key: &str) -> Result<(), HostError> {
        let limit = core.state().limits().max_total_bytes;
        let held = self.changes.state_bytes();
        if held < limit {
            return Ok(());
        }
        Err(StateError::Quota {
            key: key.chars().take(64).collect(),
            reason: format!(
                "this call already keeps {held} bytes of the values its writes replaced, to undo them; one call may keep at most {limit} (the state store's own size): end the call, or write fewer keys in it"
            ),
        }
        .into())
    }
}

impl state_write::Host for View<'_, Handles> {
    fn put(&mut self, key: String, value: Vec<u8>, expected: u64) -> Result<u64, HostError> {
        let ring = self.gate.admit(Capability::StateWrite, "put")?;
        self.ctx
            .state_put(self.gate.caller(ring), &key, &value, expected)
    }

    fn delete(&mut self, key: String, expected: u64) -> Result<(), HostError> {
        let ring = self.gate.admit(Capability::StateWrite, "delete")?;
        let core = session_core(&self.ctx.shared, "state delete")?;
        self.ctx.undo_room(core, &key)?;
        let change = core.state_delete(self.gate.caller(ring), &key, expected)?;
        self.ctx.changes.record(Change::State(change));
        Ok(())
    }
}

/// Links `state-write`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    state_write::add_to_linker::<_, Has<Handles>>(l, |s| View {
        ctx: &s.caps.handles,
        gate: &mut s.gate,
    })
}
