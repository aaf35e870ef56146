//! `state-read`: read the session's shared key-value state with versions.

use ahv_core::Capability;
use wasmtime::component::Linker;

use super::{Handles, Has, View};
use crate::adapters::{HostError, session_core};
use crate::bindings::agent_hypervisor::agent::state_read;
use crate::state::AgentState;

impl state_read::Host for View<'_, Handles> {
    fn get(&mut self, key: String) -> Result<Option<state_read::Versioned>, HostError> {
        let ring = self.gate.admit(Capability::StateRead, "get")?;
        let v =
            session_core(&self.ctx.shared, "state get")?.state_get(self.gate.caller(ring), &key)?;
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
        let ring = self.gate.admit(Capability::StateRead, "keys")?;
        Ok(session_core(&self.ctx.shared, "state keys")?
            .state_keys(self.gate.caller(ring), &prefix)?)
    }
}

/// Links `state-read`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    state_read::add_to_linker::<_, Has<Handles>>(l, |s| View {
        ctx: &s.caps.handles,
        gate: &mut s.gate,
    })
}
