//! # ahv-hypervisor: shared sessions of governed Wasm agents
//!
//! [`Hypervisor`] is the one front door used by the CLI, the tests, the
//! benchmarks and (later) the HTTP API. It owns a [`Runtime`] (the wasmtime
//! side), a state directory, an event bus and the live sessions. A session
//! ties together:
//!
//! - its governance state ([`Session`]: lifecycle, participants, join rules,
//!   maximum duration);
//! - its shared resources ([`SessionCore`]: the session VFS with a shared
//!   area and one private area per agent, the key-value state, intent locks,
//!   vector clocks), every change of which is an event;
//! - one live Wasm instance per participant that joined with a component,
//!   instantiated when it joins and reused by every call.
//!
//! ```no_run
//! use ahv_core::AgentId;
//! use ahv_governance::session::SessionConfig;
//! use ahv_hypervisor::{Hypervisor, JoinRequest};
//!
//! # async fn demo(researcher_wasm: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let hv = Hypervisor::builder().state_dir("/var/lib/ahv").build()?;
//! let creator = AgentId::new("did:ex:operator")?;
//! let session = hv.create_session(SessionConfig::default(), creator)?;
//! let component = hv.load(researcher_wasm)?;
//! let ring = hv
//!     .join_session(&session, JoinRequest::new(AgentId::new("did:ex:researcher")?, 0.45).component(component))
//!     .await?;
//! println!("researcher admitted in {ring}"); // below min σ 0.60: ring 3
//! hv.activate_session(&session)?;
//! let out = hv.run_agent(&session, &AgentId::new("did:ex:researcher")?, "topic: wasm").await?;
//! println!("{:?}", out.result);
//! hv.terminate_session(&session)?;
//! # Ok(()) }
//! ```
//!
//! Rings change at run time. Every participant has one
//! [`Standing`] — its base ring, an elevation
//! with a TTL, a quarantine — shared with its instance's gate, which judges
//! every governed host call from the ring *now*:
//!
//! - elevation: a guest asks (`elevation.request`), the rules decide (trust
//!   thresholds, TTL caps, ring 1 needs an attestation signed by the operator
//!   or a ring 0/1 participant); the host grants or revokes with
//!   [`Hypervisor::grant_elevation`] / [`Hypervisor::revoke_elevation`];
//!   expiry counts at the next call and is reported once;
//! - demotion: [`Hypervisor::set_trust`] (a score that earns a lower ring) or
//!   [`Hypervisor::demote`];
//! - quarantine: [`Hypervisor::quarantine`] / [`Hypervisor::release`]: only
//!   `context` and `log` answer meanwhile;
//! - joint liability ([`Hypervisor::vouch`], [`Hypervisor::slash`],
//!   [`Hypervisor::release_vouch`]): the effective score `σ + ω × bonds`
//!   decides the ring of the agent's next call; slashes, quarantines,
//!   breaches, floods and blamed sagas feed a ledger (SQLite or PostgreSQL,
//!   [`HypervisorBuilder::database`]) that admission reads at every join;
//! - the kill switch ([`Hypervisor::kill_agent`]) hands a killed agent's
//!   in-flight saga steps to its substitute ([`Hypervisor::register_substitute`]);
//! - rate limits per (agent, session) by ring, on by default;
//! - ring 0 agents administer the others (`admin`), ring 1 agents start
//!   children (`spawn`, from components offered with
//!   [`Hypervisor::offer_component`]).
//!
//! ```no_run
//! # use std::time::Duration;
//! # use ahv_core::{AgentId, Ring, SessionId};
//! # use ahv_hypervisor::Hypervisor;
//! # use ahv_trust::QuarantineReason;
//! # fn demo(hv: &Hypervisor, session: &SessionId) -> Result<(), Box<dyn std::error::Error>> {
//! let agent = AgentId::new("did:ex:researcher")?;
//! let lead = AgentId::new("did:ex:lead")?;
//! // The lead bonds 20 % of its σ: the researcher's next call may earn ring 2.
//! let _receipt = hv.vouch(session, &lead, &agent, None)?;
//! // Slashing the lead takes the bond, and that ring, back at once.
//! hv.slash(session, &lead, None, 1.0, "leaked a credential")?;
//! // Ring 2 for ten minutes, on the operator's authority (audited).
//! hv.grant_elevation(session, &agent, Ring::Standard, Duration::from_secs(600), "nightly export")?;
//! // Trust fell: its very next host call is judged at the ring the score earns.
//! hv.set_trust(session, &agent, 0.4)?;
//! hv.quarantine(session, &agent, QuarantineReason::Manual, "review", Some(Duration::from_secs(300)))?;
//! # Ok(()) }
//! ```
//!
//! Breaches are punished: the breaching call traps (recorded first, as a
//! `ring.breach_detected` event) and the instance is dropped; the breach
//! policy of the agent's base ring ([`HypervisorBuilder::breach_policy`])
//! then expels it (the default), re-admits it at a lower ring, quarantines
//! or kills it — at every breach, or when the breach detector's breaker
//! trips. Budget traps (fuel, memory, deadline, stack) are not malice: the
//! instance is re-created for the agent's next call (configurable).
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// `HypervisorError::Agent` carries the agent's typed trap cause and its last
// log lines (~160 bytes) so callers can match on it directly; errors are off
// the hot path.
#![allow(clippy::result_large_err)]

mod attribution;
mod breach;
mod governor;
mod handoff;
mod liability;
mod saga;
mod saga_redo;
mod spawn;

pub use attribution::saga_trace;
pub use handoff::{KillReport, KilledStep};
pub use liability::{LiabilityPolicy, SlashOutcome, VouchReceipt, quarantine_severity};
pub use saga::{Escalation, EscalationHook};

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use ahv_audit::{
    AuditConfig, AuditError, Auditor, RecoveryReport, SealReceipt, SignedTreeHead, SystemWallClock,
    audit_dir,
};
use ahv_core::event::{EventBus, EventPayload, TerminationReason};
use ahv_core::standing::Standing;
use ahv_core::{
    ActionDescriptor, AgentId, Clock, Ring, RingPolicy, SessionId, SystemClock, TickClock, TraceId,
};
use ahv_governance::actions::{ActionError, ActionRegistry};
use ahv_governance::session::{
    Consistency, Participant, ParticipantsDiff, Session, SessionConfig, SessionError, SessionState,
};
use ahv_governance::session_core::{SessionCore, SessionCoreConfig};
use ahv_governance::session_vfs::{DEFAULT_OPEN_DIRS, FileQuotas, OpenDirs, SnapshotInfo};
use ahv_governance::state::{Isolation, StateLimits};
use ahv_governance::vfs::VfsError;
use ahv_runtime::{
    AfterTrap, Agent, AgentComponent, AgentError, AgentSpec, BreachRecorder, BuildError,
    KillHandle, LoadError, RingBreach, RunOutput, Runtime, TrapCause,
};
use ahv_security::breach::{BreachDetector, BreachPolicy};
use ahv_security::elevation::ElevationRules;
use ahv_security::net::NetPolicy;
use ahv_security::policy::{Grants, Policy, PolicyError, PolicyFile};
use ahv_security::rate::{RateLimiter, RateTable};
use cap_std::fs::Dir;
use ed25519_dalek::VerifyingKey;
use thiserror::Error;

/// Why a hypervisor operation failed. Each variant names the session and
/// agent involved.
#[derive(Debug, Error)]
pub enum HypervisorError {
    /// A session rule refused the operation (lifecycle, join rules, capacity,
    /// expiry, configuration).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// No live session has this id (never created, or archived).
    #[error("no live session {session}")]
    UnknownSession {
        /// The id asked for.
        session: String,
    },
    /// The participant has no live instance to run.
    #[error(
        "session {session}: agent {agent} has no instance (it joined without a component, or was expelled or killed)"
    )]
    NoInstance {
        /// The session.
        session: SessionId,
        /// The agent.
        agent: AgentId,
    },
    /// A call into the agent failed (trap, poisoned, input too large).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The component was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A session file operation (snapshot, restore) failed.
    #[error("session {session}: {source}")]
    Files {
        /// The session.
        session: SessionId,
        /// The VFS error.
        #[source]
        source: VfsError,
    },
    /// The hypervisor could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// The audit log failed (opening it, or flushing and signing it).
    #[error("audit: {0}")]
    Audit(#[from] AuditError),
    /// The runtime could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A join of an agent whose earlier participation in the session is
    /// still ending: a call or join of its old instance, or its teardown,
    /// still acts by its id (releases locks, forgets rate buckets, removes
    /// children). Transient: the same join succeeds once that has ended
    /// (usually within an epoch tick; a saga step of the old instance, at
    /// most its timeout).
    #[error(
        "agent {agent} is still leaving session {session} (its earlier participation's call, locks and children are being let go); join again in a moment"
    )]
    StillLeaving {
        /// The session.
        session: SessionId,
        /// The agent.
        agent: AgentId,
    },
    /// A call of a participant waited its ring's deadline for the agent's
    /// instance, busy with earlier calls, and was not run. Transient.
    #[error(
        "agent {agent} in session {session} is busy: its instance did not become free within {waited:?} (its ring's deadline); call again later"
    )]
    Busy {
        /// The session.
        session: SessionId,
        /// The agent.
        agent: AgentId,
        /// How long the call waited.
        waited: Duration,
    },
    /// A change to a participant's standing was refused (an elevation
    /// already in force, a target that is not more privileged, a killed agent).
    #[error("agent {agent}: {message}")]
    Standing {
        /// The agent.
        agent: AgentId,
        /// What was refused.
        message: String,
    },
    /// A security setting (rate limits, breach policy, elevation rules) is invalid.
    #[error("security settings: {0}")]
    Security(String),
    /// The policy file was refused (it names the file, the field and the value).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A saga could not be run, resumed or read (its definition, its store,
    /// or its records).
    #[error("saga: {0}")]
    Saga(#[from] ahv_saga::EngineError),
    /// A saga's blame could not be attributed.
    #[error("attribution: {0}")]
    Attribution(#[from] ahv_trust::AttributionError),
    /// A saga cannot run in this session as it stands (an agent it names is
    /// not there).
    #[error("saga {saga}: {message}")]
    SagaSetup {
        /// The saga's name.
        saga: String,
        /// What is missing, naming the step and the agent.
        message: String,
    },
    /// The ledger refused the agent at join: its risk is at or above the
    /// deny threshold (0.6).
    #[error("agent {agent} is refused by the liability ledger: risk {risk:.2} is at or above 0.60")]
    AdmissionDenied {
        /// The agent.
        agent: AgentId,
        /// Its risk, in [0, 1].
        risk: f64,
    },
    /// A liability rule refused the operation (a vouch, a release, a slash,
    /// a quarantine), naming the agents and the rule.
    #[error("liability: {0}")]
    Liability(String),
    /// The liability store (the ledger's database) failed or is closed.
    #[error("ledger: {0}")]
    Ledger(String),
    /// A policy grants an agent an action or effect the host did not register.
    #[error("policy grants of agent {agent}: {source}")]
    Grant {
        /// The agent.
        agent: AgentId,
        /// The unknown action or effect.
        #[source]
        source: ActionError,
    },
}

/// A request to join a session.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The agent.
    pub agent: AgentId,
    /// Its trust score σ in [0, 1].
    pub sigma: f64,
    /// The actions it declares it will perform (a non-reversible one forces
    /// strong consistency).
    pub actions: Vec<ActionDescriptor>,
    /// Its Wasm component; without one the agent participates only through
    /// the host API (no instance).
    pub component: Option<AgentComponent>,
    /// An explicit root grant: who witnessed it. Ring 0 is never computed
    /// from a score; only this places an agent there.
    pub root_witness: Option<String>,
}

impl JoinRequest {
    /// A request for `agent` with score `sigma`, no declared actions, no component.
    pub fn new(agent: AgentId, sigma: f64) -> JoinRequest {
        JoinRequest {
            agent,
            sigma,
            actions: Vec::new(),
            component: None,
            root_witness: None,
        }
    }

    /// Grants the agent ring 0 (root), witnessed by `witness` (an operator
    /// or ring 0 agent, named in the `ring.assigned` event and audit log).
    pub fn root(mut self, witness: impl Into<String>) -> Self {
        self.root_witness = Some(witness.into());
        self
    }

    /// Declares the actions the agent will perform.
    pub fn actions(mut self, actions: Vec<ActionDescriptor>) -> Self {
        self.actions = actions;
        self
    }

    /// The agent's component: it is instantiated on join.
    pub fn component(mut self, component: AgentComponent) -> Self {
        self.component = Some(component);
        self
    }
}

/// What the hypervisor reports about one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Its id.
    pub id: SessionId,
    /// Its state.
    pub state: SessionState,
    /// Who created it.
    pub creator: AgentId,
    /// Its participants.
    pub participants: Vec<Participant>,
    /// Its consistency mode now (a join may have forced strong).
    pub consistency: Consistency,
    /// Its isolation level.
    pub isolation: Isolation,
    /// When it runs out of time (hypervisor clock).
    pub expires_at: Duration,
}

/// How a terminated session ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    /// The session.
    pub session: SessionId,
    /// Requested or expired.
    pub reason: TerminationReason,
    /// Participants at the end.
    pub participants: usize,
    /// The commitment sealing its audit log (`None` with auditing off, or if
    /// sealing failed — which is logged). Under group commit (the default)
    /// it is [`SealState::Pending`](ahv_audit::SealState::Pending): not on
    /// disk yet; [`Hypervisor::wait_durable`] before reporting it.
    pub commitment: Option<SealReceipt>,
}

/// Builds a [`Hypervisor`]. A state directory is required; everything else
/// has defaults: the default ring table, the system clock, an event history
/// of 10 000 events, the default quotas and state limits, no host actions
/// (deny by default: register them with [`HypervisorBuilder::actions`]),
/// budget traps re-create the instance.
pub struct HypervisorBuilder {
    state_dir: Option<PathBuf>,
    policy: RingPolicy,
    runtime: Option<Runtime>,
    clock: Arc<dyn Clock>,
    /// Whether `clock` was set by the embedder (then every timer uses it).
    clock_given: bool,
    event_capacity: usize,
    quotas: FileQuotas,
    state_limits: StateLimits,
    max_locks_per_agent: usize,
    max_open_dirs: usize,
    actions: Arc<ActionRegistry>,
    after_trap: AfterTrap,
    cache_dir: Option<PathBuf>,
    cache_max_bytes: Option<u64>,
    max_instances: u32,
    guest_turns: Option<usize>,
    breach_hook: Option<Arc<dyn BreachRecorder>>,
    audit: Option<AuditConfig>,
    rate_limits: Option<RateTable>,
    breach_policy: BreachPolicy,
    elevation_rules: ElevationRules,
    operator_key: Option<VerifyingKey>,
    grants: BTreeMap<AgentId, Grants>,
    net: NetPolicy,
    policy_file: Option<PathBuf>,
    saga_store: Option<Arc<dyn ahv_saga::ProgressStore>>,
    saga_sleeper: Arc<dyn ahv_saga::Sleeper>,
    saga_jitter: Arc<dyn ahv_saga::Jitter>,
    max_saga_bytes: u64,
    escalation: Vec<Arc<dyn EscalationHook>>,
    liability: LiabilityPolicy,
    trust_store: Option<liability::StoreSource>,
}

