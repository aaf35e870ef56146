//! Typed trap causes.
//!
//! Every way an agent can be stopped has its own type, carried inside the
//! `wasmtime::Error` that aborts the guest, so callers can downcast it
//! (`err.downcast_ref::<RingBreach>()`), and [`TrapCause`] gathers them for
//! matching.

use std::fmt;
use std::time::Duration;

use ahv_core::{AgentId, Capability, Ring, RingLimits, SessionId, TraceId};
use thiserror::Error;

/// A call to a capability outside the caller's ring. Recorded before the trap.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "ring breach: {capability}/{function} called from {ring} by agent {agent} in session {session}"
)]
pub struct RingBreach {
    /// The agent that made the call.
    pub agent: AgentId,
    /// Its session.
    pub session: SessionId,
    /// Its ring at the time of the call.
    pub ring: Ring,
    /// The capability (WIT interface) it called.
    pub capability: Capability,
    /// The function it called.
    pub function: String,
    /// The trace id of the call that breached.
    pub trace: TraceId,
}

/// The agent was stopped by its kill handle.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("killed: {reason}")]
pub struct Killed {
    /// Why it was killed.
    pub reason: String,
}

/// The call ran past its wall-clock deadline.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("deadline exceeded: the call ran longer than {deadline:?}")]
pub struct DeadlineExceeded {
    /// The deadline in force.
    pub deadline: Duration,
}

/// The agent tried to grow its linear memory past its ring's limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("memory limit: tried to grow linear memory to {requested} bytes; the limit is {limit}")]
pub struct MemoryLimitExceeded {
    /// The limit in force, in bytes.
    pub limit: u64,
    /// The size asked for, in bytes.
    pub requested: u64,
}

/// Why a call into an agent did not return normally.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TrapCause {
    /// A capability outside the ring was called.
    #[error(transparent)]
    RingBreach(#[from] RingBreach),
    /// The call used all its fuel.
    #[error("out of fuel: the call used all {limit} units of its fuel")]
    OutOfFuel {
        /// The fuel given to the call.
        limit: u64,
    },
    /// Linear memory would have grown past the limit.
    #[error(transparent)]
    MemoryLimit(#[from] MemoryLimitExceeded),
    /// The wall-clock deadline passed.
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineExceeded),
    /// The kill handle was used.
    #[error(transparent)]
    Killed(#[from] Killed),
    /// The wasm stack overflowed.
    #[error("stack overflow: the agent exceeded its wasm stack")]
    StackOverflow,
    /// One host call tried to pass the host more data than the ring allows.
    #[error("host call too large: the agent passed more than {limit} bytes to one host call")]
    HostcallTooLarge {
        /// The ring's per-call limit, in bytes.
        limit: usize,
    },
    /// Another wasm trap (unreachable, bad memory access, …) or a guest abort.
    #[error("guest trap: {message}")]
    GuestTrap {
        /// Wasmtime's description.
        message: String,
    },
    /// The host failed while serving the call (a bug or resource exhaustion on our side).
    #[error("host error: {message}")]
    Host {
        /// The error, with its chain.
        message: String,
    },
}

impl TrapCause {
    /// Classifies the error a call returned, given the limits the call ran under.
    pub fn from_error(err: &wasmtime::Error, limits: &RingLimits) -> TrapCause {
        if let Some(b) = err.downcast_ref::<RingBreach>() {
            return TrapCause::RingBreach(b.clone());
        }
        if let Some(k) = err.downcast_ref::<Killed>() {
            return TrapCause::Killed(k.clone());
        }
        if let Some(d) = err.downcast_ref::<DeadlineExceeded>() {
            return TrapCause::DeadlineExceeded(d.clone());
        }
        if let Some(m) = err.downcast_ref::<MemoryLimitExceeded>() {
            return TrapCause::MemoryLimit(m.clone());
        }
        match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => TrapCause::OutOfFuel {
                limit: limits.fuel_per_call,
            },
            Some(wasmtime::Trap::StackOverflow) => TrapCause::StackOverflow,
            Some(t) => TrapCause::GuestTrap {
                message: t.to_string(),
            },
            // Wasmtime's error type for this is private; its message is stable and tested.
            None if err
                .root_cause()
                .to_string()
                .contains("fuel allocated for hostcalls has been exhausted") =>
            {
                TrapCause::HostcallTooLarge {
                    limit: limits.hostcall_bytes,
                }
            }
            None => TrapCause::Host {
                message: format!("{err:#}"),
            },
        }
    }

    /// A short stable name: `ring-breach`, `out-of-fuel`, `memory-limit`,
    /// `deadline-exceeded`, `killed`, `stack-overflow`, `hostcall-too-large`, `guest-trap`,
    /// `host-error`.
    pub fn kind(&self) -> &'static str {
        match self {
            TrapCause::RingBreach(_) => "ring-breach",
            TrapCause::OutOfFuel { .. } => "out-of-fuel",
            TrapCause::MemoryLimit(_) => "memory-limit",
            TrapCause::DeadlineExceeded(_) => "deadline-exceeded",
            TrapCause::Killed(_) => "killed",
            TrapCause::StackOverflow => "stack-overflow",
            TrapCause::HostcallTooLarge { .. } => "hostcall-too-large",
            TrapCause::GuestTrap { .. } => "guest-trap",
            TrapCause::Host { .. } => "host-error",
        }
    }
}

