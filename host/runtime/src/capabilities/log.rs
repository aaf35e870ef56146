//! `log`: structured log lines into the agent's bounded log buffer (which
//! also receives its stdout and stderr).

use ahv_core::Capability;
use wasmtime::component::Linker;

use super::{Handles, Has, View};
use crate::bindings::agent_hypervisor::agent::log;
use crate::state::{AgentState, LogLevel, LogLine, LogSource};

impl Handles {
    /// The log lines of the call that ended (partial output flushed) and
    /// how many were dropped over its budget (`LogBuffer::take`).
    pub(crate) fn take_log(&self) -> (Vec<LogLine>, usize) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Keeps at most [`crate::state::MAX_LOG_LINE`] bytes of `message`.
    pub(crate) fn log_line(&self, level: log::Level, message: &str) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(level, LogSource::Log, message);
    }
}

impl log::Host for View<'_, Handles> {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.gate.admit_free(Capability::Log, "log")?;
        self.ctx.log_line(level, &message);
        Ok(())
    }
}

/// Links `log`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    log::add_to_linker::<_, Has<Handles>>(l, |s| View {
        ctx: &s.caps.handles,
        gate: &mut s.gate,
    })
}
