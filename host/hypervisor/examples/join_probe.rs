//! Probe: the latency distribution of joining an agent *with* its component
//! (instantiation included) to a new session, one join at a time, as a
//! server admitting agents sees it. Criterion's `join_wasm/pinger` reports
//! a mean over batches; a tail needs each join timed on its own.
//!
//! `cargo run --release -p ahv-hypervisor --example join_probe [JOINS] [SLOTS]`
//!
//! Runs `JOINS` (default 20 000) create → join → terminate cycles on a
//! current-thread runtime, timing only the join, in a hypervisor whose pool
//! has `SLOTS` instance slots (default 64). Prints p50, p90, p99, p99.9 and
//! the maximum, over all joins and over the joins after the first `SLOTS`
//! (a slot's first use pays for faulting in its memory), and the floor: a
//! `Runtime::spawn` of the same component alone (no session; the instance
//! dropped at once) after every join, timed the same way, so that the two
//! see the same moments of the machine's load. Then both again over only
//! the quiet windows of 500 iterations (see `quiet_windows`).
//! `PROBE_DUMP=FILE` writes every join's and spawn's time in nanoseconds,
//! one pair per line.
//!
//! The audit log is on (the default configuration); `PROBE_AUDIT=off`
//! turns it off. `PROBE_DIR=D` puts the state directory under D. `PROBE_DELAY_MS=N`
//! (N ≥ 1; 0 or unset: the default) has the audit flusher write a round
//! every N ms however many records are staged (the default: 10 ms, or 64
//! records of one session). `PROBE_DATABASE=URL` sets the liability store
//! (default: SQLite in the state directory; `memory` takes its syncs out).
//! `PROBE_SYNC_EVERY_MS=N` (with `PROBE_AUDIT=off`:
//! the disk's share of the tail without the auditor) runs a thread that, every
//! N ms while the joins run, writes `PROBE_SYNC_BYTES` (default 65 536) to
//! one file and 128 bytes to another, each followed by an `fdatasync`, as an
//! audit round writes a segment and the commitment log. An audited run
//! prints how many bytes its segments hold, to size that load.
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::{AgentId, Ring};
use ahv_governance::session::SessionConfig;
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_hypervisor::{Hypervisor, JoinRequest};
use ahv_runtime::AgentSpec;

#[path = "../../runtime/examples/common/env.rs"]
mod env;

/// mimalloc, as the `ahv` binary uses: glibc's allocator takes an arena lock
/// whenever the audit flusher frees memory another thread allocated.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let arg = |i: usize, default: u32| {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("a whole number"))
    };
    let joins = arg(1, 20_000) as usize;
    let slots = arg(2, 64);
    let tmp = match std::env::var_os("PROBE_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let mut b = Hypervisor::builder()
        .state_dir(tmp.path())
        .max_instances(slots);
    if let Ok(url) = std::env::var("PROBE_DATABASE") {
        b = b.database(url);
    }
    if std::env::var("PROBE_AUDIT").as_deref() == Ok("off") {
        b = b.without_audit();
    } else if let ms @ 1.. = env::env_number("PROBE_DELAY_MS", 0u64) {
        b = b.audit(ahv_audit::AuditConfig {
            durability: ahv_audit::Durability::GroupCommit {
                max_records: usize::MAX,
                max_delay: Duration::from_millis(ms),
            },
            ..Default::default()
        });
    }
    let hv = b.build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let component = hv.load(ahv_agents::PINGER).unwrap();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    let files = tempfile::tempdir().unwrap();
    let vfs = Arc::new(Vfs::new(
        cap_std::fs::Dir::open_ambient_dir(files.path(), cap_std::ambient_authority()).unwrap(),
        VfsLimits::default(),
    ));
    let mut times = Vec::with_capacity(joins);
    let mut raw = Vec::with_capacity(joins);
    let load = sync_load(tmp.path());
    for _ in 0..joins {
        let s = hv
            .create_session(SessionConfig::default(), creator.clone())
            .unwrap();
        let req = JoinRequest::new(agent.clone(), 0.8).component(component.clone());
        let t = Instant::now();
        rt.block_on(hv.join_session(&s, req)).unwrap();
        times.push(t.elapsed());
        hv.terminate_session(&s).unwrap();
        // The floor, interleaved: each spawn runs beside a join, in the
        // same moment of the machine's load.
        let spec = AgentSpec::new(agent.clone(), Ring::Standard, vfs.clone());
        let t = Instant::now();
        let instance = rt.block_on(hv.runtime().spawn(&component, spec)).unwrap();
        raw.push(t.elapsed());
        drop(instance);
    }
    if let Some((stop, thread)) = load {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = thread.join().unwrap();
        println!("sync load: {rounds} rounds of two fdatasyncs");
    }
    let segments = tmp.path().join("audit").join("segments");
    if let Ok(entries) = std::fs::read_dir(&segments) {
        let bytes: u64 = entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!("audit segments: {bytes} bytes for {joins} sessions");
    }
    hv.shutdown().unwrap();
    let after = (slots as usize).min(times.len());
    // The first join of a component in a ring also builds its `InstancePre`.
    println!("first joins: {:?}", &times[..times.len().min(4)]);
    report("all joins", &times);
    report(&format!("joins after the first {slots}"), &times[after..]);
    report(
        &format!("floor: spawn alone, after the first {slots}"),
        &raw[after..],
    );
    quiet_windows(&times[after..], &raw[after..]);
    if let Some(path) = std::env::var_os("PROBE_DUMP") {
        let lines: String = times
            .iter()
            .zip(&raw)
            .map(|(j, s)| format!("{} {}\n", j.as_nanos(), s.as_nanos()))
            .collect();
        std::fs::write(&path, lines).unwrap();
    }
}

