//! The runtime: one engine, one linker per ring, the component caches and the
//! epoch ticker.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahv_core::standing::Standing;
use ahv_core::{AgentId, Ring, RingPolicy, SessionId, TickClock, TraceId};
use thiserror::Error;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::agent::{Agent, AgentSpec};
use crate::bindings::RootPre;
use crate::bindings::agent_hypervisor::agent as wit;
use crate::component::{self, AgentComponent, ComponentInner, DiskCache, LoadError, Manifest};
use crate::gate::{Governor, NoGovernor, RateBudget};
use crate::state::{AgentState, KillHandle};
use crate::trap::{BreachRecorder, TracingRecorder};

/// Where agents get their rate budgets: one per (agent, session), kept
/// across the agent's instances. `ahv_security::rate::RateLimiter` is one.
pub trait RateSource: Send + Sync {
    /// The budget of `agent` in `session`, created on first use (full, sized
    /// for `ring`).
    ///
    /// # Errors
    /// A message when no budget can be had (the source is full).
    fn budget(
        &self,
        agent: &AgentId,
        session: &SessionId,
        ring: Ring,
    ) -> Result<Arc<dyn RateBudget>, String>;
}

/// Why the runtime could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// Wasmtime refused the engine configuration.
    #[error("engine configuration: {message}")]
    Engine {
        /// Wasmtime's description.
        message: String,
    },
    /// Linking the host functions failed (a host bug).
    #[error("linking {what}: {message}")]
    Link {
        /// What was being linked.
        what: String,
        /// Wasmtime's description.
        message: String,
    },
    /// A setting is out of range.
    #[error("{setting}: {message}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Builds a [`Runtime`]. Defaults: the default ring table, no disk cache,
/// a 1 ms epoch tick, up to 1000 live instances, lenient admission
/// (a component may be run in a ring below what it imports; its out-of-ring
/// calls are breaches), breaches reported through `tracing` only, no
/// governor (no elevation is granted, no session to administer), no rate
/// limits.
pub struct RuntimeBuilder {
    policy: RingPolicy,
    cache_dir: Option<PathBuf>,
    cache_max_bytes: u64,
    epoch_tick: Duration,
    max_instances: u32,
    strict_admission: bool,
    breach_recorder: Arc<dyn BreachRecorder>,
    governor: Arc<dyn Governor>,
    rate: Option<Arc<dyn RateSource>>,
    tick_clocks: Vec<TickClock>,
    guest_turns: Option<usize>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            policy: RingPolicy::default(),
            cache_dir: None,
            cache_max_bytes: crate::component::DEFAULT_CACHE_MAX_BYTES,
            epoch_tick: Duration::from_millis(1),
            max_instances: 1000,
            strict_admission: false,
            breach_recorder: Arc::new(TracingRecorder),
            governor: Arc::new(NoGovernor),
            rate: None,
            tick_clocks: Vec::new(),
            guest_turns: None,
        }
    }
}

impl RuntimeBuilder {
    /// Uses this ring table.
    pub fn policy(mut self, policy: RingPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Caches compiled components in `dir` (created if missing). The
    /// directory must be private to this host: its files are loaded as native code.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The most bytes the [`cache_dir`](Self::cache_dir) keeps (default
    /// [`DEFAULT_CACHE_MAX_BYTES`](crate::component::DEFAULT_CACHE_MAX_BYTES),
    /// 1 GiB). After storing a newly compiled component, the runtime removes
    /// the least recently loaded ones until the rest fit; the one just stored
    /// stays even if it alone is larger (so 0 keeps only the newest). Files
    /// in the directory that the cache did not write are left alone.
    pub fn cache_max_bytes(mut self, bytes: u64) -> Self {
        self.cache_max_bytes = bytes;
        self
    }

    /// How often the epoch advances; deadlines and kills are noticed at this granularity.
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.epoch_tick = tick;
        self
    }

