//! `context`: who am I — identity, ring and trace id of the caller.

use ahv_core::Capability;
use wasmtime::component::Linker;

use super::{Has, View};
use crate::bindings::agent_hypervisor::agent::context;
use crate::state::AgentState;

/// `context` needs nothing beyond the gate (which knows the caller).
#[derive(Debug, Default)]
pub(crate) struct Ctx;

impl context::Host for View<'_, Ctx> {
    fn whoami(&mut self) -> wasmtime::Result<context::AgentInfo> {
        let ring = self.gate.admit_free(Capability::Context, "whoami")?;
        Ok(context::AgentInfo {
            agent_id: self.gate.agent.to_string(),
            session_id: self.gate.session.to_string(),
            ring: ring.number(),
            trace_id: self.gate.trace.to_string(),
        })
    }

    fn current_ring(&mut self) -> wasmtime::Result<u8> {
        Ok(self
            .gate
            .admit_free(Capability::Context, "current-ring")?
            .number())
    }
}

/// Links `context`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    context::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &s.caps.context,
        gate: &mut s.gate,
    })
}
