//! `ahv ledger`: read the liability ledger — what each agent was slashed,
//! quarantined and blamed for, its clean sessions, its risk and what
//! admission does with it — from a state directory's SQLite file or from a
//! database URL (PostgreSQL, shared by several hypervisors).
//!
//! `ahv ledger list` prints one row per agent; `ahv ledger show AGENT`
//! prints its entries, the vouches it gave or got and its quarantine
//! records. Both take `--json`.

use std::path::PathBuf;
use std::time::Duration;

use ahv_core::AgentId;
use ahv_store::{QuarantineRow, TrustStore, VouchRow};
use ahv_trust::{EntryKind, LedgerEntry, risk_score};
use anyhow::Context;
use serde_json::json;

use crate::exit::Exit;
use crate::out::{Failure, outln};

/// `ahv ledger …`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum LedgerCmd {
    /// One row per agent with entries: counts by kind, risk, admission.
    #[command(after_help = crate::exit::help())]
    List(Where),
    /// One agent's entries, vouches and quarantine records, its risk and
    /// what admission does with it.
    #[command(after_help = crate::exit::help())]
    Show(ShowArgs),
}

/// Where the ledger is.
#[derive(clap::Args, Debug)]
pub(crate) struct Where {
    /// The state directory whose `liability.sqlite` to read.
    #[arg(
        long,
        required_unless_present = "database",
        conflicts_with = "database"
    )]
    state_dir: Option<PathBuf>,
    /// A database URL instead: `postgres://USER@HOST/DB`, `sqlite://PATH`.
    #[arg(long)]
    database: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ShowArgs {
    /// The agent's id.
    agent: String,
    #[command(flatten)]
    at: Where,
}

/// Runs `ahv ledger …`.
pub(crate) async fn ledger(cmd: LedgerCmd) -> Result<Exit, Failure> {
    match cmd {
        LedgerCmd::List(w) => list(&w).await,
        LedgerCmd::Show(a) => show(&a).await,
    }
}

fn open(w: &Where) -> Result<std::sync::Arc<dyn TrustStore>, Failure> {
    let url = match (&w.database, &w.state_dir) {
        (Some(url), _) => url.clone(),
        (None, Some(dir)) => {
            let file = dir.join("liability.sqlite");
            if !file.is_file() {
                return Err(Failure::Setup(anyhow::anyhow!(
                    "{} has no ledger ({} does not exist): no hypervisor used it yet",
                    dir.display(),
                    file.display()
                )));
            }
            ahv_store::sqlite_url(dir)
        }
        (None, None) => {
            return Err(Failure::usage(
                "ledger",
                "give --state-dir DIR or --database URL",
            ));
        }
    };
    ahv_store::open(&url)
        .with_context(|| format!("opening the ledger at {}", ahv_store::redact(&url)))
        .map_err(Failure::Setup)
}

fn kind_name(k: &EntryKind) -> &'static str {
    match k {
        EntryKind::Slash { .. } => "slash",
        EntryKind::Quarantine { .. } => "quarantine",
        EntryKind::Fault { .. } => "fault",
        EntryKind::CleanSession => "clean_session",
    }
}

fn severity_of(k: &EntryKind) -> Option<f64> {
    match k {
        EntryKind::Slash { severity }
        | EntryKind::Quarantine { severity }
        | EntryKind::Fault { severity } => Some(severity.get()),
        EntryKind::CleanSession => None,
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time (to the second).
fn time(d: Duration) -> String {
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Summary {
    counts: [usize; 4],
    risk: f64,
}

fn summarize(entries: &[LedgerEntry]) -> Summary {
    let mut counts = [0usize; 4];
    for e in entries {
        let i = match e.kind {
            EntryKind::Slash { .. } => 0,
            EntryKind::Quarantine { .. } => 1,
            EntryKind::Fault { .. } => 2,
            EntryKind::CleanSession => 3,
        };
        counts[i] += 1;
    }
    Summary {
        counts,
        risk: risk_score(entries),
    }
}

fn admission_name(risk: f64) -> &'static str {
    match ahv_trust::Admission::for_risk(risk) {
        ahv_trust::Admission::Admit => "admit",
        ahv_trust::Admission::Probation => "probation",
        ahv_trust::Admission::Deny => "deny",
    }
}

fn store_error(what: String) -> impl FnOnce(ahv_store::StoreError) -> Failure {
    move |e| Failure::Setup(anyhow::anyhow!("{what}: {e}"))
}

async fn list(w: &Where) -> Result<Exit, Failure> {
    let store = open(w)?;
    let agents = store
        .agents()
        .await
        .map_err(store_error("listing the ledger's agents".into()))?;
    let mut rows = Vec::new();
    for agent in &agents {
        let entries = store
            .entries_for(agent)
            .await
            .map_err(store_error(format!("reading the entries of {agent}")))?;
        rows.push((agent.clone(), summarize(&entries)));
    }
    if w.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(a, s)| {
                json!({
                    "agent": a.as_str(),
                    "slashes": s.counts[0],
                    "quarantines": s.counts[1],
                    "faults": s.counts[2],
                    "clean_sessions": s.counts[3],
                    "risk": s.risk,
                    "admission": admission_name(s.risk),
                })
            })
            .collect();
        outln!("{}", json!({ "backend": store.backend(), "agents": list }))?;
        return Ok(Exit::Ok);
    }
    if rows.is_empty() {
        outln!("the ledger ({}) has no entries", store.backend())?;
        return Ok(Exit::Ok);
    }
    outln!(
        "{:<40} {:>7} {:>11} {:>6} {:>6} {:>5}  admission",
        "agent",
        "slashes",
        "quarantines",
        "faults",
        "clean",
        "risk"
    )?;
    for (a, s) in &rows {
        outln!(
            "{:<40} {:>7} {:>11} {:>6} {:>6} {:>5.2}  {}",
            a.as_str(),
            s.counts[0],
            s.counts[1],
            s.counts[2],
            s.counts[3],
            s.risk,
            admission_name(s.risk)
        )?;
    }
    Ok(Exit::Ok)
}