    /// Most live agent instances at once (the pooling allocator's size).
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = n;
        self
    }

    /// Refuses to spawn an agent in a ring that lacks a capability it imports.
    pub fn strict_admission(mut self, strict: bool) -> Self {
        self.strict_admission = strict;
        self
    }

    /// Called with every ring breach, before the breaching call traps.
    pub fn on_breach(mut self, recorder: impl BreachRecorder + 'static) -> Self {
        self.breach_recorder = Arc::new(recorder);
        self
    }

    /// Decides elevations and administration, and hears what the gate
    /// observes (expiries, rate-limit refusals).
    pub fn governor(mut self, governor: Arc<dyn Governor>) -> Self {
        self.governor = governor;
        self
    }

    /// Rate-limits every metered host call with budgets from `source`.
    pub fn rate_limits(mut self, source: Arc<dyn RateSource>) -> Self {
        self.rate = Some(source);
        self
    }

    /// Has the epoch ticker advance `clock` at every tick (a cheap coarse
    /// clock for rate budgets; see [`TickClock`]).
    pub fn tick_clock(mut self, clock: TickClock) -> Self {
        self.tick_clocks.push(clock);
        self
    }

    /// How many guests may run wasm at the same moment (default: the
    /// machine's available parallelism). A guest call holds a turn only
    /// while it is polled; a guest that yields at an epoch tick waits for its
    /// next turn in a FIFO queue outside the async runtime's run queue, so a
    /// killed agent's caller, a timer or a request handler never queues
    /// behind every spinning agent. Calls an agent makes from inside its own
    /// host calls (children it runs) share its turn.
    pub fn guest_turns(mut self, n: usize) -> Self {
        self.guest_turns = Some(n);
        self
    }

    /// Builds the engine, the linkers and starts the epoch ticker.
    ///
    /// # Errors
    /// [`BuildError`] if a setting is out of range or wasmtime refuses the configuration.
    pub fn build(self) -> Result<Runtime, BuildError> {
        if self.epoch_tick.is_zero() || self.epoch_tick > Duration::from_secs(1) {
            return Err(BuildError::Setting {
                setting: "epoch_tick",
                message: "must be in (0, 1 s]".into(),
            });
        }
        if self.guest_turns == Some(0) {
            return Err(BuildError::Setting {
                setting: "guest_turns",
                message: "must be at least 1".into(),
            });
        }
        let turns = self.guest_turns.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if self.max_instances == 0 {
            return Err(BuildError::Setting {
                setting: "max_instances",
                message: "must be at least 1".into(),
            });
        }
        let engine = engine(self.max_instances, &PoolSizes::of(&self.policy))?;
        let linkers = [
            linker(&engine, &self.policy, Ring::Root)?,
            linker(&engine, &self.policy, Ring::Privileged)?,
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop, tick) = (engine.clone(), stop.clone(), self.epoch_tick);
            let clocks = self.tick_clocks;
            std::thread::Builder::new()
                .name("ahv-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                        for c in &clocks {
                            c.tick();
                        }
                    }
                })
                .map_err(|e| BuildError::Setting {
                    setting: "epoch_tick",
                    message: e.to_string(),
                })?
        };
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linkers,
                policy: Arc::new(self.policy),
                cache: self.cache_dir.map(|dir| DiskCache {
                    dir,
                    max_bytes: self.cache_max_bytes,
                }),
                loaded: Mutex::new(HashMap::new()),
                strict_admission: self.strict_admission,
                breach_recorder: self.breach_recorder,
                governor: self.governor,
                rate: self.rate,
                // Random per process (std seeds `RandomState` from the OS).
                trace_seed: RandomState::new().hash_one(0u64),
                trace_counter: AtomicU64::new(0),
                metrics: Arc::new(crate::metrics::RuntimeMetrics::new()),
                turns: crate::turns::Turns::new(turns),
                stop,
                ticker: Mutex::new(Some(ticker)),
            }),
        })
    }
}

/// Bytes of each linear memory and table that a freed pool slot keeps
/// resident and resets by hand (zeroes, or for a memory copies back from
/// its module's initial image) instead of with `madvise`. With the
/// `PAGEMAP_SCAN` ioctl (Linux 6.7+, used when available) only the pages the
/// agent dirtied are reset, so a short agent's slot is reused without an
/// `madvise`, a TLB shoot-down or fresh page faults (measured: a join +
/// `run` + terminate with the `pinger` agent 28.5 µs -> 15.6 µs). Without the
/// ioctl Wasmtime resets the lowest `KEEP_RESIDENT` bytes, so this stays small:
/// 1 MiB would cost 45 µs per instance there.
const KEEP_RESIDENT: usize = 64 << 10;

