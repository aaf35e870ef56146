//! The liability ledger (SEMANTICS.md "Liability"): what each agent did
//! across sessions (slashes, quarantines, faults, clean sessions) and the
//! risk score that admission consults. Where entries are kept (memory,
//! SQLite, PostgreSQL) is the `ahv-store` crate's business; this module is the
//! rules.

use std::time::Duration;

use ahv_core::AgentId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Risk per slash, times `max(severity, 0.5)`.
pub const SLASH_WEIGHT: f64 = 0.15;
/// The least severity a slash counts with.
pub const SLASH_MIN_SEVERITY: f64 = 0.5;
/// Risk per quarantine, times `max(severity, 0.3)`.
pub const QUARANTINE_WEIGHT: f64 = 0.10;
/// The least severity a quarantine counts with.
pub const QUARANTINE_MIN_SEVERITY: f64 = 0.3;
/// Risk per fault, times its severity.
pub const FAULT_WEIGHT: f64 = 0.05;
/// Risk taken off per clean session.
pub const CLEAN_SESSION_CREDIT: f64 = 0.05;
/// Risk at or above which an agent is denied.
pub const DENY_AT: f64 = 0.6;
/// Risk at or above which an agent is admitted on probation.
pub const PROBATION_AT: f64 = 0.3;

/// Slack for the admission thresholds: sums of weights such as 0.075 × 4 may
/// land a hair under 0.3 in floating point, and must still count as 0.3.
const THRESHOLD_EPSILON: f64 = 1e-9;

/// Why a ledger entry was refused.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// A severity is NaN, infinite or outside [0, 1].
    #[error("severity must be a number in [0, 1], got {value}")]
    BadSeverity {
        /// The value given.
        value: f64,
    },
}

/// How bad an event was, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Severity(f64);

impl Severity {
    /// The worst severity, 1.
    pub const FULL: Severity = Severity(1.0);

    /// Validates a severity.
    ///
    /// # Errors
    /// [`LedgerError::BadSeverity`] for NaN, infinities and values outside [0, 1].
    pub fn new(value: f64) -> Result<Severity, LedgerError> {
        if value.is_finite() && (0.0..=1.0).contains(&value) {
            Ok(Severity(value))
        } else {
            Err(LedgerError::BadSeverity { value })
        }
    }

    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Severity {
    type Error = LedgerError;

    fn try_from(value: f64) -> Result<Severity, LedgerError> {
        Severity::new(value)
    }
}

impl From<Severity> for f64 {
    fn from(s: Severity) -> f64 {
        s.0
    }
}

/// What happened to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EntryKind {
    /// It was slashed.
    Slash {
        /// How bad.
        severity: Severity,
    },
    /// It was quarantined.
    Quarantine {
        /// How bad.
        severity: Severity,
    },
    /// Fault was attributed to it.
    Fault {
        /// How bad (its share of the blame, for instance).
        severity: Severity,
    },
    /// It finished a session with nothing against it.
    CleanSession,
}

impl EntryKind {
    /// What this entry adds to the (unclamped) risk sum.
    pub fn risk_contribution(self) -> f64 {
        match self {
            EntryKind::Slash { severity } => SLASH_WEIGHT * severity.get().max(SLASH_MIN_SEVERITY),
            EntryKind::Quarantine { severity } => {
                QUARANTINE_WEIGHT * severity.get().max(QUARANTINE_MIN_SEVERITY)
            }
            EntryKind::Fault { severity } => FAULT_WEIGHT * severity.get(),
            EntryKind::CleanSession => -CLEAN_SESSION_CREDIT,
        }
    }
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The agent.
    #[serde(with = "agent_id")]
    pub agent: AgentId,
    /// What happened.
    #[serde(flatten)]
    pub kind: EntryKind,
    /// When, on the recorder's clock. A persistent store should be fed from
    /// a clock that survives restarts (wall time since the epoch), since
    /// entries outlive the process.
    pub at: Duration,
}

/// The risk of an agent with these entries, in the order they were made:
/// the running sum of [`EntryKind::risk_contribution`], never below 0 on the
/// way (clean-session credits cannot be banked against later offences),
/// clamped to 1 at the end.
pub fn risk_score<'a>(entries: impl IntoIterator<Item = &'a LedgerEntry>) -> f64 {
    risk_of_kinds(entries.into_iter().map(|e| e.kind))
}

