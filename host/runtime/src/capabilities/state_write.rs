//! `state-write`: compare-and-set writes to the session's shared state.
//! `put` is also linked over guest memory by [`crate::bulk`], which calls
//! [`Handles::state_put`]. Every write that goes through is recorded, with its undo
//! data, in the call's change journal.

use ahv_core::Capability;
use ahv_governance::files::Caller;
use ahv_governance::journal::Change;
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
        let change =
            session_core(&self.shared, "state put")?.state_put(caller, key, value, expected)?;
        let version = change.version;
        self.changes.record(Change::State(change));
        Ok(version)
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
        let change = session_core(&self.ctx.shared, "state delete")?.state_delete(
            self.gate.caller(ring),
            &key,
            expected,
        )?;
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
