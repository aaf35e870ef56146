//! What happens to an agent after a ring breach: the one place that asks
//! the breach detector and the breach policy (`ahv-security`) and applies
//! the consequence. The breach itself was recorded (event, audit delta)
//! before the trap, by the runtime's breach recorder.

use std::time::Duration;

use ahv_core::event::EventPayload;
use ahv_core::{AgentId, CapabilitySet};
use ahv_runtime::RingBreach;
use ahv_security::breach::{BreachAction, Consequence};

use crate::{AgentSlot, Hypervisor, SessionEntry, lock};

impl Hypervisor {
    /// Grades the breach (sliding window, severity, breaker) and applies
    /// the policy of the agent's base ring: restart the instance, expel,
    /// re-admit at a less privileged ring, quarantine, or kill.
    pub(crate) async fn after_breach(
        &self,
        entry: &SessionEntry,
        slot: &AgentSlot,
        agent: &AgentId,
        breach: &RingBreach,
    ) {
        let security = &self.inner.security;
        let session = entry.core.id();
        // The agent's slot now, or not: it left (or left and joined again,
        // with a new slot), or its session ended (`finish` drains the
        // slots). A breach of a participation that is over is still the
        // agent's fault in the ledger, but it is not counted in a window
        // or acted on: those would fall on nobody, or on the new
        // participation. It is graded as a first breach (or as recorded,
        // if the participation ended while it was being judged).
        //
        // What follows acts by the agent's id (the detector's record, the
        // expulsion, the demotion), yet cannot reach a new participation:
        // every caller holds `slot`, and a removed slot counts its agent as
        // leaving until its last holder drops it (`AgentSlot::leaving`), so
        // `join_as` refuses the agent (`StillLeaving`) until this is over.
        let current = || {
            lock(&entry.agents)
                .get(agent)
                .is_some_and(|s| std::ptr::eq(&**s, slot))
        };
        let needed = [breach.capability].into_iter().collect::<CapabilitySet>();
        let target = self
            .inner
            .runtime
            .policy()
            .lowest_ring_covering(needed)
            .unwrap_or(ahv_core::Ring::Root);
        if !current() {
            let alone = security.detector.assess_alone(breach.ring, target);
            self.breach_booked(entry, agent, alone.severity.name());
            return;
        }
        let assessment = security
            .detector
            .record(agent, session, breach.ring, target);
        // The participation ended between the check above and the record:
        // the record is not kept. (`remove` and `finish` take the slot out
        // before they forget, so either they see this record or this sees
        // them; checked before any await, which a cancelled caller would
        // never pass.)
        if !current() {
            // Only the record this made: the rate buckets are not touched
            // here (and may be a rejoined participation's by now).
            security.detector.remove(agent, session);
            self.breach_booked(entry, agent, assessment.severity.name());
            return;
        }
        let base = lock(&entry.standings)
            .get(agent)
            .map_or(breach.ring, |s| s.base());
        let consequence = security.breach.decide(base, &assessment);
        let mut op = self.op_in(breach.trace);
        // Whatever the consequence, the agent may not ask for an elevation
        // for a while: a breach is the host taking privilege away.
        if let Some(standing) = lock(&entry.standings).get(agent) {
            standing.block_elevation(self.elevation_cooldown());
        }
        self.breach_booked(entry, agent, assessment.severity.name());
        if assessment.tripped {
            let action = match &consequence {
                Consequence::Restart => "restart".to_string(),
                Consequence::Apply(a) => action_name(a),
            };
            self.emit(
                &mut op,
                session,
                Some(agent),
                EventPayload::SecurityBreakerTripped {
                    severity: assessment.severity.name().to_string(),
                    calls: assessment.calls_in_window as u64,
                    action,
                },
            );
        }
        let reason = format!(
            "ring breach of {}/{} from {}",
            breach.capability, breach.function, breach.ring
        );
        match consequence {
            Consequence::Restart => {
                slot.agent.lock().await.reinstate();
            }
            Consequence::Apply(BreachAction::Expel) => {
                self.remove(&mut op, entry, agent, &format!("expelled: {reason}"));
            }
            Consequence::Apply(BreachAction::Readmit { ring }) => {
                match self.demote(session, agent, ring, &format!("re-admitted after {reason}")) {
                    Ok(_) => {
                        slot.agent.lock().await.reinstate();
                    }
                    Err(_) => {
                        self.remove(&mut op, entry, agent, &format!("expelled: {reason}"));
                    }
                }
            }
            Consequence::Apply(BreachAction::Quarantine { secs }) => {
                let quarantined = self.quarantine(
                    session,
                    agent,
                    ahv_trust::QuarantineReason::RingBreach,
                    &reason,
                    Some(Duration::from_secs(secs)),
                );
                if quarantined.is_ok() {
                    slot.agent.lock().await.reinstate();
                } else {
                    self.remove(&mut op, entry, agent, &format!("expelled: {reason}"));
                }
            }
            Consequence::Apply(BreachAction::Kill) => {
                let _ = self.kill_agent(session, agent, &format!("ring_breach: {reason}"));
            }
        }
    }
}

fn action_name(a: &BreachAction) -> String {
    match a {
        BreachAction::Expel => "expel".into(),
        BreachAction::Readmit { ring } => format!("readmit at ring {}", ring.number()),
        BreachAction::Quarantine { secs } => format!("quarantine {secs}s"),
        BreachAction::Kill => "kill".into(),
    }
}
