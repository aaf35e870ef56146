//! Who is liable for a saga that failed: the saga's records read as the
//! causal record the attribution game of [`ahv_trust::attribution`] needs.
//!
//! The latest run of the saga (its records after the last `Created`) is
//! read: each step's outcome is its final state — committed, compensated,
//! compensation failed (changes remain), failed, or failed leaving residue
//! (changes it could not undo). What is no fault of the step's agent is
//! `not run`: a branch cancelled because another won, an attempt a host
//! crash interrupted, a step that never ran.
//!
//! The first failure is the failure that stopped the saga: the first
//! attempt that failed for good (not retried, not cancelled, not
//! interrupted, not the runner's own panic) of a step that ended failed,
//! skipping fan-out branches whose group's policy still held (the saga went
//! on without them) unless they left residue. A completed saga, or one
//! stopped only by a crash or an operator, has none and blames nobody.
//!
//! A step after a fan-out group names the group in `depends_on`; here it
//! depends on the group's branches, and each branch on what the group
//! waited for. A step's change count is what its commit recorded (a failed
//! compensation may have undone part of it), or 1 for residue, whose size
//! is not recorded.

use std::collections::{HashMap, HashSet};

use ahv_core::{AgentId, IdError};
use ahv_saga::{FailureKind, SagaDefinition, SagaId, SagaRecord, SagaState, StepState, report_of};
use ahv_trust::{Attribution, AttributionPolicy, SagaTrace, StepOutcome, TraceStep};

use crate::{Hypervisor, HypervisorError};

