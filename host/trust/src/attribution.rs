//! Fault attribution for a finished saga: how much of the harm it did each
//! agent is liable for, as Shapley values of a cooperative game over the
//! agents built from the saga's causal record (SEMANTICS.md "Liability").
//!
//! # The record
//!
//! A [`SagaTrace`] lists the saga's steps (id, agent, `depends_on`, final
//! [`StepOutcome`], number of changes) and the step that failed first. It is
//! independent of `ahv-saga`: the host fills it from a saga's report.
//!
//! # The game
//!
//! The players are the agents owning at least one step. The saga did harm
//! through **harm events** `e`, each with a *cause* agent `c_e`, a set of
//! *enabling* agents `E_e` (never containing `c_e`) and a weight `w_e > 0`:
//!
//! - **the failure**: the first failing step `f`. Its agent is the direct
//!   cause; the agents of the steps that ran in `f`'s causal past (the steps
//!   it transitively `depends_on`) enabled it: `f` ran on their results.
//!   Weight [`ShapleyPolicy::failure_weight`].
//! - **lasting changes**: each step whose outcome is
//!   [`StepOutcome::CompensationFailed`] (committed changes its compensation
//!   could not undo) or [`StepOutcome::Residue`] (a failed attempt's changes
//!   that could not be undone). Its agent is the cause; the agents of the
//!   steps that ran in its causal past enabled it, and so, for a failed
//!   compensation, did the first failure's agent: the compensation only ran
//!   because `f` failed. Weight [`ShapleyPolicy::residue_weight`] × the
//!   step's remaining changes (at least 1: something remained, even if
//!   uncounted).
//!
//! Events with the same cause and enablers are merged (weights added). With
//! `ŵ_e = w_e / Σ w` and `α` = [`ShapleyPolicy::cause_weight`]:
//!
//! ```text
//! v(S) = Σ_e ŵ_e · [c_e ∈ S] · (α + (1 − α) · [E_e ⊆ S])
//! ```
//!
//! Why this function:
//!
//! - `[c_e ∈ S]`: without its cause an event does not happen, so enabling
//!   agents alone (any number of them) cause no harm.
//! - `α`: the part of the harm that is the cause's own doing (its step
//!   failed, or it made changes nobody can undo) whatever its inputs were;
//!   the cause alone realises it.
//! - `(1 − α) · [E_e ⊆ S]`: the part that needed the opportunity. A
//!   dependency is a hard prerequisite (a step does not run until every
//!   step it depends on has run), so the cause acting *and every* enabler
//!   having acted is what made it possible: a unanimity game over
//!   `{c_e} ∪ E_e`, in which none of them is more necessary than another.
//! - An agent that causes no event and is in no event's causal past (say its
//!   step ran on an independent branch and was compensated cleanly) changes
//!   no term: it is a null player and gets exactly 0.
//! - `v(∅) = 0` and `v(all agents) = Σ ŵ_e = 1`, so by efficiency the
//!   shares sum to 1. A saga with no harm event (completed, or failed
//!   branches its fan-out tolerated) blames nobody: all shares are 0.
//!
//! `v` is a sum of carrier and unanimity games, so its Shapley value is also
//! `φ_i = Σ_e ŵ_e · (α·[i = c_e] + (1 − α)·[i ∈ {c_e} ∪ E_e] / (|E_e| + 1))`:
//! the direct cause of an event gets at least `α + (1 − α)/(|E_e| + 1)` of
//! it, each enabler `(1 − α)/(|E_e| + 1)`. The tests use that closed form
//! as an oracle; [`attribute`] computes the values with the general solver
//! ([`crate::shapley`]): exactly for up to 16 agents, by permutation
//! sampling with the stated `(ε, δ)` bound above that, so the
//! characteristic function can change without changing how it is solved.
//!
//! # The reference's heuristic
//!
//! [`AttributionPolicy::Heuristic`] reproduces the Python reference's
//! scoring, which is not a Shapley value (it blames uninvolved agents): each
//! agent's raw score is `0.5` if it ran the first failing step ("direct
//! cause"), plus `0.3 / k` for each of its steps among the `k` other steps
//! that failed, failed to compensate or left residue ("enabling"), plus
//! `0.2 × 0.5 = 0.1` if it ran any step ("temporal": the reference's
//! proximity term is `0.2 ×` a per-action risk weight defaulting to 0.5 and
//! averaged over the agent's actions; there are no risk weights here, and no
//! time). The raw scores are then divided by their sum.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ahv_core::AgentId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::shapley::{self, Game, MAX_PLAYERS, Method, Sampling, ShapleyError};

/// The reference heuristic's share for the direct cause.
pub const HEURISTIC_DIRECT: f64 = 0.5;
/// The reference heuristic's share split over the other failed steps.
pub const HEURISTIC_ENABLING: f64 = 0.3;
/// The reference heuristic's proximity weight (times [`HEURISTIC_RISK`]).
pub const HEURISTIC_TEMPORAL: f64 = 0.2;
/// The reference heuristic's default per-action risk weight.
pub const HEURISTIC_RISK: f64 = 0.5;

/// How a step of a finished saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// It committed and was not compensated.
    Committed,
    /// It failed (its changes were undone).
    Failed,
    /// It committed and was compensated.
    Compensated,
    /// It committed and its compensation failed: changes remain.
    CompensationFailed,
    /// It failed and its partial changes could not be undone.
    Residue,
    /// It never ran (skipped or still pending when the saga stopped).
    #[serde(alias = "pending")]
    NotRun,
}

