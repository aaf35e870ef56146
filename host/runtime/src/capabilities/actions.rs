//! `actions`: host-registered reversible actions; each invocation leaves an
//! undo record the host keeps (for saga compensation).

use std::sync::Arc;

use ahv_core::Capability;
use ahv_governance::actions::{ActionContext, ActionRegistry, UndoRecord};
use ahv_governance::files::FileSpace;
use wasmtime::component::Linker;

use super::{Has, View};
use crate::adapters::HostError;
use crate::bindings::agent_hypervisor::agent::actions;
use crate::state::AgentState;

/// The registry, the files actions work on, and the undo records of the current call.
pub(crate) struct Ctx {
    pub(crate) registry: Arc<ActionRegistry>,
    pub(crate) files: Arc<dyn FileSpace>,
    pub(crate) undo_log: Vec<UndoRecord>,
}

impl actions::Host for View<'_, Ctx> {
    fn invoke(&mut self, name: String, args: String) -> Result<String, HostError> {
        let ring = self.gate.admit(Capability::Actions, "invoke")?;
        let ctx = ActionContext {
            agent: &self.gate.agent,
            ring,
            trace: self.gate.trace,
            files: &*self.ctx.files,
        };
        let record = self.ctx.registry.invoke_reversible(ctx, &name, &args)?;
        let output = record.output.clone();
        self.ctx.undo_log.push(record);
        Ok(output)
    }

    fn available(&mut self) -> Result<Vec<String>, HostError> {
        self.gate.admit(Capability::Actions, "available")?;
        Ok(self.ctx.registry.reversible_names())
    }
}

/// Links `actions`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    actions::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &mut s.caps.actions,
        gate: &mut s.gate,
    })
}
