//! Per-instance state: what a store carries for one live agent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahv_core::{AgentId, Capability, CapabilitySet, Ring, RingLimits, SessionId, TraceId};
use ahv_governance::actions::{ActionRegistry, UndoRecord};
use ahv_governance::files::{Caller, FileSpace};
use ahv_governance::session_core::SessionCore;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::trap::{BreachRecorder, Killed, MemoryLimitExceeded, RingBreach};

/// Longest log line kept, in bytes; longer lines are cut and marked.
pub const MAX_LOG_LINE: usize = 4096;
/// Most log bytes kept per call; later lines are counted as dropped.
pub const MAX_LOG_BYTES_PER_CALL: usize = 256 * 1024;

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The `log` capability.
    Log,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
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
#[derive(Debug, Default)]
pub(crate) struct LogBuffer {
    lines: Vec<LogLine>,
    bytes: usize,
    dropped: usize,
    /// Unterminated output per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
}

impl LogBuffer {
    pub(crate) fn push(&mut self, level: LogLevel, source: LogSource, message: &str) {
        if self.bytes + message.len().min(MAX_LOG_LINE) > MAX_LOG_BYTES_PER_CALL {
            self.dropped += 1;
            return;
        }
        let mut message = message.to_string();
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …[truncated]");
        }
        self.bytes += message.len();
        self.lines.push(LogLine {
            level,
            source,
            message,
        });
    }

    fn write_stream(&mut self, source: LogSource, bytes: &[u8]) {
        let (idx, level) = if source == LogSource::Stdout {
            (0, LogLevel::Info)
        } else {
            (1, LogLevel::Warn)
        };
        self.partial[idx].extend_from_slice(bytes);
        while let Some(pos) = self.partial[idx].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[idx].drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.push(level, source, &text);
        }
        if self.partial[idx].len() > MAX_LOG_LINE {
            let line = std::mem::take(&mut self.partial[idx]);
            self.push(level, source, &String::from_utf8_lossy(&line));
        }
    }

    /// Takes the lines of the call that just ended, flushing partial output.
    pub(crate) fn take(&mut self) -> (Vec<LogLine>, usize) {
        for (idx, source, level) in [
            (0, LogSource::Stdout, LogLevel::Info),
            (1, LogSource::Stderr, LogLevel::Warn),
        ] {
            if !self.partial[idx].is_empty() {
                let line = std::mem::take(&mut self.partial[idx]);
                self.push(level, source, &String::from_utf8_lossy(&line));
            }
        }
        let dropped = std::mem::take(&mut self.dropped);
        self.bytes = 0;
        (std::mem::take(&mut self.lines), dropped)
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
pub(crate) struct Limiter {
    memory_bytes: u64,
}

/// Most table elements an instance may have (Rust guests use a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory_bytes,
                requested: desired as u64,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        32
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        8
    }
}

/// A kill switch for one agent. Cheap to clone; usable from any thread.
#[derive(Clone, Debug)]
pub struct KillHandle {
    inner: Arc<KillState>,
    engine: wasmtime::Engine,
}

#[derive(Debug, Default)]
struct KillState {
    killed: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Wakes a call that is waiting inside an async host function (where
    /// epoch checks cannot reach it).
    notify: tokio::sync::Notify,
}

impl KillHandle {
    pub(crate) fn new(engine: wasmtime::Engine) -> KillHandle {
        KillHandle {
            inner: Arc::default(),
            engine,
        }
    }