impl StepOutcome {
    /// Whether the step ran at all (and so could enable a later step).
    pub fn ran(self) -> bool {
        self != StepOutcome::NotRun
    }
}

/// One step of a finished saga, as attribution needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceStep {
    /// The step id, unique in the saga.
    pub id: String,
    /// The agent that ran (or would have run) it.
    pub agent: AgentId,
    /// The steps it waited for.
    pub depends_on: Vec<String>,
    /// How it ended.
    pub outcome: StepOutcome,
    /// How many changes it made, weighting a `compensation_failed` or
    /// `residue` harm: ideally the changes that remain; a caller that only
    /// knows what the step committed passes that (an upper bound).
    pub changes: u32,
}

/// The causal record of a finished saga.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SagaTrace {
    /// Its steps, in any order.
    pub steps: Vec<TraceStep>,
    /// The step whose failure stopped the saga, if one did.
    pub first_failure: Option<String>,
}

/// The Shapley attribution's parameters (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShapleyPolicy {
    /// `α` in `[0, 1]`: the part of an event its cause realises alone.
    pub cause_weight: f64,
    /// The weight (> 0) of the saga's failure.
    pub failure_weight: f64,
    /// The weight (> 0) of each change a step left behind.
    pub residue_weight: f64,
    /// The error bound and seed used above 16 agents (or always, with
    /// `always_sample`).
    pub sampling: Sampling,
    /// Sample even when exact values are cheap.
    pub always_sample: bool,
}

impl Default for ShapleyPolicy {
    /// `α = 0.5`, both weights 1, `ε = 0.01`, `δ = 0.001`, seed 0 (a fixed
    /// seed: replaying an attribution gives the same shares).
    fn default() -> ShapleyPolicy {
        ShapleyPolicy {
            cause_weight: 0.5,
            failure_weight: 1.0,
            residue_weight: 1.0,
            sampling: Sampling {
                epsilon: 0.01,
                delta: 0.001,
                seed: 0,
            },
            always_sample: false,
        }
    }
}

impl ShapleyPolicy {
    /// Checks every field's range.
    ///
    /// # Errors
    /// [`AttributionError::BadPolicy`] naming the field, or the sampling
    /// bound's [`ShapleyError`].
    pub fn validate(&self) -> Result<(), AttributionError> {
        if !(0.0..=1.0).contains(&self.cause_weight) {
            return Err(AttributionError::BadPolicy {
                field: "cause_weight",
                value: self.cause_weight,
            });
        }
        for (field, value) in [
            ("failure_weight", self.failure_weight),
            ("residue_weight", self.residue_weight),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(AttributionError::BadPolicy { field, value });
            }
        }
        self.sampling.validate()?;
        Ok(())
    }
}

/// How blame is split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionPolicy {
    /// Shapley values of the saga game (the module doc).
    Shapley(ShapleyPolicy),
    /// The reference's 0.5 / 0.3 / 0.2 scoring (the module doc).
    Heuristic,
}

impl Default for AttributionPolicy {
    /// Shapley with [`ShapleyPolicy::default`].
    fn default() -> AttributionPolicy {
        AttributionPolicy::Shapley(ShapleyPolicy::default())
    }
}

/// How an [`Attribution`] was computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum AttributionMethod {
    /// The saga did no harm: nobody is blamed.
    NoHarm,
    /// Exact Shapley values.
    Exact,
    /// Sampled Shapley values: each share within `sampling.epsilon` of the
    /// exact one with probability at least `1 − sampling.delta`.
    Sampled {
        /// The permutations used.
        permutations: u64,
        /// The bound and seed.
        sampling: Sampling,
    },
    /// The reference's heuristic.
    Heuristic,
}

/// One agent's share of the blame.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// The agent.
    pub agent: AgentId,
    /// Its share, in `[0, 1]` up to sampling error.
    pub share: f64,
}

/// The split of a saga's harm over its agents.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    /// One share per agent owning a step, ordered by agent id; they sum to 1
    /// when the saga did harm and are all 0 when it did none.
    pub shares: Vec<Share>,
    /// The agent of the first failing step, if a step failed.
    pub direct_cause: Option<AgentId>,
    /// How the shares were computed.
    pub method: AttributionMethod,
}

impl Attribution {
    /// The share of `agent` (`None` when it owns no step of the saga).
    pub fn share(&self, agent: &str) -> Option<f64> {
        self.shares
            .iter()
            .find(|s| s.agent.as_str() == agent)
            .map(|s| s.share)
    }

    /// Whether anyone is blamed at all.
    pub fn blames_anyone(&self) -> bool {
        self.method != AttributionMethod::NoHarm
    }
}

