//! The records a store keeps besides ledger entries, and the checks both
//! directions go through: what may be written (times and ids within the
//! 64-bit columns, finite numbers) and what a row read back must hold.

use std::time::Duration;

use ahv_core::{AgentId, SessionId};
use ahv_trust::{EntryKind, LedgerEntry, QuarantineReason, Severity};

use crate::StoreError;

/// One vouch (ahv-trust's `Vouch`) with its lifetime, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct VouchRow {
    /// The session it belongs to.
    pub session: SessionId,
    /// Its id within the session (ahv-trust's `VouchId`).
    pub id: u64,
    /// Who vouched.
    pub voucher: AgentId,
    /// For whom.
    pub vouchee: AgentId,
    /// The voucher's σ when it vouched.
    pub voucher_sigma: f64,
    /// The share of σ bonded.
    pub pct: f64,
    /// The bond.
    pub bond: f64,
    /// When it was made (wall time since the Unix epoch).
    pub created_at: Duration,
    /// When it was released, if it was.
    pub released_at: Option<Duration>,
    /// Why it was released (slash, session end, …).
    pub released_because: Option<String>,
}

/// One quarantine (ahv-trust's `QuarantineRecord`) with its lifetime, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    /// The session it happened in.
    pub session: SessionId,
    /// The agent held.
    pub agent: AgentId,
    /// Why it was first quarantined.
    pub reason: QuarantineReason,
    /// Why it was last quarantined.
    pub last_reason: QuarantineReason,
    /// When it started (wall time since the Unix epoch).
    pub started_at: Duration,
    /// When it ends; `None`: until released.
    pub ends_at: Option<Duration>,
    /// How many times it was escalated.
    pub escalations: u32,
    /// When it was released, if it was.
    pub released_at: Option<Duration>,
    /// Why it was released (expiry, operator, …).
    pub released_because: Option<String>,
}

pub(crate) const LEDGER: &str = "ledger_entries";
pub(crate) const VOUCHES: &str = "vouches";
pub(crate) const QUARANTINES: &str = "quarantines";

/// A time as stored: whole microseconds.
pub(crate) fn micros(
    table: &'static str,
    column: &'static str,
    d: Duration,
) -> Result<i64, StoreError> {
    i64::try_from(d.as_micros()).map_err(|_| StoreError::Unstorable {
        table,
        column,
        value: format!("{d:?}"),
        reason: "later than 2^63 microseconds after the epoch",
    })
}

pub(crate) fn opt_micros(
    table: &'static str,
    column: &'static str,
    d: Option<Duration>,
) -> Result<Option<i64>, StoreError> {
    d.map(|d| micros(table, column, d)).transpose()
}

/// A time floored to what the columns keep, so every backend hands back
/// what the SQL ones would.
pub(crate) fn floor_micros(d: Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn finite(table: &'static str, column: &'static str, x: f64) -> Result<f64, StoreError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(StoreError::Unstorable {
            table,
            column,
            value: x.to_string(),
            reason: "not a finite number",
        })
    }
}

/// A vouch id as stored.
pub(crate) fn vouch_id(id: u64) -> Result<i64, StoreError> {
    i64::try_from(id).map_err(|_| StoreError::Unstorable {
        table: VOUCHES,
        column: "id",
        value: id.to_string(),
        reason: "larger than 2^63 - 1",
    })
}

/// The wire name of an entry kind and its severity (none for a clean session).
pub(crate) fn kind_columns(kind: EntryKind) -> (&'static str, Option<f64>) {
    match kind {
        EntryKind::Slash { severity } => ("slash", Some(severity.get())),
        EntryKind::Quarantine { severity } => ("quarantine", Some(severity.get())),
        EntryKind::Fault { severity } => ("fault", Some(severity.get())),
        EntryKind::CleanSession => ("clean_session", None),
    }
}

/// Checks an entry can be stored and returns it as it will read back.
pub(crate) fn normalize_entry(entry: LedgerEntry) -> Result<LedgerEntry, StoreError> {
    micros(LEDGER, "at_us", entry.at)?;
    Ok(LedgerEntry {
        at: floor_micros(entry.at),
        ..entry
    })
}

/// Checks a vouch can be stored and returns it as it will read back.
pub(crate) fn normalize_vouch(row: VouchRow) -> Result<VouchRow, StoreError> {
    vouch_id(row.id)?;
    finite(VOUCHES, "voucher_sigma", row.voucher_sigma)?;
    finite(VOUCHES, "pct", row.pct)?;
    finite(VOUCHES, "bond", row.bond)?;
    micros(VOUCHES, "created_at_us", row.created_at)?;
    opt_micros(VOUCHES, "released_at_us", row.released_at)?;
    Ok(VouchRow {
        created_at: floor_micros(row.created_at),
        released_at: row.released_at.map(floor_micros),
        ..row
    })
}

/// Checks a quarantine can be stored and returns it as it will read back.
pub(crate) fn normalize_quarantine(row: QuarantineRow) -> Result<QuarantineRow, StoreError> {
    micros(QUARANTINES, "started_at_us", row.started_at)?;
    opt_micros(QUARANTINES, "ends_at_us", row.ends_at)?;
    opt_micros(QUARANTINES, "released_at_us", row.released_at)?;
    Ok(QuarantineRow {
        started_at: floor_micros(row.started_at),
        ends_at: row.ends_at.map(floor_micros),
        released_at: row.released_at.map(floor_micros),
        ..row
    })
}