/// The `PROBE_SYNC_EVERY_MS` load, if asked for: its stop flag and thread
/// (which returns how many rounds it made).
#[allow(clippy::type_complexity)]
fn sync_load(
    dir: &std::path::Path,
) -> Option<(
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
)> {
    use std::io::Write;
    let every = env::env_number("PROBE_SYNC_EVERY_MS", 0u64);
    if every == 0 {
        return None;
    }
    let bytes = env::env_number("PROBE_SYNC_BYTES", 65_536usize);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut big = std::fs::File::create(dir.join("sync-load-a")).unwrap();
    let mut small = std::fs::File::create(dir.join("sync-load-b")).unwrap();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let (chunk, tail) = (vec![0x5Au8; bytes], [0xA5u8; 128]);
        let mut rounds = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(every));
            big.write_all(&chunk).unwrap();
            big.sync_data().unwrap();
            small.write_all(&tail).unwrap();
            small.sync_data().unwrap();
            rounds += 1;
        }
        rounds
    });
    Some((stop, thread))
}

/// Iterations per window of [`quiet_windows`].
const WINDOW: usize = 500;

/// The machine this runs on (shared vCPUs) has slow phases: stretches of
/// hundreds of iterations in which the join and its floor alike run
/// 1.5–2× slower. A phase that covers more than 1 % of a run moves the p99
/// of both, whatever the join does. This prints the percentiles again over
/// only the quiet windows of `WINDOW` iterations: those whose floor median
/// is within 10 % of the fastest window's (a last, partial window is left
/// out). The floor runs right after a termination, while the audit
/// flusher may be writing it, so a window the audit's own syncs slowed may
/// be left out too: the whole run's figures are the ones that count.
fn quiet_windows(joins: &[Duration], floor: &[Duration]) {
    let median = |w: &[Duration]| {
        let mut w = w.to_vec();
        w.sort_unstable();
        w[w.len() / 2]
    };
    let windows: Vec<(&[Duration], &[Duration])> = joins
        .chunks_exact(WINDOW)
        .zip(floor.chunks_exact(WINDOW))
        .collect();
    let Some(fastest) = windows.iter().map(|(_, f)| median(f)).min() else {
        println!("quiet windows: fewer than {WINDOW} joins");
        return;
    };
    let quiet: Vec<_> = windows
        .iter()
        .filter(|(_, f)| median(f).as_secs_f64() <= fastest.as_secs_f64() * 1.1)
        .collect();
    println!(
        "quiet windows: {} of {} windows of {WINDOW} (floor median within 10 % of the fastest window's, {fastest:?})",
        quiet.len(),
        windows.len()
    );
    let joins: Vec<Duration> = quiet.iter().flat_map(|(j, _)| j.iter().copied()).collect();
    let floor: Vec<Duration> = quiet.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    report("  joins in quiet windows", &joins);
    report("  floor in quiet windows", &floor);
}

/// Prints the percentiles of `times` under `label`.
fn report(label: &str, times: &[Duration]) {
    if times.is_empty() {
        println!("{label}: no joins");
        return;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (p50, p99) = (at(0.5), at(0.99));
    println!(
        "{label} ({}): p50 {p50:?}  p90 {:?}  p99 {p99:?}  p99.9 {:?}  max {:?}  p99/p50 {:.2}",
        sorted.len(),
        at(0.9),
        at(0.999),
        sorted[sorted.len() - 1],
        p99.as_secs_f64() / p50.as_secs_f64(),
    );
}
