//! Counters and histograms of what the runtime does, for a Prometheus
//! scrape (`/metrics` of `ahv serve`): governed host calls by capability and
//! ring, breaches, refusals by kind, traps by cause, instantiation and call
//! latency.
//!
//! The hot path (a governed host call) pays one plain add in its instance's
//! gate; the gate publishes its counts at the end of each call into the
//! agent. Every (capability, ring) counter is created up front and kept in
//! an array, so no label set is hashed or looked up.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ahv_core::{Capability, Ring};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::bindings::WitError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    capability: &'static str,
    ring: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    export: &'static str,
}

/// Every refusal kind a guest can get (the WIT `error` variants).
const REFUSALS: [&str; 14] = [
    "invalid-path",
    "not-found",
    "already-exists",
    "denied",
    "quota",
    "unknown-action",
    "action-failed",
    "io",
    "conflict",
    "deadlock",
    "timeout",
    "invalid-key",
    "rate-limited",
    "quarantined",
];

/// Every trap cause ([`crate::TrapCause::kind`]).
const TRAPS: [&str; 14] = [
    "ring-breach",
    "out-of-fuel",
    "memory-limit",
    "deadline-exceeded",
    "killed",
    "stack-overflow",
    "hostcall-too-large",
    "exited",
    "resource-limit",
    "request-too-large",
    "instance-limit",
    "invalid-guest-data",
    "guest-trap",
    "host-error",
];

type Counters = Counter<u64, AtomicU64>;

/// The runtime's metrics, registered in their own [`Registry`].
pub struct RuntimeMetrics {
    registry: Registry,
    calls: [[Counters; 4]; Capability::ALL.len()],
    breaches: [[Counters; 4]; Capability::ALL.len()],
    refusals: [Counters; 14],
    traps: [Counters; 14],
    at_capacity: Counters,
    instantiate: Histogram,
    run: Histogram,
    saga_step: Histogram,
    kill_stopped: Histogram,
    kill_delivered: Histogram,
}

impl std::fmt::Debug for RuntimeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeMetrics").finish_non_exhaustive()
    }
}

fn latency() -> Histogram {
    // 10 µs … ~84 s, doubling.
    Histogram::new(exponential_buckets(1e-5, 2.0, 24))
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics::new()
    }
}