fn corrupt(
    table: &'static str,
    column: &'static str,
    value: impl std::fmt::Display,
    reason: impl std::fmt::Display,
) -> StoreError {
    StoreError::CorruptRow {
        table,
        column,
        value: value.to_string().chars().take(64).collect(),
        reason: reason.to_string(),
    }
}

pub(crate) fn read_agent(
    table: &'static str,
    column: &'static str,
    text: String,
) -> Result<AgentId, StoreError> {
    AgentId::new(text.clone()).map_err(|e| corrupt(table, column, text, e))
}

pub(crate) fn read_session(
    table: &'static str,
    column: &'static str,
    text: String,
) -> Result<SessionId, StoreError> {
    SessionId::new(text.clone()).map_err(|e| corrupt(table, column, text, e))
}

pub(crate) fn read_time(
    table: &'static str,
    column: &'static str,
    us: i64,
) -> Result<Duration, StoreError> {
    u64::try_from(us)
        .map(Duration::from_micros)
        .map_err(|_| corrupt(table, column, us, "a time before the Unix epoch"))
}

pub(crate) fn read_opt_time(
    table: &'static str,
    column: &'static str,
    us: Option<i64>,
) -> Result<Option<Duration>, StoreError> {
    us.map(|us| read_time(table, column, us)).transpose()
}

pub(crate) fn read_reason(
    table: &'static str,
    column: &'static str,
    text: String,
) -> Result<QuarantineReason, StoreError> {
    text.parse().map_err(|e| corrupt(table, column, &text, e))
}

pub(crate) fn read_finite(
    table: &'static str,
    column: &'static str,
    x: f64,
) -> Result<f64, StoreError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(corrupt(table, column, x, "not a finite number"))
    }
}

pub(crate) fn read_vouch_id(id: i64) -> Result<u64, StoreError> {
    u64::try_from(id).map_err(|_| corrupt(VOUCHES, "id", id, "a negative vouch id"))
}

pub(crate) fn read_escalations(n: i64) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| corrupt(QUARANTINES, "escalations", n, "not a count in 0..2^32"))
}

/// An entry kind from its wire name and severity column.
pub(crate) fn read_kind(kind: String, severity: Option<f64>) -> Result<EntryKind, StoreError> {
    let graded = || -> Result<Severity, StoreError> {
        let s = severity
            .ok_or_else(|| corrupt(LEDGER, "severity", "NULL", format!("a {kind} needs one")))?;
        Severity::new(s).map_err(|e| corrupt(LEDGER, "severity", s, e))
    };
    match kind.as_str() {
        "slash" => Ok(EntryKind::Slash {
            severity: graded()?,
        }),
        "quarantine" => Ok(EntryKind::Quarantine {
            severity: graded()?,
        }),
        "fault" => Ok(EntryKind::Fault {
            severity: graded()?,
        }),
        "clean_session" => match severity {
            None => Ok(EntryKind::CleanSession),
            Some(s) => Err(corrupt(LEDGER, "severity", s, "a clean session has none")),
        },
        _ => Err(corrupt(
            LEDGER,
            "kind",
            &kind,
            "expected slash, quarantine, fault or clean_session",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_floored_to_microseconds() {
        let d = Duration::new(5, 1_234_567);
        assert_eq!(floor_micros(d), Duration::new(5, 1_234_000));
        assert_eq!(micros(LEDGER, "at_us", d).unwrap(), 5_001_234);
    }

    #[test]
    fn times_past_the_column_range_are_unstorable() {
        let err = micros(LEDGER, "at_us", Duration::MAX).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Unstorable {
                    column: "at_us",
                    ..
                }
            ),
            "{err}"
        );
        assert!(vouch_id(u64::MAX).is_err());
        assert_eq!(vouch_id(7).unwrap(), 7);
    }

    #[test]
    fn negative_times_ids_and_counts_read_back_as_corrupt() {
        assert!(matches!(
            read_time(VOUCHES, "created_at_us", -1).unwrap_err(),
            StoreError::CorruptRow {
                column: "created_at_us",
                ..
            }
        ));
        assert!(read_vouch_id(-3).is_err());
        assert!(read_escalations(-1).is_err());
        assert!(read_escalations(i64::from(u32::MAX) + 1).is_err());
        assert_eq!(read_escalations(3).unwrap(), 3);
    }

    #[test]
    fn kinds_and_severities_are_checked_together() {
        assert_eq!(
            read_kind("slash".into(), Some(0.5)).unwrap(),
            EntryKind::Slash {
                severity: Severity::new(0.5).unwrap()
            }
        );
        assert_eq!(
            read_kind("clean_session".into(), None).unwrap(),
            EntryKind::CleanSession
        );
        for (kind, sev, column) in [
            ("slash", None, "severity"),
            ("fault", Some(1.5), "severity"),
            ("fault", Some(f64::NAN), "severity"),
            ("clean_session", Some(0.1), "severity"),
            ("bribe", Some(0.1), "kind"),
        ] {
            let err = read_kind(kind.into(), sev).unwrap_err();
            assert!(
                matches!(err, StoreError::CorruptRow { table: LEDGER, column: c, .. } if c == column),
                "{kind} {sev:?}: {err}"
            );
        }
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        let sev = Severity::new(0.25).unwrap();
        for kind in [
            EntryKind::Slash { severity: sev },
            EntryKind::Quarantine { severity: sev },
            EntryKind::Fault { severity: sev },
            EntryKind::CleanSession,
        ] {
            let (name, severity) = kind_columns(kind);
            assert_eq!(read_kind(name.to_owned(), severity).unwrap(), kind);
        }
    }
}