impl Default for HypervisorBuilder {
    fn default() -> Self {
        HypervisorBuilder {
            state_dir: None,
            policy: RingPolicy::default(),
            runtime: None,
            clock: Arc::new(SystemClock::default()),
            clock_given: false,
            event_capacity: 10_000,
            quotas: FileQuotas::default(),
            state_limits: StateLimits::default(),
            max_locks_per_agent: 1024,
            max_open_dirs: DEFAULT_OPEN_DIRS,
            actions: Arc::new(ActionRegistry::new()),
            after_trap: AfterTrap::Recreate,
            cache_dir: None,
            cache_max_bytes: None,
            max_instances: 1000,
            guest_turns: None,
            breach_hook: None,
            audit: Some(AuditConfig::default()),
            rate_limits: Some(RateTable::default()),
            breach_policy: BreachPolicy::default(),
            elevation_rules: ElevationRules::default(),
            operator_key: None,
            grants: BTreeMap::new(),
            net: NetPolicy::default(),
            policy_file: None,
            saga_store: None,
            saga_sleeper: Arc::new(ahv_saga::TokioSleeper),
            saga_jitter: Arc::new(ahv_saga::HashJitter::default()),
            max_saga_bytes: saga::MAX_SAGA_KEPT,
            escalation: Vec::new(),
            liability: LiabilityPolicy::default(),
            trust_store: None,
        }
    }
}

impl HypervisorBuilder {
    /// How the audit log under `<state>/audit` persists and signs (on by
    /// default with [`AuditConfig::default`]: group commit, heads signed
    /// within 100 ms).
    pub fn audit(mut self, config: AuditConfig) -> Self {
        self.audit = Some(config);
        self
    }

    /// No audit log at all (sessions' `audit` setting is then moot). For
    /// embedders that audit elsewhere; the default keeps one.
    pub fn without_audit(mut self) -> Self {
        self.audit = None;
        self
    }

    /// Where sessions keep their files (`<dir>/sessions/<id>/…`). Required.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The ring table (used when the hypervisor builds its own runtime).
    pub fn policy(mut self, policy: RingPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Every rule of a policy file at once: the ring table (when the
    /// hypervisor builds its own runtime), rate limits (turning them on),
    /// the breach policy, the elevation rules and per-agent grants of host
    /// actions and effects (an agent listed gets exactly its grants; others
    /// get every registered one). Replaces what [`policy`](Self::policy),
    /// [`rate_limits`](Self::rate_limits), [`breach_policy`](Self::breach_policy)
    /// and [`elevation_rules`](Self::elevation_rules) set before.
    pub fn governance_policy(mut self, policy: Policy) -> Self {
        let Policy {
            rings,
            rate,
            breach,
            elevation,
            grants,
            net,
        } = policy;
        self.policy = rings;
        self.rate_limits = Some(rate);
        self.breach_policy = breach;
        self.elevation_rules = elevation;
        self.grants = grants;
        self.net = net;
        self
    }

    /// The outbound HTTP allow-list and limits of the `net` capability
    /// (default: every destination refused). A policy file's `[net]` sets it
    /// too ([`governance_policy`](Self::governance_policy)).
    pub fn net_policy(mut self, net: NetPolicy) -> Self {
        self.net = net;
        self
    }

    /// Loads the TOML policy file at `path` when the hypervisor is built and
    /// applies it as [`governance_policy`](Self::governance_policy) does, over
    /// whatever was set before (a field the file leaves out has its default,
    /// not an earlier setting). The format is in `docs/policy.md`.
    pub fn policy_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.policy_file = Some(path.into());
        self
    }

    /// Caches compiled components in `dir` (when the hypervisor builds its own runtime).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The most bytes the component cache keeps (when the hypervisor builds
    /// its own runtime): [`RuntimeBuilder::cache_max_bytes`](ahv_runtime::RuntimeBuilder::cache_max_bytes).
    pub fn cache_max_bytes(mut self, bytes: u64) -> Self {
        self.cache_max_bytes = Some(bytes);
        self
    }

    /// Most live instances at once (when the hypervisor builds its own runtime).
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = n;
        self
    }

    /// How many guests may run wasm at the same moment (when the hypervisor
    /// builds its own runtime; see `ahv_runtime::RuntimeBuilder::guest_turns`;
    /// default: the machine's available parallelism). One fewer than the
    /// async runtime's worker threads keeps a worker free for timers and
    /// requests while agents spin.
    pub fn guest_turns(mut self, n: usize) -> Self {
        self.guest_turns = Some(n);
        self
    }

    /// The clock for session deadlines and event times (tests pass a `FakeClock`).
    /// Audited deltas carry event times moved to the wall clock by an offset
    /// read again once a second of this clock's time: with a clock that
    /// never moves, every delta carries the first wall time.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self.clock_given = true;
        self
    }

    /// How many events the bus keeps.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// File quotas of every session.
    pub fn quotas(mut self, quotas: FileQuotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Most directory descriptors idle sessions keep open, all sessions
    /// together (default [`DEFAULT_OPEN_DIRS`]); past it a session's files
    /// are closed after each operation and reopened for the next (see
    /// [`OpenDirs`]).
    pub fn max_open_dirs(mut self, n: usize) -> Self {
        self.max_open_dirs = n;
        self
    }

    /// State limits of every session.
    pub fn state_limits(mut self, limits: StateLimits) -> Self {
        self.state_limits = limits;
        self
    }

    /// Grants these host actions and effects to participants (subject to their ring).
    pub fn actions(mut self, actions: ActionRegistry) -> Self {
        self.actions = Arc::new(actions);
        self
    }

    /// What happens after a budget trap (breaches and kills always end the agent).
    pub fn after_trap(mut self, policy: AfterTrap) -> Self {
        self.after_trap = policy;
        self
    }

    /// Rate limits per ring for metered host calls (on by default with
    /// [`RateTable::default`]: changes R3 5/s burst 10 … R0 100/s burst
    /// 200, reads ten times that).
    pub fn rate_limits(mut self, table: RateTable) -> Self {
        self.rate_limits = Some(table);
        self
    }

    /// No rate limits at all (for benchmarks and embedders that limit elsewhere).
    pub fn without_rate_limits(mut self) -> Self {
        self.rate_limits = None;
        self
    }

    /// What a ring breach costs the agent, per base ring (default: expelled
    /// at every breach), and the breach detector's settings.
    pub fn breach_policy(mut self, policy: BreachPolicy) -> Self {
        self.breach_policy = policy;
        self
    }

    /// The rules elevation requests are decided by (default: SEMANTICS.md's:
    /// trust 0.50 for ring 2 and 0.85 for ring 1, TTL 300 s, at most 3600 s).
    pub fn elevation_rules(mut self, rules: ElevationRules) -> Self {
        self.elevation_rules = rules;
        self
    }

    /// The operator's public key: attestations it signs sponsor ring 1
    /// elevations. Without one, only ring 0/1 participants with a
    /// registered key ([`Hypervisor::register_sponsor_key`]) can sponsor.
    pub fn operator_key(mut self, key: VerifyingKey) -> Self {
        self.operator_key = Some(key);
        self
    }

    /// Also calls `hook` with every breach (after the event is emitted,
    /// before the breaching call traps).
    pub fn on_breach(mut self, hook: impl BreachRecorder + 'static) -> Self {
        self.breach_hook = Some(Arc::new(hook));
        self
    }

    /// Where saga progress is kept. Default: a durable journal per saga in
    /// `<state>/sagas` ([`ahv_saga::FileStore`]). An in-memory store
    /// ([`ahv_saga::MemoryStore`]) keeps nothing across processes: for
    /// embedders that persist elsewhere, and for benchmarks.
    pub fn saga_store(mut self, store: Arc<dyn ahv_saga::ProgressStore>) -> Self {
        self.saga_store = Some(store);
        self
    }

    /// How sagas wait between retries. Default: tokio's timer. Tests pass
    /// an [`ahv_saga::FakeSleeper`], which records each delay and returns at once.
    pub fn saga_sleeper(mut self, sleeper: Arc<dyn ahv_saga::Sleeper>) -> Self {
        self.saga_sleeper = sleeper;
        self
    }

    /// Where retry jitter comes from. Default: [`ahv_saga::HashJitter`];
    /// tests pass a seeded or fixed one.
    pub fn saga_jitter(mut self, jitter: Arc<dyn ahv_saga::Jitter>) -> Self {
        self.saga_jitter = jitter;
        self
    }

    /// Most bytes of step outputs and undo data one run of a saga commits
    /// (default 64 MiB): the engine keeps them in memory and the journal on
    /// disk. The step that would pass it is refused and its changes undone.
    pub fn max_saga_bytes(mut self, bytes: u64) -> Self {
        self.max_saga_bytes = bytes;
        self
    }

    /// Adds a hook told of every escalated saga (a compensation failed).
    /// None by default: an escalation is then an event, an audit delta and
    /// a log line.
    pub fn on_escalation(mut self, hook: impl EscalationHook + 'static) -> Self {
        self.escalation.push(Arc::new(hook));
        self
    }

    /// The liability settings (ω, the default bond, the slashing policy
    /// after an escalated saga, attribution, what counts as a flood).
    pub fn liability(mut self, policy: LiabilityPolicy) -> Self {
        self.liability = policy;
        self
    }

    /// Where the ledger, vouches and quarantine records are stored: `memory`
    /// (nothing survives the process), `sqlite://PATH` or
    /// `postgres://USER@HOST/DB` (shared by every hypervisor that names it).
    /// The default is SQLite at `<state>/liability.sqlite`.
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.trust_store = Some(liability::StoreSource::Url(url.into()));
        self
    }

    /// A liability store the embedder built (instead of [`HypervisorBuilder::database`]).
    pub fn trust_store(mut self, store: Arc<dyn ahv_store::TrustStore>) -> Self {
        self.trust_store = Some(liability::StoreSource::Store(store));
        self
    }

    /// Builds the hypervisor: opens (creating if needed) `<state>/sessions`,
    /// builds the runtime with a breach recorder that emits
    /// `ring.breach_detected` on the bus.
    ///
    /// # Errors
    /// [`HypervisorError::Setup`] without a state directory or if it cannot be
    /// created; [`HypervisorError::Build`] if the runtime cannot be built;
    /// [`HypervisorError::Policy`] for a refused policy file;
    /// [`HypervisorError::Grant`] for a grant of an unregistered action.
    pub fn build(mut self) -> Result<Hypervisor, HypervisorError> {
        if let Some(path) = self.policy_file.take() {
            self = self.governance_policy(PolicyFile::load(&path)?);
        }
        let net_in_standard = self
            .grants
            .iter()
            .filter(|(_, g)| g.net)
            .map(|(agent, _)| agent.clone())
            .collect::<HashSet<_>>();
        let granted = self
            .grants
            .iter()
            .map(|(agent, g)| {
                self.actions
                    .restricted(
                        g.actions.iter().map(String::as_str),
                        g.effects.iter().map(String::as_str),
                    )
                    .map(|r| (agent.clone(), Arc::new(r)))
                    .map_err(|source| HypervisorError::Grant {
                        agent: agent.clone(),
                        source,
                    })
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let state_dir = self
            .state_dir
            .ok_or_else(|| HypervisorError::Setup("a state directory is required".into()))?;
        let sessions_path = state_dir.join("sessions");
        std::fs::create_dir_all(&sessions_path).map_err(|e| {
            HypervisorError::Setup(format!("cannot create {}: {e}", sessions_path.display()))
        })?;
        let saga_store: Arc<dyn ahv_saga::ProgressStore> = match self.saga_store {
            Some(s) => s,
            None => Arc::new(
                ahv_saga::FileStore::open(&state_dir.join("sagas"))
                    .map_err(|e| HypervisorError::Setup(e.to_string()))?,
            ),
        };
        let saga_blobs = if saga_store.survives_restart() {
            let dir = state_dir.join("saga-blobs");
            Some(Arc::new(
                ahv_saga::BlobStore::open(&dir)
                    .map_err(|e| HypervisorError::Setup(e.to_string()))?,
            ))
        } else {
            None
        };
        let sessions_dir = Dir::open_ambient_dir(&sessions_path, cap_std::ambient_authority())
            .map_err(|e| {
                HypervisorError::Setup(format!("cannot open {}: {e}", sessions_path.display()))
            })?;
        self.liability.validate()?;
        let records =
            liability::Records::start(self.trust_store.take().unwrap_or_else(|| {
                liability::StoreSource::Url(ahv_store::sqlite_url(&state_dir))
            }))?;
        let events = Arc::new(EventBus::new(self.event_capacity, self.clock.clone()));
        let security_error = |e: &dyn std::fmt::Display| HypervisorError::Security(e.to_string());
        self.elevation_rules
            .validate()
            .map_err(|e| security_error(&e))?;
        let detector =
            BreachDetector::new(self.breach_policy.detector().clone(), self.clock.clone())
                .map_err(|e| security_error(&e))?;
        // With the default (system) clock, buckets read a coarse clock the
        // epoch ticker advances: one atomic load per metered call instead of
        // a clock_gettime. An injected clock (tests) is used as given.
        let tick_clock = (!self.clock_given).then(TickClock::new);
        let rate_clock: Arc<dyn Clock> = match &tick_clock {
            Some(t) => Arc::new(t.clone()),
            None => self.clock.clone(),
        };
        let rate = self
            .rate_limits
            .map(|table| Arc::new(RateLimiter::new(table, rate_clock, MAX_RATE_BUCKETS)));
        let governor = Arc::new(governor::HvGovernor::default());
        let runtime = match self.runtime {
            Some(r) => r,
            None => {
                let bus = events.clone();
                let hook = self.breach_hook.clone();
                let mut b = Runtime::builder()
                    .policy(self.policy)
                    .max_instances(self.max_instances)
                    .governor(governor.clone())
                    .on_breach(move |b: &RingBreach| {
                        bus.emit(
                            Some(&b.session),
                            Some(&b.agent),
                            b.trace,
                            None,
                            EventPayload::RingBreachDetected {
                                ring: b.ring,
                                capability: b.capability.to_string(),
                                function: b.function.clone(),
                            },
                        );
                        if let Some(h) = &hook {
                            h.record(b);
                        }
                    });
                if let Some(dir) = self.cache_dir {
                    b = b.cache_dir(dir);
                }
                if let Some(bytes) = self.cache_max_bytes {
                    b = b.cache_max_bytes(bytes);
                }
                if let Some(rate) = &rate {
                    b = b.rate_limits(rate.clone());
                }
                if let Some(t) = tick_clock {
                    b = b.tick_clock(t);
                }
                if let Some(n) = self.guest_turns {
                    b = b.guest_turns(n);
                }
                b.build()?
            }
        };
        let (audit, recovery) = match self.audit {
            Some(config) => {
                let (auditor, report) = Auditor::open(
                    &audit_dir(&state_dir),
                    config,
                    self.clock.clone(),
                    Arc::new(SystemWallClock),
                )?;
                for (path, tail) in &report.torn {
                    if tail.saved_to.is_some() {
                        tracing::warn!(path = %path.display(), offset = tail.offset, len = tail.len, saved_to = ?tail.saved_to, "audit log had a torn tail (crash); cut and kept aside");
                    } else {
                        tracing::warn!(path = %path.display(), offset = tail.offset, len = tail.len, "audit segment ends in a torn record (crash); left where it is, as evidence");
                    }
                }
                for (path, offset, records) in &report.uncommitted {
                    tracing::warn!(path = %path.display(), offset, records, "audit segment ends in a round that was never acknowledged (crash); left where it is, as evidence");
                }
                for (path, error) in &report.damaged {
                    tracing::error!(path = %path.display(), %error, "damaged audit log left without a commitment: not sealed, kept as evidence (`ahv audit verify` reports it)");
                }
                for (session, n) in &report.sealed_on_recovery {
                    tracing::warn!(%session, deltas = n, "sealed an audit log left open by an earlier process");
                }
                auditor.attach(&events);
                (Some(auditor), report)
            }
            None => (None, RecoveryReport::default()),
        };
        let inner = Arc::new(Inner {
            audit,
            recovery,
            runtime,
            state_dir,
            sessions_dir: Arc::new(sessions_dir),
            clock: self.clock,
            events,
            actions: self.actions,
            granted,
            net: self.net,
            net_in_standard,
            quotas: self.quotas,
            state_limits: self.state_limits,
            max_locks_per_agent: self.max_locks_per_agent,
            open_dirs: OpenDirs::new(self.max_open_dirs),
            after_trap: self.after_trap,
            sessions: RwLock::new(HashMap::default()),
            sagas: saga::SagaSettings {
                store: saga_store,
                sleeper: self.saga_sleeper,
                jitter: self.saga_jitter,
                escalation: self.escalation,
                driving: Mutex::new(saga::Drivers::default()),
                blobs: saga_blobs,
                plans: Arc::default(),
                max_bytes: self.max_saga_bytes,
            },
            archived: Mutex::new(VecDeque::new()),
            id_seed: RandomState::new(),
            id_counter: AtomicU64::new(0),
            offered: Mutex::new(HashMap::new()),
            liability: liability::Liability {
                policy: self.liability,
                records,
                cache: Mutex::default(),
            },
            security: Security {
                rate,
                detector,
                breach: self.breach_policy,
                elevation: self.elevation_rules,
                operator_key: self.operator_key,
                agent_keys: Mutex::new(HashMap::new()),
                used_attestations: Mutex::new(HashMap::new()),
            },
        });
        governor.attach(&inner);
        Ok(Hypervisor { inner })
    }
}

/// How many archived sessions' summaries are kept for queries.
const ARCHIVE_KEPT: usize = 1024;

struct AgentSlot {
    agent: tokio::sync::Mutex<Agent>,
    kill: KillHandle,
    /// Set when the agent is removed: a call still running in the instance
    /// releases locks and ends its transaction by the agent's id when it
    /// ends, so the agent may not join again until every holder of the
    /// slot (that call) is done with it. Declared after `agent`: fields
    /// drop in order, so the instance is gone before the count goes.
    leaving: OnceLock<Leaving>,
}

/// A join still making its agent's instance (`SessionEntry::joining`),
/// shared by the join and the session.
struct JoinTicket {
    /// Stops the instance being made.
    kill: KillHandle,
    /// Set by a removal that lets the agent go meanwhile: the failing
    /// instance still releases locks by the agent's id, so the agent may
    /// not join again until this join has ended.
    leaving: OnceLock<Leaving>,
}

struct SessionEntry {
    audited: bool,
    gov: Mutex<Session>,
    core: Arc<SessionCore>,
    /// The participants' live instances. foldhash, not SipHash: at most
    /// the session's participants, looked up at every saga step.
    agents: Mutex<HashMap<AgentId, Arc<AgentSlot>, foldhash::fast::RandomState>>,
    /// Every participant's standing (its effective ring now), shared with
    /// its instance's gate: the one copy of its ring that is enforced.
    standings: Mutex<HashMap<AgentId, Arc<Standing>>>,
    /// Participants whose join is still making their instance, with the
    /// kill handle it is made with: not in yet (no `session.joined`), so a
    /// session that ends meanwhile neither counts nor credits them, kills
    /// the instance being made (a start function waiting in the host ends
    /// at once), and their join is refused and undone. A kill or removal
    /// kills it too. A leaf lock, taken with `gov` held or alone.
    /// foldhash: made with every session, where std's `RandomState` reads
    /// its thread's keys; at most the session's participants.
    joining: Mutex<HashMap<AgentId, Arc<JoinTicket>, foldhash::fast::RandomState>>,
    /// Agents that have left (`remove`, `JoinUndo`) but whose leaving is
    /// not done, with how many [`Leaving`]s of theirs are held: their
    /// locks, state, rate buckets and children still go by their id (a
    /// removal's teardown, and a call or join of the old instance that has
    /// yet to end). A join of theirs is refused until then, so that none of
    /// that reaches a new participation. Counted under `gov` and taken
    /// under `gov` by a join, as a leaf.
    leaving: Arc<Mutex<LeavingCounts>>,
    /// Children started with `spawn`: who their parent is, how deep they are.
    spawned: Mutex<HashMap<AgentId, spawn::Spawned>>,
    /// Numbers the children of this session.
    spawn_counter: AtomicU64,
    /// Vouches, quarantine records, ring ceilings.
    liability: Mutex<liability::SessionLiability>,
    /// Saga steps running in each agent now (for the kill's hand-off).
    in_flight: Mutex<handoff::InFlight>,
    /// Who takes over an agent's saga steps if it is killed.
    substitutes: Mutex<HashMap<AgentId, AgentId>>,
}

/// Most rate buckets kept (two per participant); unused ones are evicted first.
const MAX_RATE_BUCKETS: usize = 1 << 16;

/// The security parts: rate limits, the breach detector and policy, the
/// elevation rules and the keys that may sponsor an elevation.
struct Security {
    rate: Option<Arc<RateLimiter>>,
    detector: BreachDetector,
    breach: BreachPolicy,
    elevation: ElevationRules,
    operator_key: Option<VerifyingKey>,
    agent_keys: Mutex<HashMap<AgentId, VerifyingKey>>,
    /// Signatures of the sponsorship attestations already used, with their expiry.
    used_attestations: Mutex<HashMap<[u8; 64], u64>>,
}

/// Undoes a join that did not complete (no events were emitted for it).
struct JoinUndo<'a> {
    hv: &'a Hypervisor,
    entry: &'a SessionEntry,
    agent: &'a AgentId,
    /// The standing this join put in: if the agent's standing is another
    /// by the time the join fails, the participation is no longer this
    /// join's (it left, and joined again) and is not undone.
    standing: Arc<Standing>,
    armed: bool,
}

