//! Quarantine before termination (SEMANTICS.md "Liability"): an agent under
//! suspicion is held for a while (default 300 s) instead of being killed.
//! Quarantining it again while held escalates the same record, doubling the
//! hold each time up to [`MAX_QUARANTINE`]; expiry releases it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ahv_core::{AgentId, Clock};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How long a quarantine lasts unless told otherwise.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(300);
/// The longest one hold may be, escalated or not: 24 h from the moment it
/// is set (each escalation sets a new hold, so an agent escalated again and
/// again stays held longer in all). Past that a human or the kill switch
/// should decide, not a doubling timer.
pub const MAX_QUARANTINE: Duration = Duration::from_secs(24 * 60 * 60);
/// How many agents may be quarantined at once unless told otherwise.
pub const DEFAULT_MAX_RECORDS: usize = 10_000;

/// Why an agent was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineReason {
    /// Its behaviour drifted from its declared profile.
    BehavioralDrift,
    /// It broke a liability rule.
    LiabilityViolation,
    /// It called outside its ring.
    RingBreach,
    /// It exceeded its rate limit.
    RateLimitExceeded,
    /// An operator asked for it.
    Manual,
    /// A slash cascaded onto it.
    CascadeSlash,
}

impl QuarantineReason {
    /// Every reason, in declaration order.
    pub const ALL: [QuarantineReason; 6] = [
        QuarantineReason::BehavioralDrift,
        QuarantineReason::LiabilityViolation,
        QuarantineReason::RingBreach,
        QuarantineReason::RateLimitExceeded,
        QuarantineReason::Manual,
        QuarantineReason::CascadeSlash,
    ];

    /// The reason's wire name (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::BehavioralDrift => "behavioral_drift",
            QuarantineReason::LiabilityViolation => "liability_violation",
            QuarantineReason::RingBreach => "ring_breach",
            QuarantineReason::RateLimitExceeded => "rate_limit_exceeded",
            QuarantineReason::Manual => "manual",
            QuarantineReason::CascadeSlash => "cascade_slash",
        }
    }
}

impl fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quarantine reason's wire name was not one of [`QuarantineReason::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "unknown quarantine reason {name:?} (expected one of behavioral_drift, liability_violation, ring_breach, rate_limit_exceeded, manual, cascade_slash)"
)]
pub struct UnknownQuarantineReason {
    /// The text given (truncated to 64 characters).
    pub name: String,
}

impl FromStr for QuarantineReason {
    type Err = UnknownQuarantineReason;

    /// Parses a wire name exactly as [`QuarantineReason::as_str`] writes it.
    fn from_str(s: &str) -> Result<QuarantineReason, UnknownQuarantineReason> {
        QuarantineReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownQuarantineReason {
                name: s.chars().take(64).collect(),
            })
    }
}

/// One agent's quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    /// The agent held.
    pub agent: AgentId,
    /// Why it was first quarantined.
    pub reason: QuarantineReason,
    /// Why it was last quarantined (equals `reason` until an escalation).
    pub last_reason: QuarantineReason,
    /// When it was first quarantined (clock time).
    pub started_at: Duration,
    /// When the quarantine ends (clock time).
    pub ends_at: Duration,
    /// How many times it was escalated.
    pub escalations: u32,
}

/// Whether a quarantine call opened a record or escalated one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineOutcome {
    /// A new record.
    Entered(QuarantineRecord),
    /// The existing record, escalated.
    Escalated(QuarantineRecord),
}

impl QuarantineOutcome {
    /// The record after the call.
    pub fn record(&self) -> &QuarantineRecord {
        match self {
            QuarantineOutcome::Entered(r) | QuarantineOutcome::Escalated(r) => r,
        }
    }
}

/// Why a quarantine call was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuarantineError {
    /// The duration asked for is zero.
    #[error("a quarantine of {agent} must last longer than zero")]
    ZeroDuration {
        /// The agent.
        agent: AgentId,
    },
    /// The duration asked for is over [`MAX_QUARANTINE`].
    #[error("a quarantine of {agent} for {requested:?} is longer than the maximum {max:?}")]
    TooLong {
        /// The agent.
        agent: AgentId,
        /// The duration asked for.
        requested: Duration,
        /// The maximum.
        max: Duration,
    },
    /// As many agents are quarantined as the book may hold.
    #[error(
        "cannot quarantine {agent}: {max} agents are already quarantined (expire or release some first)"
    )]
    Full {
        /// The agent.
        agent: AgentId,
        /// The cap.
        max: usize,
    },
    /// The agent is not quarantined.
    #[error("agent {agent} is not quarantined")]
    NotQuarantined {
        /// The agent.
        agent: AgentId,
    },
}

