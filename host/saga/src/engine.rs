//! The saga engine: runs one saga, records its progress, compensates on
//! failure and resumes after a crash.
//!
//! Every change is first applied to the in-memory state through the state
//! machines of [`crate::state`] (an illegal change is an error), then appended
//! to the [`ProgressStore`], then reported to the [`SagaObserver`]; only after
//! that does the engine act on it. So `StepStarted` is durable before the
//! runner is called, `StepCommitted` before the next step starts and
//! `Compensating` before any compensation runs, and [`Engine::resume`]
//! rebuilds the state by applying the same records again.
//!
//! Scheduling: units (a lone step, or a fan-out group) run one at a time in
//! definition order among those whose dependencies are done; a group's
//! branches start together as tokio tasks. Under `any` with `cancel_rest`,
//! the other branches' tasks are aborted (their futures dropped) once one
//! succeeds.
//!
//! Replays: running a saga id whose previous run finished starts a new
//! generation (a new `Created` record). A step with a checkpoint goal that was
//! committed (and not compensated) in the previous generation, with the hash of
//! its current goal, is skipped (`StepSkipped`, carrying its output and undo
//! data so it can still be compensated). A changed goal runs the step again.
//!
//! The engine does not guard against two calls driving the same saga at once;
//! the caller (the facade) owns that.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use ahv_core::{Clock, FakeClock, IdError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::task::JoinSet;

use crate::checkpoint::checkpoint_hash;
use crate::definition::{CrashPolicy, Isolation, SagaDefinition, StepDef};
use crate::fanout::FanoutPolicy;
use crate::format::{DefinitionError, Plan, Unit};
use crate::retry::Jitter;
use crate::state::{SagaState, StepState, TransitionError};

/// A map keyed by ids a validated definition holds (bounded in number and
/// length): foldhash, not SipHash, which took ~1 % of a three-step saga.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The error text recorded for a step a host crash interrupted.
pub const INTERRUPTED: &str = "interrupted by a host crash";

/// The most bytes of a runner's failure message (a step's or a
/// compensation's, often the guest's own text) or of a reason a record
/// keeps. A guest's error may be megabytes (up to its ring's answer limit);
/// whole, it went into the saga's journal record (JSON can make it six
/// times larger, past the journal's 16 MiB record limit, which stopped the
/// saga before compensation and liability) and into events.
pub const MAX_ERROR_BYTES: usize = 4096;

/// `text`, or its first [`MAX_ERROR_BYTES`] (cut at a character boundary)
/// followed by how long it was.
pub fn capped(text: String) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text;
    }
    let mut cut = MAX_ERROR_BYTES - 64;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

/// A boxed, sendable future: what runners and sleepers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A validated saga id (the id charset of SEMANTICS.md, ≤ 256 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SagaId(Arc<str>);