/// Why a saga could not be attributed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AttributionError {
    /// Two steps share an id.
    #[error("step {step:?} appears more than once in the saga record")]
    DuplicateStep {
        /// The id.
        step: String,
    },
    /// A step depends on a step the record does not have.
    #[error("step {step:?} depends on {dependency:?}, which is not in the saga record")]
    UnknownDependency {
        /// The step.
        step: String,
        /// The missing dependency.
        dependency: String,
    },
    /// The dependencies form a cycle, so there is no causal order.
    #[error("step {step:?} is on a dependency cycle")]
    DependencyCycle {
        /// A step on the cycle.
        step: String,
    },
    /// The first failure names a step the record does not have.
    #[error("the first failing step {step:?} is not in the saga record")]
    UnknownFirstFailure {
        /// The id given.
        step: String,
    },
    /// The first failure names a step that did not fail.
    #[error("the first failing step {step:?} ended {outcome:?}, not failed or residue")]
    FirstFailureDidNotFail {
        /// The step.
        step: String,
        /// How it ended.
        outcome: StepOutcome,
    },
    /// A policy field is out of range.
    #[error("attribution policy field {field} is {value}, out of range")]
    BadPolicy {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// The Shapley computation failed (too many agents, or the sampling bound).
    #[error("Shapley attribution: {0}")]
    Shapley(#[from] ShapleyError),
}

/// A harm event over agent indices (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
struct HarmEvent {
    /// Bit of the cause agent.
    cause: u64,
    /// Bits of the enabling agents (never the cause).
    enablers: u64,
    /// `ŵ_e`: the weight over the total.
    weight: f64,
}

/// A validated trace: agents indexed, dependencies resolved and acyclic.
struct Resolved {
    agents: Vec<AgentId>,
    /// Per step: its agent's index.
    agent_of: Vec<usize>,
    /// Per step: its dependencies' indices.
    deps: Vec<Vec<usize>>,
    first_failure: Option<usize>,
}

impl Resolved {
    fn new(trace: &SagaTrace) -> Result<Resolved, AttributionError> {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(trace.steps.len());
        for (i, step) in trace.steps.iter().enumerate() {
            if index.insert(step.id.as_str(), i).is_some() {
                return Err(AttributionError::DuplicateStep {
                    step: step.id.clone(),
                });
            }
        }
        let deps = trace
            .steps
            .iter()
            .map(|step| {
                step.depends_on
                    .iter()
                    .map(|d| {
                        index.get(d.as_str()).copied().ok_or_else(|| {
                            AttributionError::UnknownDependency {
                                step: step.id.clone(),
                                dependency: d.clone(),
                            }
                        })
                    })
                    .collect::<Result<Vec<usize>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(step) = on_a_cycle(&deps) {
            return Err(AttributionError::DependencyCycle {
                step: trace.steps[step].id.clone(),
            });
        }
        let agents: Vec<AgentId> = trace
            .steps
            .iter()
            .map(|s| s.agent.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if agents.len() > MAX_PLAYERS {
            return Err(ShapleyError::TooManyPlayers {
                players: agents.len(),
                max: MAX_PLAYERS,
            }
            .into());
        }
        let agent_of = trace
            .steps
            .iter()
            // Always found: `agents` was built from these very steps.
            .map(|s| agents.binary_search(&s.agent).unwrap_or_default())
            .collect();
        let first_failure = match &trace.first_failure {
            None => None,
            Some(id) => {
                let &i = index
                    .get(id.as_str())
                    .ok_or_else(|| AttributionError::UnknownFirstFailure { step: id.clone() })?;
                let outcome = trace.steps[i].outcome;
                if !matches!(outcome, StepOutcome::Failed | StepOutcome::Residue) {
                    return Err(AttributionError::FirstFailureDidNotFail {
                        step: id.clone(),
                        outcome,
                    });
                }
                Some(i)
            }
        };
        Ok(Resolved {
            agents,
            agent_of,
            deps,
            first_failure,
        })
    }

    fn direct_cause(&self) -> Option<AgentId> {
        self.first_failure
            .map(|f| self.agents[self.agent_of[f]].clone())
    }

    /// Bits of the agents owning a step that ran in `step`'s causal past.
    fn past_agents(&self, trace: &SagaTrace, step: usize) -> u64 {
        let mut seen = vec![false; self.deps.len()];
        let mut stack = self.deps[step].clone();
        let mut agents = 0u64;
        while let Some(s) = stack.pop() {
            if std::mem::replace(&mut seen[s], true) {
                continue;
            }
            if trace.steps[s].outcome.ran() {
                agents |= 1 << self.agent_of[s];
            }
            stack.extend_from_slice(&self.deps[s]);
        }
        agents
    }

    /// The harm events, merged and normalised; empty when the saga did no harm.
    fn events(&self, trace: &SagaTrace, policy: &ShapleyPolicy) -> Vec<HarmEvent> {
        let mut merged: BTreeMap<(u64, u64), f64> = BTreeMap::new();
        let mut add = |cause: u64, enablers: u64, weight: f64| {
            *merged.entry((cause, enablers & !cause)).or_default() += weight;
        };
        let trigger = self.first_failure.map_or(0, |f| 1 << self.agent_of[f]);
        if let Some(f) = self.first_failure {
            add(
                1 << self.agent_of[f],
                self.past_agents(trace, f),
                policy.failure_weight,
            );
        }
        for (i, step) in trace.steps.iter().enumerate() {
            let extra = match step.outcome {
                StepOutcome::CompensationFailed => trigger,
                StepOutcome::Residue => 0,
                _ => continue,
            };
            add(
                1 << self.agent_of[i],
                self.past_agents(trace, i) | extra,
                policy.residue_weight * f64::from(step.changes.max(1)),
            );
        }
        let total: f64 = merged.values().sum();
        merged
            .into_iter()
            .map(|((cause, enablers), w)| HarmEvent {
                cause,
                enablers,
                weight: w / total,
            })
            .collect()
    }
}

/// Some step on a dependency cycle, if there is one (Kahn's algorithm; what
/// it cannot order contains a cycle, found by following dependencies).
fn on_a_cycle(deps: &[Vec<usize>]) -> Option<usize> {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (step, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(step);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&s| waiting[s] == 0).collect();
    while let Some(s) = ready.pop() {
        for &t in &dependents[s] {
            waiting[t] -= 1;
            if waiting[t] == 0 {
                ready.push(t);
            }
        }
    }
    // Every unordered step waits on an unordered dependency; walking those
    // must revisit a step within n moves, and that step is on a cycle.
    let mut step = (0..n).find(|&s| waiting[s] > 0)?;
    let mut visited = vec![false; n];
    while !std::mem::replace(&mut visited[step], true) {
        step = *deps[step].iter().find(|&&d| waiting[d] > 0)?;
    }
    Some(step)
}

/// The saga game of the module doc, over the agents of a [`SagaTrace`].
#[derive(Debug, Clone, PartialEq)]
pub struct SagaGame {
    agents: Vec<AgentId>,
    direct_cause: Option<AgentId>,
    events: Vec<HarmEvent>,
    cause_weight: f64,
}

impl SagaGame {
    /// Builds the game of `trace` under `policy`.
    ///
    /// # Errors
    /// [`AttributionError`] for an inconsistent trace (duplicate or unknown
    /// steps, a cycle, a first failure that did not fail), more than 64
    /// agents, or a bad policy.
    pub fn new(trace: &SagaTrace, policy: &ShapleyPolicy) -> Result<SagaGame, AttributionError> {
        policy.validate()?;
        let resolved = Resolved::new(trace)?;
        let events = resolved.events(trace, policy);
        Ok(SagaGame {
            direct_cause: resolved.direct_cause(),
            agents: resolved.agents,
            events,
            cause_weight: policy.cause_weight,
        })
    }

    /// The players: player `i` is `agents()[i]` (ordered by id).
    pub fn agents(&self) -> &[AgentId] {
        &self.agents
    }

    /// The agent of the first failing step, if a step failed.
    pub fn direct_cause(&self) -> Option<&AgentId> {
        self.direct_cause.as_ref()
    }

    /// Whether the saga did any harm (otherwise `v` is 0 everywhere).
    pub fn has_harm(&self) -> bool {
        !self.events.is_empty()
    }
}

impl Game for SagaGame {
    fn players(&self) -> usize {
        self.agents.len()
    }

    fn value(&self, coalition: u64) -> f64 {
        let alpha = self.cause_weight;
        self.events
            .iter()
            .filter(|e| coalition & e.cause != 0)
            .map(|e| {
                let enabled = if coalition & e.enablers == e.enablers {
                    1.0 - alpha
                } else {
                    0.0
                };
                e.weight * (alpha + enabled)
            })
            .sum()
    }

    /// `(0, h)`: `v` only grows with the coalition, and an agent adds at most
    /// the whole of each event it causes plus `1 − α` of each it enables.
    fn bounds(&self) -> (f64, f64) {
        let enabling = 1.0 - self.cause_weight;
        let hi = (0..self.agents.len())
            .map(|i| {
                let bit = 1u64 << i;
                self.events
                    .iter()
                    .map(|e| {
                        if e.cause == bit {
                            e.weight
                        } else if e.enablers & bit != 0 {
                            e.weight * enabling
                        } else {
                            0.0
                        }
                    })
                    .sum::<f64>()
            })
            .fold(0.0, f64::max);
        (0.0, hi)
    }
}

/// Splits the harm `trace` records over its agents under `policy`.
///
/// # Errors
/// [`AttributionError`] for an inconsistent trace (duplicate or unknown
/// steps, a cycle, a first failure that did not fail), more than 64 agents,
/// a bad policy, or a sampling bound beyond the solver's budget.
pub fn attribute(
    trace: &SagaTrace,
    policy: &AttributionPolicy,
) -> Result<Attribution, AttributionError> {
    match policy {
        AttributionPolicy::Shapley(policy) => {
            let game = SagaGame::new(trace, policy)?;
            if !game.has_harm() {
                return Ok(no_harm(game.agents, game.direct_cause));
            }
            let values = if policy.always_sample {
                shapley::sampled(&game, policy.sampling)?
            } else {
                shapley::shapley(&game, policy.sampling)?
            };
            let method = match values.method {
                Method::Exact => AttributionMethod::Exact,
                Method::Sampled {
                    permutations,
                    sampling,
                } => AttributionMethod::Sampled {
                    permutations,
                    sampling,
                },
            };
            Ok(Attribution {
                shares: shares(game.agents, values.values),
                direct_cause: game.direct_cause,
                method,
            })
        }
        AttributionPolicy::Heuristic => {
            let resolved = Resolved::new(trace)?;
            let direct_cause = resolved.direct_cause();
            let (raw, harm) = heuristic_scores(trace, &resolved);
            if !harm {
                return Ok(no_harm(resolved.agents, direct_cause));
            }
            // Harm means a step ran, so its agent's temporal term makes total > 0.
            let total: f64 = raw.iter().sum();
            let values = raw.into_iter().map(|r| r / total).collect();
            Ok(Attribution {
                shares: shares(resolved.agents, values),
                direct_cause,
                method: AttributionMethod::Heuristic,
            })
        }
    }
}

/// The heuristic's raw score per agent, and whether the saga did harm.
fn heuristic_scores(trace: &SagaTrace, resolved: &Resolved) -> (Vec<f64>, bool) {
    let mut raw = vec![0.0; resolved.agents.len()];
    if let Some(f) = resolved.first_failure {
        raw[resolved.agent_of[f]] += HEURISTIC_DIRECT;
    }
    let enabling: Vec<usize> = trace
        .steps
        .iter()
        .enumerate()
        .filter(|&(i, s)| {
            Some(i) != resolved.first_failure
                && matches!(
                    s.outcome,
                    StepOutcome::Failed | StepOutcome::CompensationFailed | StepOutcome::Residue
                )
        })
        .map(|(i, _)| i)
        .collect();
    for &i in &enabling {
        raw[resolved.agent_of[i]] += HEURISTIC_ENABLING / enabling.len() as f64;
    }
    // Once per agent: the reference averages the risk over the agent's actions.
    let mut acted = vec![false; resolved.agents.len()];
    for (i, step) in trace.steps.iter().enumerate() {
        if step.outcome.ran() {
            acted[resolved.agent_of[i]] = true;
        }
    }
    for (score, _) in raw.iter_mut().zip(acted).filter(|(_, acted)| *acted) {
        *score += HEURISTIC_TEMPORAL * HEURISTIC_RISK;
    }
    let harm = resolved.first_failure.is_some()
        || trace.steps.iter().any(|s| {
            matches!(
                s.outcome,
                StepOutcome::CompensationFailed | StepOutcome::Residue
            )
        });
    (raw, harm)
}

fn shares(agents: Vec<AgentId>, values: Vec<f64>) -> Vec<Share> {
    agents
        .into_iter()
        .zip(values)
        .map(|(agent, share)| Share { agent, share })
        .collect()
}

fn no_harm(agents: Vec<AgentId>, direct_cause: Option<AgentId>) -> Attribution {
    Attribution {
        shares: agents
            .into_iter()
            .map(|agent| Share { agent, share: 0.0 })
            .collect(),
        direct_cause,
        method: AttributionMethod::NoHarm,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;
    use crate::shapley::permutations_needed;

    use StepOutcome::{Committed, Compensated, CompensationFailed, Failed, NotRun, Residue};

    fn step(id: &str, agent: &str, deps: &[&str], outcome: StepOutcome, changes: u32) -> TraceStep {
        TraceStep {
            id: id.to_owned(),
            agent: AgentId::new(agent).unwrap(),
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            outcome,
            changes,
        }
    }

    fn trace(steps: Vec<TraceStep>, first_failure: Option<&str>) -> SagaTrace {
        SagaTrace {
            steps,
            first_failure: first_failure.map(str::to_owned),
        }
    }

    fn shapley_default(t: &SagaTrace) -> Attribution {
        attribute(t, &AttributionPolicy::default()).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The closed form of the module doc, computed from the trace without the
    /// code under test: per harm step, its cause, its enabling agents and weight.
    fn closed_form(t: &SagaTrace, p: &ShapleyPolicy) -> HashMap<String, f64> {
        let by_id: HashMap<&str, &TraceStep> = t.steps.iter().map(|s| (s.id.as_str(), s)).collect();
        let past = |id: &str| {
            let mut agents = HashSet::new();
            let mut seen = HashSet::new();
            let mut stack: Vec<&str> = by_id[id].depends_on.iter().map(String::as_str).collect();
            while let Some(s) = stack.pop() {
                if seen.insert(s) {
                    if by_id[s].outcome != NotRun {
                        agents.insert(by_id[s].agent.to_string());
                    }
                    stack.extend(by_id[s].depends_on.iter().map(String::as_str));
                }
            }
            agents
        };
        let mut events: Vec<(String, HashSet<String>, f64)> = Vec::new();
        let first = t.first_failure.as_deref();
        if let Some(f) = first {
            events.push((by_id[f].agent.to_string(), past(f), p.failure_weight));
        }
        for s in &t.steps {
            if matches!(s.outcome, CompensationFailed | Residue) {
                let mut enablers = past(&s.id);
                if s.outcome == CompensationFailed
                    && let Some(f) = first
                {
                    enablers.insert(by_id[f].agent.to_string());
                }
                events.push((
                    s.agent.to_string(),
                    enablers,
                    p.residue_weight * f64::from(s.changes.max(1)),
                ));
            }
        }
        let total: f64 = events.iter().map(|e| e.2).sum();
        let mut phi: HashMap<String, f64> =
            t.steps.iter().map(|s| (s.agent.to_string(), 0.0)).collect();
        let alpha = p.cause_weight;
        for (cause, mut enablers, w) in events {
            enablers.remove(&cause);
            let w = w / total;
            let members = enablers.len() as f64 + 1.0;
            *phi.get_mut(&cause).unwrap() += w * (alpha + (1.0 - alpha) / members);
            for e in enablers {
                *phi.get_mut(&e).unwrap() += w * (1.0 - alpha) / members;
            }
        }
        phi
    }

    /// a (A) → b (B) → c (C), and c failed; a and b were compensated.
    fn chain() -> SagaTrace {
        trace(
            vec![
                step("a", "A", &[], Compensated, 1),
                step("b", "B", &["a"], Compensated, 1),
                step("c", "C", &["b"], Failed, 0),
            ],
            Some("c"),
        )
    }

    #[test]
    fn direct_cause_gets_the_largest_share() {
        let got = shapley_default(&chain());
        assert_eq!(got.method, AttributionMethod::Exact);
        assert_eq!(got.direct_cause, Some(AgentId::new("C").unwrap()));
        // α + (1−α)/3 for the cause, (1−α)/3 for each enabler.
        assert!(close(got.share("C").unwrap(), 0.5 + 0.5 / 3.0));
        assert!(close(got.share("A").unwrap(), 0.5 / 3.0));
        assert!(close(got.share("B").unwrap(), 0.5 / 3.0));
    }

    #[test]
    fn an_agent_outside_the_causal_past_without_residue_gets_nothing() {
        let mut t = chain();
        // D ran on an independent branch; E's step depends on the failure and never ran.
        t.steps.push(step("d", "D", &[], Compensated, 4));
        t.steps.push(step("e", "E", &["c"], NotRun, 0));
        let got = shapley_default(&t);
        assert_eq!(got.share("D"), Some(0.0));
        assert_eq!(got.share("E"), Some(0.0));
        assert!(close(got.share("C").unwrap(), 0.5 + 0.5 / 3.0));
    }

    #[test]
    fn symmetric_enablers_get_equal_shares() {
        let t = trace(
            vec![
                step("a", "A", &[], Compensated, 1),
                step("b", "B", &[], Compensated, 2),
                step("c", "C", &["a", "b"], Failed, 0),
            ],
            Some("c"),
        );
        let got = shapley_default(&t);
        assert_eq!(got.share("A"), got.share("B"));
        assert!(got.share("A").unwrap() > 0.0);
    }

    #[test]
    fn shares_sum_to_one() {
        for t in [chain(), compensation_failure()] {
            let got = shapley_default(&t);
            assert!(close(got.shares.iter().map(|s| s.share).sum(), 1.0));
            let heuristic = attribute(&t, &AttributionPolicy::Heuristic).unwrap();
            assert!(close(heuristic.shares.iter().map(|s| s.share).sum(), 1.0));
        }
    }

    #[test]
    fn a_completed_saga_blames_nobody() {
        let t = trace(
            vec![
                step("a", "A", &[], Committed, 3),
                step("b", "B", &["a"], Committed, 1),
            ],
            None,
        );
        for policy in [AttributionPolicy::default(), AttributionPolicy::Heuristic] {
            let got = attribute(&t, &policy).unwrap();
            assert_eq!(got.method, AttributionMethod::NoHarm);
            assert!(!got.blames_anyone());
            assert_eq!(got.direct_cause, None);
            assert_eq!(got.shares.len(), 2);
            assert!(got.shares.iter().all(|s| s.share == 0.0));
        }
    }

    #[test]
    fn a_failed_branch_the_fanout_tolerated_blames_nobody() {
        let t = trace(
            vec![
                step("x", "A", &[], Committed, 1),
                step("y", "B", &[], Failed, 0),
            ],
            None,
        );
        assert_eq!(shapley_default(&t).method, AttributionMethod::NoHarm);
    }

    /// a (A) committed changes it could not undo; b (B), which used them, failed.
    fn compensation_failure() -> SagaTrace {
        trace(
            vec![
                step("a", "A", &[], CompensationFailed, 3),
                step("b", "B", &["a"], Failed, 0),
            ],
            Some("b"),
        )
    }

    #[test]
    fn a_failed_compensation_blames_its_agent_with_the_failure_as_trigger() {
        let got = shapley_default(&compensation_failure());
        // Failure (w 1/4): B cause, A enabler. Residue (w 3/4): A cause, B trigger.
        assert!(close(got.share("B").unwrap(), 0.25 * 0.75 + 0.75 * 0.25));
        assert!(close(got.share("A").unwrap(), 0.25 * 0.25 + 0.75 * 0.75));
        assert_eq!(got.direct_cause, Some(AgentId::new("B").unwrap()));
    }

    #[test]
    fn residue_without_a_failure_is_harm_of_its_own_agent() {
        let t = trace(
            vec![
                step("x", "A", &[], Committed, 1),
                step("y", "B", &[], Residue, 2),
            ],
            None,
        );
        let got = shapley_default(&t);
        assert_eq!(got.share("B"), Some(1.0));
        assert_eq!(got.share("A"), Some(0.0));
        assert_eq!(got.direct_cause, None);
    }

    #[test]
    fn the_cause_is_not_its_own_enabler() {
        // C ran both a and the failing c; B's b sits between them.
        let t = trace(
            vec![
                step("a", "C", &[], Compensated, 1),
                step("b", "B", &["a"], Compensated, 1),
                step("c", "C", &["b"], Failed, 0),
            ],
            Some("c"),
        );
        let got = shapley_default(&t);
        assert!(close(got.share("C").unwrap(), 0.75));
        assert!(close(got.share("B").unwrap(), 0.25));
    }

    #[test]
    fn a_step_that_never_ran_enables_nothing() {
        let t = trace(
            vec![
                step("a", "A", &[], NotRun, 0),
                step("c", "C", &["a"], Failed, 0),
            ],
            Some("c"),
        );
        assert_eq!(shapley_default(&t).share("A"), Some(0.0));
    }

    #[test]
    fn cause_weight_one_puts_everything_on_the_causes() {
        let policy = ShapleyPolicy {
            cause_weight: 1.0,
            ..ShapleyPolicy::default()
        };
        let got = attribute(&chain(), &AttributionPolicy::Shapley(policy)).unwrap();
        assert_eq!(got.share("C"), Some(1.0));
        assert_eq!(got.share("A"), Some(0.0));
    }

    #[test]
    fn heuristic_matches_the_reference_scoring() {
        let t = trace(
            vec![
                step("a", "A", &[], Committed, 1),
                step("b", "B", &["a"], Failed, 0),
                step("c", "C", &[], CompensationFailed, 1),
                step("d", "D", &["b"], NotRun, 0),
            ],
            Some("b"),
        );
        let got = attribute(&t, &AttributionPolicy::Heuristic).unwrap();
        assert_eq!(got.method, AttributionMethod::Heuristic);
        // Raw: B 0.5 + 0.1, C 0.3 + 0.1, A 0.1, D nothing (it never ran); total 1.1.
        assert!(close(got.share("B").unwrap(), 0.6 / 1.1));
        assert!(close(got.share("C").unwrap(), 0.4 / 1.1));
        assert!(close(got.share("A").unwrap(), 0.1 / 1.1));
        assert_eq!(got.share("D"), Some(0.0));
    }

    #[test]
    fn heuristic_counts_an_agent_once_however_many_steps_it_ran() {
        let t = trace(
            vec![
                step("a1", "A", &[], Compensated, 1),
                step("a2", "A", &[], Compensated, 1),
                step("b", "B", &["a1"], Failed, 0),
            ],
            Some("b"),
        );
        let got = attribute(&t, &AttributionPolicy::Heuristic).unwrap();
        assert!(close(got.share("A").unwrap(), 0.1 / 0.7));
    }

    #[test]
    fn more_than_sixteen_agents_are_sampled_within_the_bound() {
        // s0 (A0) → s1 (A1) → … → s19 (A19), and s19 failed.
        let steps = (0..20)
            .map(|i| {
                let dep = format!("s{}", i.max(1) - 1);
                let deps: Vec<&str> = if i == 0 { vec![] } else { vec![dep.as_str()] };
                let outcome = if i == 19 { Failed } else { Compensated };
                step(&format!("s{i}"), &format!("A{i:02}"), &deps, outcome, 1)
            })
            .collect();
        let t = trace(steps, Some("s19"));
        let policy = ShapleyPolicy::default();
        let got = attribute(&t, &AttributionPolicy::Shapley(policy)).unwrap();
        let m = permutations_needed(20, (0.0, 1.0), 0.01, 0.001).unwrap();
        assert_eq!(
            got.method,
            AttributionMethod::Sampled {
                permutations: m,
                sampling: policy.sampling
            }
        );
        assert!((got.share("A19").unwrap() - (0.5 + 0.5 / 20.0)).abs() <= 0.01);
        for i in 0..19 {
            let share = got.share(&format!("A{i:02}")).unwrap();
            assert!((share - 0.5 / 20.0).abs() <= 0.01, "A{i:02}: {share}");
        }
        assert!(close(got.shares.iter().map(|s| s.share).sum(), 1.0));
    }

    #[test]
    fn always_sample_samples_small_sagas_too() {
        let policy = ShapleyPolicy {
            always_sample: true,
            ..ShapleyPolicy::default()
        };
        let got = attribute(&chain(), &AttributionPolicy::Shapley(policy)).unwrap();
        assert!(matches!(got.method, AttributionMethod::Sampled { .. }));
        assert!((got.share("C").unwrap() - (0.5 + 0.5 / 3.0)).abs() <= 0.01);
    }

    #[test]
    fn saga_game_bounds_cover_causes_and_enablers() {
        let game = SagaGame::new(&compensation_failure(), &ShapleyPolicy::default()).unwrap();
        // A: all of the 3/4 residue plus half of the 1/4 failure it enabled.
        assert_eq!(game.bounds(), (0.0, 0.75 + 0.125));
        assert!(close(game.value(0b11), 1.0));
        assert_eq!(game.value(0), 0.0);
        assert_eq!(game.direct_cause().map(AgentId::as_str), Some("B"));
    }

    #[test]
    fn inconsistent_records_are_errors() {
        let dup = trace(
            vec![
                step("a", "A", &[], Failed, 0),
                step("a", "B", &[], Committed, 0),
            ],
            Some("a"),
        );
        assert_eq!(
            shapley_error(&dup),
            AttributionError::DuplicateStep { step: "a".into() }
        );
        let unknown = trace(vec![step("a", "A", &["zz"], Failed, 0)], Some("a"));
        assert_eq!(
            shapley_error(&unknown),
            AttributionError::UnknownDependency {
                step: "a".into(),
                dependency: "zz".into()
            }
        );
        let cycle = trace(
            vec![
                step("x", "A", &["b"], Failed, 0),
                step("a", "A", &["b"], Committed, 0),
                step("b", "B", &["a"], Committed, 0),
            ],
            Some("x"),
        );
        let err = shapley_error(&cycle);
        assert!(
            matches!(&err, AttributionError::DependencyCycle { step } if step == "a" || step == "b"),
            "{err:?}"
        );
        let missing = trace(vec![step("a", "A", &[], Failed, 0)], Some("b"));
        assert_eq!(
            shapley_error(&missing),
            AttributionError::UnknownFirstFailure { step: "b".into() }
        );
        let committed = trace(vec![step("a", "A", &[], Committed, 0)], Some("a"));
        assert_eq!(
            shapley_error(&committed),
            AttributionError::FirstFailureDidNotFail {
                step: "a".into(),
                outcome: Committed
            }
        );
        assert!(matches!(
            attribute(&committed, &AttributionPolicy::Heuristic),
            Err(AttributionError::FirstFailureDidNotFail { .. })
        ));
    }

    #[test]
    fn a_self_dependency_is_a_cycle() {
        let t = trace(vec![step("a", "A", &["a"], Failed, 0)], Some("a"));
        assert_eq!(
            shapley_error(&t),
            AttributionError::DependencyCycle { step: "a".into() }
        );
    }

    fn shapley_error(t: &SagaTrace) -> AttributionError {
        attribute(t, &AttributionPolicy::default()).unwrap_err()
    }

    #[test]
    fn more_than_sixty_four_agents_is_an_error() {
        let steps = (0..65)
            .map(|i| step(&format!("s{i}"), &format!("A{i}"), &[], Residue, 1))
            .collect();
        assert_eq!(
            shapley_error(&trace(steps, None)),
            AttributionError::Shapley(ShapleyError::TooManyPlayers {
                players: 65,
                max: 64
            })
        );
    }

    #[test]
    fn bad_policies_are_errors() {
        let bad = [
            (
                "cause_weight",
                ShapleyPolicy {
                    cause_weight: 1.5,
                    ..ShapleyPolicy::default()
                },
            ),
            (
                "cause_weight",
                ShapleyPolicy {
                    cause_weight: f64::NAN,
                    ..ShapleyPolicy::default()
                },
            ),
            (
                "failure_weight",
                ShapleyPolicy {
                    failure_weight: 0.0,
                    ..ShapleyPolicy::default()
                },
            ),
            (
                "residue_weight",
                ShapleyPolicy {
                    residue_weight: -1.0,
                    ..ShapleyPolicy::default()
                },
            ),
            (
                "residue_weight",
                ShapleyPolicy {
                    residue_weight: f64::INFINITY,
                    ..ShapleyPolicy::default()
                },
            ),
        ];
        for (field, policy) in bad {
            let err = attribute(&chain(), &AttributionPolicy::Shapley(policy)).unwrap_err();
            assert!(
                matches!(err, AttributionError::BadPolicy { field: f, .. } if f == field),
                "{err:?}"
            );
        }
        let mut policy = ShapleyPolicy::default();
        policy.sampling.epsilon = 0.0;
        // Refused even though three agents would be solved exactly.
        assert!(matches!(
            attribute(&chain(), &AttributionPolicy::Shapley(policy)),
            Err(AttributionError::Shapley(ShapleyError::BadEpsilon { .. }))
        ));
    }

    /// Random DAG sagas: up to 10 steps over up to 6 agents, each step
    /// depending on earlier ones, random outcomes, maybe a first failure.
    fn random_saga() -> impl Strategy<Value = SagaTrace> {
        let outcomes = prop::sample::select(vec![
            Committed,
            Failed,
            Compensated,
            CompensationFailed,
            Residue,
            NotRun,
        ]);
        (1usize..=10, 1usize..=6)
            .prop_flat_map(move |(n, agents)| {
                (
                    prop::collection::vec((0..agents, any::<u16>(), outcomes.clone(), 0u32..5), n),
                    prop::option::of(0..n),
                    any::<bool>(),
                )
            })
            .prop_map(|(raw, first, residue_first)| {
                let mut steps: Vec<TraceStep> = raw
                    .iter()
                    .enumerate()
                    .map(|(i, &(agent, deps, outcome, changes))| {
                        let deps: Vec<String> = (0..i)
                            .filter(|d| deps & (1 << d) != 0)
                            .map(|d| format!("s{d}"))
                            .collect();
                        TraceStep {
                            id: format!("s{i}"),
                            agent: AgentId::new(format!("agent-{agent}")).unwrap(),
                            depends_on: deps,
                            outcome,
                            changes,
                        }
                    })
                    .collect();
                if let Some(f) = first {
                    steps[f].outcome = if residue_first { Residue } else { Failed };
                }
                SagaTrace {
                    steps,
                    first_failure: first.map(|f| format!("s{f}")),
                }
            })
    }

    fn harmful(t: &SagaTrace) -> bool {
        t.first_failure.is_some()
            || t.steps
                .iter()
                .any(|s| matches!(s.outcome, CompensationFailed | Residue))
    }

    proptest! {
        #[test]
        fn random_sagas_split_all_the_harm_and_spare_null_players(t in random_saga()) {
            let policy = ShapleyPolicy::default();
            let got = attribute(&t, &AttributionPolicy::Shapley(policy)).unwrap();
            let total: f64 = got.shares.iter().map(|s| s.share).sum();
            if harmful(&t) {
                prop_assert_eq!(got.method, AttributionMethod::Exact);
                prop_assert!(close(total, 1.0), "{}", total);
            } else {
                prop_assert_eq!(got.method, AttributionMethod::NoHarm);
                prop_assert_eq!(total, 0.0);
            }
            let oracle = closed_form(&t, &policy);
            for share in &got.shares {
                let want = if harmful(&t) { oracle[share.agent.as_str()] } else { 0.0 };
                prop_assert!(close(share.share, want), "{}: {} vs {}", share.agent, share.share, want);
                if want == 0.0 {
                    // Null player: in no event, so its marginals are exactly 0.
                    prop_assert_eq!(share.share, 0.0);
                }
            }
        }

        #[test]
        fn random_sagas_sampled_stay_within_epsilon(t in random_saga()) {
            prop_assume!(harmful(&t));
            let policy = ShapleyPolicy {
                sampling: Sampling { epsilon: 0.05, delta: 1e-6, seed: 11 },
                always_sample: true,
                ..ShapleyPolicy::default()
            };
            let got = attribute(&t, &AttributionPolicy::Shapley(policy)).unwrap();
            let oracle = closed_form(&t, &policy);
            prop_assert!(close(got.shares.iter().map(|s| s.share).sum(), 1.0));
            for share in &got.shares {
                prop_assert!((share.share - oracle[share.agent.as_str()]).abs() <= 0.05);
            }
        }

        #[test]
        fn random_sagas_heuristic_sums_to_one_when_harmful(t in random_saga()) {
            let got = attribute(&t, &AttributionPolicy::Heuristic).unwrap();
            let total: f64 = got.shares.iter().map(|s| s.share).sum();
            let want = if harmful(&t) { 1.0 } else { 0.0 };
            prop_assert!(close(total, want), "{} vs {}", total, want);
        }
    }
}
