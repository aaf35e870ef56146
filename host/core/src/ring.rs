//! Rings, capabilities and the ring policy table.
//!
//! A ring is data: a set of [`Capability`]s (WIT interfaces the host links for
//! real) plus budgets ([`RingLimits`]). The default table is the
//! table in `docs/governance.md`; [`RingPolicy`] lets a host change budgets, and refuses
//! capability sets that would make a more privileged ring weaker than a less
//! privileged one.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// An execution ring. Lower number = more privilege.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[repr(u8)]
pub enum Ring {
    /// Ring 0: hypervisor administration. Never computed from a trust score.
    Root = 0,
    /// Ring 1: may cause non-reversible effects.
    Privileged = 1,
    /// Ring 2: may change files and run reversible actions.
    Standard = 2,
    /// Ring 3: may only observe.
    Sandbox = 3,
}

impl Ring {
    /// All rings, most privileged first.
    pub const ALL: [Ring; 4] = [Ring::Root, Ring::Privileged, Ring::Standard, Ring::Sandbox];

    /// The ring's number (0..=3).
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The ring with this number.
    ///
    /// # Errors
    /// [`RingError::OutOfRange`] when `n > 3`.
    pub const fn from_number(n: u8) -> Result<Ring, RingError> {
        match n {
            0 => Ok(Ring::Root),
            1 => Ok(Ring::Privileged),
            2 => Ok(Ring::Standard),
            3 => Ok(Ring::Sandbox),
            _ => Err(RingError::OutOfRange { value: n as u64 }),
        }
    }

    /// The ring's name as used in the WIT worlds (`root`, `privileged`, `standard`, `sandbox`).
    pub const fn name(self) -> &'static str {
        match self {
            Ring::Root => "root",
            Ring::Privileged => "privileged",
            Ring::Standard => "standard",
            Ring::Sandbox => "sandbox",
        }
    }

    /// True when `self` has at least the privilege of `other` (its number is ≤ other's).
    pub const fn covers(self, other: Ring) -> bool {
        self.number() <= other.number()
    }
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ring {} ({})", self.number(), self.name())
    }
}

impl FromStr for Ring {
    type Err = RingError;

    /// Accepts `0`..`3` or a ring name (`root`, `privileged`, `standard`, `sandbox`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.parse::<u64>() {
            return u8::try_from(n)
                .map_err(|_| RingError::OutOfRange { value: n })
                .and_then(Ring::from_number);
        }
        Ring::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| RingError::UnknownName {
                name: s.to_string(),
            })
    }
}

/// Errors about rings and the ring policy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingError {
    /// A ring number outside 0..=3.
    #[error("ring {value} does not exist (rings are 0 root, 1 privileged, 2 standard, 3 sandbox)")]
    OutOfRange {
        /// The number given.
        value: u64,
    },
    /// A ring name that is not one of the four.
    #[error("unknown ring name {name:?} (expected root, privileged, standard or sandbox)")]
    UnknownName {
        /// The name given.
        name: String,
    },
    /// A policy that gives a less privileged ring a capability a more privileged one lacks.
    #[error(
        "ring policy is not monotonic: {lower} has capability {capability} but {higher} does not"
    )]
    NotMonotonic {
        /// The less privileged ring.
        lower: Ring,
        /// The more privileged ring that lacks it.
        higher: Ring,
        /// The capability.
        capability: Capability,
    },
    /// A count budget above what the host can reserve for (the pool of
    /// instances is sized from these counts).
    #[error("ring policy for {ring}: {field} is {value}; at most {max}")]
    TooLarge {
        /// The ring.
        ring: Ring,
        /// The field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The largest accepted.
        max: u64,
    },
    /// A budget of zero (which would make every call fail).
    #[error("ring policy for {ring}: {field} must be greater than zero")]
    ZeroBudget {
        /// The ring.
        ring: Ring,
        /// The field name.
        field: &'static str,
    },
}

