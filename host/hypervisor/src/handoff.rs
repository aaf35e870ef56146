//! The kill switch's hand-off (SEMANTICS "Security: kill switch"): a killed
//! agent's in-flight saga steps are re-executed by a registered substitute
//! in its own sandbox, or, without one, fail so that their saga compensates.
//!
//! The hypervisor tracks which saga steps run in which agent right now
//! ([`InFlight`]). A kill reads that list to say what becomes of each step
//! ([`KillReport`]); the saga runner, seeing its call trapped by the kill,
//! undoes the attempt's partial changes and runs the step again in the
//! substitute (`security.saga_handoff`), whose commit then stands for the
//! step. Later steps of the killed agent go to the substitute too, and so
//! does running a committed step's own compensation.

use std::sync::Arc;

use ahv_core::event::EventPayload;
use ahv_core::{AgentId, SessionId};
use ahv_governance::session::SessionError;
use ahv_saga::{SagaId, StepDef};

use crate::{AgentSlot, Hypervisor, HypervisorError, SessionEntry, lock};

/// Saga steps running in the agents of a session now: (agent, saga,
/// step). A list: a session runs few steps at once (one per fan-out
/// branch at most), and starting or ending a step then costs reference
/// counts, not a map entry and copies of its ids.
pub(crate) type InFlight = Vec<(AgentId, SagaId, Arc<StepDef>)>;

/// One in-flight saga step at the time of a kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilledStep {
    /// The saga.
    pub saga: String,
    /// The step.
    pub step: String,
    /// The agent it was running in.
    pub agent: AgentId,
}

/// What a kill did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillReport {
    /// The agents stopped and removed: the one named and its children.
    pub terminated: Vec<AgentId>,
    /// In-flight steps handed to a substitute, with the substitute.
    pub handed_off: Vec<(KilledStep, AgentId)>,
    /// In-flight steps without a substitute: they fail, and their saga
    /// compensates what it committed.
    pub compensated: Vec<KilledStep>,
}

/// Removes its (saga, step) from the in-flight list when the call ends.
pub(crate) struct Running {
    entry: Arc<SessionEntry>,
    agent: AgentId,
    saga: SagaId,
    step: Arc<StepDef>,
}

impl Running {
    pub(crate) fn start(
        entry: &Arc<SessionEntry>,
        agent: &AgentId,
        saga: &SagaId,
        step: &Arc<StepDef>,
    ) -> Running {
        let running = Running {
            entry: entry.clone(),
            agent: agent.clone(),
            saga: saga.clone(),
            step: step.clone(),
        };
        lock(&entry.in_flight).push((agent.clone(), saga.clone(), step.clone()));
        running
    }

    fn is(&self, (agent, saga, step): &(AgentId, SagaId, Arc<StepDef>)) -> bool {
        Arc::ptr_eq(step, &self.step) && *agent == self.agent && *saga == self.saga
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut list = lock(&self.entry.in_flight);
        if let Some(at) = list.iter().position(|e| self.is(e)) {
            list.swap_remove(at);
        }
    }
}

impl Hypervisor {
    /// Registers `substitute` to take over `agent`'s saga steps in `session`
    /// if `agent` is killed (or leaves): the step it was running is run
    /// again, from the start, in the substitute's sandbox, and so are its
    /// later steps and its steps' compensations. Both must be participants;
    /// registering again replaces the substitute.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`]
    /// for either; [`HypervisorError::Liability`] if they are the same agent.
    pub fn register_substitute(
        &self,
        session: &SessionId,
        agent: &AgentId,
        substitute: &AgentId,
    ) -> Result<(), HypervisorError> {
        let entry = self.entry(session)?;
        if agent == substitute {
            return Err(HypervisorError::Liability(format!(
                "agent {agent} cannot be its own substitute"
            )));
        }
        {
            let gov = lock(&entry.gov);
            for a in [agent, substitute] {
                if gov.participant(a).is_none() {
                    return Err(SessionError::NotAParticipant {
                        session: session.clone(),
                        agent: a.clone(),
                    }
                    .into());
                }
            }
        }
        lock(&entry.substitutes).insert(agent.clone(), substitute.clone());
        Ok(())
    }

    /// `agent`'s registered substitute in `session`, if any.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`].
    pub fn substitute_of(
        &self,
        session: &SessionId,
        agent: &AgentId,
    ) -> Result<Option<AgentId>, HypervisorError> {
        let entry = self.entry(session)?;
        Ok(lock(&entry.substitutes).get(agent).cloned())
    }

    /// The live instance of `agent`'s substitute (not itself killed or
    /// quarantined), if one is registered.
    pub(crate) fn substitute_slot(
        &self,
        entry: &SessionEntry,
        agent: &AgentId,
    ) -> Option<(AgentId, Arc<AgentSlot>)> {
        let sub = lock(&entry.substitutes).get(agent).cloned()?;
        let usable = lock(&entry.standings)
            .get(&sub)
            .is_some_and(|s| !s.is_killed() && !s.is_quarantined());
        if !usable {
            return None;
        }
        let slot = lock(&entry.agents).get(&sub).cloned()?;
        Some((sub, slot))
    }

    /// Emits `security.saga_handoff` for `step` of `saga`, from `agent` to `substitute`.
    pub(crate) fn report_handoff(
        &self,
        session: &SessionId,
        agent: &AgentId,
        saga: &str,
        step: &str,
        substitute: &AgentId,
    ) {
        self.emit(
            &mut self.op(),
            session,
            Some(agent),
            EventPayload::SecuritySagaHandoff {
                saga: saga.to_string(),
                step: step.to_string(),
                substitute: substitute.clone(),
            },
        );
    }

    /// What a kill of `agent` will do to its in-flight steps (read before
    /// the kill, so the list is the one the kill interrupts).
    pub(crate) fn kill_plan(&self, entry: &SessionEntry, agent: &AgentId, report: &mut KillReport) {
        let mut steps: Vec<(String, String)> = lock(&entry.in_flight)
            .iter()
            .filter(|(a, _, _)| a == agent)
            .map(|(_, saga, step)| (saga.to_string(), step.id.clone()))
            .collect();
        // In (saga, step) order, once each.
        steps.sort_unstable();
        steps.dedup();
        let sub = self.substitute_slot(entry, agent).map(|(s, _)| s);
        for (saga, step) in steps {
            let killed = KilledStep {
                saga,
                step,
                agent: agent.clone(),
            };
            match &sub {
                Some(s) => report.handed_off.push((killed, s.clone())),
                None => report.compensated.push(killed),
            }
        }
    }
}
