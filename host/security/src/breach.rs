//! The breach detector (sliding window, severity, circuit breaker) and the
//! breach policy that decides what a breach costs (SEMANTICS.md, "Security").
//!
//! A breach is a call into a capability of a more privileged ring than the
//! caller's. [`BreachDetector::record`] counts the caller's breaches in a
//! sliding window per (agent, session) and grades them:
//!
//! ```text
//! score    = calls_in_window / baseline_per_window × (1 + 0.5 × (max(distance, 1) − 1))
//! severity = Low if score < 1, Medium if < 3, High if < 6, else Critical
//! ```
//!
//! `calls_in_window` includes the call being recorded; `distance` is the caller's
//! ring number minus the target's (ring 3 → ring 0 is 3, amplifying by 2×).
//! With the default baseline of 2, two calls are at most Medium at any distance
//! (score 2.0 for ring 3 → ring 0), so two calls close together never trip the
//! breaker; ten calls in a minute at distance 1 score 5.0, High, and trip it.
//!
//! Unlike the Python reference, the score counts calls per window rather than
//! dividing by the time since the first call: there, two calls 1 ms apart read
//! as 2000 calls per second and tripped the breaker.
//!
//! A severity at or above [`DetectorConfig::trip_at`] opens the breaker; it
//! stays open until `cooldown_secs` have passed since the trip, then closes
//! and the window is cleared. What a breach costs the agent is decided in one
//! place, [`BreachPolicy::decide`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ahv_core::{AgentId, Clock, Ring, SessionId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How serious a run of breaches is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Score below 1.
    Low,
    /// Score in [1, 3).
    Medium,
    /// Score in [3, 6).
    High,
    /// Score 6 or more.
    Critical,
}

impl Severity {
    /// The lowest score with this severity.
    pub const fn threshold(self) -> f64 {
        match self {
            Severity::Low => 0.0,
            Severity::Medium => 1.0,
            Severity::High => 3.0,
            Severity::Critical => 6.0,
        }
    }

    /// The severity of `score`.
    pub fn of_score(score: f64) -> Severity {
        [Severity::Critical, Severity::High, Severity::Medium]
            .into_iter()
            .find(|s| score >= s.threshold())
            .unwrap_or(Severity::Low)
    }

    /// The lower-case name (`high`).
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The detector's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Length of the sliding window, in seconds.
    pub window_secs: u64,
    /// Out-of-ring calls per window expected from a harmless agent (score 1.0).
    pub baseline_per_window: f64,
    /// The severity that opens the breaker.
    pub trip_at: Severity,
    /// How long the breaker stays open after a trip, in seconds.
    pub cooldown_secs: u64,
    /// Most call times kept per (agent, session).
    pub max_events: usize,
    /// Most (agent, session) entries kept.
    pub max_keys: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            window_secs: 60,
            baseline_per_window: 2.0,
            trip_at: Severity::High,
            cooldown_secs: 300,
            max_events: 1024,
            max_keys: 10_000,
        }
    }
}

/// Upper bound on `max_events` and `max_keys`: keeps memory bounded by config.
const MAX_BOUND: usize = 1 << 20;

impl DetectorConfig {
    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    /// The cooldown as a duration.
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cooldown_secs)
    }

    /// Checks every field, including that `max_events` calls at distance 1
    /// can reach `trip_at` (otherwise the breaker could never trip).
    ///
    /// # Errors
    /// [`BreachPolicyError::InvalidDetector`] naming the field and value.
    pub fn validate(&self) -> Result<(), BreachPolicyError> {
        let bad = |field: &'static str, value: String, reason: &'static str| {
            Err(BreachPolicyError::InvalidDetector {
                field,
                value,
                reason,
            })
        };
        if self.window_secs == 0 {
            return bad("window_secs", "0".into(), "must be at least 1");
        }
        if !self.baseline_per_window.is_finite() || self.baseline_per_window <= 0.0 {
            return bad(
                "baseline_per_window",
                self.baseline_per_window.to_string(),
                "must be a finite number > 0",
            );
        }
        if self.cooldown_secs == 0 {
            return bad("cooldown_secs", "0".into(), "must be at least 1");
        }
        if !(1..=MAX_BOUND).contains(&self.max_events) {
            return bad(
                "max_events",
                self.max_events.to_string(),
                "must be in 1..=1048576",
            );
        }
        if !(1..=MAX_BOUND).contains(&self.max_keys) {
            return bad(
                "max_keys",
                self.max_keys.to_string(),
                "must be in 1..=1048576",
            );
        }
        if (self.max_events as f64) / self.baseline_per_window < self.trip_at.threshold() {
            return bad(
                "max_events",
                self.max_events.to_string(),
                "is too small for the breaker ever to trip at distance 1",
            );
        }
        Ok(())
    }
}

