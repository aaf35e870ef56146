//! `ahv audit`: verify, show and prove from a state directory's audit log,
//! offline (no hypervisor running, no network).

use std::path::{Path, PathBuf};

use ahv_audit::commitment::{Commitment, PRUNED_TAG, decode_pruned};
use ahv_audit::verify::{AuditProof, verify_dir};
use ahv_audit::{Delta, LogKind, PublicKey, prove, read_log};
use anyhow::{Context, bail};

use crate::exit::Exit;
use crate::out::{Failure, errln, outln, write_out_bytes};

/// How `ahv audit verify` ends when verification fails.
pub(crate) const EXIT_TAMPERED: Exit = Exit::Failed;

/// The `ahv audit` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum AuditCmd {
    /// Re-derive every session's hash chain and Merkle root from the files and
    /// check them against the signed commitments; print `ok` per session or
    /// exactly what is wrong. Exits 1 on any failure.
    #[command(
        after_help = crate::exit::help(),
        group(clap::ArgGroup::new("what").required(true).args(["state_dir", "proof"]))
    )]
    Verify {
        /// The state directory (or its `audit` folder). Not with --proof.
        state_dir: Option<PathBuf>,
        /// Only this session.
        #[arg(long, value_parser = parse_session)]
        session: Option<String>,
        /// The hypervisor's public key (hex), pinned. Default: the directory's
        /// own `audit/public-key`, which someone able to rewrite the directory
        /// could also replace.
        #[arg(long, value_parser = parse_key)]
        public_key: Option<PublicKey>,
        /// Check an inclusion proof made by `ahv audit prove` instead, offline:
        /// needs only the proof and --public-key.
        #[arg(long, conflicts_with = "session", requires = "public_key")]
        proof: Option<PathBuf>,
        /// Print the report as JSON (`ok`, the commitment log, one entry per
        /// session with its problems, notes); the exit code is the same.
        #[arg(long, conflicts_with = "proof")]
        json: bool,
    },
    /// Print a session's deltas, one per line.
    #[command(after_help = crate::exit::help())]
    Show {
        /// The state directory (or its `audit` folder).
        state_dir: PathBuf,
        /// The session.
        #[arg(long, value_parser = parse_session)]
        session: String,
    },
    /// Write an inclusion proof of one delta (JSON) that `ahv audit verify
    /// --proof` checks with only the public key.
    #[command(after_help = crate::exit::help())]
    Prove {
        /// The state directory (or its `audit` folder).
        state_dir: PathBuf,
        /// The session.
        #[arg(long, value_parser = parse_session)]
        session: String,
        /// The delta's sequence number (0 for the first).
        #[arg(long)]
        seq: u64,
        /// Write the proof here instead of to stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Retention: replace the delta bodies of sealed sessions by their leaf
    /// hashes, so their commitments still verify but the contents are gone.
    /// Refused while a hypervisor has the directory open (configure
    /// `AuditConfig::retention` there instead).
    #[command(
        after_help = crate::exit::help(),
        group(clap::ArgGroup::new("which").required(true).args(["older_than", "session"]))
    )]
    Prune {
        /// The state directory (or its `audit` folder).
        state_dir: PathBuf,
        /// Every session sealed longer ago than this: a number and a unit,
        /// `s`, `m`, `h` or `d` (e.g. `30d`).
        #[arg(long, value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Only this (sealed) session, whatever its age.
        #[arg(long, value_parser = parse_session)]
        session: Option<String>,
    },
}

/// Parses an age like `90s`, `15m`, `12h` or `30d`.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?}: expected a number and a unit s, m, h or d (e.g. 30d)");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(bad()),
    };
    seconds
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

