//! Loading and checking saga definitions: YAML ([`serde_yaml_ng`]) or JSON, then
//! [`SagaDefinition::validate`]. Parse errors keep the parser's line and
//! column; validation errors name the step (or group) and the field.
//!
//! Validation also computes the schedule's dependency graph ([`Plan`]): a
//! fan-out group is one node whose dependencies are the union of its
//! branches' dependencies (the branches start together once all of them are
//! met), and a step that depends on a group id waits for the whole group.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ahv_core::{AgentId, IdError};
use thiserror::Error;

use crate::definition::{
    MAX_INPUT_BYTES, MAX_NAME_LEN, MAX_RETRIES, MAX_STEPS, MAX_TIMEOUT_SECS, SagaDefinition,
};

/// Why a saga definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DefinitionError {
    /// The YAML did not parse or did not fit the model (missing or unknown field, wrong type).
    #[error("YAML at line {line}, column {column}: {message}")]
    Yaml {
        /// The parser's message (names the field).
        message: String,
        /// 1-based line, 0 if unknown.
        line: u64,
        /// 1-based column, 0 if unknown.
        column: u64,
    },
    /// The JSON did not parse or did not fit the model.
    #[error("JSON at line {line}, column {column}: {message}")]
    Json {
        /// The parser's message (names the field).
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The file could not be read.
    #[error("cannot read saga definition {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// The file's extension is not `.yaml`, `.yml` or `.json`.
    #[error("saga definition {path} has an unknown extension; use .yaml, .yml or .json")]
    UnknownFormat {
        /// The file.
        path: String,
    },
    /// The text is larger than 1 MiB.
    #[error("saga definition is {len} bytes; the maximum is {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Serializing a definition failed.
    #[error("cannot serialize saga definition: {message}")]
    Serialize {
        /// The serializer's message.
        message: String,
    },
    /// The saga's name is empty or longer than 256 bytes.
    #[error("saga name is {len} bytes; it must be 1..={max}")]
    BadName {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The saga has no steps.
    #[error("saga {name:?} has no steps")]
    Empty {
        /// The saga's name.
        name: String,
    },
    /// The saga has more than 1024 steps (or fan-out groups).
    #[error("saga has {count} {what}; the maximum is {max}")]
    TooMany {
        /// "steps" or "fan-out groups".
        what: &'static str,
        /// How many it has.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// Backoff bounds out of range.
    #[error("backoff: {field} = {value} {reason}")]
    BadBackoff {
        /// `base_ms` or `cap_ms`.
        field: &'static str,
        /// The value given.
        value: u64,
        /// What it must be.
        reason: &'static str,
    },
    /// A step or group id, or an action name, is not in the id charset.
    #[error("{owner}: field {field} = {value:?} is not a valid id: {reason}")]
    BadId {
        /// The step or group it belongs to (`step "x"` / `fan-out group "g"`).
        owner: String,
        /// Which field.
        field: &'static str,
        /// The value given (truncated to 64 chars).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A step's agent is not a valid agent id.
    #[error("step {step:?}: field agent: {source}")]
    BadAgent {
        /// The step.
        step: String,
        /// Why the agent id was refused.
        source: IdError,
    },
    /// An entry of `agents` is invalid (id, component or σ).
    #[error("agents[{index}]: field {field}: {reason}")]
    BadAgentDef {
        /// Its position in `agents`.
        index: usize,
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A step's agent is not among the saga's `agents`.
    #[error("step {step:?}: field agent: {agent:?} is not listed in agents")]
    UnlistedAgent {
        /// The step.
        step: String,
        /// Its agent.
        agent: String,
    },
    /// Two steps share an id.
    #[error("step id {id:?} is used by more than one step")]
    DuplicateStep {
        /// The id.
        id: String,
    },
    /// Two fan-out groups share an id.
    #[error("fan-out group id {id:?} is used by more than one group")]
    DuplicateGroup {
        /// The id.
        id: String,
    },
    /// A fan-out group has the id of a step.
    #[error("fan-out group id {id:?} is also a step id")]
    GroupIdIsStepId {
        /// The id.
        id: String,
    },
    /// A step's timeout is outside 1..=86400 seconds.
    #[error("step {step:?}: field timeout_secs = {value} is outside 1..={max}")]
    BadTimeout {
        /// The step.
        step: String,
        /// The value given.
        value: u32,
        /// The maximum.
        max: u32,
    },
    /// A step asks for more than 10 retries.
    #[error("step {step:?}: field retries = {value} is outside 0..={max}")]
    BadRetries {
        /// The step.
        step: String,
        /// The value given.
        value: u32,
        /// The maximum.
        max: u32,
    },
    /// A step's input (execute, undo or checkpoint) is larger than 1 MiB.
    #[error("step {step:?}: field {field} is {len} bytes; the maximum is {max}")]
    InputTooLarge {
        /// The step.
        step: String,
        /// Which field.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A step depends on an id that is neither a step nor a group.
    #[error("step {step:?}: field depends_on names unknown step or group {dependency:?}")]
    UnknownDependency {
        /// The step.
        step: String,
        /// The unknown id.
        dependency: String,
    },
    /// A step lists the same dependency twice.
    #[error("step {step:?}: field depends_on lists {dependency:?} twice")]
    DuplicateDependency {
        /// The step.
        step: String,
        /// The repeated id.
        dependency: String,
    },
    /// The dependencies form a cycle (steps and groups, first repeated at the end).
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The ids on the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// A fan-out group has fewer than two branches.
    #[error(
        "fan-out group {group:?}: field branches has {count} branch(es); at least 2 are needed"
    )]
    TooFewBranches {
        /// The group.
        group: String,
        /// How many it has.
        count: usize,
    },
    /// A fan-out group names a branch that is not a step.
    #[error("fan-out group {group:?}: field branches names unknown step {branch:?}")]
    UnknownBranch {
        /// The group.
        group: String,
        /// The unknown id.
        branch: String,
    },
    /// A step is a branch of two groups (or twice of one).
    #[error("step {step:?} is a branch of both {first:?} and {second:?}")]
    StepInTwoGroups {
        /// The step.
        step: String,
        /// The first group naming it.
        first: String,
        /// The second group naming it.
        second: String,
    },
    /// Branches of one group depend on each other, so they could not start together.
    #[error("fan-out group {group:?}: branch {step:?} depends on branch {on:?} of the same group")]
    BranchesDependent {
        /// The group.
        group: String,
        /// The depending branch.
        step: String,
        /// The branch it depends on.
        on: String,
    },
    /// A step outside a group depends on one of its branches instead of the group.
    #[error(
        "step {step:?}: field depends_on names {branch:?}, a branch of fan-out group {group:?}; depend on {group:?} instead"
    )]
    DependsOnBranch {
        /// The step.
        step: String,
        /// The branch it named.
        branch: String,
        /// The group to depend on instead.
        group: String,
    },
}

/// One node of the schedule: a lone step, or a fan-out group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// A step outside any group (its index in `steps`).
    Step(usize),
    /// A fan-out group (its index in `fanout`).
    Group(usize),
}

