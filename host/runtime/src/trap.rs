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

/// The agent tried to grow its memories and tables past its ring's limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "memory limit: the instance's memories and tables would hold {requested} bytes in all; the limit is {limit}"
)]
pub struct MemoryLimitExceeded {
    /// The limit in force, in bytes.
    pub limit: u64,
    /// What all the instance's memories and tables would have held together, in bytes.
    pub requested: u64,
}

/// The guest asked the host for more than its ring allows in one request
/// (random bytes, a `run` answer). Checked before the host allocates or
/// copies anything.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("request too large: {what} of {requested} bytes; the ring allows {limit}")]
pub struct RequestTooLarge {
    /// What was asked for (`wasi:random get-random-bytes`, `run result`, …).
    pub what: String,
    /// The size asked for, in bytes.
    pub requested: u64,
    /// The ring's limit, in bytes.
    pub limit: u64,
}

/// The guest passed or returned data that the component model forbids:
/// invalid UTF-8, a pointer or length outside its memory, a misaligned
/// pointer, an unknown resource handle. The guest's fault, never the host's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid guest data: {message}")]
pub struct InvalidGuestData {
    /// What was wrong.
    pub message: String,
}

/// Messages of Wasmtime's canonical-ABI checks on data a guest hands over
/// (its error types for these are plain messages). Most are produced by a
/// hostile guest in the integration tests (`containment.rs`), so a Wasmtime
/// upgrade that rewords them fails a test instead of silently reporting a
/// host error; the handle and transcoding messages are taken from Wasmtime
/// 48's sources.
const ABI_VIOLATIONS: &[&str] = &[
    "out of bounds of memory",
    "pointer out of bounds",
    "not aligned",
    "realloc return",
    "pointer size overflow",
    "discriminant",
    "resource type mismatch",
    "mismatched resource types",
    "unknown handle index",
    "is not a resource",
    "used with the wrong type",
    "borrow handles still remain",
    "cannot remove owned resource while borrowed",
    "invalid utf8 encoding",
    "invalid utf16 encoding",
];

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
    /// The guest called WASI `exit` (even `exit(0)`): `run` never answered.
    #[error("exited: the agent called exit({code}) instead of answering")]
    Exited {
        /// The exit status it gave.
        code: i32,
    },
    /// The guest filled its resource table (WASI streams, pollables, …), or
    /// its component-model handles (resources of its own, `resource.new`).
    #[error("resource limit: the agent holds all {limit} resource handles its ring allows")]
    ResourceLimit {
        /// The ring's resource-table capacity, or its component-handle
        /// limit (twice that).
        limit: usize,
    },
    /// The guest asked for more than its ring allows in one request.
    #[error(transparent)]
    RequestTooLarge(#[from] RequestTooLarge),
    /// Instantiating the component needs more core instances, memories or
    /// tables than the ring allows ([`RingLimits::max_core_instances`],
    /// [`RingLimits::max_memories`], [`RingLimits::max_tables`]).
    #[error(
        "instance limit: the component needs at least {needed} {what}(s) and its ring allows {limit}"
    )]
    InstanceLimit {
        /// What ran out: `core instance`, `memory` or `table`.
        what: &'static str,
        /// How many it had asked for when it was refused.
        needed: usize,
        /// The ring's limit.
        limit: u32,
    },
    /// The guest passed or returned data the component model forbids.
    #[error(transparent)]
    InvalidGuestData(#[from] InvalidGuestData),
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
        if let Some(r) = err.downcast_ref::<RequestTooLarge>() {
            return TrapCause::RequestTooLarge(r.clone());
        }
        if let Some(g) = err.downcast_ref::<InvalidGuestData>() {
            return TrapCause::InvalidGuestData(g.clone());
        }
        if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return TrapCause::Exited { code: exit.0 };
        }
        if let Some(e) = err.downcast_ref::<wasmtime::component::ResourceTableError>() {
            return match e {
                wasmtime::component::ResourceTableError::Full => TrapCause::ResourceLimit {
                    limit: limits.max_resources,
                },
                // An unknown or mistyped handle came from the guest.
                other => TrapCause::InvalidGuestData(InvalidGuestData {
                    message: format!("resource handle: {other}"),
                }),
            };
        }
        if let Some(e) = err.downcast_ref::<std::str::Utf8Error>() {
            return TrapCause::InvalidGuestData(InvalidGuestData {
                message: format!("a string that is not UTF-8: {e}"),
            });
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
            None => {
                let root = err.root_cause().to_string();
                if let Some(cause) = instance_limit(&root, limits) {
                    return cause;
                }
                if root.contains("store handle limit exceeded") {
                    return TrapCause::ResourceLimit {
                        limit: component_handle_limit(limits),
                    };
                }
                if ABI_VIOLATIONS.iter().any(|m| root.contains(m)) {
                    TrapCause::InvalidGuestData(InvalidGuestData { message: root })
                } else {
                    TrapCause::Host {
                        message: format!("{err:#}"),
                    }
                }
            }
        }
    }

    /// A short stable name: `ring-breach`, `out-of-fuel`, `memory-limit`,
    /// `deadline-exceeded`, `killed`, `stack-overflow`, `hostcall-too-large`,
    /// `exited`, `resource-limit`, `request-too-large`, `instance-limit`,
    /// `invalid-guest-data`, `guest-trap`, `host-error`.
    pub fn kind(&self) -> &'static str {
        match self {
            TrapCause::RingBreach(_) => "ring-breach",
            TrapCause::OutOfFuel { .. } => "out-of-fuel",
            TrapCause::MemoryLimit(_) => "memory-limit",
            TrapCause::DeadlineExceeded(_) => "deadline-exceeded",
            TrapCause::Killed(_) => "killed",
            TrapCause::StackOverflow => "stack-overflow",
            TrapCause::HostcallTooLarge { .. } => "hostcall-too-large",
            TrapCause::Exited { .. } => "exited",
            TrapCause::ResourceLimit { .. } => "resource-limit",
            TrapCause::RequestTooLarge(_) => "request-too-large",
            TrapCause::InstanceLimit { .. } => "instance-limit",
            TrapCause::InvalidGuestData(_) => "invalid-guest-data",
            TrapCause::GuestTrap { .. } => "guest-trap",
            TrapCause::Host { .. } => "host-error",
        }
    }
}