/// The audit folder: `dir/audit` if it exists, else `dir` itself.
fn audit_folder(dir: &Path) -> PathBuf {
    let inner = dir.join("audit");
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

/// Parses a pinned public key (64 hex digits).
fn parse_key(text: &str) -> Result<PublicKey, String> {
    PublicKey::from_hex(text.trim()).map_err(|e| e.to_string())
}

/// Validates a session id: a name that is not one could point outside the directory.
fn parse_session(text: &str) -> Result<String, String> {
    ahv_core::SessionId::new(text)
        .map(|s| s.as_str().to_string())
        .map_err(|e| e.to_string())
}

pub(crate) fn audit(cmd: AuditCmd) -> Result<Exit, Failure> {
    match cmd {
        AuditCmd::Verify {
            state_dir,
            session,
            public_key,
            proof,
            json,
        } => {
            if let Some(file) = proof {
                let Some(key) = public_key else {
                    // clap's `requires` makes this unreachable from the command line.
                    return Err(Failure::usage("audit", "--proof needs --public-key"));
                };
                return verify_proof(&file, &key);
            }
            let Some(dir) = state_dir else {
                return Err(Failure::usage(
                    "audit",
                    "give a state directory (or --proof FILE)",
                ));
            };
            let report = verify_dir(&audit_folder(&dir), session.as_deref(), public_key.as_ref())
                .context("verifying")?;
            if json {
                outln!("{}", report.to_json())?;
            } else {
                write_out_bytes(report.to_string().as_bytes())?;
            }
            Ok(if report.ok() { Exit::Ok } else { EXIT_TAMPERED })
        }
        AuditCmd::Show { state_dir, session } => {
            let text = show(&audit_folder(&state_dir), &session)?;
            write_out_bytes(text.as_bytes())?;
            Ok(Exit::Ok)
        }
        AuditCmd::Prove {
            state_dir,
            session,
            seq,
            out,
        } => {
            let p = prove(&audit_folder(&state_dir), &session, seq, None)
                .with_context(|| format!("proving delta #{seq} of session {session}"))?;
            let json = serde_json::to_string_pretty(&p).context("encoding the proof")?;
            match out {
                Some(path) => {
                    std::fs::write(&path, json + "\n")
                        .with_context(|| format!("writing {}", path.display()))?;
                    errln!("wrote {}", path.display());
                }
                None => outln!("{json}")?,
            }
            Ok(Exit::Ok)
        }
        AuditCmd::Prune {
            state_dir,
            older_than,
            session,
        } => {
            let text = prune(&audit_folder(&state_dir), older_than, session)?;
            write_out_bytes(text.as_bytes())?;
            Ok(Exit::Ok)
        }
    }
}

/// One line of `prune`'s report for a log recovery left unsealed: the path
/// once, whether or not the error names it already.
fn damaged_line(path: &Path, e: &ahv_audit::AuditError) -> String {
    let (path, e) = (path.display().to_string(), e.to_string());
    if e.contains(&path) {
        format!("damaged, not sealed: {e}\n")
    } else {
        format!("damaged, not sealed: {path} ({e})\n")
    }
}

/// Checks a proof file against a pinned key. A file that is not a proof is
/// a failed verification, like a proof that does not check out.
fn verify_proof(file: &Path, key: &PublicKey) -> Result<Exit, Failure> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Failure::usage(
            "audit",
            format!("--proof {}: cannot read: {e}", file.display()),
        )
    })?;
    let p: AuditProof = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            outln!(
                "proof FAILED: {} is not an audit proof: {e}",
                file.display()
            )?;
            return Ok(EXIT_TAMPERED);
        }
    };
    match p.verify(key) {
        Ok(d) => {
            outln!(
                "proof ok: delta #{} of session {} is in its signed commitment",
                d.seq,
                d.session
            )?;
            outln!("  {d}")?;
            Ok(Exit::Ok)
        }
        Err(e) => {
            outln!("proof FAILED: {e}")?;
            Ok(EXIT_TAMPERED)
        }
    }
}

