//! A live agent: one instance, reused across calls, inside its ring.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use ahv_core::standing::Standing;
use ahv_core::{AgentId, Capability, Clock, Ring, SessionId, SystemClock, TraceId};
use ahv_governance::actions::ActionRegistry;
use ahv_governance::files::FileSpace;
use ahv_governance::journal::{Change, ChangeJournal};
use ahv_governance::session_core::SessionCore;
use ahv_security::net::NetAccess;
use thiserror::Error;
use wasmtime::component::TypedFunc;
use wasmtime::{Store, UpdateDeadline};

use crate::bindings::saga::Guest as SagaHooks;
pub use crate::bindings::saga::StepCall;
use crate::component::{AgentComponent, LoadError};
use crate::gate::GateInit;
use crate::runtime::Runtime;
use crate::state::{AgentState, KillHandle, LogLine, StateInit};
use crate::trap::{DeadlineExceeded, TrapCause};
use crate::turns::Turns;

/// Largest input accepted by [`Agent::run`] (and by a saga step: its
/// input, output and step ids together), in bytes.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// What happens to an agent after a call traps. Whatever the policy, an agent
/// that breached its ring or was killed is never re-instantiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterTrap {
    /// Every later call fails with [`AgentError::Poisoned`] (the default).
    #[default]
    Fail,
    /// The next call gets a fresh instance (after fuel, memory, deadline or
    /// stack exhaustion, or another guest trap).
    Recreate,
}

/// Who an agent is and where it runs.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The agent's id.
    pub agent: AgentId,
    /// The session it belongs to.
    pub session: SessionId,
    /// Its standing: base ring, elevation, quarantine. Shared with whoever
    /// governs the agent; every host call is judged from it *now*.
    pub standing: Arc<Standing>,
    /// Its files: a standalone [`ahv_governance::vfs::Vfs`], or its session's
    /// file space.
    pub files: Arc<dyn FileSpace>,
    /// The shared session it participates in (state, locks), if any. Outside a
    /// session the `state-*` and `locks` capabilities refuse with `denied`.
    pub shared: Option<Arc<SessionCore>>,
    /// The actions and effects it may invoke (if its ring allows). Empty by default.
    pub actions: Arc<ActionRegistry>,
    /// What happens after a trap.
    pub after_trap: AfterTrap,
    /// Its outbound HTTP allow-list and limits (the `net` capability, if
    /// its ring has it). Empty by default: every request is refused.
    pub net: Arc<NetAccess>,
    /// Whether `net` is granted in ring 2 (standard) too, not only in
    /// rings 1 and 0 (a per-agent policy grant).
    pub net_in_standard: bool,
    /// The kill handle the agent is made with ([`AgentSpec::kill_handle`]),
    /// so that whoever holds it can stop the agent while it is still being
    /// instantiated; `None`: [`Runtime::spawn`] makes one. A clone of a spec
    /// that holds one shares it: killing it kills every agent made from
    /// either. Boxed: a spec is moved into every spawn's future and kept
    /// in its agent, and a standalone spawn gives none.
    pub kill: Option<Box<KillHandle>>,
}

/// What every [`AgentSpec::new`] starts from, made once per process:
/// immutable values behind `Arc`s, so a spawn clones them instead of
/// allocating (and reading the clock for) its own.
struct SpecDefaults {
    session: SessionId,
    clock: Arc<dyn Clock>,
    actions: Arc<ActionRegistry>,
    net: Arc<NetAccess>,
}

impl SpecDefaults {
    fn get() -> &'static SpecDefaults {
        static DEFAULTS: std::sync::OnceLock<SpecDefaults> = std::sync::OnceLock::new();
        DEFAULTS.get_or_init(|| {
            let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
            SpecDefaults {
                // A constant that passes validation.
                session: SessionId::new("standalone").unwrap_or_else(|_| unreachable!()),
                actions: Arc::new(ActionRegistry::new().with_clock(clock.clone())),
                clock,
                net: Arc::new(NetAccess::default()),
            }
        })
    }
}

impl AgentSpec {
    /// An agent in `ring` (a standing of its own, on the system clock) over
    /// `files` (for example an `Arc<ahv_governance::vfs::Vfs>`), in session
    /// `standalone` (no shared state), with no actions, failing for good
    /// after a trap.
    pub fn new(agent: AgentId, ring: Ring, files: Arc<dyn FileSpace>) -> AgentSpec {
        let shared = SpecDefaults::get();
        AgentSpec {
            agent,
            session: shared.session.clone(),
            standing: Standing::new(ring, shared.clock.clone()),
            files,
            shared: None,
            actions: shared.actions.clone(),
            after_trap: AfterTrap::Fail,
            net: shared.net.clone(),
            net_in_standard: false,
            kill: None,
        }
    }

    /// Sets the agent's outbound HTTP allow-list and limits
    /// ([`ahv_security::net::NetPolicy::for_agent`]), and whether `net` is
    /// granted in ring 2 as well as rings 1 and 0.
    pub fn net(mut self, access: NetAccess, in_standard: bool) -> Self {
        self.net = Arc::new(access);
        self.net_in_standard = in_standard;
        self
    }

    /// Sets the session id (without shared state; see [`AgentSpec::in_session`]).
    pub fn session(mut self, session: SessionId) -> Self {
        self.session = session;
        self
    }

