//! How many live agents fit in a GiB: spawns N `pinger` agents (each a live
//! instance that has answered one call, so its linear memory, instance
//! state and store are all in place), keeps them alive, and reports the
//! memory they added per agent.
//!
//! Run: `env -u RUST_BACKTRACE cargo run --release -p ahv-runtime --example
//! density_probe -- [AGENTS]` (default 9 000: with the warm-up's 1 000, the
//! most pool slots whose address space, each reserved for the largest
//! ring's memory budget, a 47-bit address space holds with room to spare;
//! 11 000 slots fail to reserve it).
//!
//! Memory is read from `/proc/self/smaps_rollup` (Linux) before the first
//! measured agent and after the last, two ways: resident (RSS), which counts
//! a page once per mapping of it, and proportional (PSS), which divides a shared
//! page among its mappings. A page of a module's memory image that every
//! instance reads but none writes is one page of the machine's memory, so
//! PSS is what the agents take; RSS counts it once per agent (4 KiB per
//! `pinger`). 1 000 agents (at most `AGENTS`) are spawned first and kept
//! alive, so that allocator arenas and the component's code are already
//! resident and not counted, while every measured agent still takes a pool
//! slot and heap of its own (dropping them instead let the first 1 000
//! measured agents reuse their slots' resident pages and freed heap, which
//! undercounted 10,000 agents by ~10 %).
//!
//! Environment:
//! - `DENSITY_RAW=1` measures the floor instead: the same number of raw
//!   wasmtime instances of the same component on the same engine (a store
//!   with an empty WASI context, no gate, no limits), each called once.
//! - `DENSITY_COMPONENT=PATH` measures that component instead of `pinger`
//!   (one that exports `run` and needs at most ring 3, such as the Python
//!   and JavaScript `hello` agents the tests build into `target/tmp/`; any
//!   answer that is not an error will do, where `pinger` must answer
//!   "pong"). Its raw floor works only if its `run` calls nothing of this
//!   project's interfaces beyond what `pinger` calls: the raw baseline traps
//!   the rest (the `hello` agents ask `context.whoami`, so theirs fails,
//!   naming that function). `DENSITY_COMPONENT=minimal` measures about the
//!   smallest agent there can be ([`MINIMAL`]: no imports, one core module,
//!   one page of memory), to tell what the engine needs for any agent from
//!   what a guest's own make-up adds.
//! - `DENSITY_SMAPS=1` also prints where the memory went: the growth of
//!   every mapping in `/proc/self/smaps`, summed by kind of mapping (size,
//!   permissions, name). For `pinger` the kinds are:
//!   - `[heap]` (with the system allocator this probe counts through): the
//!     store, its instances and their `VMContext`s, and for agents the
//!     governed state;
//!   - `/memfd:wasm-memory-image` of 8 KiB: the linear memory's data pages,
//!     mapped from the module's image (a page written is copied);
//!   - `[anon]` of 1024 KiB: the rest of the guest's 1 MiB shadow stack
//!     below the image (its top page is touched), and of 56 KiB: the guest
//!     heap above it;
//!   - `[anon]` of 2048 KiB: fiber stacks (the engine's `async_stack_size`).
//!     A store keeps the stack of its last call for the next one, and
//!     Wasmtime offers no way to give it back while the store lives;
//!   - one large `[anon]` mapping: the pool's tables (a page each).
//!
//!   The profile is of resident sizes (RSS), sums growth only (a mapping
//!   that shrank is not subtracted) and counts the probe's own copy of the
//!   mappings, so it comes out a little above the RSS growth.

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

/// What mappings are grouped by: their size, permissions and name (the
/// pool's slots, the fiber stacks and the memory images each come as many
/// mappings of one size).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct MappingKind {
    kib: u64,
    perms: String,
    name: String,
}

impl std::fmt::Display for MappingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} of {} KiB", self.name, self.perms, self.kib)
    }
}

/// Each mapping's kind and resident KiB by its start address, from
/// `/proc/self/smaps`, read line by line (a mapping that grows, such as
/// `[heap]`, keeps its start):
/// reading the file whole (15 MB with 20,000 agents' mappings) left that
/// much freed heap, which the measured agents then reused (it made them
/// look 5 KiB smaller each).
fn mappings() -> anyhow::Result<std::collections::HashMap<u64, (MappingKind, u64)>> {
    use std::io::BufRead;
    let mut smaps = std::io::BufReader::new(std::fs::File::open("/proc/self/smaps")?);
    let mut out = std::collections::HashMap::new();
    let mut current = None;
    let mut line = String::new();
    loop {
        line.clear();
        if smaps.read_line(&mut line)? == 0 {
            return Ok(out);
        }
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse()?;
            if let Some((start, kind)) = &current {
                out.entry(*start)
                    .or_insert_with(|| (MappingKind::clone(kind), 0))
                    .1 += kb;
            }
            continue;
        }
        // A mapping's first line: `start-end perms offset dev inode [name]`.
        let mut words = line.split_whitespace();
        let Some((a, b)) = words
            .next()
            .filter(|w| !w.ends_with(':'))
            .and_then(|w| w.split_once('-'))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let perms = words.next().unwrap_or_default().to_string();
        let name = words.nth(3).unwrap_or("[anon]").to_string();
        current = Some((
            start,
            MappingKind {
                kib: (end - start) >> 10,
                perms,
                name,
            },
        ));
    }
}

/// With `DENSITY_SMAPS`, the resident size of each mapping before the
/// measured instances are made (kept until after: its memory is not freed
/// for them to reuse).
fn smaps_before() -> anyhow::Result<Option<std::collections::HashMap<u64, (MappingKind, u64)>>> {
    if std::env::var_os("DENSITY_SMAPS").is_some() {
        Ok(Some(mappings()?))
    } else {
        Ok(None)
    }
}

