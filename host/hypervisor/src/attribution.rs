//! Who is liable for a saga that failed: the saga's records read as the
//! causal record the attribution game of [`ahv_trust::attribution`] needs.
//!
//! The latest run of the saga (its records after the last `Created`) is
//! read: each step's outcome is its final state — committed, compensated,
//! compensation failed (its changes remain), failed, or failed leaving
//! residue (changes it could not undo); a branch cancelled because another
//! won, or a step that never ran, is `not run` (no fault of its own). The
//! first failure is the first attempt that failed for good (not retried,
//! not cancelled) of a step that ended failed; a completed saga has none
//! and blames nobody. A step's change count is what its commit recorded
//! (or 1 for residue, whose size is not recorded).

use std::collections::HashMap;

use ahv_core::{AgentId, IdError};
use ahv_saga::{FailureKind, SagaDefinition, SagaId, SagaRecord, SagaState, StepState, report_of};
use ahv_trust::{Attribution, AttributionPolicy, SagaTrace, StepOutcome, TraceStep};

use crate::{Hypervisor, HypervisorError};

/// The causal record of `records` (one saga's, oldest first) over `definition`.
///
/// # Errors
/// [`HypervisorError::Saga`] for inconsistent records;
/// [`HypervisorError::SagaSetup`] for a step agent that is not a valid id.
pub fn saga_trace(
    saga: &SagaId,
    definition: &SagaDefinition,
    records: &[SagaRecord],
) -> Result<SagaTrace, HypervisorError> {
    let report = report_of(saga, records)?;
    let start = records
        .iter()
        .rposition(|r| matches!(r, SagaRecord::Created { .. }))
        .unwrap_or(0);
    let latest = &records[start..];
    // The last failure kind of each step, its committed change count, and
    // the first failure for good.
    let mut last_kind: HashMap<&str, FailureKind> = HashMap::new();
    let mut changes: HashMap<&str, u32> = HashMap::new();
    let mut first_failure: Option<&str> = None;
    for r in latest {
        match r {
            SagaRecord::StepFailed {
                step,
                kind,
                retry_in_ms: None,
                ..
            } => {
                last_kind.insert(step, *kind);
                let ended_failed = report
                    .step(step)
                    .is_some_and(|s| s.state == StepState::Failed);
                if first_failure.is_none() && *kind != FailureKind::Cancelled && ended_failed {
                    first_failure = Some(step);
                }
            }
            SagaRecord::StepCommitted { step, undo, .. }
            | SagaRecord::StepSkipped { step, undo, .. } => {
                let n = undo
                    .get("changes")
                    .and_then(serde_json::Value::as_array)
                    .map_or(0, Vec::len);
                changes.insert(step, u32::try_from(n).unwrap_or(u32::MAX));
            }
            _ => {}
        }
    }
    let steps = definition
        .steps
        .iter()
        .map(|s| {
            let state = report.step(&s.id).map_or(StepState::Pending, |r| r.state);
            let kind = last_kind.get(s.id.as_str()).copied();
            let outcome = match state {
                StepState::Committed => StepOutcome::Committed,
                StepState::Compensated => StepOutcome::Compensated,
                StepState::CompensationFailed => StepOutcome::CompensationFailed,
                StepState::Failed if kind == Some(FailureKind::Residue) => StepOutcome::Residue,
                StepState::Failed if kind == Some(FailureKind::Cancelled) => StepOutcome::NotRun,
                StepState::Failed => StepOutcome::Failed,
                StepState::Pending | StepState::Executing | StepState::Compensating => {
                    StepOutcome::NotRun
                }
            };
            let changes = match outcome {
                StepOutcome::Residue => 1,
                _ => changes.get(s.id.as_str()).copied().unwrap_or(0),
            };
            let agent = AgentId::new(s.agent.as_str()).map_err(|e: IdError| {
                HypervisorError::SagaSetup {
                    saga: saga.to_string(),
                    message: format!("step {}: agent: {e}", s.id),
                }
            })?;
            Ok(TraceStep {
                id: s.id.clone(),
                agent,
                depends_on: s.depends_on.clone(),
                outcome,
                changes,
            })
        })
        .collect::<Result<Vec<_>, HypervisorError>>()?;
    let failed = matches!(report.state, SagaState::Failed | SagaState::Escalated);
    Ok(SagaTrace {
        steps,
        first_failure: failed.then(|| first_failure.map(str::to_owned)).flatten(),
    })
}

impl Hypervisor {
    /// How the blame for `saga` splits among its agents under `policy`
    /// (Shapley values of the saga game by default): shares summing to 1
    /// for a failed or escalated saga, none for one that completed.
    ///
    /// # Errors
    /// [`HypervisorError::Saga`] (unknown saga, store, records),
    /// [`HypervisorError::Attribution`] (the game could not be solved).
    pub fn saga_attribution(
        &self,
        saga: &SagaId,
        policy: &AttributionPolicy,
    ) -> Result<Attribution, HypervisorError> {
        let records = self.saga_records(saga)?;
        let definition = records
            .iter()
            .rev()
            .find_map(|r| match r {
                SagaRecord::Created { definition, .. } => Some(definition.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                HypervisorError::Saga(ahv_saga::EngineError::NotFound {
                    saga: saga.to_string(),
                })
            })?;
        let trace = saga_trace(saga, &definition, &records)?;
        Ok(ahv_trust::attribute(&trace, policy)?)
    }
}