impl Drop for JoinUndo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let session = self.entry.core.id();
        // Whose participation it is, and the leave, in one critical
        // section (gov, then standings): no leave and rejoin in between
        // can make this undo another join's.
        let (left, _leaving) = {
            let mut gov = lock(&self.entry.gov);
            let mut standings = lock(&self.entry.standings);
            match standings.get(self.agent) {
                Some(s) if Arc::ptr_eq(s, &self.standing) => {
                    standings.remove(self.agent);
                }
                // Another join's participation now: not this one's to undo.
                Some(_) => return,
                // It left meanwhile, and `remove` undid the rest; only what
                // this join's store made since may be left, and no join of
                // its may come in before that goes.
                None => {
                    let _leaving = Leaving::start(self.entry, self.agent);
                    drop((standings, gov));
                    self.hv.forget_security(self.agent, session);
                    return;
                }
            }
            drop(standings);
            // A session that is ending keeps its participants (`leave`
            // refuses): `finish` lets this one and its children go,
            // neither counting nor crediting them.
            let left = !matches!(
                gov.leave(self.agent),
                Err(SessionError::InvalidTransition { .. })
            );
            (left, left.then(|| Leaving::start(self.entry, self.agent)))
        };
        if left {
            // Children its instance started while it was being made go
            // with it; none joins after the leave (`join_as` wants its
            // parent in), so one look finds them all.
            let mut op = self.hv.op();
            for child in self.hv.children_of(self.entry, self.agent) {
                let why = format!("parent {} left: join did not complete", self.agent);
                self.hv.remove(&mut op, self.entry, &child, &why);
            }
            // Listed as joining until its children are gone: a session
            // ending meanwhile neither counts nor credits them. (It cannot
            // have joined again since: it is listed as leaving.)
            let gov = lock(&self.entry.gov);
            if gov.participant(self.agent).is_none() {
                lock(&self.entry.joining).remove(self.agent);
            }
        }
        lock(&self.entry.spawned).remove(self.agent);
        self.entry
            .core
            .agent_left(self.agent, "join did not complete", TraceId(0));
        // The instance's store made its rate buckets before it failed.
        self.hv.forget_security(self.agent, session);
    }
}

/// How many [`Leaving`]s of each agent are held (`SessionEntry::leaving`).
type LeavingCounts = HashMap<AgentId, u32, foldhash::fast::RandomState>;

/// Something of an agent's that left still acting by its id
/// (`SessionEntry::leaving`): a removal's teardown, or the old instance's
/// call or join. Counted when made (under `gov`), uncounted when dropped,
/// however that comes; once none is held, a join of the agent's is let in
/// again.
struct Leaving {
    counts: Arc<Mutex<LeavingCounts>>,
    agent: AgentId,
}

impl Leaving {
    fn start(entry: &SessionEntry, agent: &AgentId) -> Leaving {
        *lock(&entry.leaving).entry(agent.clone()).or_insert(0) += 1;
        Leaving {
            counts: entry.leaving.clone(),
            agent: agent.clone(),
        }
    }
}

impl Drop for Leaving {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.agent);
            }
        }
    }
}

/// The causal context of one host operation (see `Hypervisor::op`).
struct Op {
    trace: TraceId,
    last: Option<ahv_core::EventId>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Inner {
    // First field: dropped (closed: flushed and signed) before the rest.
    audit: Option<Auditor>,
    recovery: RecoveryReport,
    runtime: Runtime,
    state_dir: PathBuf,
    sessions_dir: Arc<Dir>,
    clock: Arc<dyn Clock>,
    events: Arc<EventBus>,
    actions: Arc<ActionRegistry>,
    /// The registries of the agents a policy lists: only their grants.
    granted: HashMap<AgentId, Arc<ActionRegistry>>,
    /// The outbound HTTP allow-list and limits.
    net: NetPolicy,
    /// The agents granted `net` in ring 2 by the policy.
    net_in_standard: HashSet<AgentId>,
    quotas: FileQuotas,
    state_limits: StateLimits,
    max_locks_per_agent: usize,
    open_dirs: Arc<OpenDirs>,
    after_trap: AfterTrap,
    /// Live sessions. foldhash, not SipHash: every operation looks its
    /// session up (SipHash took ~1 % of a session's lifecycle), and every
    /// key inserted is an id this hypervisor generated.
    sessions: RwLock<HashMap<SessionId, Arc<SessionEntry>, foldhash::fast::RandomState>>,
    /// Saga progress store, retry timing and escalation hooks.
    sagas: saga::SagaSettings,
    archived: Mutex<VecDeque<SessionInfo>>,
    id_seed: RandomState,
    id_counter: AtomicU64,
    security: Security,
    /// Components agents may spawn children from, by name.
    offered: Mutex<HashMap<String, AgentComponent>>,
    /// Vouches, slashes, quarantine records and the ledger's store.
    liability: liability::Liability,
}

/// The Agent Hypervisor: shared sessions of governed Wasm agents. Cheap to
/// clone (shared); every method takes `&self`.
#[derive(Clone)]
pub struct Hypervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("state_dir", &self.inner.state_dir)
            .finish_non_exhaustive()
    }
}

/// Stops the instance `agent`'s join is still making, if any: a start
/// function waiting in the host ends at once, and the join is refused.
fn kill_joining(entry: &SessionEntry, agent: &AgentId, reason: &str) {
    if let Some(join) = lock(&entry.joining).get(agent) {
        join.kill.kill(reason);
    }
}

/// Whether `agent`'s join had not completed: it, or a parent it was
/// spawned by, was still making its instance (`SessionEntry::joining`).
fn unjoined(
    agent: &AgentId,
    joining: &HashMap<AgentId, Arc<JoinTicket>, foldhash::fast::RandomState>,
    spawned: &HashMap<AgentId, spawn::Spawned>,
) -> bool {
    let mut next = Some(agent);
    // Bounded: a chain of parents is at most every child long.
    for _ in 0..=spawned.len() {
        let Some(a) = next else { return false };
        if joining.contains_key(a) {
            return true;
        }
        next = spawned.get(a).map(|s| &s.parent);
    }
    false
}

fn info(gov: &Session) -> SessionInfo {
    SessionInfo {
        id: gov.id().clone(),
        state: gov.state(),
        creator: gov.creator().clone(),
        participants: gov.participants().cloned().collect(),
        consistency: gov.config().consistency,
        isolation: gov.config().isolation,
        expires_at: gov.expires_at(),
    }
}

impl Hypervisor {
    /// A builder (see [`HypervisorBuilder`] for the defaults).
    pub fn builder() -> HypervisorBuilder {
        HypervisorBuilder::default()
    }

    /// The runtime that runs the agents.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The audit log, unless built [`without_audit`](HypervisorBuilder::without_audit).
    pub fn audit(&self) -> Option<&Auditor> {
        self.inner.audit.as_ref()
    }

    /// What opening the audit log found: torn tails cut off, sessions an
    /// earlier process left unsealed (sealed now).
    pub fn audit_recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// Writes and syncs the audit log and signs its final head, then stores
    /// every queued liability record; returns the head (`None` without
    /// audit or before any session was sealed). Dropping the last handle
    /// does the same, ignoring errors.
    ///
    /// # Errors
    /// [`HypervisorError::Ledger`] if a liability record was lost (reported
    /// once, as [`Hypervisor::flush_liability`] does: joins are admitted
    /// again), the store's thread died, or the store did not answer within
    /// 60 s; [`HypervisorError::Audit`] if writing or signing fails (it
    /// wins when both fail; the audit log is flushed either way).
    pub fn shutdown(&self) -> Result<Option<SignedTreeHead>, HypervisorError> {
        // The audit log first, and whatever the ledger's fate: a hung
        // liability store can hold the drain for its whole bound, and a
        // supervisor's stop timeout may be shorter.
        let audit = self.inner.audit.as_ref().map(|a| a.flush()).transpose();
        let ledger = self.inner.liability.records.drain(false);
        match (ledger, audit) {
            (Ok(()), Ok(head)) => Ok(head.flatten()),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
            (Err(ledger), Err(audit)) => {
                tracing::error!(error = %ledger, "shutting down: the liability store");
                Err(audit.into())
            }
        }
    }

