//! Sagas in a session: each step runs inside its agent's live instance (its
//! `saga-participant.execute` export, under its ring) or as a host action in
//! the agent's name; everything a step changes is recorded and undone on
//! compensation.
//!
//! The engine ([`ahv_saga::Engine`]) decides what runs when; this module is
//! its [`StepRunner`] and [`SagaObserver`] over a session:
//!
//! - **execute** (via `agent`): the agent's `execute(step, input)` on its live
//!   instance, within the step's deadline (or the ring's, if shorter), enforced
//!   preemptively by the epoch ticker. The call's change journal (files,
//!   state, actions, effects) becomes the step's undo data, persisted by the
//!   engine with the commit. A failed or trapped attempt's partial changes are
//!   undone at once, so a retry starts from where the step began. A ring
//!   breach is punished by the breach policy, like any other, and not retried.
//! - **execute** (via `host`): the host action named by the step, run as the
//!   agent if its effective ring has the capability (`actions` for a
//!   reversible action, `effects` for an effect).
//! - **compensate**: the agent's own `compensate(step, input, output)` if it
//!   exports one and is still in the session, then the host undoes the step's
//!   recorded changes newest first. An effect cannot be undone, nor can a
//!   change whose file or key changed since: either is a compensation
//!   failure, and the saga escalates.
//! - **observe**: every record becomes a `saga.*` event (and so, in an
//!   audited session, an audit delta) with the step's agent and one trace id
//!   per saga run; an escalation also calls the hypervisor's
//!   [`EscalationHook`]s — where the liability engine plugs in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahv_core::event::EventPayload;
use ahv_core::{AgentId, Capability, EventId, SessionId, TraceId};
use ahv_governance::actions::ActionRegistry;
use ahv_governance::files::Caller;
use ahv_governance::journal::{Change, UndoFailure, undo_changes};
use ahv_governance::session::SessionState;
use ahv_governance::state::Isolation as StateIsolation;
use ahv_runtime::{AgentError, TrapCause};
use ahv_saga::{
    BoxFuture, CompensateCall, CompensationFailure, Engine, EngineError, EscalatedStep,
    FailureKind, Isolation, SagaDefinition, SagaId, SagaObserver, SagaRecord, SagaReport,
    SagaState, StepCall, StepDef, StepDone, StepFailure, StepRunner, Via,
};
use ahv_security::rate::CallClass;
use serde::{Deserialize, Serialize};

use crate::saga_redo::{Redo, Replayed};
use crate::{Hypervisor, HypervisorError, SessionEntry, lock};

/// Told when a saga escalates (a compensation failed, so some of its changes
/// remain). The liability engine implements it; the hypervisor also emits
/// `saga.escalated` and logs.
pub trait EscalationHook: Send + Sync {
    /// Called once per escalation, before the saga's final record is
    /// written (so at least once even if the host crashes right after).
    fn escalated(&self, escalation: &Escalation);
}

/// What an [`EscalationHook`] is told.
#[derive(Debug, Clone)]
pub struct Escalation {
    /// The session the saga ran in.
    pub session: SessionId,
    /// The saga.
    pub saga: SagaId,
    /// Each step whose compensation failed, with its agent and why.
    pub failures: Vec<EscalatedStep>,
}

/// The undo data a step commits: the changes its call made, and, under a
/// store that survives restarts, its redo (opaque to the engine, persisted
/// with the commit).
#[derive(Debug, Default, Serialize, Deserialize)]
struct StepUndo {
    changes: Vec<Change>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redo: Option<Redo>,
}

/// [`StepUndo`] by reference, for encoding without a copy.
#[derive(Serialize)]
struct StepUndoRef<'a> {
    changes: &'a [Change],
    #[serde(skip_serializing_if = "Option::is_none")]
    redo: Option<&'a Redo>,
}

impl StepUndo {
    fn encode(changes: &[Change], redo: Option<&Redo>) -> serde_json::Value {
        // A step that changed nothing commits no undo data at all.
        if changes.is_empty() && redo.is_none() {
            return serde_json::Value::Null;
        }
        // A slice of plain data always encodes.
        serde_json::to_value(StepUndoRef { changes, redo }).unwrap_or(serde_json::Value::Null)
    }

    fn decode(v: &serde_json::Value) -> Result<StepUndo, String> {
        if v.is_null() {
            return Ok(StepUndo::default());
        }
        serde_json::from_value::<StepUndo>(v.clone())
            .map_err(|e| format!("the step's recorded changes do not decode: {e}"))
    }
}

/// Runs a saga's steps in one session.
struct SessionRunner {
    hv: Hypervisor,
    entry: Arc<SessionEntry>,
    trace: TraceId,
    /// Each step's agent, validated once per run.
    agents: Arc<StepAgents>,
    /// The undo data of steps whose redo was replayed into this session
    /// after a restart (it replaces their recorded changes).
    replayed: Arc<HashMap<String, Replayed>>,
    /// Bytes of step outputs and undo data this run has committed (at most
    /// `SagaSettings::max_bytes`).
    kept: std::sync::atomic::AtomicU64,
}

/// Most bytes of step outputs and undo data one run of a saga commits, by
/// default (`HypervisorBuilder::max_saga_bytes`): the engine holds them in
/// memory and the journal on disk. Each step is bounded
/// ([`MAX_STEP_OUTPUT`], [`MAX_STEP_UNDO`]), but a definition may have 1,024
/// steps: unbounded, a guest filling every step's limits made a saga of
/// ~5 GiB. The step that would pass it is refused (its changes undone).
pub(crate) const MAX_SAGA_KEPT: u64 = 64 << 20;

/// Largest step output kept (the same bound as a step's input): what the
/// journal keeps with the commit and hands back to `compensate`.
const MAX_STEP_OUTPUT: usize = ahv_runtime::MAX_INPUT_BYTES;

/// Largest undo data one step may commit, encoded: well under the saga
/// journal's largest record, so a commit is never refused for its size.
const MAX_STEP_UNDO: usize = 4 << 20;

/// The step as the agent's `saga-participant` export is told it (attempt 0:
/// a compensation).
fn wit_step(saga: &SagaId, step: &StepDef, attempt: u32) -> ahv_runtime::StepCall {
    ahv_runtime::StepCall {
        saga_id: saga.as_str().to_owned(),
        step_id: step.id.clone(),
        action: step.action.clone(),
        attempt,
    }
}

fn failure(kind: FailureKind, message: impl Into<String>) -> StepFailure {
    StepFailure {
        message: message.into(),
        kind,
    }
}

/// Each step's agent by step id: validated once per run by
/// [`Hypervisor::saga_session`] and shared by the runner and the observer,
/// so a step's records and calls neither re-validate nor re-allocate its
/// agent's id.
type StepAgents = HashMap<String, AgentId, foldhash::fast::RandomState>;

impl SessionRunner {
    fn session(&self) -> &SessionId {
        self.entry.core.id()
    }

