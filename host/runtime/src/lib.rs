//! # ahv-runtime: untrusted agents as Wasm components, inside their ring
//!
//! The only crate that uses wasmtime. One [`Runtime`] holds one engine
//! (pooling allocator, fuel, epoch interruption, no component-model
//! concurrency), one linker per ring (real adapters for the ring's
//! capabilities, breach stubs for the others), the component caches and an
//! epoch ticker. An [`Agent`] is one live instance, reused across calls, whose
//! store was built with its ring's limits.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ahv_core::{AgentId, Ring};
//! use ahv_governance::vfs::{Vfs, VfsLimits};
//! use ahv_runtime::{AgentSpec, Runtime, StepCall, TrapCause};
//! use cap_std::{ambient_authority, fs::Dir};
//!
//! # async fn demo(bytes: &[u8]) -> anyhow::Result<()> {
//! let runtime = Runtime::builder().cache_dir("/var/cache/ahv").build()?;
//! let component = runtime.load(bytes)?; // refuses imports outside the contract
//! let dir = Dir::open_ambient_dir("/srv/agent-files", ambient_authority())?;
//! let vfs = Arc::new(Vfs::new(dir, VfsLimits::default()));
//! let mut agent = runtime.spawn(&component, AgentSpec::new(AgentId::new("did:ex:hello")?, Ring::Sandbox, vfs)).await?;
//! match agent.run("world").await {
//!     Ok(out) => println!("answer: {:?}", out.result),
//!     Err(e) => match e.cause() {
//!         Some(TrapCause::RingBreach(b)) => println!("breach of {}/{}", b.capability, b.function),
//!         other => println!("stopped: {other:?}"),
//!     },
//! }
//! // A component that exports `saga-participant` also runs saga steps, each
//! // under its ring and within its own deadline.
//! if component.saga_participant() {
//!     let step = StepCall { saga_id: "s1".into(), step_id: "draft".into(), action: "draft".into(), attempt: 1 };
//!     let out = agent.execute_step(&step, "slug=notes", std::time::Duration::from_secs(5)).await?;
//!     println!("step output: {:?}", out.result);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod adapters;
pub mod agent;
mod bindings;
mod bulk;
mod capabilities;
pub mod component;
pub mod gate;
mod images;
pub mod metrics;
mod rate;
pub mod runtime;
pub mod state;
pub mod trace_context;
pub mod trap;
mod turns;

pub use agent::{AfterTrap, Agent, AgentError, AgentSpec, MAX_INPUT_BYTES, RunOutput, StepCall};
pub use component::{AgentComponent, Import, ImportKind, LoadError, Manifest, SAGA_PARTICIPANT};
pub use gate::{
    AdminOp, ElevationAsk, ElevationGrant, Governor, GovernorFuture, NoGovernor, ParticipantView,
    RateBudget, Refusal, Who,
};
pub use runtime::{BuildError, RateSource, Runtime, RuntimeBuilder};
pub use state::{KillHandle, LogLevel, LogLine, LogSource};
pub use trap::{
    BreachRecorder, DeadlineExceeded, InvalidGuestData, Killed, MemoryLimitExceeded,
    RequestTooLarge, RingBreach, TrapCause,
};

/// The generated WIT bindings, for benchmarks and embedders that need raw access.
#[doc(hidden)]
pub mod raw {
    pub use crate::bindings::*;
}
