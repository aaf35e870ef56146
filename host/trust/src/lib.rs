//! # ahv-trust: joint liability
//!
//! The rules are SEMANTICS.md "Liability"; this crate has no wasmtime and no
//! I/O of its own.
//!
//! - [`shapley`]: Shapley values of a cooperative [`Game`], exact up to 16
//!   players, sampled with a Hoeffding bound above that.
//! - [`attribution`]: who is liable for a failed saga: Shapley values of a
//!   game built from the saga's causal record, or the reference's heuristic.
//!
//! ```
//! use ahv_core::AgentId;
//! use ahv_trust::{attribute, AttributionPolicy, SagaTrace, StepOutcome, TraceStep};
//!
//! let step = |id: &str, agent: &str, deps: &[&str], outcome| -> Result<TraceStep, ahv_core::IdError> {
//!     Ok(TraceStep {
//!         id: id.into(),
//!         agent: AgentId::new(agent)?,
//!         depends_on: deps.iter().map(|d| d.to_string()).collect(),
//!         outcome,
//!         changes: 1,
//!     })
//! };
//! // did:example:b's step used did:example:a's result and failed.
//! let trace = SagaTrace {
//!     steps: vec![
//!         step("fetch", "did:example:a", &[], StepOutcome::Compensated)?,
//!         step("charge", "did:example:b", &["fetch"], StepOutcome::Failed)?,
//!     ],
//!     first_failure: Some("charge".into()),
//! };
//! let blame = attribute(&trace, &AttributionPolicy::default())?;
//! assert_eq!(blame.share("did:example:b"), Some(0.75));
//! assert_eq!(blame.share("did:example:a"), Some(0.25));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod attribution;
pub mod shapley;

pub use attribution::{
    Attribution, AttributionError, AttributionMethod, AttributionPolicy, SagaGame, SagaTrace,
    ShapleyPolicy, Share, StepOutcome, TraceStep, attribute,
};
pub use shapley::{Game, Method, Sampling, ShapleyError, ShapleyValues, SplitMix64};
