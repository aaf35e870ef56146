//! What one fresh governed invocation costs beside raw wasmtime, counted in
//! instructions as well as time: `instantiate_call`'s two paths (a fresh
//! instance of the no-I/O `pinger` from the cached `InstancePre`, one call
//! of `run`), repeated `N` times in a loop with nothing else in it.
//!
//! ```text
//! cargo build --release -p ahv-runtime --example instantiate_probe
//! target/release/examples/instantiate_probe governed 40000   # or: raw
//! ```
//!
//! prints the sizes of the futures a caller holds (governed: `spawn` and
//! `run`; raw: `instantiate_async` and `call_async`), then the mean time
//! per iteration. On this project's 2-vCPU machines
//! the time varies by ±10 % between runs, more than most changes to the
//! governed path move it; the instruction count does not. Run the probe
//! under callgrind twice, with `N` = 0 and `N` = 500, and divide the
//! difference of the totals by 500:
//!
//! ```text
//! MAXI=1 WARM=10 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.0 \
//!     target/release/examples/instantiate_probe governed 0
//! MAXI=1 WARM=10 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.500 \
//!     target/release/examples/instantiate_probe governed 500
//! ```
//!
//! Environment: `MAXI` is the runtime's `max_instances` (default 64;
//! valgrind cannot reserve the pooling allocator's address space for more
//! than one), `WARM` the iterations run before the measured ones (default
//! 2000). Unset `RUST_BACKTRACE`.

use std::sync::Arc;
use std::time::Instant;

use ahv_core::{AgentId, Ring};
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{AgentSpec, Runtime};

#[path = "../benches/common/raw.rs"]
mod raw;

#[path = "common/env.rs"]
mod env;
use env::env_number;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "governed".into());
    assert!(
        mode == "governed" || mode == "raw",
        "mode {mode:?}: expected governed or raw"
    );
    let n: u32 = args
        .next()
        .map_or(40_000, |s| s.parse().expect("N: a number of iterations"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::builder()
        .cache_dir(std::env::temp_dir().join("ahv-bench-cache"))
        .max_instances(env_number("MAXI", 64))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let handle =
        cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap();
    let vfs = Arc::new(Vfs::new(handle, VfsLimits::default()));
    let engine = runtime.engine().clone();
    let id = AgentId::new("did:bench:pinger").unwrap();

    let once: Box<dyn Fn()> = if mode == "raw" {
        // Compiled only for this mode: compiling is most of a short run.
        let component = wasmtime::component::Component::new(&engine, ahv_agents::PINGER).unwrap();
        let pre = raw::raw_pre(&engine, &component);
        {
            let mut store = raw::raw_store(&engine);
            let instantiate = pre.instantiate_async(&mut store);
            let instantiate_size = std::mem::size_of_val(&instantiate);
            let instance = rt.block_on(instantiate).unwrap();
            let run = instance
                .get_typed_func::<(&str,), (Result<String, String>,)>(&mut store, "run")
                .unwrap();
            let call = run.call_async(&mut store, ("",));
            println!(
                "future sizes: instantiate {instantiate_size} B, call {} B",
                std::mem::size_of_val(&call)
            );
        }
        Box::new(move || {
            rt.block_on(async {
                let mut store = raw::raw_store(&engine);
                let instance = pre.instantiate_async(&mut store).await.unwrap();
                let run = instance
                    .get_typed_func::<(&str,), (Result<String, String>,)>(&mut store, "run")
                    .unwrap();
                let (out,) = run.call_async(&mut store, ("",)).await.unwrap();
                assert_eq!(out.as_deref(), Ok("pong"));
            })
        })
    } else {
        let component = runtime.load(ahv_agents::PINGER).unwrap();
        {
            // What a caller's task holds while it waits on a spawn or a
            // call (each is moved whole into its task or `block_on`).
            let spec = AgentSpec::new(id.clone(), Ring::Sandbox, vfs.clone());
            let spawn = runtime.spawn(&component, spec);
            let spawn_size = std::mem::size_of_val(&spawn);
            let mut agent = rt.block_on(spawn).unwrap();
            let run = agent.run("");
            println!(
                "future sizes: spawn {spawn_size} B, run {} B",
                std::mem::size_of_val(&run)
            );
        }
        Box::new(move || {
            rt.block_on(async {
                let spec = AgentSpec::new(id.clone(), Ring::Sandbox, vfs.clone());
                let mut agent = runtime.spawn(&component, spec).await.unwrap();
                let out = agent.run("").await.unwrap();
                assert_eq!(out.result.as_deref(), Ok("pong"));
            })
        })
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
        println!("{mode}: {per:.3} µs per instantiate + call ({n} iterations)");
    }
}