/// What [`BreachDetector::record`] concluded about one breach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// The severity of the caller's breaches in the window.
    pub severity: Severity,
    /// Breaches in the window, including this one.
    pub calls_in_window: usize,
    /// Caller's ring number minus the target's (0 if the target was not more privileged).
    pub distance: u8,
    /// The score the severity was read from.
    pub score: f64,
    /// The breaker went from closed to open on this call.
    pub tripped: bool,
    /// The breaker is open after this call.
    pub breaker_open: bool,
}

/// One (agent, session)'s breach history.
#[derive(Debug)]
struct Entry {
    calls: VecDeque<Duration>,
    opened_at: Option<Duration>,
    last_seen: Duration,
}

impl Entry {
    /// Closes the breaker if its cooldown has passed; the window starts afresh.
    fn expire(&mut self, cooldown: Duration, now: Duration) {
        if let Some(at) = self.opened_at
            && now.saturating_sub(at) >= cooldown
        {
            self.opened_at = None;
            self.calls.clear();
        }
    }
}

/// Counts breaches per (agent, session) in a sliding window, grades them and
/// runs a circuit breaker. Memory is bounded by `max_keys × max_events`.
#[derive(Debug)]
pub struct BreachDetector {
    config: DetectorConfig,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<(AgentId, SessionId), Entry>>,
}

impl BreachDetector {
    /// A detector with `config`, time from `clock`.
    ///
    /// # Errors
    /// [`BreachPolicyError::InvalidDetector`] if `config` does not validate.
    pub fn new(
        config: DetectorConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<BreachDetector, BreachPolicyError> {
        config.validate()?;
        Ok(BreachDetector {
            config,
            clock,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Records a call by `agent` in `session`, at `caller_ring`, into a
    /// capability of the more privileged `target_ring`, and grades it.
    ///
    /// When `max_keys` entries exist, a new key evicts the least recently seen
    /// entry whose breaker is closed, or, if every breaker is open, the least
    /// recently seen entry.
    pub fn record(
        &self,
        agent: &AgentId,
        session: &SessionId,
        caller_ring: Ring,
        target_ring: Ring,
    ) -> Assessment {
        let now = self.clock.now();
        let key = (agent.clone(), session.clone());
        // Every critical section is panic-free, so a poisoned lock's data is sound.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if !entries.contains_key(&key) && entries.len() >= self.config.max_keys {
            let victim = entries
                .iter()
                .min_by_key(|(_, e)| (e.opened_at.is_some(), e.last_seen))
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                entries.remove(&victim);
            }
        }
        let entry = entries.entry(key).or_insert_with(|| Entry {
            calls: VecDeque::new(),
            opened_at: None,
            last_seen: now,
        });
        entry.expire(self.config.cooldown(), now);
        entry.last_seen = now;
        let window = self.config.window();
        while entry
            .calls
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= window)
        {
            entry.calls.pop_front();
        }
        if entry.calls.len() >= self.config.max_events {
            entry.calls.pop_front();
        }
        entry.calls.push_back(now);

        let mut assessment = self.grade(entry.calls.len(), caller_ring, target_ring);
        assessment.tripped =
            entry.opened_at.is_none() && assessment.severity >= self.config.trip_at;
        if assessment.tripped {
            entry.opened_at = Some(now);
        }
        assessment.breaker_open = entry.opened_at.is_some();
        assessment
    }

    /// How a breach alone would be graded: the first in an empty window
    /// (for a breach of a participation that is over, which has no window
    /// to count in). Records nothing; no breaker trips.
    pub fn assess_alone(&self, caller_ring: Ring, target_ring: Ring) -> Assessment {
        self.grade(1, caller_ring, target_ring)
    }

    /// The score and severity of `calls_in_window` breaches from
    /// `caller_ring` into `target_ring` (breaker fields unset).
    fn grade(&self, calls_in_window: usize, caller_ring: Ring, target_ring: Ring) -> Assessment {
        let distance = caller_ring.number().saturating_sub(target_ring.number());
        let amplifier = 1.0 + 0.5 * f64::from(distance.max(1) - 1);
        let score = calls_in_window as f64 / self.config.baseline_per_window * amplifier;
        Assessment {
            severity: Severity::of_score(score),
            calls_in_window,
            distance,
            score,
            tripped: false,
            breaker_open: false,
        }
    }

    /// True while the breaker of (`agent`, `session`) is open: from a trip
    /// until the cooldown has passed (then it closes and the window is cleared).
    pub fn is_open(&self, agent: &AgentId, session: &SessionId) -> bool {
        let now = self.clock.now();
        let key = (agent.clone(), session.clone());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get_mut(&key) {
            Some(e) => {
                e.expire(self.config.cooldown(), now);
                e.opened_at.is_some()
            }
            None => false,
        }
    }

    /// Closes the breaker of (`agent`, `session`) and clears its window.
    pub fn reset(&self, agent: &AgentId, session: &SessionId) {
        let key = (agent.clone(), session.clone());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get_mut(&key) {
            e.opened_at = None;
            e.calls.clear();
        }
    }

    /// Forgets (`agent`, `session`) entirely.
    pub fn remove(&self, agent: &AgentId, session: &SessionId) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Nothing to hash the key for (no participant has breached).
        if !entries.is_empty() {
            entries.remove(&(agent.clone(), session.clone()));
        }
    }

