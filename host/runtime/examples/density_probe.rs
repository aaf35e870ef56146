//! How many live agents fit in a GiB: spawns N `pinger` agents (each a live
//! instance that has answered one call, so its linear memory, instance
//! state and store are all in place), keeps them alive, and reports the
//! resident memory they added per agent.
//!
//! Run: `env -u RUST_BACKTRACE cargo run --release -p ahv-runtime --example
//! density_probe -- [AGENTS]` (default 9 000: with the warm-up's 1 000, the
//! most pool slots whose address space, each reserved for the largest
//! ring's memory budget, a 47-bit address space holds with room to spare;
//! 11 000 slots fail to reserve it). Resident memory is read from
//! `/proc/self/statm` (Linux) before the first agent and after the last;
//! 1 000 agents (at most `AGENTS`) are spawned first and kept alive, so
//! that allocator arenas and the component's code are already resident and
//! not counted, while every measured agent still takes a pool slot and heap
//! of its own (dropping them instead let the first 1 000 measured agents
//! reuse their slots' resident pages and freed heap, which undercounted
//! 10,000 agents by ~10 %). With
//! `DENSITY_RAW=1` it measures the floor instead: the same number of raw
//! wasmtime instances of the same component on the same engine (a store
//! with an empty WASI context, no gate, no limits), each called once. With
//! `DENSITY_SMAPS=1` it also lists the mappings whose resident size grew the
//! most (from `/proc/self/smaps`), to see where an agent's memory lives.
//! `DENSITY_COMPONENT=PATH` measures that component instead of `pinger` (one
//! that exports `run` and needs at most ring 3, such as the Python and
//! JavaScript `hello` agents the tests build into `target/tmp/`; any answer
//! that is not an error will do, where `pinger` must answer "pong"). Its raw
//! floor works only if its `run` calls nothing of this project's interfaces
//! beyond what `pinger` calls: the raw baseline traps the rest (the `hello`
//! agents ask `context.whoami`, so theirs fails, naming that function).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ahv_core::{AgentId, Ring};
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{AgentSpec, Runtime};

// The baseline every bench and probe of this crate measures against.
#[path = "../benches/common/raw.rs"]
mod raw;
use raw::RawState;

/// The system allocator, counting the bytes and blocks live on the heap.
/// (The workspace denies `unsafe`; a global allocator cannot be written
/// without it, and this one only forwards to `System`.)
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the same arguments.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Resident kB per mapping (start address and name), from `/proc/self/smaps`.
fn mappings() -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut out = std::collections::HashMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse()?;
            *out.entry(current.clone()).or_insert(0) += kb;
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('-') && !w.ends_with(':'))
        {
            let mut words = line.split_whitespace();
            let range = words.next().unwrap_or_default();
            let size = range
                .split_once('-')
                .and_then(|(a, b)| {
                    Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
                })
                .unwrap_or(0);
            let name = words.nth(4).unwrap_or("[anon]");
            current = format!("{range} {name} ({} MiB mapped)", size >> 20);
        }
    }
    Ok(out)
}

/// Resident bytes of this process.
fn resident() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("/proc/self/statm has no resident field: {statm:?}"))?
        .parse()?;
    // The page size of every Linux target this runs on.
    Ok(pages * 4096)
}

/// A raw instance, kept alive with its store.
type RawInstance = (wasmtime::Store<RawState>, wasmtime::component::Instance);

/// The component measured: `DENSITY_COMPONENT`'s file, else `pinger`
/// (`None`: its answer must be "pong").
fn component_bytes() -> anyhow::Result<(std::borrow::Cow<'static, [u8]>, Option<String>)> {
    match std::env::var_os("DENSITY_COMPONENT") {
        None => Ok((ahv_agents::PINGER.into(), None)),
        Some(path) => {
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("DENSITY_COMPONENT {}: {e}", path.display()))?;
            Ok((bytes.into(), Some(path.to_string_lossy().into_owned())))
        }
    }
}

/// Fails unless `answer` is what the measured component should answer.
fn check_answer(answer: &Result<String, String>, custom: &Option<String>) -> anyhow::Result<()> {
    match custom {
        None => anyhow::ensure!(
            answer.as_deref() == Ok("pong"),
            "pinger answered {answer:?}"
        ),
        Some(path) => anyhow::ensure!(answer.is_ok(), "{path} answered {answer:?}"),
    }
    Ok(())
}

async fn raw_many(
    engine: &wasmtime::Engine,
    pre: &wasmtime::component::InstancePre<RawState>,
    n: usize,
    custom: &Option<String>,
) -> anyhow::Result<Vec<RawInstance>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut store = raw::raw_store(engine);
        let instance = pre.instantiate_async(&mut store).await?;
        let run =
            instance.get_typed_func::<(&str,), (Result<String, String>,)>(&mut store, "run")?;
        let (answer,) = run.call_async(&mut store, ("",)).await?;
        check_answer(&answer, custom)?;
        out.push((store, instance));
    }
    Ok(out)
}