/// The quarantined agents, on an injected clock. Holds at most a fixed number
/// of records so a flood of suspicions cannot grow the host without bound.
#[derive(Debug, Clone)]
pub struct Quarantine {
    clock: Arc<dyn Clock>,
    records: BTreeMap<AgentId, QuarantineRecord>,
    default_duration: Duration,
    max_records: usize,
}

impl Quarantine {
    /// An empty book with the [`DEFAULT_QUARANTINE`] hold and room for
    /// [`DEFAULT_MAX_RECORDS`] agents.
    pub fn new(clock: Arc<dyn Clock>) -> Quarantine {
        Quarantine {
            clock,
            records: BTreeMap::new(),
            default_duration: DEFAULT_QUARANTINE,
            max_records: DEFAULT_MAX_RECORDS,
        }
    }

    /// Uses `duration` for [`Quarantine::quarantine`], clamped to
    /// [1 ns, [`MAX_QUARANTINE`]].
    #[must_use]
    pub fn with_default_duration(mut self, duration: Duration) -> Quarantine {
        self.default_duration = duration.clamp(Duration::from_nanos(1), MAX_QUARANTINE);
        self
    }

    /// Holds at most `max` records at once.
    #[must_use]
    pub fn with_max_records(mut self, max: usize) -> Quarantine {
        self.max_records = max;
        self
    }

    /// Quarantines `agent` for the default duration (see
    /// [`Quarantine::quarantine_for`]).
    ///
    /// # Errors
    /// As [`Quarantine::quarantine_for`].
    pub fn quarantine(
        &mut self,
        agent: &AgentId,
        reason: QuarantineReason,
    ) -> Result<QuarantineOutcome, QuarantineError> {
        self.quarantine_for(agent, reason, self.default_duration)
    }

    /// Quarantines `agent` for `duration`. If it is already held, the same
    /// record escalates instead: its count goes up by one and it now ends at
    /// `now + duration × 2^escalations`, capped at `now + MAX_QUARANTINE` and
    /// never earlier than it already did. A record whose end has passed but
    /// that [`Quarantine::expire`] has not collected yet is replaced by a new
    /// one.
    ///
    /// # Errors
    /// [`QuarantineError::ZeroDuration`] or [`QuarantineError::TooLong`] for
    /// a bad duration; [`QuarantineError::Full`] if a new record would pass
    /// the cap.
    pub fn quarantine_for(
        &mut self,
        agent: &AgentId,
        reason: QuarantineReason,
        duration: Duration,
    ) -> Result<QuarantineOutcome, QuarantineError> {
        if duration.is_zero() {
            return Err(QuarantineError::ZeroDuration {
                agent: agent.clone(),
            });
        }
        if duration > MAX_QUARANTINE {
            return Err(QuarantineError::TooLong {
                agent: agent.clone(),
                requested: duration,
                max: MAX_QUARANTINE,
            });
        }
        let now = self.clock.now();
        if let Some(rec) = self.records.get_mut(agent)
            && rec.ends_at > now
        {
            rec.escalations = rec.escalations.saturating_add(1);
            rec.last_reason = reason;
            let hold = 2u32
                .checked_pow(rec.escalations)
                .and_then(|factor| duration.checked_mul(factor))
                .map_or(MAX_QUARANTINE, |d| d.min(MAX_QUARANTINE));
            rec.ends_at = rec.ends_at.max(now.saturating_add(hold));
            return Ok(QuarantineOutcome::Escalated(rec.clone()));
        }
        let stale = self.records.contains_key(agent);
        if !stale && self.records.len() >= self.max_records {
            return Err(QuarantineError::Full {
                agent: agent.clone(),
                max: self.max_records,
            });
        }
        let rec = QuarantineRecord {
            agent: agent.clone(),
            reason,
            last_reason: reason,
            started_at: now,
            ends_at: now.saturating_add(duration),
            escalations: 0,
        };
        self.records.insert(agent.clone(), rec.clone());
        Ok(QuarantineOutcome::Entered(rec))
    }

    /// Ends `agent`'s quarantine now and returns its record.
    ///
    /// # Errors
    /// [`QuarantineError::NotQuarantined`] if it has no record.
    pub fn release(&mut self, agent: &AgentId) -> Result<QuarantineRecord, QuarantineError> {
        self.records
            .remove(agent)
            .ok_or_else(|| QuarantineError::NotQuarantined {
                agent: agent.clone(),
            })
    }