/// The largest per-instance budgets of the ring table: what one agent
/// instance may need from the pool, whatever its ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolSizes {
    /// The largest `memory_bytes`.
    memory_bytes: u64,
    /// The largest `max_core_instances`.
    core_instances: u32,
    /// The largest `max_memories`.
    memories: u32,
    /// The largest `max_tables`.
    tables: u32,
}

impl PoolSizes {
    fn of(policy: &RingPolicy) -> PoolSizes {
        let rings = || Ring::ALL.into_iter().map(|r| policy.limits(r));
        PoolSizes {
            memory_bytes: rings().map(|l| l.memory_bytes).max().unwrap_or(0),
            core_instances: rings().map(|l| l.max_core_instances).max().unwrap_or(0),
            memories: rings().map(|l| l.max_memories).max().unwrap_or(0),
            tables: rings().map(|l| l.max_tables).max().unwrap_or(0),
        }
    }
}

/// Most tables one core module may define (Wasmtime's pooling default,
/// set explicitly so that `crate::images::scan` checks the same).
pub(crate) const POOL_TABLES_PER_MODULE: u32 = 1;
/// Most elements a defined table may start with (Wasmtime's pooling default).
pub(crate) const POOL_TABLE_ELEMENTS: usize = 20_000;
/// Most memories one core module may define (Wasmtime's pooling default).
pub(crate) const POOL_MEMORIES_PER_MODULE: u32 = 1;

/// Memories and tables the pool reserves per live instance, on average.
/// Each pooled memory reserves address space for the largest ring budget
/// and each table its elements, so the pool is not sized for every agent at
/// its ring's maximum count: agents define 1 (Rust, Python,
/// StarlingMonkey) or 2 (QuickJS) memories and 1 or 2 tables.
const POOL_MEMORIES_PER_INSTANCE: u32 = 2;
/// See [`POOL_MEMORIES_PER_INSTANCE`].
const POOL_TABLES_PER_INSTANCE: u32 = 4;

/// The engine, with a pooling allocator for `max_instances` live agent
/// instances:
/// - core instances cost the pool only a counter, so it has room for every
///   instance at the largest ring's `max_core_instances` (a pool of 4 holds
///   4 Python agents of 14 core instances each, not 32 / 14);
/// - memories and tables reserve address space, so the pool has
///   [`POOL_MEMORIES_PER_INSTANCE`] and [`POOL_TABLES_PER_INSTANCE`] per
///   instance, and never less than one instance at the largest ring's
///   `max_memories` and `max_tables` needs.
fn engine(max_instances: u32, sizes: &PoolSizes) -> Result<Engine, BuildError> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances.saturating_mul(sizes.core_instances))
        .total_memories(
            max_instances
                .saturating_mul(POOL_MEMORIES_PER_INSTANCE)
                .max(sizes.memories),
        )
        .total_tables(
            max_instances
                .saturating_mul(POOL_TABLES_PER_INSTANCE)
                .max(sizes.tables),
        )
        .total_stacks(max_instances)
        .max_tables_per_module(POOL_TABLES_PER_MODULE)
        .table_elements(POOL_TABLE_ELEMENTS)
        .max_memories_per_module(POOL_MEMORIES_PER_MODULE)
        .max_memory_size(usize::try_from(sizes.memory_bytes).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .consume_fuel(true)
        // Linear memories start as copy-on-write mappings of the module's
        // initial image, not copies of its data segments: an instance
        // faults in only the pages it touches, and a freed pool slot keeps
        // the image for the next instance of the same module. Measured
        // (2026-12-05, `lang_probe` and `density_probe`): a Python agent's
        // instantiation 6.2 -> 0.55-0.62 ms (its first call 0.17 -> 0.57-0.62
        // ms, the pages faulting in), twice as many live Python agents per
        // GiB (84 -> 165); `pinger` (Rust) 2-3 % faster to instantiate and
        // call, with the same resident size. (Copying was chosen when
        // only small Rust agents existed, before the pool reset slots by
        // `PAGEMAP_SCAN`.) An image is a sealed memfd made from the compiled
        // component in memory (the disk cache is read, never mapped:
        // `component.rs`), so nothing written to a file later reaches a live
        // image; a freed slot is reset to the image before reuse (test
        // `a_recycled_slot_s_initialised_data_is_the_module_s_again`). Each
        // loaded component holds its images (about its data's size, made
        // when it is loaded) until the runtime drops it.
        .memory_init_cow(true)
        // Wasmtime builds a memory's image at compile time where its
        // initialised range is less than twice the data in it, or within
        // this allowance (its default, set here so that `crate::images`
        // bounds it): the JavaScript agents' image is sparse (2.8 MB of data
        // over 8.5 MB) and is mapped only thanks to it (instantiation 1.2 ->
        // 0.03 ms, 317 -> 429 live agents per GiB). Since a 1.7 KB component
        // of 32 modules, each with a byte at either end of 16 MiB, took
        // 1.05 GB to compile (found by review), a component whose images
        // would exceed twice its size plus 1 MiB is refused before it is
        // compiled (`component::check_before_compiling`).
        .memory_guaranteed_dense_image_size(crate::images::DENSE_IMAGE_ALLOWANCE)
        .epoch_interruption(true)
        .concurrency_support(false)
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| BuildError::Engine {
        message: format!("{e:#}"),
    })
}

