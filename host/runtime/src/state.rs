//! Per-instance state: what a store carries for one live agent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ahv_core::standing::Standing;
use ahv_core::{RingLimits, RingPolicy, TraceId};
use ahv_governance::actions::ActionRegistry;
use ahv_governance::files::FileSpace;
use ahv_governance::journal::{Change, ChangeJournal};
use ahv_governance::session_core::SessionCore;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::{Contexts, Handles, admin, context, elevation, net, spawn};
use crate::gate::{Gate, GateInit};
use crate::trap::{Killed, MemoryLimitExceeded};

/// Longest log line kept, in bytes; longer lines are cut and marked.
pub const MAX_LOG_LINE: usize = 4096;
/// Most log bytes kept per call by default (each line also costs
/// [`LOG_LINE_COST`]); later lines are counted as dropped. The effective
/// ring's [`RingLimits::log_bytes`] decides per call.
pub const MAX_LOG_BYTES_PER_CALL: usize = ahv_core::DEFAULT_LOG_BYTES_PER_CALL;
/// Most log lines kept per call by default, however short; later lines are
/// counted as dropped. The effective ring's [`RingLimits::log_lines`] decides per call.
pub const MAX_LOG_LINES_PER_CALL: usize = ahv_core::DEFAULT_LOG_LINES_PER_CALL;
/// What a line costs against [`MAX_LOG_BYTES_PER_CALL`] beside its text: an
/// empty line is not free (it is a `LogLine` on the host), so five million
/// `log("")` calls cannot grow the host.
pub const LOG_LINE_COST: usize = 64;

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The `log` capability.
    Log,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// The host, about the agent's call (why an outbound request was refused).
    Host,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected.
    Warn,
    /// A failure.
    Error,
}

/// One line of an agent's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity (stdout lines are `Info`, stderr lines `Warn`).
    pub level: LogLevel,
    /// Where it came from.
    pub source: LogSource,
    /// The text (at most [`MAX_LOG_LINE`] bytes).
    pub message: String,
}

/// A bounded log buffer shared by the `log` capability and stdout/stderr.
///
/// Bounded in lines and bytes per call, and linear in what the guest writes:
/// stream output is split in one pass, an unterminated line keeps at most
/// [`MAX_LOG_LINE`] bytes, and once the budget is spent a line costs a counter
/// increment, not a copy.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    lines: Vec<LogLine>,
    bytes: usize,
    dropped: usize,
    /// Unterminated output per stream (stdout, stderr), at most `MAX_LOG_LINE + 1` bytes.
    partial: [Vec<u8>; 2],
    /// The current call's budget in lines (the effective ring's `log_lines`).
    max_lines: usize,
    /// The current call's budget in bytes (the effective ring's `log_bytes`).
    max_bytes: usize,
}

impl Default for LogBuffer {
    fn default() -> Self {
        LogBuffer {
            lines: Vec::new(),
            bytes: 0,
            dropped: 0,
            partial: [Vec::new(), Vec::new()],
            max_lines: MAX_LOG_LINES_PER_CALL,
            max_bytes: MAX_LOG_BYTES_PER_CALL,
        }
    }
}

impl LogBuffer {
    /// Sets the budget of the call that starts (its effective ring's).
    pub(crate) fn set_budget(&mut self, max_lines: usize, max_bytes: usize) {
        self.max_lines = max_lines;
        self.max_bytes = max_bytes;
    }