    /// The event bus: every session, ring, VFS, state and lock change.
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// The state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.inner.state_dir
    }

    /// Loads and admits a component (see [`Runtime::load`]).
    ///
    /// # Errors
    /// [`HypervisorError::Load`] naming the refused import or missing export.
    pub fn load(&self, bytes: &[u8]) -> Result<AgentComponent, HypervisorError> {
        Ok(self.inner.runtime.load(bytes)?)
    }

    fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// A host operation's causal context: a fresh trace id for all its
    /// events, each the parent of the next.
    fn op(&self) -> Op {
        Op {
            trace: self.inner.runtime.new_trace_id(),
            last: None,
        }
    }

    /// The causal context of a decision made during an agent's call: its
    /// events carry the call's trace id.
    fn op_in(&self, trace: TraceId) -> Op {
        Op { trace, last: None }
    }

    fn emit(
        &self,
        op: &mut Op,
        session: &SessionId,
        agent: Option<&AgentId>,
        payload: EventPayload,
    ) {
        let id = self
            .inner
            .events
            .emit(Some(session), agent, op.trace, op.last, payload);
        op.last = Some(id);
    }

    fn new_session_id(&self) -> SessionId {
        let n = self.inner.id_counter.fetch_add(1, Ordering::Relaxed);
        let h = self.inner.id_seed.hash_one(n);
        // Unique by the counter, unpredictable by the hash; always a valid id.
        SessionId::new(format!("s{n}-{h:016x}")).unwrap_or_else(|_| unreachable!())
    }

    /// Creates a session and opens its handshake (`created`, then
    /// `handshaking`): agents may join at once. Emits `session.created`.
    /// Its directory is created on first use, not here.
    ///
    /// # Errors
    /// [`SessionError::InvalidConfig`] naming the bad field.
    pub fn create_session(
        &self,
        config: SessionConfig,
        creator: AgentId,
    ) -> Result<SessionId, HypervisorError> {
        let id = self.new_session_id();
        let core_config = SessionCoreConfig {
            quotas: self.inner.quotas.clone(),
            state: self.inner.state_limits.clone(),
            isolation: config.isolation,
            strict: config.consistency == Consistency::Strong,
            max_locks_per_agent: self.inner.max_locks_per_agent,
            open_dirs: self.inner.open_dirs.clone(),
        };
        let payload = EventPayload::SessionCreated {
            creator: creator.clone(),
            max_participants: config.max_participants,
            max_duration: config.max_duration,
        };
        let audited = config.audit;
        let mut gov = Session::new(id.clone(), config, creator.clone(), self.now())?;
        gov.begin_handshake(self.now())?;
        if !audited && let Some(a) = &self.inner.audit {
            a.exclude(&id);
        }
        let core = Arc::new(SessionCore::new(
            id.clone(),
            self.inner.sessions_dir.clone(),
            &core_config,
            self.inner.events.clone(),
        ));
        let entry = Arc::new(SessionEntry {
            audited,
            gov: Mutex::new(gov),
            core,
            agents: Mutex::new(HashMap::default()),
            standings: Mutex::new(HashMap::new()),
            joining: Mutex::new(HashMap::default()),
            leaving: Arc::default(),
            spawned: Mutex::new(HashMap::new()),
            spawn_counter: AtomicU64::new(0),
            liability: Mutex::new(liability::SessionLiability::new(self.inner.clock.clone())),
            in_flight: Mutex::new(Vec::new()),
            substitutes: Mutex::new(HashMap::new()),
        });
        self.inner
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), entry);
        self.emit(&mut self.op(), &id, Some(&creator), payload);
        Ok(id)
    }

    fn entry(&self, id: &SessionId) -> Result<Arc<SessionEntry>, HypervisorError> {
        let entry = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| HypervisorError::UnknownSession {
                session: id.to_string(),
            })?;
        if self.enforce_deadline(&entry) {
            let max = lock(&entry.gov).config().max_duration;
            return Err(SessionError::Expired {
                session: id.clone(),
                max,
            }
            .into());
        }
        Ok(entry)
    }

    /// Terminates the session if it ran out of time; returns whether it did
    /// (the operation that noticed then fails with `Expired`).
    fn enforce_deadline(&self, entry: &SessionEntry) -> bool {
        let expired = lock(&entry.gov).enforce_deadline(self.now());
        if expired {
            self.finish(entry, TerminationReason::Expired);
        }
        expired
    }

    /// Terminates every session whose maximum duration has passed; returns
    /// their ids. Operations on a session also enforce its deadline; call
    /// this periodically to end idle sessions too.
    pub fn reap_expired(&self) -> Vec<SessionId> {
        let entries: Vec<_> = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        entries
            .into_iter()
            .filter(|e| self.enforce_deadline(e))
            .map(|e| e.core.id().clone())
            .collect()
    }

    /// Asks `agent` to join: the join rules decide its ring (below the
    /// session's minimum σ: ring 3 only; a non-reversible declared action
    /// forces strong consistency), and its component, if any, is
    /// instantiated now in that ring, its instance kept for every later call.
    /// Emits `session.joined` and `ring.assigned` once the agent is in.
    ///
    /// # Errors
    /// [`SessionError`] (state, expiry, duplicate, capacity, bad σ; and,
    /// for a join with a component, `InvalidTransition` if the session was
    /// terminated, or `NotAParticipant` if the agent left or was removed,
    /// while its instance was made: that instance is stopped at once, even
    /// in a start function waiting in the host); [`HypervisorError::Agent`]
    /// if instantiation fails (a `Killed` trap if the agent was killed
    /// meanwhile). The agent is then not a participant.
    pub async fn join_session(
        &self,
        session: &SessionId,
        request: JoinRequest,
    ) -> Result<Ring, HypervisorError> {
        self.join_as(session, request, None).await
    }

    /// Why a join whose instance was not made failed. Its instance killed
    /// because the session ended, or because the agent left or was removed
    /// meanwhile, is that refusal (as when either is found once the
    /// instance is made): `InvalidTransition` or `NotAParticipant`, not a
    /// trap of the agent's. A kill of the agent itself stays its `Killed`
    /// trap, and every other failure is the agent's error as it came.
    fn join_failed(
        &self,
        entry: &SessionEntry,
        agent: &AgentId,
        standing: &Arc<Standing>,
        e: AgentError,
    ) -> HypervisorError {
        if !matches!(
            &e,
            AgentError::Trapped {
                cause: TrapCause::Killed(_),
                ..
            }
        ) {
            return e.into();
        }
        let gov = lock(&entry.gov);
        let state = gov.state();
        if !matches!(state, SessionState::Handshaking | SessionState::Active) {
            return SessionError::InvalidTransition {
                session: entry.core.id().clone(),
                operation: "join",
                state,
            }
            .into();
        }
        let ours = gov.participant(agent).is_some()
            && lock(&entry.standings)
                .get(agent)
                .is_some_and(|s| Arc::ptr_eq(s, standing));
        // A kill bars the agent before it stops anything (`kill_agent`).
        if !ours && !lock(&entry.liability).is_barred(agent) {
            return SessionError::NotAParticipant {
                session: entry.core.id().clone(),
                agent: agent.clone(),
            }
            .into();
        }
        e.into()
    }

    /// [`Hypervisor::join_session`], with the ring set by the host instead
    /// of the one the join rules compute: a spawned child's ring follows
    /// from its parent's (`min(parent + 1, 3)`), not from a score.
    async fn join_as(
        &self,
        session: &SessionId,
        request: JoinRequest,
        assigned: Option<(Ring, String)>,
    ) -> Result<Ring, HypervisorError> {
        let entry = self.entry(session)?;
        let JoinRequest {
            agent,
            sigma,
            actions,
            component,
            root_witness,
        } = request;
        // Killed here, or quarantined here when it left: no way back in.
        self.may_rejoin(&entry, &agent)?;
        // The ledger first: a denied agent takes no seat; one on probation
        // is held at ring 3 whatever its score, grant or parent.
        let assessment = self.admission(&agent).await?;
        #[cfg(test)]
        test_hooks::at(test_hooks::Point::Admitted, session);
        let probation = assessment.admission == ahv_trust::Admission::Probation;
        // Declared before the undo, so dropped after it: a removal that
        // lets the agent go meanwhile counts it as leaving until this join
        // and its undo have ended.
        let (ring, forced_strong, (standing, ticket)) = {
            let mut gov = lock(&entry.gov);
            // A spawned child whose parent was removed while it was being
            // admitted (the removal took it out of `spawned`, or left
            // before it was put there) must not join without its parent.
            // Checked under the session's lock, before `join`: a parent's
            // `leave` after it finds the child a participant, and its
            // removal's second look at its children removes it.
            // A parent being killed is barred before its kill looks for
            // its children: a child that joins before that is found.
            let orphan = || {
                let parent = lock(&entry.spawned).get(&agent).map(|s| s.parent.clone());
                parent.is_none_or(|p| {
                    gov.participant(&p).is_none() || lock(&entry.liability).is_barred(&p)
                })
            };
            if assigned.is_some() && orphan() {
                return Err(HypervisorError::Standing {
                    agent: agent.clone(),
                    message: "its parent left the session, or is being killed, before it joined"
                        .into(),
                });
            }
            // Again under the session's lock: killed or quarantined here
            // while this join was being admitted (before the leaving check:
            // a barred agent is told it may never come back, not to retry).
            self.may_rejoin(&entry, &agent)?;
            {
                let leaving = lock(&entry.leaving);
                if !leaving.is_empty() && leaving.contains_key(&agent) {
                    return Err(HypervisorError::StillLeaving {
                        session: session.clone(),
                        agent: agent.clone(),
                    });
                }
            }
            let was_strong = gov.config().consistency == Consistency::Strong;
            let mut ring = gov.join(agent.clone(), sigma, &actions, self.now())?;
            if probation {
                ring = Ring::Sandbox;
            } else if root_witness.is_some() {
                ring = Ring::Root;
            } else if let Some((given, _)) = &assigned {
                ring = *given;
            }
            gov.set_ring(&agent, ring)?;
            // Neither a vouch nor an elevation request takes it above a
            // probation or its parent's cap.
            if probation || assigned.is_some() {
                self.lower_ceiling(&entry, &agent, ring);
            }
            // In place with the seat, under the session's lock: a session
            // that ends after this finds the standing and kills it, and
            // the kill handle of an instance still being made.
            let standing = Standing::new(ring, self.inner.clock.clone());
            lock(&entry.standings).insert(agent.clone(), standing.clone());
            let ticket = if component.is_some() {
                let ticket = Arc::new(JoinTicket {
                    kill: self.inner.runtime.kill_handle(standing.clone()),
                    leaving: OnceLock::new(),
                });
                lock(&entry.joining).insert(agent.clone(), ticket.clone());
                Some(ticket)
            } else {
                // An undo of an earlier join of its may still list it.
                let mut joining = lock(&entry.joining);
                if !joining.is_empty() {
                    joining.remove(&agent);
                }
                None
            };
            (
                ring,
                !was_strong && gov.config().consistency == Consistency::Strong,
                (standing, ticket),
            )
        };
        // Until the agent is in, a failed or cancelled join (the caller's
        // future dropped mid-instantiation, e.g. a spawning parent's
        // deadline) is undone: no ghost participant keeps a seat.
        let mut undo = JoinUndo {
            hv: self,
            entry: &entry,
            agent: &agent,
            standing: standing.clone(),
            armed: true,
        };
        if let (Some(component), Some(ticket)) = (component, &ticket) {
            let actions = self
                .inner
                .granted
                .get(&agent)
                .unwrap_or(&self.inner.actions)
                .clone();
            let spec = AgentSpec::new(agent.clone(), ring, entry.core.clone())
                .in_session(entry.core.clone())
                .kill_handle(ticket.kill.clone())
                .actions(actions)
                .net(
                    self.inner.net.for_agent(&agent, session),
                    self.inner.net_in_standard.contains(&agent),
                )
                .after_trap(self.inner.after_trap);
            let live = match self.inner.runtime.spawn(&component, spec).await {
                Ok(live) => live,
                Err(e) => return Err(self.join_failed(&entry, &agent, &undo.standing, e)),
            };
            #[cfg(test)]
            test_hooks::at(test_hooks::Point::InstanceMade, session);
            let slot = Arc::new(AgentSlot {
                kill: live.kill_handle(),
                agent: tokio::sync::Mutex::new(live),
                leaving: OnceLock::new(),
            });
            // The session may have ended, or the agent left, while the
            // instance was made (and its store made rate buckets after
            // `finish` or `remove` forgot the agent's): then the join is
            // refused and undone, and the undo forgets them. Checked and
            // inserted under the session's lock, which `terminate` and
            // `remove`'s `leave` take before they drain or take the slot
            // (order: gov, standings, agents, as `saga_session` nests
            // gov and agents), so the slot is either refused here or
            // found there.
            let gov = lock(&entry.gov);
            let state = gov.state();
            if !matches!(state, SessionState::Handshaking | SessionState::Active) {
                return Err(SessionError::InvalidTransition {
                    session: session.clone(),
                    operation: "join",
                    state,
                }
                .into());
            }
            let ours = gov.participant(&agent).is_some()
                && lock(&entry.standings)
                    .get(&agent)
                    .is_some_and(|s| Arc::ptr_eq(s, &undo.standing));
            if !ours {
                return Err(SessionError::NotAParticipant {
                    session: session.clone(),
                    agent: agent.clone(),
                }
                .into());
            }
            lock(&entry.agents).insert(agent.clone(), slot);
            lock(&entry.joining).remove(&agent);
            drop(gov);
        }
        undo.armed = false;
        if forced_strong {
            entry.core.set_strict(true);
        }
        let mut op = self.op();
        self.emit(
            &mut op,
            session,
            Some(&agent),
            EventPayload::SessionJoined { ring, sigma },
        );
        self.emit(
            &mut op,
            session,
            Some(&agent),
            EventPayload::RingAssigned {
                ring,
                reason: match (&root_witness, &assigned) {
                    _ if probation => format!(
                        "probation: the ledger's risk {:.2} is at or above 0.30",
                        assessment.risk
                    ),
                    (Some(w), _) => format!("root grant witnessed by {w}"),
                    (None, Some((_, why))) => why.clone(),
                    (None, None) => format!("joined with sigma {sigma:.2}"),
                },
            },
        );
        Ok(ring)
    }

    /// `handshaking → active`; needs at least one participant. Emits `session.activated`.
    ///
    /// # Errors
    /// [`SessionError`] (state, no participants, expiry).
    pub fn activate_session(&self, session: &SessionId) -> Result<(), HypervisorError> {
        let entry = self.entry(session)?;
        let participants = {
            let mut gov = lock(&entry.gov);
            gov.activate(self.now())?;
            gov.participants().count() as u32
        };
        self.emit(
            &mut self.op(),
            session,
            None,
            EventPayload::SessionActivated { participants },
        );
        Ok(())
    }

    /// Calls the participant's `run` with `input` on its live instance. The
    /// session must be active. After a ring breach (recorded before the
    /// trap) the breach policy decides what it costs the agent (by default
    /// it is expelled); the error is returned as [`HypervisorError::Agent`].
    ///
    /// # Errors
    /// [`SessionError`] (not active, expired, not a participant);
    /// [`HypervisorError::NoInstance`]; [`HypervisorError::Agent`] with the
    /// typed trap cause.
    pub async fn run_agent(
        &self,
        session: &SessionId,
        agent: &AgentId,
        input: &str,
    ) -> Result<RunOutput, HypervisorError> {
        use tracing::Instrument as _;
        let span = tracing::info_span!("agent.run", %session, %agent);
        self.run_agent_inner(session, agent, input)
            .instrument(span)
            .await
    }

    async fn run_agent_inner(
        &self,
        session: &SessionId,
        agent: &AgentId,
        input: &str,
    ) -> Result<RunOutput, HypervisorError> {
        let entry = self.entry(session)?;
        {
            let gov = lock(&entry.gov);
            if gov.state() != SessionState::Active {
                return Err(SessionError::InvalidTransition {
                    session: session.clone(),
                    operation: "run an agent",
                    state: gov.state(),
                }
                .into());
            }
            if gov.participant(agent).is_none() {
                return Err(SessionError::NotAParticipant {
                    session: session.clone(),
                    agent: agent.clone(),
                }
                .into());
            }
        }
        let slot =
            lock(&entry.agents)
                .get(agent)
                .cloned()
                .ok_or_else(|| HypervisorError::NoInstance {
                    session: session.clone(),
                    agent: agent.clone(),
                })?;
        // Calls of one agent run one at a time; one waits for the instance
        // at most its ring's deadline, as long as a call may run. Waiting
        // without a bound, callers piled up (each holding its input) behind
        // a guest that uses its whole deadline every time.
        let ring = lock(&entry.standings)
            .get(agent)
            .map_or(Ring::Sandbox, |s| s.effective());
        let waited = self.inner.runtime.policy().limits(ring).deadline;
        let Ok(mut instance) = tokio::time::timeout(waited, slot.agent.lock()).await else {
            return Err(HypervisorError::Busy {
                session: session.clone(),
                agent: agent.clone(),
                waited,
            });
        };
        let result = instance.run(input).await;
        drop(instance);
        // Only the call that breached is judged; a later call that finds
        // the instance poisoned by it is not a second breach.
        if let Err(AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            ..
        }) = &result
        {
            self.after_breach(&entry, &slot, agent, b).await;
        }
        Ok(result?)
    }

    /// Forgets `agent`'s breach record and rate buckets in `session`, which
    /// it has left (or never finished joining), or which has ended. Kept,
    /// they would fill both tables with the dead sessions of every
    /// participant: the rate limiter's up to its cap, where one insertion
    /// sweeps all of them under its lock, and the breach detector's, where
    /// every new key past its cap scans all of them and dead sessions'
    /// open breakers (which never close untouched) outlive live agents'
    /// windows.
    fn forget_security(&self, agent: &AgentId, session: &SessionId) {
        self.inner.security.detector.remove(agent, session);
        if let Some(rate) = &self.inner.security.rate {
            rate.remove(agent, session);
        }
    }

    /// Removes a participant: its instance, locks, transaction and clock go;
    /// emits `session.left`. Returns whether it was a participant.
    fn remove(&self, op: &mut Op, entry: &SessionEntry, agent: &AgentId, reason: &str) -> bool {
        // Children go with their parent.
        for child in self.children_of(entry, agent) {
            self.remove(op, entry, &child, &format!("parent {agent} left: {reason}"));
        }
        #[cfg(test)]
        test_hooks::at(test_hooks::Point::ChildrenRemoved, entry.core.id());
        if let Some(slot) = lock(&entry.agents).get(agent) {
            // Stops a call still running (a no-op for an idle or dead
            // instance), before its standing refuses its host calls: a saga
            // step refused that way hands off only if its slot is killed.
            slot.kill.kill(reason.to_string());
        }
        kill_joining(entry, agent, reason);
        if let Some(standing) = lock(&entry.standings).remove(agent) {
            // Refuses the host calls of anything still holding it.
            standing.kill();
        }
        self.liability_left(entry, agent);
        #[cfg(test)]
        test_hooks::at(test_hooks::Point::BeforeLeave, entry.core.id());
        // The slot goes with the participation, under the session's lock:
        // a join still making this agent's instance then either finds it
        // gone and refuses, or has put its slot in, which goes here (see
        // `join_as`); and a rejoin's slot cannot come in between.
        let (was, slot, joined_since, still_joining, _leaving) = {
            let mut gov = lock(&entry.gov);
            // Counted whether or not this removal's leave is the one that
            // succeeds: a second removal of an agent that already left
            // tears down by its id all the same.
            let leaving = Leaving::start(entry, agent);
            // The agent's own record as a child goes with its leave, under
            // the same lock as a child's join (`join_as`): a child being
            // admitted either joined before (and leaves here) or finds its
            // record gone. In a session that is ending the record stays:
            // it ties the agent to a parent whose join may not have
            // completed (`finish`).
            if matches!(
                gov.state(),
                SessionState::Handshaking | SessionState::Active
            ) {
                lock(&entry.spawned).remove(agent);
            }
            let was = gov.leave(agent).is_ok();
            // A join of its that took its seat after the standing was
            // taken out above (a child found by the first look while it
            // was being admitted) put a standing in since: it goes with
            // the participation.
            let (mut joined_since, mut still_joining) = (None, None);
            if was {
                // A join of its still making an instance is refused (it
                // no longer finds the participation its own) and undone;
                // one that took its seat after the look above is stopped
                // here.
                still_joining = lock(&entry.joining).remove(agent);
                joined_since = lock(&entry.standings).remove(agent);
            }
            let slot = lock(&entry.agents).remove(agent);
            // The old instance's call or join, if one is under way, still
            // acts by the agent's id when it ends: counted until then.
            if let Some(slot) = &slot {
                let _ = slot.leaving.set(Leaving::start(entry, agent));
            }
            if let Some(join) = &still_joining {
                let _ = join.leaving.set(Leaving::start(entry, agent));
            }
            (was, slot, joined_since, still_joining, leaving)
        };
        if let Some(slot) = slot {
            // A slot a racing join put in after the kill above.
            slot.kill.kill(reason.to_string());
        }
        #[cfg(test)]
        test_hooks::at(test_hooks::Point::AfterLeave, entry.core.id());
        if let Some(join) = still_joining {
            join.kill.kill(reason);
        }
        // After the slot, as above (a saga step's hand-off); before the
        // children, so that it runs nothing while they are removed.
        if let Some(standing) = joined_since {
            standing.kill();
        }
        // A child that joined while this agent was being removed, after
        // the first look (`join_as` refuses one that joins later).
        for child in self.children_of(entry, agent) {
            self.remove(op, entry, &child, &format!("parent {agent} left: {reason}"));
        }
        // After its slot is gone: a breach judged from now on sees that
        // and forgets its own record (`after_breach`).
        self.forget_security(agent, entry.core.id());
        entry.core.agent_left(agent, reason, op.trace);
        if was {
            self.emit(
                op,
                entry.core.id(),
                Some(agent),
                EventPayload::SessionLeft {
                    reason: reason.to_string(),
                },
            );
        }
        was
    }

    /// The agent leaves the session (its private files stay on disk).
    ///
    /// # Errors
    /// [`SessionError`] (state, not a participant).
    pub fn leave_session(
        &self,
        session: &SessionId,
        agent: &AgentId,
    ) -> Result<(), HypervisorError> {
        let entry = self.entry(session)?;
        {
            let gov = lock(&entry.gov);
            if !matches!(
                gov.state(),
                SessionState::Handshaking | SessionState::Active
            ) {
                return Err(SessionError::InvalidTransition {
                    session: session.clone(),
                    operation: "leave",
                    state: gov.state(),
                }
                .into());
            }
            if gov.participant(agent).is_none() {
                return Err(SessionError::NotAParticipant {
                    session: session.clone(),
                    agent: agent.clone(),
                }
                .into());
            }
        }
        // No clean-session credit for leaving: only a session that ends
        // with the agent still in it counts (no farming by join and leave).
        lock(&entry.substitutes).remove(agent);
        self.remove(&mut self.op(), &entry, agent, "left");
        Ok(())
    }

    /// Kills a participant: a running call traps with `Killed` within an
    /// epoch tick (or is cancelled if it waits in the host), its locks are
    /// released at once, and it is removed from the session; its children
    /// go with it. Each saga step it was running is handed to its
    /// registered substitute ([`Hypervisor::register_substitute`]), which
    /// runs it again in its own sandbox, or, without one, fails so that its
    /// saga compensates. Emits `security.agent_killed` and `session.left`
    /// (and `security.saga_handoff` when the saga hands a step over).
    ///
    /// # Errors
    /// [`SessionError::NotAParticipant`].
    pub fn kill_agent(
        &self,
        session: &SessionId,
        agent: &AgentId,
        reason: &str,
    ) -> Result<KillReport, HypervisorError> {
        let entry = self.entry(session)?;
        let slot = lock(&entry.agents).get(agent).cloned();
        if slot.is_none() && lock(&entry.gov).participant(agent).is_none() {
            return Err(SessionError::NotAParticipant {
                session: session.clone(),
                agent: agent.clone(),
            }
            .into());
        }
        // Barred first: a child of its joins before this (and is found
        // below) or is refused (`join_as`).
        lock(&entry.liability).bar(agent);
        let mut report = KillReport::default();
        // Killing a parent kills its children.
        for child in self.children_of(&entry, agent) {
            if let Ok(r) =
                self.kill_agent(session, &child, &format!("parent {agent} killed: {reason}"))
            {
                report.terminated.extend(r.terminated);
                report.handed_off.extend(r.handed_off);
                report.compensated.extend(r.compensated);
            }
        }
        #[cfg(test)]
        test_hooks::at(test_hooks::Point::ChildrenKilled, session);
        self.kill_plan(&entry, agent, &mut report);
        if let Some(slot) = slot {
            slot.kill.kill(reason.to_string());
        }
        kill_joining(&entry, agent, reason);
        if let Some(standing) = lock(&entry.standings).get(agent) {
            standing.kill();
        }
        self.killed(&entry, agent);
        let mut op = self.op();
        entry.core.release_locks(agent, "killed", op.trace);
        self.emit(
            &mut op,
            session,
            Some(agent),
            EventPayload::SecurityAgentKilled {
                reason: reason.to_string(),
            },
        );
        self.remove(&mut op, &entry, agent, &format!("killed: {reason}"));
        report.terminated.push(agent.clone());
        Ok(report)
    }

    /// Terminates and archives the session: every participant's instance is
    /// stopped and dropped, its locks released; emits `session.terminated`
    /// and `session.archived`; seals its audit log. The session's files stay
    /// in the state directory; its summary stays queryable.
    ///
    /// The seal receipt ([`Termination::commitment`]) is durable when
    /// returned only under a synchronous audit policy. Under group commit
    /// (the default) terminating does not wait for the disk, so that
    /// concurrent terminations share one sync: the receipt is pending, and
    /// a crash within the group-commit delay loses it. Anything that reports
    /// the seal to a user calls [`Hypervisor::wait_durable`] first, which
    /// starts the round that writes it at once.
    ///
    /// # Errors
    /// [`SessionError::InvalidTransition`] unless handshaking or active.
    pub fn terminate_session(&self, session: &SessionId) -> Result<Termination, HypervisorError> {
        let entry = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .cloned()
            .ok_or_else(|| HypervisorError::UnknownSession {
                session: session.to_string(),
            })?;
        let expired = lock(&entry.gov).enforce_deadline(self.now());
        if expired {
            return Ok(self.finish(&entry, TerminationReason::Expired));
        }
        lock(&entry.gov).terminate()?;
        Ok(self.finish(&entry, TerminationReason::Requested))
    }

    /// Waits until the seal receipt of `termination`, if it has one, is on
    /// disk ([`Auditor::wait_durable`]) and returns the termination with the
    /// receipt durable; at once if it is already, or has none. Front ends
    /// wait [`ahv_audit::DURABLE_WAIT`].
    ///
    /// # Errors
    /// [`HypervisorError::Audit`] with [`AuditError::DurableTimeout`]
    /// (naming the session and the commitment index) when it is not on
    /// disk within `timeout`; the session stays terminated and sealed.
    pub fn wait_durable(
        &self,
        mut termination: Termination,
        timeout: Duration,
    ) -> Result<Termination, HypervisorError> {
        if let Some(receipt) = &termination.commitment
            && !receipt.is_durable()
        {
            let auditor = self.inner.audit.as_ref().ok_or(AuditError::Closed)?;
            termination.commitment = Some(auditor.wait_durable(receipt, timeout)?);
        }
        Ok(termination)
    }

    /// From `terminating`: stops everything, archives, emits the events.
    fn finish(&self, entry: &SessionEntry, reason: TerminationReason) -> Termination {
        let id = entry.core.id().clone();
        let mut op = self.op();
        let agents: Vec<(AgentId, Arc<AgentSlot>)> = lock(&entry.agents).drain().collect();
        // Every participant is let go; those whose join had not completed
        // (still making an instance, or spawned by one that was) are
        // neither counted, credited nor kept in the summary: their joins
        // find the session ended and are undone (`join_as`), unannounced.
        let (participants, unjoined) = {
            let gov = lock(&entry.gov);
            let joining = lock(&entry.joining);
            let all: Vec<AgentId> = gov.participants().map(|p| p.agent.clone()).collect();
            let mut unjoined_set: HashSet<AgentId, foldhash::fast::RandomState> =
                HashSet::default();
            if !joining.is_empty() {
                let spawned = lock(&entry.spawned);
                unjoined_set.extend(
                    all.iter()
                        .filter(|a| unjoined(a, &joining, &spawned))
                        .cloned(),
                );
            }
            (all, unjoined_set)
        };
        for (_, slot) in &agents {
            slot.kill.kill("session terminated".to_string());
        }
        // An instance still being made has no slot yet: its join's handle
        // stops it (a start function waiting in the host ends now, its
        // join then refused), and its standing refuses the host calls its
        // start code makes from now on, before its locks are released below.
        for join in lock(&entry.joining).values() {
            join.kill.kill("session terminated");
        }
        for standing in lock(&entry.standings).values() {
            standing.kill();
        }
        for agent in &participants {
            entry.core.agent_left(agent, "session terminated", op.trace);
        }
        let counted = participants.iter().filter(|a| !unjoined.contains(*a));
        self.credit_clean(entry, counted);
        self.emit(
            &mut op,
            &id,
            None,
            EventPayload::SessionTerminated { reason },
        );
        let summary = {
            let mut gov = lock(&entry.gov);
            if let Err(e) = gov.archive() {
                tracing::warn!(session = %id, error = %e, "archiving a terminated session");
            }
            let mut summary = info(&gov);
            if !unjoined.is_empty() {
                summary
                    .participants
                    .retain(|p| !unjoined.contains(&p.agent));
            }
            summary
        };
        self.emit(&mut op, &id, None, EventPayload::SessionArchived);
        let commitment = self.inner.audit.as_ref().and_then(|a| {
            if !entry.audited {
                a.include(&id);
                return None;
            }
            a.seal_traced(&id, op.trace, op.last)
                .map_err(|e| tracing::error!(session = %id, error = %e, "sealing the audit log"))
                .ok()
        });
        self.inner
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // After its slots were drained: a breach judged from now on finds
        // its slot gone and forgets its own record (`after_breach`).
        for agent in &participants {
            self.forget_security(agent, &id);
        }
        self.forget_saga_homes(&id);
        let mut archived = lock(&self.inner.archived);
        if archived.len() == ARCHIVE_KEPT {
            archived.pop_front();
        }
        archived.push_back(summary);
        Termination {
            session: id,
            reason,
            // `unjoined` is drawn from `participants`.
            participants: participants.len() - unjoined.len(),
            commitment,
        }
    }

    /// Snapshots the session's files (only while active) and records its
    /// participants with their rings and scores. Emits `vfs.snapshot`.
    ///
    /// # Errors
    /// [`SessionError`] (not active, expired); [`HypervisorError::Files`].
    pub fn snapshot(&self, session: &SessionId) -> Result<SnapshotInfo, HypervisorError> {
        let entry = self.entry(session)?;
        let (by, participants) = {
            let gov = lock(&entry.gov);
            gov.check_snapshot_allowed(self.now())?;
            (
                gov.creator().clone(),
                gov.participants().cloned().collect::<Vec<_>>(),
            )
        };
        entry
            .core
            .snapshot(&by, self.op().trace, &participants)
            .map_err(|source| HypervisorError::Files {
                session: session.clone(),
                source,
            })
    }

    /// Restores a snapshot of the session's files (only while active). The
    /// participants are not restored: the answer says how they differ from
    /// the ones the snapshot recorded (joined and left since, rings and
    /// scores changed). Emits `vfs.restore`, which carries the same.
    ///
    /// # Errors
    /// [`SessionError`]; [`HypervisorError::Files`] naming an unknown snapshot.
    pub fn restore(
        &self,
        session: &SessionId,
        snapshot: u64,
    ) -> Result<ParticipantsDiff, HypervisorError> {
        let entry = self.entry(session)?;
        let (by, participants) = {
            let gov = lock(&entry.gov);
            gov.check_snapshot_allowed(self.now())?;
            (
                gov.creator().clone(),
                gov.participants().cloned().collect::<Vec<_>>(),
            )
        };
        entry
            .core
            .restore(snapshot, &by, self.op().trace, &participants)
            .map_err(|source| HypervisorError::Files {
                session: session.clone(),
                source,
            })
    }

    /// The live sessions, then the most recently archived ones.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let entries: Vec<_> = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<SessionInfo> = entries.iter().map(|e| info(&lock(&e.gov))).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(lock(&self.inner.archived).iter().cloned());
        out
    }

    /// One session (live or recently archived).
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`].
    pub fn session(&self, session: &SessionId) -> Result<SessionInfo, HypervisorError> {
        if let Some(e) = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
        {
            return Ok(info(&lock(&e.gov)));
        }
        lock(&self.inner.archived)
            .iter()
            .rev()
            .find(|i| &i.id == session)
            .cloned()
            .ok_or_else(|| HypervisorError::UnknownSession {
                session: session.to_string(),
            })
    }

    /// A session's participants.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`].
    pub fn participants(&self, session: &SessionId) -> Result<Vec<Participant>, HypervisorError> {
        Ok(self.session(session)?.participants)
    }

    /// A participant's effective ring now (an elevation in force counts;
    /// an expired one is reported, once, as `ring.elevation_expired`).
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`].
    pub fn ring(&self, session: &SessionId, agent: &AgentId) -> Result<Ring, HypervisorError> {
        let standing = self.standing(session, agent)?;
        let check = standing.check();
        if !check.transitions.is_empty() {
            let trace = self.inner.runtime.new_trace_id();
            for t in check.transitions {
                self.report_transition(session, agent, trace, t);
            }
        }
        Ok(check.ring)
    }

    /// A live session's shared resources (files, state, locks), for host-side
    /// inspection and administration.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`].
    pub fn session_core(&self, session: &SessionId) -> Result<Arc<SessionCore>, HypervisorError> {
        Ok(self.entry(session)?.core.clone())
    }

    /// Records in `session`'s events (and so its audit log, when audited)
    /// that an operator of a front end asked for `operation`: who
    /// (`caller`, as the front end authenticated it) in which `role`. Front
    /// ends call it before the operation, so a refused request is on record
    /// too. Unknown sessions are ignored: the operation itself reports them.
    pub fn record_operator_request(
        &self,
        session: &SessionId,
        caller: &str,
        role: &str,
        operation: &str,
    ) {
        let known = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(session);
        if known {
            self.emit(
                &mut self.op(),
                session,
                None,
                EventPayload::OperatorRequest {
                    caller: caller.to_string(),
                    role: role.to_string(),
                    operation: operation.to_string(),
                },
            );
        }
    }

    /// The kill handle of a participant's instance (usable from any thread).
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`HypervisorError::NoInstance`].
    pub fn kill_handle(
        &self,
        session: &SessionId,
        agent: &AgentId,
    ) -> Result<KillHandle, HypervisorError> {
        let entry = self.entry(session)?;
        let slot = lock(&entry.agents).get(agent).cloned();
        slot.map(|s| s.kill.clone())
            .ok_or_else(|| HypervisorError::NoInstance {
                session: session.clone(),
                agent: agent.clone(),
            })
    }
}