impl SagaId {
    /// Validates and wraps a saga id.
    ///
    /// # Errors
    /// [`IdError`] naming what is wrong (with kind "saga").
    pub fn new(s: impl AsRef<str>) -> Result<SagaId, IdError> {
        let s = s.as_ref();
        ahv_core::id::check("saga", s)?;
        Ok(SagaId(s.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SagaId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, IdError> {
        SagaId::new(s)
    }
}

impl From<SagaId> for String {
    fn from(id: SagaId) -> String {
        id.0.to_string()
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an attempt failed, and so whether it may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The work reported an error; retried.
    Failed,
    /// The attempt ran past its deadline; retried.
    Timeout,
    /// The agent breached its ring; punished, not retried.
    Breach,
    /// The attempt was cancelled (a sibling branch won, or a kill); not retried.
    Cancelled,
    /// The attempt failed and its partial changes could not all be undone
    /// (it ran an effect, say): not retried, and the saga escalates like a
    /// failed compensation, since something of it remains.
    Residue,
}

impl FailureKind {
    /// Whether a step failing this way may use a retry.
    pub fn retryable(self) -> bool {
        matches!(self, FailureKind::Failed | FailureKind::Timeout)
    }
}

/// One entry of a saga's progress log. The engine appends each before acting on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SagaRecord {
    /// A run (generation) of the saga began with this definition.
    Created {
        /// The saga.
        saga: SagaId,
        /// Its definition, as validated (shared, not copied, by the run and
        /// an in-memory store).
        #[serde(with = "shared_definition")]
        definition: Arc<SagaDefinition>,
        /// Clock time in milliseconds.
        at_ms: u64,
    },
    /// An attempt of a step is about to be handed to the runner.
    StepStarted {
        /// The step.
        step: String,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// An attempt succeeded.
    StepCommitted {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// The step's output.
        output: String,
        /// What the runner needs to compensate it (opaque to the engine).
        undo: Value,
    },
    /// An attempt failed (or was interrupted or cancelled).
    StepFailed {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// How it failed.
        kind: FailureKind,
        /// The runner's message.
        error: String,
        /// Set when a retry follows after this many milliseconds.
        retry_in_ms: Option<u64>,
        /// A host crash interrupted it: the retry that follows does not use one up.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        interrupted: bool,
    },
    /// A step's valid checkpoint from the previous run was reused; it did not run.
    StepSkipped {
        /// The step.
        step: String,
        /// Its checkpoint hash.
        hash: String,
        /// The output it committed then.
        output: String,
        /// Its undo data from then.
        undo: Value,
    },
    /// A committed step with a goal saved its checkpoint.
    CheckpointSaved {
        /// The step.
        step: String,
        /// `sha256("{goal}:{step}")` in hex.
        hash: String,
    },
    /// A fan-out group's branches are starting.
    FanoutStarted {
        /// The group.
        group: String,
        /// Its branches.
        branches: Vec<String>,
    },
    /// A fan-out group finished.
    FanoutResolved {
        /// The group.
        group: String,
        /// Branches that committed.
        succeeded: Vec<String>,
        /// Branches that failed.
        failed: Vec<String>,
        /// Branches cancelled because another succeeded.
        cancelled: Vec<String>,
        /// Whether the group's policy holds.
        satisfied: bool,
    },
    /// Compensation of the committed steps begins.
    Compensating {
        /// Why.
        reason: String,
    },
    /// A step's compensation is about to be handed to the runner.
    StepCompensating {
        /// The step.
        step: String,
    },
    /// A step's compensation succeeded.
    StepCompensated {
        /// The step.
        step: String,
    },
    /// A step's compensation failed.
    StepCompensationFailed {
        /// The step.
        step: String,
        /// The runner's message.
        error: String,
    },
    /// The saga reached a final state.
    Finished {
        /// The final state.
        state: SagaState,
    },
}

impl SagaRecord {
    /// The event type this record stands for (SEMANTICS.md, "Events").
    pub fn event_type(&self) -> &'static str {
        match self {
            SagaRecord::Created { .. } => "saga.created",
            SagaRecord::StepStarted { .. } => "saga.step_started",
            SagaRecord::StepCommitted { .. } => "saga.step_committed",
            SagaRecord::StepFailed { .. } => "saga.step_failed",
            SagaRecord::StepSkipped { .. } => "saga.step_skipped",
            SagaRecord::CheckpointSaved { .. } => "saga.checkpoint_saved",
            SagaRecord::FanoutStarted { .. } => "saga.fanout_started",
            SagaRecord::FanoutResolved { .. } => "saga.fanout_resolved",
            SagaRecord::Compensating { .. } => "saga.compensating",
            SagaRecord::StepCompensating { .. } => "saga.step_compensating",
            SagaRecord::StepCompensated { .. } => "saga.step_compensated",
            SagaRecord::StepCompensationFailed { .. } => "saga.compensation_failed",
            SagaRecord::Finished { state } => match state {
                SagaState::Completed => "saga.completed",
                SagaState::Escalated => "saga.escalated",
                SagaState::Failed => "saga.failed",
                SagaState::Running | SagaState::Compensating => "saga.finished",
            },
        }
    }
}

/// Why the progress store could not do its job.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// Reading or writing the backing storage failed.
    #[error("progress store I/O for saga {saga}: {message}")]
    Io {
        /// The saga (or "*" for the listing).
        saga: String,
        /// What failed.
        message: String,
    },
    /// Stored records could not be decoded.
    #[error("progress store holds corrupt records for saga {saga}: {message}")]
    Corrupt {
        /// The saga.
        saga: String,
        /// What is wrong.
        message: String,
    },
}

/// Where a saga's records live. Appends must be durable when they return.
pub trait ProgressStore: Send + Sync {
    /// Appends one record to the saga's log.
    ///
    /// # Errors
    /// [`StoreError`] if it could not be stored.
    fn append(&self, saga: &SagaId, rec: &SagaRecord) -> Result<(), StoreError>;
    /// The saga's records in append order (empty if unknown).
    ///
    /// # Errors
    /// [`StoreError`] if they could not be read.
    fn load(&self, saga: &SagaId) -> Result<Vec<SagaRecord>, StoreError>;
    /// Every saga with records.
    ///
    /// # Errors
    /// [`StoreError`] if the listing failed.
    fn list(&self) -> Result<Vec<SagaId>, StoreError>;
    /// Whether the records outlive the process (a restarted host can resume
    /// from them). A host keeps redo data for steps only when they do.
    fn survives_restart(&self) -> bool {
        false
    }
}

/// An in-memory [`ProgressStore`] (nothing survives the process).
#[derive(Debug, Default)]
pub struct MemoryStore {
    logs: Mutex<BTreeMap<SagaId, Vec<SagaRecord>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store holding `records` for `saga` (e.g. a log cut short by a crash).
    pub fn with_records(saga: SagaId, records: Vec<SagaRecord>) -> MemoryStore {
        let s = MemoryStore::default();
        lock(&s.logs).insert(saga, records);
        s
    }
}

impl ProgressStore for MemoryStore {
    fn append(&self, saga: &SagaId, rec: &SagaRecord) -> Result<(), StoreError> {
        lock(&self.logs)
            .entry(saga.clone())
            .or_default()
            .push(rec.clone());
        Ok(())
    }

    fn load(&self, saga: &SagaId) -> Result<Vec<SagaRecord>, StoreError> {
        Ok(lock(&self.logs).get(saga).cloned().unwrap_or_default())
    }

    fn list(&self) -> Result<Vec<SagaId>, StoreError> {
        Ok(lock(&self.logs).keys().cloned().collect())
    }
}

/// One attempt of a step, as handed to the runner.
#[derive(Debug, Clone)]
pub struct StepCall {
    /// The saga.
    pub saga: SagaId,
    /// The step's definition.
    pub step: Arc<StepDef>,
    /// The saga's isolation level, for the runner to enforce (intent locks under serializable).
    pub isolation: Isolation,
    /// 1-based attempt number.
    pub attempt: u32,
    /// How long the attempt may run; the runner enforces it preemptively.
    pub deadline: Duration,
}

/// A successful attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDone {
    /// The step's output.
    pub output: String,
    /// What the runner needs to compensate the step; the engine persists it.
    pub undo: Value,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// What went wrong.
    pub message: String,
    /// How it failed.
    pub kind: FailureKind,
}

/// A compensation, as handed to the runner.
#[derive(Debug, Clone)]
pub struct CompensateCall {
    /// The saga.
    pub saga: SagaId,
    /// The step's definition (its `undo_input()` is the compensation input).
    pub step: Arc<StepDef>,
    /// The output the step committed.
    pub output: String,
    /// The undo data the step committed.
    pub undo: Value,
}

/// A failed compensation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompensationFailure {
    /// What went wrong.
    pub message: String,
}

/// Does the work of steps: the agent runtime or host actions.
pub trait StepRunner: Send + Sync + 'static {
    /// Runs one attempt of a step within `call.deadline`.
    fn execute(&self, call: StepCall) -> BoxFuture<Result<StepDone, StepFailure>>;
    /// Undoes a committed step. It may be called again for the same step if a
    /// crash interrupted it, so it should be idempotent.
    fn compensate(&self, call: CompensateCall) -> BoxFuture<Result<(), CompensationFailure>>;
    /// The future [`StepRunner::execute`] returned for `call` was dropped
    /// before it finished (a sibling fan-out branch won and the rest are
    /// cancelled): undo whatever the attempt changed. The engine awaits it
    /// before recording the attempt cancelled; `Err` (what could not be
    /// undone) records it as [`FailureKind::Residue`] instead, and the saga
    /// escalates. The default has nothing to undo.
    fn abandoned(&self, call: StepCall) -> BoxFuture<Result<(), String>> {
        let _ = call;
        Box::pin(async { Ok(()) })
    }
}

