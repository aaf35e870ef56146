//! Runtime benchmarks, each against a baseline measured in the same run.
//!
//! - `instantiate_call/*`: a fresh instance of the no-I/O `pinger` agent from
//!   the cached `InstancePre` (pooling allocator) plus one call of `run`:
//!   governed (`Runtime::spawn` + `Agent::run`, ring 3 limits and log; the
//!   instance's WASI context is made at its first WASI call, which this
//!   `run` does not make) vs raw wasmtime (same engine, the same component,
//!   a bare store with a WASI context made with it, as wasmtime's examples
//!   make one).
//! - `hostcall/*`: 1000 guest→host calls of `context.current-ring` on a live
//!   instance: governed adapter (ring check) vs an ungoverned host function.
//!   `raw_wasmtime_sync` shows what async calls cost (a fiber per call).
//! - `hostcall/held_*`: 1000 calls of `locks.held` (a rate-metered read;
//!   ring 2, outside a session: an empty list): `held_governed` through the
//!   whole gate with a rate budget that never runs out (`RateLimiter`, ring 2
//!   reads 10⁹/s, burst 2³²−1), `held_no_rate` the same gate with rate
//!   limits off, `held_raw` the same signature linked raw (no gate).
//! - `gate/rate_limited_x1000`: 1000 `locks.held` calls the rate limiter
//!   refuses (rate 0, burst 1, spent): each returns `rate-limited`.
//! - `gate/*` without Wasm: `Standing::check` (nothing pending; `_elevated`:
//!   an elevation in force, so a clock read), `ParticipantBuckets::try_acquire`
//!   with `SystemClock::now` (admitted; `_refused`), and `clock_now` alone.
//! - `kill_latency`: time from `KillHandle::kill` until `run` returns, for
//!   `spinner` in a tight loop with a 1 ms epoch tick. Criterion reports the
//!   mean; p50/p99 of 200 samples are printed to stderr.
//!
//! Run: `cargo bench --workspace --bench runtime` (the form every bench is
//! documented with; any `-p` form shares its build through the workspace
//! hack; unset RUST_BACKTRACE: it makes every trap capture a host backtrace).
//!
//! Figures (medians; 2 shared vCPUs with a load average of ~4, so ±30%
//! between runs), from
//! `env -u RUST_BACKTRACE cargo bench --workspace --bench runtime --
//! '^(hostcall|gate)/' --warm-up-time 1 --measurement-time 3`; per call =
//! (x1000 − x0) / 1000, raw against raw, governed against governed:
//!
//! | bench | median | per call | vs raw |
//! |---|---|---|---|
//! | `hostcall/raw_x0` / `governed_x0` | 1.11 / 1.40 µs | | |
//! | `hostcall/raw_x1000` (`current-ring`) | 71.3 µs | 70 ns | |
//! | `hostcall/governed_x1000` (free) | 92.8 µs | 91 ns | +21 ns |
//! | `hostcall/held_raw_x1000` | 206.2 µs | 205 ns | |
//! | `hostcall/held_no_rate_x1000` | 236.4 µs | 235 ns | +30 ns |
//! | `hostcall/held_governed_x1000` | 334.7 µs | 333 ns | +128 ns |
//! | `gate/rate_limited_x1000` (refused) | 205.3 µs | 204 ns | |
//! | `gate/standing_check` | 12.0 ns | | |
//! | `gate/standing_check_elevated` | 56.7 ns | | |
//! | `gate/bucket_try_acquire` (+ clock) | 51.0 ns | | |
//! | `gate/bucket_try_acquire_refused` | 57.7 ns | | |
//! | `gate/clock_now` (`SystemClock`) | 42.8 ns | | |
//!
//! That first run (above) had the rate budget read `SystemClock` on every
//! metered call: `perf` put most of the budget's time in `clock_gettime`
//! (~40 ns in this VM), and the metered call came out at +128 ns. The
//! budgets now read `TickClock`, a coarse clock the epoch ticker advances
//! (one atomic load; the hypervisor sets it up the same way). The same
//! command after that change, with `cargo fuzz` running beside it:
//!
//! | bench | median | per call | vs raw |
//! |---|---|---|---|
//! | `hostcall/raw_x0` / `governed_x0` | 1.39 / 2.43 µs | | |
//! | `hostcall/raw_x1000` (`current-ring`) | 118.8 µs | 117 ns | |
//! | `hostcall/governed_x1000` (free) | 128.6 µs | 126 ns | +9 ns |
//! | `hostcall/held_raw_x1000` | 235.9 µs | 235 ns | |
//! | `hostcall/held_governed_x1000` (rate on) | 297.8 µs | 295 ns | +61 ns |
//! | `hostcall/held_no_rate_x1000` | 338.0 µs | 336 ns | (noise: ±45 µs) |
//! | `gate/rate_limited_x1000` (refused) | 183.7 µs | 181 ns | |
//!
//! Both runs meet the +100 ns goal for the gate without rate limits, and the
//! second meets it with them; the noise on this shared machine is of the
//! order of the difference, so read them as "tens of ns", not exact figures.
//! A refused call costs no more than an admitted raw one: it lowers an error
//! variant instead of a list.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::standing::Standing;
use ahv_core::{AgentId, Clock, Ring, RingLimits, RingPolicy, SystemClock, TickClock};
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{AgentSpec, Runtime};
use ahv_security::rate::{BucketSpec, CallClass, ParticipantBuckets, RateLimiter, RateTable};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "common/raw.rs"]
mod raw;
use raw::{raw_pre, raw_pre_sync, raw_store};