    /// Releases every quarantine whose end has passed and returns those
    /// records in agent order.
    pub fn expire(&mut self) -> Vec<QuarantineRecord> {
        let now = self.clock.now();
        let done: Vec<AgentId> = self
            .records
            .values()
            .filter(|r| r.ends_at <= now)
            .map(|r| r.agent.clone())
            .collect();
        done.iter()
            .filter_map(|agent| self.records.remove(agent))
            .collect()
    }

    /// Whether `agent` is held now (a record whose end has passed no longer
    /// holds it, even before [`Quarantine::expire`] collects it).
    pub fn is_quarantined(&self, agent: &AgentId) -> bool {
        self.records
            .get(agent)
            .is_some_and(|r| r.ends_at > self.clock.now())
    }

    /// `agent`'s record, expired or not.
    pub fn get(&self, agent: &AgentId) -> Option<&QuarantineRecord> {
        self.records.get(agent)
    }

    /// Every record, in agent order.
    pub fn records(&self) -> impl Iterator<Item = &QuarantineRecord> {
        self.records.values()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahv_core::FakeClock;

    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    #[test]
    fn every_reason_parses_from_its_wire_name_and_serde_agrees() {
        for reason in QuarantineReason::ALL {
            assert_eq!(reason.as_str().parse::<QuarantineReason>(), Ok(reason));
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }

    #[test]
    fn an_unknown_reason_is_refused_naming_the_input() {
        for bad in ["", "Manual", "manual ", "bribery"] {
            let err = bad.parse::<QuarantineReason>().unwrap_err();
            assert_eq!(err.name, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let long = "x".repeat(1000);
        assert_eq!(long.parse::<QuarantineReason>().unwrap_err().name.len(), 64);
    }

    fn book() -> (FakeClock, Quarantine) {
        let clock = FakeClock::new();
        (clock.clone(), Quarantine::new(Arc::new(clock)))
    }

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_quarantine_lasts_three_hundred_seconds_by_default() {
        let (clock, mut q) = book();
        clock.advance(SECS(10));
        let out = q.quarantine(&a("x"), QuarantineReason::RingBreach).unwrap();
        let QuarantineOutcome::Entered(rec) = out else {
            panic!("{out:?}")
        };
        assert_eq!(rec.started_at, SECS(10));
        assert_eq!(rec.ends_at, SECS(310));
        assert_eq!(rec.escalations, 0);
        assert!(q.is_quarantined(&a("x")));
        clock.advance(SECS(299));
        assert!(q.is_quarantined(&a("x")));
        clock.advance(SECS(1));
        assert!(!q.is_quarantined(&a("x")), "ends at 310 s exactly");
    }

    #[test]
    fn quarantining_a_held_agent_escalates_the_same_record() {
        let (clock, mut q) = book();
        q.quarantine(&a("x"), QuarantineReason::RingBreach).unwrap();
        clock.advance(SECS(100));
        let out = q.quarantine(&a("x"), QuarantineReason::Manual).unwrap();
        let QuarantineOutcome::Escalated(rec) = out else {
            panic!("{out:?}")
        };
        assert_eq!(rec.escalations, 1);
        assert_eq!(rec.started_at, SECS(0));
        assert_eq!(rec.ends_at, SECS(100 + 600));
        assert_eq!(rec.reason, QuarantineReason::RingBreach);
        assert_eq!(rec.last_reason, QuarantineReason::Manual);
        let out = q.quarantine(&a("x"), QuarantineReason::Manual).unwrap();
        assert_eq!(out.record().escalations, 2);
        assert_eq!(out.record().ends_at, SECS(100 + 1200));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn escalation_is_capped_at_the_maximum() {
        let (clock, mut q) = book();
        for _ in 0..40 {
            q.quarantine(&a("x"), QuarantineReason::BehavioralDrift)
                .unwrap();
        }
        clock.advance(SECS(5));
        let out = q
            .quarantine(&a("x"), QuarantineReason::BehavioralDrift)
            .unwrap();
        assert_eq!(out.record().escalations, 40);
        assert_eq!(out.record().ends_at, SECS(5) + MAX_QUARANTINE);
    }

    #[test]
    fn an_escalation_never_shortens_a_quarantine() {
        let (_clock, mut q) = book();
        q.quarantine_for(&a("x"), QuarantineReason::Manual, SECS(3600))
            .unwrap();
        let out = q
            .quarantine_for(&a("x"), QuarantineReason::Manual, SECS(1))
            .unwrap();
        assert_eq!(out.record().ends_at, SECS(3600));
        assert_eq!(out.record().escalations, 1);
    }

    #[test]
    fn expire_releases_only_records_whose_end_has_passed() {
        let (clock, mut q) = book();
        q.quarantine_for(&a("short"), QuarantineReason::RateLimitExceeded, SECS(10))
            .unwrap();
        q.quarantine(&a("long"), QuarantineReason::LiabilityViolation)
            .unwrap();
        assert!(q.expire().is_empty());
        clock.advance(SECS(10));
        let expired = q.expire();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].agent, a("short"));
        assert!(q.get(&a("short")).is_none());
        assert!(q.is_quarantined(&a("long")));
        clock.advance(SECS(290));
        assert_eq!(q.expire().len(), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn an_expired_uncollected_record_is_replaced_not_escalated() {
        let (clock, mut q) = book();
        q.quarantine(&a("x"), QuarantineReason::Manual).unwrap();
        clock.advance(SECS(300));
        let out = q.quarantine(&a("x"), QuarantineReason::RingBreach).unwrap();
        let QuarantineOutcome::Entered(rec) = out else {
            panic!("{out:?}")
        };
        assert_eq!(rec.started_at, SECS(300));
        assert_eq!(rec.reason, QuarantineReason::RingBreach);
    }

    #[test]
    fn release_ends_a_quarantine_and_refuses_an_unknown_agent() {
        let (_clock, mut q) = book();
        q.quarantine(&a("x"), QuarantineReason::Manual).unwrap();
        assert_eq!(q.release(&a("x")).unwrap().agent, a("x"));
        assert!(!q.is_quarantined(&a("x")));
        assert_eq!(
            q.release(&a("x")),
            Err(QuarantineError::NotQuarantined { agent: a("x") })
        );
    }

    #[test]
    fn a_full_book_refuses_new_agents_but_still_escalates() {
        let clock = FakeClock::new();
        let mut q = Quarantine::new(Arc::new(clock.clone())).with_max_records(2);
        q.quarantine(&a("x"), QuarantineReason::Manual).unwrap();
        q.quarantine(&a("y"), QuarantineReason::Manual).unwrap();
        let err = q.quarantine(&a("z"), QuarantineReason::Manual).unwrap_err();
        assert_eq!(
            err,
            QuarantineError::Full {
                agent: a("z"),
                max: 2
            }
        );
        assert!(q.quarantine(&a("x"), QuarantineReason::Manual).is_ok());
        clock.advance(SECS(10_000));
        q.expire();
        q.quarantine(&a("z"), QuarantineReason::Manual).unwrap();
    }

    #[test]
    fn bad_durations_are_refused() {
        let (_clock, mut q) = book();
        let zero = q
            .quarantine_for(&a("x"), QuarantineReason::Manual, Duration::ZERO)
            .unwrap_err();
        assert_eq!(zero, QuarantineError::ZeroDuration { agent: a("x") });
        let long = q
            .quarantine_for(&a("x"), QuarantineReason::Manual, MAX_QUARANTINE + SECS(1))
            .unwrap_err();
        assert!(matches!(long, QuarantineError::TooLong { .. }), "{long}");
        assert!(q.is_empty());
    }

    #[test]
    fn the_default_duration_can_be_changed() {
        let (clock, _) = book();
        let mut q = Quarantine::new(Arc::new(clock)).with_default_duration(SECS(60));
        let out = q.quarantine(&a("x"), QuarantineReason::Manual).unwrap();
        assert_eq!(out.record().ends_at, SECS(60));
    }

    #[test]
    fn reasons_use_snake_case_on_the_wire_and_in_display() {
        let all = [
            (QuarantineReason::BehavioralDrift, "behavioral_drift"),
            (QuarantineReason::LiabilityViolation, "liability_violation"),
            (QuarantineReason::RingBreach, "ring_breach"),
            (QuarantineReason::RateLimitExceeded, "rate_limit_exceeded"),
            (QuarantineReason::Manual, "manual"),
            (QuarantineReason::CascadeSlash, "cascade_slash"),
        ];
        for (reason, name) in all {
            assert_eq!(reason.to_string(), name);
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{name}\"")
            );
            let back: QuarantineReason = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, reason);
        }
        assert!(serde_json::from_str::<QuarantineReason>("\"nope\"").is_err());
    }
}