fn link_err(what: impl Into<String>) -> impl FnOnce(wasmtime::Error) -> BuildError {
    let what = what.into();
    move |e| BuildError::Link {
        what,
        message: format!("{e:#}"),
    }
}

/// The ring an agent's instance is linked for: the most privileged ring it
/// could be granted in its session. Elevation reaches ring 1 at most and
/// ring 0 is only ever assigned, so agents below ring 0 are linked for
/// ring 1 and the gate decides every call from their ring *now*; `admin`
/// stays a breach stub for them.
pub(crate) fn linked_ring(ring: Ring) -> Ring {
    if ring == Ring::Root {
        Ring::Root
    } else {
        Ring::Privileged
    }
}

/// The linker for agents linked at `ring`: WASI (granting nothing; all of
/// WASI p2, `wasi:sockets` included, whose every use the context denies),
/// real adapters (each behind the gate) for the ring's capabilities, breach
/// stubs for all others.
fn linker(
    engine: &Engine,
    policy: &RingPolicy,
    ring: Ring,
) -> Result<Linker<AgentState>, BuildError> {
    let mut l = Linker::<AgentState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut l).map_err(link_err("wasi"))?;
    wit::types::add_to_linker::<_, HasSelf<AgentState>>(&mut l, |s| s)
        .map_err(link_err("types"))?;
    let linked = policy.limits(ring).capabilities;
    crate::capabilities::link(&mut l, linked).map_err(|(cap, e)| BuildError::Link {
        what: cap.interface().to_string(),
        message: format!("{e:#}"),
    })?;
    crate::bulk::link(&mut l, linked).map_err(link_err("bulk-data functions"))?;
    Ok(l)
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    /// The linkers for agents linked at ring 0 and at ring 1 ([`linked_ring`]).
    linkers: [Linker<AgentState>; 2],
    pub(crate) policy: Arc<RingPolicy>,
    cache: Option<DiskCache>,
    loaded: Mutex<HashMap<[u8; 32], AgentComponent>>,
    pub(crate) strict_admission: bool,
    pub(crate) breach_recorder: Arc<dyn BreachRecorder>,
    pub(crate) governor: Arc<dyn Governor>,
    pub(crate) rate: Option<Arc<dyn RateSource>>,
    trace_seed: u64,
    trace_counter: AtomicU64,
    pub(crate) metrics: Arc<crate::metrics::RuntimeMetrics>,
    /// Who may run wasm now ([`RuntimeBuilder::guest_turns`]).
    pub(crate) turns: crate::turns::Turns,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl RuntimeInner {
    fn linker(&self, ring: Ring) -> &Linker<AgentState> {
        &self.linkers[usize::from(linked_ring(ring) != Ring::Root)]
    }

    /// A fresh trace id: unpredictable across processes, unique within one.
    pub(crate) fn next_trace(&self) -> TraceId {
        // Inside a front end's request: its trace (W3C `traceparent`).
        if let Some(t) = crate::trace_context::current() {
            return t;
        }
        let n = self.trace_counter.fetch_add(1, Ordering::Relaxed);
        // SplitMix64 over a random per-process key: ~2 ns instead of two
        // SipHash rounds (~40 ns), on every agent call and host operation.
        // Trace ids need to be unique and unguessable-enough to not collide
        // across processes, not to be secret.
        let x = self.trace_seed.wrapping_add(n.wrapping_mul(2));
        let (hi, lo) = (splitmix64(x), splitmix64(x.wrapping_add(1)));
        TraceId((u128::from(hi) << 64) | u128::from(lo))
    }
}

