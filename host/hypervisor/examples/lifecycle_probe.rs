//! Diagnostic: times 10 batches of 1000 sessions, each followed by an audit
//! flush timed on its own (as the criterion benches do): the hot path, then
//! the disk work it left behind.
//!
//! `cargo run --release -p ahv-hypervisor --example lifecycle_probe [MODE] [SCENARIO]`,
//! MODE: `off` (no audit log), `quiet` (audit without `audit.delta_captured`
//! events), `deferred` (the flusher waits an hour: only backpressure or the
//! final flush write), anything else (e.g. `default`): the default audit
//! configuration. SCENARIO: `lifecycle` (create, join, activate, terminate;
//! the default), `pipeline` (the benches' `full_pipeline/no_wasm`: 4 state
//! writes between activate and terminate) or `wasm` (`full_pipeline/wasm`:
//! the agent instantiated at join, 3 state writes and one `run` call) or
//! `durable` (the lifecycle, each termination then waited on until its
//! seal is on disk, as `POST …/terminate`, `ahv session terminate` and
//! `ahv demo` do before answering; prints the waits' p50, p90 and p99 as
//! well).
//! `PROBE_NO_SHUTDOWN=1` flushes nothing and exits without the final flush
//! (for profiling the hot path, with `deferred`); `PROBE_BATCHES=N` runs N
//! batches instead of 10; `PROBE_QUIET=1` with `deferred` turns
//! `audit.delta_captured` off too; `PROBE_DIR=D` puts the state directory
//! under D (e.g. `/dev/shm`, to take the disk out); `MAXI=N` sets the
//! runtime's `max_instances` (default 64; 1 under valgrind, which cannot
//! reserve the pool's address space for more; named as in the other
//! probes); `EVCAP=N` sets the event bus's capacity (unset: the
//! hypervisor's default; a small one keeps the history in cache);
//! `PROBE_DELAY_US=N` (N ≥ 1) sets the flusher's group-commit delay in the
//! default mode (unset: 10 ms); `PROBE_BATCH_SIZE=N` runs N sessions per
//! batch instead of 1000 (N ≥ 1; the flush between batches leaves the
//! flusher only the rounds that fall within a batch: 5000 keeps it
//! writing beside the hot path throughout, as a sustained load does). The
//! figures vary by
//! ±20 % between runs on a shared 2-core VM: compare medians of many batches
//! (the line `median of batches`: the medians of every batch after the first).
use std::time::Instant;

use ahv_core::AgentId;
use ahv_governance::files::Caller;
use ahv_governance::session::SessionConfig;
use ahv_hypervisor::{Hypervisor, JoinRequest};

#[path = "../../runtime/examples/common/env.rs"]
mod env;

/// mimalloc, as the `ahv` binary uses: glibc's allocator takes an arena lock
/// whenever the audit flusher frees memory another thread allocated.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let tmp = match std::env::var_os("PROBE_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let mode = std::env::args().nth(1).unwrap_or_default();
    let scenario = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "lifecycle".into());
    let mut b = Hypervisor::builder()
        .state_dir(tmp.path())
        .max_instances(env::env_number("MAXI", 64));
    if let Some(capacity) = env::env_opt_number("EVCAP") {
        b = b.event_capacity(capacity);
    }
    b = match mode.as_str() {
        "off" => b.without_audit(),
        "deferred" => b.audit(ahv_audit::AuditConfig {
            durability: ahv_audit::Durability::GroupCommit {
                max_records: usize::MAX,
                max_delay: std::time::Duration::from_secs(3600),
            },
            announce_deltas: std::env::var_os("PROBE_QUIET").is_none(),
            ..Default::default()
        }),
        "quiet" => b.audit(ahv_audit::AuditConfig {
            announce_deltas: false,
            ..Default::default()
        }),
        _ => match env::env_opt_number("PROBE_DELAY_US") {
            // A delay of 0 would make the flusher spin, taking a core.
            Some(0) => panic!("PROBE_DELAY_US must be at least 1 (0 makes the flusher spin)"),
            Some(us) => b.audit(ahv_audit::AuditConfig {
                durability: ahv_audit::Durability::GroupCommit {
                    max_records: 64,
                    max_delay: std::time::Duration::from_micros(us),
                },
                ..Default::default()
            }),
            None => b,
        },
    };
    let hv = b.build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    let (writes, wasm) = match scenario.as_str() {
        "lifecycle" | "durable" => (0, false),
        "pipeline" => (4, false),
        "wasm" => (3, true),
        other => panic!("unknown scenario {other:?}: lifecycle, pipeline, wasm or durable"),
    };
    let durable = scenario == "durable";
    let mut waits = Vec::new();
    let component = wasm.then(|| hv.load(ahv_agents::PINGER).unwrap());
    let batches: u32 = std::env::var("PROBE_BATCHES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(10);
    let size: u32 = env::env_number("PROBE_BATCH_SIZE", 1000);
    assert!(size > 0, "PROBE_BATCH_SIZE must be at least 1");
    let (mut hots, mut flushes) = (Vec::new(), Vec::new());
    for batch in 0..batches {
        let t = Instant::now();
        for _ in 0..size {
            rt.block_on(async {
                let s = hv
                    .create_session(SessionConfig::default(), creator.clone())
                    .unwrap();
                let mut req = JoinRequest::new(agent.clone(), 0.8);
                if let Some(c) = &component {
                    req = req.component(c.clone());
                }
                let ring = hv.join_session(&s, req).await.unwrap();
                hv.activate_session(&s).unwrap();
                if writes > 0 {
                    let core = hv.session_core(&s).unwrap();
                    let who = Caller::untraced(&agent, ring);
                    for i in 0..writes {
                        core.state_put(
                            who,
                            ["file-0", "file-1", "file-2", "draft"][i],
                            &[i as u8; 32],
                            0,
                        )
                        .unwrap();
                    }
                }
                if wasm {
                    hv.run_agent(&s, &agent, "ping").await.unwrap();
                }
                let t = hv.terminate_session(&s).unwrap();
                if durable {
                    let w = Instant::now();
                    hv.wait_durable(t, ahv_audit::DURABLE_WAIT).unwrap();
                    waits.push(w.elapsed());
                }
            });
        }
        let hot = t.elapsed() / size;
        let t = Instant::now();
        if std::env::var_os("PROBE_NO_SHUTDOWN").is_none() {
            hv.shutdown().unwrap();
        }
        let flush = t.elapsed() / size;
        println!("batch {batch}: {hot:?} per session, then {flush:?} per session to flush");
        // Batch 0 warms the pool, the allocator and the caches.
        if batch > 0 {
            hots.push(hot);
            flushes.push(flush);
        }
    }
    if !hots.is_empty() {
        let median = |v: &mut Vec<std::time::Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        println!(
            "median of batches 1..{batches}: {:?} per session, then {:?} per session to flush",
            median(&mut hots),
            median(&mut flushes)
        );
    }
    if !waits.is_empty() {
        waits.sort();
        let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
        println!(
            "waits for durability ({}): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
            waits.len(),
            at(0.5),
            at(0.9),
            at(0.99),
            waits[waits.len() - 1]
        );
    }
    if std::env::var_os("PROBE_NO_SHUTDOWN").is_some() {
        std::process::exit(0);
    }
    let t = Instant::now();
    hv.shutdown().unwrap();
    println!("shutdown flush: {:?}", t.elapsed());
    let t = Instant::now();
    drop(hv);
    println!("drop: {:?}", t.elapsed());
}
