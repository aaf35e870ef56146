//! `effects`: host-registered non-reversible actions (effects on the world).
//! Each invocation is recorded in the call's change journal (with no undo:
//! a saga cannot compensate it) and, in a session, as an `effect.invoked` event.

use ahv_core::Capability;
use ahv_governance::actions::ActionContext;
use ahv_governance::journal::Change;
use wasmtime::component::Linker;

use super::{Handles, Has, View};
use crate::adapters::HostError;
use crate::bindings::agent_hypervisor::agent::effects;
use crate::state::AgentState;

impl effects::Host for View<'_, Handles> {
    fn invoke(&mut self, name: String, args: String) -> Result<String, HostError> {
        let ring = self.gate.admit(Capability::Effects, "invoke")?;
        let caller = self.gate.caller(ring);
        let (output, touched) = match &self.ctx.shared {
            Some(core) => {
                let done = core.invoke_effect(caller, &self.ctx.registry, &name, &args)?;
                (done.output, done.touched)
            }
            None => {
                let ctx = ActionContext {
                    agent: caller.agent,
                    ring,
                    trace: caller.trace,
                    files: &*self.ctx.files,
                };
                (
                    self.ctx.registry.invoke_effect(ctx, &name, &args)?,
                    Vec::new(),
                )
            }
        };
        self.ctx.changes.record(Change::Effect { name, touched });
        Ok(output)
    }

    fn available(&mut self) -> Result<Vec<String>, HostError> {
        self.gate.admit(Capability::Effects, "available")?;
        Ok(self.ctx.registry.effect_names())
    }
}

/// Links `effects`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    effects::add_to_linker::<_, Has<Handles>>(l, |s| View {
        ctx: &s.caps.handles,
        gate: &mut s.gate,
    })
}