    /// Makes the agent a participant of `core`'s session: its files are the
    /// session's file space (shared and private areas) and it gets the
    /// session's state and locks.
    pub fn in_session(mut self, core: Arc<SessionCore>) -> Self {
        self.session = core.id().clone();
        self.files = core.clone();
        self.shared = Some(core);
        self
    }

    /// Grants these actions and effects (subject to the ring).
    pub fn actions(mut self, actions: Arc<ActionRegistry>) -> Self {
        self.actions = actions;
        self
    }

    /// Sets the after-trap policy.
    pub fn after_trap(mut self, policy: AfterTrap) -> Self {
        self.after_trap = policy;
        self
    }

    /// Uses this standing (shared with the host that governs the agent)
    /// instead of one of its own; its base ring replaces the one given to
    /// [`AgentSpec::new`].
    pub fn standing(mut self, standing: Arc<Standing>) -> Self {
        self.standing = standing;
        self
    }

    /// Makes the agent with `kill` ([`Runtime::kill_handle`]), and its
    /// standing with it: the holder can stop the agent from the start, while
    /// its instance is still being made (a start function waiting in the
    /// host ends at once), not only once [`Runtime::spawn`] returned. A
    /// standing set after this must be the handle's, or the spawn is
    /// refused ([`AgentError::KillHandleMismatch`]).
    pub fn kill_handle(mut self, kill: KillHandle) -> Self {
        self.standing = kill.standing().clone();
        self.kill = Some(Box::new(kill));
        self
    }
}

/// The outcome of a call that returned normally.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// What `run` returned: the agent's answer, or its own failure message.
    pub result: Result<String, String>,
    /// The log lines of this call (the `log` capability, stdout, stderr).
    pub logs: Vec<LogLine>,
    /// Log lines dropped because the per-call log budget was used up.
    pub dropped_log_lines: usize,
    /// Fuel the call used.
    pub fuel_used: u64,
    /// The call's trace id.
    pub trace: TraceId,
    /// Wall-clock time of the call.
    pub elapsed: Duration,
    /// The governed changes the call made, oldest first, with their undo
    /// data (for `ahv_governance::journal::undo_changes`). Only this call's:
    /// nothing accumulates across calls.
    pub changes: Vec<Change>,
}

/// Why a call into an agent failed.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The call trapped; the instance was dropped.
    #[error("agent {agent} trapped: {cause}")]
    Trapped {
        /// The agent.
        agent: AgentId,
        /// The typed cause.
        cause: TrapCause,
        /// What it logged before the trap.
        logs: Vec<LogLine>,
        /// The governed changes it made before the trap (they stay in
        /// effect; a saga undoes them like a committed step's). Boxed to
        /// keep the error small.
        changes: Box<ChangeJournal>,
    },
    /// An earlier trap (or a kill) left the agent unusable.
    #[error("agent {agent} is unusable after an earlier trap ({cause})")]
    Poisoned {
        /// The agent.
        agent: AgentId,
        /// The earlier cause.
        cause: TrapCause,
    },
    /// The input is too large.
    #[error("input of {len} bytes is larger than the {max}-byte limit")]
    InputTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The component cannot run in this ring (strict admission) or cannot be linked.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A saga step was asked of an agent whose component does not export
    /// `saga-participant`.
    #[error("agent {agent} cannot run saga steps: its component does not export saga-participant")]
    NotASagaParticipant {
        /// The agent.
        agent: AgentId,
    },
    /// No instance could be made for the agent now: the runtime's pool
    /// holds as many live instances (or memories, tables, stacks) as it
    /// allows. Transient: nothing is poisoned, and a later call or join
    /// finds room once an instance ends.
    #[error(
        "no room for agent {agent}'s instance ({message}): the runtime is at capacity; retry once an instance ends"
    )]
    AtCapacity {
        /// The agent.
        agent: AgentId,
        /// The pool's words: which limit, at how many.
        message: String,
        /// What its start functions logged before the pool refused a
        /// later module's instance (usually nothing).
        logs: Vec<LogLine>,
    },
    /// The spec's kill handle ([`AgentSpec::kill_handle`]) was made over
    /// another standing than the spec's (killing it would not refuse the
    /// agent's host calls), or by another runtime (it would interrupt
    /// that runtime's engine). A host bug; nothing was made.
    #[error(
        "agent {agent}'s spec names a kill handle made over another standing than its own, or by another runtime"
    )]
    KillHandleMismatch {
        /// The agent.
        agent: AgentId,
    },
    /// No rate budget could be had for the agent (the rate limiter is full).
    #[error("no rate budget for agent {agent}: {message}")]
    RateBudget {
        /// The agent.
        agent: AgentId,
        /// Why.
        message: String,
    },
}

