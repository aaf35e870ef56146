//! Runtime benchmarks, each against a baseline measured in the same run.
//!
//! - `instantiate_call/*`: a fresh instance of the no-I/O `pinger` agent from
//!   the cached `InstancePre` (pooling allocator) plus one call of `run`:
//!   governed (`Runtime::spawn` + `Agent::run`, ring 3 limits, log and WASI
//!   context) vs raw wasmtime (same engine, a bare store, the same component).
//! - `hostcall/*`: 1000 guest→host calls of `context.current-ring` on a live
//!   instance: governed adapter (ring check) vs an ungoverned host function.
//!   `raw_wasmtime_sync` shows what async calls cost (a fiber per call).
//! - `kill_latency`: time from `KillHandle::kill` until `run` returns, for
//!   `spinner` in a tight loop with a 1 ms epoch tick. Criterion reports the
//!   mean; p50/p99 of 200 samples are printed to stderr.
//!
//! Run: `cargo bench -p ahv-runtime --bench runtime` (unset RUST_BACKTRACE:
//! it makes every trap capture a host backtrace).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::{AgentId, Ring, RingLimits, RingPolicy};
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{AgentSpec, Runtime};
use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Raw wasmtime: WASI plus an ungoverned `context` (no ring check, no state).
fn raw_pre(engine: &Engine, component: &wasmtime::component::Component) -> InstancePre<RawState> {
    let mut linker = Linker::<RawState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    let mut ctx = linker
        .instance("agent-hypervisor:agent/context@0.1.0")
        .unwrap();
    ctx.func_wrap("current-ring", |_, (): ()| Ok((3u8,)))
        .unwrap();
    // `pinger` imports more than it calls (vfs, state): those are never
    // reached in the bench, so traps are enough.
    linker.define_unknown_imports_as_traps(component).unwrap();
    linker.instantiate_pre(component).unwrap()
}

/// As [`raw_pre`], with synchronous WASI, for the sync-call baseline.
fn raw_pre_sync(
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> InstancePre<RawState> {
    let mut linker = Linker::<RawState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    let mut ctx = linker
        .instance("agent-hypervisor:agent/context@0.1.0")
        .unwrap();
    ctx.func_wrap("current-ring", |_, (): ()| Ok((3u8,)))
        .unwrap();
    // `pinger` imports more than it calls (vfs, state): those are never
    // reached in the bench, so traps are enough.
    linker.define_unknown_imports_as_traps(component).unwrap();
    linker.instantiate_pre(component).unwrap()
}

fn raw_store(engine: &Engine) -> Store<RawState> {
    let mut store = Store::new(
        engine,
        RawState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        },
    );
    store.set_fuel(100_000_000).unwrap();
    store.set_epoch_deadline(1_000_000);
    store
}

fn setup() -> (
    tokio::runtime::Runtime,
    Runtime,
    tempfile::TempDir,
    Arc<Vfs>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = std::env::temp_dir().join("ahv-bench-cache");
    let runtime = Runtime::builder()
        .cache_dir(cache)
        .max_instances(64)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let handle =
        cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap();
    (
        rt,
        runtime,
        dir,
        Arc::new(Vfs::new(handle, VfsLimits::default())),
    )
}

fn instantiate_call(c: &mut Criterion) {
    let (rt, runtime, _dir, vfs) = setup();
    let component = runtime.load(ahv_agents::PINGER).unwrap();
    let engine = runtime.engine().clone();
    let raw_component = wasmtime::component::Component::new(&engine, ahv_agents::PINGER).unwrap();
    let raw = raw_pre(&engine, &raw_component);
    let id = AgentId::new("did:bench:pinger").unwrap();
    // Warm the governed InstancePre cache.
    rt.block_on(runtime.spawn(
        &component,
        AgentSpec::new(id.clone(), Ring::Sandbox, vfs.clone()),
    ))
    .unwrap();

    let mut g = c.benchmark_group("instantiate_call");
    g.bench_function("governed", |b| {
        b.iter(|| {
            rt.block_on(async {
                let spec = AgentSpec::new(id.clone(), Ring::Sandbox, vfs.clone());
                let mut agent = runtime.spawn(&component, spec).await.unwrap();
                let out = agent.run("").await.unwrap();
                assert_eq!(out.result.as_deref(), Ok("pong"));
            })
        })
    });
    g.bench_function("raw_wasmtime", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut store = raw_store(&engine);
                let instance = raw.instantiate_async(&mut store).await.unwrap();
                let run = instance
                    .get_typed_func::<(&str,), (Result<String, String>,)>(&mut store, "run")
                    .unwrap();
                let (out,) = run.call_async(&mut store, ("",)).await.unwrap();
                assert_eq!(out.as_deref(), Ok("pong"));
            })
        })
    });
    // For orientation only: the same without async (no fiber per call). The
    // runtime needs async calls so agents share tokio's threads.
    let raw_sync = raw_pre_sync(&engine, &raw_component);
    g.bench_function("raw_wasmtime_sync", |b| {
        b.iter(|| {
            let mut store = raw_store(&engine);
            let instance = raw_sync.instantiate(&mut store).unwrap();
            let run = instance
                .get_typed_func::<(&str,), (Result<String, String>,)>(&mut store, "run")
                .unwrap();
            let (out,) = run.call(&mut store, ("",)).unwrap();
            assert_eq!(out.as_deref(), Ok("pong"));
        })
    });
    g.finish();
}