fn setup() -> (
    tokio::runtime::Runtime,
    Runtime,
    tempfile::TempDir,
    Arc<Vfs>,
) {
    setup_with(None)
}

/// As [`setup`], with every metered call limited by `rate` when given.
fn setup_with(
    rate: Option<(RateLimiter, TickClock)>,
) -> (
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
    let mut builder = Runtime::builder().cache_dir(cache).max_instances(64);
    if let Some((rate, clock)) = rate {
        builder = builder.rate_limits(Arc::new(rate)).tick_clock(clock);
    }
    let runtime = builder.build().unwrap();
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

/// A limiter whose ring 2 read bucket is `spec` (the other buckets as by
/// default), on the coarse clock the runtime's epoch ticker advances (as
/// the hypervisor sets it up).
fn limiter(spec: BucketSpec) -> (RateLimiter, TickClock) {
    let table = RateTable::default()
        .with_spec(CallClass::Read, Ring::Standard, spec)
        .unwrap();
    let clock = TickClock::new();
    (
        RateLimiter::new(table, Arc::new(clock.clone()), 1024),
        clock,
    )
}

/// A ring 2 read budget that never runs out within a bench: 10⁹/s, burst 2³²−1.
const ENDLESS: BucketSpec = BucketSpec {
    rate_per_sec: 1e9,
    burst: u32::MAX,
};

/// A ring 2 read budget of one call, never refilled.
const ONE_CALL: BucketSpec = BucketSpec {
    rate_per_sec: 0.0,
    burst: 1,
};

/// Spawns `pinger` at ring 2 on `runtime`.
fn standard_pinger(
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime,
    vfs: &Arc<Vfs>,
    id: &str,
) -> ahv_runtime::Agent {
    let component = runtime.load(ahv_agents::PINGER).unwrap();
    let spec = AgentSpec::new(AgentId::new(id).unwrap(), Ring::Standard, vfs.clone());
    rt.block_on(runtime.spawn(&component, spec)).unwrap()
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

    // A metered read (`locks.held`, ring 2, outside a session: an empty
    // list) through the whole gate, rate budget included.
    let (_, limited, _dir2, vfs2) = setup_with(Some(limiter(ENDLESS)));
    let mut metered = standard_pinger(&rt, &limited, &vfs2, "did:bench:held");
    let mut unmetered = standard_pinger(&rt, &runtime, &vfs2, "did:bench:held-free");
    const ALL_ADMITTED: &str = "1000 ok 0 rate-limited";
    g.bench_function("held_governed_x1000", |b| {
        b.iter(|| {
            let out = rt.block_on(metered.run("held 1000")).unwrap();
            assert_eq!(out.result.as_deref(), Ok(ALL_ADMITTED));
        })
    });
    g.bench_function("held_no_rate_x1000", |b| {
        b.iter(|| {
            let out = rt.block_on(unmetered.run("held 1000")).unwrap();
            assert_eq!(out.result.as_deref(), Ok(ALL_ADMITTED));
        })
    });
    g.bench_function("held_raw_x1000", |b| {
        b.iter(|| {
            store.set_fuel(100_000_000).unwrap();
            store.set_epoch_deadline(1_000_000);
            let (out,) = rt
                .block_on(run.call_async(&mut store, ("held 1000",)))
                .unwrap();
            assert_eq!(out.as_deref(), Ok(ALL_ADMITTED));
        })
    });
    g.finish();
}

/// The gate's decision: a refused call end to end, and its two parts
/// (standing, rate budget) alone, without Wasm.
fn gate(c: &mut Criterion) {
    let mut g = c.benchmark_group("gate");
    let (rt, runtime, _dir, vfs) = setup_with(Some(limiter(ONE_CALL)));
    let mut agent = standard_pinger(&rt, &runtime, &vfs, "did:bench:refused");
    let first = rt.block_on(agent.run("held 2")).unwrap();
    assert_eq!(
        first.result.as_deref(),
        Ok("1 ok 1 rate-limited"),
        "a budget of one call, never refilled"
    );
    g.bench_function("rate_limited_x1000", |b| {
        b.iter(|| {
            let out = rt.block_on(agent.run("held 1000")).unwrap();
            assert_eq!(out.result.as_deref(), Ok("0 ok 1000 rate-limited"));
        })
    });

    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let standing = Standing::new(Ring::Standard, clock.clone());
    g.bench_function("standing_check", |b| {
        b.iter(|| {
            let check = black_box(&standing).check();
            assert_eq!(check.ring, Ring::Standard);
            check
        })
    });
    let elevated = Standing::new(Ring::Sandbox, clock.clone());
    elevated
        .elevate(Ring::Standard, Duration::from_secs(3600))
        .unwrap();
    g.bench_function("standing_check_elevated", |b| {
        b.iter(|| {
            let check = black_box(&elevated).check();
            assert_eq!(check.ring, Ring::Standard);
            check
        })
    });
    let table = RateTable::default()
        .with_spec(CallClass::Read, Ring::Standard, ENDLESS)
        .unwrap();
    let buckets = ParticipantBuckets::new(table, Ring::Standard, clock.now());
    g.bench_function("bucket_try_acquire", |b| {
        b.iter(|| {
            black_box(&buckets)
                .try_acquire(CallClass::Read, Ring::Standard, clock.now())
                .unwrap()
        })
    });
    let table = RateTable::default()
        .with_spec(CallClass::Read, Ring::Standard, ONE_CALL)
        .unwrap();
    let spent = ParticipantBuckets::new(table, Ring::Standard, clock.now());
    spent
        .try_acquire(CallClass::Read, Ring::Standard, clock.now())
        .unwrap();
    g.bench_function("bucket_try_acquire_refused", |b| {
        b.iter(|| {
            black_box(&spent)
                .try_acquire(CallClass::Read, Ring::Standard, clock.now())
                .unwrap_err()
        })
    });
    g.bench_function("clock_now", |b| b.iter(|| black_box(&clock).now()));
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

criterion_group!(benches, instantiate_call, hostcall, gate, kill_latency);
criterion_main!(benches);