/// The schedule of a valid definition: units in definition order (a group
/// takes the place of its first branch) with their dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The units, in the order ties between ready units are broken.
    pub units: Vec<Unit>,
    /// For each unit, the indices (into `units`) of the units it waits for.
    pub deps: Vec<Vec<usize>>,
    /// For each step, the group it is a branch of.
    pub group_of: Vec<Option<usize>>,
}

impl SagaDefinition {
    /// Parses YAML, then validates.
    ///
    /// # Errors
    /// [`DefinitionError::Yaml`] with line and column, or any validation error.
    pub fn from_yaml(text: &str) -> Result<SagaDefinition, DefinitionError> {
        check_size(text)?;
        let def: SagaDefinition = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map_or((0, 0), |l| (l.line() as u64, l.column() as u64));
            DefinitionError::Yaml {
                message: e.to_string(),
                line,
                column,
            }
        })?;
        def.validate()?;
        Ok(def)
    }

    /// Parses JSON, then validates.
    ///
    /// # Errors
    /// [`DefinitionError::Json`] with line and column, or any validation error.
    pub fn from_json(text: &str) -> Result<SagaDefinition, DefinitionError> {
        check_size(text)?;
        let def: SagaDefinition =
            serde_json::from_str(text).map_err(|e| DefinitionError::Json {
                message: e.to_string(),
                line: e.line(),
                column: e.column(),
            })?;
        def.validate()?;
        Ok(def)
    }

    /// Reads a file and parses it by extension (`.yaml`/`.yml` or `.json`).
    ///
    /// # Errors
    /// [`DefinitionError::Io`], [`DefinitionError::UnknownFormat`], or a parse
    /// or validation error.
    pub fn from_path(path: &Path) -> Result<SagaDefinition, DefinitionError> {
        let shown = path.display().to_string();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let yaml = match ext.as_deref() {
            Some("yaml" | "yml") => true,
            Some("json") => false,
            _ => return Err(DefinitionError::UnknownFormat { path: shown }),
        };
        // Refuse oversized files before reading them into memory.
        let too_big = std::fs::metadata(path)
            .map_err(|e| DefinitionError::Io {
                path: shown.clone(),
                message: e.to_string(),
            })?
            .len()
            > MAX_INPUT_BYTES as u64;
        if too_big {
            return Err(DefinitionError::TooLarge {
                len: usize::MAX,
                max: MAX_INPUT_BYTES,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| DefinitionError::Io {
            path: shown,
            message: e.to_string(),
        })?;
        if yaml {
            SagaDefinition::from_yaml(&text)
        } else {
            SagaDefinition::from_json(&text)
        }
    }

    /// The definition as pretty JSON.
    ///
    /// # Errors
    /// [`DefinitionError::Serialize`] (not expected for these types).
    pub fn to_json(&self) -> Result<String, DefinitionError> {
        serde_json::to_string_pretty(self).map_err(|e| DefinitionError::Serialize {
            message: e.to_string(),
        })
    }

    /// The definition as YAML that [`SagaDefinition::from_yaml`] reads back
    /// to an equal definition.
    ///
    /// Should the block-style text ever not read back equal (a YAML
    /// library's quoting bug: serde-saphyr 0.0.16, tried first, lost
    /// trailing whitespace), the JSON form is returned instead (JSON is YAML 1.2).
    ///
    /// # Errors
    /// [`DefinitionError::Serialize`] (not expected for these types).
    pub fn to_yaml(&self) -> Result<String, DefinitionError> {
        let text = serde_yaml_ng::to_string(self).map_err(|e| DefinitionError::Serialize {
            message: e.to_string(),
        })?;
        let back: Result<SagaDefinition, _> = serde_yaml_ng::from_str(&text);
        match back {
            Ok(back) if back == *self => Ok(text),
            _ => self.to_json(),
        }
    }

    /// Checks every rule of SEMANTICS.md "Sagas".
    ///
    /// # Errors
    /// The first [`DefinitionError`] found, naming the step or group and the field.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        self.plan().map(|_| ())
    }

    /// Validates and returns the schedule's dependency graph.
    ///
    /// # Errors
    /// As [`SagaDefinition::validate`].
    pub fn plan(&self) -> Result<Plan, DefinitionError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(DefinitionError::BadName {
                len: self.name.len(),
                max: MAX_NAME_LEN,
            });
        }
        if self.steps.is_empty() {
            return Err(DefinitionError::Empty {
                name: self.name.clone(),
            });
        }
        for (what, count) in [
            ("steps", self.steps.len()),
            ("fan-out groups", self.fanout.len()),
        ] {
            if count > MAX_STEPS {
                return Err(DefinitionError::TooMany {
                    what,
                    count,
                    max: MAX_STEPS,
                });
            }
        }
        if self.backoff.base_ms == 0 {
            return Err(DefinitionError::BadBackoff {
                field: "base_ms",
                value: 0,
                reason: "must be at least 1",
            });
        }
        if self.backoff.cap_ms < self.backoff.base_ms {
            return Err(DefinitionError::BadBackoff {
                field: "cap_ms",
                value: self.backoff.cap_ms,
                reason: "must be at least base_ms",
            });
        }

        let mut listed: HashSet<&str> = HashSet::new();
        for (index, a) in self.agents.iter().enumerate() {
            let bad = |field, reason: String| DefinitionError::BadAgentDef {
                index,
                field,
                reason,
            };
            AgentId::new(a.id.as_str()).map_err(|e| bad("id", e.to_string()))?;
            if !listed.insert(&a.id) {
                return Err(bad("id", format!("{:?} is listed twice", a.id)));
            }
            if a.component.is_empty() || a.component.len() > MAX_NAME_LEN * 16 {
                return Err(bad("component", "must be 1..=4096 bytes".into()));
            }
            if !(0.0..=1.0).contains(&a.sigma) {
                return Err(bad("sigma", format!("{} is not in [0, 1]", a.sigma)));
            }
        }
        let mut step_index: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            let owner = format!("step {:?}", s.id);
            check_id(&owner, "id", &s.id)?;
            if step_index.insert(&s.id, i).is_some() {
                return Err(DefinitionError::DuplicateStep { id: s.id.clone() });
            }
            AgentId::new(s.agent.as_str()).map_err(|source| DefinitionError::BadAgent {
                step: s.id.clone(),
                source,
            })?;
            check_id(&owner, "action", &s.action)?;
            if !self.agents.is_empty() && !listed.contains(s.agent.as_str()) {
                return Err(DefinitionError::UnlistedAgent {
                    step: s.id.clone(),
                    agent: s.agent.clone(),
                });
            }
            if !(1..=MAX_TIMEOUT_SECS).contains(&s.timeout_secs) {
                return Err(DefinitionError::BadTimeout {
                    step: s.id.clone(),
                    value: s.timeout_secs,
                    max: MAX_TIMEOUT_SECS,
                });
            }
            if s.retries > MAX_RETRIES {
                return Err(DefinitionError::BadRetries {
                    step: s.id.clone(),
                    value: s.retries,
                    max: MAX_RETRIES,
                });
            }
            let inputs = [
                ("execute", Some(&s.execute)),
                ("undo", s.undo.as_ref()),
                ("checkpoint", s.checkpoint.as_ref()),
            ];
            for (field, v) in inputs {
                let len = v.map_or(0, String::len);
                if len > MAX_INPUT_BYTES {
                    return Err(DefinitionError::InputTooLarge {
                        step: s.id.clone(),
                        field,
                        len,
                        max: MAX_INPUT_BYTES,
                    });
                }
            }
        }

        // Per field the limit is 1 MiB; YAML aliases can repeat one large
        // scalar in every step, so the whole definition is capped too.
        let total: usize = self
            .steps
            .iter()
            .map(|s| {
                s.execute.len()
                    + s.undo.as_ref().map_or(0, String::len)
                    + s.checkpoint.as_ref().map_or(0, String::len)
            })
            .fold(0usize, usize::saturating_add);
        if total > MAX_INPUT_BYTES {
            return Err(DefinitionError::TooLarge {
                len: total,
                max: MAX_INPUT_BYTES,
            });
        }
        let mut group_index: HashMap<&str, usize> = HashMap::new();
        let mut group_of: Vec<Option<usize>> = vec![None; self.steps.len()];
        for (g, f) in self.fanout.iter().enumerate() {
            check_id(&format!("fan-out group {:?}", f.id), "id", &f.id)?;
            if group_index.insert(&f.id, g).is_some() {
                return Err(DefinitionError::DuplicateGroup { id: f.id.clone() });
            }
            if step_index.contains_key(f.id.as_str()) {
                return Err(DefinitionError::GroupIdIsStepId { id: f.id.clone() });
            }
            if f.branches.len() < 2 {
                return Err(DefinitionError::TooFewBranches {
                    group: f.id.clone(),
                    count: f.branches.len(),
                });
            }
            for b in &f.branches {
                let Some(&i) = step_index.get(b.as_str()) else {
                    return Err(DefinitionError::UnknownBranch {
                        group: f.id.clone(),
                        branch: b.clone(),
                    });
                };
                if let Some(first) = group_of[i] {
                    return Err(DefinitionError::StepInTwoGroups {
                        step: b.clone(),
                        first: self.fanout[first].id.clone(),
                        second: f.id.clone(),
                    });
                }
                group_of[i] = Some(g);
            }
        }

        // Units in definition order; a group sits where its first branch is.
        let mut units = Vec::new();
        let mut unit_of_step = vec![0usize; self.steps.len()];
        let mut unit_of_group = vec![0usize; self.fanout.len()];
        let mut group_placed = vec![false; self.fanout.len()];
        for (i, g) in group_of.iter().enumerate() {
            match g {
                None => {
                    unit_of_step[i] = units.len();
                    units.push(Unit::Step(i));
                }
                Some(g) => {
                    if !group_placed[*g] {
                        group_placed[*g] = true;
                        unit_of_group[*g] = units.len();
                        units.push(Unit::Group(*g));
                    }
                    unit_of_step[i] = unit_of_group[*g];
                }
            }
        }

        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); units.len()];
        for (i, s) in self.steps.iter().enumerate() {
            let mut seen = HashSet::new();
            for d in &s.depends_on {
                if !seen.insert(d.as_str()) {
                    return Err(DefinitionError::DuplicateDependency {
                        step: s.id.clone(),
                        dependency: d.clone(),
                    });
                }
                let target = if let Some(&j) = step_index.get(d.as_str()) {
                    if let Some(g) = group_of[j] {
                        let group = self.fanout[g].id.clone();
                        if group_of[i] == Some(g) {
                            return Err(DefinitionError::BranchesDependent {
                                group,
                                step: s.id.clone(),
                                on: d.clone(),
                            });
                        }
                        return Err(DefinitionError::DependsOnBranch {
                            step: s.id.clone(),
                            branch: d.clone(),
                            group,
                        });
                    }
                    unit_of_step[j]
                } else if let Some(&g) = group_index.get(d.as_str()) {
                    unit_of_group[g]
                } else {
                    return Err(DefinitionError::UnknownDependency {
                        step: s.id.clone(),
                        dependency: d.clone(),
                    });
                };
                let u = unit_of_step[i];
                if !deps[u].contains(&target) {
                    deps[u].push(target);
                }
            }
        }

        let name = |u: usize| match units[u] {
            Unit::Step(i) => self.steps[i].id.clone(),
            Unit::Group(g) => self.fanout[g].id.clone(),
        };
        if let Some(cycle) = find_cycle(&deps) {
            return Err(DefinitionError::Cycle {
                cycle: cycle.into_iter().map(name).collect(),
            });
        }
        Ok(Plan {
            units,
            deps,
            group_of,
        })
    }
}