fn hostcall(c: &mut Criterion) {
    let (rt, runtime, _dir, vfs) = setup();
    let component = runtime.load(ahv_agents::PINGER).unwrap();
    let engine = runtime.engine().clone();
    let raw_component = wasmtime::component::Component::new(&engine, ahv_agents::PINGER).unwrap();
    let raw = raw_pre(&engine, &raw_component);
    let id = AgentId::new("did:bench:pinger").unwrap();
    let mut agent = rt
        .block_on(runtime.spawn(&component, AgentSpec::new(id, Ring::Sandbox, vfs)))
        .unwrap();
    let mut store = raw_store(&engine);
    let instance = rt.block_on(raw.instantiate_async(&mut store)).unwrap();
    let run = instance
        .get_typed_func::<(&str,), (Result<String, String>,)>(&mut store, "run")
        .unwrap();

    let mut g = c.benchmark_group("hostcall");
    g.bench_function("governed_x1000", |b| {
        b.iter(|| {
            let out = rt.block_on(agent.run("1000")).unwrap();
            assert_eq!(out.result.as_deref(), Ok("3000"));
        })
    });
    g.bench_function("raw_x1000", |b| {
        b.iter(|| {
            store.set_fuel(100_000_000).unwrap();
            store.set_epoch_deadline(1_000_000);
            let (out,) = rt.block_on(run.call_async(&mut store, ("1000",))).unwrap();
            assert_eq!(out.as_deref(), Ok("3000"));
        })
    });
    g.bench_function("governed_x0", |b| {
        b.iter(|| {
            let out = rt.block_on(agent.run("0")).unwrap();
            assert_eq!(out.result.as_deref(), Ok("0"));
        })
    });
    g.bench_function("raw_x0", |b| {
        b.iter(|| {
            store.set_fuel(100_000_000).unwrap();
            store.set_epoch_deadline(1_000_000);
            let (out,) = rt.block_on(run.call_async(&mut store, ("0",))).unwrap();
            assert_eq!(out.as_deref(), Ok("0"));
        })
    });
    g.finish();
}

fn kill_latency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut limits = RingLimits::default_for(Ring::Privileged);
    limits.fuel_per_call = u64::MAX / 4;
    limits.deadline = Duration::from_secs(60);
    let policy = RingPolicy::default()
        .with_limits(Ring::Privileged, limits)
        .unwrap();
    let cache = std::env::temp_dir().join("ahv-bench-cache");
    let runtime = Runtime::builder()
        .policy(policy)
        .cache_dir(cache)
        .epoch_tick(Duration::from_millis(1))
        .max_instances(16)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let handle =
        cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap();
    let vfs = Arc::new(Vfs::new(handle, VfsLimits::default()));
    let component = runtime.load(ahv_agents::SPINNER).unwrap();

    let once = || {
        rt.block_on(async {
            let spec = AgentSpec::new(
                AgentId::new("did:bench:spin").unwrap(),
                Ring::Privileged,
                vfs.clone(),
            );
            let mut agent = runtime.spawn(&component, spec).await.unwrap();
            let kill = agent.kill_handle();
            let task = tokio::spawn(async move {
                let r = agent.run("").await;
                (Instant::now(), r.is_err())
            });
            // Let the loop get going, then kill from this task.
            tokio::time::sleep(Duration::from_millis(3)).await;
            let at = Instant::now();
            kill.kill("bench");
            let (stopped, trapped) = task.await.unwrap();
            assert!(trapped);
            stopped.saturating_duration_since(at)
        })
    };

    let mut samples: Vec<Duration> = (0..200).map(|_| once()).collect();
    samples.sort();
    eprintln!(
        "kill_latency over {} kills: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() - 1]
    );

    let mut g = c.benchmark_group("kill_latency");
    g.sample_size(20);
    g.bench_function("spinner_1ms_tick", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| once()).sum())
    });
    g.finish();
}

criterion_group!(benches, instantiate_call, hostcall, kill_latency);
criterion_main!(benches);