/// A compensation that failed, as reported on escalation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalatedStep {
    /// The step.
    pub step: String,
    /// The agent that ran it.
    pub agent: String,
    /// The runner's message.
    pub error: String,
}

/// Receives every record as it is appended, and escalations.
pub trait SagaObserver: Send + Sync {
    /// A record was appended (see [`SagaRecord::event_type`]). Called with the
    /// saga's state locked: keep it short.
    fn record(&self, saga: &SagaId, record: &SagaRecord);
    /// A compensation failed: the saga is being escalated (the liability
    /// hook). Called before the final `Finished` record, so at least once.
    fn escalated(&self, saga: &SagaId, failures: &[EscalatedStep]);
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl SagaObserver for NoopObserver {
    fn record(&self, _saga: &SagaId, _record: &SagaRecord) {}
    fn escalated(&self, _saga: &SagaId, _failures: &[EscalatedStep]) {}
}

/// Waits between retries.
pub trait Sleeper: Send + Sync {
    /// A future that completes after `d`.
    fn sleep(&self, d: Duration) -> BoxFuture<()>;
}

/// Sleeps on tokio's timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, d: Duration) -> BoxFuture<()> {
        // Built lazily, inside the runtime that polls it.
        Box::pin(async move { tokio::time::sleep(d).await })
    }
}

/// Records each requested delay, advances a [`FakeClock`] by it and returns at once.
#[derive(Debug, Default)]
pub struct FakeSleeper {
    clock: FakeClock,
    delays: Mutex<Vec<Duration>>,
}

impl FakeSleeper {
    /// A sleeper that advances `clock`.
    pub fn new(clock: FakeClock) -> FakeSleeper {
        FakeSleeper {
            clock,
            delays: Mutex::new(Vec::new()),
        }
    }

    /// Every delay requested so far, in order.
    pub fn delays(&self) -> Vec<Duration> {
        lock(&self.delays).clone()
    }
}

impl Sleeper for FakeSleeper {
    fn sleep(&self, d: Duration) -> BoxFuture<()> {
        lock(&self.delays).push(d);
        self.clock.advance(d);
        Box::pin(std::future::ready(()))
    }
}

/// Why the engine could not run or resume a saga.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The definition is invalid.
    #[error("saga definition: {0}")]
    Definition(#[from] DefinitionError),
    /// The progress store failed; the saga stopped where its records end.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No records exist for the saga.
    #[error("saga {saga} has no records")]
    NotFound {
        /// The saga.
        saga: String,
    },
    /// The saga's previous run has not finished; resume or compensate it instead.
    #[error("saga {saga} is still {state}; resume or compensate it instead of running it again")]
    Unfinished {
        /// The saga.
        saga: String,
        /// Its state.
        state: SagaState,
    },
    /// The records contradict the state machines or the definition.
    #[error("saga {saga}: records are inconsistent: {message}")]
    Corrupt {
        /// The saga.
        saga: String,
        /// What is wrong.
        message: String,
    },
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The step.
    pub id: String,
    /// Its state.
    pub state: StepState,
    /// Attempts started (interrupted ones included).
    pub attempts: u32,
    /// Its output, if it committed.
    pub output: Option<String>,
    /// Its last error (execution or compensation).
    pub error: Option<String>,
    /// Clock time from its first attempt to its last result, within this process.
    pub elapsed: Duration,
    /// Whether a valid checkpoint skipped it.
    pub skipped: bool,
}

/// The outcome of a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaReport {
    /// The saga.
    pub saga: SagaId,
    /// Its state.
    pub state: SagaState,
    /// One report per step, in definition order.
    pub steps: Vec<StepReport>,
}

impl SagaReport {
    /// The report of step `id`.
    pub fn step(&self, id: &str) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.id == id)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the saga: the data is still consistent
    // because every change is a single assignment after validation.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs sagas. Cheap to clone; clones share the same collaborators.
#[derive(Clone)]
pub struct Engine {
    ctx: Arc<Ctx>,
    plans: Arc<PlanCache>,
}

/// What a run needs of a valid definition: its plan, the step and group
/// indices, and each step shared. Computed once per shared definition.
#[derive(Debug)]
struct Compiled {
    plan: Plan,
    index: FastMap<String, usize>,
    group_index: FastMap<String, usize>,
    steps: Vec<Arc<StepDef>>,
}

impl Compiled {
    fn new(def: &SagaDefinition) -> Result<Compiled, DefinitionError> {
        let plan = def.plan()?;
        let index = positions(def.steps.iter().map(|s| &s.id));
        let group_index = positions(def.fanout.iter().map(|g| &g.id));
        let steps = def.steps.iter().map(|s| Arc::new(s.clone())).collect();
        Ok(Compiled {
            plan,
            index,
            group_index,
            steps,
        })
    }
}

/// Each id's position in `ids`.
fn positions<'a>(ids: impl Iterator<Item = &'a String>) -> FastMap<String, usize> {
    ids.enumerate().map(|(i, id)| (id.clone(), i)).collect()
}

/// The validated plans of the last few definitions an engine ran, so that
/// running one shared definition (`Arc<SagaDefinition>`) again neither
/// validates nor copies it again. Engines built per run share one with
/// [`Engine::with_plans`].
///
/// Keyed by the definition's allocation, held as a [`Weak`]: while the
/// cache holds it, the allocation is not reused and the definition cannot
/// change (`Arc::get_mut` refuses an `Arc` with weak pointers, and
/// `Arc::make_mut` copies it to a new allocation), so a hit is always the
/// plan of the very definition being run.
#[derive(Debug, Default)]
pub struct PlanCache(Mutex<VecDeque<(Weak<SagaDefinition>, Arc<Compiled>)>>);

/// How many definitions a [`PlanCache`] remembers.
const PLANS_KEPT: usize = 16;

