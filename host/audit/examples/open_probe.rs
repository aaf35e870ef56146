//! Diagnostic: how long `Auditor::open` takes, and how much memory it peaks
//! at, over a commitment log of N sessions (synthetic commitments, no
//! session logs: what a long-lived state directory looks like after
//! retention).
//!
//! `cargo run --release -p ahv-audit --example open_probe [N]` (default
//! 1 000 000). Linux only for the peak RSS (`VmHWM`).
use std::sync::Arc;
use std::time::Instant;

use ahv_audit::records::{LogKind, rewrite_log};
use ahv_audit::{AuditConfig, Auditor, Commitment, SystemWallClock};

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 1_000_000,
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("audit");
    std::fs::create_dir_all(dir.join("sessions"))?;
    let t = Instant::now();
    let bodies = (0..n).map(|i| {
        Commitment {
            session: format!("s{i}-{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            tree_size: 10,
            root: Default::default(),
            time_unix_ns: 1,
        }
        .encode()
    });
    let len = rewrite_log(
        ahv_audit::auditor::commitments_path(&dir),
        LogKind::COMMITMENTS,
        bodies,
    )?;
    println!(
        "wrote {n} commitments ({} MiB) in {:?}",
        len >> 20,
        t.elapsed()
    );
    let before = peak_rss_mib();
    let t = Instant::now();
    let (auditor, report) = Auditor::open(
        &dir,
        AuditConfig::default(),
        Arc::new(ahv_core::SystemClock::default()),
        Arc::new(SystemWallClock),
    )?;
    let took = t.elapsed();
    println!(
        "open: {took:?} for {} commitments; peak RSS {} MiB (before open: {} MiB)",
        report.commitments,
        peak_rss_mib().unwrap_or(0),
        before.unwrap_or(0)
    );
    auditor.close()?;
    Ok(())
}
