//! Diagnostic: what a retention pass costs while one session stays open.
//!
//! ```text
//! cargo run --release -p ahv-audit --example retention_probe [PASSES [SESSIONS [SEGMENT_KIB]]]
//! ```
//!
//! One session is opened first and left open: its first segment cannot be
//! pruned whole while it lives. Then, `PASSES` times (default 40): `SESSIONS`
//! sessions (default 2,000) each record 6 deltas and are sealed, the wall
//! clock moves on an hour, and a retention pass (keep: one hour) prunes the
//! sessions of the batch before. Segments are `SEGMENT_KIB` KiB (default
//! 1,024), so the directory grows by a few segments per pass. Prints the
//! time of the first and last passes, the median, and how many segments
//! there were by the end; the probe fails if a pass prunes a different
//! number of sessions than its batch, or if `verify_dir` afterwards finds a
//! problem or another number of sessions pruned. `PROBE_DIR` picks the parent
//! directory (default: the system's temporary directory).
//!
//! A pass that reads only the segments its sessions were written to takes
//! about the same time at the end as at the start; one that reads every
//! segment from the open session's first grows with the directory.
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_audit::signing::FakeWallClock;
use ahv_audit::{AuditConfig, Auditor};
use ahv_core::{AgentId, EventBus, FakeClock, SessionId};

#[path = "common/probe.rs"]
mod probe;
use probe::{arg, emit_write, probe_dir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let passes = arg(1, 40);
    let sessions = arg(2, 2_000);
    let segment_kib = arg(3, 1_024);
    let (_tmp, dir) = probe_dir()?;
    let hour_ms = 3_600_000;
    let mut now_ms = 1_700_000_000_000;
    let wall = FakeWallClock::new(now_ms);
    let clock = Arc::new(FakeClock::new());
    let (auditor, _) = Auditor::open(
        &dir,
        AuditConfig {
            max_segment_bytes: segment_kib << 10,
            ..AuditConfig::default()
        },
        clock.clone(),
        Arc::new(wall.clone()),
    )?;
    let bus = Arc::new(EventBus::new(1024, clock));
    auditor.attach(&bus);
    let agent = AgentId::new("did:ex:writer")?;
    let emit = |s: &SessionId, i: u64| emit_write(&bus, s, &agent, i);
    let open = SessionId::new("s-left-open")?;
    emit(&open, 0);
    auditor.flush()?;
    let mut times = Vec::new();
    let mut number = 0u64;
    for pass in 0..passes {
        for _ in 0..sessions {
            let s = SessionId::new(format!("s-{number}"))?;
            number += 1;
            for i in 0..6 {
                emit(&s, i);
            }
            auditor.seal(&s)?;
        }
        auditor.flush()?;
        now_ms += hour_ms;
        wall.set(now_ms);
        let t = Instant::now();
        let pruned = auditor.apply_retention(Duration::from_secs(3600))?;
        times.push(t.elapsed());
        // The first pass finds nothing an hour old yet.
        let expected = if pass == 0 { 0 } else { sessions };
        if pruned != expected {
            return Err(format!("pass {pass} pruned {pruned} sessions, not {expected}").into());
        }
    }
    let segments = std::fs::read_dir(ahv_audit::segments::segments_dir(&dir))?.count();
    // The first pass pruned nothing.
    let pruning = &times[1.min(times.len())..];
    let mut sorted = pruning.to_vec();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    println!(
        "{} passes of {sessions} sessions, one session left open, {segment_kib} KiB segments: \
         first pruning pass {:?}, last {:?}, median {median:?}; {segments} segments at the end",
        pruning.len(),
        pruning.first().copied().unwrap_or_default(),
        pruning.last().copied().unwrap_or_default(),
    );
    auditor.close()?;
    // Every session a pass reported pruned is pruned in the segments.
    let report = ahv_audit::verify_dir(&dir, None, None)?;
    let pruned = report.sessions.iter().filter(|s| s.pruned > 0).count() as u64;
    if !report.ok() || pruned != (passes - 1) * sessions {
        return Err(format!("verify: {pruned} sessions pruned; {report}").into());
    }
    Ok(())
}