/// One capability: one WIT interface of the `agent-hypervisor:agent` package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Capability {
    /// `context`: who am I.
    Context = 0,
    /// `log`: structured log lines.
    Log = 1,
    /// `vfs-read`: read / list / stat files.
    VfsRead = 2,
    /// `vfs-write`: write / append / delete / rename / create-dir.
    VfsWrite = 3,
    /// `actions`: host-registered reversible actions.
    Actions = 4,
    /// `effects`: host-registered non-reversible actions.
    Effects = 5,
    /// `state-read`: read the session's shared key-value state.
    StateRead = 6,
    /// `state-write`: versioned writes to the shared state.
    StateWrite = 7,
    /// `locks`: intent locks on shared paths and state keys.
    Locks = 8,
    /// `elevation`: ask for a more privileged ring for a while.
    Elevation = 9,
    /// `admin`: kill, quarantine, release and inspect the session's other agents.
    Admin = 10,
    /// `spawn`: start, run and stop child agents in the caller's session.
    Spawn = 11,
    /// `net`: outbound HTTP to the hosts of a policy allow-list. Unlike the
    /// others it is not an interface of our package: it is WASI's
    /// `wasi:http/outgoing-handler`, so that the HTTP clients of every guest
    /// language (`fetch` in JavaScript, `wasip2::http` in Rust) reach it.
    /// The rest of `wasi:http` (`types`: building requests, reading
    /// responses) grants nothing and is linked in every ring.
    Net = 12,
}

/// How a governed function is counted against the caller's rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metering {
    /// Not rate-limited: `context` (answers from memory) and `log` (bounded
    /// per call by the log budget instead, and it has no error to return).
    Free,
    /// A read: counted against the ring's (higher) read rate.
    Read,
    /// A call that changes something or reaches out (writes, state writes,
    /// actions, effects, elevation requests, administration).
    Change,
}

/// WIT interfaces that only define types: they grant nothing and are linked in every ring.
pub const TYPE_ONLY_INTERFACES: &[&str] = &["types"];

/// The WASI interface [`Capability::Net`] is: the import name of the
/// version the host links (components importing any `0.2.x` match it).
pub const NET_INSTANCE: &str = "wasi:http/outgoing-handler@0.2.12";

/// The WIT package every capability but [`Capability::Net`] belongs to.
pub const WIT_PACKAGE: &str = "agent-hypervisor:agent";
/// The WIT package version the host implements.
pub const WIT_VERSION: &str = "0.1.0";

impl Capability {
    /// Every capability, in table order.
    pub const ALL: [Capability; 13] = [
        Capability::Context,
        Capability::Log,
        Capability::VfsRead,
        Capability::StateRead,
        Capability::Elevation,
        Capability::VfsWrite,
        Capability::StateWrite,
        Capability::Locks,
        Capability::Actions,
        Capability::Effects,
        Capability::Spawn,
        Capability::Net,
        Capability::Admin,
    ];

