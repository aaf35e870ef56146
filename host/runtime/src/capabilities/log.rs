//! `log`: structured log lines into the agent's bounded log buffer (which
//! also receives its stdout and stderr).

use std::sync::{Arc, Mutex};

use ahv_core::Capability;
use wasmtime::component::Linker;

use super::{Has, View};
use crate::bindings::agent_hypervisor::agent::log;
use crate::state::{AgentState, LogBuffer, LogLevel, LogSource};

/// The log buffer the lines go to.
pub(crate) struct Ctx {
    pub(crate) buffer: Arc<Mutex<LogBuffer>>,
}

impl Ctx {
    /// Keeps at most [`crate::state::MAX_LOG_LINE`] bytes of `message`.
    pub(crate) fn line(&self, level: log::Level, message: &str) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(level, LogSource::Log, message);
    }
}

impl log::Host for View<'_, Ctx> {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.gate.admit_free(Capability::Log, "log")?;
        self.ctx.line(level, &message);
        Ok(())
    }
}

/// Links `log`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    log::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &mut s.caps.log,
        gate: &mut s.gate,
    })
}