/// With `DENSITY_SMAPS`, where the `n` instances' resident memory went: the
/// growth of every mapping since `before`, summed by kind of mapping.
fn print_profile(
    before: Option<std::collections::HashMap<u64, (MappingKind, u64)>>,
    n: usize,
) -> anyhow::Result<()> {
    let Some(before) = before else {
        return Ok(());
    };
    let mut kinds: std::collections::HashMap<MappingKind, (u64, usize)> = Default::default();
    for (start, (kind, kib)) in mappings()? {
        let grown = kib.saturating_sub(before.get(&start).map_or(0, |(_, kib)| *kib));
        if grown > 0 {
            let entry = kinds.entry(kind).or_default();
            entry.0 += grown;
            entry.1 += 1;
        }
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_unstable_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    let total: u64 = kinds.iter().map(|(_, (kib, _))| kib).sum();
    println!(
        "  resident growth by kind of mapping, {:.2} KiB per instance in all:",
        total as f64 / n as f64
    );
    for (kind, (kib, count)) in kinds.iter().take(8) {
        println!(
            "    {:6.2} KiB per instance: {count} x {kind}",
            *kib as f64 / n as f64
        );
    }
    let rest: u64 = kinds.iter().skip(8).map(|(_, (kib, _))| kib).sum();
    if rest > 0 {
        println!(
            "    {:6.2} KiB per instance: the rest",
            rest as f64 / n as f64
        );
    }
    Ok(())
}

/// This process's memory: resident (RSS) and proportional (PSS) bytes,
/// from `/proc/self/smaps_rollup` (Linux). RSS counts a page once per
/// mapping of it, so a memory image page that 9,000 instances map counts
/// 9,000 times; PSS divides it among them, so it counts once: what the
/// instances take of the machine's memory.
fn footprint() -> anyhow::Result<(u64, u64)> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let kib: u64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .ok_or_else(|| anyhow::anyhow!("/proc/self/smaps_rollup has no {name}"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

/// What `n` instances added, per instance.
struct Growth {
    rss: f64,
    pss: f64,
    heap: f64,
    blocks: f64,
    took: std::time::Duration,
}

impl Growth {
    /// Prints the growth of `n` instances, `what` them.
    fn print(&self, n: usize, what: &str) {
        let kib = |b: f64| b / 1024.0;
        let per_gib = |b: f64| f64::from(1 << 30) / b.max(1.0);
        println!(
            "{n} {what}: {:.1} KiB resident (RSS) per instance, {:.0} per GiB; \
             {:.1} KiB proportional (PSS, shared pages counted once), {:.0} per GiB \
             (made and called in {:.2?}, {:.1} µs each)",
            kib(self.rss),
            per_gib(self.rss),
            kib(self.pss),
            per_gib(self.pss),
            self.took,
            self.took.as_secs_f64() * 1e6 / n as f64,
        );
        println!(
            "  of which live on the heap: {:.1} KiB in {:.0} blocks per instance",
            kib(self.heap),
            self.blocks
        );
    }
}

/// A raw instance, kept alive with its store.
type RawInstance = (wasmtime::Store<RawState>, wasmtime::component::Instance);

/// About the smallest agent there can be (`DENSITY_COMPONENT=minimal`): one core
/// module with one page of memory, no imports, and a `run` that answers
/// "pong" from its data.
const MINIMAL: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (data (i32.const 16) "pong")
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "run") (param i32 i32) (result i32)
      (i32.store8 (i32.const 32) (i32.const 0))
      (i32.store (i32.const 36) (i32.const 16))
      (i32.store (i32.const 40) (i32.const 4))
      i32.const 32))
  (core instance $i (instantiate $m))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
      (realloc (core func $i "cabi_realloc")))))
"#;

/// The component measured: `DENSITY_COMPONENT`'s file, else `pinger`
/// (`None`: its answer must be "pong").
fn component_bytes() -> anyhow::Result<(std::borrow::Cow<'static, [u8]>, Option<String>)> {
    match std::env::var_os("DENSITY_COMPONENT") {
        None => Ok((ahv_agents::PINGER.into(), None)),
        Some(name) if name == "minimal" => Ok((wat::parse_str(MINIMAL)?.into(), None)),
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
            "expected \"pong\", the answer was {answer:?}"
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

/// Memory growth per instance while `make` creates `n` of them.
async fn measure<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    n: usize,
    make: F,
) -> anyhow::Result<(T, Growth)> {
    let (rss, pss) = footprint()?;
    let (bytes, blocks) = (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let made = make.await?;
    let took = started.elapsed();
    let (rss_after, pss_after) = footprint()?;
    let per = |a: usize, b: usize| a.saturating_sub(b) as f64 / n as f64;
    let per64 = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64;
    Ok((
        made,
        Growth {
            rss: per64(rss_after, rss),
            pss: per64(pss_after, pss),
            heap: per(LIVE_BYTES.load(Ordering::Relaxed), bytes),
            blocks: per(LIVE_BLOCKS.load(Ordering::Relaxed), blocks),
            took,
        },
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
        let map_before = smaps_before()?;
        let (instances, growth) = measure(n, raw_many(&engine, &pre, n, &custom)).await?;
        growth.print(n, "raw wasmtime instances");
        print_profile(map_before, n)?;
        drop(instances);
        return Ok(());
    }
    let _warm_agents = spawn_many(&runtime, &component, &files, warm, "warm", &custom).await?;

    let map_before = smaps_before()?;
    let (agents, growth) =
        measure(n, spawn_many(&runtime, &component, &files, n, "", &custom)).await?;
    growth.print(n, "live agents");
    print_profile(map_before, n)?;
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