    /// The number of (agent, session) entries kept.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a breach costs the agent, beyond losing its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum BreachAction {
    /// Remove the agent from the session.
    Expel,
    /// Keep the agent, demoted to `ring` (strictly less privileged than its base ring).
    Readmit {
        /// The ring it comes back at.
        #[serde(with = "crate::ring_serde")]
        ring: Ring,
    },
    /// Quarantine the agent for `secs` seconds (1..=86400).
    Quarantine {
        /// How long.
        secs: u64,
    },
    /// Kill the agent (kill switch: hand-off or compensation of its saga steps).
    Kill,
}

/// When a rule's action applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreachTrigger {
    /// On every breach.
    #[default]
    EveryBreach,
    /// Only when the breaker trips (or is already open); lesser breaches only
    /// restart the instance.
    BreakerTrip,
}

/// The consequence of breaches by agents of one base ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BreachRuleDef", into = "BreachRuleDef")]
pub struct BreachRule {
    /// What happens.
    pub action: BreachAction,
    /// When it happens.
    pub trigger: BreachTrigger,
}

/// The serialized form of a rule: the action's fields and the trigger in one
/// table (`action = "readmit"`, `ring = 3`, `trigger = "breaker_trip"`). serde's
/// `flatten` cannot be combined with `deny_unknown_fields`, hence this mirror.
#[derive(Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum BreachRuleDef {
    Expel {
        #[serde(default)]
        trigger: BreachTrigger,
    },
    Readmit {
        #[serde(with = "crate::ring_serde")]
        ring: Ring,
        #[serde(default)]
        trigger: BreachTrigger,
    },
    Quarantine {
        secs: u64,
        #[serde(default)]
        trigger: BreachTrigger,
    },
    Kill {
        #[serde(default)]
        trigger: BreachTrigger,
    },
}

impl From<BreachRuleDef> for BreachRule {
    fn from(def: BreachRuleDef) -> Self {
        let (action, trigger) = match def {
            BreachRuleDef::Expel { trigger } => (BreachAction::Expel, trigger),
            BreachRuleDef::Readmit { ring, trigger } => (BreachAction::Readmit { ring }, trigger),
            BreachRuleDef::Quarantine { secs, trigger } => {
                (BreachAction::Quarantine { secs }, trigger)
            }
            BreachRuleDef::Kill { trigger } => (BreachAction::Kill, trigger),
        };
        BreachRule { action, trigger }
    }
}

