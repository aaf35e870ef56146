//! Diagnostic: audited events per second under [`Durability::EveryRecord`]
//! (each event durable before its emit returns) with several threads
//! emitting at once, each into a session of its own.
//!
//! ```text
//! cargo run --release -p ahv-audit --example every_record_probe [THREADS [EVENTS]]
//! ```
//!
//! Defaults: 8 threads, 200 events each. Prints the wall time, the events
//! per second, the median and 99th percentile of one emit, and how many
//! rounds the segments hold (one `fdatasync` each): a round that takes every
//! delta staged while the one before it synced makes far fewer rounds than
//! events. `PROBE_DIR` picks the parent directory (default: the system's
//! temporary directory). The probe fails if `verify_dir` finds a problem
//! afterwards or a session lacks an event.
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ahv_audit::records::Durability;
use ahv_audit::{AuditConfig, Auditor, SystemWallClock};
use ahv_core::{AgentId, EventBus, SessionId, SystemClock};

#[path = "common/probe.rs"]
mod probe;
use probe::{arg, emit_write, probe_dir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = arg(1, 8);
    let events = arg(2, 200);
    let (_tmp, dir) = probe_dir()?;
    let clock = Arc::new(SystemClock::default());
    let (auditor, _) = Auditor::open(
        &dir,
        AuditConfig {
            durability: Durability::EveryRecord,
            ..AuditConfig::default()
        },
        clock.clone(),
        Arc::new(SystemWallClock),
    )?;
    let bus = Arc::new(EventBus::new(1024, clock));
    auditor.attach(&bus);
    let start = Arc::new(Barrier::new(threads as usize + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (bus, start) = (bus.clone(), start.clone());
            std::thread::spawn(move || {
                let s = SessionId::new(format!("s-{t}")).expect("a session id");
                let agent = AgentId::new("did:ex:writer").expect("an agent id");
                let mut times = Vec::with_capacity(events as usize);
                start.wait();
                let first = Instant::now();
                for i in 0..events {
                    let t = Instant::now();
                    emit_write(&bus, &s, &agent, i);
                    times.push(t.elapsed());
                }
                (times, first, Instant::now())
            })
        })
        .collect();
    start.wait();
    let mut times: Vec<Duration> = Vec::new();
    // From the first worker's start to the last one's end (this thread may
    // be scheduled late after the barrier).
    let (mut began, mut ended): (Option<Instant>, Option<Instant>) = (None, None);
    for w in workers {
        let (t, first, last) = w.join().map_err(|_| "a worker panicked")?;
        times.extend(t);
        began = Some(began.map_or(first, |b| b.min(first)));
        ended = Some(ended.map_or(last, |e| e.max(last)));
    }
    let took = match (began, ended) {
        (Some(b), Some(e)) => e - b,
        _ => Duration::ZERO,
    };
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let stats = auditor.stats();
    if stats.write_failures != 0 {
        return Err(format!("{} writes failed", stats.write_failures).into());
    }
    for t in 0..threads {
        auditor.seal(&SessionId::new(format!("s-{t}"))?)?;
    }
    auditor.close()?;
    let segs = ahv_audit::segments::segments_dir(&dir);
    let mut rounds = 0usize;
    for (n, path) in ahv_audit::segments::list_segments(&segs)? {
        rounds += rounds_in(&ahv_audit::segments::read_segment(n, &path)?);
    }
    let report = ahv_audit::verify_dir(&dir, None, None)?;
    let short = report
        .sessions
        .iter()
        .filter(|s| s.records != events)
        .count();
    if !report.ok() || short != 0 {
        return Err(format!("verify: {short} sessions short; {report}").into());
    }
    let total = threads * events;
    println!(
        "{threads} threads × {events} events, every record durable: {took:?}, {:.0} events/s; \
         emit p50 {:?}, p99 {:?}; {rounds} rounds for {total} events",
        total as f64 / took.as_secs_f64(),
        at(0.5),
        at(0.99),
    );
    Ok(())
}

/// How many rounds a segment holds: a round's chunks follow one another,
/// and its footer stands between its last chunk and the next round's first.
fn rounds_in(contents: &ahv_audit::segments::SegmentContents) -> usize {
    let mut rounds = 0;
    let mut end = None;
    for c in &contents.chunks {
        let first = c.records.first().map(|r| r.offset);
        if first != end {
            rounds += 1;
        }
        end = c.records.last().map(|r| r.end());
    }
    rounds
}