/// Pauses for tests, at the points where a race would interleave.
#[cfg(test)]
mod test_hooks {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Where a hook runs.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(super) enum Point {
        /// In a join, once its instance is made, before it checks that it
        /// may still take its seat.
        InstanceMade,
        /// In a kill, once it has killed the children it found, before it
        /// removes the agent.
        ChildrenKilled,
        /// In a removal, once it has removed the children it found, before
        /// the agent leaves.
        ChildrenRemoved,
        /// In a removal, once the standing was taken out and killed, just
        /// before the agent leaves.
        BeforeLeave,
        /// In a removal, right after the agent left, before its children,
        /// locks and rate buckets are let go.
        AfterLeave,
        /// In a join, once the ledger admitted the agent, before it takes
        /// its seat.
        Admitted,
    }

    type Hook = (Point, String, Box<dyn FnOnce() + Send>);

    /// Every test's hooks (tests run in parallel threads under `cargo
    /// test`), each keyed by its point and its session.
    static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());
    /// Whether any hook is set: the points look at it before taking the
    /// lock, so unused hooks change no other test's interleavings.
    static ARMED: AtomicBool = AtomicBool::new(false);

    /// Runs `hook` once, the first time `point` is reached in `session`.
    pub(super) fn on(point: Point, session: &str, hook: impl FnOnce() + Send + 'static) {
        HOOKS
            .lock()
            .unwrap()
            .push((point, session.to_string(), Box::new(hook)));
        ARMED.store(true, Ordering::SeqCst);
    }

    pub(super) fn at(point: Point, session: &ahv_core::SessionId) {
        if !ARMED.load(Ordering::SeqCst) {
            return;
        }
        let hook = {
            let mut hooks = HOOKS.lock().unwrap();
            let found = hooks
                .iter()
                .position(|(p, s, _)| *p == point && s == session.as_str());
            let hook = found.map(|i| hooks.swap_remove(i));
            ARMED.store(!hooks.is_empty(), Ordering::SeqCst);
            hook
        };
        if let Some((_, _, hook)) = hook {
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahv_core::FakeClock;

    /// What a participant's gate leaves in the security tables while it
    /// runs: its rate buckets (made at its first store) and a breach record.
    /// Returns the buckets, and how many breaches the record now holds.
    fn used(
        hv: &Hypervisor,
        agent: &AgentId,
        session: &SessionId,
    ) -> (Arc<ahv_security::ParticipantBuckets>, usize) {
        let security = &hv.inner.security;
        let breaches = security
            .detector
            .record(agent, session, Ring::Standard, Ring::Privileged)
            .calls_in_window;
        let buckets = security
            .rate
            .as_ref()
            .expect("rate limits are on by default")
            .buckets(agent, session, Ring::Standard)
            .unwrap();
        (buckets, breaches)
    }

    /// A hypervisor on a temporary state directory, the liability store in
    /// memory and the audit off, as `configure` sets it further; and a
    /// current-thread runtime to drive its joins.
    fn hypervisor(
        configure: impl FnOnce(HypervisorBuilder) -> HypervisorBuilder,
    ) -> (tempfile::TempDir, Hypervisor, tokio::runtime::Runtime) {
        let state = tempfile::tempdir().unwrap();
        let builder = Hypervisor::builder()
            .state_dir(state.path())
            .database("memory")
            .without_audit();
        let hv = configure(builder).build().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (state, hv, rt)
    }

    /// A new session of `config`, made by the tests' one creator.
    fn session_of(hv: &Hypervisor, config: SessionConfig) -> SessionId {
        let creator = AgentId::new("did:test:creator").unwrap();
        hv.create_session(config, creator).unwrap()
    }

    /// (rate buckets, breach records) kept.
    fn kept(hv: &Hypervisor) -> (usize, usize) {
        let security = &hv.inner.security;
        (
            security.rate.as_ref().map_or(0, |r| r.len()),
            security.detector.len(),
        )
    }

    /// A new session with `did:test:parent` joined (without a component),
    /// its entry, the parent, and the id its first child would have.
    fn with_parent(
        hv: &Hypervisor,
        rt: &tokio::runtime::Runtime,
    ) -> (SessionId, Arc<SessionEntry>, AgentId, AgentId) {
        let parent = AgentId::new("did:test:parent").unwrap();
        let child = AgentId::new(format!("{parent}:child-0")).unwrap();
        let session = session_of(hv, SessionConfig::default());
        rt.block_on(hv.join_session(&session, JoinRequest::new(parent.clone(), 0.8)))
            .unwrap();
        let entry = hv.entry(&session).unwrap();
        (session, entry, parent, child)
    }

    /// What a join at a hook point answered, and the standing it got.
    type Joined = Arc<Mutex<Option<(Result<Ring, HypervisorError>, Option<Arc<Standing>>)>>>;

    /// Joins `child` as `parent`'s child the first time `point` is reached
    /// in `session` (recording it as spawned first, if it is not yet).
    fn join_child_at(
        point: test_hooks::Point,
        hv: &Hypervisor,
        session: &SessionId,
        parent: &AgentId,
        child: &AgentId,
    ) -> Joined {
        let joined = Joined::default();
        let (hv, out, id, parent, child) = (
            hv.clone(),
            joined.clone(),
            session.clone(),
            parent.clone(),
            child.clone(),
        );
        test_hooks::on(point, session.as_str(), move || {
            let entry = hv.entry(&id).unwrap();
            if !lock(&entry.spawned).contains_key(&child) {
                record_child(&entry, &parent, &child);
            }
            let result = join_child(&hv, &id, &parent, &child);
            let standing = lock(&entry.standings).get(&child).cloned();
            *lock(&out) = Some((result, standing));
        });
        joined
    }

    /// Records `child` as spawned by `parent` (at depth 1), as
    /// `spawn_child` does before the child joins.
    fn record_child(entry: &SessionEntry, parent: &AgentId, child: &AgentId) {
        lock(&entry.spawned).insert(
            child.clone(),
            spawn::Spawned {
                parent: parent.clone(),
                depth: 1,
            },
        );
    }

    /// Undoes `agent`'s join as a failed or cancelled join's guard does,
    /// over the standing it has now.
    fn undo_join(hv: &Hypervisor, entry: &SessionEntry, agent: &AgentId) {
        let standing = lock(&entry.standings)[agent].clone();
        drop(JoinUndo {
            hv,
            entry,
            agent,
            standing,
            armed: true,
        });
    }

    /// Lists `agent` (a participant) as still making its instance, as its
    /// join does, with a kill handle over its standing; returns the handle.
    fn list_joining(hv: &Hypervisor, entry: &SessionEntry, agent: &AgentId) -> KillHandle {
        list_joining_ticket(hv, entry, agent).kill.clone()
    }

    /// [`list_joining`], returning the join's own share of its ticket.
    fn list_joining_ticket(
        hv: &Hypervisor,
        entry: &SessionEntry,
        agent: &AgentId,
    ) -> Arc<JoinTicket> {
        let standing = lock(&entry.standings)[agent].clone();
        let ticket = Arc::new(JoinTicket {
            kill: hv.inner.runtime.kill_handle(standing),
            leaving: OnceLock::new(),
        });
        lock(&entry.joining).insert(agent.clone(), ticket.clone());
        ticket
    }

    /// `child` joins `session` as `parent`'s child (at ring 3, as a spawn
    /// assigns it), on a runtime of its own: usable inside a hook.
    fn join_child(
        hv: &Hypervisor,
        session: &SessionId,
        parent: &AgentId,
        child: &AgentId,
    ) -> Result<Ring, HypervisorError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let as_child = Some((Ring::Sandbox, format!("spawned by {parent}")));
        rt.block_on(hv.join_as(session, JoinRequest::new(child.clone(), 0.8), as_child))
    }

    /// A session's participants leave nothing in the rate limiter or the
    /// breach detector once it is terminated or reaped after expiring, as
    /// a participant that leaves does; a live session's entries stay.
    /// Before, every ended session kept its participants' entries, until
    /// each table's cap.
    #[test]
    fn an_ended_session_forgets_its_participants_rate_buckets_and_breach_records() {
        let clock = Arc::new(FakeClock::new());
        let (_state, hv, rt) = hypervisor(|b| b.clock(clock.clone()));
        let (a, b) = (
            AgentId::new("did:test:a").unwrap(),
            AgentId::new("did:test:b").unwrap(),
        );
        let ended = session_of(&hv, SessionConfig::default());
        let live = session_of(&hv, SessionConfig::default());
        let short = SessionConfig {
            max_duration: Duration::from_secs(60),
            ..SessionConfig::default()
        };
        let expiring = session_of(&hv, short);
        let join = |agent: &AgentId, session: &SessionId| {
            rt.block_on(hv.join_session(session, JoinRequest::new(agent.clone(), 0.8)))
                .unwrap();
            used(&hv, agent, session)
        };
        join(&a, &ended);
        join(&b, &ended);
        join(&b, &expiring);
        join(&a, &live);
        assert_eq!(kept(&hv), (4, 4));
        hv.leave_session(&live, &a).unwrap();
        assert_eq!(kept(&hv), (3, 3), "a participant that leaves");
        let (before, breaches) = join(&a, &live);
        assert_eq!(breaches, 1, "its record started afresh");
        hv.terminate_session(&ended).unwrap();
        assert_eq!(kept(&hv), (2, 2), "terminated: only its participants'");
        let (after, breaches) = used(&hv, &a, &live);
        assert!(
            Arc::ptr_eq(&before, &after),
            "the live session's buckets stay"
        );
        assert_eq!(breaches, 2, "the live session's record stays");
        // Past the expiring session's end (and the detector's window).
        clock.advance(Duration::from_secs(61));
        assert_eq!(hv.reap_expired(), vec![expiring.clone()]);
        assert_eq!(kept(&hv), (1, 1), "reaped: only the live session's");
        let (after, _) = used(&hv, &a, &live);
        assert!(
            Arc::ptr_eq(&before, &after),
            "the live session's buckets stay"
        );
        hv.shutdown().unwrap();
    }

    /// A join undone (its instance failed, or its future was dropped while
    /// instantiating) forgets what the instance's store made, and undoes
    /// only a participation that is still its own.
    #[test]
    fn an_undone_join_forgets_its_rate_buckets_and_breach_record() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let agents: Vec<AgentId> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| AgentId::new(format!("did:test:{n}")).unwrap())
            .collect();
        let session = session_of(&hv, SessionConfig::default());
        for agent in &agents {
            rt.block_on(hv.join_session(&session, JoinRequest::new(agent.clone(), 0.8)))
                .unwrap();
            used(&hv, agent, &session);
        }
        assert_eq!(kept(&hv), (4, 4));
        let entry = hv.entry(&session).unwrap();
        let standing = |agent: &AgentId| lock(&entry.standings)[agent].clone();
        let undo = |agent, standing, armed| {
            drop(JoinUndo {
                hv: &hv,
                entry: &entry,
                agent,
                standing,
                armed,
            })
        };
        let participant = |agent| lock(&entry.gov).participant(agent).is_some();
        // Its own participation: undone, and its entries forgotten.
        undo(&agents[0], standing(&agents[0]), true);
        assert!(!participant(&agents[0]));
        assert_eq!(kept(&hv), (3, 3), "the undone join's entries");
        // A join that completed is not undone.
        undo(&agents[1], standing(&agents[1]), false);
        assert!(participant(&agents[1]));
        assert_eq!(kept(&hv), (3, 3));
        // The agent left and joined again meanwhile: the participation is
        // another join's, and stays whole.
        undo(
            &agents[2],
            Standing::new(Ring::Standard, hv.inner.clock.clone()),
            true,
        );
        assert!(participant(&agents[2]));
        assert_eq!(kept(&hv), (3, 3), "another join's entries stay");
        // The agent left meanwhile (its standing gone): only what this
        // join's store made since is forgotten.
        lock(&entry.standings).remove(&agents[3]);
        undo(
            &agents[3],
            Standing::new(Ring::Standard, hv.inner.clock.clone()),
            true,
        );
        assert!(participant(&agents[3]), "the leave, not the undo, ends it");
        assert_eq!(kept(&hv), (2, 2));
        hv.shutdown().unwrap();
    }

    /// A breach judged after its agent left, or after its session ended,
    /// leaves no breach record behind (the policy here only restarts the
    /// instance, so nothing else would forget it).
    #[test]
    fn a_breach_judged_after_its_agent_left_or_its_session_ended_is_not_kept() {
        use ahv_security::breach::{BreachAction, BreachPolicy, BreachRule, BreachTrigger};
        // One breach does not trip the breaker: it only restarts the
        // instance, and forgets nothing.
        let expel_on_trip = BreachRule {
            action: BreachAction::Expel,
            trigger: BreachTrigger::BreakerTrip,
        };
        let policy = BreachPolicy::default()
            .with_rule(Ring::Standard, expel_on_trip)
            .unwrap();
        let (_state, hv, rt) = hypervisor(|b| b.breach_policy(policy));
        let component = hv.load(ahv_agents::PINGER).unwrap();
        let agent = AgentId::new("did:test:breacher").unwrap();
        let breach = |session: &SessionId| RingBreach {
            agent: agent.clone(),
            session: session.clone(),
            ring: Ring::Standard,
            capability: ahv_core::Capability::Admin,
            function: "grant".into(),
            trace: TraceId(1),
        };
        // Joined, its slot kept by the caller judging the breach.
        let joined = || {
            let session = session_of(&hv, SessionConfig::default());
            let request = JoinRequest::new(agent.clone(), 0.8).component(component.clone());
            assert_eq!(
                rt.block_on(hv.join_session(&session, request)).unwrap(),
                Ring::Standard
            );
            let entry = hv.entry(&session).unwrap();
            let slot = lock(&entry.agents)[&agent].clone();
            (session, entry, slot)
        };
        let (live, entry, slot) = joined();
        rt.block_on(hv.after_breach(&entry, &slot, &agent, &breach(&live)));
        assert_eq!(kept(&hv), (1, 1), "a participant's breach is recorded");
        hv.leave_session(&live, &agent).unwrap();
        rt.block_on(hv.after_breach(&entry, &slot, &agent, &breach(&live)));
        assert_eq!(kept(&hv), (0, 0), "judged after the agent left");
        // Left, its old slot still held by the caller judging the breach:
        // the agent joins again only once that is done, so the old
        // instance's breach is never held against a new participation.
        let rejoin = || {
            let request = JoinRequest::new(agent.clone(), 0.8).component(component.clone());
            rt.block_on(hv.join_session(&live, request))
        };
        let refused = Some(rejoin());
        assert!(refused_as_leaving(&refused), "{refused:?}");
        drop(slot);
        rejoin().unwrap();
        assert_eq!(kept(&hv), (1, 0), "the new instance's buckets, no record");
        let (ended, entry, slot) = joined();
        hv.terminate_session(&ended).unwrap();
        assert!(!lock(&entry.liability).is_marked(&agent));
        rt.block_on(hv.after_breach(&entry, &slot, &agent, &breach(&ended)));
        assert_eq!(kept(&hv), (1, 0), "judged after the session ended");
        assert!(
            lock(&entry.liability).is_marked(&agent),
            "still booked as the agent's fault"
        );
        hv.shutdown().unwrap();
    }

    /// A child whose parent was removed while the child was being admitted
    /// (before it joined) does not join: it would be left without a parent,
    /// outside the removal that takes children with their parent.
    #[test]
    fn a_spawned_child_whose_parent_left_before_it_joined_does_not_join() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let parent = AgentId::new("did:test:parent").unwrap();
        let session = session_of(&hv, SessionConfig::default());
        rt.block_on(hv.join_session(&session, JoinRequest::new(parent.clone(), 0.8)))
            .unwrap();
        let entry = hv.entry(&session).unwrap();
        let spawned = |child: &AgentId| record_child(&entry, &parent, child);
        let join = |child: &AgentId| join_child(&hv, &session, &parent, child);
        let participant = |agent: &AgentId| lock(&entry.gov).participant(agent).is_some();
        // Its parent still there: the child joins, at the ring given.
        let kept = AgentId::new("did:test:parent:child-0").unwrap();
        spawned(&kept);
        assert_eq!(join(&kept).unwrap(), Ring::Sandbox);
        // Recorded as spawned, then its parent removed (which takes its
        // children out of `spawned`) before it joined.
        let orphan = AgentId::new("did:test:parent:child-1").unwrap();
        spawned(&orphan);
        hv.leave_session(&session, &parent).unwrap();
        assert!(!participant(&kept), "a joined child leaves with its parent");
        let refused = join(&orphan);
        assert!(
            matches!(&refused, Err(HypervisorError::Standing { agent, .. }) if agent == &orphan),
            "{refused:?}"
        );
        assert!(!participant(&orphan));
        assert!(!lock(&entry.spawned).contains_key(&orphan));
        assert!(!lock(&entry.standings).contains_key(&orphan));
        // Recorded only after its parent had left (the removal's look at
        // its children missed it): refused too.
        let late = AgentId::new("did:test:parent:child-2").unwrap();
        spawned(&late);
        let refused = join(&late);
        assert!(
            matches!(&refused, Err(HypervisorError::Standing { agent, .. }) if agent == &late),
            "{refused:?}"
        );
        assert!(!participant(&late));
        hv.shutdown().unwrap();
    }

    /// A join whose session ends while its instance is made is refused and
    /// undone, and the end neither counts it nor credits it with a clean
    /// session (before, it stayed a participant of the ended session, and
    /// was credited).
    #[test]
    fn a_join_whose_session_ends_while_its_instance_is_made_is_refused_and_not_credited() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let component = hv.load(ahv_agents::PINGER).unwrap();
        let session = session_of(&hv, SessionConfig::default());
        let (first, late) = (
            AgentId::new("did:test:first").unwrap(),
            AgentId::new("did:test:late").unwrap(),
        );
        // A fault each: an agent at risk 0 has nothing to be credited.
        let fault = ahv_trust::EntryKind::Fault {
            severity: ahv_trust::Severity::new(0.1).unwrap(),
        };
        hv.book(&first, fault);
        hv.book(&late, fault);
        rt.block_on(hv.join_session(&session, JoinRequest::new(first.clone(), 0.8)))
            .unwrap();
        let ended = Arc::new(Mutex::new(None));
        {
            let (hv, ended, id) = (hv.clone(), ended.clone(), session.clone());
            let (entry, late) = (hv.entry(&session).unwrap(), late.clone());
            test_hooks::on(
                test_hooks::Point::InstanceMade,
                session.as_str(),
                move || {
                    let termination = hv.terminate_session(&id);
                    // Its start code's host calls are refused from now on.
                    let killed = lock(&entry.standings)[&late].is_killed();
                    *lock(&ended) = Some((termination, killed));
                },
            );
        }
        let request = JoinRequest::new(late.clone(), 0.8).component(component);
        let refused = rt.block_on(hv.join_session(&session, request));
        assert!(
            matches!(
                &refused,
                Err(HypervisorError::Session(SessionError::InvalidTransition {
                    operation: "join",
                    ..
                }))
            ),
            "{refused:?}"
        );
        let (termination, killed) = lock(&ended)
            .take()
            .expect("the hook ended the session while the instance was made");
        assert!(killed, "the standing of the instance being made");
        assert_eq!(
            termination.unwrap().participants,
            1,
            "only the agent that was in"
        );
        let credited = |agent: &AgentId| {
            rt.block_on(hv.ledger_entries(agent))
                .unwrap()
                .iter()
                .any(|e| e.kind == ahv_trust::EntryKind::CleanSession)
        };
        assert!(credited(&first));
        assert!(!credited(&late), "a join that never completed");
        assert_eq!(kept(&hv), (0, 0), "the refused instance's buckets");
        let kept_in_summary = |session: &SessionId| -> Vec<AgentId> {
            let summary = hv.session(session).unwrap();
            summary.participants.into_iter().map(|p| p.agent).collect()
        };
        assert_eq!(kept_in_summary(&session), vec![first.clone()]);
        // The other order: the join undone after the session began to end
        // (its `leave` then refused) but before the end counted it; with a
        // child its instance started, which had joined.
        let child = AgentId::new(format!("{late}:child-0")).unwrap();
        hv.book(&child, fault);
        let session = session_of(&hv, SessionConfig::default());
        for agent in [&first, &late] {
            rt.block_on(hv.join_session(&session, JoinRequest::new(agent.clone(), 0.8)))
                .unwrap();
        }
        let entry = hv.entry(&session).unwrap();
        record_child(&entry, &late, &child);
        join_child(&hv, &session, &late, &child).unwrap();
        list_joining(&hv, &entry, &late);
        lock(&entry.gov).terminate().unwrap();
        undo_join(&hv, &entry, &late);
        let termination = hv.finish(&entry, TerminationReason::Requested);
        assert_eq!(termination.participants, 1, "only the agent that was in");
        assert!(!credited(&late), "a join undone before the end counted");
        assert!(!credited(&child), "a child of a join that never completed");
        assert_eq!(kept_in_summary(&session), vec![first.clone()]);
        hv.shutdown().unwrap();
    }

    /// A spawned child does not join while its parent is being killed: the
    /// kill bars the parent before it looks for its children, so a child
    /// that joins after that would be missed by it.
    #[test]
    fn a_spawned_child_does_not_join_while_its_parent_is_being_killed() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, parent, child) = with_parent(&hv, &rt);
        record_child(&entry, &parent, &child);
        // The child's join comes in once the kill has looked for the
        // parent's children (it was not a participant yet), before the
        // parent is removed.
        let joined = join_child_at(
            test_hooks::Point::ChildrenKilled,
            &hv,
            &session,
            &parent,
            &child,
        );
        hv.kill_agent(&session, &parent, "test").unwrap();
        let (refused, _) = lock(&joined)
            .take()
            .expect("the kill reached the point where the child joins");
        assert!(
            matches!(&refused, Err(HypervisorError::Standing { agent, .. }) if agent == &child),
            "{refused:?}"
        );
        assert!(lock(&entry.gov).participant(&child).is_none());
        drop(rt);
        hv.shutdown().unwrap();
    }

    /// A child that joins after its parent's removal has looked at the
    /// children, and before the parent leaves, is found by the removal's
    /// second look: it leaves with its parent.
    #[test]
    fn a_child_that_joins_while_its_parent_is_removed_leaves_with_it() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, parent, child) = with_parent(&hv, &rt);
        // Recorded and joined only then, as a spawn that was under way
        // would be.
        let joined = join_child_at(
            test_hooks::Point::ChildrenRemoved,
            &hv,
            &session,
            &parent,
            &child,
        );
        hv.leave_session(&session, &parent).unwrap();
        let (joined, _) = lock(&joined)
            .take()
            .expect("the removal reached the point where the child joins");
        assert_eq!(joined.unwrap(), Ring::Sandbox, "its parent was still in");
        assert!(lock(&entry.gov).participant(&child).is_none());
        assert!(!lock(&entry.spawned).contains_key(&child));
        drop(rt);
        hv.shutdown().unwrap();
    }

    /// A child being admitted when its parent's removal found it, and that
    /// takes its seat before the removal's leave of it, leaves with no
    /// live standing: its host calls are refused.
    #[test]
    fn a_child_that_takes_its_seat_during_its_removal_keeps_no_standing() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, parent, child) = with_parent(&hv, &rt);
        // Recorded, still being admitted.
        record_child(&entry, &parent, &child);
        // The first removal to get there is the child's, inside its
        // parent's.
        let joined = join_child_at(
            test_hooks::Point::BeforeLeave,
            &hv,
            &session,
            &parent,
            &child,
        );
        hv.leave_session(&session, &parent).unwrap();
        let (joined, standing) = lock(&joined)
            .take()
            .expect("the child took its seat during its removal");
        joined.unwrap();
        let standing = standing.expect("a seat comes with a standing");
        assert!(standing.is_killed(), "its standing refuses its host calls");
        assert!(!lock(&entry.standings).contains_key(&child));
        assert!(lock(&entry.gov).participant(&child).is_none());
        drop(rt);
        hv.shutdown().unwrap();
    }

    /// Joins `agent` (no component) the first time `point` is reached in
    /// `session`, on a runtime of its own; returns where its answer goes.
    fn rejoin_at(
        point: test_hooks::Point,
        hv: &Hypervisor,
        session: &SessionId,
        agent: &AgentId,
    ) -> Arc<Mutex<Option<Result<Ring, HypervisorError>>>> {
        let answer: Arc<Mutex<Option<Result<Ring, HypervisorError>>>> = Arc::default();
        let (hv, out, id, agent) = (hv.clone(), answer.clone(), session.clone(), agent.clone());
        test_hooks::on(point, session.as_str(), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let joined = rt.block_on(hv.join_session(&id, JoinRequest::new(agent, 0.8)));
            *lock(&out) = Some(joined);
        });
        answer
    }

    /// Whether `answer` is the refusal of a join by an agent still leaving.
    fn refused_as_leaving(answer: &Option<Result<Ring, HypervisorError>>) -> bool {
        matches!(answer, Some(Err(HypervisorError::StillLeaving { .. })))
    }

    /// An agent that joins again while its leaving is under way (after its
    /// leave, before its locks, state, rate buckets and children are let
    /// go by its id) is refused: that teardown would reach the new
    /// participation. Once it has left, it may join again.
    #[test]
    fn a_rejoin_while_the_agent_is_still_leaving_is_refused_until_it_has_left() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, agent, _) = with_parent(&hv, &rt);
        let answer = rejoin_at(test_hooks::Point::AfterLeave, &hv, &session, &agent);
        hv.leave_session(&session, &agent).unwrap();
        let answer = lock(&answer).take();
        assert!(answer.is_some(), "the hook ran");
        assert!(refused_as_leaving(&answer), "{answer:?}");
        assert!(lock(&entry.leaving).is_empty(), "its leaving is done");
        rt.block_on(hv.join_session(&session, JoinRequest::new(agent.clone(), 0.8)))
            .unwrap();
        hv.shutdown().unwrap();
    }

    /// A join admitted before its agent was killed in the session takes no
    /// seat after the kill: the kill's bar is checked again under the
    /// session's lock.
    #[test]
    fn a_join_admitted_before_its_agent_was_killed_takes_no_seat() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, agent, _) = with_parent(&hv, &rt);
        {
            let (hv, id, agent) = (hv.clone(), session.clone(), agent.clone());
            test_hooks::on(test_hooks::Point::Admitted, session.as_str(), move || {
                hv.kill_agent(&id, &agent, "operator").unwrap();
            });
        }
        // A second join of the participant, killed while it is admitted.
        let join = rt.block_on(hv.join_session(&session, JoinRequest::new(agent.clone(), 0.8)));
        assert!(
            matches!(&join, Err(HypervisorError::Liability(m)) if m.contains("was killed")),
            "{join:?}"
        );
        assert!(lock(&entry.gov).participant(&agent).is_none());
        hv.shutdown().unwrap();
    }

    /// A second removal of an agent that already left (an expulsion or a
    /// kill racing its leave) tears down by its id too: the agent may not
    /// join again while it runs.
    #[test]
    fn a_rejoin_during_a_second_removal_is_refused() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, agent, _) = with_parent(&hv, &rt);
        hv.leave_session(&session, &agent).unwrap();
        let answer = rejoin_at(test_hooks::Point::AfterLeave, &hv, &session, &agent);
        assert!(
            !hv.remove(&mut hv.op(), &entry, &agent, "again"),
            "it had left"
        );
        let answer = lock(&answer).take();
        assert!(refused_as_leaving(&answer), "{answer:?}");
        assert!(lock(&entry.leaving).is_empty());
        hv.shutdown().unwrap();
    }

    /// A join still making its instance when its agent leaves keeps the
    /// agent from joining again until it has ended: its failing instance
    /// still releases locks by the agent's id.
    #[test]
    fn an_agent_whose_earlier_join_has_not_ended_may_not_join_again_yet() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, agent, _) = with_parent(&hv, &rt);
        let ticket = list_joining_ticket(&hv, &entry, &agent);
        hv.leave_session(&session, &agent).unwrap();
        assert!(ticket.kill.is_killed());
        let join = || rt.block_on(hv.join_session(&session, JoinRequest::new(agent.clone(), 0.8)));
        let refused = Some(join());
        assert!(refused_as_leaving(&refused), "{refused:?}");
        drop(ticket);
        join().unwrap();
        hv.shutdown().unwrap();
    }

    /// A call still running in the instance when its agent leaves keeps
    /// the agent from joining again until the call has ended (it releases
    /// locks and ends its transaction by the agent's id as it ends).
    #[test]
    fn an_agent_whose_call_has_not_ended_may_not_join_again_yet() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let session = session_of(&hv, SessionConfig::default());
        let agent = AgentId::new("did:test:sleeper").unwrap();
        let component = hv.load(ahv_agents::SLEEPER).unwrap();
        let join = || {
            rt.block_on(hv.join_session(
                &session,
                JoinRequest::new(agent.clone(), 0.8).component(component.clone()),
            ))
        };
        join().unwrap();
        hv.activate_session(&session).unwrap();
        // The call runs on a runtime of its own, driven only while this
        // test blocks on it: it cannot end behind the test's back.
        let calls = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let call = {
            let (hv, session, agent) = (hv.clone(), session.clone(), agent.clone());
            calls.spawn(async move { hv.run_agent(&session, &agent, "60000").await })
        };
        calls.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        assert!(!call.is_finished(), "the call sleeps for a minute");
        hv.leave_session(&session, &agent).unwrap();
        let refused = Some(join());
        assert!(refused_as_leaving(&refused), "{refused:?}");
        let ended = calls
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), call).await })
            .expect("the left agent's call ended within 10 s")
            .unwrap();
        assert!(ended.is_err(), "its instance was killed: {ended:?}");
        join().unwrap();
        drop(calls);
        hv.shutdown().unwrap();
    }

    /// The same for an undone join: while it takes its children out, the
    /// agent may not join again.
    #[test]
    fn a_rejoin_while_an_undone_join_removes_its_children_is_refused() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, parent, child) = with_parent(&hv, &rt);
        record_child(&entry, &parent, &child);
        join_child(&hv, &session, &parent, &child).unwrap();
        // Reached in the child's removal, inside the parent's undo.
        let answer = rejoin_at(test_hooks::Point::AfterLeave, &hv, &session, &parent);
        undo_join(&hv, &entry, &parent);
        let answer = lock(&answer).take();
        assert!(refused_as_leaving(&answer), "{answer:?}");
        assert!(lock(&entry.gov).participant(&parent).is_none());
        assert!(lock(&entry.leaving).is_empty(), "its leaving is done");
        hv.shutdown().unwrap();
    }

    /// A child whose join takes its seat during its removal, and is still
    /// making its instance, has that instance stopped by the removal: the
    /// removal's first look found no instance to kill.
    #[test]
    fn a_child_still_making_its_instance_when_its_removal_takes_its_seat_is_stopped() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (session, entry, parent, child) = with_parent(&hv, &rt);
        record_child(&entry, &parent, &child);
        let made: Arc<Mutex<Option<KillHandle>>> = Arc::default();
        {
            let (hv, made, id, parent, child) = (
                hv.clone(),
                made.clone(),
                session.clone(),
                parent.clone(),
                child.clone(),
            );
            test_hooks::on(
                test_hooks::Point::BeforeLeave,
                session.as_str(),
                move || {
                    let entry = hv.entry(&id).unwrap();
                    join_child(&hv, &id, &parent, &child).unwrap();
                    *lock(&made) = Some(list_joining(&hv, &entry, &child));
                },
            );
        }
        hv.leave_session(&session, &parent).unwrap();
        let kill = lock(&made)
            .take()
            .expect("the child took its seat during its removal");
        assert!(kill.is_killed(), "the instance being made is stopped");
        assert!(!lock(&entry.joining).contains_key(&child));
        drop(rt);
        hv.shutdown().unwrap();
    }

    /// A session that ends while an undone join is removing its children
    /// neither counts nor credits the child being removed: its record as
    /// the joiner's child stays while the session ends.
    #[test]
    fn a_child_of_an_undone_join_is_not_credited_by_an_end_during_its_removal() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let (first, parent) = (
            AgentId::new("did:test:first").unwrap(),
            AgentId::new("did:test:parent").unwrap(),
        );
        let child = AgentId::new(format!("{parent}:child-0")).unwrap();
        let fault = ahv_trust::EntryKind::Fault {
            severity: ahv_trust::Severity::new(0.1).unwrap(),
        };
        hv.book(&child, fault);
        let session = session_of(&hv, SessionConfig::default());
        for agent in [&first, &parent] {
            rt.block_on(hv.join_session(&session, JoinRequest::new(agent.clone(), 0.8)))
                .unwrap();
        }
        let entry = hv.entry(&session).unwrap();
        record_child(&entry, &parent, &child);
        join_child(&hv, &session, &parent, &child).unwrap();
        // The parent's join had not completed.
        list_joining(&hv, &entry, &parent);
        let ended = Arc::new(Mutex::new(None));
        {
            let (hv, ended, id) = (hv.clone(), ended.clone(), session.clone());
            test_hooks::on(
                test_hooks::Point::ChildrenRemoved,
                session.as_str(),
                move || *lock(&ended) = Some(hv.terminate_session(&id)),
            );
        }
        undo_join(&hv, &entry, &parent);
        let termination = lock(&ended)
            .take()
            .expect("the session ended while the child was being removed")
            .unwrap();
        assert_eq!(termination.participants, 1, "only the agent that was in");
        let credited = rt
            .block_on(hv.ledger_entries(&child))
            .unwrap()
            .iter()
            .any(|e| e.kind == ahv_trust::EntryKind::CleanSession);
        assert!(!credited, "a child of a join that never completed");
        // A removal of the child in a session that is ending (between its
        // `terminate` and its `finish`) keeps the child's record, so the
        // end still finds whose child it is.
        let session = session_of(&hv, SessionConfig::default());
        for agent in [&first, &parent] {
            rt.block_on(hv.join_session(&session, JoinRequest::new(agent.clone(), 0.8)))
                .unwrap();
        }
        let entry = hv.entry(&session).unwrap();
        record_child(&entry, &parent, &child);
        join_child(&hv, &session, &parent, &child).unwrap();
        list_joining(&hv, &entry, &parent);
        lock(&entry.gov).terminate().unwrap();
        hv.remove(&mut hv.op(), &entry, &child, "test");
        let termination = hv.finish(&entry, TerminationReason::Requested);
        assert_eq!(termination.participants, 1, "only the agent that was in");
        hv.shutdown().unwrap();
    }

    /// A spawn whose child cannot take a seat (here the session is full)
    /// leaves no record of the child: it does not count against its
    /// parent's children.
    #[test]
    fn a_spawn_whose_child_does_not_join_leaves_no_record() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let component = hv.load(ahv_agents::PINGER).unwrap();
        hv.offer_component("pinger", component).unwrap();
        let one_seat = SessionConfig {
            max_participants: 1,
            ..SessionConfig::default()
        };
        let session = session_of(&hv, one_seat);
        let parent = AgentId::new("did:test:parent").unwrap();
        rt.block_on(hv.join_session(&session, JoinRequest::new(parent.clone(), 0.8)))
            .unwrap();
        let spawned = rt.block_on(hv.spawn_child(
            session.clone(),
            parent.clone(),
            Ring::Privileged,
            "pinger".into(),
            TraceId(0),
        ));
        assert!(
            matches!(&spawned, Err(ahv_runtime::Refusal::Denied(m)) if m.contains("full")),
            "{spawned:?}"
        );
        let entry = hv.entry(&session).unwrap();
        assert!(lock(&entry.spawned).is_empty());
        assert!(hv.children_of(&entry, &parent).is_empty());
        hv.shutdown().unwrap();
    }

    /// An undone join takes along the children its instance started while
    /// it was being made (a start function can call `spawn`): joined or
    /// still being admitted, none stays behind without its parent.
    #[test]
    fn an_undone_join_takes_its_childrens_seats_with_it() {
        let (_state, hv, rt) = hypervisor(|b| b);
        let parent = AgentId::new("did:test:parent").unwrap();
        let session = session_of(&hv, SessionConfig::default());
        rt.block_on(hv.join_session(&session, JoinRequest::new(parent.clone(), 0.8)))
            .unwrap();
        let entry = hv.entry(&session).unwrap();
        let [joined, admitted] = ["child-0", "child-1"].map(|n| {
            let child = AgentId::new(format!("{parent}:{n}")).unwrap();
            record_child(&entry, &parent, &child);
            child
        });
        join_child(&hv, &session, &parent, &joined).unwrap();
        undo_join(&hv, &entry, &parent);
        for agent in [&parent, &joined] {
            assert!(lock(&entry.gov).participant(agent).is_none(), "{agent}");
            assert!(!lock(&entry.standings).contains_key(agent), "{agent}");
        }
        for child in [&joined, &admitted] {
            assert!(!lock(&entry.spawned).contains_key(child), "{child}");
        }
        hv.shutdown().unwrap();
    }

    /// A join whose instance fails after its store was made (here the pool
    /// is full) leaves no rate buckets behind.
    #[test]
    fn a_join_whose_instance_fails_leaves_no_rate_buckets() {
        let (_state, hv, rt) = hypervisor(|b| b.max_instances(1));
        let component = hv.load(ahv_agents::PINGER).unwrap();
        let session = session_of(&hv, SessionConfig::default());
        let join = |name: &str| {
            let request =
                JoinRequest::new(AgentId::new(name).unwrap(), 0.8).component(component.clone());
            rt.block_on(hv.join_session(&session, request))
        };
        join("did:test:first").unwrap();
        assert_eq!(kept(&hv), (1, 0), "the live instance's buckets");
        let refused = join("did:test:second");
        assert!(
            matches!(
                &refused,
                Err(HypervisorError::Agent(ahv_runtime::AgentError::AtCapacity {
                    agent,
                    message,
                    logs,
                })) if logs.is_empty() && agent.as_str() == "did:test:second" && message.contains("concurrent limit")
            ),
            "the pool's one slot is taken: {refused:?}"
        );
        assert_eq!(kept(&hv), (1, 0), "the failed join's buckets are forgotten");
        hv.shutdown().unwrap();
    }
}