impl From<BreachRule> for BreachRuleDef {
    fn from(rule: BreachRule) -> Self {
        let trigger = rule.trigger;
        match rule.action {
            BreachAction::Expel => BreachRuleDef::Expel { trigger },
            BreachAction::Readmit { ring } => BreachRuleDef::Readmit { ring, trigger },
            BreachAction::Quarantine { secs } => BreachRuleDef::Quarantine { secs, trigger },
            BreachAction::Kill => BreachRuleDef::Kill { trigger },
        }
    }
}

impl BreachRule {
    /// Today's behaviour: expel on every breach.
    pub const EXPEL_EVERY_BREACH: BreachRule = BreachRule {
        action: BreachAction::Expel,
        trigger: BreachTrigger::EveryBreach,
    };

    /// Checks the rule for agents whose base ring is `applies_to`.
    ///
    /// # Errors
    /// [`BreachPolicyError::ReadmitNotDemoted`] for a readmission at the same or a
    /// more privileged ring; [`BreachPolicyError::QuarantineSecs`] outside 1..=86400.
    pub fn validate(&self, applies_to: Ring) -> Result<(), BreachPolicyError> {
        match self.action {
            BreachAction::Readmit { ring } if ring.number() <= applies_to.number() => {
                Err(BreachPolicyError::ReadmitNotDemoted {
                    applies_to,
                    readmit: ring,
                })
            }
            BreachAction::Quarantine { secs } if !(1..=86_400).contains(&secs) => {
                Err(BreachPolicyError::QuarantineSecs { secs })
            }
            _ => Ok(()),
        }
    }
}

/// What the runtime does about one breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consequence {
    /// Drop the instance, keep the agent as it is.
    Restart,
    /// Drop the instance and apply the action.
    Apply(BreachAction),
}

/// Errors in the breach policy or the detector's settings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BreachPolicyError {
    /// A readmission ring not strictly less privileged than the rule's ring.
    #[error(
        "breach rule for {applies_to}: readmit at {readmit} is not a demotion (it must be less privileged)"
    )]
    ReadmitNotDemoted {
        /// The base ring the rule applies to.
        applies_to: Ring,
        /// The ring it would readmit at.
        readmit: Ring,
    },
    /// A quarantine length outside 1..=86400 seconds.
    #[error("breach rule quarantine of {secs} s is outside 1..=86400")]
    QuarantineSecs {
        /// The length given.
        secs: u64,
    },
    /// A detector setting out of range.
    #[error("breach detector {field} = {value}: {reason}")]
    InvalidDetector {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
}

/// The breach policy: a rule per caller's base ring and the detector's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BreachPolicyDef", into = "BreachPolicyDef")]
pub struct BreachPolicy {
    rules: [BreachRule; 4],
    detector: DetectorConfig,
}

/// The serialized form: rules by ring name, missing ones default; validated on load.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreachPolicyDef {
    #[serde(default)]
    rules: RulesDef,
    #[serde(default)]
    detector: DetectorConfig,
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RulesDef {
    root: BreachRule,
    privileged: BreachRule,
    standard: BreachRule,
    sandbox: BreachRule,
}

impl Default for RulesDef {
    fn default() -> Self {
        let r = BreachRule::EXPEL_EVERY_BREACH;
        RulesDef {
            root: r,
            privileged: r,
            standard: r,
            sandbox: r,
        }
    }
}

impl TryFrom<BreachPolicyDef> for BreachPolicy {
    type Error = BreachPolicyError;

    fn try_from(def: BreachPolicyDef) -> Result<Self, BreachPolicyError> {
        let r = def.rules;
        let rules = [r.root, r.privileged, r.standard, r.sandbox];
        for (rule, ring) in rules.iter().zip(Ring::ALL) {
            rule.validate(ring)?;
        }
        def.detector.validate()?;
        Ok(BreachPolicy {
            rules,
            detector: def.detector,
        })
    }
}

impl From<BreachPolicy> for BreachPolicyDef {
    fn from(p: BreachPolicy) -> Self {
        let [root, privileged, standard, sandbox] = p.rules;
        BreachPolicyDef {
            rules: RulesDef {
                root,
                privileged,
                standard,
                sandbox,
            },
            detector: p.detector,
        }
    }
}

impl Default for BreachPolicy {
    /// Every ring: expel on every breach; the default detector.
    fn default() -> Self {
        BreachPolicy {
            rules: [BreachRule::EXPEL_EVERY_BREACH; 4],
            detector: DetectorConfig::default(),
        }
    }
}

