//! # ahv-core: the vocabulary every Agent Hypervisor crate shares
//!
//! Rings, capabilities and the ring policy table ([`ring`]), identifiers
//! ([`id`]), trust scores and the rings they imply ([`score`]), and injected
//! time ([`clock`]), and typed events on a bounded, queryable bus ([`event`]);
//! cache hints for the hot paths ([`prefetch`]). No wasmtime, no I/O: plain
//! data with typed errors.
//!
//! ```
//! use ahv_core::{Capability, Ring, RingPolicy};
//!
//! let policy = RingPolicy::default();
//! // Ring 3 may read files but not write them.
//! let sandbox = policy.limits(Ring::Sandbox);
//! assert!(sandbox.capabilities.contains(Capability::VfsRead));
//! assert!(!sandbox.capabilities.contains(Capability::VfsWrite));
//! // Writing needs ring 2.
//! let needs = [Capability::VfsWrite].into_iter().collect();
//! assert_eq!(policy.lowest_ring_covering(needs), Some(Ring::Standard));
//! ```
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod clock;
pub mod event;
pub mod id;
pub mod prefetch;
pub mod ring;
pub mod score;
pub mod standing;

pub use clock::{Clock, FakeClock, SystemClock, TickClock};
pub use event::{
    Event, EventBus, EventId, EventKind, EventPayload, EventQuery, EventSink, Field,
    SubscriptionId, TerminationReason,
};
pub use id::{AgentId, IdError, SessionId, TraceId};
pub use ring::{
    Capability, CapabilitySet, DEFAULT_LOG_BYTES_PER_CALL, DEFAULT_LOG_LINES_PER_CALL,
    DEFAULT_MAX_CORE_INSTANCES, DEFAULT_MAX_MEMORIES, DEFAULT_MAX_TABLES, MAX_CORE_INSTANCES_LIMIT,
    MAX_MEMORIES_LIMIT, MAX_TABLES_LIMIT, Metering, NET_INSTANCE, Ring, RingError, RingLimits,
    RingPolicy, TYPE_ONLY_INTERFACES, WIT_PACKAGE, WIT_VERSION,
};
pub use score::{ActionDescriptor, Reversibility, ScoreError, check_score, ring_for_score};
pub use standing::{Standing, StandingError, Transition};

#[cfg(test)]
mod wit_contract_tests;
