//! `locks`: intent locks on shared paths and state keys. `acquire` may wait
//! for another agent, so it is async: the wait yields the thread and never
//! outlives the call's deadline or its kill switch.

use std::time::{Duration, Instant};

use ahv_core::Capability;
use ahv_governance::locks::LockMode;
use ahv_governance::session_core::LockTarget;
use wasmtime::component::Linker;

use super::{Handles, Has, View};
use crate::adapters::{HostError, session_core};
use crate::bindings::agent_hypervisor::agent::locks;
use crate::state::AgentState;

fn wit_mode(m: LockMode) -> locks::LockMode {
    match m {
        LockMode::Read => locks::LockMode::Read,
        LockMode::Write => locks::LockMode::Write,
        LockMode::Exclusive => locks::LockMode::Exclusive,
    }
}

fn target(t: locks::LockTarget) -> LockTarget {
    match t {
        locks::LockTarget::Path(p) => LockTarget::Path(p),
        locks::LockTarget::Key(k) => LockTarget::Key(k),
    }
}

impl locks::Host for View<'_, Handles> {
    async fn acquire(
        &mut self,
        t: locks::LockTarget,
        mode: locks::LockMode,
        wait_ms: u32,
    ) -> Result<(), HostError> {
        let ring = self.gate.admit(Capability::Locks, "acquire")?;
        let mode = match mode {
            locks::LockMode::Read => LockMode::Read,
            locks::LockMode::Write => LockMode::Write,
            locks::LockMode::Exclusive => LockMode::Exclusive,
        };
        // Never wait past the call's own deadline: the guest gets `timeout`
        // (a value it can handle) rather than a deadline trap.
        let left = self
            .gate
            .call_deadline
            .saturating_duration_since(Instant::now());
        let wait = Duration::from_millis(u64::from(wait_ms)).min(left);
        let core = session_core(&self.ctx.shared, "lock")?;
        let caller = self.gate.caller(ring);
        let resource = core.lock_resource(caller, &target(t))?;
        core.lock(caller, &resource, mode, wait).await?;
        Ok(())
    }

    fn release(&mut self, t: locks::LockTarget) -> Result<(), HostError> {
        let ring = self.gate.admit(Capability::Locks, "release")?;
        let core = session_core(&self.ctx.shared, "unlock")?;
        let caller = self.gate.caller(ring);
        let resource = core.lock_resource(caller, &target(t))?;
        core.unlock(caller, &resource)?;
        Ok(())
    }

    fn held(&mut self) -> Result<Vec<(locks::LockTarget, locks::LockMode)>, HostError> {
        self.gate.admit(Capability::Locks, "held")?;
        Ok(match self.ctx.shared.as_deref() {
            Some(core) => core
                .held(&self.gate.agent)
                .into_iter()
                .map(|(t, m)| {
                    let t = match t {
                        LockTarget::Path(p) => locks::LockTarget::Path(p),
                        LockTarget::Key(k) => locks::LockTarget::Key(k),
                    };
                    (t, wit_mode(m))
                })
                .collect(),
            None => Vec::new(),
        })
    }
}

/// Links `locks`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    locks::add_to_linker::<_, Has<Handles>>(l, |s| View {
        ctx: &s.caps.handles,
        gate: &mut s.gate,
    })
}
