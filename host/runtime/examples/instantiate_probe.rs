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
//! `pairs [N] [BLOCKS]` times both paths in one process, in alternating
//! blocks of `N` iterations (default 2000; `BLOCKS` pairs, default 20, the
//! order swapped every pair), and prints each pair's ratio of governed to
//! raw throughput (raw's time over governed's) and their median. Both
//! paths then run in the same phase of the VM, whose speed drifts by
//! ±10 % over seconds: the ratio of two separate runs carries that drift,
//! a pair's hardly any (`host/bench/compare.sh` runs it beside the benches).
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
        matches!(mode.as_str(), "governed" | "raw" | "pairs"),
        "mode {mode:?}: expected governed, raw or pairs"
    );
    let n: Option<u32> = args
        .next()
        .map(|s| s.parse().expect("N: a number of iterations"));
    let blocks: u32 = args
        .next()
        .map_or(20, |s| s.parse().expect("BLOCKS: a number of pairs"));
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

    let warm = env_number("WARM", 2000u32);
    if mode == "pairs" {
        let per_block = n.unwrap_or(2000);
        assert!(
            per_block > 0 && blocks > 0,
            "pairs needs N and BLOCKS above 0"
        );
        let governed = governed_path(&rt, &runtime, &vfs);
        let raw = raw_path(&rt, &runtime);
        for _ in 0..warm {
            governed();
            raw();
        }
        let time = |once: &dyn Fn()| {
            let started = Instant::now();
            for _ in 0..per_block {
                once();
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(per_block)
        };
        let mut ratios = Vec::new();
        for block in 0..blocks {
            let (g, r) = if block % 2 == 0 {
                let g = time(&*governed);
                (g, time(&*raw))
            } else {
                let r = time(&*raw);
                (time(&*governed), r)
            };
            ratios.push(r / g);
            println!(
                "pair {block}: governed {g:.3} µs, raw {r:.3} µs, throughput ratio {:.3}",
                r / g
            );
        }
        ratios.sort_by(f64::total_cmp);
        let median = if ratios.len() % 2 == 1 {
            ratios[ratios.len() / 2]
        } else {
            (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0
        };
        println!(
            "median governed / raw throughput over {blocks} pairs of {per_block}: {median:.4} (min {:.4}, max {:.4})",
            ratios[0],
            ratios[ratios.len() - 1]
        );
        return;
    }

    let n = n.unwrap_or(40_000);
    let once = if mode == "raw" {
        raw_path(&rt, &runtime)
    } else {
        governed_path(&rt, &runtime, &vfs)
    };
    for _ in 0..warm {
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

/// Raw wasmtime's instantiate + call of `pinger` (the same engine), after
/// printing the sizes of its futures.
fn raw_path<'a>(rt: &'a tokio::runtime::Runtime, runtime: &Runtime) -> Box<dyn Fn() + 'a> {
    let engine = runtime.engine().clone();
    // Compiled only for this path: compiling is most of a short run.
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
}

/// The governed spawn + `run` of `pinger` at ring 3, after printing the
/// sizes of its futures.
fn governed_path<'a>(
    rt: &'a tokio::runtime::Runtime,
    runtime: &Runtime,
    vfs: &Arc<Vfs>,
) -> Box<dyn Fn() + 'a> {
    let runtime = runtime.clone();
    let vfs = vfs.clone();
    let id = AgentId::new("did:bench:pinger").unwrap();
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
}