    /// Keeps one line if the call's budget allows, cut to [`MAX_LOG_LINE`]
    /// bytes before anything is copied; otherwise counts it as dropped.
    pub(crate) fn push(&mut self, level: LogLevel, source: LogSource, message: &str) {
        let cost = message.len().min(MAX_LOG_LINE) + LOG_LINE_COST;
        if self.lines.len() >= self.max_lines || self.bytes.saturating_add(cost) > self.max_bytes {
            self.dropped += 1;
            return;
        }
        let message = if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{} …[truncated]", &message[..cut])
        } else {
            message.to_string()
        };
        self.bytes += cost;
        self.lines.push(LogLine {
            level,
            source,
            message,
        });
    }

    fn stream(source: LogSource) -> (usize, LogLevel) {
        if source == LogSource::Stdout {
            (0, LogLevel::Info)
        } else {
            (1, LogLevel::Warn)
        }
    }

    /// Splits stream output into lines in one pass over `bytes`.
    fn write_stream(&mut self, source: LogSource, bytes: &[u8]) {
        let (idx, _) = Self::stream(source);
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.extend_partial(idx, &rest[..pos]);
            self.end_line(source);
            rest = &rest[pos + 1..];
        }
        self.extend_partial(idx, rest);
    }

    /// Adds to the unterminated line, keeping one byte past the longest line
    /// so that `push` still sees it is too long and marks it.
    fn extend_partial(&mut self, idx: usize, bytes: &[u8]) {
        let partial = &mut self.partial[idx];
        let room = (MAX_LOG_LINE + 1).saturating_sub(partial.len());
        partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Ends the current line of `source`'s stream.
    fn end_line(&mut self, source: LogSource) {
        let (idx, level) = Self::stream(source);
        let line = std::mem::take(&mut self.partial[idx]);
        if self.lines.len() >= self.max_lines {
            // The common case of a flood: no decoding, no allocation.
            self.dropped += 1;
        } else {
            self.push(level, source, &String::from_utf8_lossy(&line));
        }
        // Keep the allocation for the next line.
        self.partial[idx] = line;
        self.partial[idx].clear();
    }

    /// Takes the lines of the call that just ended, flushing partial output.
    /// If lines were dropped, the last line says how many, once.
    pub(crate) fn take(&mut self) -> (Vec<LogLine>, usize) {
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let (idx, _) = Self::stream(source);
            if !self.partial[idx].is_empty() {
                self.end_line(source);
            }
        }
        let dropped = std::mem::take(&mut self.dropped);
        self.bytes = 0;
        let mut lines = std::mem::take(&mut self.lines);
        if dropped > 0 {
            lines.push(LogLine {
                level: LogLevel::Warn,
                source: LogSource::Log,
                message: format!(
                    "[ahv] {dropped} log line(s) dropped: the log budget is \
                     {} lines and {} bytes per call",
                    self.max_lines, self.max_bytes
                ),
            });
        }
        (lines, dropped)
    }
}

/// The guest's stdout or stderr, written into the agent's log.
#[derive(Clone)]
pub(crate) struct LogStream {
    pub(crate) log: Arc<Mutex<LogBuffer>>,
    pub(crate) source: LogSource,
}

