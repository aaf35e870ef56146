//! `admin` (ring 0): kill, quarantine, release and inspect the other agents
//! of the caller's session, through the [`crate::gate::Governor`] — the same
//! operations, rules and audit as the host API.

use std::sync::Arc;
use std::time::Duration;

use ahv_core::{Capability, RingPolicy};
use wasmtime::component::Linker;

use super::{Has, View};
use crate::adapters::HostError;
use crate::bindings::WitError;
use crate::bindings::agent_hypervisor::agent::admin;
use crate::gate::{AdminOp, ParticipantView};
use crate::state::AgentState;

/// The ring table, to report each participant's budgets (the runtime's,
/// shared: it is 416 bytes, and every store has a context).
pub(crate) struct Ctx {
    pub(crate) policy: Arc<RingPolicy>,
}

/// Longest agent id or reason accepted, in bytes.
const MAX_TEXT: usize = 1024;

fn check_text(what: &str, s: &str) -> Result<(), HostError> {
    if s.len() > MAX_TEXT {
        return Err(HostError::Refused(WitError::Quota(format!(
            "admin: the {what} has {} bytes; at most {MAX_TEXT}",
            s.len()
        ))));
    }
    Ok(())
}

impl Ctx {
    fn view(&self, p: ParticipantView) -> admin::Participant {
        let limits = self.policy.limits(p.effective_ring);
        admin::Participant {
            agent_id: p.agent.to_string(),
            base_ring: p.base_ring.number(),
            effective_ring: p.effective_ring.number(),
            quarantined: p.quarantined,
            fuel_per_call: limits.fuel_per_call,
            memory_bytes: limits.memory_bytes,
            deadline_ms: u64::try_from(limits.deadline.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl admin::Host for View<'_, Ctx> {
    fn participants(&mut self) -> Result<Vec<admin::Participant>, HostError> {
        let ring = self.gate.admit(Capability::Admin, "participants")?;
        let list = self
            .gate
            .governor
            .clone()
            .participants(self.gate.who(ring))?;
        Ok(list.into_iter().map(|p| self.ctx.view(p)).collect())
    }

    fn inspect(&mut self, agent: String) -> Result<admin::Participant, HostError> {
        let ring = self.gate.admit(Capability::Admin, "inspect")?;
        check_text("agent id", &agent)?;
        let list = self
            .gate
            .governor
            .clone()
            .participants(self.gate.who(ring))?;
        list.into_iter()
            .find(|p| p.agent.as_str() == agent)
            .map(|p| self.ctx.view(p))
            .ok_or_else(|| {
                HostError::Refused(WitError::NotFound(format!(
                    "admin: no participant {agent:?} in this session"
                )))
            })
    }

    fn kill(&mut self, agent: String, reason: String) -> Result<(), HostError> {
        let ring = self.gate.admit(Capability::Admin, "kill")?;
        check_text("agent id", &agent)?;
        check_text("reason", &reason)?;
        let op = AdminOp::Kill {
            agent: &agent,
            reason: &reason,
        };
        self.gate.governor.clone().admin(self.gate.who(ring), op)?;
        Ok(())
    }

    fn quarantine(&mut self, agent: String, reason: String, secs: u32) -> Result<(), HostError> {
        let ring = self.gate.admit(Capability::Admin, "quarantine")?;
        check_text("agent id", &agent)?;
        check_text("reason", &reason)?;
        let op = AdminOp::Quarantine {
            agent: &agent,
            reason: &reason,
            duration: (secs > 0).then(|| Duration::from_secs(u64::from(secs))),
        };
        self.gate.governor.clone().admin(self.gate.who(ring), op)?;
        Ok(())
    }

    fn release(&mut self, agent: String) -> Result<bool, HostError> {
        let ring = self.gate.admit(Capability::Admin, "release")?;
        check_text("agent id", &agent)?;
        let op = AdminOp::Release { agent: &agent };
        Ok(self.gate.governor.clone().admin(self.gate.who(ring), op)?)
    }
}

/// Links `admin`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    admin::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &s.caps.admin,
        gate: &mut s.gate,
    })
}
