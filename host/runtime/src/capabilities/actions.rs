//! `actions`: host-registered reversible actions; each invocation is
//! recorded, with its undo record, in the call's change journal (for saga
//! compensation) and, in a session, as an `action.invoked` event.

use std::sync::Arc;

use ahv_core::Capability;
use ahv_governance::actions::{ActionContext, ActionRegistry};
use ahv_governance::files::FileSpace;
use ahv_governance::journal::Change;
use ahv_governance::session_core::SessionCore;
use wasmtime::component::Linker;

use super::{Has, View};
use crate::adapters::HostError;
use crate::bindings::agent_hypervisor::agent::actions;
use crate::state::{AgentState, Journal};

/// The registry, the files actions work on, the session (whose bus gets the
/// events) if any, and the call's change journal.
pub(crate) struct Ctx {
    pub(crate) registry: Arc<ActionRegistry>,
    pub(crate) files: Arc<dyn FileSpace>,
    pub(crate) shared: Option<Arc<SessionCore>>,
    pub(crate) changes: Journal,
}

impl actions::Host for View<'_, Ctx> {
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
    actions::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &mut s.caps.actions,
        gate: &mut s.gate,
    })
}