/// The most component-model handles an instance's store may hold at once
/// (`Store::set_max_component_handles`; wasmtime's default is 100,000 in
/// every store): twice the ring's resource-table capacity, since a host
/// resource holds a handle in both and a call lends borrowed ones too.
/// Guest-defined resources (`resource.new`) are bounded by it alone. Set
/// at every call's ring: after a demotion it may be below what the
/// instance's resource table (sized at its creation) holds.
pub(crate) fn component_handle_limit(limits: &RingLimits) -> usize {
    limits.max_resources.saturating_mul(2)
}

/// The store's count limits (from [`crate::state::Limiter`]), which Wasmtime
/// enforces with a message of its own: `resource limit exceeded: <what>
/// count too high at <n>` (its error type is private; the message is stable
/// and tested by `the_ring_s_instance_and_memory_budgets_decide_whether_it_fits` and the
/// unit test below).
fn instance_limit(root: &str, limits: &RingLimits) -> Option<TrapCause> {
    let rest = root.strip_prefix("resource limit exceeded: ")?;
    let (what, needed) = rest.split_once(" count too high at ")?;
    let needed = needed.trim().parse().ok()?;
    let (what, limit) = match what {
        "instance" => ("core instance", limits.max_core_instances),
        "memory" => ("memory", limits.max_memories),
        "table" => ("table", limits.max_tables),
        _ => return None,
    };
    Some(TrapCause::InstanceLimit {
        what,
        needed,
        limit,
    })
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

    #[test]
    fn wasmtime_s_count_limits_become_instance_limit_causes() {
        let mut limits = RingLimits::default_for(Ring::Sandbox);
        (
            limits.max_core_instances,
            limits.max_memories,
            limits.max_tables,
        ) = (13, 1, 2);
        let cause = |m: &str| TrapCause::from_error(&wasmtime::format_err!("{m}"), &limits);
        assert_eq!(
            cause("resource limit exceeded: instance count too high at 14"),
            TrapCause::InstanceLimit {
                what: "core instance",
                needed: 14,
                limit: 13
            }
        );
        assert_eq!(
            cause("resource limit exceeded: memory count too high at 2").to_string(),
            "instance limit: the component needs at least 2 memory(s) and its ring allows 1"
        );
        assert_eq!(
            cause("resource limit exceeded: table count too high at 3").kind(),
            "instance-limit"
        );
        // Anything else stays what it was.
        assert_eq!(
            cause("resource limit exceeded: widget count too high at 3").kind(),
            "host-error"
        );
    }
}
