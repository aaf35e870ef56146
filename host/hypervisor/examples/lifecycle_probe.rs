//! Diagnostic: times 10 batches of 2000 session lifecycles, then the final
//! audit flush. The sustained rate, background disk work included.
//!
//! `cargo run --release -p ahv-hypervisor --example lifecycle_probe [MODE]`,
//! MODE: `off` (no audit log), `quiet` (audit without `audit.delta_captured`
//! events), `deferred` (the flusher waits an hour: only backpressure or the
//! final flush write), anything else: the default audit configuration.
//! `PROBE_NO_SHUTDOWN=1` exits before the final flush (for profiling).
use std::time::Instant;

use ahv_core::AgentId;
use ahv_governance::session::SessionConfig;
use ahv_hypervisor::{Hypervisor, JoinRequest};

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let mode = std::env::args().nth(1).unwrap_or_default();
    let mut b = Hypervisor::builder().state_dir(tmp.path());
    b = match mode.as_str() {
        "off" => b.without_audit(),
        "deferred" => b.audit(ahv_audit::AuditConfig {
            durability: ahv_audit::Durability::GroupCommit {
                max_records: usize::MAX,
                max_delay: std::time::Duration::from_secs(3600),
            },
            ..Default::default()
        }),
        "quiet" => b.audit(ahv_audit::AuditConfig {
            announce_deltas: false,
            ..Default::default()
        }),
        _ => b,
    };
    let hv = b.build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    for batch in 0..10 {
        let t = Instant::now();
        for _ in 0..2000 {
            rt.block_on(async {
                let s = hv
                    .create_session(SessionConfig::default(), creator.clone())
                    .unwrap();
                hv.join_session(&s, JoinRequest::new(agent.clone(), 0.8))
                    .await
                    .unwrap();
                hv.activate_session(&s).unwrap();
                hv.terminate_session(&s).unwrap();
            });
        }
        println!("batch {batch}: {:?} per lifecycle", t.elapsed() / 2000);
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