fn vouch_json(v: &VouchRow) -> serde_json::Value {
    json!({
        "session": v.session.as_str(),
        "id": v.id,
        "voucher": v.voucher.as_str(),
        "vouchee": v.vouchee.as_str(),
        "voucher_sigma": v.voucher_sigma,
        "pct": v.pct,
        "bond": v.bond,
        "created_at": time(v.created_at),
        "released_at": v.released_at.map(time),
        "released_because": v.released_because,
    })
}

fn quarantine_json(q: &QuarantineRow) -> serde_json::Value {
    json!({
        "session": q.session.as_str(),
        "reason": q.reason.as_str(),
        "last_reason": q.last_reason.as_str(),
        "started_at": time(q.started_at),
        "ends_at": q.ends_at.map(time),
        "escalations": q.escalations,
        "released_at": q.released_at.map(time),
        "released_because": q.released_because,
    })
}

async fn show(args: &ShowArgs) -> Result<Exit, Failure> {
    let agent = AgentId::new(args.agent.as_str())
        .map_err(|e| Failure::usage("ledger", format!("agent id {:?}: {e}", args.agent)))?;
    let store = open(&args.at)?;
    let entries = store
        .entries_for(&agent)
        .await
        .map_err(store_error(format!("reading the entries of {agent}")))?;
    let vouches = store
        .vouches(Some(&agent))
        .await
        .map_err(store_error(format!("reading the vouches of {agent}")))?;
    let quarantines = store
        .quarantines(Some(&agent))
        .await
        .map_err(store_error(format!("reading the quarantines of {agent}")))?;
    let s = summarize(&entries);
    if args.at.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "kind": kind_name(&e.kind),
                    "severity": severity_of(&e.kind),
                    "risk": e.kind.risk_contribution(),
                    "at": time(e.at),
                })
            })
            .collect();
        outln!(
            "{}",
            json!({
                "agent": agent.as_str(),
                "backend": store.backend(),
                "risk": s.risk,
                "admission": admission_name(s.risk),
                "entries": list,
                "vouches": vouches.iter().map(vouch_json).collect::<Vec<_>>(),
                "quarantines": quarantines.iter().map(quarantine_json).collect::<Vec<_>>(),
            })
        )?;
        return Ok(Exit::Ok);
    }
    outln!(
        "agent {agent}: risk {:.2}, admission {} ({} entries in {})",
        s.risk,
        admission_name(s.risk),
        entries.len(),
        store.backend()
    )?;
    for e in &entries {
        let sev = severity_of(&e.kind).map_or(String::new(), |v| format!(" severity {v:.2}"));
        outln!(
            "  {}  {:<13}{sev}  ({:+.3})",
            time(e.at),
            kind_name(&e.kind),
            e.kind.risk_contribution()
        )?;
    }
    for v in &vouches {
        let state = match (&v.released_at, &v.released_because) {
            (Some(at), why) => format!(
                "released {} ({})",
                time(*at),
                why.as_deref().unwrap_or("released")
            ),
            (None, _) => "active".into(),
        };
        outln!(
            "  vouch {} in {}: {} backs {} with {:.2} — {state}",
            v.id,
            v.session,
            v.voucher,
            v.vouchee,
            v.bond
        )?;
    }
    for q in &quarantines {
        let ends = q.ends_at.map_or("until released".to_string(), time);
        let released = q
            .released_at
            .map(|at| {
                format!(
                    ", released {} ({})",
                    time(at),
                    q.released_because.as_deref().unwrap_or("released")
                )
            })
            .unwrap_or_default();
        outln!(
            "  quarantine in {}: {} (last {}), {} escalation(s), from {} to {ends}{released}",
            q.session,
            q.reason,
            q.last_reason,
            q.escalations,
            time(q.started_at)
        )?;
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(Duration::ZERO), "1970-01-01T00:00:00Z");
        assert_eq!(
            time(Duration::from_secs(1_796_169_600)),
            "2026-12-02T00:00:00Z"
        );
        assert_eq!(
            time(Duration::from_secs(951_782_400 + 3_661)),
            "2000-02-29T01:01:01Z",
            "a leap day"
        );
    }
}
