//! Diagnostic: what making a flush round's sessions durable costs per
//! session, written as auditors wrote them before segments (a file per
//! session, `sessions/<id>.log`, then one `syncfs`) against one segment
//! ([`ahv_audit::segments::SegmentWriter::append_round`]: one write, one
//! `fdatasync`).
//!
//! ```text
//! cargo run --release -p ahv-audit --example segment_probe [SESSIONS [DELTAS [ROUNDS [TRIALS]]]]
//! ```
//!
//! Defaults: 100 sessions per round, 6 deltas of 200 bytes each (a session
//! lifecycle's), 40 rounds, 3 trials. Each trial runs both layouts, one
//! after the other, each in a fresh directory under `PROBE_DIR` (default:
//! the system's temporary directory; `/dev/shm` for tmpfs), and prints the
//! median over rounds of the time per session, after checking that every
//! session reads back whole (the probe fails otherwise). The files layout pays for
//! creating a file per session, which on ext4 is dearer right after many
//! files were deleted (`recently_deleted`): the trials alternate so both
//! layouts see the same state of the disk, and the spread between trials
//! shows it.
use std::path::Path;
use std::time::{Duration, Instant};

use ahv_audit::records::{Durability, LogKind, RecordWriter};
use ahv_audit::segments::{
    DEFAULT_MAX_SEGMENT_BYTES, SegmentWriter, SessionAssembler, StagedChunk, list_segments,
    read_segment,
};

/// The staged records of one session: `deltas` bodies of 200 bytes, each
/// behind its `u32` LE length, as the auditor stages them.
fn staged(deltas: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..deltas {
        let mut body = vec![0x01u8];
        body.extend_from_slice(format!("delta {i}").as_bytes());
        body.resize(200, b'.');
        out.extend_from_slice(&200u32.to_le_bytes());
        out.extend_from_slice(&body);
    }
    out
}

/// One round in the auditors' earlier layout: a new file per session,
/// written unsynced, then one `syncfs` for all.
fn files_round(
    dir: &Path,
    ids: &[String],
    staged: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    for id in ids {
        let path = dir.join(format!("{id}.log"));
        let mut w =
            RecordWriter::create_unsynced(&path, LogKind::SESSION_DELTAS, Durability::OnClose)?;
        let mut rest = staged;
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            w.append(&rest[4..4 + len], Duration::ZERO)?;
            rest = &rest[4 + len..];
        }
        w.write_unsynced()?;
        w.close()?;
    }
    let d = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&d)?;
    Ok(())
}

/// Fails unless every session written reads back with all its deltas.
fn check(
    dir: &Path,
    layout: &str,
    sessions: u64,
    deltas: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let counts: Vec<usize> = if layout == "files" {
        let mut counts = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log") {
                counts.push(
                    ahv_audit::read_log(&path, LogKind::SESSION_DELTAS)?
                        .records
                        .len(),
                );
            }
        }
        counts
    } else {
        let mut assembler = SessionAssembler::default();
        let segments = dir.join("segments");
        for (number, path) in list_segments(&segments)? {
            let contents = read_segment(number, &path)?;
            if !contents.is_clean() {
                return Err(
                    format!("segment {} is not clean: {contents:?}", path.display()).into(),
                );
            }
            assembler.add_segment(&contents);
        }
        assembler
            .sessions()
            .values()
            .map(|s| s.records.len())
            .collect()
    };
    if counts.len() as u64 != sessions || counts.iter().any(|&n| n != deltas as usize) {
        return Err(format!(
            "{layout}: {} sessions read back ({sessions} written), record counts {:?}…",
            counts.len(),
            &counts[..counts.len().min(5)]
        )
        .into());
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(i: usize, default: u32) -> Result<u32, Box<dyn std::error::Error>> {
    Ok(match std::env::args().nth(i) {
        Some(a) => a
            .parse()
            .map_err(|e| format!("argument {i} ({a:?}): {e}"))?,
        None => default,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sessions = arg(1, 100)?;
    let deltas = arg(2, 6)?;
    let rounds = arg(3, 40)?;
    let trials = arg(4, 3)?;
    if sessions == 0 || deltas == 0 || rounds == 0 {
        return Err("SESSIONS, DELTAS and ROUNDS must each be at least 1".into());
    }
    let base = std::env::var_os("PROBE_DIR").map_or_else(std::env::temp_dir, Into::into);
    let staged = staged(deltas);
    println!(
        "{sessions} sessions per round, {deltas} deltas of 200 bytes each, {rounds} rounds, in {}",
        base.display()
    );
    for trial in 1..=trials {
        let mut line = format!("trial {trial}:");
        for layout in ["files", "segment"] {
            let tmp = tempfile::tempdir_in(&base)?;
            let mut writer =
                SegmentWriter::open(&tmp.path().join("segments"), DEFAULT_MAX_SEGMENT_BYTES)?;
            let mut per_session = Vec::new();
            for round in 0..rounds {
                let ids: Vec<String> = (0..sessions).map(|s| format!("s-{round}-{s}")).collect();
                let t = Instant::now();
                if layout == "files" {
                    files_round(tmp.path(), &ids, &staged)?;
                } else {
                    let chunks: Vec<StagedChunk<'_>> = ids
                        .iter()
                        .map(|id| StagedChunk {
                            session: id,
                            first_seq: 0,
                            count: deltas,
                            staged: &staged,
                        })
                        .collect();
                    writer.append_round(&chunks, 1, Duration::ZERO)?;
                }
                per_session.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(sessions));
            }
            check(
                tmp.path(),
                layout,
                u64::from(sessions) * u64::from(rounds),
                deltas,
            )?;
            line.push_str(&format!(" {layout} {:.2} µs/session", median(per_session)));
        }
        println!("{line}");
    }
    Ok(())
}