/// Something that wants to know about breaches (the audit log, a detector).
/// Called synchronously, before the trap reaches anyone.
pub trait BreachRecorder: Send + Sync {
    /// Records one breach.
    fn record(&self, breach: &RingBreach);
}

impl<F: Fn(&RingBreach) + Send + Sync> BreachRecorder for F {
    fn record(&self, breach: &RingBreach) {
        self(breach)
    }
}

/// Shown where a recorder is needed but none was configured.
pub(crate) struct TracingRecorder;

impl BreachRecorder for TracingRecorder {
    fn record(&self, breach: &RingBreach) {
        tracing::warn!(target: "ahv::breach", %breach, "ring breach");
    }
}

impl fmt::Debug for dyn BreachRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BreachRecorder")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breach() -> RingBreach {
        RingBreach {
            agent: AgentId::new("a").unwrap(),
            session: SessionId::new("s").unwrap(),
            ring: Ring::Sandbox,
            capability: Capability::VfsWrite,
            function: "write".into(),
            trace: TraceId(7),
        }
    }

    #[test]
    fn typed_causes_survive_a_trip_through_wasmtime_error() {
        let limits = {
            let mut l = RingLimits::default_for(Ring::Sandbox);
            l.fuel_per_call = 7;
            l
        };
        let e = wasmtime::Error::new(breach());
        assert_eq!(e.downcast_ref::<RingBreach>(), Some(&breach()));
        assert_eq!(
            TrapCause::from_error(&e, &limits),
            TrapCause::RingBreach(breach())
        );
        let e = wasmtime::Error::new(Killed {
            reason: "manual".into(),
        });
        assert_eq!(TrapCause::from_error(&e, &limits).kind(), "killed");
        let e = wasmtime::Error::from(wasmtime::Trap::OutOfFuel);
        assert_eq!(
            TrapCause::from_error(&e, &limits),
            TrapCause::OutOfFuel { limit: 7 }
        );
        let e = wasmtime::Error::from(wasmtime::Trap::StackOverflow);
        assert_eq!(TrapCause::from_error(&e, &limits), TrapCause::StackOverflow);
        let e = wasmtime::Error::from(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(TrapCause::from_error(&e, &limits).kind(), "guest-trap");
        assert_eq!(
            breach().to_string(),
            "ring breach: vfs-write/write called from ring 3 (sandbox) by agent a in session s"
        );
    }
}