/// The SplitMix64 output function (Steele, Lea, Flood 2014): a bijection of
/// `u64` with good avalanche, so distinct inputs give distinct outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The Agent Hypervisor runtime: loads components and runs agents inside their ring.
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// The largest component file [`Runtime::load_file`] and the command line
/// read (64 MiB, the HTTP API's upload limit too).
pub const MAX_COMPONENT_FILE_BYTES: u64 = 64 << 20;

/// Reads a component file: a regular file of at most
/// [`MAX_COMPONENT_FILE_BYTES`]. Anything else (a FIFO or device, whose
/// read would block or never end; a larger file) is refused before it is
/// read into memory, with a message naming the path.
///
/// # Errors
/// Why the file was not read.
pub fn read_component_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file (a component is read from one)",
            path.display()
        ));
    }
    if meta.len() > MAX_COMPONENT_FILE_BYTES {
        return Err(format!(
            "{} has {} bytes; a component file may have at most {MAX_COMPONENT_FILE_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_COMPONENT_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_COMPONENT_FILE_BYTES {
        return Err(format!(
            "{} grew past {MAX_COMPONENT_FILE_BYTES} bytes while it was read",
            path.display()
        ));
    }
    Ok(bytes)
}

impl Runtime {
    /// A builder with the defaults described on [`RuntimeBuilder`].
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The ring table in force.
    pub fn policy(&self) -> &RingPolicy {
        &self.inner.policy
    }

    /// What the runtime counted: host calls, breaches, refusals, traps and
    /// latencies, for a Prometheus scrape.
    pub fn metrics(&self) -> &crate::metrics::RuntimeMetrics {
        &self.inner.metrics
    }

    /// The wasmtime engine (for benchmarks and advanced embedding).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// A kill handle for an agent not made yet, over `standing` (its
    /// spec's): given to [`AgentSpec::kill_handle`], it stops the agent
    /// from the moment [`Runtime::spawn`] starts, so a caller can end an
    /// instantiation whose start function waits in the host (a WASI sleep,
    /// an HTTP request), not only an agent already made. Killed before the
    /// spawn, the spawn fails with a `Killed` trap and runs no guest code.
    pub fn kill_handle(&self, standing: Arc<Standing>) -> KillHandle {
        KillHandle::new(
            self.inner.engine.clone(),
            standing,
            Some(self.inner.metrics.clone()),
        )
    }

    /// Reads a component's imports and exports without admitting it.
    ///
    /// # Errors
    /// [`LoadError::Invalid`] if the bytes are not a component.
    pub fn inspect(&self, bytes: &[u8]) -> Result<Manifest, LoadError> {
        component::check_before_compiling(bytes)?;
        let c = component::compile(&self.inner.engine, bytes)?;
        Ok(component::manifest(
            &self.inner.engine,
            &c,
            &self.inner.policy,
        ))
    }

    /// Loads and admits a component: compiled once (or taken from the disk
    /// cache), its imports checked against the contract, its `run` export
    /// checked. Loading the same bytes again returns the same component.
    ///
    /// # Errors
    /// [`LoadError`] naming the refused import, the missing export or the cache failure.
    pub fn load(&self, bytes: &[u8]) -> Result<AgentComponent, LoadError> {
        let hash = component::hash(bytes);
        if let Some(c) = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            return Ok(c.clone());
        }
        // Before the cache too: an artifact cached by an earlier version
        // was compiled without these checks.
        component::check_before_compiling(bytes)?;
        let engine = &self.inner.engine;
        let compiled = match &self.inner.cache {
            Some(cache) => cache.load(engine, &hash, bytes)?,
            None => component::compile(engine, bytes)?,
        };
        let admitted = component::admit(
            engine,
            self.inner.linker(Ring::Root),
            Ring::Root,
            &compiled,
            &self.inner.policy,
        )?;
        // Made here, where loading may block, rather than by the first
        // instantiation (a join): a Python agent's image is ~11 MB.
        compiled
            .initialize_copy_on_write_image()
            .map_err(|e| LoadError::Image {
                message: format!("{e:#}"),
            })?;
        let pres: [std::sync::OnceLock<RootPre<AgentState>>; 4] = Default::default();
        let _ = pres[Ring::Root.number() as usize].set(admitted.pre);
        let c = AgentComponent {
            inner: Arc::new(ComponentInner {
                hash,
                component: compiled,
                manifest: admitted.manifest,
                pres,
                saga: admitted.saga,
            }),
        };
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, c.clone());
        Ok(c)
    }

    /// Loads a component from a file (see [`Runtime::load`]).
    ///
    /// # Errors
    /// [`LoadError::Invalid`] if the file cannot be read, or as [`Runtime::load`].
    pub fn load_file(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<AgentComponent, LoadError> {
        let bytes =
            read_component_file(path.as_ref()).map_err(|message| LoadError::Invalid { message })?;
        self.load(&bytes)
    }

    /// Creates an agent: a live instance of `component` in `spec.ring`,
    /// instantiated now from the cached `InstancePre`.
    ///
    /// # Errors
    /// [`crate::AgentError`] if strict admission refuses the ring, linking
    /// fails, or instantiation traps.
    pub async fn spawn(
        &self,
        component: &AgentComponent,
        spec: AgentSpec,
    ) -> Result<Agent, crate::AgentError> {
        Agent::spawn(self.clone(), component.clone(), spec).await
    }

    /// A fresh trace id (128 bits, as W3C trace context): unpredictable
    /// across processes, unique within one. Every call into an agent gets
    /// one; the hypervisor gives one to every host operation. Inside
    /// [`crate::trace_context::with_trace`] (a front end's request), the
    /// request's trace instead.
    pub fn new_trace_id(&self) -> TraceId {
        self.inner.next_trace()
    }

    /// The cached pre-instantiated component for agents whose base ring is
    /// `ring` (built on first use; rings 1–3 share one, see `linked_ring`).
    ///
    /// # Errors
    /// [`LoadError::Link`] if the component cannot be linked (a host bug after admission).
    pub fn instance_pre(
        &self,
        component: &AgentComponent,
        ring: Ring,
    ) -> Result<RootPre<AgentState>, LoadError> {
        self.instance_pre_ref(component, ring).cloned()
    }

    /// [`Runtime::instance_pre`], borrowed from `component`'s cache: a
    /// spawn need not clone (and then drop) its handles.
    pub(crate) fn instance_pre_ref<'c>(
        &self,
        component: &'c AgentComponent,
        ring: Ring,
    ) -> Result<&'c RootPre<AgentState>, LoadError> {
        let ring = linked_ring(ring);
        let slot = &component.inner.pres[ring.number() as usize];
        if let Some(pre) = slot.get() {
            return Ok(pre);
        }
        let link = |e: wasmtime::Error| LoadError::Link {
            ring,
            message: format!("{e:#}"),
        };
        let pre = self
            .inner
            .linker(ring)
            .instantiate_pre(&component.inner.component)
            .map_err(link)?;
        let pre = RootPre::new(pre).map_err(link)?;
        Ok(slot.get_or_init(|| pre))
    }

    pub(crate) fn check_strict(
        &self,
        component: &AgentComponent,
        ring: Ring,
    ) -> Result<(), LoadError> {
        if !self.inner.strict_admission {
            return Ok(());
        }
        let have = self.inner.policy.limits(ring).capabilities;
        match component
            .manifest()
            .capabilities
            .iter()
            .find(|c| !have.contains(*c))
        {
            None => Ok(()),
            Some(capability) => Err(LoadError::RingTooLow {
                capability,
                given: ring,
                needed: component
                    .manifest()
                    .lowest_ring
                    .map_or("no ring".into(), |r| r.to_string()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component file is read only if it is a regular file of at most
    /// 64 MiB: a FIFO (whose read would block) and a larger file are
    /// refused before anything is read, naming the path.
    #[test]
    fn a_component_file_must_be_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("a.wasm");
        std::fs::write(&small, b"\0asm").unwrap();
        assert_eq!(read_component_file(&small).unwrap(), b"\0asm");
        let big = dir.path().join("big.wasm");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_COMPONENT_FILE_BYTES + 1)
            .unwrap();
        let e = read_component_file(&big).unwrap_err();
        assert!(
            e.contains("big.wasm") && e.contains("at most 67108864"),
            "{e}"
        );
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_component_file(&fifo).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(
            read_component_file(dir.path())
                .unwrap_err()
                .contains("not a regular file")
        );
        assert!(
            read_component_file(&dir.path().join("none"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
    use ahv_core::RingLimits;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The reference generator from seed 0: state += golden, then mix.
        let golden = 0x9e37_79b9_7f4a_7c15u64;
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(golden), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(splitmix64(golden.wrapping_mul(2)), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn the_pool_is_sized_by_the_largest_ring_budgets() {
        let default = PoolSizes::of(&RingPolicy::default());
        assert_eq!(
            default,
            PoolSizes {
                memory_bytes: 1 << 30,
                core_instances: ahv_core::DEFAULT_MAX_CORE_INSTANCES,
                memories: ahv_core::DEFAULT_MAX_MEMORIES,
                tables: ahv_core::DEFAULT_MAX_TABLES,
            }
        );
        // A ring that allows more (here the least privileged) sizes the pool.
        let mut sandbox = RingLimits::default_for(Ring::Sandbox);
        (
            sandbox.max_core_instances,
            sandbox.max_memories,
            sandbox.max_tables,
        ) = (64, 9, 40);
        let policy = RingPolicy::default()
            .with_limits(Ring::Sandbox, sandbox)
            .unwrap();
        let sizes = PoolSizes::of(&policy);
        assert_eq!(
            (sizes.core_instances, sizes.memories, sizes.tables),
            (64, 9, 40)
        );
        // The pool it makes can be built.
        engine(2, &sizes).unwrap();
    }

    /// A component's compiled form holds its memory images: one made of a
    /// few bytes far apart must not be padded out to megabytes while it is
    /// compiled (Wasmtime pads up to 16 MiB per memory; this component of 8
    /// modules would compile to 128 MiB). It is refused before compiling.
    #[test]
    fn sparse_data_segments_are_refused_before_they_are_padded_into_large_images() {
        let far = (16 << 20) - (64 << 10);
        let mut text = String::from("(component\n");
        for i in 0..8 {
            text += &format!(
                "(core module $m{i} (memory 256) (data (i32.const 0) \"a\") \
                 (data (i32.const {far}) \"b\"))\n"
            );
        }
        text += ")";
        let bytes = wat::parse_str(&text).unwrap();
        let runtime = Runtime::builder().max_instances(1).build().unwrap();
        let Err(LoadError::Invalid { message }) = runtime.load(&bytes) else {
            panic!("a component of sparse images was not refused as invalid");
        };
        assert!(
            message.starts_with(&format!(
                "its data segments would make {} bytes of memory images, more than",
                8 * (16 << 20)
            )) && message.ends_with(
                "the largest, memory 0 of core module 0, holds 2 bytes of data over 16777216 bytes"
            ),
            "{message}"
        );
        // A module half a MiB sparse is within the bound: compiled, its
        // image made.
        let near = 512 << 10;
        let one = wat::parse_str(format!(
            "(component (core module (memory 256) (data (i32.const 0) \"a\") \
             (data (i32.const {near}) \"b\")))"
        ))
        .unwrap();
        let compiled = crate::component::compile(runtime.engine(), &one).unwrap();
        assert!(compiled.serialize().unwrap().len() > near);
    }

    #[test]
    fn trace_ids_are_distinct_and_never_the_untraced_zero() {
        let runtime = Runtime::builder().max_instances(1).build().unwrap();
        let ids: std::collections::HashSet<u128> =
            (0..10_000).map(|_| runtime.new_trace_id().0).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
    }
}
