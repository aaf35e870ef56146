//! `actions`: host-registered reversible actions; each invocation is
//! recorded, with its undo record, in the call's change journal (for saga
//! compensation) and, in a session, as an `action.invoked` event.

use ahv_core::Capability;
use ahv_governance::actions::ActionContext;
use ahv_governance::journal::Change;
use wasmtime::component::Linker;

use super::{Handles, Has, View};
use crate::adapters::HostError;
use crate::bindings::agent_hypervisor::agent::actions;
use crate::state::AgentState;

impl actions::Host for View<'_, Handles> {
    fn invoke(&mut self, name: String, args: String) -> Result<String, HostError> {
        let ring = self.gate.admit(Capability::Actions, "invoke")?;
        let caller = self.gate.caller(ring);
        let record = match &self.ctx.shared {
            Some(core) => core.invoke_action(caller, &self.ctx.registry, &name, &args)?,
            None => {
                let ctx = ActionContext {
                    agent: caller.agent,
                    ring,
                    trace: caller.trace,
                    files: &*self.ctx.files,
                };
                self.ctx.registry.invoke_reversible(ctx, &name, &args)?
            }
        };
        self.ctx.changes.record(Change::action(&record));
        Ok(record.output)
    }

    fn available(&mut self) -> Result<Vec<String>, HostError> {
        self.gate.admit(Capability::Actions, "available")?;
        Ok(self.ctx.registry.reversible_names())
    }
}

/// Links `actions`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    actions::add_to_linker::<_, Has<Handles>>(l, |s| View {
        ctx: &s.caps.handles,
        gate: &mut s.gate,
    })
}