/// The engine's message for a step whose runner panicked (no fault of the agent).
const RUNNER_PANICKED: &str = "the step runner panicked";

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
    // Groups whose policy held: their failed branches did not stop the saga.
    let tolerated: HashSet<&str> = latest
        .iter()
        .filter_map(|r| match r {
            SagaRecord::FanoutResolved {
                satisfied: true,
                failed,
                ..
            } => Some(failed.iter().map(String::as_str)),
            _ => None,
        })
        .flatten()
        .collect();
    // The last final failure of each step (kind, whether the agent is not
    // at fault), its committed change count, and the first failure for good.
    let mut last_fault: HashMap<&str, (FailureKind, bool)> = HashMap::new();
    let mut changes: HashMap<&str, u32> = HashMap::new();
    let mut first_failure: Option<&str> = None;
    for r in latest {
        match r {
            SagaRecord::StepFailed {
                step,
                kind,
                error,
                retry_in_ms: None,
                interrupted,
                ..
            } => {
                let not_its_fault =
                    *interrupted || *kind == FailureKind::Cancelled || error == RUNNER_PANICKED;
                last_fault.insert(step, (*kind, not_its_fault));
                let ended_failed = report
                    .step(step)
                    .is_some_and(|s| s.state == StepState::Failed);
                let stopped_saga =
                    *kind == FailureKind::Residue || !tolerated.contains(step.as_str());
                if first_failure.is_none() && !not_its_fault && ended_failed && stopped_saga {
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
    // Dependencies on a group are dependencies on its branches; a branch
    // depends on everything its group waited for.
    let mut group_deps: HashMap<&str, Vec<String>> = HashMap::new();
    let mut group_of: HashMap<&str, &str> = HashMap::new();
    for g in &definition.fanout {
        let mut deps: Vec<String> = Vec::new();
        for b in &g.branches {
            group_of.insert(b, &g.id);
            if let Some(step) = definition.steps.iter().find(|s| s.id == *b) {
                for d in &step.depends_on {
                    if !deps.contains(d) {
                        deps.push(d.clone());
                    }
                }
            }
        }
        group_deps.insert(&g.id, deps);
    }
    let expand = |deps: &[String]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in deps {
            let ids: Vec<String> = match definition.fanout.iter().find(|g| g.id == *d) {
                Some(g) => g.branches.clone(),
                None => vec![d.clone()],
            };
            for id in ids {
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    };
    let steps = definition
        .steps
        .iter()
        .map(|s| {
            let state = report.step(&s.id).map_or(StepState::Pending, |r| r.state);
            let fault = last_fault.get(s.id.as_str()).copied();
            let outcome = match (state, fault) {
                (StepState::Committed, _) => StepOutcome::Committed,
                (StepState::Compensated, _) => StepOutcome::Compensated,
                (StepState::CompensationFailed, _) => StepOutcome::CompensationFailed,
                (StepState::Failed, Some((FailureKind::Residue, _))) => StepOutcome::Residue,
                (StepState::Failed, Some((_, true))) => StepOutcome::NotRun,
                (StepState::Failed, _) => StepOutcome::Failed,
                (StepState::Pending | StepState::Executing | StepState::Compensating, _) => {
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
            let own = match group_of.get(s.id.as_str()) {
                Some(g) => group_deps.get(g).cloned().unwrap_or_default(),
                None => s.depends_on.clone(),
            };
            Ok(TraceStep {
                id: s.id.clone(),
                agent,
                depends_on: expand(&own),
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
    /// when a step's failure, a failed compensation or residue harmed it;
    /// all 0 (no harm) for a saga that completed, or one stopped only by a
    /// host crash or an operator.
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
        let definition = self.saga_definition(saga)?;
        let trace = saga_trace(saga, &definition, &records)?;
        Ok(ahv_trust::attribute(&trace, policy)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ahv_saga::{FailureKind, SagaDefinition, SagaId, SagaRecord, SagaState};
    use ahv_trust::{AttributionMethod, AttributionPolicy, StepOutcome, attribute};
    use serde_json::Value;

    use super::saga_trace;

    fn started(step: &str) -> SagaRecord {
        SagaRecord::StepStarted {
            step: step.into(),
            attempt: 1,
        }
    }

    fn committed(step: &str) -> SagaRecord {
        SagaRecord::StepCommitted {
            step: step.into(),
            attempt: 1,
            output: String::new(),
            undo: Value::Null,
        }
    }

    fn failed(step: &str, interrupted: bool) -> SagaRecord {
        SagaRecord::StepFailed {
            step: step.into(),
            attempt: 1,
            kind: FailureKind::Failed,
            error: format!("{step} failed"),
            retry_in_ms: None,
            interrupted,
        }
    }

    fn compensated(step: &str) -> [SagaRecord; 2] {
        [
            SagaRecord::StepCompensating { step: step.into() },
            SagaRecord::StepCompensated { step: step.into() },
        ]
    }

    fn created(saga: &SagaId, def: &SagaDefinition) -> SagaRecord {
        SagaRecord::Created {
            saga: saga.clone(),
            definition: Arc::new(def.clone()),
            at_ms: 0,
        }
    }

    #[test]
    fn a_tolerated_branch_failure_is_not_the_cause_and_a_step_after_a_group_depends_on_its_branches()
     {
        let def = SagaDefinition::from_yaml(
            "name: t
steps:
  - {id: a, agent: did:t:a, action: x}
  - {id: b1, agent: did:t:b, action: x, depends_on: [a]}
  - {id: b2, agent: did:t:c, action: x, depends_on: [a]}
  - {id: c, agent: did:t:d, action: x, depends_on: [g]}
fanout:
  - {id: g, policy: any, branches: [b1, b2], cancel_rest: false}
",
        )
        .unwrap();
        let saga = SagaId::new("saga-t").unwrap();
        let mut records = vec![
            created(&saga, &def),
            started("a"),
            committed("a"),
            SagaRecord::FanoutStarted {
                group: "g".into(),
                branches: vec!["b1".into(), "b2".into()],
            },
            started("b1"),
            started("b2"),
            failed("b1", false),
            committed("b2"),
            SagaRecord::FanoutResolved {
                group: "g".into(),
                succeeded: vec!["b2".into()],
                failed: vec!["b1".into()],
                cancelled: Vec::new(),
                satisfied: true,
            },
            started("c"),
            failed("c", false),
            SagaRecord::Compensating {
                reason: "c failed".into(),
            },
        ];
        records.extend(compensated("b2"));
        records.extend(compensated("a"));
        records.push(SagaRecord::Finished {
            state: SagaState::Failed,
        });
        let trace = saga_trace(&saga, &def, &records).unwrap();
        assert_eq!(trace.first_failure.as_deref(), Some("c"));
        let c = trace.steps.iter().find(|s| s.id == "c").unwrap();
        assert_eq!(c.depends_on, ["b1", "b2"]);
        let b2 = trace.steps.iter().find(|s| s.id == "b2").unwrap();
        assert_eq!(b2.depends_on, ["a"]);
        assert_eq!(b2.outcome, StepOutcome::Compensated);
        let blame = attribute(&trace, &AttributionPolicy::default()).unwrap();
        assert_eq!(
            blame.direct_cause.as_ref().map(|a| a.as_str()),
            Some("did:t:d")
        );
        let d = blame.share("did:t:d").unwrap();
        assert!(
            blame
                .shares
                .iter()
                .all(|s| s.agent.as_str() == "did:t:d" || s.share < d),
            "{blame:?}"
        );
    }

    #[test]
    fn a_step_a_host_crash_interrupted_is_no_ones_fault() {
        let def = SagaDefinition::from_yaml(
            "name: t
on_crash: compensate
steps:
  - {id: a, agent: did:t:a, action: x}
  - {id: b, agent: did:t:b, action: x, depends_on: [a]}
",
        )
        .unwrap();
        let saga = SagaId::new("saga-t").unwrap();
        let mut records = vec![
            created(&saga, &def),
            started("a"),
            committed("a"),
            started("b"),
            failed("b", true),
            SagaRecord::Compensating {
                reason: "host crash (on_crash: compensate)".into(),
            },
        ];
        records.extend(compensated("a"));
        records.push(SagaRecord::Finished {
            state: SagaState::Failed,
        });
        let trace = saga_trace(&saga, &def, &records).unwrap();
        assert_eq!(trace.first_failure, None);
        let b = trace.steps.iter().find(|s| s.id == "b").unwrap();
        assert_eq!(b.outcome, StepOutcome::NotRun);
        let blame = attribute(&trace, &AttributionPolicy::default()).unwrap();
        assert_eq!(blame.method, AttributionMethod::NoHarm);
        assert!(blame.shares.iter().all(|s| s.share == 0.0));
    }
}