    /// The WIT interface name (`vfs-write`).
    pub const fn interface(self) -> &'static str {
        match self {
            Capability::Context => "context",
            Capability::Log => "log",
            Capability::VfsRead => "vfs-read",
            Capability::VfsWrite => "vfs-write",
            Capability::Actions => "actions",
            Capability::Effects => "effects",
            Capability::StateRead => "state-read",
            Capability::StateWrite => "state-write",
            Capability::Locks => "locks",
            Capability::Elevation => "elevation",
            Capability::Admin => "admin",
            Capability::Spawn => "spawn",
            Capability::Net => "net",
        }
    }

    /// The functions of the interface, as named in WIT. Breach stubs are linked
    /// for exactly these; a test compares them with `wit/`.
    pub const fn functions(self) -> &'static [&'static str] {
        match self {
            Capability::Context => &["whoami", "current-ring"],
            Capability::Log => &["log"],
            Capability::VfsRead => &["read", "list-dir", "stat", "hash", "get-acl"],
            Capability::VfsWrite => &[
                "write",
                "append",
                "delete",
                "rename",
                "create-dir",
                "set-acl",
            ],
            Capability::StateRead => &["get", "keys"],
            Capability::StateWrite => &["put", "delete"],
            Capability::Locks => &["acquire", "release", "held"],
            Capability::Actions => &["invoke", "available"],
            Capability::Effects => &["invoke", "available"],
            Capability::Elevation => &["request", "relinquish", "current"],
            Capability::Admin => &["participants", "inspect", "kill", "quarantine", "release"],
            Capability::Spawn => &["start", "run", "stop", "children"],
            Capability::Net => &["handle"],
        }
    }

    /// How `function` of this capability counts against rate limits: reads
    /// (including the listing functions of the other capabilities) at the
    /// read rate, everything that changes something or reaches out at the
    /// change rate; `context` and `log` are free.
    #[inline]
    pub fn metering(self, function: &str) -> Metering {
        match self {
            Capability::Context | Capability::Log => Metering::Free,
            Capability::VfsRead | Capability::StateRead => Metering::Read,
            _ => match function.as_bytes() {
                b"available" | b"held" | b"current" | b"participants" | b"inspect"
                | b"children" => Metering::Read,
                _ => Metering::Change,
            },
        }
    }

    /// The least privileged ring that has this capability in the default table.
    pub const fn default_ring(self) -> Ring {
        match self {
            Capability::Context
            | Capability::Log
            | Capability::VfsRead
            | Capability::StateRead
            | Capability::Elevation => Ring::Sandbox,
            Capability::VfsWrite
            | Capability::StateWrite
            | Capability::Locks
            | Capability::Actions => Ring::Standard,
            Capability::Effects | Capability::Spawn | Capability::Net => Ring::Privileged,
            Capability::Admin => Ring::Root,
        }
    }

    /// The fully qualified, versioned instance name a component imports
    /// (`agent-hypervisor:agent/vfs-write@0.1.0`; for [`Capability::Net`],
    /// [`NET_INSTANCE`], which any `0.2.x` import matches).
    pub fn instance_name(self) -> String {
        if self.is_wasi() {
            return NET_INSTANCE.to_string();
        }
        format!("{WIT_PACKAGE}/{}@{WIT_VERSION}", self.interface())
    }

    /// True for a capability that is a WASI interface rather than one of
    /// our package ([`Capability::Net`]).
    pub const fn is_wasi(self) -> bool {
        matches!(self, Capability::Net)
    }

    /// The capability with this name: an interface of our WIT package, or
    /// `net` (the name policy files give [`Capability::Net`]).
    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.interface() == name)
    }

    /// The capability that is this interface of our WIT package (never
    /// [`Capability::Net`], which is WASI's).
    pub fn from_interface(name: &str) -> Option<Capability> {
        Capability::from_name(name).filter(|c| !c.is_wasi())
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// A set of capabilities (a bit set: checking membership is one AND).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapabilitySet(u32);

impl CapabilitySet {
    /// The empty set: grants nothing.
    pub const EMPTY: CapabilitySet = CapabilitySet(0);

    /// This set plus `cap`.
    #[must_use]
    pub const fn with(self, cap: Capability) -> CapabilitySet {
        CapabilitySet(self.0 | (1 << cap as u8))
    }

    /// True when `cap` is in the set.
    #[inline]
    pub const fn contains(self, cap: Capability) -> bool {
        self.0 & (1 << cap as u8) != 0
    }

    /// True when every capability of `other` is in `self`.
    pub const fn is_superset_of(self, other: CapabilitySet) -> bool {
        self.0 & other.0 == other.0
    }

    /// The capabilities in the set, in table order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        iter.into_iter()
            .fold(CapabilitySet::EMPTY, CapabilitySet::with)
    }
}