impl PlanCache {
    /// The compiled form of `def`, from the cache or validated now.
    fn get(&self, def: &Arc<SagaDefinition>) -> Result<Arc<Compiled>, DefinitionError> {
        let mut kept = lock(&self.0);
        // Forget definitions nobody holds any more.
        kept.retain(|(w, _)| w.strong_count() > 0);
        if let Some((_, c)) = kept
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(def)))
        {
            return Ok(Arc::clone(c));
        }
        let compiled = Arc::new(Compiled::new(def)?);
        if kept.len() >= PLANS_KEPT {
            kept.pop_front();
        }
        kept.push_back((Arc::downgrade(def), Arc::clone(&compiled)));
        Ok(compiled)
    }

    /// How many definitions it holds (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

struct Ctx {
    store: Arc<dyn ProgressStore>,
    runner: Arc<dyn StepRunner>,
    observer: Arc<dyn SagaObserver>,
    sleeper: Arc<dyn Sleeper>,
    jitter: Arc<dyn Jitter>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("clock", &self.ctx.clock)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct StepRun {
    def: Arc<StepDef>,
    state: StepState,
    attempts: u32,
    retries_used: u32,
    output: Option<String>,
    undo: Option<Value>,
    error: Option<String>,
    checkpoint: Option<String>,
    /// Committed, or failed with no retry to come.
    done: bool,
    cancelled: bool,
    skipped: bool,
    started: Option<Duration>,
    elapsed: Duration,
}

#[derive(Debug)]
struct Run {
    saga: SagaId,
    def: Arc<SagaDefinition>,
    compiled: Arc<Compiled>,
    state: SagaState,
    steps: Vec<StepRun>,
    commit_order: Vec<usize>,
    group_resolved: Vec<Option<bool>>,
    group_started: Vec<bool>,
    failures: Vec<EscalatedStep>,
    reason: Option<String>,
}

impl Run {
    fn new(saga: SagaId, def: Arc<SagaDefinition>, compiled: Arc<Compiled>) -> Run {
        let steps = compiled
            .steps
            .iter()
            .map(|s| StepRun {
                def: Arc::clone(s),
                state: StepState::Pending,
                attempts: 0,
                retries_used: 0,
                output: None,
                undo: None,
                error: None,
                checkpoint: None,
                done: false,
                cancelled: false,
                skipped: false,
                started: None,
                elapsed: Duration::ZERO,
            })
            .collect();
        let groups = def.fanout.len();
        Run {
            saga,
            def,
            compiled,
            state: SagaState::Running,
            steps,
            commit_order: Vec::new(),
            group_resolved: vec![None; groups],
            group_started: vec![false; groups],
            failures: Vec::new(),
            reason: None,
        }
    }

    /// A run of `def` compiled now (no cache).
    fn uncached(saga: SagaId, def: Arc<SagaDefinition>) -> Result<Run, DefinitionError> {
        let compiled = Arc::new(Compiled::new(&def)?);
        Ok(Run::new(saga, def, compiled))
    }

    fn corrupt(&self, message: impl Into<String>) -> EngineError {
        EngineError::Corrupt {
            saga: self.saga.to_string(),
            message: message.into(),
        }
    }

    fn step_ix(&self, id: &str) -> Result<usize, EngineError> {
        self.compiled
            .index
            .get(id)
            .copied()
            .ok_or_else(|| self.corrupt(format!("unknown step {id:?}")))
    }

    fn group_ix(&self, id: &str) -> Result<usize, EngineError> {
        self.compiled
            .group_index
            .get(id)
            .copied()
            .ok_or_else(|| self.corrupt(format!("unknown fan-out group {id:?}")))
    }

    fn step_to(&mut self, i: usize, to: StepState) -> Result<(), EngineError> {
        let from = self.steps[i].state;
        self.steps[i].state = from
            .transition(to)
            .map_err(|e| self.transition_error(i, e))?;
        Ok(())
    }

    fn transition_error(&self, i: usize, e: TransitionError) -> EngineError {
        self.corrupt(format!("step {:?}: {e}", self.steps[i].def.id))
    }

    fn saga_to(&mut self, to: SagaState) -> Result<(), EngineError> {
        self.state = self
            .state
            .transition(to)
            .map_err(|e| self.corrupt(e.to_string()))?;
        Ok(())
    }