/// Opens the audit directory as its one writer (refused while a hypervisor
/// has it) and prunes; returns what to print.
fn prune(
    dir: &Path,
    older_than: Option<std::time::Duration>,
    session: Option<String>,
) -> anyhow::Result<String> {
    use std::sync::Arc;
    if !ahv_audit::auditor::commitments_path(dir).exists() {
        bail!(
            "{}: not an audit directory (no commitments.log)",
            dir.display()
        );
    }
    let (auditor, report) = ahv_audit::Auditor::open(
        dir,
        ahv_audit::AuditConfig::default(),
        Arc::new(ahv_core::SystemClock::default()),
        Arc::new(ahv_audit::SystemWallClock),
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    let mut out = String::new();
    for (session, n) in &report.sealed_on_recovery {
        out += &format!("sealed session {session} ({n} delta(s)), left open by a crash\n");
    }
    for (path, e) in &report.damaged {
        out += &damaged_line(path, e);
    }
    for (path, offset, n) in &report.uncommitted {
        out += &format!(
            "{}: {n} record(s) from offset {offset} were never acknowledged (a crash inside a round); kept as evidence\n",
            path.display()
        );
    }
    if let Some(why) = &report.retention_mark_ignored {
        out += &format!("retention mark ignored ({why}): walking every commitment\n");
    }
    match (older_than, session) {
        (_, Some(s)) => {
            let n = auditor
                .prune(&s)
                .with_context(|| format!("pruning session {s}"))?;
            out += &format!(
                "session {s}: {n} delta(s) pruned to their leaf hashes; its commitment still verifies\n"
            );
        }
        (Some(age), None) => {
            let n = auditor.apply_retention(age)?;
            out += &format!(
                "{n} session(s) sealed more than {}s ago pruned\n",
                age.as_secs()
            );
        }
        (None, None) => bail!("give --older-than AGE or --session ID"),
    }
    auditor.close()?;
    Ok(out)
}

/// The readable form of a session's log.
fn show(dir: &Path, session: &str) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut o = String::new();
    // A name that is not a session id could point outside the directory.
    ahv_core::SessionId::new(session).with_context(|| format!("--session {session:?}"))?;
    // Its own file (written before segments), then its chunks in the
    // segments.
    let path = ahv_audit::auditor::session_log_path(dir, session);
    let rec = if std::fs::symlink_metadata(&path).is_ok() {
        Some(
            read_log(&path, LogKind::SESSION_DELTAS)
                .with_context(|| format!("session {session}"))?,
        )
    } else {
        None
    };
    let segments = ahv_audit::segments::segments_dir(dir);
    let chunks = ahv_audit::segments::session_records(&segments, session)
        .with_context(|| format!("session {session}: {}", segments.display()))?;
    if rec.is_none() && chunks.records.records.is_empty() {
        bail!(
            "session {session}: no records, neither in {} nor in {}",
            path.display(),
            segments.display()
        );
    }
    let records: Vec<(Option<u64>, &ahv_audit::Record)> = rec
        .iter()
        .flat_map(|r| r.records.iter().map(|r| (None, r)))
        .chain(
            chunks
                .records
                .records
                .iter()
                .map(|l| (Some(l.segment), &l.record)),
        )
        .collect();
    // Streamed: the commitment log holds every session ever sealed. An
    // unreadable log shows the session as not sealed (`verify` says why).
    let (mut sealed, mut i) = (None, 0u64);
    let _ = ahv_audit::records::scan_log(
        ahv_audit::auditor::commitments_path(dir),
        LogKind::COMMITMENTS,
        0,
        |r| {
            if let Ok(c) = Commitment::decode(&r.body)
                && c.session == session
            {
                sealed = Some((i, c));
                return false;
            }
            i += 1;
            true
        },
    );
    let place = match (&rec, chunks.records.records.is_empty()) {
        (Some(_), true) => path.display().to_string(),
        (Some(_), false) => format!("{} and {}", path.display(), segments.display()),
        (None, _) => segments.display().to_string(),
    };
    writeln!(
        o,
        "session {session}: {} delta(s) in {place}",
        records.len()
    )?;
    match &sealed {
        Some((i, c)) => writeln!(
            o,
            "sealed by commitment #{i}: {} delta(s), root {}",
            c.tree_size, c.root
        ),
        None => writeln!(o, "not sealed"),
    }?;
    for (pos, (segment, r)) in records.iter().enumerate() {
        let at = match segment {
            Some(n) => format!("segment {n}, offset {}", r.offset),
            None => format!("offset {}", r.offset),
        };
        if r.body.first() == Some(&PRUNED_TAG) {
            match decode_pruned(&r.body) {
                Ok((seq, leaf)) => writeln!(o, "#{seq} (pruned; leaf {leaf})"),
                Err(e) => writeln!(o, "record {pos}: {e}"),
            }?;
            continue;
        }
        match Delta::decode(&r.body) {
            Ok(d) => writeln!(o, "{d}"),
            Err(e) => writeln!(o, "record {pos} ({at}): undecodable: {e}"),
        }?;
    }
    if let Some(rec) = &rec {
        for c in &rec.corrupt {
            writeln!(o, "damaged record at offset {} (checksum)", c.offset)?;
        }
        if let Some(t) = &rec.tail {
            writeln!(
                o,
                "torn tail at offset {}: {} byte(s), {:?}",
                t.offset, t.len, t.reason
            )?;
        }
    }
    for p in &chunks.records.problems {
        writeln!(o, "in the segments: {p:?}")?;
    }
    if !chunks.unclean_segments.is_empty() {
        writeln!(
            o,
            "segments with damaged or unfinished rounds (`ahv audit verify` names them): {:?}",
            chunks.unclean_segments
        )?;
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ahv_audit::{AuditConfig, Auditor, Durability, SystemWallClock, rewrite_log};
    use ahv_core::{AgentId, EventBus, EventPayload, SessionId, SystemClock, TraceId};

    use super::*;

    /// A state directory with one sealed, signed session of 4 deltas.
    fn state() -> (tempfile::TempDir, String) {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(SystemClock::default());
        let config = AuditConfig {
            durability: Durability::EveryRecord,
            ..AuditConfig::default()
        };
        let (auditor, _) = Auditor::open(
            &tmp.path().join("audit"),
            config,
            clock.clone(),
            Arc::new(SystemWallClock),
        )
        .unwrap();
        let bus = Arc::new(EventBus::new(100, clock));
        auditor.attach(&bus);
        let s = SessionId::new("s-cli").unwrap();
        for v in 1..=4 {
            bus.emit(
                Some(&s),
                Some(&AgentId::new("did:ex:a").unwrap()),
                TraceId(1),
                None,
                EventPayload::StateWrite {
                    key: "k".into(),
                    version: v,
                },
            );
        }
        auditor.seal(&s).unwrap();
        auditor.close().unwrap();
        (tmp, auditor.public_key().to_hex())
    }

    fn verify(dir: &Path, key: &str) -> Exit {
        audit(AuditCmd::Verify {
            state_dir: Some(dir.to_path_buf()),
            session: None,
            public_key: Some(parse_key(key).unwrap()),
            proof: None,
            json: false,
        })
        .unwrap()
    }

    #[test]
    fn verify_exits_0_when_clean_and_1_when_a_delta_is_removed() {
        let (tmp, key) = state();
        assert_eq!(verify(tmp.path(), &key), Exit::Ok);
        // The session's second delta taken out of its segment.
        let segments = ahv_audit::segments::segments_dir(&tmp.path().join("audit"));
        let log = ahv_audit::segments::segment_path(&segments, 1);
        let mut bodies: Vec<Vec<u8>> = read_log(&log, LogKind::SEGMENT)
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.body)
            .collect();
        let deltas: Vec<usize> = (0..bodies.len())
            .filter(|&i| ahv_audit::Delta::decode(&bodies[i]).is_ok())
            .collect();
        bodies.remove(deltas[1]);
        rewrite_log(&log, LogKind::SEGMENT, &bodies).unwrap();
        assert_eq!(verify(tmp.path(), &key), EXIT_TAMPERED);
    }

    #[test]
    fn a_proof_written_by_prove_verifies_with_the_key_alone() {
        let (tmp, key) = state();
        let out = tmp.path().join("p.json");
        let code = audit(AuditCmd::Prove {
            state_dir: tmp.path().to_path_buf(),
            session: "s-cli".into(),
            seq: 2,
            out: Some(out.clone()),
        })
        .unwrap();
        assert_eq!(code, Exit::Ok);
        std::fs::remove_dir_all(tmp.path().join("audit")).unwrap();
        let check = |key: &str| {
            audit(AuditCmd::Verify {
                state_dir: None,
                session: None,
                public_key: Some(parse_key(key).unwrap()),
                proof: Some(out.clone()),
                json: false,
            })
            .unwrap()
        };
        assert_eq!(
            check(&key),
            Exit::Ok,
            "offline: the audit directory is gone"
        );
        let other = ahv_audit::HypervisorKey::from_seed([1; 32])
            .public_key()
            .to_hex();
        assert_eq!(check(&other), EXIT_TAMPERED);
        let text = show_missing(tmp.path());
        assert!(text.contains("s-cli"), "{text}");
    }

    #[test]
    fn a_damaged_log_is_named_once_in_prunes_report() {
        let path = Path::new("/state/audit/segments/00000000000000000003.seg");
        let round = ahv_audit::AuditError::DamagedRound {
            path: path.to_path_buf(),
            offset: 77,
            reason: "a record's checksum".into(),
        };
        let line = damaged_line(path, &round);
        assert_eq!(
            line.matches("00000000000000000003.seg").count(),
            1,
            "{line}"
        );
        assert!(line.contains("offset 77"), "{line}");
        let other = ahv_audit::AuditError::AlreadySealed("s-x".into());
        let line = damaged_line(path, &other);
        assert!(
            line.contains("00000000000000000003.seg") && line.contains("s-x"),
            "{line}"
        );
    }

    #[test]
    fn prune_keeps_young_sessions_prunes_a_named_one_and_verify_still_passes() {
        let (tmp, key) = state();
        let out = prune(
            &tmp.path().join("audit"),
            Some(parse_age("1h").unwrap()),
            None,
        )
        .unwrap();
        assert!(
            out.contains("0 session(s) sealed more than 3600s ago pruned"),
            "{out}"
        );
        let out = prune(&tmp.path().join("audit"), None, Some("s-cli".into())).unwrap();
        assert!(out.contains("session s-cli: 4 delta(s) pruned"), "{out}");
        let text = show(&tmp.path().join("audit"), "s-cli").unwrap();
        assert_eq!(text.matches("(pruned; leaf").count(), 4, "{text}");
        assert!(
            text.contains("sealed by commitment #0: 4 delta(s)"),
            "{text}"
        );
        assert_eq!(verify(tmp.path(), &key), Exit::Ok);
        // Pruning twice changes nothing.
        let out = prune(&tmp.path().join("audit"), None, Some("s-cli".into())).unwrap();
        assert!(out.contains("s-cli: 0 delta(s)"), "{out}");
    }

    #[test]
    fn prune_is_refused_while_the_directory_is_open_elsewhere() {
        let (tmp, _) = state();
        let dir = tmp.path().join("audit");
        let clock = Arc::new(SystemClock::default());
        let (_open, _) = Auditor::open(
            &dir,
            AuditConfig::default(),
            clock,
            Arc::new(SystemWallClock),
        )
        .unwrap();
        let err = format!("{:#}", prune(&dir, None, Some("s-cli".into())).unwrap_err());
        assert!(err.contains("another process"), "{err}");
        let err = format!(
            "{:#}",
            prune(tmp.path(), None, Some("s-cli".into())).unwrap_err()
        );
        assert!(err.contains("not an audit directory"), "{err}");
    }

    #[test]
    fn ages_need_a_number_and_a_unit() {
        assert_eq!(parse_age("90s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_age("15m"), Ok(std::time::Duration::from_secs(900)));
        assert_eq!(parse_age("2h"), Ok(std::time::Duration::from_secs(7200)));
        assert_eq!(
            parse_age("30d"),
            Ok(std::time::Duration::from_secs(2_592_000))
        );
        for bad in ["", "30", "d", "3x", "-1d", "1.5h", "30 d"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_age("99999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn show_refuses_a_session_name_that_is_a_path() {
        let (tmp, _) = state();
        let err = format!(
            "{:#}",
            show(&tmp.path().join("audit"), "../audit/sessions/s-cli").unwrap_err()
        );
        assert!(
            err.contains("--session \"../audit/sessions/s-cli\""),
            "{err}"
        );
        assert!(
            err.contains("not allowed") || err.contains("character"),
            "{err}"
        );
    }

    fn show_missing(dir: &Path) -> String {
        format!("{:#}", show(dir, "s-cli").unwrap_err())
    }
}