    /// The agent that runs `step` (validated when the run began; checked
    /// here only for a step the run did not validate).
    fn agent_of(&self, step: &StepDef) -> Result<AgentId, ahv_core::IdError> {
        match self.agents.get(step.id.as_str()) {
            Some(agent) if agent.as_str() == step.agent => Ok(agent.clone()),
            _ => AgentId::new(step.agent.as_str()),
        }
    }

    fn registry(&self, agent: &AgentId) -> Arc<ActionRegistry> {
        self.hv
            .inner
            .granted
            .get(agent)
            .unwrap_or(&self.hv.inner.actions)
            .clone()
    }

    /// Undoes `changes` newest first in `agent`'s name, at its ring now (a
    /// ring-3 stand-in once it is gone: undo needs no capability of its own).
    fn undo(&self, agent: &AgentId, changes: &[Change]) -> Vec<UndoFailure> {
        let ring = self
            .hv
            .ring(self.session(), agent)
            .unwrap_or(ahv_core::Ring::Sandbox);
        let who = Caller {
            agent,
            ring,
            trace: self.trace,
        };
        undo_changes(&self.entry.core, &self.registry(agent), who, changes)
    }

    /// Undoes the partial changes of a failed attempt; a change that cannot
    /// be undone is reported in the message, and the result says whether
    /// anything remains.
    fn undo_partial(&self, agent: &AgentId, changes: &[Change], message: String) -> (String, bool) {
        if changes.is_empty() {
            return (message, false);
        }
        let failures = self.undo(agent, changes);
        if failures.is_empty() {
            return (message, false);
        }
        let left: Vec<String> = failures.iter().map(|f| f.error.to_string()).collect();
        tracing::warn!(session = %self.session(), %agent, left = ?left, "a failed saga step's changes could not all be undone");
        let message = format!(
            "{message} (and {} of its changes could not be undone: {})",
            left.len(),
            left.join("; ")
        );
        (message, true)
    }

    /// A failed attempt: its partial changes undone; if some remain, the
    /// failure is [`FailureKind::Residue`] (not retried; the saga escalates).
    fn failed_attempt(
        &self,
        agent: &AgentId,
        changes: &[Change],
        kind: FailureKind,
        message: String,
    ) -> StepFailure {
        match self.undo_partial(agent, changes, message) {
            (message, true) => failure(FailureKind::Residue, message),
            (message, false) => failure(kind, message),
        }
    }

    async fn execute(self: Arc<Self>, call: StepCall) -> Result<StepDone, StepFailure> {
        let agent = self.agent_of(&call.step).map_err(|e| {
            failure(
                FailureKind::Breach,
                format!("step {}: agent: {e}", call.step.id),
            )
        })?;
        match call.step.via {
            Via::Agent => self.execute_in_agent(&call, &agent).await,
            Via::Host => self.execute_host_action(&call, &agent),
        }
    }

    /// Runs the step in its agent; if that agent is gone, or is killed
    /// while it runs the step, in its registered substitute instead (the
    /// killed attempt's partial changes undone first).
    async fn execute_in_agent(
        &self,
        call: &StepCall,
        agent: &AgentId,
    ) -> Result<StepDone, StepFailure> {
        let saga = call.saga.as_str().to_owned();
        let own = lock(&self.entry.agents).get(agent).cloned();
        let (runner, slot) = match own {
            Some(slot) => (agent.clone(), slot),
            None => match self.hv.substitute_slot(&self.entry, agent) {
                Some((sub, slot)) => {
                    self.hv
                        .report_handoff(self.session(), agent, &saga, &call.step.id, &sub);
                    (sub, slot)
                }
                None => {
                    return Err(failure(
                        FailureKind::Cancelled,
                        format!(
                            "agent {agent} has no live instance in session {}",
                            self.session()
                        ),
                    ));
                }
            },
        };
        let first = self.attempt_in(call, &runner, &slot).await;
        match first {
            Err(f)
                if f.kind == FailureKind::Cancelled
                    && &runner == agent
                    && slot.kill.is_killed() =>
            {
                // The killed instance's attempt is over: its slot goes
                // now, so that a removed agent is not kept from joining
                // again while the substitute runs (`SessionEntry::leaving`).
                drop(slot);
                match self.hv.substitute_slot(&self.entry, agent) {
                    Some((sub, sub_slot)) => {
                        self.hv
                            .report_handoff(self.session(), agent, &saga, &call.step.id, &sub);
                        self.attempt_in(call, &sub, &sub_slot).await
                    }
                    None => Err(f),
                }
            }
            other => other,
        }
    }

    /// One attempt of the step in `agent`'s instance.
    async fn attempt_in(
        &self,
        call: &StepCall,
        agent: &AgentId,
        slot: &Arc<crate::AgentSlot>,
    ) -> Result<StepDone, StepFailure> {
        let _running = crate::handoff::Running::start(&self.entry, agent, &call.saga, &call.step);
        let step = wit_step(&call.saga, &call.step, call.attempt);
        let result = slot
            .agent
            .lock()
            .await
            .execute_step(&step, &call.step.execute, call.deadline)
            .await;
        match result {
            Ok(out) => match out.result {
                Ok(output) => self.commit(agent, output, out.changes),
                Err(message) => {
                    Err(self.failed_attempt(agent, &out.changes, FailureKind::Failed, message))
                }
            },
            Err(AgentError::Trapped { cause, changes, .. }) => {
                let kind = match &cause {
                    TrapCause::RingBreach(_) => FailureKind::Breach,
                    TrapCause::DeadlineExceeded(_) => FailureKind::Timeout,
                    TrapCause::Killed(_) => FailureKind::Cancelled,
                    _ => FailureKind::Failed,
                };
                let failed = self.failed_attempt(
                    agent,
                    changes.changes(),
                    kind,
                    format!("trapped: {cause}"),
                );
                if let TrapCause::RingBreach(b) = &cause {
                    // On its own task: a cancel of this branch meanwhile
                    // must not cut the punishment short.
                    let (hv, entry, slot, agent, b) = (
                        self.hv.clone(),
                        self.entry.clone(),
                        slot.clone(),
                        agent.clone(),
                        b.clone(),
                    );
                    let punish =
                        tokio::spawn(
                            async move { hv.after_breach(&entry, &slot, &agent, &b).await },
                        );
                    if let Err(e) = punish.await {
                        tracing::error!(error = %e, "the breach consequences task failed");
                    }
                }
                Err(failed)
            }
            Err(e @ (AgentError::Poisoned { .. } | AgentError::NotASagaParticipant { .. })) => {
                Err(failure(FailureKind::Cancelled, e.to_string()))
            }
            Err(e) => Err(failure(FailureKind::Failed, e.to_string())),
        }
    }