    /// Applies one record to the state, through the state machines.
    fn apply(&mut self, rec: &SagaRecord) -> Result<(), EngineError> {
        match rec {
            SagaRecord::Created { .. } => {
                return Err(self.corrupt("a Created record in the middle of a run"));
            }
            SagaRecord::StepStarted { step, attempt } => {
                let i = self.step_ix(step)?;
                if self.steps[i].state == StepState::Failed {
                    // The retry edge: only reachable after a StepFailed that
                    // granted a retry (or an interruption).
                    if self.steps[i].done {
                        return Err(
                            self.corrupt(format!("step {step:?} restarted after its last attempt"))
                        );
                    }
                    self.step_to(i, StepState::Pending)?;
                }
                self.step_to(i, StepState::Executing)?;
                self.steps[i].attempts = *attempt;
            }
            SagaRecord::StepCommitted {
                step, output, undo, ..
            } => {
                let i = self.step_ix(step)?;
                self.step_to(i, StepState::Committed)?;
                let s = &mut self.steps[i];
                s.output = Some(output.clone());
                s.undo = Some(undo.clone());
                s.error = None;
                s.done = true;
                self.commit_order.push(i);
            }
            SagaRecord::StepFailed {
                step,
                kind,
                error,
                retry_in_ms,
                interrupted,
                ..
            } => {
                let i = self.step_ix(step)?;
                match self.steps[i].state {
                    StepState::Executing => self.step_to(i, StepState::Failed)?,
                    // A branch cancelled while waiting for its retry: already failed.
                    StepState::Failed if retry_in_ms.is_none() => {}
                    from => {
                        return Err(self.transition_error(
                            i,
                            TransitionError::Step {
                                from,
                                to: StepState::Failed,
                            },
                        ));
                    }
                }
                let s = &mut self.steps[i];
                s.error = Some(error.clone());
                if retry_in_ms.is_some() && !interrupted {
                    s.retries_used += 1;
                }
                if retry_in_ms.is_none() {
                    s.done = true;
                }
                if *kind == FailureKind::Cancelled {
                    s.cancelled = true;
                }
                if *kind == FailureKind::Residue {
                    let agent = s.def.agent.clone();
                    self.failures.push(EscalatedStep {
                        step: step.clone(),
                        agent,
                        error: error.clone(),
                    });
                }
            }
            SagaRecord::StepSkipped {
                step,
                hash,
                output,
                undo,
            } => {
                let i = self.step_ix(step)?;
                // A skipped step passes through executing without running.
                self.step_to(i, StepState::Executing)?;
                self.step_to(i, StepState::Committed)?;
                let s = &mut self.steps[i];
                s.output = Some(output.clone());
                s.undo = Some(undo.clone());
                s.checkpoint = Some(hash.clone());
                s.done = true;
                s.skipped = true;
                self.commit_order.push(i);
            }
            SagaRecord::CheckpointSaved { step, hash } => {
                let i = self.step_ix(step)?;
                if self.steps[i].state != StepState::Committed {
                    return Err(self.corrupt(format!("checkpoint of uncommitted step {step:?}")));
                }
                self.steps[i].checkpoint = Some(hash.clone());
            }
            SagaRecord::FanoutStarted { group, .. } => {
                let g = self.group_ix(group)?;
                self.group_started[g] = true;
            }
            SagaRecord::FanoutResolved {
                group,
                cancelled,
                satisfied,
                ..
            } => {
                let g = self.group_ix(group)?;
                self.group_resolved[g] = Some(*satisfied);
                for c in cancelled {
                    // Branches that never started stay pending, marked cancelled.
                    let i = self.step_ix(c)?;
                    self.steps[i].done = true;
                    self.steps[i].cancelled = true;
                }
            }
            SagaRecord::Compensating { reason } => {
                self.saga_to(SagaState::Compensating)?;
                self.reason = Some(reason.clone());
            }
            SagaRecord::StepCompensating { step } => {
                let i = self.step_ix(step)?;
                self.step_to(i, StepState::Compensating)?;
            }
            SagaRecord::StepCompensated { step } => {
                let i = self.step_ix(step)?;
                self.step_to(i, StepState::Compensated)?;
            }
            SagaRecord::StepCompensationFailed { step, error } => {
                let i = self.step_ix(step)?;
                self.step_to(i, StepState::CompensationFailed)?;
                self.steps[i].error = Some(error.clone());
                self.failures.push(EscalatedStep {
                    step: step.clone(),
                    agent: self.steps[i].def.agent.clone(),
                    error: error.clone(),
                });
            }
            SagaRecord::Finished { state } => self.saga_to(*state)?,
        }
        Ok(())
    }

    /// Applies, appends and reports a record; only then may the engine act on it.
    fn commit(&mut self, ctx: &Ctx, rec: SagaRecord) -> Result<(), EngineError> {
        self.apply(&rec)?;
        ctx.store.append(&self.saga, &rec)?;
        tracing::debug!(saga = %self.saga, event = rec.event_type(), "saga record");
        ctx.observer.record(&self.saga, &rec);
        Ok(())
    }

    fn finish_step(&mut self, i: usize, now: Duration) {
        let s = &mut self.steps[i];
        if let Some(t) = s.started {
            s.elapsed = now.saturating_sub(t);
        }
    }

    fn unit_done(&self, u: usize) -> bool {
        match self.compiled.plan.units[u] {
            Unit::Step(i) => self.steps[i].state == StepState::Committed,
            Unit::Group(g) => self.group_resolved[g] == Some(true),
        }
    }

    /// Why the saga must stop, if a lone step failed for good or a group's policy failed.
    fn failure(&self) -> Option<String> {
        // An attempt that left changes it could not undo (in a fan-out
        // group whose policy is still met, say) stops the saga: it
        // compensates and escalates rather than completing over them.
        if let Some(f) = self.failures.first() {
            return Some(format!(
                "step {:?} left changes it could not undo: {}",
                f.step, f.error
            ));
        }
        for u in &self.compiled.plan.units {
            match *u {
                Unit::Step(i) => {
                    let s = &self.steps[i];
                    if s.done && s.state == StepState::Failed {
                        return Some(format!(
                            "step {:?} failed: {}",
                            s.def.id,
                            s.error.as_deref().unwrap_or("")
                        ));
                    }
                }
                Unit::Group(g) => {
                    if self.group_resolved[g] == Some(false) {
                        return Some(format!(
                            "fan-out group {:?} did not satisfy its policy",
                            self.def.fanout[g].id
                        ));
                    }
                }
            }
        }
        None
    }

    /// Records every step a crash left executing as interrupted.
    fn interrupt_executing(&mut self, ctx: &Ctx, retry: bool) -> Result<(), EngineError> {
        for i in 0..self.steps.len() {
            if self.steps[i].state == StepState::Executing {
                let rec = SagaRecord::StepFailed {
                    step: self.steps[i].def.id.clone(),
                    attempt: self.steps[i].attempts,
                    kind: FailureKind::Failed,
                    error: INTERRUPTED.to_owned(),
                    retry_in_ms: retry.then_some(0),
                    interrupted: true,
                };
                self.commit(ctx, rec)?;
            }
        }
        Ok(())
    }

    /// The committed, checkpointed steps a replay may skip: id → (hash, output, undo).
    fn carry(&self) -> HashMap<String, (String, String, Value)> {
        self.steps
            .iter()
            .filter(|s| s.state == StepState::Committed)
            .filter_map(|s| {
                Some((
                    s.def.id.clone(),
                    (
                        s.checkpoint.clone()?,
                        s.output.clone().unwrap_or_default(),
                        s.undo.clone().unwrap_or(Value::Null),
                    ),
                ))
            })
            .collect()
    }