impl BreachPolicy {
    /// The rule for callers whose base ring is `ring`.
    pub fn rule(&self, ring: Ring) -> BreachRule {
        self.rules[ring.number() as usize]
    }

    /// The detector's settings.
    pub fn detector(&self) -> &DetectorConfig {
        &self.detector
    }

    /// This policy with the rule for base ring `ring` replaced.
    ///
    /// # Errors
    /// As [`BreachRule::validate`].
    pub fn with_rule(mut self, ring: Ring, rule: BreachRule) -> Result<Self, BreachPolicyError> {
        rule.validate(ring)?;
        self.rules[ring.number() as usize] = rule;
        Ok(self)
    }

    /// This policy with other detector settings.
    ///
    /// # Errors
    /// As [`DetectorConfig::validate`].
    pub fn with_detector(mut self, detector: DetectorConfig) -> Result<Self, BreachPolicyError> {
        detector.validate()?;
        self.detector = detector;
        Ok(self)
    }

    /// The consequence of a breach by an agent of `base_ring`, given what the
    /// detector made of it. The one place this is decided.
    pub fn decide(&self, base_ring: Ring, assessment: &Assessment) -> Consequence {
        let rule = self.rule(base_ring);
        match rule.trigger {
            BreachTrigger::EveryBreach => Consequence::Apply(rule.action),
            BreachTrigger::BreakerTrip if assessment.tripped || assessment.breaker_open => {
                Consequence::Apply(rule.action)
            }
            BreachTrigger::BreakerTrip => Consequence::Restart,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahv_core::FakeClock;

    const MS: Duration = Duration::from_millis(1);

    fn ids() -> (AgentId, SessionId) {
        (AgentId::new("agent").unwrap(), SessionId::new("s").unwrap())
    }

    fn detector(config: DetectorConfig) -> (FakeClock, BreachDetector) {
        let clock = FakeClock::new();
        let d = BreachDetector::new(config, Arc::new(clock.clone())).unwrap();
        (clock, d)
    }

    /// A breach graded alone is graded as the first one recorded in a
    /// fresh window is, and leaves nothing behind.
    #[test]
    fn a_breach_assessed_alone_is_graded_as_a_first_one_and_records_nothing() {
        for caller in Ring::ALL {
            for target in Ring::ALL {
                let (_, d) = detector(DetectorConfig::default());
                let (a, s) = ids();
                let alone = d.assess_alone(caller, target);
                assert!(d.is_empty(), "{caller} → {target}: nothing recorded");
                let first = d.record(&a, &s, caller, target);
                assert_eq!(alone.severity, first.severity, "{caller} → {target}");
                assert_eq!(alone.score, first.score, "{caller} → {target}");
                assert!(!alone.tripped && !alone.breaker_open);
            }
        }
        // Ring 3 into ring 0 alone: 1 / 2 × (1 + 0.5 × 2) = 1.0, medium.
        let (_, d) = detector(DetectorConfig::default());
        assert_eq!(
            d.assess_alone(Ring::Sandbox, Ring::Root).severity,
            Severity::Medium
        );
    }

    #[test]
    fn two_calls_close_together_never_trip_at_any_distance() {
        for caller in [Ring::Sandbox, Ring::Standard, Ring::Privileged] {
            for target in Ring::ALL.into_iter().filter(|t| t < &caller) {
                let (clock, d) = detector(DetectorConfig::default());
                let (a, s) = ids();
                let first = d.record(&a, &s, caller, target);
                clock.advance(MS);
                let second = d.record(&a, &s, caller, target);
                assert!(!first.tripped && !second.tripped, "{caller} → {target}");
                assert!(second.severity < Severity::High, "{caller} → {target}");
                assert!(!d.is_open(&a, &s));
            }
        }
    }

    #[test]
    fn a_flood_trips_the_breaker_exactly_once() {
        let (clock, d) = detector(DetectorConfig::default());
        let (a, s) = ids();
        let results: Vec<Assessment> = (0..30)
            .map(|_| {
                clock.advance(MS);
                d.record(&a, &s, Ring::Standard, Ring::Privileged)
            })
            .collect();
        assert_eq!(results.iter().filter(|r| r.tripped).count(), 1);
        // Six calls at distance 1 score 3.0, the first High.
        assert!(results[5].tripped);
        assert_eq!(results[5].severity, Severity::High);
        assert!(results[4].severity < Severity::High);
        assert_eq!(results[9].calls_in_window, 10);
        assert!(results[9].severity >= Severity::High);
        assert!(results[29].breaker_open && results[29].severity == Severity::Critical);
        assert!(d.is_open(&a, &s));
    }

    #[test]
    fn cooldown_closes_the_breaker_and_clears_the_window() {
        let (clock, d) = detector(DetectorConfig::default());
        let (a, s) = ids();
        for _ in 0..10 {
            d.record(&a, &s, Ring::Standard, Ring::Privileged);
        }
        clock.advance(Duration::from_secs(299));
        assert!(d.is_open(&a, &s));
        clock.advance(Duration::from_secs(1));
        assert!(!d.is_open(&a, &s));
        let next = d.record(&a, &s, Ring::Standard, Ring::Privileged);
        assert_eq!(next.calls_in_window, 1);
        assert!(!next.breaker_open);
    }

    #[test]
    fn cooldown_also_expires_on_record_without_is_open() {
        let (clock, d) = detector(DetectorConfig::default());
        let (a, s) = ids();
        for _ in 0..10 {
            d.record(&a, &s, Ring::Standard, Ring::Privileged);
        }
        clock.advance(Duration::from_secs(300));
        let next = d.record(&a, &s, Ring::Standard, Ring::Privileged);
        assert_eq!((next.calls_in_window, next.breaker_open), (1, false));
    }

    #[test]
    fn ring_distance_amplifies_severity() {
        let (_c, d) = detector(DetectorConfig::default());
        let a = AgentId::new("near").unwrap();
        let b = AgentId::new("far").unwrap();
        let s = SessionId::new("s").unwrap();
        let near = d.record(&a, &s, Ring::Sandbox, Ring::Standard);
        let far = d.record(&b, &s, Ring::Sandbox, Ring::Root);
        assert_eq!((near.distance, far.distance), (1, 3));
        assert_eq!(near.severity, Severity::Low);
        assert_eq!(far.severity, Severity::Medium);
        assert!(far.score > near.score);
        // Three calls: distance 1 stays Medium, distance 3 is High and trips.
        d.record(&a, &s, Ring::Sandbox, Ring::Standard);
        d.record(&b, &s, Ring::Sandbox, Ring::Root);
        let near3 = d.record(&a, &s, Ring::Sandbox, Ring::Standard);
        let far3 = d.record(&b, &s, Ring::Sandbox, Ring::Root);
        assert_eq!(near3.severity, Severity::Medium);
        assert!(far3.tripped && far3.severity == Severity::High);
    }

    #[test]
    fn old_calls_fall_out_of_the_window() {
        let (clock, d) = detector(DetectorConfig::default());
        let (a, s) = ids();
        for _ in 0..4 {
            d.record(&a, &s, Ring::Sandbox, Ring::Standard);
            clock.advance(Duration::from_secs(20));
        }
        // Calls at 0, 20, 40, 60 s: at 80 s only 40 and 60 are within 60 s.
        let r = d.record(&a, &s, Ring::Sandbox, Ring::Standard);
        assert_eq!(r.calls_in_window, 3);
        assert!(!r.breaker_open);
    }

    #[test]
    fn events_per_key_are_bounded() {
        let config = DetectorConfig {
            max_events: 8,
            trip_at: Severity::Critical,
            baseline_per_window: 1.0,
            ..DetectorConfig::default()
        };
        let (_c, d) = detector(config);
        let (a, s) = ids();
        let last = (0..100)
            .map(|_| d.record(&a, &s, Ring::Sandbox, Ring::Standard))
            .last()
            .unwrap();
        assert_eq!(last.calls_in_window, 8);
    }

    #[test]
    fn keys_are_bounded_and_open_breakers_are_evicted_last() {
        let config = DetectorConfig {
            max_keys: 2,
            ..DetectorConfig::default()
        };
        let (clock, d) = detector(config);
        let s = SessionId::new("s").unwrap();
        let [x, y, z] = ["x", "y", "z"].map(|n| AgentId::new(n).unwrap());
        for _ in 0..10 {
            d.record(&x, &s, Ring::Sandbox, Ring::Standard);
        }
        clock.advance(MS);
        d.record(&y, &s, Ring::Sandbox, Ring::Standard);
        clock.advance(MS);
        d.record(&z, &s, Ring::Sandbox, Ring::Standard);
        assert_eq!(d.len(), 2);
        assert!(d.is_open(&x, &s), "x's open breaker survived");
        // y was evicted: it starts afresh.
        assert_eq!(
            d.record(&y, &s, Ring::Sandbox, Ring::Standard)
                .calls_in_window,
            1
        );
    }

    #[test]
    fn reset_and_remove_forget_the_history() {
        let (_c, d) = detector(DetectorConfig::default());
        let (a, s) = ids();
        for _ in 0..10 {
            d.record(&a, &s, Ring::Sandbox, Ring::Standard);
        }
        d.reset(&a, &s);
        assert!(!d.is_open(&a, &s));
        assert_eq!(
            d.record(&a, &s, Ring::Sandbox, Ring::Standard)
                .calls_in_window,
            1
        );
        d.remove(&a, &s);
        assert!(d.is_empty());
    }

    #[test]
    fn detector_config_validation_names_the_field() {
        let field = |c: DetectorConfig| match c.validate() {
            Err(BreachPolicyError::InvalidDetector { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        };
        let d = DetectorConfig::default;
        assert_eq!(
            field(DetectorConfig {
                window_secs: 0,
                ..d()
            }),
            "window_secs"
        );
        assert_eq!(
            field(DetectorConfig {
                baseline_per_window: f64::NAN,
                ..d()
            }),
            "baseline_per_window"
        );
        assert_eq!(
            field(DetectorConfig {
                baseline_per_window: 0.0,
                ..d()
            }),
            "baseline_per_window"
        );
        assert_eq!(
            field(DetectorConfig {
                cooldown_secs: 0,
                ..d()
            }),
            "cooldown_secs"
        );
        assert_eq!(field(DetectorConfig { max_keys: 0, ..d() }), "max_keys");
        assert_eq!(
            field(DetectorConfig {
                max_events: 0,
                ..d()
            }),
            "max_events"
        );
        // 5 calls / 2 = 2.5 < 3: High is unreachable.
        assert_eq!(
            field(DetectorConfig {
                max_events: 5,
                ..d()
            }),
            "max_events"
        );
        assert!(
            DetectorConfig {
                max_events: 6,
                ..d()
            }
            .validate()
            .is_ok()
        );
        assert!(
            BreachDetector::new(
                DetectorConfig {
                    window_secs: 0,
                    ..d()
                },
                Arc::new(FakeClock::new())
            )
            .is_err()
        );
    }

    #[test]
    fn policy_validation_refuses_bad_rules() {
        let p = BreachPolicy::default();
        let readmit = |ring| BreachRule {
            action: BreachAction::Readmit { ring },
            trigger: BreachTrigger::EveryBreach,
        };
        assert_eq!(
            p.clone().with_rule(Ring::Standard, readmit(Ring::Standard)),
            Err(BreachPolicyError::ReadmitNotDemoted {
                applies_to: Ring::Standard,
                readmit: Ring::Standard
            })
        );
        assert!(
            p.clone()
                .with_rule(Ring::Standard, readmit(Ring::Privileged))
                .is_err()
        );
        assert!(
            p.clone()
                .with_rule(Ring::Sandbox, readmit(Ring::Sandbox))
                .is_err()
        );
        let ok = p
            .clone()
            .with_rule(Ring::Standard, readmit(Ring::Sandbox))
            .unwrap();
        assert_eq!(ok.rule(Ring::Standard), readmit(Ring::Sandbox));
        for secs in [0, 86_401] {
            let rule = BreachRule {
                action: BreachAction::Quarantine { secs },
                trigger: BreachTrigger::EveryBreach,
            };
            assert_eq!(
                p.clone().with_rule(Ring::Sandbox, rule),
                Err(BreachPolicyError::QuarantineSecs { secs })
            );
        }
        assert!(
            p.with_detector(DetectorConfig {
                window_secs: 0,
                ..DetectorConfig::default()
            })
            .is_err()
        );
    }

    fn assessment(tripped: bool, breaker_open: bool) -> Assessment {
        Assessment {
            severity: Severity::Low,
            calls_in_window: 1,
            distance: 1,
            score: 0.5,
            tripped,
            breaker_open,
        }
    }

    #[test]
    fn decide_follows_the_trigger() {
        let default = BreachPolicy::default();
        for ring in Ring::ALL {
            assert_eq!(
                default.decide(ring, &assessment(false, false)),
                Consequence::Apply(BreachAction::Expel)
            );
        }
        let quarantine = BreachAction::Quarantine { secs: 600 };
        let p = default
            .with_rule(
                Ring::Standard,
                BreachRule {
                    action: quarantine,
                    trigger: BreachTrigger::BreakerTrip,
                },
            )
            .unwrap();
        assert_eq!(
            p.decide(Ring::Standard, &assessment(false, false)),
            Consequence::Restart
        );
        assert_eq!(
            p.decide(Ring::Standard, &assessment(true, true)),
            Consequence::Apply(quarantine)
        );
        assert_eq!(
            p.decide(Ring::Standard, &assessment(false, true)),
            Consequence::Apply(quarantine)
        );
        assert_eq!(
            p.decide(Ring::Sandbox, &assessment(false, false)),
            Consequence::Apply(BreachAction::Expel)
        );
    }

    #[test]
    fn policy_loads_from_toml_with_defaults_and_refuses_bad_input() {
        let text = r#"
            [rules.standard]
            action = "readmit"
            ring = 3
            trigger = "breaker_trip"

            [rules.sandbox]
            action = "quarantine"
            secs = 600

            [detector]
            window_secs = 30
            trip_at = "critical"
        "#;
        let p: BreachPolicy = toml::from_str(text).unwrap();
        assert_eq!(
            p.rule(Ring::Standard),
            BreachRule {
                action: BreachAction::Readmit {
                    ring: Ring::Sandbox
                },
                trigger: BreachTrigger::BreakerTrip
            }
        );
        assert_eq!(
            p.rule(Ring::Sandbox).action,
            BreachAction::Quarantine { secs: 600 }
        );
        assert_eq!(p.rule(Ring::Root), BreachRule::EXPEL_EVERY_BREACH);
        assert_eq!(p.detector().window_secs, 30);
        assert_eq!(p.detector().trip_at, Severity::Critical);
        assert_eq!(p.detector().cooldown_secs, 300);
        let back: BreachPolicy = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            toml::from_str::<BreachPolicy>("").unwrap(),
            BreachPolicy::default()
        );

        for bad in [
            "[rules.sandbox]\naction = \"readmit\"\nring = 3\n",
            "[rules.standard]\naction = \"readmit\"\nring = \"sandbox\"\nsecs = 1\n",
            "[rules.standard]\naction = \"expel\"\nextra = 1\n",
            "[rules.standard]\naction = \"banish\"\n",
            "[rules.guest]\naction = \"expel\"\n",
            "[detector]\nwindow_secs = 0\n",
            "[detector]\nwindow = 60\n",
            "other = 1\n",
            "[rules.sandbox]\naction = \"quarantine\"\nsecs = 0\n",
        ] {
            assert!(toml::from_str::<BreachPolicy>(bad).is_err(), "{bad}");
        }
        let named: BreachPolicy =
            toml::from_str("[rules.standard]\naction = \"readmit\"\nring = \"sandbox\"\n").unwrap();
        assert_eq!(
            named.rule(Ring::Standard).action,
            BreachAction::Readmit {
                ring: Ring::Sandbox
            }
        );
    }

    #[test]
    fn severity_serializes_lower_case_and_orders() {
        assert!(Severity::Low < Severity::Medium && Severity::High < Severity::Critical);
        #[derive(Serialize)]
        struct W {
            s: Severity,
        }
        assert_eq!(
            toml::to_string(&W { s: Severity::High }).unwrap().trim(),
            "s = \"high\""
        );
        assert_eq!(Severity::of_score(0.99), Severity::Low);
        assert_eq!(Severity::of_score(1.0), Severity::Medium);
        assert_eq!(Severity::of_score(f64::NAN), Severity::Low);
    }
}
