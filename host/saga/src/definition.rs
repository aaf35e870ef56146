//! The saga model: what a definition file says (SEMANTICS.md, "Sagas").
//!
//! Field names are `snake_case` (`depends_on`, `timeout_secs`, `on_crash`);
//! enum values are `kebab-case` (`read-committed`). Every struct refuses
//! unknown fields, so a misspelt field is an error at load time, never
//! silently ignored. A value of these types is not known to be valid until
//! [`SagaDefinition::validate`] accepts it; the parsers in [`crate::format`]
//! always validate.

use serde::{Deserialize, Serialize};

use crate::fanout::FanoutPolicy;

/// Default step deadline in seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 300;
/// Longest step deadline in seconds (one day).
pub const MAX_TIMEOUT_SECS: u32 = 86_400;
/// Most retries a step may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Most steps in one saga.
pub const MAX_STEPS: usize = 1024;
/// Largest definition text, and largest single step input, in bytes (1 MiB).
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// Longest saga name and action name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// A saga: named steps with dependencies, and fan-out groups among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDefinition {
    /// Human-readable name (1..=256 bytes).
    pub name: String,
    /// How the saga's reads and writes are isolated from other sessions' work.
    #[serde(default)]
    pub isolation: Isolation,
    /// What [`crate::Engine::resume`] does with a saga a host crash interrupted.
    #[serde(default)]
    pub on_crash: CrashPolicy,
    /// Retry delays.
    #[serde(default)]
    pub backoff: Backoff,
    /// The agents the saga needs, for a host that sets up its session from
    /// the file (`ahv saga run`). When given, every step's agent must be one
    /// of them. A host that runs the saga in a session of its own ignores it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentDef>,
    /// The steps, in definition order (the tie-break among ready steps).
    pub steps: Vec<StepDef>,
    /// Groups of steps that run concurrently and resolve by a policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fanout: Vec<FanoutDef>,
}

/// Isolation level of a saga (SEMANTICS.md, "Consistency").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Reads see the session as of the saga's start.
    #[default]
    Snapshot,
    /// Reads see whatever is committed when they happen.
    ReadCommitted,
    /// Steps hold intent locks so the saga behaves as if run alone.
    Serializable,
}

/// What resuming a crash-interrupted saga does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrashPolicy {
    /// Carry on: retry the interrupted step (without using up a retry) and continue.
    #[default]
    Resume,
    /// Give up: compensate everything committed.
    Compensate,
}

/// Exponential backoff bounds for retries, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Ceiling of the first retry's delay (≥ 1).
    #[serde(default = "default_base_ms")]
    pub base_ms: u64,
    /// Largest ceiling of any retry's delay (≥ `base_ms`).
    #[serde(default = "default_cap_ms")]
    pub cap_ms: u64,
}

fn default_base_ms() -> u64 {
    200
}

fn default_cap_ms() -> u64 {
    30_000
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: default_base_ms(),
            cap_ms: default_cap_ms(),
        }
    }
}

/// An agent a saga needs: who it is, what runs it, how far it is trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    /// Its id (a valid [`ahv_core::AgentId`]).
    pub id: String,
    /// Its component: an example agent's name (`drafter`) or a path to a
    /// `.wasm` file, relative to the definition file.
    pub component: String,
    /// Its trust score σ in [0, 1], which decides its ring when it joins
    /// (below the session's minimum, 0.60: ring 3; above: ring 2).
    #[serde(default = "default_sigma")]
    pub sigma: f64,
}

fn default_sigma() -> f64 {
    0.8
}

/// Where a step's work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// The agent's own `execute` / `compensate` exports.
    #[default]
    Agent,
    /// A host-registered action named by the step's `action`, run as the agent.
    Host,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Unique id within the saga (id charset, ≤ 256 bytes).
    pub id: String,
    /// The agent that runs the step (a valid [`ahv_core::AgentId`]).
    pub agent: String,
    /// Name of the work (id charset, ≤ 256 bytes).
    pub action: String,
    /// Whether the agent's exports or a host action do the work.
    #[serde(default)]
    pub via: Via,
    /// The step's input.
    #[serde(default)]
    pub execute: String,
    /// Input for compensation; `None` means the execute input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
    /// Deadline of one attempt, 1..=86400 seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u32,
    /// Retries after a failed or timed-out attempt, 0..=10.
    #[serde(default)]
    pub retries: u32,
    /// Checkpoint goal: when set, a replay skips the step while the goal is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Ids of steps or fan-out groups that must finish first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

fn default_timeout_secs() -> u32 {
    DEFAULT_TIMEOUT_SECS
}

impl StepDef {
    /// The input compensation gets: `undo` if set, else the execute input.
    pub fn undo_input(&self) -> &str {
        self.undo.as_deref().unwrap_or(&self.execute)
    }
}

/// A fan-out group: branches that start together and resolve by a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutDef {
    /// Unique id among steps and groups; other steps depend on the group by it.
    pub id: String,
    /// How many branches must succeed.
    pub policy: FanoutPolicy,
    /// Ids of the branch steps (≥ 2).
    pub branches: Vec<String>,
    /// Under `any`, cancel the other branches once one succeeds (ignored otherwise).
    #[serde(default = "default_cancel_rest")]
    pub cancel_rest: bool,
}

fn default_cancel_rest() -> bool {
    true
}