/// The budgets of one ring. Every field is enforced by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingLimits {
    /// Capabilities linked for real; all others are breach stubs.
    pub capabilities: CapabilitySet,
    /// Wasm fuel per call (roughly one unit per instruction).
    pub fuel_per_call: u64,
    /// Maximum linear memory per instance, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline per call.
    pub deadline: Duration,
    /// Maximum live entries in the instance's resource table (WASI streams etc.).
    pub max_resources: usize,
    /// Maximum bytes the guest may pass to the host in one host call.
    pub hostcall_bytes: usize,
    /// Largest answer (or failure message) `run` may return, in bytes; the
    /// host checks the length in guest memory before copying anything.
    pub result_bytes: usize,
    /// Most bytes one WASI random request may ask the host to produce.
    pub random_bytes: usize,
    /// Most live children an agent in this ring may have at once (`spawn`).
    pub max_children: u32,
    /// How deep a child of an agent in this ring may be: a child's depth is
    /// its parent's plus one (agents that joined have depth 0).
    pub max_spawn_depth: u8,
    /// Most log lines kept per call (the `log` capability, stdout and stderr
    /// together); later lines are counted as dropped.
    pub log_lines: usize,
    /// Most log bytes kept per call (each line also costs a fixed overhead);
    /// later lines are counted as dropped.
    pub log_bytes: usize,
    /// Most core module instances one agent instance may create (a component
    /// instantiates several: a Rust agent 3, a componentize-py agent 14, a
    /// JavaScript one 4 to 9). Fixed when the instance is created, at its
    /// ring then; past it instantiation fails.
    pub max_core_instances: u32,
    /// Most linear memories one agent instance may define (all of them
    /// count together against [`RingLimits::memory_bytes`]).
    pub max_memories: u32,
    /// Most tables one agent instance may define (they count against
    /// [`RingLimits::memory_bytes`] too).
    pub max_tables: u32,
}

/// Log lines kept per call in every ring of the default table.
pub const DEFAULT_LOG_LINES_PER_CALL: usize = 4096;
/// Log bytes kept per call in every ring of the default table.
pub const DEFAULT_LOG_BYTES_PER_CALL: usize = 256 * 1024;
/// Core module instances per agent instance in every ring of the default
/// table: room for what the guest toolchains emit (Rust 3, componentize-py
/// 14, jco 4 to 9) with a margin for their next versions.
pub const DEFAULT_MAX_CORE_INSTANCES: u32 = 32;
/// Linear memories per agent instance in every ring of the default table
/// (Rust, Python and StarlingMonkey define 1, QuickJS 2).
pub const DEFAULT_MAX_MEMORIES: u32 = 8;
/// Tables per agent instance in every ring of the default table (the
/// toolchains above define 1 or 2).
pub const DEFAULT_MAX_TABLES: u32 = 32;
/// The largest `max_core_instances` a policy may set (core instances cost
/// the pool a counter each, per live agent).
pub const MAX_CORE_INSTANCES_LIMIT: u32 = 1024;
/// The largest `max_memories` a policy may set: the pool reserves address
/// space for at least this many memories of the largest ring's size.
pub const MAX_MEMORIES_LIMIT: u32 = 64;
/// The largest `max_tables` a policy may set (the pool reserves them too).
pub const MAX_TABLES_LIMIT: u32 = 256;

impl RingLimits {
    /// The default limits of `ring` (`docs/governance.md`, "The ring table").
    pub fn default_for(ring: Ring) -> RingLimits {
        const MIB: u64 = 1024 * 1024;
        let capabilities = Capability::ALL
            .into_iter()
            .filter(|c| ring.covers(c.default_ring()))
            .collect();
        let (fuel_per_call, memory_bytes, deadline_s, max_resources, hostcall_bytes) = match ring {
            Ring::Sandbox => (100_000_000, 32 * MIB, 2, 256, 4 << 20),
            Ring::Standard => (1_000_000_000, 128 * MIB, 30, 1024, 16 << 20),
            Ring::Privileged => (10_000_000_000, 512 * MIB, 300, 4096, 64 << 20),
            Ring::Root => (100_000_000_000, 1024 * MIB, 300, 16384, 128 << 20),
        };
        let (result_bytes, random_bytes) = match ring {
            Ring::Sandbox => (1 << 20, 64 << 10),
            Ring::Standard => (4 << 20, 256 << 10),
            Ring::Privileged | Ring::Root => (16 << 20, 1 << 20),
        };
        let (max_children, max_spawn_depth) = match ring {
            Ring::Sandbox | Ring::Standard => (0, 0),
            Ring::Privileged => (8, 1),
            Ring::Root => (32, 3),
        };
        RingLimits {
            max_children,
            max_spawn_depth,
            capabilities,
            fuel_per_call,
            memory_bytes,
            deadline: Duration::from_secs(deadline_s),
            max_resources,
            hostcall_bytes,
            result_bytes,
            random_bytes,
            log_lines: DEFAULT_LOG_LINES_PER_CALL,
            log_bytes: DEFAULT_LOG_BYTES_PER_CALL,
            max_core_instances: DEFAULT_MAX_CORE_INSTANCES,
            max_memories: DEFAULT_MAX_MEMORIES,
            max_tables: DEFAULT_MAX_TABLES,
        }
    }
}

