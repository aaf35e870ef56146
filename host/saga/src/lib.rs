//! # ahv-saga: multi-step work with compensation
//!
//! A saga is a set of steps, each run by an agent (its `execute` /
//! `compensate` exports, or a host action run as the agent), with
//! dependencies, retries, fan-out groups and checkpoints. If a step fails for
//! good, every committed step is compensated in reverse commit order; a failed
//! compensation escalates the saga to the liability engine. The rules are
//! SEMANTICS.md "Sagas"; this crate has no wasmtime and no I/O of its own.
//!
//! - [`definition`]: the model ([`SagaDefinition`], [`StepDef`], [`FanoutDef`]).
//! - [`format`](mod@format): YAML/JSON loading and validation ([`DefinitionError`]).
//! - [`state`]: the step and saga state machines.
//! - [`retry`]: exponential backoff with equal jitter from an injected [`Jitter`].
//! - [`fanout`]: the ALL / MAJORITY / ANY policies.
//! - [`checkpoint`]: checkpoint hashes.
//! - [`blobs`]: content-addressed blobs a durable commit's redo data names.
//! - [`engine`]: the [`Engine`], its progress log ([`SagaRecord`],
//!   [`ProgressStore`]) and the traits the host plugs in ([`StepRunner`],
//!   [`SagaObserver`], [`Sleeper`]).
//!
//! ```
//! use std::sync::Arc;
//! use ahv_core::FakeClock;
//! use ahv_saga::{
//!     BoxFuture, CompensateCall, CompensationFailure, Engine, FakeSleeper, MemoryStore,
//!     NoopObserver, SagaDefinition, SagaId, SagaState, SeededJitter, StepCall, StepDone,
//!     StepFailure, StepRunner,
//! };
//!
//! /// Echoes each step's input in upper case.
//! struct Upper;
//! impl StepRunner for Upper {
//!     fn execute(&self, call: StepCall) -> BoxFuture<Result<StepDone, StepFailure>> {
//!         let output = call.step.execute.to_uppercase();
//!         Box::pin(async move { Ok(StepDone { output, undo: serde_json::Value::Null }) })
//!     }
//!     fn compensate(&self, _: CompensateCall) -> BoxFuture<Result<(), CompensationFailure>> {
//!         Box::pin(async { Ok(()) })
//!     }
//! }
//!
//! let def = SagaDefinition::from_yaml(
//!     r#"
//! name: greet
//! steps:
//!   - id: hello
//!     agent: did:example:a
//!     action: say
//!     execute: hello
//!   - id: world
//!     agent: did:example:b
//!     action: say
//!     execute: world
//!     depends_on: [hello]
//! "#,
//! )?;
//! let clock = FakeClock::new();
//! let engine = Engine::new(
//!     Arc::new(MemoryStore::new()),
//!     Arc::new(Upper),
//!     Arc::new(NoopObserver),
//!     Arc::new(FakeSleeper::new(clock.clone())),
//!     Arc::new(SeededJitter::new(1)),
//!     Arc::new(clock),
//! );
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let report = rt.block_on(engine.run(SagaId::new("greet-1")?, def))?;
//! assert_eq!(report.state, SagaState::Completed);
//! assert_eq!(report.step("world").and_then(|s| s.output.as_deref()), Some("WORLD"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod blobs;
pub mod checkpoint;
pub mod definition;
pub mod engine;
pub mod fanout;
pub mod format;
pub mod journal;
pub mod retry;
pub mod state;
pub mod store;

pub use blobs::{BlobError, BlobStore};
pub use checkpoint::{checkpoint_hash, checkpoint_valid};
pub use definition::{
    AgentDef, Backoff, CrashPolicy, FanoutDef, Isolation, SagaDefinition, StepDef, Via,
};
pub use engine::{
    BoxFuture, CompensateCall, CompensationFailure, Engine, EngineError, EscalatedStep,
    FailureKind, FakeSleeper, INTERRUPTED, MemoryStore, NoopObserver, PlanCache, ProgressStore,
    SagaId, SagaObserver, SagaRecord, SagaReport, Sleeper, StepCall, StepDone, StepFailure,
    StepReport, StepRunner, StoreError, TokioSleeper, report_of,
};
pub use fanout::FanoutPolicy;
pub use format::{DefinitionError, Plan, Unit};
pub use retry::{FixedJitter, HashJitter, Jitter, SeededJitter};
pub use state::{SagaState, StepState, TransitionError};
pub use store::FileStore;