    fn report(&self) -> SagaReport {
        SagaReport {
            saga: self.saga.clone(),
            state: self.state,
            steps: self
                .steps
                .iter()
                .map(|s| StepReport {
                    id: s.def.id.clone(),
                    state: s.state,
                    attempts: s.attempts,
                    output: s.output.clone(),
                    error: s.error.clone(),
                    elapsed: s.elapsed,
                    skipped: s.skipped,
                })
                .collect(),
        }
    }
}

/// Rebuilds the latest run from a saga's records.
/// The report a saga's records amount to, without running anything (what
/// [`Engine::report`] answers from its store): for tools that read a store
/// directly.
///
/// # Errors
/// [`EngineError::NotFound`] for no records, [`EngineError::Corrupt`] for
/// records that break the state machines.
pub fn report_of(saga: &SagaId, records: &[SagaRecord]) -> Result<SagaReport, EngineError> {
    Ok(rebuild(saga, records)?.report())
}

fn rebuild(saga: &SagaId, records: &[SagaRecord]) -> Result<Run, EngineError> {
    let mut run: Option<Run> = None;
    for rec in records {
        match (rec, run.as_mut()) {
            (SagaRecord::Created { definition, .. }, _) => {
                run = Some(
                    Run::uncached(saga.clone(), definition.clone()).map_err(|e| {
                        EngineError::Corrupt {
                            saga: saga.to_string(),
                            message: format!("stored definition is invalid: {e}"),
                        }
                    })?,
                );
            }
            (_, Some(r)) => r.apply(rec)?,
            (_, None) => {
                return Err(EngineError::Corrupt {
                    saga: saga.to_string(),
                    message: format!("first record is {}, not Created", rec.event_type()),
                });
            }
        }
    }
    run.ok_or_else(|| EngineError::NotFound {
        saga: saga.to_string(),
    })
}

type Shared = Arc<Mutex<Run>>;

impl Engine {
    /// An engine over these collaborators. `clock` times steps and stamps records.
    pub fn new(
        store: Arc<dyn ProgressStore>,
        runner: Arc<dyn StepRunner>,
        observer: Arc<dyn SagaObserver>,
        sleeper: Arc<dyn Sleeper>,
        jitter: Arc<dyn Jitter>,
        clock: Arc<dyn Clock>,
    ) -> Engine {
        Engine {
            ctx: Arc::new(Ctx {
                store,
                runner,
                observer,
                sleeper,
                jitter,
                clock,
            }),
            plans: Arc::default(),
        }
    }

    /// This engine with `plans` as its cache of validated definitions:
    /// engines made for one run each can share one, so a shared definition
    /// run again is not validated again.
    #[must_use]
    pub fn with_plans(mut self, plans: Arc<PlanCache>) -> Engine {
        self.plans = plans;
        self
    }

    /// Runs `definition` as saga `saga` to a final state. A saga id whose
    /// previous run finished is replayed: steps with a valid checkpoint are skipped.
    ///
    /// # Errors
    /// [`EngineError::Definition`] for an invalid definition,
    /// [`EngineError::Unfinished`] if a previous run has not finished,
    /// [`EngineError::Store`] if a record could not be stored (the saga stops
    /// there and can be resumed), [`EngineError::Corrupt`] for inconsistent records.
    pub async fn run(
        &self,
        saga: SagaId,
        definition: impl Into<Arc<SagaDefinition>>,
    ) -> Result<SagaReport, EngineError> {
        let definition = definition.into();
        let compiled = self.plans.get(&definition)?;
        let mut run = Run::new(saga.clone(), Arc::clone(&definition), compiled);
        let records = self.ctx.store.load(&saga)?;
        let carry = if records.is_empty() {
            HashMap::new()
        } else {
            let prev = rebuild(&saga, &records)?;
            if !prev.state.is_final() {
                return Err(EngineError::Unfinished {
                    saga: saga.to_string(),
                    state: prev.state,
                });
            }
            prev.carry()
        };
        let at_ms = u64::try_from(self.ctx.clock.now().as_millis()).unwrap_or(u64::MAX);
        let created = SagaRecord::Created {
            saga: saga.clone(),
            definition,
            at_ms,
        };
        self.ctx.store.append(&saga, &created)?;
        self.ctx.observer.record(&saga, &created);
        for i in 0..run.steps.len() {
            let def = Arc::clone(&run.steps[i].def);
            let Some(goal) = &def.checkpoint else {
                continue;
            };
            if let Some((hash, output, undo)) = carry.get(&def.id)
                && *hash == checkpoint_hash(goal, &def.id)
            {
                let rec = SagaRecord::StepSkipped {
                    step: def.id.clone(),
                    hash: hash.clone(),
                    output: output.clone(),
                    undo: undo.clone(),
                };
                run.commit(&self.ctx, rec)?;
            }
        }
        let shared = Arc::new(Mutex::new(run));
        drive(&self.ctx, &shared).await?;
        Ok(lock(&shared).report())
    }

    /// Continues a saga after a restart from its records. Committed steps and
    /// valid checkpoints never run again; a step a crash left executing is
    /// recorded failed ([`INTERRUPTED`]) and retried without using up a retry,
    /// or, under `on_crash: compensate`, the saga is compensated instead. A
    /// finished saga returns its report and does nothing.
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::Store`], [`EngineError::Corrupt`].
    pub async fn resume(&self, saga: &SagaId) -> Result<SagaReport, EngineError> {
        let records = self.ctx.store.load(saga)?;
        let mut run = rebuild(saga, &records)?;
        if run.state.is_final() {
            return Ok(run.report());
        }
        let compensate = run.def.on_crash == CrashPolicy::Compensate;
        let running = run.state == SagaState::Running;
        run.interrupt_executing(&self.ctx, running && !compensate)?;
        let shared = Arc::new(Mutex::new(run));
        if running && compensate {
            fail(
                &self.ctx,
                &shared,
                "host crash (on_crash: compensate)".to_owned(),
            )
            .await?;
        } else {
            drive(&self.ctx, &shared).await?;
        }
        Ok(lock(&shared).report())
    }

    /// Compensates a saga on an operator's order: every committed step, in
    /// reverse commit order. Meant for a saga no engine is driving (stuck, or
    /// left by a crash); a finished saga returns its report and does nothing.
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::Store`], [`EngineError::Corrupt`].
    pub async fn compensate(&self, saga: &SagaId, reason: &str) -> Result<SagaReport, EngineError> {
        let records = self.ctx.store.load(saga)?;
        let mut run = rebuild(saga, &records)?;
        if run.state.is_final() {
            return Ok(run.report());
        }
        run.interrupt_executing(&self.ctx, false)?;
        let shared = Arc::new(Mutex::new(run));
        fail(&self.ctx, &shared, format!("operator: {reason}")).await?;
        Ok(lock(&shared).report())
    }