    /// What a successful attempt commits, if it fits: an output or undo
    /// data too large to journal fails the step (its changes undone), so a
    /// commit never fails for its size with its changes unrecorded.
    fn commit(
        &self,
        agent: &AgentId,
        output: String,
        changes: Vec<Change>,
    ) -> Result<StepDone, StepFailure> {
        let refuse = |kind: FailureKind, why: String| {
            Err(self.failed_attempt(agent, &changes, kind, format!("step refused: {why}")))
        };
        if output.len() > MAX_STEP_OUTPUT {
            return refuse(
                FailureKind::Cancelled,
                format!(
                    "its output of {} bytes is over the {MAX_STEP_OUTPUT}-byte limit",
                    output.len()
                ),
            );
        }
        // The budget of the whole run, on the output alone first: a step
        // that cannot fit keeps no redo blobs.
        let limit = self.hv.inner.sagas.max_bytes;
        let already = self.kept.load(std::sync::atomic::Ordering::Relaxed);
        if already.saturating_add(output.len() as u64) > limit {
            return refuse(
                FailureKind::Cancelled,
                format!(
                    "the saga keeps {already} bytes of step outputs and undo data already; this step's output of {} would pass its {limit}-byte limit",
                    output.len()
                ),
            );
        }
        // Under a store that survives restarts, what the step left is kept
        // (durably) before the commit names it.
        let redo = match &self.hv.inner.sagas.blobs {
            Some(blobs) if !changes.is_empty() => {
                match Redo::capture(&self.entry.core, blobs, agent, &changes) {
                    Ok(r) => Some(r),
                    // Retried, if the step has retries (a full disk may clear).
                    Err(e) => {
                        return refuse(
                            FailureKind::Failed,
                            format!("what it changed could not be kept for a restart: {e}"),
                        );
                    }
                }
            }
            _ => None,
        };
        let undo = StepUndo::encode(&changes, redo.as_ref());
        // Only changes make undo data large; a step without any skips the measuring.
        let undo_len = if changes.is_empty() {
            0
        } else {
            serde_json::to_vec(&undo).map_or(usize::MAX, |v| v.len())
        };
        if undo_len > MAX_STEP_UNDO {
            return refuse(
                FailureKind::Cancelled,
                format!(
                    "its {undo_len} bytes of undo data are over the {MAX_STEP_UNDO}-byte limit"
                ),
            );
        }
        let adding = (output.len() + undo_len) as u64;
        let before = self
            .kept
            .fetch_add(adding, std::sync::atomic::Ordering::Relaxed);
        if before.saturating_add(adding) > limit {
            self.kept
                .fetch_sub(adding, std::sync::atomic::Ordering::Relaxed);
            return refuse(
                FailureKind::Cancelled,
                format!(
                    "the saga keeps {before} bytes of step outputs and undo data already; this step's {adding} would pass its {limit}-byte limit"
                ),
            );
        }
        Ok(StepDone { output, undo })
    }

    fn execute_host_action(
        &self,
        call: &StepCall,
        agent: &AgentId,
    ) -> Result<StepDone, StepFailure> {
        let name = call.step.action.as_str();
        let registry = self.registry(agent);
        let ring = self
            .hv
            .ring(self.session(), agent)
            .map_err(|e| failure(FailureKind::Cancelled, e.to_string()))?;
        // The gate's first checks, for work the host does in the agent's name.
        let standing = self
            .hv
            .standing(self.session(), agent)
            .map_err(|e| failure(FailureKind::Cancelled, e.to_string()))?;
        if standing.is_killed() || standing.is_quarantined() {
            return Err(failure(
                FailureKind::Cancelled,
                format!(
                    "refused: agent {agent} is quarantined or killed; no host action runs in its name"
                ),
            ));
        }
        let reversible = registry.reversible_names().iter().any(|n| n == name);
        let needed = if reversible {
            Capability::Actions
        } else {
            Capability::Effects
        };
        if !self
            .hv
            .inner
            .runtime
            .policy()
            .limits(ring)
            .capabilities
            .contains(needed)
        {
            return Err(failure(
                FailureKind::Breach,
                format!(
                    "refused: agent {agent} in {ring} may not run host action {name} (it needs the {} capability)",
                    needed
                ),
            ));
        }
        // Like a guest's call to the same capability, it spends a token of
        // the agent's change budget; "not yet" is a failure the step's
        // retries (with backoff) may outlast.
        if let Some(rate) = &self.hv.inner.security.rate
            && let Err(e) = rate.try_acquire(agent, self.session(), CallClass::Change, ring)
        {
            return Err(failure(
                FailureKind::Failed,
                format!("rate limited: agent {agent} may not run host action {name} now: {e}"),
            ));
        }
        let who = Caller {
            agent,
            ring,
            trace: self.trace,
        };
        let core = &self.entry.core;
        let (output, change) = if reversible {
            let record = core
                .invoke_action(who, &registry, name, &call.step.execute)
                .map_err(|e| failure(FailureKind::Failed, e.to_string()))?;
            (record.output.clone(), Change::action(&record))
        } else {
            let done = core
                .invoke_effect(who, &registry, name, &call.step.execute)
                .map_err(|e| failure(FailureKind::Failed, e.to_string()))?;
            (
                done.output,
                Change::Effect {
                    name: name.to_string(),
                    touched: done.touched,
                },
            )
        };
        self.commit(agent, output, vec![change])
    }