impl AgentError {
    /// The trap cause, for `Trapped` and `Poisoned`.
    pub fn cause(&self) -> Option<&TrapCause> {
        match self {
            AgentError::Trapped { cause, .. } | AgentError::Poisoned { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

/// The `run` export. Its answer is copied while it is lifted, before
/// Wasmtime runs the guest's post-return (which frees it, so a view into guest
/// memory read afterwards could see the allocator's bookkeeping); the copy is
/// bounded by the per-call host budget, and the ring's answer limit is checked
/// on the copy.
type RunFunc = TypedFunc<(String,), (Result<String, String>,)>;

struct Live {
    store: Store<AgentState>,
    run: RunFunc,
    /// The saga hooks, for a saga participant.
    saga: Option<SagaHooks>,
}

/// Which export a call enters.
#[derive(Clone, Copy)]
enum Entry<'a> {
    Run {
        input: &'a str,
    },
    Execute {
        step: &'a StepCall,
        input: &'a str,
    },
    Compensate {
        step: &'a StepCall,
        input: &'a str,
        output: &'a str,
    },
}

impl Entry<'_> {
    /// The bytes the host hands to the guest.
    fn len(&self) -> usize {
        let step_len = |s: &StepCall| s.saga_id.len() + s.step_id.len() + s.action.len();
        match self {
            Entry::Run { input } => input.len(),
            Entry::Execute { step, input } => step_len(step).saturating_add(input.len()),
            Entry::Compensate {
                step,
                input,
                output,
            } => step_len(step)
                .saturating_add(input.len())
                .saturating_add(output.len()),
        }
    }
}

/// Room in the per-call host budget beside a file's contents (its path and the
/// call's other arguments), so that a write one byte over the file quota is
/// lifted and refused with `quota` rather than trapped.
const HOSTCALL_SLACK: u64 = 64 << 10;

/// A live agent. Its instance is reused across calls; fuel and deadline are
/// reset for each call.
pub struct Agent {
    runtime: Runtime,
    component: AgentComponent,
    spec: AgentSpec,
    kill: KillHandle,
    live: Option<Live>,
    poisoned: Option<TrapCause>,
    /// The change journal of the call in progress, with the saga step it
    /// runs (if it does); still set after the call's future was dropped
    /// before it finished (an abandoned call).
    in_flight: Option<(Option<StepKey>, crate::state::Journal)>,
    /// Abandoned step calls' changes that a later call found uncollected,
    /// oldest first, at most [`MAX_ABANDONED`].
    abandoned: std::collections::VecDeque<(StepKey, Vec<Change>)>,
}

/// Which attempt of which saga step a call runs.
type StepKey = (String, String, u32);

fn step_key(step: &StepCall) -> StepKey {
    (step.saga_id.clone(), step.step_id.clone(), step.attempt)
}

/// How many abandoned step calls' changes an agent keeps for collection.
const MAX_ABANDONED: usize = 16;

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent", &self.spec.agent)
            .field("standing", &self.spec.standing)
            .field("live", &self.live.is_some())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Agent {
    pub(crate) async fn spawn(
        runtime: Runtime,
        component: AgentComponent,
        mut spec: AgentSpec,
    ) -> Result<Agent, AgentError> {
        runtime.check_strict(&component, spec.standing.base())?;
        let kill = match spec.kill.take() {
            Some(kill)
                if Arc::ptr_eq(kill.standing(), &spec.standing)
                    && wasmtime::Engine::same(kill.engine(), runtime.engine()) =>
            {
                *kill
            }
            Some(_) => {
                return Err(AgentError::KillHandleMismatch {
                    agent: spec.agent.clone(),
                });
            }
            None => runtime.kill_handle(spec.standing.clone()),
        };
        let mut agent = Agent {
            runtime,
            component,
            spec,
            kill,
            live: None,
            poisoned: None,
            in_flight: None,
            abandoned: std::collections::VecDeque::new(),
        };
        agent.live = Some(agent.instantiate().await?);
        Ok(agent)
    }

    /// The agent's id.
    pub fn id(&self) -> &AgentId {
        &self.spec.agent
    }

    /// The agent's ring.
    pub fn ring(&self) -> Ring {
        self.spec.standing.effective()
    }

    /// The agent's standing (shared with whoever governs it).
    pub fn standing(&self) -> &Arc<Standing> {
        &self.spec.standing
    }

    /// Lets a poisoned agent be instantiated again at its next call (for a
    /// host whose breach policy re-admits it, at the ring its standing now
    /// names). A killed agent stays dead. Returns whether it was poisoned.
    pub fn reinstate(&mut self) -> bool {
        if self.kill.is_killed() {
            return false;
        }
        self.live = None;
        self.poisoned.take().is_some()
    }

    /// The changes made by the `execute` call of `step` (its saga, step and
    /// attempt) if that call's future was dropped before it finished (its
    /// caller stopped waiting: a cancelled saga branch), so that the caller
    /// can undo them; empty if there is no such call, or it finished (its
    /// changes were then handed back with its outcome). The instance such a
    /// call ran in is discarded: the next call starts a fresh one. The
    /// changes of the last 16 (`MAX_ABANDONED`) abandoned step calls are kept
    /// until taken, whatever other calls run in between.
    pub fn take_abandoned_changes(&mut self, step: &StepCall) -> Vec<Change> {
        let key = step_key(step);
        if matches!(&self.in_flight, Some((Some(k), _)) if *k == key) {
            return self
                .in_flight
                .take()
                .map(|(_, j)| j.take())
                .unwrap_or_default();
        }
        match self.abandoned.iter().position(|(k, _)| *k == key) {
            Some(i) => self.abandoned.remove(i).map(|(_, c)| c).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Keeps the changes of an abandoned call for [`Agent::take_abandoned_changes`].
    fn keep_abandoned(&mut self) {
        let Some((key, journal)) = self.in_flight.take() else {
            return;
        };
        let changes = journal.take();
        if changes.is_empty() {
            return;
        }
        match key {
            Some(key) => {
                if self.abandoned.len() == MAX_ABANDONED
                    && let Some((k, lost)) = self.abandoned.pop_front()
                {
                    tracing::warn!(agent = %self.spec.agent, saga = %k.0, step = %k.1, changes = lost.len(),
                        "the changes of an abandoned saga step were never collected; they stand");
                }
                self.abandoned.push_back((key, changes));
            }
            None => tracing::warn!(agent = %self.spec.agent, changes = changes.len(),
                "a call was abandoned mid-way; the changes it made stand"),
        }
    }

    /// A handle that kills this agent from any thread or task.
    pub fn kill_handle(&self) -> KillHandle {
        self.kill.clone()
    }

    /// The cause that made the agent unusable, if any.
    pub fn poisoned(&self) -> Option<&TrapCause> {
        self.poisoned.as_ref()
    }

    // `AgentError::Trapped` carries the trapped call's logs and changes (the
    // changes boxed); this private constructor only returns `RateBudget`.
    #[allow(clippy::result_large_err)]
    fn new_store(&self, now: Instant) -> Result<Store<AgentState>, AgentError> {
        let ring = self.spec.standing.effective();
        let limits = self.runtime.policy().limits(ring);
        let inner = &self.runtime.inner;
        let rate = match &inner.rate {
            Some(source) => Some(
                source
                    .budget(&self.spec.agent, &self.spec.session, ring)
                    .map_err(|message| AgentError::RateBudget {
                        agent: self.spec.agent.clone(),
                        message,
                    })?,
            ),
            None => None,
        };
        let init = StateInit {
            gate: GateInit {
                agent: self.spec.agent.clone(),
                session: self.spec.session.clone(),
                standing: self.spec.standing.clone(),
                rings: Ring::ALL.map(|r| {
                    let caps = self.runtime.policy().limits(r).capabilities;
                    // A policy grant of `net` in ring 2 (standard) to this agent.
                    if r == Ring::Standard && self.spec.net_in_standard {
                        caps.with(Capability::Net)
                    } else {
                        caps
                    }
                }),
                rate,
                recorder: inner.breach_recorder.clone(),
                governor: inner.governor.clone(),
                kill: self.kill.clone(),
                metrics: inner.metrics.clone(),
            },
            files: self.spec.files.clone(),
            shared: self.spec.shared.clone(),
            actions: self.spec.actions.clone(),
            policy: self.runtime.inner.policy.clone(),
            net: self.spec.net.clone(),
        };
        let mut store = Store::new(self.runtime.engine(), AgentState::new(init, limits, now));
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.hostcall_budget(ring));
        store.set_max_component_handles(crate::trap::component_handle_limit(limits));
        store.epoch_deadline_callback(|ctx| {
            let s = ctx.data();
            // A standing killed on its own stops the guest too, as the
            // gate already refuses its host calls: its host ended the
            // session while the instance was still being made, with no
            // handle for it yet, or removed the agent. A kill through the
            // handle kills the standing as well.
            if s.gate.kill.is_killed() || s.gate.standing.is_killed() {
                return Err(wasmtime::Error::new(s.gate.kill.stop()));
            }
            if Instant::now() >= s.gate.call_deadline {
                return Err(wasmtime::Error::new(DeadlineExceeded {
                    deadline: s.gate.deadline,
                }));
            }
            // Its next poll waits for a turn (see `crate::turns`).
            s.gate.kill.mark_spent();
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }

    fn hostcall_budget(&self, ring: Ring) -> usize {
        let limits = self.runtime.policy().limits(ring);
        if !limits.capabilities.contains(ahv_core::Capability::VfsWrite) {
            return limits.hostcall_bytes;
        }
        let write = self
            .spec
            .files
            .max_file_bytes()
            .saturating_add(HOSTCALL_SLACK);
        limits
            .hostcall_bytes
            .max(usize::try_from(write).unwrap_or(usize::MAX))
    }

    /// The typed cause of a trap in a call made at `ring`'s limits.
    fn classify(&self, e: &wasmtime::Error, ring: Ring) -> TrapCause {
        let mut limits = self.runtime.policy().limits(ring).clone();
        limits.hostcall_bytes = self.hostcall_budget(ring);
        TrapCause::from_error(e, &limits)
    }

    /// Starts a call (or the instantiation) at the effective ring *now*: its
    /// trace id, fuel, deadline, memory, random and host-call budgets. The
    /// deadline is the ring's, or `cap` if that is shorter (a saga step's);
    /// the epoch callback enforces whichever is armed.
    /// The deadline runs from `now` (the call's start, read once per call).
    /// Returns the trace id and the ring.
    fn arm(
        &self,
        store: &mut Store<AgentState>,
        cap: Option<Duration>,
        now: Instant,
    ) -> Result<(TraceId, Ring), wasmtime::Error> {
        let trace = self.runtime.inner.next_trace();
        let data = store.data_mut();
        data.gate.trace = trace;
        let ring = data.gate.current_ring();
        let limits = self.runtime.policy().limits(ring);
        match cap {
            Some(cap) if cap < limits.deadline => {
                let mut shorter = limits.clone();
                shorter.deadline = cap;
                data.arm(trace, &shorter, now);
            }
            _ => data.arm(trace, limits, now),
        }
        store.set_fuel(limits.fuel_per_call)?;
        store.set_hostcall_fuel(self.hostcall_budget(ring));
        store.set_max_component_handles(crate::trap::component_handle_limit(limits));
        store.set_epoch_deadline(1);
        Ok((trace, ring))
    }

    async fn instantiate(&mut self) -> Result<Live, AgentError> {
        let pre = self
            .runtime
            .instance_pre_ref(&self.component, self.spec.standing.base())?;
        // After linking (the first use of a ring links the component: host
        // work the guest's deadline must not pay for); the store's few
        // microseconds of setup do count against it.
        let started = Instant::now();
        let mut store = self.new_store(started)?;
        let armed = self.arm(&mut store, None, started);
        let ring = armed
            .as_ref()
            .map_or(self.spec.standing.base(), |(_, r)| *r);
        let result = match armed {
            Ok(_) => {
                guarded(
                    std::pin::pin!(pre.instance_pre().instantiate_async(&mut store)),
                    self.runtime.policy().limits(ring).deadline,
                    started,
                    &self.kill,
                    &self.runtime.inner.turns,
                )
                .await
            }
            Err(e) => Err(e),
        };
        // Admission checked the exports' types; this only fails on a host bug.
        let result = result.and_then(|instance| {
            let run: RunFunc = instance.get_typed_func(&mut store, "run")?;
            let saga = match &self.component.inner.saga {
                Some(indices) => Some(indices.load(&mut store, &instance)?),
                None => None,
            };
            Ok((run, saga))
        });
        match result {
            Ok((run, saga)) => {
                self.runtime.metrics().instantiated(started.elapsed());
                Ok(Live { store, run, saga })
            }
            Err(e) => {
                let data = store.data();
                let (logs, _) = data.caps.handles.take_log();
                let changes = data.caps.handles.changes.take();
                let trace = data.gate.trace;
                // A full pool is not the guest's doing: nothing is poisoned
                // and no trap counted, so a later call or join may find
                // room. Unless a start function already changed something
                // before a later module found no room: only a trap's
                // journal carries those changes back to be undone.
                if changes.is_empty()
                    && e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                        .is_some()
                {
                    return Err(self.at_capacity(e.root_cause().to_string(), trace, logs));
                }
                let cause = self.classify(&e, ring);
                Err(self.poison(cause, logs, changes, trace))
            }
        }
    }

    /// No instance could be made: the pool is full (`message`, the pool's
    /// words). Locks a start function took are released, as a trap's are,
    /// and what it logged (`logs`) goes back with the error.
    fn at_capacity(&mut self, message: String, trace: TraceId, logs: Vec<LogLine>) -> AgentError {
        tracing::warn!(agent = %self.spec.agent, reason = %message, "no room for the agent's instance");
        self.runtime.metrics().at_capacity();
        if let Some(core) = &self.spec.shared {
            core.release_locks(&self.spec.agent, "no room for its instance", trace);
        }
        AgentError::AtCapacity {
            agent: self.spec.agent.clone(),
            message,
            logs,
        }
    }

    /// The limits of the agent's ring (the runtime owns the table; the ring is fixed per agent).
    /// The instance is dead (`cause`, during the call traced `trace`).
    fn poison(
        &mut self,
        cause: TrapCause,
        logs: Vec<LogLine>,
        changes: Vec<Change>,
        trace: TraceId,
    ) -> AgentError {
        tracing::info!(agent = %self.spec.agent, ring = %self.spec.standing.base(), cause = %cause, "agent trapped");
        self.runtime.metrics().trap(cause.kind());
        if let Some(core) = &self.spec.shared {
            // Locks die with their holder's instance.
            core.release_locks(&self.spec.agent, &format!("trapped: {cause}"), trace);
        }
        self.live = None;
        self.poisoned = Some(cause.clone());
        AgentError::Trapped {
            agent: self.spec.agent.clone(),
            cause,
            logs,
            changes: Box::new(ChangeJournal::from(changes)),
        }
    }

    fn may_recreate(&self, cause: &TrapCause) -> bool {
        let permanent = matches!(cause, TrapCause::RingBreach(_) | TrapCause::Killed(_));
        !permanent && self.spec.after_trap == AfterTrap::Recreate
    }

    /// Calls the agent's `run` with `input`.
    ///
    /// Cancel-safe: if the returned future is dropped before it completes, the
    /// interrupted instance is discarded and the next call gets a fresh one.
    ///
    /// # Errors
    /// [`AgentError::Trapped`] with the typed cause when the call traps (the
    /// instance is dropped); [`AgentError::Poisoned`] when an earlier trap or a
    /// kill left the agent unusable; [`AgentError::InputTooLarge`].
    pub async fn run(&mut self, input: &str) -> Result<RunOutput, AgentError> {
        self.call(Entry::Run { input }, None).await
    }

    /// Runs a saga step inside the agent: its `saga-participant.execute`
    /// with `input`, under its ring like `run`, within `deadline` or the
    /// ring's deadline, whichever is shorter. A step that calls outside the
    /// ring traps with [`TrapCause::RingBreach`]; one that runs too long
    /// stops with [`TrapCause::DeadlineExceeded`] at its own deadline. The
    /// output's `result` is the step's output or its failure message.
    ///
    /// # Errors
    /// [`AgentError::NotASagaParticipant`] if the component does not export
    /// `saga-participant`; otherwise as [`Agent::run`].
    pub async fn execute_step(
        &mut self,
        call: &StepCall,
        input: &str,
        deadline: Duration,
    ) -> Result<RunOutput, AgentError> {
        self.call(Entry::Execute { step: call, input }, Some(deadline))
            .await
    }

    /// Compensates a committed saga step inside the agent: its
    /// `saga-participant.compensate` with the step's `input` and the
    /// `output` its `execute` returned, under the same rules as
    /// [`Agent::execute_step`]. The output's `result` is `Ok` with an empty
    /// answer when the agent compensated, or its failure message.
    ///
    /// # Errors
    /// As [`Agent::execute_step`].
    pub async fn compensate_step(
        &mut self,
        call: &StepCall,
        input: &str,
        output: &str,
        deadline: Duration,
    ) -> Result<RunOutput, AgentError> {
        let entry = Entry::Compensate {
            step: call,
            input,
            output,
        };
        self.call(entry, Some(deadline)).await
    }

    /// One call into the guest, whichever export it enters: the same limits,
    /// scope, guards and trap handling for `run` and for saga steps.
    async fn call(
        &mut self,
        entry: Entry<'_>,
        deadline: Option<Duration>,
    ) -> Result<RunOutput, AgentError> {
        let len = entry.len();
        if len > MAX_INPUT_BYTES {
            return Err(AgentError::InputTooLarge {
                len,
                max: MAX_INPUT_BYTES,
            });
        }
        if !matches!(entry, Entry::Run { .. }) && !self.component.saga_participant() {
            return Err(AgentError::NotASagaParticipant {
                agent: self.spec.agent.clone(),
            });
        }
        if let Some(killed) = self.kill.killed() {
            self.live = None;
            let cause = TrapCause::Killed(killed);
            self.poisoned = Some(cause.clone());
            return Err(AgentError::Poisoned {
                agent: self.spec.agent.clone(),
                cause,
            });
        }
        let mut live = match self.live.take() {
            // An instance that holds more memory than its ring now allows
            // (it was demoted) starts afresh, within the new budget.
            Some(live)
                if live.store.data().limiter.used()
                    > self
                        .runtime
                        .policy()
                        .limits(self.spec.standing.effective())
                        .memory_bytes =>
            {
                drop(live);
                // Boxed here and below: a call that needs a new instance is
                // rare, and its future in place would make every call's
                // future (moved whole into its task or `block_on`) about
                // 2 KiB larger.
                Box::pin(self.instantiate()).await?
            }
            Some(live) => live,
            None => match &self.poisoned {
                Some(cause) if !self.may_recreate(cause) => {
                    return Err(AgentError::Poisoned {
                        agent: self.spec.agent.clone(),
                        cause: cause.clone(),
                    });
                }
                _ => Box::pin(self.instantiate()).await?,
            },
        };
        self.keep_abandoned();
        let key = match &entry {
            Entry::Execute { step, .. } => Some(step_key(step)),
            Entry::Run { .. } | Entry::Compensate { .. } => None,
        };
        let is_run = matches!(entry, Entry::Run { .. });
        self.in_flight = Some((key, live.store.data().caps.handles.changes.clone()));
        let start = Instant::now();
        let mut scope = CallScope::begin(self.spec.shared.as_ref(), &self.spec.agent);
        let armed = self.arm(&mut live.store, deadline, start);
        let ring = armed
            .as_ref()
            .map_or(self.spec.standing.base(), |(_, r)| *r);
        let limits = self.runtime.policy().limits(ring);
        let fuel = limits.fuel_per_call;
        let deadline = deadline.map_or(limits.deadline, |d| d.min(limits.deadline));
        let result = match armed {
            Ok((trace, _)) => {
                scope.trace = trace;
                enter(
                    &mut live,
                    entry,
                    deadline,
                    start,
                    &self.kill,
                    &self.runtime.inner.turns,
                )
                .await
                .and_then(|r| answer(r, limits.result_bytes))
                .map(|r| (trace, r))
            }
            Err(e) => Err(e),
        };
        let elapsed = start.elapsed();
        if is_run {
            self.runtime.metrics().ran(elapsed);
        } else {
            self.runtime.metrics().stepped(elapsed);
        }
        let fuel_used = fuel.saturating_sub(live.store.get_fuel().unwrap_or(0));
        let data = live.store.data_mut();
        data.gate.publish_metrics();
        // Set by `arm` (even when the call then failed).
        let call_trace = data.gate.trace;
        self.in_flight = None;
        let changes = data.caps.handles.changes.take();
        let (logs, dropped_log_lines) = data.caps.handles.take_log();
        scope.completed();
        match result {
            Ok((trace, result)) => {
                self.live = Some(live);
                Ok(RunOutput {
                    result,
                    logs,
                    dropped_log_lines,
                    fuel_used,
                    trace,
                    elapsed,
                    changes,
                })
            }
            Err(e) => {
                let cause = self.classify(&e, ring);
                drop(live);
                Err(self.poison(cause, logs, changes, call_trace))
            }
        }
    }
}

/// Calls `entry`'s export under [`guarded`]; a compensation's `Ok` is an empty answer.
async fn enter(
    live: &mut Live,
    entry: Entry<'_>,
    deadline: Duration,
    started: Instant,
    kill: &KillHandle,
    turns: &Turns,
) -> wasmtime::Result<Result<String, String>> {
    let store = &mut live.store;
    match (entry, &live.saga) {
        (Entry::Run { input }, _) => {
            let call = std::pin::pin!(live.run.call_async(store, (input.to_string(),)));
            guarded(call, deadline, started, kill, turns)
                .await
                .map(|(r,)| r)
        }
        (Entry::Execute { step, input }, Some(saga)) => {
            let call = std::pin::pin!(saga.call_execute(store, step, input));
            guarded(call, deadline, started, kill, turns).await
        }
        (
            Entry::Compensate {
                step,
                input,
                output,
            },
            Some(saga),
        ) => guarded(
            std::pin::pin!(saga.call_compensate(store, step, input, output)),
            deadline,
            started,
            kill,
            turns,
        )
        .await
        .map(|r| r.map(|()| String::new())),
        // `call` refuses saga steps for a component without the export, so a
        // live instance without hooks never gets here.
        (Entry::Execute { .. } | Entry::Compensate { .. }, None) => Err(wasmtime::format_err!(
            "host bug: a saga step reached an instance without saga hooks"
        )),
    }
}

/// The call's answer (or failure message) if it is within the ring's limit.
fn answer(
    result: Result<String, String>,
    limit: usize,
) -> wasmtime::Result<Result<String, String>> {
    let len = match &result {
        Ok(s) | Err(s) => s.len(),
    };
    crate::bulk::bounded(len as u64, limit as u64, "run result")?;
    Ok(result)
}

/// One call's transaction in the agent's session: begun before the call,
/// ended after it however it ends. If the call future is dropped before it
/// completes (cancelled), the agent's locks are released as for a trap.
struct CallScope {
    core: Option<(Arc<SessionCore>, AgentId)>,
    completed: bool,
    /// The call's trace once it is armed: what a cancellation's lock
    /// releases carry (the store that also holds it is dropped by then).
    trace: TraceId,
}

impl CallScope {
    fn begin(core: Option<&Arc<SessionCore>>, agent: &AgentId) -> CallScope {
        let core = core.map(|c| {
            c.begin_call(agent);
            (c.clone(), agent.clone())
        });
        CallScope {
            core,
            completed: false,
            trace: TraceId(0),
        }
    }

    fn completed(&mut self) {
        self.completed = true;
    }
}

impl Drop for CallScope {
    fn drop(&mut self) {
        if let Some((core, agent)) = &self.core {
            core.end_call(agent);
            if !self.completed {
                core.release_locks(agent, "call cancelled", self.trace);
            }
        }
    }
}

/// Returns `Pending` once, waking the task, then `Ready`: a yield to the
/// scheduler that, unlike `tokio::task::yield_now`, is not deferred until
/// the runtime next parks.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Slack after the deadline before a call stuck in a host function is cancelled;
/// a call running wasm code is stopped by the epoch callback at the deadline itself.
const DEADLINE_GRACE: Duration = Duration::from_millis(10);

/// Runs a call into the guest on the runtime's turns (see `crate::turns`) so
/// that neither its deadline nor the kill switch can be escaped by waiting
/// inside an async host function (e.g. a WASI sleep or poll), where epoch
/// interruption does not reach, or by waiting for a turn. The call is
/// pinned where its caller made it (`std::pin::pin!`), so the guard's
/// future does not hold a second copy of it (wasmtime's instantiation
/// future is over a kilobyte). Dropping the guard's future abandons the
/// call, which must not be polled again; the caller then drops the
/// instance. The
/// deadline runs from `started`, the call's start (the clock is read once
/// per call: a read costs ~40 ns in a VM). The cutoff is `started` on
/// tokio's clock, which is the system's unless tokio's `test-util` pauses
/// it: the workspace never enables that feature (see the README's
/// "Performance"), and the epoch callback, which stops running guest code,
/// reads the system's clock whatever tokio does.
async fn guarded<T>(
    call: Pin<&mut impl Future<Output = wasmtime::Result<T>>>,
    deadline: Duration,
    started: Instant,
    kill: &KillHandle,
    turns: &Turns,
) -> wasmtime::Result<T> {
    let cutoff = tokio::time::Instant::from_std(started) + deadline + DEADLINE_GRACE;
    let mut call = std::pin::pin!(turns.run(call, kill));
    // Most calls finish without ever waiting in the host: poll once before
    // paying for a timer and a kill subscription.
    let result = match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
        Poll::Ready(r) => r,
        // The rest is boxed: its timer and kill subscription would
        // otherwise make every call's future (moved whole into its task or
        // `block_on`) a few hundred bytes larger for the calls that never
        // wait.
        Poll::Pending => {
            Box::pin(async {
                if call.at_tick() {
                    // Its first tick is used up: let the task go round the run
                    // queue (or wait for its turn) before the select polls it
                    // again, or it would run a second tick in this poll.
                    yield_once().await;
                }
                tokio::select! {
                    // A kill wins over a guest that is ready to run again.
                    biased;
                    () = kill.cancelled() => Err(wasmtime::Error::new(kill.stop())),
                    r = call => r,
                    () = tokio::time::sleep_until(cutoff) => {
                        Err(wasmtime::Error::new(DeadlineExceeded { deadline }))
                    }
                }
            })
            .await
        }
    };
    kill.call_ended();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahv_governance::vfs::{Vfs, VfsLimits};

    /// A runtime of 4 instances with a cache of its own, and a standalone
    /// file space; the temporary directories live as long as the first.
    fn runtime_and_files() -> ((tempfile::TempDir, tempfile::TempDir), Runtime, Arc<Vfs>) {
        let cache = tempfile::tempdir().unwrap();
        let runtime = Runtime::builder()
            .cache_dir(cache.path())
            .max_instances(4)
            .build()
            .unwrap();
        let files = tempfile::tempdir().unwrap();
        let dir =
            cap_std::fs::Dir::open_ambient_dir(files.path(), cap_std::ambient_authority()).unwrap();
        let vfs = Arc::new(Vfs::new(dir, VfsLimits::default()));
        ((cache, files), runtime, vfs)
    }

    /// Whether the agent's live instance made its WASI context (it must
    /// have a live instance).
    fn made_wasi(agent: &Agent) -> bool {
        let live = agent.live.as_ref();
        assert!(live.is_some(), "the agent has no live instance");
        live.is_some_and(|live| live.store.data().wasi_made())
    }

    /// An instance's WASI context is made at its first WASI call, not with
    /// its store: a call that makes none never pays for it, and one that
    /// does gets the same context (its stdout in the call's log).
    #[tokio::test(flavor = "current_thread")]
    async fn wasi_is_made_at_the_first_wasi_call_and_works_then() {
        let (_dirs, runtime, vfs) = runtime_and_files();

        let pinger = runtime.load(ahv_agents::PINGER).unwrap();
        let id = AgentId::new("did:test:pinger").unwrap();
        let mut agent = runtime
            .spawn(&pinger, AgentSpec::new(id, Ring::Sandbox, vfs.clone()))
            .await
            .unwrap();
        assert!(!made_wasi(&agent), "instantiation made WASI's context");
        let out = agent.run("").await.unwrap();
        assert_eq!(out.result.as_deref(), Ok("pong"));
        assert!(!made_wasi(&agent), "a call without WASI made its context");

        let hello = runtime.load(ahv_agents::HELLO).unwrap();
        let id = AgentId::new("did:test:hello").unwrap();
        let mut agent = runtime
            .spawn(&hello, AgentSpec::new(id, Ring::Sandbox, vfs))
            .await
            .unwrap();
        let out = agent.run("world").await.unwrap();
        assert!(made_wasi(&agent), "hello's stdout went without WASI");
        assert!(
            out.logs
                .iter()
                .any(|l| l.message == "hello says hi on stdout"),
            "hello's stdout line is not in its log: {:?}",
            out.logs
        );
    }

    /// A spawn made with a caller's kill handle ([`Runtime::kill_handle`])
    /// is stopped by it: killed before the spawn, no instance is made and
    /// the spawn traps with the kill's reason; the agent's standing is
    /// killed too. A handle over another standing is refused.
    #[tokio::test(flavor = "current_thread")]
    async fn a_kill_handle_given_to_a_spawn_stops_it_from_the_start() {
        let (dirs, runtime, vfs) = runtime_and_files();
        let vfs: Arc<dyn FileSpace> = vfs;
        let pinger = runtime.load(ahv_agents::PINGER).unwrap();
        let id = AgentId::new("did:test:pinger").unwrap();
        let spec = || AgentSpec::new(id.clone(), Ring::Sandbox, vfs.clone());

        let standing = Standing::new(Ring::Sandbox, Arc::new(SystemClock::default()));
        let kill = runtime.kill_handle(standing.clone());
        let mut agent = runtime
            .spawn(&pinger, spec().kill_handle(kill.clone()))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(agent.standing(), &standing));
        kill.kill("stopped by its maker");
        assert!(standing.is_killed());
        assert!(
            matches!(
                agent.run("").await,
                Err(AgentError::Poisoned {
                    cause: TrapCause::Killed(_),
                    ..
                })
            ),
            "the agent made with the handle is the one it killed"
        );

        let kill = runtime.kill_handle(Standing::new(
            Ring::Sandbox,
            Arc::new(SystemClock::default()),
        ));
        kill.kill("before it was made");
        let made = runtime.spawn(&pinger, spec().kill_handle(kill)).await;
        assert!(
            matches!(&made, Err(AgentError::Trapped { cause: TrapCause::Killed(k), .. }) if k.reason == "before it was made"),
            "{made:?}"
        );

        let kill = runtime.kill_handle(Standing::new(
            Ring::Sandbox,
            Arc::new(SystemClock::default()),
        ));
        let other = Standing::new(Ring::Sandbox, Arc::new(SystemClock::default()));
        let made = runtime
            .spawn(&pinger, spec().kill_handle(kill).standing(other))
            .await;
        assert!(
            matches!(&made, Err(AgentError::KillHandleMismatch { agent }) if *agent == id),
            "{made:?}"
        );

        // A handle another runtime made (it would advance that engine's epoch).
        let other = Runtime::builder()
            .cache_dir(dirs.0.path())
            .max_instances(1)
            .build()
            .unwrap();
        let kill = other.kill_handle(Standing::new(
            Ring::Sandbox,
            Arc::new(SystemClock::default()),
        ));
        let made = runtime.spawn(&pinger, spec().kill_handle(kill)).await;
        assert!(
            matches!(&made, Err(AgentError::KillHandleMismatch { agent }) if *agent == id),
            "{made:?}"
        );
    }
}