impl LogStream {
    fn write_bytes(&self, bytes: &[u8]) {
        // A poisoned lock only means another writer panicked; the buffer is still usable.
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.write_stream(self.source, bytes);
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The memory and table limiter every store gets.
///
/// The ring's memory budget bounds the *sum* of everything the instance
/// allocates: every linear memory of every core instance inside the
/// component, and every table (at [`TABLE_ELEMENT_BYTES`] per element). A
/// per-memory cap would let a component of seven core instances hold seven
/// budgets (found by hostile testing: 7 × 30 MiB against a 32 MiB cap).
///
/// How many core instances, memories and tables the store may create comes
/// from the ring the instance is created in ([`RingLimits::max_core_instances`],
/// [`RingLimits::max_memories`], [`RingLimits::max_tables`]); those only
/// matter while instantiating, so a later ring change does not touch them.
pub(crate) struct Limiter {
    /// The ring's budget, in bytes.
    limit: u64,
    /// Most core module instances (the creating ring's).
    instances: usize,
    /// Most linear memories (the creating ring's).
    memories: usize,
    /// Most tables (the creating ring's).
    tables: usize,
    /// Bytes of memories and tables granted so far (initial sizes included:
    /// Wasmtime asks the limiter for those too, from a current size of 0).
    /// A growth granted here that Wasmtime then fails to carry out stays
    /// counted: Wasmtime also reports failures it never asked about, so
    /// giving bytes back could undercount; overcounting only costs the guest
    /// that failed.
    used: u64,
}

/// What one table element costs against the memory budget (a pointer).
pub const TABLE_ELEMENT_BYTES: u64 = 8;

/// Most table elements one table may have (Rust guests use a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl Limiter {
    /// A limiter with the budgets of `limits` (the ring the instance is created in).
    pub(crate) fn new(limits: &RingLimits) -> Limiter {
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Limiter {
            limit: limits.memory_bytes,
            instances: count(limits.max_core_instances),
            memories: count(limits.max_memories),
            tables: count(limits.max_tables),
            used: 0,
        }
    }

    /// Sets the budget for the next call (the effective ring's). Memory
    /// already held is kept; growth past the new budget fails.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Bytes of memories and tables the instance holds now.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Grants growth from `current` to `desired` bytes if the total stays
    /// within the budget; otherwise the typed trap.
    fn grow(&mut self, current: u64, desired: u64) -> wasmtime::Result<bool> {
        let extra = desired.saturating_sub(current);
        let total = self.used.saturating_add(extra);
        if total > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.limit,
                requested: total,
            }));
        }
        self.used = total;
        Ok(true)
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current as u64, desired as u64)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.grow(
            (current as u64).saturating_mul(TABLE_ELEMENT_BYTES),
            (desired as u64).saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

/// The governed changes of the current call, shared by the capabilities
/// that make them (like the log buffer): each adapter records what went
/// through, and the agent takes the journal when the call ends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Journal(Arc<Mutex<ChangeJournal>>);

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChangeJournal> {
        // A poisoned lock only means a panic elsewhere; the journal is still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one change of the current call.
    pub(crate) fn record(&self, change: Change) {
        self.lock().push(change);
    }

    /// The bytes of state keys and previous values the current call's
    /// changes keep ([`ChangeJournal::state_bytes`]).
    pub(crate) fn state_bytes(&self) -> u64 {
        self.lock().state_bytes()
    }

    /// Takes the changes recorded since the last take (the call's).
    pub(crate) fn take(&self) -> Vec<Change> {
        self.lock().take()
    }
}

/// A kill switch for one agent. Cheap to clone; usable from any thread.
#[derive(Clone, Debug)]
pub struct KillHandle {
    inner: Arc<KillState>,
    engine: wasmtime::Engine,
    /// Marked killed too, so the gate refuses the agent's host calls at once.
    standing: Arc<Standing>,
    /// Where kill latencies are recorded (absent for handles made in tests).
    metrics: Option<Arc<crate::metrics::RuntimeMetrics>>,
}

#[derive(Debug, Default)]
struct KillState {
    killed: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Wakes a call that is waiting inside an async host function (where
    /// epoch checks cannot reach it) or for its turn.
    notify: tokio::sync::Notify,
    /// Set while a turn polls the agent's guest (see `crate::turns`).
    on_turn: AtomicBool,
    /// Set when the guest yielded at an epoch tick: its next poll waits for a turn.
    spent: AtomicBool,
    /// When the kill was made.
    killed_at: OnceLock<Instant>,
    /// How long after the kill the guest's code stopped.
    stopped_after: OnceLock<Duration>,
}

impl KillHandle {
    pub(crate) fn new(
        engine: wasmtime::Engine,
        standing: Arc<Standing>,
        metrics: Option<Arc<crate::metrics::RuntimeMetrics>>,
    ) -> KillHandle {
        KillHandle {
            inner: Arc::default(),
            engine,
            standing,
            metrics,
        }
    }

    /// Stops the agent: a running call traps with `Killed` at its next epoch
    /// check (the epoch is bumped at once, so that is within microseconds for
    /// a busy loop); a call waiting in a host call (a sleep) or for its turn
    /// is ended without its guest running again; the gate refuses every host
    /// call from now on; later calls are refused. Killing twice keeps the
    /// first reason.
    pub fn kill(&self, reason: impl Into<String>) {
        {
            let mut r = self.inner.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        let at = *self.inner.killed_at.get_or_init(Instant::now);
        self.inner.killed.store(true, Ordering::SeqCst);
        self.standing.kill();
        self.engine.increment_epoch();
        // A guest not on a turn now never runs again: every turn checks the
        // flag (stored above, sequentially consistent with `on_turn`) before
        // it resumes the guest.
        if !self.inner.on_turn.load(Ordering::SeqCst) {
            self.mark_stopped(at);
        }
        self.inner.notify.notify_waiters();
    }

    /// The standing the handle kills with the agent.
    pub(crate) fn standing(&self) -> &Arc<Standing> {
        &self.standing
    }

    /// The engine whose epoch the handle advances.
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// True once [`KillHandle::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.inner.killed.load(Ordering::SeqCst)
    }

    /// How long after [`KillHandle::kill`] the agent's guest code stopped:
    /// zero when no guest code of it was running at the kill (it was
    /// between turns, waiting in the host, or not called), otherwise the time
    /// until it trapped (its next epoch check or host call). `None` before a
    /// kill, or while the guest it interrupted has not stopped yet.
    pub fn stopped_after(&self) -> Option<Duration> {
        self.inner.stopped_after.get().copied()
    }

    fn mark_stopped(&self, at: Instant) {
        let took = at.saturating_duration_since(self.inner.killed_at.get().copied().unwrap_or(at));
        if self.inner.stopped_after.set(took).is_ok()
            && let Some(m) = &self.metrics
        {
            m.kill_stopped(took);
        }
    }

    /// The guest of a killed agent stops now (it trapped, or a turn refused
    /// to resume it); returns the trap's cause.
    pub(crate) fn stop(&self) -> Killed {
        if self.is_killed() {
            self.mark_stopped(Instant::now());
        }
        self.killed().unwrap_or(Killed {
            reason: "killed".into(),
        })
    }

    /// The call the kill interrupted has ended (however it ended): records
    /// when its guest stopped if nothing did so yet, and how long the caller
    /// waited for the trap.
    pub(crate) fn call_ended(&self) {
        if !self.is_killed() {
            return;
        }
        let now = Instant::now();
        self.mark_stopped(now);
        if let (Some(m), Some(at)) = (&self.metrics, self.inner.killed_at.get()) {
            m.kill_delivered(now.saturating_duration_since(*at));
        }
    }

    /// The guest yields at an epoch tick, having used up its slice.
    pub(crate) fn mark_spent(&self) {
        self.inner.spent.store(true, Ordering::Relaxed);
    }

    /// Whether the guest yielded at a tick since this was last asked.
    pub(crate) fn take_spent(&self) -> bool {
        self.inner.spent.swap(false, Ordering::Relaxed)
    }

    /// Marks the start or end of a poll of this agent's guest.
    pub(crate) fn set_on_turn(&self, on: bool) {
        self.inner.on_turn.store(on, Ordering::SeqCst);
    }

    /// Resolves once the agent is killed.
    pub(crate) async fn cancelled(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches it even if not yet polled.
            let notified = self.inner.notify.notified();
            if self.is_killed() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn killed(&self) -> Option<Killed> {
        if !self.is_killed() {
            return None;
        }
        let reason = self
            .inner
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(Killed {
            reason: reason.unwrap_or_default(),
        })
    }
}

/// Everything one live agent instance's host functions can see: the gate
/// (identity, standing, rate budget, the current call's trace and deadline)
/// and each capability's context.
pub struct AgentState {
    pub(crate) gate: Gate,
    /// The capabilities' state; `caps.handles` holds the log buffer and
    /// the current call's governed changes.
    pub(crate) caps: Contexts,
    pub(crate) limiter: Limiter,
    /// Most bytes one WASI random request may produce (the effective ring's).
    pub(crate) random_limit: u64,
    /// WASI's context, made at the instance's first use of it: most calls
    /// make no WASI call, and making one (its random generators seeded,
    /// its streams and checks boxed) costs about a third of a microsecond,
    /// some 4 % of a fresh instance's spawn and call. Boxed: a live
    /// instance that never made one keeps 8 bytes, not 272.
    wasi: Option<Box<WasiCtx>>,
    /// The ceiling of one WASI random request, from the ring the instance
    /// was created in (`WasiCtxBuilder::max_random_size`).
    random_ceiling: u64,
    table: ResourceTable,
}

pub(crate) struct StateInit {
    pub gate: GateInit,
    pub files: Arc<dyn FileSpace>,
    pub shared: Option<Arc<SessionCore>>,
    pub actions: Arc<ActionRegistry>,
    pub policy: Arc<RingPolicy>,
    pub net: Arc<ahv_security::net::NetAccess>,
}

impl AgentState {
    /// The only constructor: the store's limits come from `limits` (the
    /// ring the instance is created in).
    /// `now` is the instantiation's start.
    pub(crate) fn new(init: StateInit, limits: &RingLimits, now: Instant) -> AgentState {
        let log = Arc::new(Mutex::new(LogBuffer::default()));
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resources);
        let caps = Contexts {
            handles: Handles {
                files: init.files,
                shared: init.shared,
                registry: init.actions,
                changes: Journal::default(),
                log,
            },
            context: context::Ctx,
            elevation: elevation::Ctx,
            spawn: spawn::Ctx,
            admin: admin::Ctx {
                policy: init.policy,
            },
            net: net::LazyCtx::new(init.net),
        };
        let random_ceiling = u64::try_from(limits.random_bytes).unwrap_or(u64::MAX);
        AgentState {
            gate: Gate::new(init.gate, now),
            caps,
            limiter: Limiter::new(limits),
            random_limit: random_ceiling,
            wasi: None,
            random_ceiling,
            table,
        }
    }

    /// Starts a call at `now`: its trace id, deadline and memory budget.
    pub(crate) fn arm(&mut self, trace: TraceId, limits: &RingLimits, now: Instant) {
        self.gate.trace = trace;
        self.gate.deadline = limits.deadline;
        self.gate.call_deadline = now + limits.deadline;
        self.limiter.set_limit(limits.memory_bytes);
        self.random_limit = u64::try_from(limits.random_bytes).unwrap_or(u64::MAX);
        self.caps
            .handles
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_budget(limits.log_lines, limits.log_bytes);
    }
}

impl AgentState {
    /// What the `net` capability's functions need, borrowed apart.
    /// (The context is made here at the instance's first use of `net`.)
    pub(crate) fn net_parts(&mut self) -> (&mut Gate, &mut net::Ctx, &mut ResourceTable) {
        let AgentState {
            gate, caps, table, ..
        } = self;
        let Contexts { handles, net, .. } = caps;
        let ctx = net.get_or_make(|access| {
            net::Ctx::new(
                access,
                gate.agent.clone(),
                handles.shared.clone(),
                handles.log.clone(),
            )
        });
        (gate, ctx, table)
    }

    /// Whether the instance made WASI's context yet (for tests).
    #[cfg(test)]
    pub(crate) fn wasi_made(&self) -> bool {
        self.wasi.is_some()
    }

    /// The WASI context (for the bounded random functions in `crate::bulk`),
    /// made now if this is the instance's first use of it.
    pub(crate) fn wasi_mut(&mut self) -> &mut WasiCtx {
        self.ctx().ctx
    }
}

impl WasiView for AgentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let AgentState {
            wasi,
            random_ceiling,
            caps,
            table,
            ..
        } = self;
        WasiCtxView {
            ctx: wasi
                .get_or_insert_with(|| Box::new(agent_wasi(&caps.handles.log, *random_ceiling))),
            table,
        }
    }
}

