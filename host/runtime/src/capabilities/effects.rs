//! `effects`: host-registered non-reversible actions (effects on the world).
//! Each invocation is recorded in the call's change journal (with no undo:
//! a saga cannot compensate it) and, in a session, as an `effect.invoked` event.

use std::sync::Arc;

use ahv_core::Capability;
use ahv_governance::actions::{ActionContext, ActionRegistry};
use ahv_governance::files::FileSpace;
use ahv_governance::journal::Change;
use ahv_governance::session_core::SessionCore;
use wasmtime::component::Linker;

use super::{Has, View};
use crate::adapters::HostError;
use crate::bindings::agent_hypervisor::agent::effects;
use crate::state::{AgentState, Journal};

/// The registry, the files effects may work on, the session (whose bus gets
/// the events) if any, and the call's change journal.
pub(crate) struct Ctx {
    pub(crate) registry: Arc<ActionRegistry>,
    pub(crate) files: Arc<dyn FileSpace>,
    pub(crate) shared: Option<Arc<SessionCore>>,
    pub(crate) changes: Journal,
}

impl effects::Host for View<'_, Ctx> {
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
    effects::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &mut s.caps.effects,
        gate: &mut s.gate,
    })
}