    /// The saga's current report from its records, without running anything.
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::Store`], [`EngineError::Corrupt`].
    pub fn report(&self, saga: &SagaId) -> Result<SagaReport, EngineError> {
        let records = self.ctx.store.load(saga)?;
        Ok(rebuild(saga, &records)?.report())
    }
}

/// Runs the saga from its current state to a final one.
async fn drive(ctx: &Arc<Ctx>, run: &Shared) -> Result<(), EngineError> {
    loop {
        enum Next {
            Fail(String),
            Compensate,
            Step(usize),
            Group(usize),
            Done,
        }
        let next = {
            let r = lock(run);
            if r.state.is_final() {
                return Ok(());
            }
            if r.state == SagaState::Compensating {
                Next::Compensate
            } else if let Some(reason) = r.failure() {
                Next::Fail(reason)
            } else {
                let plan = &r.compiled.plan;
                let n = plan.units.len();
                let ready = (0..n)
                    .find(|&u| !r.unit_done(u) && plan.deps[u].iter().all(|&d| r.unit_done(d)));
                match ready {
                    Some(u) => match plan.units[u] {
                        Unit::Step(i) => Next::Step(i),
                        Unit::Group(g) => Next::Group(g),
                    },
                    None if (0..n).all(|u| r.unit_done(u)) => Next::Done,
                    None => return Err(r.corrupt("no step can run but the saga is not done")),
                }
            }
        };
        match next {
            Next::Fail(reason) => return fail(ctx, run, reason).await,
            Next::Compensate => return compensate_all(ctx, run).await,
            Next::Step(i) => {
                drive_step(Arc::clone(ctx), Arc::clone(run), i, None).await?;
            }
            Next::Group(g) => run_group(ctx, run, g).await?,
            Next::Done => {
                let mut r = lock(run);
                return r.commit(
                    ctx,
                    SagaRecord::Finished {
                        state: SagaState::Completed,
                    },
                );
            }
        }
    }
}

/// Runs one step until it commits or fails for good; `Ok(true)` if it committed.
/// Set once when the rest of a fan-out group is cancelled.
type Cancel = Option<tokio::sync::watch::Receiver<bool>>;

/// Serde for the `Arc`'d definition in [`SagaRecord::Created`], in the
/// plain definition's form (serde's own `Arc` support would need a feature
/// that rebuilds every crate depending on serde).
mod shared_definition {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::definition::SagaDefinition;

    pub(super) fn serialize<S: Serializer>(
        d: &Arc<SagaDefinition>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        d.as_ref().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<SagaDefinition>, D::Error> {
        SagaDefinition::deserialize(d).map(Arc::new)
    }
}

/// Resolves once `cancel` is set (never, without one).
async fn cancelled(cancel: &mut Cancel) {
    match cancel {
        Some(rx) => {
            // A dropped sender also means nobody waits for the branch any more.
            let _ = rx.wait_for(|c| *c).await;
        }
        None => std::future::pending().await,
    }
}

async fn drive_step(
    ctx: Arc<Ctx>,
    run: Shared,
    i: usize,
    mut cancel: Cancel,
) -> Result<bool, EngineError> {
    loop {
        if cancel.as_ref().is_some_and(|rx| *rx.borrow()) {
            // Cancelled between attempts: `run_group` records it.
            return Ok(false);
        }
        let call = {
            let mut r = lock(&run);
            let attempt = r.steps[i].attempts.saturating_add(1);
            let step = Arc::clone(&r.steps[i].def);
            r.commit(
                &ctx,
                SagaRecord::StepStarted {
                    step: step.id.clone(),
                    attempt,
                },
            )?;
            let now = ctx.clock.now();
            r.steps[i].started.get_or_insert(now);
            StepCall {
                saga: r.saga.clone(),
                deadline: Duration::from_secs(u64::from(step.timeout_secs)),
                isolation: r.def.isolation,
                step,
                attempt,
            }
        };
        let (id, attempt) = (call.step.id.clone(), call.attempt);
        let result = if cancel.is_some() {
            let execute = ctx.runner.execute(call.clone());
            tokio::select! {
                biased;
                r = execute => r,
                () = cancelled(&mut cancel) => {
                    // `execute` is dropped by now: the runner cleans up
                    // after it before the attempt is recorded cancelled.
                    match ctx.runner.abandoned(call).await {
                        Ok(()) => Err(StepFailure {
                            kind: FailureKind::Cancelled,
                            message: CANCELLED.to_owned(),
                        }),
                        Err(left) => Err(StepFailure {
                            kind: FailureKind::Residue,
                            message: format!("{CANCELLED}, and what it changed could not all be undone: {left}"),
                        }),
                    }
                }
            }
        } else {
            ctx.runner.execute(call).await
        };
        let retry_in = {
            let mut r = lock(&run);
            match result {
                Ok(done) => {
                    r.commit(
                        &ctx,
                        SagaRecord::StepCommitted {
                            step: id.clone(),
                            attempt,
                            output: done.output,
                            undo: done.undo,
                        },
                    )?;
                    if let Some(goal) = r.steps[i].def.checkpoint.clone() {
                        let hash = checkpoint_hash(&goal, &id);
                        r.commit(&ctx, SagaRecord::CheckpointSaved { step: id, hash })?;
                    }
                    r.finish_step(i, ctx.clock.now());
                    return Ok(true);
                }
                Err(f) => {
                    let s = &r.steps[i];
                    let retry = f.kind.retryable() && s.retries_used < s.def.retries;
                    let retry_in_ms = retry.then(|| {
                        r.def
                            .backoff
                            .delay_ms(s.retries_used + 1, ctx.jitter.sample())
                    });
                    r.commit(
                        &ctx,
                        SagaRecord::StepFailed {
                            step: id,
                            attempt,
                            kind: f.kind,
                            error: capped(f.message),
                            retry_in_ms,
                            interrupted: false,
                        },
                    )?;
                    r.finish_step(i, ctx.clock.now());
                    match retry_in_ms {
                        Some(ms) => Duration::from_millis(ms),
                        None => return Ok(false),
                    }
                }
            }
        };
        tokio::select! {
            () = ctx.sleeper.sleep(retry_in) => {}
            () = cancelled(&mut cancel) => return Ok(false),
        }
    }
}

/// Why a cancelled fan-out branch failed.
const CANCELLED: &str = "cancelled: another branch of its group succeeded";

/// Runs a fan-out group's unfinished branches together and resolves it by its policy.
async fn run_group(ctx: &Arc<Ctx>, run: &Shared, g: usize) -> Result<(), EngineError> {
    let (group, policy, cancel_rest, branches, to_run) = {
        let mut r = lock(run);
        let f = r.def.fanout[g].clone();
        let branches: Vec<usize> = f
            .branches
            .iter()
            .map(|b| r.step_ix(b))
            .collect::<Result<_, _>>()?;
        if !r.group_started[g] {
            r.commit(
                ctx,
                SagaRecord::FanoutStarted {
                    group: f.id.clone(),
                    branches: f.branches.clone(),
                },
            )?;
        }
        let to_run: Vec<usize> = branches
            .iter()
            .copied()
            .filter(|&i| !r.steps[i].done)
            .collect();
        (f.id, f.policy, f.cancel_rest, branches, to_run)
    };
    let cancels = policy == FanoutPolicy::Any && cancel_rest;
    let already_won = {
        let r = lock(run);
        branches
            .iter()
            .any(|&i| r.steps[i].state == StepState::Committed)
    };
    let mut panicked = Vec::new();
    let mut cancel_sent = false;
    if !(cancels && already_won) {
        let mut set = JoinSet::new();
        let mut task_step = HashMap::new();
        // Cancelling asks the other branches to stop and waits for them, so
        // that what a cancelled attempt changed is undone before the group
        // resolves.
        let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
        for &i in &to_run {
            let cancel = cancels.then(|| cancel_rx.clone());
            let h = set.spawn(drive_step(Arc::clone(ctx), Arc::clone(run), i, cancel));
            task_step.insert(h.id(), i);
        }
        let mut first_error = None;
        while let Some(res) = set.join_next_with_id().await {
            match res {
                Ok((_, Ok(true))) if cancels => {
                    cancel_tx.send_replace(true);
                    cancel_sent = true;
                }
                Ok((_, Ok(_))) => {}
                Ok((_, Err(e))) => {
                    set.abort_all();
                    first_error.get_or_insert(e);
                }
                Err(e) if e.is_panic() => {
                    if let Some(&i) = task_step.get(&e.id()) {
                        panicked.push(i);
                    }
                }
                Err(_) => {}
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    let mut r = lock(run);
    for &i in &to_run {
        let s = &r.steps[i];
        if s.done || s.state == StepState::Pending {
            continue;
        }
        let (kind, error) = if panicked.contains(&i) {
            (FailureKind::Failed, "the step runner panicked".to_owned())
        } else {
            (FailureKind::Cancelled, CANCELLED.to_owned())
        };
        let rec = SagaRecord::StepFailed {
            step: s.def.id.clone(),
            attempt: s.attempts,
            kind,
            error,
            retry_in_ms: None,
            interrupted: false,
        };
        r.commit(ctx, rec)?;
        r.finish_step(i, ctx.clock.now());
    }
    let (mut succeeded, mut failed, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
    for &i in &branches {
        let s = &r.steps[i];
        let id = s.def.id.clone();
        if s.state == StepState::Committed {
            succeeded.push(id);
        } else if s.cancelled
            || (cancels && already_won && to_run.contains(&i))
            // Cancelled before its first attempt started.
            || (cancel_sent && s.state == StepState::Pending)
        {
            cancelled.push(id);
        } else {
            failed.push(id);
        }
    }
    let satisfied = policy.satisfied(succeeded.len(), branches.len());
    r.commit(
        ctx,
        SagaRecord::FanoutResolved {
            group,
            succeeded,
            failed,
            cancelled,
            satisfied,
        },
    )
}

/// Ends a failed saga: compensation if anything is committed, else `failed`.
async fn fail(ctx: &Arc<Ctx>, run: &Shared, reason: String) -> Result<(), EngineError> {
    {
        let mut r = lock(run);
        if r.state == SagaState::Running {
            let anything = r
                .commit_order
                .iter()
                .any(|&i| r.steps[i].state == StepState::Committed);
            // A failed step that left changes behind escalates even when
            // nothing committed: the saga goes through compensating.
            if !anything && r.failures.is_empty() {
                return r.commit(
                    ctx,
                    SagaRecord::Finished {
                        state: SagaState::Failed,
                    },
                );
            }
            r.commit(
                ctx,
                SagaRecord::Compensating {
                    reason: capped(reason),
                },
            )?;
        }
    }
    compensate_all(ctx, run).await
}

/// Compensates every committed step in reverse commit order, carrying on past
/// failures; any failure escalates.
async fn compensate_all(ctx: &Arc<Ctx>, run: &Shared) -> Result<(), EngineError> {
    let order: Vec<usize> = lock(run).commit_order.iter().rev().copied().collect();
    for i in order {
        let call = {
            let mut r = lock(run);
            match r.steps[i].state {
                StepState::Committed => {
                    let step = r.steps[i].def.id.clone();
                    r.commit(ctx, SagaRecord::StepCompensating { step })?;
                }
                // A compensation a crash interrupted runs again.
                StepState::Compensating => {}
                _ => continue,
            }
            let s = &r.steps[i];
            CompensateCall {
                saga: r.saga.clone(),
                step: Arc::clone(&s.def),
                output: s.output.clone().unwrap_or_default(),
                undo: s.undo.clone().unwrap_or(Value::Null),
            }
        };
        let step = call.step.id.clone();
        let result = ctx.runner.compensate(call).await;
        let mut r = lock(run);
        match result {
            Ok(()) => r.commit(ctx, SagaRecord::StepCompensated { step })?,
            Err(e) => r.commit(
                ctx,
                SagaRecord::StepCompensationFailed {
                    step,
                    error: capped(e.message),
                },
            )?,
        }
    }
    let mut r = lock(run);
    if r.failures.is_empty() {
        r.commit(
            ctx,
            SagaRecord::Finished {
                state: SagaState::Failed,
            },
        )
    } else {
        // Tell liability before the final record: a crash in between makes a
        // resume escalate again, so the hook runs at least once.
        tracing::warn!(saga = %r.saga, failures = r.failures.len(), "saga escalated");
        ctx.observer.escalated(&r.saga, &r.failures);
        r.commit(
            ctx,
            SagaRecord::Finished {
                state: SagaState::Escalated,
            },
        )
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
