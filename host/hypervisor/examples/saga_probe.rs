//! What one run of the saga bench's `saga_3_steps` costs, counted in
//! instructions as well as time: the three-step chain of the bench, its
//! steps in one live `scripted` instance, in an unaudited session, progress
//! in memory (`MemoryStore`), run `N` times in a loop with nothing else in
//! it.
//!
//! ```text
//! cargo build --release -p ahv-hypervisor --example saga_probe
//! target/release/examples/saga_probe 20000
//! ```
//!
//! prints the mean time per saga. The time varies by ±5–10 % between runs
//! on this project's 2-vCPU machines; the instruction count does not. Run
//! the probe under callgrind with `N` = 0 and `N` = 500 and divide the
//! difference of the totals by 500:
//!
//! ```text
//! MAXI=1 WARM=10 valgrind --tool=callgrind --callgrind-out-file=/tmp/saga.0 \
//!     target/release/examples/saga_probe 0
//! MAXI=1 WARM=10 valgrind --tool=callgrind --callgrind-out-file=/tmp/saga.500 \
//!     target/release/examples/saga_probe 500
//! ```
//!
//! Environment: `MAXI` is the hypervisor's `max_instances` (default 64;
//! valgrind cannot reserve the pooling allocator's address space for
//! more than one), `WARM` the sagas run before the measured ones (default
//! 2000). Unset `RUST_BACKTRACE`. `MemoryStore` keeps every saga's
//! records, so memory grows with `N` (about 2 KiB per saga).
use std::sync::Arc;
use std::time::Instant;

use ahv_core::AgentId;
use ahv_governance::session::SessionConfig;
use ahv_hypervisor::{Hypervisor, JoinRequest};
use ahv_saga::{MemoryStore, SagaDefinition, SagaState};

/// mimalloc, as the `ahv` binary and the saga bench use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The saga bench's definition.
const SAGA: &str = include_str!("../benches/saga_3_steps.yaml");

#[path = "../../runtime/examples/common/env.rs"]
mod env;
use env::env_number;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map_or(20_000, |s| s.parse().expect("N: a number of sagas"));
    let state = tempfile::tempdir().unwrap();
    let hv = Hypervisor::builder()
        .state_dir(state.path())
        // Compiled once, not per run: compiling would be most of a short
        // run's instructions, and varies between runs.
        .cache_dir(std::env::temp_dir().join("ahv-bench-cache"))
        .max_instances(env_number("MAXI", 64))
        .without_rate_limits()
        .saga_store(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let def = Arc::new(SagaDefinition::from_yaml(SAGA).unwrap());
    let component = hv.load(ahv_agents::SCRIPTED).unwrap();
    let config = SessionConfig {
        audit: false,
        ..SessionConfig::default()
    };
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let s = hv.create_session(config, creator).unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    rt.block_on(hv.join_session(&s, JoinRequest::new(agent, 0.8).component(component)))
        .unwrap();
    hv.activate_session(&s).unwrap();
    let once = || {
        let report = rt.block_on(hv.run_saga(&s, Arc::clone(&def))).unwrap();
        assert_eq!(report.state, SagaState::Completed);
    };
    for _ in 0..env_number("WARM", 2000u32) {
        once();
    }
    let started = Instant::now();
    for _ in 0..n {
        once();
    }
    if n > 0 {
        let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!("{per:.3} µs per saga ({n} sagas)");
    }
    hv.terminate_session(&s).unwrap();
    hv.shutdown().unwrap();
}