/// The ring table: limits for each of the four rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingPolicy {
    rings: [RingLimits; 4],
}

impl Default for RingPolicy {
    fn default() -> Self {
        RingPolicy {
            rings: Ring::ALL.map(RingLimits::default_for),
        }
    }
}

impl RingPolicy {
    /// The limits of `ring`.
    #[inline]
    pub fn limits(&self, ring: Ring) -> &RingLimits {
        &self.rings[ring.number() as usize]
    }

    /// Replaces the limits of `ring`.
    ///
    /// # Errors
    /// [`RingError::ZeroBudget`] for a zero fuel, memory, deadline, resource,
    /// host-call, answer, core-instance, memory-count or table-count budget;
    /// [`RingError::TooLarge`] for a core-instance, memory or table count
    /// above [`MAX_CORE_INSTANCES_LIMIT`], [`MAX_MEMORIES_LIMIT`] or
    /// [`MAX_TABLES_LIMIT`];
    /// [`RingError::NotMonotonic`] if the capability sets would no longer
    /// grow with privilege.
    pub fn set_limits(&mut self, ring: Ring, limits: RingLimits) -> Result<(), RingError> {
        let zero = [
            ("fuel_per_call", limits.fuel_per_call == 0),
            ("memory_bytes", limits.memory_bytes == 0),
            ("deadline", limits.deadline.is_zero()),
            ("max_resources", limits.max_resources == 0),
            ("hostcall_bytes", limits.hostcall_bytes == 0),
            ("result_bytes", limits.result_bytes == 0),
            ("max_core_instances", limits.max_core_instances == 0),
            ("max_memories", limits.max_memories == 0),
            ("max_tables", limits.max_tables == 0),
        ];
        if let Some((field, _)) = zero.into_iter().find(|(_, z)| *z) {
            return Err(RingError::ZeroBudget { ring, field });
        }
        let counts = [
            (
                "max_core_instances",
                limits.max_core_instances,
                MAX_CORE_INSTANCES_LIMIT,
            ),
            ("max_memories", limits.max_memories, MAX_MEMORIES_LIMIT),
            ("max_tables", limits.max_tables, MAX_TABLES_LIMIT),
        ];
        if let Some((field, value, max)) = counts.into_iter().find(|(_, v, max)| v > max) {
            return Err(RingError::TooLarge {
                ring,
                field,
                value: u64::from(value),
                max: u64::from(max),
            });
        }
        let mut next = self.clone();
        next.rings[ring.number() as usize] = limits;
        next.check_monotonic()?;
        *self = next;
        Ok(())
    }

    /// Builder form of [`RingPolicy::set_limits`].
    ///
    /// # Errors
    /// As [`RingPolicy::set_limits`].
    pub fn with_limits(mut self, ring: Ring, limits: RingLimits) -> Result<Self, RingError> {
        self.set_limits(ring, limits)?;
        Ok(self)
    }

    /// The least privileged ring whose capabilities include all of `needed`,
    /// or `None` if no ring has them all.
    pub fn lowest_ring_covering(&self, needed: CapabilitySet) -> Option<Ring> {
        Ring::ALL
            .into_iter()
            .rev()
            .find(|r| self.limits(*r).capabilities.is_superset_of(needed))
    }