/// Resident and heap growth per instance while `make` creates `n` of them.
async fn measure<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    n: usize,
    make: F,
) -> anyhow::Result<(T, f64, f64, f64)> {
    let before = resident()?;
    let (bytes_before, blocks_before) = (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    );
    let made = make.await?;
    let per = |a: usize, b: usize| a.saturating_sub(b) as f64 / n as f64;
    Ok((
        made,
        per(resident()? as usize, before as usize),
        per(LIVE_BYTES.load(Ordering::Relaxed), bytes_before),
        per(LIVE_BLOCKS.load(Ordering::Relaxed), blocks_before),
    ))
}

async fn spawn_many(
    runtime: &Runtime,
    component: &ahv_runtime::AgentComponent,
    files: &Arc<Vfs>,
    n: usize,
    tag: &str,
    custom: &Option<String>,
) -> anyhow::Result<Vec<ahv_runtime::Agent>> {
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let spec = AgentSpec::new(
            AgentId::new(format!("did:density:{tag}{i}"))?,
            Ring::Sandbox,
            files.clone(),
        );
        let mut agent = runtime.spawn(component, spec).await?;
        let out = agent.run("").await?;
        check_answer(&out.result, custom).map_err(|e| e.context(format!("agent {i}")))?;
        agents.push(agent);
    }
    Ok(agents)
}

async fn probe(n: usize) -> anyhow::Result<()> {
    // The warm-up's agents stay alive (see the module's doc): room for them
    // and for the measured ones. (Each slot reserves address space for the
    // largest ring's memory budget, so not for much more.)
    let warm = n.min(1000);
    let runtime = Runtime::builder()
        .max_instances(u32::try_from(n + warm + 1)?)
        .build()?;
    let (bytes, custom) = component_bytes()?;
    let component = runtime.load(&bytes)?;
    let dir = tempfile::tempdir()?;
    let files = Arc::new(Vfs::new(
        cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority())?,
        VfsLimits::default(),
    ));
    if std::env::var_os("DENSITY_RAW").is_some() {
        // The raw floor warms up with raw instances of its own.
        let engine = runtime.engine().clone();
        let raw = wasmtime::component::Component::new(&engine, &bytes)?;
        let pre = raw::raw_pre(&engine, &raw);
        let _warm_instances = raw_many(&engine, &pre, warm, &custom).await?;
        let (instances, rss, heap, blocks) =
            measure(n, raw_many(&engine, &pre, n, &custom)).await?;
        println!(
            "{n} raw wasmtime instances: {:.1} KiB resident per instance, {:.0} per GiB; \
             live on the heap {:.1} KiB in {blocks:.0} blocks",
            rss / 1024.0,
            f64::from(1 << 30) / rss.max(1.0),
            heap / 1024.0
        );
        drop(instances);
        return Ok(());
    }
    let _warm_agents = spawn_many(&runtime, &component, &files, warm, "warm", &custom).await?;

    let smaps = std::env::var_os("DENSITY_SMAPS").is_some();
    let map_before = if smaps {
        mappings()?
    } else {
        Default::default()
    };
    let before = resident()?;
    let (bytes_before, blocks_before) = (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let agents = spawn_many(&runtime, &component, &files, n, "", &custom).await?;
    let took = started.elapsed();
    let after = resident()?;
    let heap = LIVE_BYTES
        .load(Ordering::Relaxed)
        .saturating_sub(bytes_before);
    let blocks = LIVE_BLOCKS
        .load(Ordering::Relaxed)
        .saturating_sub(blocks_before);
    let per = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "{n} live agents: +{:.1} MiB resident, {:.1} KiB per agent, {:.0} agents per GiB \
         (spawned and called in {took:.2?}, {:.1} µs each)",
        after.saturating_sub(before) as f64 / f64::from(1 << 20),
        per / 1024.0,
        f64::from(1 << 30) / per.max(1.0),
        took.as_secs_f64() * 1e6 / n as f64,
    );
    println!(
        "  of which live on the heap: {:.1} KiB in {:.0} blocks per agent",
        heap as f64 / n as f64 / 1024.0,
        blocks as f64 / n as f64
    );
    if smaps {
        let mut grown: Vec<(u64, String)> = mappings()?
            .into_iter()
            .map(|(k, v)| {
                (
                    v.saturating_sub(map_before.get(&k).copied().unwrap_or(0)),
                    k,
                )
            })
            .filter(|(d, _)| *d > 0)
            .collect();
        grown.sort_unstable_by(|a, b| b.cmp(a));
        for (kb, name) in grown.iter().take(12) {
            println!(
                "  +{kb} kB ({:.2} kB per agent) {name}",
                *kb as f64 / n as f64
            );
        }
    }
    drop(agents);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let agents: usize = std::env::args().nth(1).map_or(Ok(9_000), |a| a.parse())?;
    anyhow::ensure!(agents > 0, "AGENTS must be at least 1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(probe(agents))
}