impl RuntimeMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> RuntimeMetrics {
        let mut registry = Registry::with_prefix("ahv");
        let calls_family = Family::<CallLabels, Counters>::default();
        let breaches_family = Family::<CallLabels, Counters>::default();
        let refusals_family = Family::<KindLabels, Counters>::default();
        let traps_family = Family::<KindLabels, Counters>::default();
        let latency_family =
            Family::<ExportLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let per =
            |family: &Family<CallLabels, Counters>| -> [[Counters; 4]; Capability::ALL.len()] {
                std::array::from_fn(|i| {
                    std::array::from_fn(|j| {
                        family
                            .get_or_create(&CallLabels {
                                capability: capability_at(i).interface(),
                                ring: ring_at(j).number(),
                            })
                            .clone()
                    })
                })
            };
        let calls = per(&calls_family);
        let breaches = per(&breaches_family);
        let refusals =
            REFUSALS.map(|kind| refusals_family.get_or_create(&KindLabels { kind }).clone());
        let traps = TRAPS.map(|kind| traps_family.get_or_create(&KindLabels { kind }).clone());
        let instantiate = latency();
        let run = latency_family
            .get_or_create(&ExportLabels { export: "run" })
            .clone();
        let saga_step = latency_family
            .get_or_create(&ExportLabels {
                export: "saga-step",
            })
            .clone();
        registry.register(
            "host_calls",
            "Governed host calls admitted by the gate, by capability and the ring they were judged at",
            calls_family,
        );
        registry.register(
            "breaches",
            "Calls outside the caller's ring (each trapped the agent), by capability and ring",
            breaches_family,
        );
        registry.register(
            "refusals",
            "In-ring refusals returned to guests as WIT error values, by kind",
            refusals_family,
        );
        registry.register(
            "traps",
            "Agent calls that ended in a trap, by cause",
            traps_family,
        );
        let at_capacity = Counters::default();
        registry.register(
            "at_capacity",
            "Instantiations refused because the instance pool was full",
            at_capacity.clone(),
        );
        registry.register(
            "instantiate_seconds",
            "Time to create an agent's store and instance",
            instantiate.clone(),
        );
        let kill_stopped = latency();
        let kill_delivered = latency();
        registry.register(
            "kill_guest_stop_seconds",
            "Time from a kill until the agent's guest code stopped (zero when it was not running)",
            kill_stopped.clone(),
        );
        registry.register(
            "kill_delivery_seconds",
            "Time from a kill until the interrupted call ended with the Killed trap",
            kill_delivered.clone(),
        );
        registry.register(
            "call_seconds",
            "Time of a call into an agent, by export",
            latency_family,
        );
        RuntimeMetrics {
            registry,
            calls,
            breaches,
            refusals,
            traps,
            at_capacity,
            instantiate,
            run,
            saga_step,
            kill_stopped,
            kill_delivered,
        }
    }

    /// The registry holding these metrics (for encoding, or to register
    /// more beside them).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts `n` governed host calls of capability number `cap` (its
    /// discriminant) admitted at ring number `ring`.
    pub(crate) fn add_calls(&self, cap: usize, ring: usize, n: u64) {
        if let Some(c) = self.calls.get(cap).and_then(|row| row.get(ring)) {
            c.inc_by(n);
        }
    }

    /// Counts a governed host call admitted at `ring`.
    #[cfg(test)]
    fn call(&self, capability: Capability, ring: Ring) {
        self.add_calls(capability as usize, ring.number() as usize, 1);
    }

    /// Counts a breach.
    pub(crate) fn breach(&self, capability: Capability, ring: Ring) {
        self.breaches[capability as usize][ring.number() as usize].inc();
    }

    /// Counts a refusal returned to a guest.
    pub(crate) fn refusal(&self, e: &WitError) {
        let i = match e {
            WitError::InvalidPath(_) => 0,
            WitError::NotFound(_) => 1,
            WitError::AlreadyExists(_) => 2,
            WitError::Denied(_) => 3,
            WitError::Quota(_) => 4,
            WitError::UnknownAction(_) => 5,
            WitError::ActionFailed(_) => 6,
            WitError::Io(_) => 7,
            WitError::Conflict(_) => 8,
            WitError::Deadlock(_) => 9,
            WitError::Timeout(_) => 10,
            WitError::InvalidKey(_) => 11,
            WitError::RateLimited(_) => 12,
            WitError::Quarantined(_) => 13,
        };
        self.refusals[i].inc();
    }

    /// Counts a trap by its cause's kind.
    pub(crate) fn trap(&self, kind: &str) {
        if let Some(i) = TRAPS.iter().position(|k| *k == kind) {
            self.traps[i].inc();
        }
    }

    /// Counts an instantiation refused for a full instance pool.
    pub(crate) fn at_capacity(&self) {
        self.at_capacity.inc();
    }

    /// Records how long an instantiation took.
    pub(crate) fn instantiated(&self, took: Duration) {
        self.instantiate.observe(took.as_secs_f64());
    }

    /// Records how long a call of `run` took.
    pub(crate) fn ran(&self, took: Duration) {
        self.run.observe(took.as_secs_f64());
    }

    /// Records how long after a kill the agent's guest code stopped.
    pub(crate) fn kill_stopped(&self, took: Duration) {
        self.kill_stopped.observe(took.as_secs_f64());
    }

    /// Records how long after a kill the interrupted call ended.
    pub(crate) fn kill_delivered(&self, took: Duration) {
        self.kill_delivered.observe(took.as_secs_f64());
    }

    /// Records how long a saga hook call took.
    pub(crate) fn stepped(&self, took: Duration) {
        self.saga_step.observe(took.as_secs_f64());
    }
}

fn capability_at(i: usize) -> Capability {
    // Capability's discriminants are 0..ALL.len() (checked by a test below).
    Capability::ALL
        .into_iter()
        .find(|c| *c as usize == i)
        .unwrap_or(Capability::Context)
}

fn ring_at(j: usize) -> Ring {
    Ring::ALL
        .into_iter()
        .find(|r| r.number() as usize == j)
        .unwrap_or(Ring::Sandbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_and_ring_has_its_own_counter() {
        let mut seen = std::collections::HashSet::new();
        for c in Capability::ALL {
            assert!((c as usize) < Capability::ALL.len());
            assert!(seen.insert(c as usize), "{c}");
        }
        let m = RuntimeMetrics::new();
        m.call(Capability::VfsWrite, Ring::Standard);
        m.call(Capability::VfsWrite, Ring::Standard);
        m.breach(Capability::Admin, Ring::Sandbox);
        m.refusal(&WitError::Quarantined("q".into()));
        m.trap("killed");
        m.trap("no-such-cause");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, m.registry()).unwrap();
        assert!(
            text.contains("ahv_host_calls_total{capability=\"vfs-write\",ring=\"2\"} 2"),
            "{text}"
        );
        assert!(text.contains("ahv_breaches_total{capability=\"admin\",ring=\"3\"} 1"));
        assert!(text.contains("ahv_refusals_total{kind=\"quarantined\"} 1"));
        assert!(text.contains("ahv_traps_total{kind=\"killed\"} 1"));
        assert!(text.contains("ahv_call_seconds_bucket{"), "{text}");
    }

    #[test]
    fn every_trap_cause_has_a_counter() {
        use crate::TrapCause;
        let causes = [
            TrapCause::OutOfFuel { limit: 1 },
            TrapCause::StackOverflow,
            TrapCause::GuestTrap {
                message: String::new(),
            },
            TrapCause::Host {
                message: String::new(),
            },
            TrapCause::HostcallTooLarge { limit: 1 },
            TrapCause::InstanceLimit {
                what: "table",
                needed: 2,
                limit: 1,
            },
        ];
        for c in causes {
            assert!(TRAPS.contains(&c.kind()), "{}", c.kind());
        }
    }
}
