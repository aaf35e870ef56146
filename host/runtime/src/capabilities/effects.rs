//! `effects`: host-registered non-reversible actions (effects on the world).

use std::sync::Arc;

use ahv_core::Capability;
use ahv_governance::actions::{ActionContext, ActionRegistry};
use ahv_governance::files::FileSpace;
use wasmtime::component::Linker;

use super::{Has, View};
use crate::adapters::HostError;
use crate::bindings::agent_hypervisor::agent::effects;
use crate::state::AgentState;

/// The registry and the files effects may work on.
pub(crate) struct Ctx {
    pub(crate) registry: Arc<ActionRegistry>,
    pub(crate) files: Arc<dyn FileSpace>,
}

impl effects::Host for View<'_, Ctx> {
    fn invoke(&mut self, name: String, args: String) -> Result<String, HostError> {
        let ring = self.gate.admit(Capability::Effects, "invoke")?;
        let ctx = ActionContext {
            agent: &self.gate.agent,
            ring,
            trace: self.gate.trace,
            files: &*self.ctx.files,
        };
        Ok(self.ctx.registry.invoke_effect(ctx, &name, &args)?)
    }

    fn available(&mut self) -> Result<Vec<String>, HostError> {
        self.gate.admit(Capability::Effects, "available")?;
        Ok(self.ctx.registry.effect_names())
    }
}

/// Links `effects`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    effects::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &mut s.caps.effects,
        gate: &mut s.gate,
    })
}