    /// Stops the agent: a running call traps with `Killed` at its next epoch
    /// check (the epoch is bumped at once, so that is within microseconds for
    /// a busy loop), or is cancelled if it is waiting in a host call (a sleep);
    /// later calls are refused. Killing twice keeps the first reason.
    pub fn kill(&self, reason: impl Into<String>) {
        {
            let mut r = self.inner.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.inner.killed.store(true, Ordering::SeqCst);
        self.engine.increment_epoch();
        self.inner.notify.notify_waiters();
    }

    /// True once [`KillHandle::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.inner.killed.load(Ordering::SeqCst)
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

/// Everything one live agent instance's host functions can see.
pub struct AgentState {
    pub(crate) agent: AgentId,
    pub(crate) session: SessionId,
    pub(crate) ring: Ring,
    pub(crate) caps: CapabilitySet,
    pub(crate) files: Arc<dyn FileSpace>,
    pub(crate) shared: Option<Arc<SessionCore>>,
    pub(crate) actions: Arc<ActionRegistry>,
    pub(crate) undo_log: Vec<UndoRecord>,
    pub(crate) log: Arc<Mutex<LogBuffer>>,
    pub(crate) trace: TraceId,
    pub(crate) deadline: Duration,
    pub(crate) call_deadline: Instant,
    pub(crate) kill: KillHandle,
    pub(crate) breach_recorder: Arc<dyn BreachRecorder>,
    pub(crate) limiter: Limiter,
    wasi: WasiCtx,
    table: ResourceTable,
}

pub(crate) struct StateInit {
    pub agent: AgentId,
    pub session: SessionId,
    pub ring: Ring,
    pub files: Arc<dyn FileSpace>,
    pub shared: Option<Arc<SessionCore>>,
    pub actions: Arc<ActionRegistry>,
    pub kill: KillHandle,
    pub breach_recorder: Arc<dyn BreachRecorder>,
}

impl AgentState {
    /// The only constructor: the state's limits come from the ring's limits.
    pub(crate) fn new(init: StateInit, limits: &RingLimits) -> AgentState {
        let log = Arc::new(Mutex::new(LogBuffer::default()));
        // Grants nothing: no preopened directories, no environment, no
        // arguments, no network. Only stdout/stderr (into the log), clocks
        // and randomness.
        let wasi = WasiCtx::builder()
            .stdout(LogStream {
                log: log.clone(),
                source: LogSource::Stdout,
            })
            .stderr(LogStream {
                log: log.clone(),
                source: LogSource::Stderr,
            })
            .allow_blocking_current_thread(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resources);
        AgentState {
            agent: init.agent,
            session: init.session,
            ring: init.ring,
            caps: limits.capabilities,
            files: init.files,
            shared: init.shared,
            actions: init.actions,
            undo_log: Vec::new(),
            log,
            trace: TraceId(0),
            deadline: limits.deadline,
            call_deadline: Instant::now() + limits.deadline,
            kill: init.kill,
            breach_recorder: init.breach_recorder,
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
            },
            wasi,
            table,
        }
    }

    /// Records a breach, then returns the trap that carries it.
    pub(crate) fn breach(&mut self, capability: Capability, function: &str) -> wasmtime::Error {
        let breach = RingBreach {
            agent: self.agent.clone(),
            session: self.session.clone(),
            ring: self.ring,
            capability,
            function: function.to_string(),
            trace: self.trace,
        };
        self.breach_recorder.record(&breach);
        wasmtime::Error::new(breach)
    }

    /// The caller as the domain types name it: agent, current ring, trace id.
    pub(crate) fn caller(&self) -> Caller<'_> {
        Caller {
            agent: &self.agent,
            ring: self.ring,
            trace: self.trace,
        }
    }

    /// The call-time ring check every governed host function starts with.
    #[inline]
    pub(crate) fn check(&mut self, capability: Capability, function: &str) -> wasmtime::Result<()> {
        if self.caps.contains(capability) {
            Ok(())
        } else {
            Err(self.breach(capability, function))
        }
    }
}

impl WasiView for AgentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
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

        for _ in 0..(MAX_LOG_BYTES_PER_CALL / MAX_LOG_LINE + 10) {
            b.push(LogLevel::Info, LogSource::Log, &"x".repeat(MAX_LOG_LINE));
        }
        let (lines, dropped) = b.take();
        assert_eq!(lines.len(), MAX_LOG_BYTES_PER_CALL / MAX_LOG_LINE);
        assert_eq!(dropped, 10);
    }
}