fn check_size(text: &str) -> Result<(), DefinitionError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(DefinitionError::TooLarge {
            len: text.len(),
            max: MAX_INPUT_BYTES,
        });
    }
    Ok(())
}

/// Checks `value` against the id charset of SEMANTICS.md (the agent id rule).
fn check_id(owner: &str, field: &'static str, value: &str) -> Result<(), DefinitionError> {
    AgentId::new(value).map(|_| ()).map_err(|e| {
        let reason = match e {
            IdError::Empty { .. } => "it is empty".to_owned(),
            IdError::TooLong { len, max, .. } => format!("it is {len} bytes; the maximum is {max}"),
            IdError::BadChar { ch, at, .. } => format!(
                "bad character {ch:?} at byte {at} (letters, digits and . _ : -, not first or last)"
            ),
        };
        DefinitionError::BadId {
            owner: owner.to_owned(),
            field,
            value: value.chars().take(64).collect(),
            reason,
        }
    })
}

/// A dependency cycle as unit indices, the first repeated at the end.
/// Iterative so a 1024-step chain cannot overflow the stack.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; deps.len()];
    for root in 0..deps.len() {
        if color[root] != WHITE {
            continue;
        }
        // (node, index of the next dependency to visit)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        color[root] = GREY;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            if let Some(&d) = deps[node].get(next) {
                top.1 += 1;
                match color[d] {
                    WHITE => {
                        color[d] = GREY;
                        stack.push((d, 0));
                    }
                    GREY => {
                        let start = stack.iter().position(|&(n, _)| n == d).unwrap_or(0);
                        let mut cycle: Vec<usize> =
                            stack[start..].iter().map(|&(n, _)| n).collect();
                        cycle.push(d);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                color[node] = BLACK;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Backoff, CrashPolicy, FanoutDef, Isolation, StepDef, Via};
    use crate::fanout::FanoutPolicy;
    use proptest::prelude::*;

    const GOOD: &str = r#"
name: deploy
isolation: read-committed
on_crash: compensate
backoff: { base_ms: 50, cap_ms: 1000 }
steps:
  - id: build
    agent: did:example:builder
    action: build
    execute: "make"
    retries: 2
    checkpoint: v1
  - id: test-a
    agent: did:example:t1
    action: test
    via: host
    depends_on: [build]
  - id: test-b
    agent: did:example:t2
    action: test
    undo: cleanup
    timeout_secs: 86400
    depends_on: [build]
  - id: ship
    agent: did:example:shipper
    action: ship
    depends_on: [tests]
fanout:
  - id: tests
    policy: majority
    branches: [test-a, test-b]
"#;

    fn step(id: &str, deps: &[&str]) -> StepDef {
        StepDef {
            id: id.into(),
            agent: "agent".into(),
            action: "act".into(),
            via: Via::Agent,
            execute: String::new(),
            undo: None,
            timeout_secs: 300,
            retries: 0,
            checkpoint: None,
            depends_on: deps.iter().map(|d| (*d).into()).collect(),
        }
    }

    fn def(steps: Vec<StepDef>, fanout: Vec<FanoutDef>) -> SagaDefinition {
        SagaDefinition {
            agents: Vec::new(),
            name: "s".into(),
            isolation: Isolation::default(),
            on_crash: CrashPolicy::default(),
            backoff: Backoff::default(),
            steps,
            fanout,
        }
    }

    fn group(id: &str, branches: &[&str]) -> FanoutDef {
        FanoutDef {
            id: id.into(),
            policy: FanoutPolicy::All,
            branches: branches.iter().map(|b| (*b).into()).collect(),
            cancel_rest: true,
        }
    }

    fn err(d: &SagaDefinition) -> DefinitionError {
        d.validate().unwrap_err()
    }

    #[test]
    fn yaml_loads_with_every_field_and_defaults() {
        let d = SagaDefinition::from_yaml(GOOD).unwrap();
        assert_eq!(d.isolation, Isolation::ReadCommitted);
        assert_eq!(d.on_crash, CrashPolicy::Compensate);
        assert_eq!(
            d.backoff,
            Backoff {
                base_ms: 50,
                cap_ms: 1000
            }
        );
        assert_eq!(d.steps[0].retries, 2);
        assert_eq!(d.steps[0].checkpoint.as_deref(), Some("v1"));
        assert_eq!(d.steps[1].via, Via::Host);
        assert_eq!(d.steps[1].timeout_secs, 300);
        assert_eq!(d.steps[1].undo_input(), "");
        assert_eq!(d.steps[2].undo_input(), "cleanup");
        assert_eq!(d.fanout[0].policy, FanoutPolicy::Majority);
        assert!(d.fanout[0].cancel_rest);
    }

    #[test]
    fn minimal_json_gets_the_documented_defaults() {
        let d = SagaDefinition::from_json(
            r#"{"name":"n","steps":[{"id":"a","agent":"ag","action":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(d.isolation, Isolation::Snapshot);
        assert_eq!(d.on_crash, CrashPolicy::Resume);
        assert_eq!(
            d.backoff,
            Backoff {
                base_ms: 200,
                cap_ms: 30_000
            }
        );
        let s = &d.steps[0];
        assert_eq!((s.via, s.timeout_secs, s.retries), (Via::Agent, 300, 0));
        assert_eq!(s.execute, "");
        assert!(s.undo.is_none() && s.checkpoint.is_none() && s.depends_on.is_empty());
    }

    #[test]
    fn a_group_dependency_waits_for_the_whole_group() {
        let d = SagaDefinition::from_yaml(GOOD).unwrap();
        let plan = d.plan().unwrap();
        assert_eq!(plan.units, [Unit::Step(0), Unit::Group(0), Unit::Step(3)]);
        assert_eq!(plan.deps, [vec![], vec![0], vec![1]]);
        assert_eq!(plan.group_of, [None, Some(0), Some(0), None]);
    }

    #[test]
    fn yaml_aliases_cannot_multiply_one_large_input_past_the_total_limit() {
        let big = "x".repeat(MAX_INPUT_BYTES / 3);
        let mut y = format!(
            "name: n\nsteps:\n  - id: s0\n    agent: a\n    action: x\n    execute: &big {big}\n"
        );
        for i in 1..4 {
            y += &format!("  - id: s{i}\n    agent: a\n    action: x\n    execute: *big\n");
        }
        let e = SagaDefinition::from_yaml(&y).unwrap_err();
        assert!(matches!(e, DefinitionError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn listed_agents_are_checked_and_every_step_agent_must_be_listed() {
        let ok = "name: s\nagents:\n  - id: did:ex:a\n    component: drafter\nsteps:\n  - id: one\n    agent: did:ex:a\n    action: draft\n";
        let def = SagaDefinition::from_yaml(ok).unwrap();
        assert_eq!(def.agents[0].sigma, 0.8);
        let unlisted = ok.replace("agent: did:ex:a", "agent: did:ex:b");
        match SagaDefinition::from_yaml(&unlisted).unwrap_err() {
            DefinitionError::UnlistedAgent { step, agent } => {
                assert_eq!((step.as_str(), agent.as_str()), ("one", "did:ex:b"));
            }
            e => panic!("{e}"),
        }
        let bad_sigma = ok.replace("component: drafter", "component: drafter\n    sigma: 1.5");
        let e = SagaDefinition::from_yaml(&bad_sigma).unwrap_err();
        assert!(
            matches!(
                e,
                DefinitionError::BadAgentDef {
                    index: 0,
                    field: "sigma",
                    ..
                }
            ),
            "{e}"
        );
        let twice = ok.replace(
            "    component: drafter\n",
            "    component: drafter\n  - id: did:ex:a\n    component: x\n",
        );
        let e = SagaDefinition::from_yaml(&twice).unwrap_err();
        assert!(
            matches!(
                e,
                DefinitionError::BadAgentDef {
                    index: 1,
                    field: "id",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_missing_field_is_a_yaml_error_with_its_position() {
        let text = "name: n\nsteps:\n  - id: a\n    action: x\n";
        let e = SagaDefinition::from_yaml(text).unwrap_err();
        let DefinitionError::Yaml { message, line, .. } = &e else {
            panic!("{e:?}");
        };
        assert!(message.contains("agent"), "{message}");
        assert!(*line >= 3, "{e}");
    }

    #[test]
    fn an_unknown_field_is_refused_in_yaml_and_json() {
        let text = GOOD.replace("    retries: 2\n", "    retries: 2\n    retires: 3\n");
        let e = SagaDefinition::from_yaml(&text).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::Yaml { message, line, .. } if message.contains("retires") && *line > 0),
            "{e}"
        );
        let e = SagaDefinition::from_json(
            r#"{"name":"n","steps":[{"id":"a","agent":"ag","action":"x"}],
"session":"s"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, DefinitionError::Json { message, line: 2, .. } if message.contains("session")),
            "{e}"
        );
        let e = SagaDefinition::from_yaml(&GOOD.replace("policy: majority", "policy: most"))
            .unwrap_err();
        assert!(matches!(e, DefinitionError::Yaml { .. }), "{e}");
    }

    #[test]
    fn json_syntax_errors_keep_line_and_column() {
        let e = SagaDefinition::from_json("{\n  \"name\": \"n\",\n  oops\n}").unwrap_err();
        assert!(
            matches!(
                e,
                DefinitionError::Json {
                    line: 3,
                    column: 3,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_ids_name_the_step_and_field() {
        let mut d = def(vec![step("bad id", &[])], vec![]);
        let e = err(&d);
        assert!(
            matches!(&e, DefinitionError::BadId { field: "id", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("bad id"), "{e}");
        d.steps[0].id = "a".into();
        d.steps[0].action = "-x".into();
        let e = err(&d);
        assert!(
            matches!(&e, DefinitionError::BadId { field: "action", owner, .. } if owner.contains("\"a\"")),
            "{e}"
        );
        d.steps[0].action = "x".repeat(257);
        assert!(matches!(
            err(&d),
            DefinitionError::BadId {
                field: "action",
                ..
            }
        ));
        d.steps[0].action = "x".into();
        d.steps[0].agent = String::new();
        assert!(matches!(err(&d), DefinitionError::BadAgent { step, .. } if step == "a"));
        d.steps[0].agent = "ok".into();
        d.fanout = vec![group("g!", &["a", "a"])];
        assert!(
            matches!(err(&d), DefinitionError::BadId { field: "id", owner, .. } if owner.contains("fan-out"))
        );
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let d = def(vec![step("a", &[]), step("a", &[])], vec![]);
        assert_eq!(err(&d), DefinitionError::DuplicateStep { id: "a".into() });
        let d = def(
            vec![
                step("a", &[]),
                step("b", &[]),
                step("c", &[]),
                step("e", &[]),
            ],
            vec![group("g", &["a", "b"]), group("g", &["c", "e"])],
        );
        assert_eq!(err(&d), DefinitionError::DuplicateGroup { id: "g".into() });
        let d = def(
            vec![step("a", &[]), step("b", &[])],
            vec![group("a", &["a", "b"])],
        );
        assert_eq!(err(&d), DefinitionError::GroupIdIsStepId { id: "a".into() });
    }

    #[test]
    fn timeouts_and_retries_are_range_checked() {
        let mut d = def(vec![step("a", &[])], vec![]);
        for (t, ok) in [(0, false), (1, true), (86_400, true), (86_401, false)] {
            d.steps[0].timeout_secs = t;
            assert_eq!(d.validate().is_ok(), ok, "timeout {t}");
        }
        d.steps[0].timeout_secs = 0;
        assert!(err(&d).to_string().contains("timeout_secs = 0"));
        d.steps[0].timeout_secs = 1;
        d.steps[0].retries = 10;
        assert!(d.validate().is_ok());
        d.steps[0].retries = 11;
        assert_eq!(
            err(&d),
            DefinitionError::BadRetries {
                step: "a".into(),
                value: 11,
                max: 10
            }
        );
    }

    #[test]
    fn backoff_bounds_are_checked() {
        let mut d = def(vec![step("a", &[])], vec![]);
        d.backoff = Backoff {
            base_ms: 0,
            cap_ms: 10,
        };
        assert!(matches!(
            err(&d),
            DefinitionError::BadBackoff {
                field: "base_ms",
                ..
            }
        ));
        d.backoff = Backoff {
            base_ms: 20,
            cap_ms: 10,
        };
        assert!(matches!(
            err(&d),
            DefinitionError::BadBackoff {
                field: "cap_ms",
                ..
            }
        ));
    }

    #[test]
    fn unknown_and_duplicate_dependencies_are_refused() {
        let d = def(vec![step("a", &["nope"])], vec![]);
        assert_eq!(
            err(&d),
            DefinitionError::UnknownDependency {
                step: "a".into(),
                dependency: "nope".into()
            }
        );
        let d = def(vec![step("a", &[]), step("b", &["a", "a"])], vec![]);
        assert!(matches!(
            err(&d),
            DefinitionError::DuplicateDependency { .. }
        ));
    }

    #[test]
    fn cycles_are_named() {
        let d = def(
            vec![step("a", &["c"]), step("b", &["a"]), step("c", &["b"])],
            vec![],
        );
        let e = err(&d);
        assert_eq!(
            e,
            DefinitionError::Cycle {
                cycle: vec!["a".into(), "c".into(), "b".into(), "a".into()]
            }
        );
        assert_eq!(e.to_string(), "dependency cycle: a -> c -> b -> a");
        let d = def(vec![step("a", &["a"])], vec![]);
        assert_eq!(
            err(&d),
            DefinitionError::Cycle {
                cycle: vec!["a".into(), "a".into()]
            }
        );
        // Through a group: a branch waits for a step that waits for the group.
        let d = def(
            vec![step("x", &["after"]), step("y", &[]), step("after", &["g"])],
            vec![group("g", &["x", "y"])],
        );
        assert!(
            matches!(err(&d), DefinitionError::Cycle { cycle } if cycle.contains(&"g".to_owned()))
        );
    }

    #[test]
    fn fanout_groups_are_checked() {
        let two = || vec![step("a", &[]), step("b", &[]), step("c", &[])];
        let d = def(two(), vec![group("g", &["a"])]);
        assert_eq!(
            err(&d),
            DefinitionError::TooFewBranches {
                group: "g".into(),
                count: 1
            }
        );
        let d = def(two(), vec![group("g", &["a", "zz"])]);
        assert_eq!(
            err(&d),
            DefinitionError::UnknownBranch {
                group: "g".into(),
                branch: "zz".into()
            }
        );
        let d = def(
            two(),
            vec![group("g", &["a", "b"]), group("h", &["b", "c"])],
        );
        assert_eq!(
            err(&d),
            DefinitionError::StepInTwoGroups {
                step: "b".into(),
                first: "g".into(),
                second: "h".into()
            }
        );
        let d = def(two(), vec![group("g", &["a", "a"])]);
        assert!(matches!(err(&d), DefinitionError::StepInTwoGroups { .. }));
        let d = def(
            vec![step("a", &[]), step("b", &["a"])],
            vec![group("g", &["a", "b"])],
        );
        assert_eq!(
            err(&d),
            DefinitionError::BranchesDependent {
                group: "g".into(),
                step: "b".into(),
                on: "a".into()
            }
        );
        let d = def(
            vec![step("a", &[]), step("b", &[]), step("c", &["a"])],
            vec![group("g", &["a", "b"])],
        );
        let e = err(&d);
        assert_eq!(
            e,
            DefinitionError::DependsOnBranch {
                step: "c".into(),
                branch: "a".into(),
                group: "g".into()
            }
        );
        assert!(e.to_string().contains("depend on \"g\" instead"));
    }

    #[test]
    fn size_limits_are_enforced() {
        assert!(matches!(
            err(&def(vec![], vec![])),
            DefinitionError::Empty { .. }
        ));
        let many: Vec<StepDef> = (0..=MAX_STEPS)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect();
        assert!(matches!(
            err(&def(many, vec![])),
            DefinitionError::TooMany {
                what: "steps",
                count: 1025,
                ..
            }
        ));
        let big = format!("name: n\nsteps: []\n#{}", "x".repeat(MAX_INPUT_BYTES));
        assert!(matches!(
            SagaDefinition::from_yaml(&big),
            Err(DefinitionError::TooLarge { .. })
        ));
        assert!(matches!(
            SagaDefinition::from_json(&big),
            Err(DefinitionError::TooLarge { .. })
        ));
        let mut d = def(vec![step("a", &[])], vec![]);
        d.steps[0].undo = Some("u".repeat(MAX_INPUT_BYTES + 1));
        assert!(matches!(
            err(&d),
            DefinitionError::InputTooLarge { field: "undo", .. }
        ));
        d.steps[0].undo = None;
        d.name = String::new();
        assert!(matches!(err(&d), DefinitionError::BadName { len: 0, .. }));
    }

    #[test]
    fn a_chain_of_1024_steps_validates_without_deep_recursion() {
        let steps: Vec<StepDef> = (0..MAX_STEPS)
            .map(|i| {
                let prev = format!("s{}", i.saturating_sub(1));
                let deps: Vec<&str> = if i == 0 { vec![] } else { vec![prev.as_str()] };
                step(&format!("s{i}"), &deps)
            })
            .collect();
        assert!(def(steps, vec![]).validate().is_ok());
    }

    #[test]
    fn from_path_picks_the_format_by_extension() {
        let dir = std::env::temp_dir().join(format!("ahv-saga-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = SagaDefinition::from_yaml(GOOD).unwrap();
        let y = dir.join("s.yml");
        std::fs::write(&y, d.to_yaml().unwrap()).unwrap();
        let j = dir.join("s.JSON");
        std::fs::write(&j, d.to_json().unwrap()).unwrap();
        assert_eq!(SagaDefinition::from_path(&y).unwrap(), d);
        assert_eq!(SagaDefinition::from_path(&j).unwrap(), d);
        let t = dir.join("s.toml");
        std::fs::write(&t, "").unwrap();
        assert!(matches!(
            SagaDefinition::from_path(&t),
            Err(DefinitionError::UnknownFormat { .. })
        ));
        assert!(matches!(
            SagaDefinition::from_path(&dir.join("missing.yaml")),
            Err(DefinitionError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn to_yaml_is_block_yaml_and_survives_trailing_whitespace() {
        let mut d = SagaDefinition::from_yaml(GOOD).unwrap();
        let y = d.to_yaml().unwrap();
        assert!(y.starts_with("name: deploy"), "{y}");
        d.steps[0].execute = "trailing ".into();
        let y = d.to_yaml().unwrap();
        assert_eq!(SagaDefinition::from_yaml(&y).unwrap(), d, "{y}");
    }

    fn id_strategy() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9._:-]{0,6}[a-z0-9]"
    }

    prop_compose! {
        fn arb_def()(
            n in 1usize..8,
            groups in 0usize..3,
            name in "[ -~]{1,20}",
            texts in proptest::collection::vec("[ -~\n]{0,12}", 8),
            undo in proptest::collection::vec(proptest::option::of("[ -~]{0,8}"), 8),
            goals in proptest::collection::vec(proptest::option::of("[ -~]{1,8}"), 8),
            timeouts in proptest::collection::vec(1u32..=86_400, 8),
            retries in proptest::collection::vec(0u32..=10, 8),
            dep_mask in proptest::collection::vec(any::<u8>(), 8),
            agent in id_strategy(),
            flags in any::<u8>(),
            base in 1u64..1000,
            extra in 0u64..100_000,
        ) -> SagaDefinition {
            // Steps 0..2*groups are grouped in pairs; later steps depend only
            // on earlier lone steps or groups, so the graph is acyclic.
            let groups = groups.min(n / 2);
            let mut steps = Vec::new();
            for i in 0..n {
                let mut deps = Vec::new();
                if i >= 2 * groups {
                    for (j, bit) in (0..i).zip(0..8) {
                        if dep_mask[i] & (1 << bit) != 0 {
                            let dep = if j < 2 * groups { format!("g{}", j / 2) } else { format!("s{j}") };
                            if !deps.contains(&dep) {
                                deps.push(dep);
                            }
                        }
                    }
                }
                steps.push(StepDef {
                    id: format!("s{i}"),
                    agent: agent.clone(),
                    action: format!("act.{i}"),
                    via: if flags & (1 << (i % 8)) != 0 { Via::Host } else { Via::Agent },
                    execute: texts[i].clone(),
                    undo: undo[i].clone(),
                    timeout_secs: timeouts[i],
                    retries: retries[i],
                    checkpoint: goals[i].clone(),
                    depends_on: deps,
                });
            }
            let policies = [FanoutPolicy::All, FanoutPolicy::Majority, FanoutPolicy::Any];
            let fanout = (0..groups)
                .map(|g| FanoutDef {
                    id: format!("g{g}"),
                    policy: policies[(flags as usize + g) % 3],
                    branches: vec![format!("s{}", 2 * g), format!("s{}", 2 * g + 1)],
                    cancel_rest: flags & 1 == 0,
                })
                .collect();
            SagaDefinition {
                agents: Vec::new(),
                name,
                isolation: [Isolation::Snapshot, Isolation::ReadCommitted, Isolation::Serializable][flags as usize % 3],
                on_crash: if flags & 2 == 0 { CrashPolicy::Resume } else { CrashPolicy::Compensate },
                backoff: Backoff { base_ms: base, cap_ms: base + extra },
                steps,
                fanout,
            }
        }
    }

    proptest! {
        #[test]
        fn any_valid_definition_round_trips_through_yaml_and_json(d in arb_def()) {
            prop_assert!(d.validate().is_ok(), "{:?}", d.validate());
            let y = d.to_yaml().unwrap();
            prop_assert_eq!(&SagaDefinition::from_yaml(&y).unwrap(), &d, "{}", y);
            let j = d.to_json().unwrap();
            prop_assert_eq!(&SagaDefinition::from_json(&j).unwrap(), &d);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = SagaDefinition::from_yaml(&text);
            let _ = SagaDefinition::from_json(&text);
        }
    }
}