    /// A cancelled attempt's future was dropped mid-call: the changes the
    /// call made so far are taken from the agent and undone. (A host action
    /// never stops midway: it runs synchronously inside its future's one poll.)
    async fn abandoned(self: Arc<Self>, call: StepCall) -> Result<(), String> {
        if call.step.via != Via::Agent {
            return Ok(());
        }
        let agent = self.agent_of(&call.step).map_err(|e| e.to_string())?;
        // The attempt ran in the agent's instance, or in its substitute's
        // if it was handed over (`execute_in_agent`): its changes are taken
        // from whichever holds them (never both: a hand-off starts after
        // the agent's own call has ended) and undone under the id that made
        // them. The registered substitute's instance is asked even if it is
        // quarantined or killed since: it still holds what it changed.
        let own = lock(&self.entry.agents).get(&agent).cloned();
        let sub = lock(&self.entry.substitutes).get(&agent).cloned();
        let sub_slot = sub.and_then(|sub| {
            let slot = lock(&self.entry.agents).get(&sub).cloned();
            slot.map(|slot| (sub, slot))
        });
        let own_gone = own.is_none();
        let runners: Vec<_> = own
            .map(|slot| (agent.clone(), slot))
            .into_iter()
            .chain(sub_slot)
            .collect();
        let gone = || {
            format!(
                "agent {agent} left session {}: what its cancelled attempt changed cannot be collected",
                self.session()
            )
        };
        if runners.is_empty() {
            return Err(gone());
        }
        let step = wit_step(&call.saga, &call.step, call.attempt);
        let mut failed = Vec::new();
        let mut found = false;
        for (runner, slot) in runners {
            let changes = slot.agent.lock().await.take_abandoned_changes(&step);
            found |= !changes.is_empty();
            if let (message, true) =
                self.undo_partial(&runner, &changes, "a cancelled attempt".into())
            {
                failed.push(message);
            }
        }
        // Nothing in the substitute, and the agent's own instance gone:
        // the attempt may have run there, so its changes are unknown.
        if own_gone && !found {
            failed.push(gone());
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    async fn compensate(self: Arc<Self>, call: CompensateCall) -> Result<(), CompensationFailure> {
        let fail = |message: String| CompensationFailure { message };
        let agent = self.agent_of(&call.step).map_err(|e| fail(e.to_string()))?;
        let replayed = self.replayed.get(&call.step.id);
        let changes = match replayed {
            Some(r) => r.changes.clone(),
            None => StepUndo::decode(&call.undo).map_err(fail)?.changes,
        };
        let mut errors = Vec::new();
        if call.step.via == Via::Agent {
            // Bound first: the session's `agents` guard must not be held
            // while its substitute's slot is looked up (which takes it). A
            // killed instance (its handle used, its removal not done yet)
            // can compensate nothing: its substitute does, as it would run
            // the step.
            let own = lock(&self.entry.agents)
                .get(&agent)
                .filter(|s| !s.kill.is_killed())
                .cloned();
            let slot = own
                .map(|s| (agent.clone(), s))
                .or_else(|| self.hv.substitute_slot(&self.entry, &agent));
            match slot {
                Some((runner, slot)) => {
                    let agent = runner;
                    let step = wit_step(&call.saga, &call.step, 0);
                    let deadline = Duration::from_secs(u64::from(call.step.timeout_secs));
                    let result = slot
                        .agent
                        .lock()
                        .await
                        .compensate_step(&step, call.step.undo_input(), &call.output, deadline)
                        .await;
                    // What a failed compensate changed is undone (it stands
                    // when it succeeds).
                    match result {
                        Ok(out) => {
                            if let Err(m) = out.result {
                                let (m, _) = self.undo_partial(&agent, &out.changes, m);
                                errors.push(format!("agent {agent}'s compensate failed: {m}"));
                            }
                        }
                        Err(AgentError::NotASagaParticipant { .. }) => {}
                        Err(AgentError::Trapped { cause, changes, .. }) => {
                            if let TrapCause::RingBreach(b) = &cause {
                                self.hv.after_breach(&self.entry, &slot, &agent, b).await;
                            }
                            let (m, _) = self.undo_partial(
                                &agent,
                                changes.changes(),
                                format!("trapped: {cause}"),
                            );
                            errors.push(format!("agent {agent}'s compensate: {m}"));
                        }
                        Err(e) => errors.push(format!("agent {agent}'s compensate: {e}")),
                    }
                }
                None => {
                    // The host still undoes everything the step recorded.
                    tracing::warn!(session = %self.session(), %agent, step = %call.step.id,
                        "agent left the session or its instance was killed, and no substitute can run its compensate");
                }
            }
        }
        for f in self.undo(&agent, &changes) {
            errors.push(f.error.to_string());
        }
        if let Some(r) = replayed {
            errors.extend(r.settle(&self.entry.core, &agent, self.trace));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(fail(errors.join("; ")))
        }
    }
}

/// The engine's runner: clones of one [`SessionRunner`].
#[derive(Clone)]
struct Runner(Arc<SessionRunner>);

impl StepRunner for Runner {
    fn execute(&self, call: StepCall) -> BoxFuture<Result<StepDone, StepFailure>> {
        Box::pin(self.0.clone().execute(call))
    }

    fn compensate(&self, call: CompensateCall) -> BoxFuture<Result<(), CompensationFailure>> {
        Box::pin(self.0.clone().compensate(call))
    }

    fn abandoned(&self, call: StepCall) -> BoxFuture<Result<(), String>> {
        Box::pin(self.0.clone().abandoned(call))
    }
}

/// Turns records into events, one causal chain per saga run.
struct Observer {
    hv: Hypervisor,
    session: SessionId,
    definition: Arc<SagaDefinition>,
    /// Each step's agent, validated once per run rather than per record.
    agents: Arc<StepAgents>,
    trace: TraceId,
    last: Mutex<Option<EventId>>,
    /// How many compensations failed (told by `escalated`, before the final record).
    escalated: Mutex<u64>,
    /// Why the saga is failing (the last compensation reason).
    reason: Mutex<Option<String>>,
}

impl Observer {
    fn agent_of(&self, step: &str) -> Option<AgentId> {
        self.agents.get(step).cloned()
    }

    fn emit(&self, agent: Option<AgentId>, payload: EventPayload) {
        let mut last = lock(&self.last);
        let id = self.hv.inner.events.emit(
            Some(&self.session),
            agent.as_ref(),
            self.trace,
            *last,
            payload,
        );
        *last = Some(id);
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl SagaObserver for Observer {
    fn record(&self, saga: &SagaId, record: &SagaRecord) {
        let s = saga.as_str().to_owned();
        let (agent, payload) = match record {
            SagaRecord::Created { definition, .. } => (
                None,
                EventPayload::SagaCreated {
                    saga: s,
                    name: definition.name.clone(),
                    steps: count(definition.steps.len()),
                },
            ),
            SagaRecord::StepStarted { step, attempt } => (
                self.agent_of(step),
                EventPayload::SagaStepStarted {
                    saga: s,
                    step: step.clone(),
                    attempt: u64::from(*attempt),
                },
            ),
            SagaRecord::StepCommitted {
                step,
                attempt,
                undo,
                ..
            } => (
                self.agent_of(step),
                EventPayload::SagaStepCommitted {
                    saga: s,
                    step: step.clone(),
                    attempt: u64::from(*attempt),
                    changes: count(
                        undo.get("changes")
                            .and_then(serde_json::Value::as_array)
                            .map_or(0, Vec::len),
                    ),
                },
            ),
            SagaRecord::StepFailed {
                step,
                attempt,
                error,
                retry_in_ms,
                ..
            } => (
                self.agent_of(step),
                EventPayload::SagaStepFailed {
                    saga: s,
                    step: step.clone(),
                    attempt: u64::from(*attempt),
                    error: error.clone(),
                    retry_in: Duration::from_millis(retry_in_ms.unwrap_or(0)),
                },
            ),
            SagaRecord::StepSkipped { step, hash, .. } => (
                self.agent_of(step),
                EventPayload::SagaStepSkipped {
                    saga: s,
                    step: step.clone(),
                    hash: decode_hash(hash),
                },
            ),
            SagaRecord::CheckpointSaved { step, hash } => (
                self.agent_of(step),
                EventPayload::SagaCheckpointSaved {
                    saga: s,
                    step: step.clone(),
                    hash: decode_hash(hash),
                },
            ),
            SagaRecord::FanoutStarted { group, branches } => (
                None,
                EventPayload::SagaFanoutStarted {
                    saga: s,
                    group: group.clone(),
                    policy: self.policy_of(group),
                    branches: count(branches.len()),
                },
            ),
            SagaRecord::FanoutResolved {
                group,
                succeeded,
                failed,
                cancelled,
                ..
            } => (
                None,
                EventPayload::SagaFanoutResolved {
                    saga: s,
                    group: group.clone(),
                    policy: self.policy_of(group),
                    succeeded: count(succeeded.len()),
                    failed: count(failed.len()),
                    cancelled: count(cancelled.len()),
                },
            ),
            SagaRecord::Compensating { reason } => (
                {
                    *lock(&self.reason) = Some(reason.clone());
                    None
                },
                EventPayload::SagaCompensating {
                    saga: s,
                    reason: reason.clone(),
                },
            ),
            // The outcome (compensated or failed) follows at once.
            SagaRecord::StepCompensating { .. } => return,
            SagaRecord::StepCompensated { step } => (
                self.agent_of(step),
                EventPayload::SagaStepCompensated {
                    saga: s,
                    step: step.clone(),
                },
            ),
            SagaRecord::StepCompensationFailed { step, error } => (
                self.agent_of(step),
                EventPayload::SagaCompensationFailed {
                    saga: s,
                    step: step.clone(),
                    error: error.clone(),
                },
            ),
            SagaRecord::Finished { state } => (
                None,
                match state {
                    SagaState::Completed => EventPayload::SagaCompleted {
                        saga: s,
                        steps: count(self.definition.steps.len()),
                    },
                    SagaState::Escalated => EventPayload::SagaEscalated {
                        saga: s,
                        failures: *lock(&self.escalated),
                    },
                    _ => EventPayload::SagaFailed {
                        saga: s,
                        reason: lock(&self.reason)
                            .clone()
                            .unwrap_or_else(|| "a step failed before any committed".into()),
                    },
                },
            ),
        };
        self.emit(agent, payload);
    }

    fn escalated(&self, saga: &SagaId, failures: &[EscalatedStep]) {
        tracing::warn!(session = %self.session, %saga, failures = failures.len(), "saga escalated: a compensation failed");
        *lock(&self.escalated) = count(failures.len());
        let escalation = Escalation {
            session: self.session.clone(),
            saga: saga.clone(),
            failures: failures.to_vec(),
        };
        for hook in &self.hv.inner.sagas.escalation {
            hook.escalated(&escalation);
        }
    }
}

impl Observer {
    fn policy_of(&self, group: &str) -> String {
        self.definition
            .fanout
            .iter()
            .find(|g| g.id == group)
            .map_or_else(String::new, |g| g.policy.as_str().to_string())
    }
}

fn decode_hash(hex_text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    // The engine writes 64 hex digits; anything else is recorded as zeros.
    let _ = hex::decode_to_slice(hex_text, &mut out);
    out
}

fn state_isolation(i: Isolation) -> StateIsolation {
    match i {
        Isolation::Snapshot => StateIsolation::Snapshot,
        Isolation::ReadCommitted => StateIsolation::ReadCommitted,
        Isolation::Serializable => StateIsolation::Serializable,
    }
}

impl Hypervisor {
    fn saga_engine(
        &self,
        entry: Arc<SessionEntry>,
        definition: Arc<SagaDefinition>,
        trace: TraceId,
        replayed: Arc<HashMap<String, Replayed>>,
        agents: Arc<StepAgents>,
        kept: u64,
    ) -> Engine {
        let session = entry.core.id().clone();
        let runner = Runner(Arc::new(SessionRunner {
            hv: self.clone(),
            entry,
            trace,
            agents: agents.clone(),
            replayed,
            kept: std::sync::atomic::AtomicU64::new(kept),
        }));
        let observer = Observer {
            hv: self.clone(),
            session,
            definition,
            agents,
            trace,
            last: Mutex::new(None),
            escalated: Mutex::new(0),
            reason: Mutex::new(None),
        };
        let s = &self.inner.sagas;
        Engine::new(
            s.store.clone(),
            Arc::new(runner),
            Arc::new(observer),
            s.sleeper.clone(),
            s.jitter.clone(),
            self.inner.clock.clone(),
        )
        .with_plans(s.plans.clone())
    }

    /// The session, checked to be active with every step's agent in it,
    /// and each step's agent.
    fn saga_session(
        &self,
        session: &SessionId,
        definition: &SagaDefinition,
    ) -> Result<(Arc<SessionEntry>, Arc<StepAgents>), HypervisorError> {
        let entry = self.entry(session)?;
        let gov = lock(&entry.gov);
        if gov.state() != SessionState::Active {
            return Err(ahv_governance::session::SessionError::InvalidTransition {
                session: session.clone(),
                operation: "run a saga",
                state: gov.state(),
            }
            .into());
        }
        let mut agents = StepAgents::with_capacity_and_hasher(
            definition.steps.len(),
            foldhash::fast::RandomState::default(),
        );
        for step in &definition.steps {
            // The participant's own id: no new id made (and validated) per
            // step and run.
            let Some(agent) = gov
                .participant_named(step.agent.as_str())
                .map(|p| p.agent.clone())
            else {
                let message = match AgentId::new(step.agent.as_str()) {
                    Err(e) => format!("step {}: agent: {e}", step.id),
                    Ok(agent) => format!(
                        "step {}: agent {agent} is not a participant of session {session}",
                        step.id
                    ),
                };
                return Err(HypervisorError::SagaSetup {
                    saga: definition.name.clone(),
                    message,
                });
            };
            if step.via == Via::Agent && !lock(&entry.agents).contains_key(&agent) {
                return Err(HypervisorError::SagaSetup {
                    saga: definition.name.clone(),
                    message: format!(
                        "step {}: agent {agent} has no instance in session {session} (it joined without a component)",
                        step.id
                    ),
                });
            }
            agents.insert(step.id.clone(), agent);
        }
        drop(gov);
        Ok((entry, Arc::new(agents)))
    }

    /// A new saga id: unique, unpredictable, usable as a file name.
    pub fn new_saga_id(&self) -> SagaId {
        let n = self
            .inner
            .id_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let h = std::hash::BuildHasher::hash_one(&self.inner.id_seed, (n, "saga"));
        SagaId::new(format!("saga-{n}-{h:016x}")).unwrap_or_else(|_| unreachable!())
    }

    /// Runs `definition` as a new saga in `session` (active, with every
    /// step's agent a participant; agent steps need its live instance) and
    /// returns its report once it is final: `completed`, or `failed` after
    /// compensating what committed, or `escalated` when a compensation
    /// failed. Progress is durable in the saga store before each step acts
    /// (`<state>/sagas` by default). The session's state isolation is set to
    /// the saga's level. A definition run many times can be passed as an
    /// `Arc<SagaDefinition>`: each run then shares it instead of copying it.
    ///
    /// # Errors
    /// [`HypervisorError::SagaSetup`] (an agent that is not there),
    /// [`SessionError`](ahv_governance::session::SessionError) (not active),
    /// [`HypervisorError::Saga`] (the definition, or the store failed: the
    /// saga can then be compensated with [`Hypervisor::compensate_saga`]).
    pub async fn run_saga(
        &self,
        session: &SessionId,
        definition: impl Into<Arc<SagaDefinition>>,
    ) -> Result<SagaReport, HypervisorError> {
        let id = self.new_saga_id();
        self.run_saga_as(session, id, definition).await
    }

    /// [`Hypervisor::run_saga`] under a saga id the caller chose (a saga id
    /// whose earlier run finished replays it: valid checkpoints are skipped).
    ///
    /// # Errors
    /// As [`Hypervisor::run_saga`]; [`HypervisorError::SagaSetup`] for a saga
    /// id with checkpoints whose earlier run was in another process (what
    /// they stand for is in a session that is gone).
    pub async fn run_saga_as(
        &self,
        session: &SessionId,
        saga: SagaId,
        definition: impl Into<Arc<SagaDefinition>>,
    ) -> Result<SagaReport, HypervisorError> {
        let definition: Arc<SagaDefinition> = definition.into();
        // The engine validates the definition before anything runs.
        let (entry, agents) = self.saga_session(session, &definition)?;
        let ran_here = lock(&self.inner.sagas.driving).home.contains_key(&saga);
        if !ran_here
            && definition.steps.iter().any(|s| s.checkpoint.is_some())
            && !self.saga_records(&saga)?.is_empty()
        {
            return Err(HypervisorError::SagaSetup {
                saga: saga.to_string(),
                message: "it ran in another process or in a session that has ended: its \
                          checkpoints stand for changes in a session that is gone, so none can be \
                          skipped here; run it under a new id"
                    .into(),
            });
        }
        let driving = self.drive(&saga, session)?;
        let _isolation = IsolationGuard::set(&entry, definition.isolation);
        let trace = self.inner.runtime.new_trace_id();
        let engine = self.saga_engine(
            entry.clone(),
            definition.clone(),
            trace,
            Arc::default(),
            agents,
            0,
        );
        let report = match engine.run(saga.clone(), definition).await {
            Ok(report) => report,
            Err(e) => {
                // Refused before its first record (a store error may come
                // after some: the session stays the saga's home then).
                if matches!(
                    e,
                    EngineError::Definition(_)
                        | EngineError::Unfinished { .. }
                        | EngineError::NotFound { .. }
                        | EngineError::Corrupt { .. }
                ) {
                    driving.refused();
                }
                return Err(e.into());
            }
        };
        self.after_saga(session, &saga, report.state);
        Ok(report)
    }

    /// Resumes an unfinished saga in `session` (active, with every step's
    /// agent a participant): after a restart of the host, or one a store
    /// failure stopped. Committed steps and valid checkpoints never run
    /// again; a step the crash interrupted is retried (without using up a
    /// retry), or, when the definition says `on_crash: compensate`, the saga
    /// is compensated instead. A final saga returns its report.
    ///
    /// A saga that ran in another process (the host restarted) lost the
    /// session it ran in: what its live committed steps left there is first
    /// replayed into `session` from the redo kept with each commit (files,
    /// ACLs, state; the effects of actions are not repeated), so `session`
    /// should be a new one: files or keys it has on the same paths are
    /// overwritten. A saga of this process must resume in the session it ran
    /// in while that session lives; once it is terminated, the saga is taken
    /// up as one of another process.
    ///
    /// # Errors
    /// As [`Hypervisor::run_saga`]; [`HypervisorError::Saga`] with
    /// `NotFound` for an unknown saga; [`HypervisorError::SagaSetup`] when
    /// the redo cannot be replayed (named step and path; the session is then
    /// left as it was), or the saga ran in this process in another session.
    pub async fn resume_saga(
        &self,
        session: &SessionId,
        saga: &SagaId,
    ) -> Result<SagaReport, HypervisorError> {
        let (engine, guards) = self.take_up(session, saga)?;
        let report = engine.resume(saga).await?;
        drop(guards);
        self.after_saga(session, saga, report.state);
        Ok(report)
    }

    /// Compensates an unfinished saga (stuck, or left by a crash) in
    /// `session`, on an operator's order: every live committed step, newest
    /// first. A final saga is left as it is. A saga that ran in another
    /// process is first replayed into `session`, as [`Hypervisor::resume_saga`] does.
    ///
    /// # Errors
    /// As [`Hypervisor::resume_saga`].
    pub async fn compensate_saga(
        &self,
        session: &SessionId,
        saga: &SagaId,
        reason: &str,
    ) -> Result<SagaReport, HypervisorError> {
        let (engine, guards) = self.take_up(session, saga)?;
        let report = engine.compensate(saga, reason).await?;
        drop(guards);
        self.after_saga(session, saga, report.state);
        Ok(report)
    }

    /// Claims `saga` in `session` to resume or compensate it; for a saga of
    /// another process, replays its live committed steps' redo into the
    /// session first (undoing the replay again if any of it fails). Returns
    /// the engine that does it and the guards to drop once it has finished,
    /// in this order: the session's isolation is restored before the claim
    /// is released (the other way round, a saga the released claim let
    /// start in the session could have its level overwritten by this
    /// restore).
    fn take_up(
        &self,
        session: &SessionId,
        saga: &SagaId,
    ) -> Result<(Engine, (IsolationGuard, Driving)), HypervisorError> {
        let definition = self.saga_definition(saga)?;
        let (entry, agents) = self.saga_session(session, &definition)?;
        let ran_here = lock(&self.inner.sagas.driving).home.contains_key(saga);
        let driving = self.drive(saga, session)?;
        let trace = self.inner.runtime.new_trace_id();
        let records = self.saga_records(saga)?;
        let finished = ahv_saga::report_of(saga, &records)?.state.is_final();
        let replayed = if ran_here {
            // Replayed by an earlier take-up in this process, or none.
            lock(&self.inner.sagas.driving)
                .replayed
                .get(saga)
                .cloned()
                .unwrap_or_default()
        } else if finished {
            Arc::default()
        } else {
            // The replay writes what the steps left as the host, not as a
            // saga transaction: it needs no intent locks.
            let relaxed = IsolationGuard::set(&entry, Isolation::ReadCommitted);
            let replayed = self.replay_saga(&entry, &definition, saga, &records, trace);
            drop(relaxed);
            match replayed {
                Ok(r) => {
                    let r = Arc::new(r);
                    lock(&self.inner.sagas.driving)
                        .replayed
                        .insert(saga.clone(), r.clone());
                    r
                }
                Err(e) => {
                    // The next attempt (here or elsewhere) replays from scratch.
                    lock(&self.inner.sagas.driving).unhome(saga);
                    return Err(e);
                }
            }
        };
        let isolation = IsolationGuard::set(&entry, definition.isolation);
        // What earlier runs committed counts against this one's budget.
        let kept = records
            .iter()
            .map(|r| match r {
                ahv_saga::SagaRecord::StepCommitted { output, undo, .. }
                | ahv_saga::SagaRecord::StepSkipped { output, undo, .. } => {
                    let undo_len = serde_json::to_vec(undo).map_or(0, |v| v.len());
                    (output.len() + undo_len) as u64
                }
                _ => 0,
            })
            .fold(0, u64::saturating_add);
        let engine = self.saga_engine(entry, definition, trace, replayed, agents, kept);
        Ok((engine, (isolation, driving)))
    }

    /// Replays the redo of every live committed step of `saga` into `entry`'s
    /// session, in commit order; each step's undo data from then on. On a
    /// failure, what was replayed (of the failing step too) is undone and
    /// the failure names the step.
    fn replay_saga(
        &self,
        entry: &Arc<SessionEntry>,
        definition: &SagaDefinition,
        saga: &SagaId,
        records: &[SagaRecord],
        trace: TraceId,
    ) -> Result<HashMap<String, Replayed>, HypervisorError> {
        let mut done: Vec<(AgentId, Vec<Change>)> = Vec::new();
        let mut replayed = HashMap::new();
        let mut failed = None;
        for (step_id, undo) in live_commits(records) {
            let step = definition.steps.iter().find(|s| s.id == step_id);
            let Some(agent) = step.and_then(|s| AgentId::new(s.agent.as_str()).ok()) else {
                failed = Some((
                    step_id.clone(),
                    "its records name a step its definition lacks".into(),
                ));
                break;
            };
            let undo = match StepUndo::decode(&undo) {
                Ok(u) => u,
                Err(e) => {
                    failed = Some((step_id, e));
                    break;
                }
            };
            let before = Replayed::action_paths_now(&entry.core, &agent, &undo.changes);
            let replay = match (&undo.redo, &self.inner.sagas.blobs) {
                (Some(redo), Some(blobs)) => redo.replay(&entry.core, blobs, &agent, trace),
                (Some(_), None) => Err((
                    "the saga store does not survive restarts, so no redo can be read".into(),
                    Vec::new(),
                )),
                (None, _) if undo.changes.is_empty() => Ok(Vec::new()),
                (None, _) => Err((
                    format!(
                        "it committed {} changes without redo data (its store did not survive restarts then)",
                        undo.changes.len()
                    ),
                    Vec::new(),
                )),
            };
            match replay {
                Ok(changes) => {
                    done.push((agent, changes.clone()));
                    replayed.insert(step_id, Replayed::new(&undo.changes, changes, before));
                }
                Err((e, partial)) => {
                    done.push((agent, partial));
                    failed = Some((step_id, e));
                    break;
                }
            }
        }
        if let Some((step_id, e)) = failed {
            for (agent, changes) in done.iter().rev() {
                let who = Caller {
                    agent,
                    ring: ahv_core::Ring::Root,
                    trace,
                };
                let left = undo_changes(&entry.core, &self.inner.actions, who, changes);
                if !left.is_empty() {
                    tracing::error!(session = %entry.core.id(), %saga, %agent, left = left.len(), "a failed replay could not all be undone");
                }
            }
            return Err(HypervisorError::SagaSetup {
                saga: saga.to_string(),
                message: format!(
                    "cannot put back what step {step_id} committed in session {}: {e}",
                    entry.core.id()
                ),
            });
        }
        if !replayed.is_empty() {
            tracing::info!(session = %entry.core.id(), %saga, steps = replayed.len(), "replayed the committed steps of a saga from another process");
        }
        Ok(replayed)
    }

    /// A saga's report as its records stand (no work is done).
    ///
    /// # Errors
    /// [`HypervisorError::Saga`] (`NotFound`, store or corrupt records).
    pub fn saga_report(&self, saga: &SagaId) -> Result<SagaReport, HypervisorError> {
        let records = self.saga_records(saga)?;
        Ok(ahv_saga::report_of(saga, &records)?)
    }

    /// A saga's progress records, oldest first.
    ///
    /// # Errors
    /// [`HypervisorError::Saga`] if the store failed.
    pub fn saga_records(&self, saga: &SagaId) -> Result<Vec<SagaRecord>, HypervisorError> {
        Ok(self
            .inner
            .sagas
            .store
            .load(saga)
            .map_err(EngineError::from)?)
    }

    /// Every saga the store holds.
    ///
    /// # Errors
    /// [`HypervisorError::Saga`] if the store failed.
    pub fn sagas(&self) -> Result<Vec<SagaId>, HypervisorError> {
        Ok(self.inner.sagas.store.list().map_err(EngineError::from)?)
    }

    pub(crate) fn saga_definition(
        &self,
        saga: &SagaId,
    ) -> Result<Arc<SagaDefinition>, HypervisorError> {
        let records = self.saga_records(saga)?;
        records
            .iter()
            .rev()
            .find_map(|r| match r {
                SagaRecord::Created { definition, .. } => Some(definition.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                HypervisorError::Saga(EngineError::NotFound {
                    saga: saga.to_string(),
                })
            })
    }
}

/// The steps whose changes stand, with their undo data, in commit order:
/// committed or skipped in the saga's latest run and not compensated since.
fn live_commits(records: &[SagaRecord]) -> Vec<(String, serde_json::Value)> {
    let start = records
        .iter()
        .rposition(|r| matches!(r, SagaRecord::Created { .. }))
        .unwrap_or(0);
    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
    for r in &records[start..] {
        match r {
            SagaRecord::StepCommitted { step, undo, .. }
            | SagaRecord::StepSkipped { step, undo, .. } => {
                out.retain(|(s, _)| s != step);
                out.push((step.clone(), undo.clone()));
            }
            // A step whose compensation failed is left as it was, in the
            // session it ran in: a new session never gets its changes.
            SagaRecord::StepCompensated { step }
            | SagaRecord::StepCompensationFailed { step, .. } => out.retain(|(s, _)| s != step),
            _ => {}
        }
    }
    out
}

/// Sets the session's state isolation to a saga's level and puts the
/// previous level back when dropped (the saga ended, failed or was
/// cancelled). Sagas of one session do not overlap: [`Hypervisor::drive`]
/// refuses the second while the first runs.
struct IsolationGuard {
    entry: Arc<SessionEntry>,
    before: StateIsolation,
}

impl IsolationGuard {
    fn set(entry: &Arc<SessionEntry>, level: Isolation) -> IsolationGuard {
        let state = entry.core.state();
        let before = state.isolation();
        state.set_isolation(state_isolation(level));
        IsolationGuard {
            entry: entry.clone(),
            before,
        }
    }
}

impl Drop for IsolationGuard {
    fn drop(&mut self) {
        self.entry.core.state().set_isolation(self.before);
    }
}

/// A saga this process is driving; dropping it lets another driver in.
struct Driving {
    hv: Hypervisor,
    saga: SagaId,
    /// Whether this claim made the session the saga's home.
    new_home: bool,
}

impl Driving {
    /// Gives up the home this claim gave the saga: the run was refused
    /// before it recorded anything, so the saga has no changes in the
    /// session (a saga left unfinished elsewhere keeps being taken up by
    /// replay).
    fn refused(&self) {
        if self.new_home {
            lock(&self.hv.inner.sagas.driving).unhome(&self.saga);
        }
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        lock(&self.hv.inner.sagas.driving).stop(&self.saga);
    }
}

impl Hypervisor {
    /// Claims `saga` for one driver in `session`. A saga runs in the session
    /// it was first run in (its undo data names that session's undo
    /// records), one driver at a time, and a session runs one saga at a
    /// time (the saga's isolation level is the session's while it runs).
    fn drive(&self, saga: &SagaId, session: &SessionId) -> Result<Driving, HypervisorError> {
        let mut d = lock(&self.inner.sagas.driving);
        let refuse = |message: String| HypervisorError::SagaSetup {
            saga: saga.to_string(),
            message,
        };
        if let Some(home) = d.home.get(saga)
            && home != session
        {
            return Err(refuse(format!(
                "it ran in session {home}; its changes can only be undone there, not in {session}"
            )));
        }
        if d.running.contains_key(saga) {
            return Err(refuse("it is already being run or compensated".into()));
        }
        if let Some(other) = d.running_in.get(session) {
            return Err(refuse(format!(
                "saga {other} is running in session {session}"
            )));
        }
        // Checked under the claim: a session terminated since its entry was
        // looked up has had its sagas' homes forgotten already, and must
        // not become a home again.
        if !self
            .inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(session)
        {
            return Err(refuse(format!("session {session} has ended")));
        }
        let new_home = d.start(saga, session);
        Ok(Driving {
            hv: self.clone(),
            saga: saga.clone(),
            new_home,
        })
    }
}

impl Hypervisor {
    /// Forgets where the sagas of `session` (terminated) ran: their undo
    /// data named that session, which is gone, so a later resume or
    /// compensation in another session replays their redo as after a
    /// restart. Keeps the map from growing by one saga per run for ever.
    pub(crate) fn forget_saga_homes(&self, session: &SessionId) {
        lock(&self.inner.sagas.driving).forget_session(session);
    }
}

/// Which sagas run where, in this process. Each map has its reverse, kept
/// in step by the methods below, so that no operation scans the sagas of
/// other sessions.
#[derive(Default)]
pub(crate) struct Drivers {
    /// Sagas being driven now, with their session.
    /// foldhash, not SipHash: it holds at most one saga per live session
    /// (a session runs one saga at a time), whatever ids callers choose.
    running: HashMap<SagaId, SessionId, foldhash::fast::RandomState>,
    /// The saga each session is driving now (the reverse of `running`;
    /// keyed by the hypervisor's own session ids).
    running_in: HashMap<SessionId, SagaId, foldhash::fast::RandomState>,
    /// The session each saga of this process ran in. SipHash: it grows
    /// with every saga a session runs, and `Hypervisor::run_saga_as` takes
    /// ids its caller chooses.
    home: HashMap<SagaId, SessionId>,
    /// The sagas each live session is the home of (the reverse of `home`),
    /// oldest first (keyed by the hypervisor's own session ids).
    homes_of: HashMap<SessionId, Vec<SagaId>, foldhash::fast::RandomState>,
    /// The replayed steps of each saga of another process this one took up
    /// (kept for every later resume or compensation in this process).
    replayed: HashMap<SagaId, Arc<HashMap<String, Replayed>>>,
}

impl Drivers {
    /// Records that `saga` is driven in `session` now, and that `session`
    /// is its home; returns whether the home is new.
    fn start(&mut self, saga: &SagaId, session: &SessionId) -> bool {
        self.running.insert(saga.clone(), session.clone());
        self.running_in.insert(session.clone(), saga.clone());
        let new_home = self.home.insert(saga.clone(), session.clone()).is_none();
        if new_home {
            match self.homes_of.get_mut(session) {
                Some(sagas) => sagas.push(saga.clone()),
                None => {
                    self.homes_of.insert(session.clone(), vec![saga.clone()]);
                }
            }
        }
        new_home
    }

    /// `saga` is no longer driven.
    fn stop(&mut self, saga: &SagaId) {
        if let Some(session) = self.running.remove(saga)
            && self.running_in.get(&session) == Some(saga)
        {
            self.running_in.remove(&session);
        }
    }

    /// `saga` has no home in this process any more. (Searched from the
    /// newest: a refused run gives up the home it has just made.)
    fn unhome(&mut self, saga: &SagaId) {
        if let Some(session) = self.home.remove(saga)
            && let Some(sagas) = self.homes_of.get_mut(&session)
        {
            if let Some(i) = sagas.iter().rposition(|g| g == saga) {
                sagas.remove(i);
            }
            if sagas.is_empty() {
                self.homes_of.remove(&session);
            }
        }
    }

    /// Forgets the homes (and replays) of every saga of `session`, which
    /// has ended: the cost is that session's sagas, not every session's.
    fn forget_session(&mut self, session: &SessionId) {
        for saga in self.homes_of.remove(session).unwrap_or_default() {
            self.home.remove(&saga);
            self.replayed.remove(&saga);
        }
    }
}

/// The hypervisor's saga settings.
pub(crate) struct SagaSettings {
    pub(crate) store: Arc<dyn ahv_saga::ProgressStore>,
    pub(crate) sleeper: Arc<dyn ahv_saga::Sleeper>,
    pub(crate) jitter: Arc<dyn ahv_saga::Jitter>,
    pub(crate) escalation: Vec<Arc<dyn EscalationHook>>,
    pub(crate) driving: Mutex<Drivers>,
    /// Where commits keep their redo's bytes (only under a store that
    /// survives restarts).
    pub(crate) blobs: Option<Arc<ahv_saga::BlobStore>>,
    /// Validated definitions, shared by the engines of every run: a shared
    /// definition run again is not validated or copied again.
    pub(crate) plans: Arc<ahv_saga::PlanCache>,
    /// Most bytes of step outputs and undo data one run commits.
    pub(crate) max_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(s: &str) -> SagaId {
        SagaId::new(s).unwrap()
    }

    fn session(s: &str) -> SessionId {
        SessionId::new(s).unwrap()
    }

    /// Every map and its reverse agree: what `drive` and
    /// `forget_saga_homes` read without scanning.
    fn consistent(d: &Drivers) {
        assert_eq!(d.running.len(), d.running_in.len());
        for (g, s) in &d.running {
            assert_eq!(d.running_in.get(s), Some(g));
        }
        let homed: usize = d.homes_of.values().map(|v| v.len()).sum();
        assert_eq!(homed, d.home.len());
        for (g, s) in &d.home {
            assert!(d.homes_of[s].contains(g), "{g} not under {s}");
        }
        assert!(d.homes_of.values().all(|v| !v.is_empty()));
    }

    #[test]
    fn drivers_keep_each_sessions_sagas_so_forgetting_one_session_leaves_the_others() {
        let mut d = Drivers::default();
        let (a, b) = (session("s-a"), session("s-b"));
        assert!(d.start(&saga("g1"), &a));
        assert_eq!(d.running_in.get(&a), Some(&saga("g1")));
        d.stop(&saga("g1"));
        assert!(d.running_in.is_empty() && d.running.is_empty());
        // Run again in its home: not a new home.
        assert!(!d.start(&saga("g1"), &a));
        d.stop(&saga("g1"));
        assert!(d.start(&saga("g2"), &a));
        d.stop(&saga("g2"));
        assert!(d.start(&saga("g3"), &b));
        d.replayed.insert(saga("g2"), Arc::default());
        consistent(&d);
        // A refused run gives its new home up.
        d.unhome(&saga("g3"));
        assert!(!d.homes_of.contains_key(&b));
        consistent(&d);
        d.stop(&saga("g3"));
        assert!(d.start(&saga("g4"), &b));
        d.stop(&saga("g4"));
        d.replayed.insert(saga("g4"), Arc::default());
        d.forget_session(&a);
        assert_eq!(d.home.keys().collect::<Vec<_>>(), [&saga("g4")]);
        assert_eq!(d.replayed.keys().collect::<Vec<_>>(), [&saga("g4")]);
        consistent(&d);
        // Forgetting a session with no sagas, or twice, changes nothing.
        d.forget_session(&a);
        d.forget_session(&session("s-none"));
        assert_eq!(d.home.len(), 1);
        consistent(&d);
    }
}