/// [`risk_score`] of entry kinds in the order they were made.
pub fn risk_of_kinds(kinds: impl IntoIterator<Item = EntryKind>) -> f64 {
    kinds
        .into_iter()
        .fold(0.0_f64, |risk, k| (risk + k.risk_contribution()).max(0.0))
        .min(1.0)
}

/// What admission does with an agent, by its risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Risk below [`PROBATION_AT`]: admit.
    Admit,
    /// Risk in [[`PROBATION_AT`], [`DENY_AT`]): admit on probation.
    Probation,
    /// Risk at or above [`DENY_AT`]: refuse.
    Deny,
}

impl Admission {
    /// The decision for `risk` (NaN, which [`risk_score`] never returns,
    /// denies).
    pub fn for_risk(risk: f64) -> Admission {
        if risk.is_nan() || risk >= DENY_AT - THRESHOLD_EPSILON {
            Admission::Deny
        } else if risk >= PROBATION_AT - THRESHOLD_EPSILON {
            Admission::Probation
        } else {
            Admission::Admit
        }
    }
}

/// An agent's risk and the admission decision it implies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// The risk, in [0, 1].
    pub risk: f64,
    /// The decision.
    pub admission: Admission,
}

/// Serde for [`AgentId`] as its text, validated on the way in (ahv-core's
/// ids carry no serde impls of their own).
mod agent_id {
    use ahv_core::AgentId;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(id: &AgentId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AgentId, D::Error> {
        let text = String::deserialize(d)?;
        AgentId::new(text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-9
    }

    fn sev(x: f64) -> Severity {
        Severity::new(x).unwrap()
    }

    fn entry(kind: EntryKind) -> LedgerEntry {
        LedgerEntry {
            agent: a("agent"),
            kind,
            at: Duration::ZERO,
        }
    }

    fn slash(x: f64) -> LedgerEntry {
        entry(EntryKind::Slash { severity: sev(x) })
    }

    fn quarantine(x: f64) -> LedgerEntry {
        entry(EntryKind::Quarantine { severity: sev(x) })
    }

    fn fault(x: f64) -> LedgerEntry {
        entry(EntryKind::Fault { severity: sev(x) })
    }

    #[test]
    fn two_slashes_and_a_light_quarantine_are_admitted() {
        let entries = [slash(0.8), slash(0.8), quarantine(0.2)];
        let risk = risk_score(&entries);
        assert!(close(risk, 0.27), "{risk}");
        assert_eq!(Admission::for_risk(risk), Admission::Admit);
    }

    #[test]
    fn two_more_heavy_slashes_mean_probation() {
        let entries = [
            slash(0.8),
            slash(0.8),
            quarantine(0.2),
            slash(0.9),
            slash(0.9),
        ];
        let risk = risk_score(&entries);
        assert!(close(risk, 0.54), "{risk}");
        assert_eq!(Admission::for_risk(risk), Admission::Probation);
    }

    #[test]
    fn risk_of_point_six_or_more_is_denied() {
        let entries = [slash(1.0), slash(1.0), slash(1.0), slash(1.0)];
        let risk = risk_score(&entries);
        assert!(close(risk, 0.6), "{risk}");
        assert_eq!(Admission::for_risk(risk), Admission::Deny);
        assert_eq!(Admission::for_risk(0.9), Admission::Deny);
        assert_eq!(Admission::for_risk(f64::NAN), Admission::Deny);
    }

    #[test]
    fn thresholds_are_inclusive_despite_float_sums() {
        let four_light = [slash(0.1), slash(0.1), slash(0.1), slash(0.1)];
        let risk = risk_score(&four_light);
        assert!(close(risk, 0.3), "{risk}");
        assert_eq!(Admission::for_risk(risk), Admission::Probation);
        assert_eq!(Admission::for_risk(0.299), Admission::Admit);
        assert_eq!(Admission::for_risk(0.599), Admission::Probation);
    }

    #[test]
    fn light_slashes_and_quarantines_count_at_their_minimum_severity() {
        assert!(close(risk_score(&[slash(0.0)]), 0.075));
        assert!(close(risk_score(&[quarantine(0.0)]), 0.03));
        assert!(close(risk_score(&[quarantine(0.5)]), 0.05));
        assert!(close(risk_score(&[fault(0.0)]), 0.0));
        assert!(close(risk_score(&[fault(0.6)]), 0.03));
    }

    #[test]
    fn clean_sessions_lower_risk_but_not_below_zero() {
        let clean = entry(EntryKind::CleanSession);
        assert!(close(risk_score(&[slash(1.0), clean.clone()]), 0.10));
        assert_eq!(risk_score(&[fault(0.2), clean.clone(), clean.clone()]), 0.0);
        assert_eq!(risk_score(&[]), 0.0);
    }

    #[test]
    fn risk_is_clamped_at_one() {
        let many: Vec<LedgerEntry> = (0..10).map(|_| slash(1.0)).collect();
        assert_eq!(risk_score(&many), 1.0);
    }

    #[test]
    fn clean_session_credit_cannot_be_banked_against_later_offences() {
        // Forty empty sessions first would otherwise absorb thirteen slashes.
        let clean = entry(EntryKind::CleanSession);
        let mut entries = vec![clean.clone(); 40];
        entries.push(slash(1.0));
        assert!(close(risk_score(&entries), 0.15));
        // Credit after an offence does count.
        let entries = [slash(1.0), clean.clone(), clean];
        assert!(close(risk_score(&entries), 0.05));
        // Past 1 the sum is clamped at the end, so credits work off the excess first.
        let mut many: Vec<LedgerEntry> = (0..8).map(|_| slash(1.0)).collect();
        many.push(entry(EntryKind::CleanSession));
        assert!(close(risk_score(&many), 1.0));
    }

    #[test]
    fn severities_outside_the_unit_interval_are_refused() {
        for bad in [f64::NAN, -0.01, 1.01, f64::INFINITY] {
            let err = Severity::new(bad).unwrap_err();
            assert!(matches!(err, LedgerError::BadSeverity { .. }), "{err}");
        }
        assert_eq!(Severity::new(1.0).unwrap().get(), 1.0);
    }

    #[test]
    fn entries_round_trip_through_json_and_bad_ones_are_refused() {
        let e = LedgerEntry {
            agent: a("did:example:x"),
            kind: EntryKind::Slash { severity: sev(0.7) },
            at: Duration::from_secs(5),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""kind":"slash""#), "{json}");
        assert_eq!(serde_json::from_str::<LedgerEntry>(&json).unwrap(), e);
        let clean = LedgerEntry {
            kind: EntryKind::CleanSession,
            ..e.clone()
        };
        let json = serde_json::to_string(&clean).unwrap();
        assert_eq!(serde_json::from_str::<LedgerEntry>(&json).unwrap(), clean);

        let bad_sev = r#"{"agent":"x","kind":"fault","severity":1.5,"at":{"secs":0,"nanos":0}}"#;
        assert!(serde_json::from_str::<LedgerEntry>(bad_sev).is_err());
        let bad_agent = r#"{"agent":"-x","kind":"clean_session","at":{"secs":0,"nanos":0}}"#;
        assert!(serde_json::from_str::<LedgerEntry>(bad_agent).is_err());
        let extra =
            r#"{"agent":"x","kind":"fault","severity":0.3,"bribe":1,"at":{"secs":0,"nanos":0}}"#;
        assert!(serde_json::from_str::<LedgerEntry>(extra).is_err());
        let bad_kind = r#"{"agent":"x","kind":"bribe","at":{"secs":0,"nanos":0}}"#;
        assert!(serde_json::from_str::<LedgerEntry>(bad_kind).is_err());
    }

    #[test]
    fn admission_serializes_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&Admission::Probation).unwrap(),
            "\"probation\""
        );
    }

    fn kind_strategy() -> impl Strategy<Value = EntryKind> {
        prop_oneof![
            (0.0f64..=1.0).prop_map(|s| EntryKind::Slash { severity: sev(s) }),
            (0.0f64..=1.0).prop_map(|s| EntryKind::Quarantine { severity: sev(s) }),
            (0.0f64..=1.0).prop_map(|s| EntryKind::Fault { severity: sev(s) }),
            Just(EntryKind::CleanSession),
        ]
    }

    proptest! {
        #[test]
        fn risk_stays_in_the_unit_interval_and_grows_with_slashes(
            kinds in proptest::collection::vec(kind_strategy(), 0..40),
            extra in 0.0f64..=1.0,
        ) {
            let mut entries: Vec<LedgerEntry> = kinds.into_iter().map(entry).collect();
            let before = risk_score(&entries);
            prop_assert!((0.0..=1.0).contains(&before), "{before}");
            entries.push(slash(extra));
            let after = risk_score(&entries);
            prop_assert!((0.0..=1.0).contains(&after), "{after}");
            prop_assert!(after >= before, "{before} -> {after}");
            prop_assert!(after > before || before == 1.0 || after == 1.0 || before == 0.0);
        }
    }
}