    fn check_monotonic(&self) -> Result<(), RingError> {
        for pair in Ring::ALL.windows(2) {
            let (higher, lower) = (pair[0], pair[1]);
            let (h, l) = (
                self.limits(higher).capabilities,
                self.limits(lower).capabilities,
            );
            if let Some(capability) = l.iter().find(|c| !h.contains(*c)) {
                return Err(RingError::NotMonotonic {
                    lower,
                    higher,
                    capability,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_matches_design() {
        let p = RingPolicy::default();
        let caps = |r| {
            p.limits(r)
                .capabilities
                .iter()
                .map(Capability::interface)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            caps(Ring::Sandbox),
            ["context", "log", "vfs-read", "state-read", "elevation"]
        );
        let standard = [
            "context",
            "log",
            "vfs-read",
            "state-read",
            "elevation",
            "vfs-write",
            "state-write",
            "locks",
            "actions",
        ];
        assert_eq!(caps(Ring::Standard), standard);
        assert_eq!(
            caps(Ring::Privileged),
            [&standard[..], &["effects", "spawn", "net"]].concat()
        );
        assert_eq!(
            caps(Ring::Root),
            [&standard[..], &["effects", "spawn", "net", "admin"]].concat()
        );
        assert_eq!(p.limits(Ring::Sandbox).fuel_per_call, 100_000_000);
        assert_eq!(p.limits(Ring::Sandbox).memory_bytes, 32 << 20);
        assert_eq!(p.limits(Ring::Standard).deadline, Duration::from_secs(30));
        assert_eq!(p.limits(Ring::Root).memory_bytes, 1 << 30);
        for ring in Ring::ALL {
            assert_eq!(p.limits(ring).log_lines, 4096);
            assert_eq!(p.limits(ring).log_bytes, 256 * 1024);
            // A componentize-py agent (14 core instances, 1 memory, 2
            // tables) fits every ring.
            let l = p.limits(ring);
            assert!(l.max_core_instances >= 14 && l.max_memories >= 1 && l.max_tables >= 2);
        }
    }

    #[test]
    fn lowest_ring_is_the_least_privileged_that_covers() {
        let p = RingPolicy::default();
        let set = |cs: &[Capability]| cs.iter().copied().collect::<CapabilitySet>();
        assert_eq!(
            p.lowest_ring_covering(CapabilitySet::EMPTY),
            Some(Ring::Sandbox)
        );
        assert_eq!(
            p.lowest_ring_covering(set(&[Capability::Log, Capability::VfsRead])),
            Some(Ring::Sandbox)
        );
        assert_eq!(
            p.lowest_ring_covering(set(&[Capability::Log, Capability::VfsWrite])),
            Some(Ring::Standard)
        );
        assert_eq!(
            p.lowest_ring_covering(set(&[Capability::Effects])),
            Some(Ring::Privileged)
        );
    }

    #[test]
    fn ring_parses_numbers_and_names_and_rejects_others() {
        assert_eq!("2".parse::<Ring>(), Ok(Ring::Standard));
        assert_eq!("sandbox".parse::<Ring>(), Ok(Ring::Sandbox));
        assert_eq!("4".parse::<Ring>(), Err(RingError::OutOfRange { value: 4 }));
        assert_eq!(
            "99999999999".parse::<Ring>(),
            Err(RingError::OutOfRange {
                value: 99_999_999_999
            })
        );
        assert!(matches!(
            "admin".parse::<Ring>(),
            Err(RingError::UnknownName { .. })
        ));
        assert!(Ring::Root.covers(Ring::Sandbox) && !Ring::Sandbox.covers(Ring::Standard));
    }

    #[test]
    fn policy_refuses_non_monotonic_capabilities_and_zero_budgets() {
        let mut p = RingPolicy::default();
        let mut sandbox = RingLimits::default_for(Ring::Sandbox);
        sandbox.capabilities = sandbox.capabilities.with(Capability::Effects);
        let err = p.set_limits(Ring::Sandbox, sandbox).unwrap_err();
        assert_eq!(
            err,
            RingError::NotMonotonic {
                lower: Ring::Sandbox,
                higher: Ring::Standard,
                capability: Capability::Effects
            }
        );
        let mut zero = RingLimits::default_for(Ring::Standard);
        zero.fuel_per_call = 0;
        assert_eq!(
            p.set_limits(Ring::Standard, zero),
            Err(RingError::ZeroBudget {
                ring: Ring::Standard,
                field: "fuel_per_call"
            })
        );
        let mut huge = RingLimits::default_for(Ring::Standard);
        huge.max_memories = MAX_MEMORIES_LIMIT + 1;
        assert_eq!(
            p.set_limits(Ring::Standard, huge),
            Err(RingError::TooLarge {
                ring: Ring::Standard,
                field: "max_memories",
                value: u64::from(MAX_MEMORIES_LIMIT) + 1,
                max: u64::from(MAX_MEMORIES_LIMIT),
            })
        );
        for (field, set) in [
            (
                "max_core_instances",
                (|l: &mut RingLimits| l.max_core_instances = u32::MAX) as fn(&mut RingLimits),
            ),
            ("max_tables", |l: &mut RingLimits| {
                l.max_tables = MAX_TABLES_LIMIT + 1
            }),
        ] {
            let mut l = RingLimits::default_for(Ring::Sandbox);
            set(&mut l);
            assert!(
                matches!(p.set_limits(Ring::Sandbox, l), Err(RingError::TooLarge { field: f, .. }) if f == field),
                "{field}"
            );
        }
        let mut at_max = RingLimits::default_for(Ring::Root);
        at_max.max_memories = MAX_MEMORIES_LIMIT;
        at_max.max_tables = MAX_TABLES_LIMIT;
        at_max.max_core_instances = MAX_CORE_INSTANCES_LIMIT;
        assert!(p.clone().set_limits(Ring::Root, at_max).is_ok());
        assert_eq!(
            p,
            RingPolicy::default(),
            "a refused change leaves the policy as it was"
        );
    }

    #[test]
    fn capability_set_membership() {
        let s = CapabilitySet::EMPTY
            .with(Capability::VfsRead)
            .with(Capability::Effects);
        assert!(s.contains(Capability::VfsRead) && s.contains(Capability::Effects));
        assert!(!s.contains(Capability::VfsWrite));
        assert_eq!(s.iter().count(), 2);
        assert_eq!(
            Capability::VfsWrite.instance_name(),
            "agent-hypervisor:agent/vfs-write@0.1.0"
        );
        assert_eq!(
            Capability::from_interface("effects"),
            Some(Capability::Effects)
        );
        assert_eq!(Capability::from_interface("admin"), Some(Capability::Admin));
        assert_eq!(Capability::from_interface("spawn"), Some(Capability::Spawn));
        assert_eq!(Capability::from_interface("net"), None, "net is WASI's");
        assert_eq!(Capability::from_name("net"), Some(Capability::Net));
        assert_eq!(Capability::Net.default_ring(), Ring::Privileged);
    }

    #[test]
    fn metering_counts_reads_and_changes_and_frees_context_and_log() {
        assert_eq!(Capability::Log.metering("log"), Metering::Free);
        assert_eq!(Capability::Context.metering("whoami"), Metering::Free);
        assert_eq!(Capability::VfsRead.metering("read"), Metering::Read);
        assert_eq!(Capability::VfsWrite.metering("write"), Metering::Change);
        assert_eq!(Capability::Locks.metering("held"), Metering::Read);
        assert_eq!(Capability::Locks.metering("acquire"), Metering::Change);
        assert_eq!(Capability::Actions.metering("available"), Metering::Read);
        assert_eq!(Capability::Elevation.metering("request"), Metering::Change);
        assert_eq!(Capability::Admin.metering("inspect"), Metering::Read);
        assert_eq!(Capability::Admin.metering("kill"), Metering::Change);
    }
}