/// The WASI context every agent instance gets, made at its first WASI call
/// (see `AgentState::wasi`); `log` takes its stdout and stderr.
fn agent_wasi(log: &Arc<Mutex<LogBuffer>>, random_ceiling: u64) -> WasiCtx {
    // Grants nothing: no preopened directories, no environment, no
    // arguments, no network. Only stdout/stderr (into the log), clocks
    // and randomness. The network denials are wasmtime-wasi's defaults
    // too; they are spelled out because `wasi:sockets` is linked for
    // every agent (toolchains import it whether or not the agent uses
    // it: `crate::component::WASI_DENIED`), so these lines are what
    // turns every socket call into an `access-denied` (or, for a name
    // lookup, a resolver failure) the guest sees.
    WasiCtx::builder()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .stdout(LogStream {
            log: log.clone(),
            source: LogSource::Stdout,
        })
        .stderr(LogStream {
            log: log.clone(),
            source: LogSource::Stderr,
        })
        .allow_blocking_current_thread(false)
        // Enforced per call (as a typed trap, at the effective ring's
        // limit) by `crate::bulk`, before allocating; this is the ceiling.
        .max_random_size(random_ceiling)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buffer_splits_stream_output_into_lines_and_bounds_it() {
        let mut b = LogBuffer::default();
        b.write_stream(LogSource::Stdout, b"one\ntw");
        b.write_stream(LogSource::Stdout, b"o\nthree");
        b.push(LogLevel::Error, LogSource::Log, "direct");
        let (lines, dropped) = b.take();
        let texts: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(texts, ["one", "two", "direct", "three"]);
        assert_eq!(dropped, 0);
        assert_eq!(lines[0].level, LogLevel::Info);

        let long = "é".repeat(MAX_LOG_LINE);
        b.push(LogLevel::Info, LogSource::Log, &long);
        let (lines, _) = b.take();
        assert!(
            lines[0].message.len() < MAX_LOG_LINE + 20 && lines[0].message.ends_with("[truncated]")
        );

        let fit = MAX_LOG_BYTES_PER_CALL / (MAX_LOG_LINE + LOG_LINE_COST);
        for _ in 0..fit + 10 {
            b.push(LogLevel::Info, LogSource::Log, &"x".repeat(MAX_LOG_LINE));
        }
        let (lines, dropped) = b.take();
        assert_eq!(dropped, 10);
        assert_eq!(lines.len(), fit + 1, "the kept lines and one report");
        assert_eq!(
            lines[fit].message,
            format!(
                "[ahv] 10 log line(s) dropped: the log budget is {MAX_LOG_LINES_PER_CALL} lines \
                 and {MAX_LOG_BYTES_PER_CALL} bytes per call"
            )
        );
    }

    #[test]
    fn the_budget_set_for_a_call_bounds_its_lines_and_bytes() {
        let mut b = LogBuffer::default();
        b.set_budget(3, MAX_LOG_BYTES_PER_CALL);
        for n in 0..10 {
            b.push(LogLevel::Info, LogSource::Log, &format!("line {n}"));
        }
        b.write_stream(LogSource::Stdout, b"out\n");
        let (lines, dropped) = b.take();
        let texts: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            texts,
            [
                "line 0",
                "line 1",
                "line 2",
                "[ahv] 8 log line(s) dropped: the log budget is 3 lines and 262144 bytes per call"
            ]
        );
        assert_eq!(dropped, 8);
        // Bytes: two lines of 10 bytes fit in 2 × (10 + LOG_LINE_COST), a third does not.
        b.set_budget(100, 2 * (10 + LOG_LINE_COST));
        for _ in 0..3 {
            b.push(LogLevel::Info, LogSource::Log, &"y".repeat(10));
        }
        let (lines, dropped) = b.take();
        assert_eq!((lines.len(), dropped), (3, 1), "two kept and the report");
    }

    #[test]
    fn empty_lines_are_not_free() {
        let mut b = LogBuffer::default();
        for _ in 0..1_000_000 {
            b.push(LogLevel::Info, LogSource::Log, "");
        }
        let (lines, dropped) = b.take();
        assert_eq!(lines.len(), MAX_LOG_LINES_PER_CALL + 1);
        assert_eq!(dropped, 1_000_000 - MAX_LOG_LINES_PER_CALL);
        let (lines, dropped) = b.take();
        assert!(
            lines.is_empty() && dropped == 0,
            "reported once, budget reset"
        );
    }

    #[test]
    fn newline_floods_are_split_in_one_pass_and_bounded() {
        let mut b = LogBuffer::default();
        // 64 MiB of newlines in 64 KiB writes: each byte is a line.
        let chunk = vec![b'\n'; 64 << 10];
        for _ in 0..1024 {
            b.write_stream(LogSource::Stderr, &chunk);
        }
        // An unterminated line longer than any line keeps only a line's worth.
        b.write_stream(LogSource::Stdout, &vec![b'y'; 10 << 20]);
        assert!(b.partial[0].len() <= MAX_LOG_LINE + 1);
        let (lines, dropped) = b.take();
        assert_eq!(lines.len(), MAX_LOG_LINES_PER_CALL + 1);
        assert_eq!(dropped, (64 << 20) + 1 - MAX_LOG_LINES_PER_CALL);
        assert!(lines.iter().all(|l| l.message.len() < MAX_LOG_LINE + 200));
    }

    #[test]
    fn the_instance_memory_and_table_counts_are_the_creating_ring_s() {
        let mut limits = RingLimits::default_for(ahv_core::Ring::Standard);
        (
            limits.max_core_instances,
            limits.max_memories,
            limits.max_tables,
        ) = (14, 1, 2);
        let l = Limiter::new(&limits);
        assert_eq!((l.instances(), l.memories(), l.tables()), (14, 1, 2));
        let d = Limiter::new(&RingLimits::default_for(ahv_core::Ring::Sandbox));
        assert_eq!(
            (d.instances(), d.memories(), d.tables()),
            (
                ahv_core::DEFAULT_MAX_CORE_INSTANCES as usize,
                ahv_core::DEFAULT_MAX_MEMORIES as usize,
                ahv_core::DEFAULT_MAX_TABLES as usize
            )
        );
    }

    #[test]
    fn the_memory_budget_bounds_all_memories_and_tables_together() {
        const MIB: usize = 1 << 20;
        let mut sandbox = RingLimits::default_for(ahv_core::Ring::Sandbox);
        sandbox.memory_bytes = 32 << 20;
        let mut l = Limiter::new(&sandbox);
        // Seven core instances of 30 MiB each: only the first fits.
        assert!(l.memory_growing(0, 30 * MIB, None).unwrap());
        let e = l.memory_growing(0, 30 * MIB, None).unwrap_err();
        let m = e.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!((m.limit, m.requested), (32 << 20, 60 << 20));
        // Tables count too, at their element size.
        assert!(l.table_growing(0, 1000, None).unwrap());
        assert_eq!(l.used(), (30 * MIB) as u64 + 1000 * TABLE_ELEMENT_BYTES);
        assert!(
            !l.table_growing(0, 100_001, None).unwrap(),
            "one table's own cap"
        );
        // Growing an existing memory counts only the difference.
        assert!(l.memory_growing(30 * MIB, 31 * MIB, None).unwrap());
        assert_eq!(l.used(), (31 * MIB) as u64 + 1000 * TABLE_ELEMENT_BYTES);
        let room = (MIB as u64) - 1000 * TABLE_ELEMENT_BYTES;
        assert!(l.memory_growing(0, room as usize, None).unwrap());
        assert!(l.table_growing(0, 1, None).is_err(), "the budget is full");
        // A failure Wasmtime reports gives nothing back (fail closed).
        l.memory_grow_failed(wasmtime::format_err!("no")).unwrap();
        assert!(l.memory_growing(0, 1, None).is_err());
    }
}
