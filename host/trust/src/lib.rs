//! # ahv-trust: joint liability
//!
//! The liability rules of SEMANTICS.md "Liability" as plain, tested logic:
//! no wasmtime, no I/O, time from an injected [`Clock`](ahv_core::Clock).
//!
//! - [`vouch`]: per-session vouching with bonds and an exposure cap
//!   ([`VouchBook`]) and the effective score ([`effective_sigma`]).
//! - [`slash`](mod@slash): slashing a vouchee and its vouchers, with a floor
//!   and a cascade bounded at two hops ([`slash()`], [`SlashReport`]).
//! - [`quarantine`]: holding an agent before termination, with escalation
//!   and expiry ([`Quarantine`]).
//! - [`ledger`]: the cross-session record, the risk score and the admission
//!   decision ([`LedgerEntry`], [`risk_score`], [`Admission`]); the
//!   `ahv-store` crate keeps the records (memory, SQLite or PostgreSQL).
//! - [`shapley`]: Shapley values of a cooperative [`Game`], exact up to 16
//!   players, sampled with a Hoeffding bound above that.
//! - [`attribution`]: who is liable for a failed saga: Shapley values of a
//!   game built from the saga's causal record, or the reference's heuristic.
//!
//! Wiring into the hypervisor (the gate, saga escalation, events) is not
//! done here: this crate is the rules.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use ahv_core::{AgentId, Clock, FakeClock, SessionId};
//! use ahv_trust::{
//!     Admission, EntryKind, LedgerEntry, Quarantine, QuarantineReason, Scores, Severity,
//!     VouchBook, risk_score, slash,
//! };
//!
//! let session = SessionId::new("s1")?;
//! let (alice, bob) = (AgentId::new("did:example:alice")?, AgentId::new("did:example:bob")?);
//! let mut scores = Scores::new();
//! scores.set(alice.clone(), 0.9)?;
//! scores.set(bob.clone(), 0.3)?;
//!
//! // Alice bonds half her σ for Bob, which lifts Bob's effective score.
//! let mut book = VouchBook::new();
//! book.vouch(&session, &alice, &bob, 0.9, 0.5)?;
//! let eff = book.effective_sigma(&session, &bob, 0.3, 0.2)?;
//! assert!((eff - 0.39).abs() < 1e-9);
//!
//! // Bob misbehaves: he is slashed, Alice pays ω of her σ, the bond is gone.
//! let report = slash(&mut book, &mut scores, &session, &bob, 0.5)?;
//! assert_eq!(scores.get(&bob), Some(0.0));
//! assert!((scores.get(&alice).unwrap_or(0.0) - 0.45).abs() < 1e-9);
//! assert_eq!(report.released.len(), 1);
//!
//! // He is held for 300 s, and the ledger remembers.
//! let clock = FakeClock::new();
//! let mut quarantine = Quarantine::new(Arc::new(clock.clone()));
//! quarantine.quarantine(&bob, QuarantineReason::LiabilityViolation)?;
//! let mut ledger = Vec::new();
//! for kind in [
//!     EntryKind::Slash { severity: Severity::new(1.0)? },
//!     EntryKind::Quarantine { severity: Severity::new(0.5)? },
//! ] {
//!     ledger.push(LedgerEntry { agent: bob.clone(), kind, at: clock.now() });
//! }
//! let risk = risk_score(&ledger);
//! assert!((risk - 0.2).abs() < 1e-9);
//! assert_eq!(Admission::for_risk(risk), Admission::Admit);
//! clock.advance(Duration::from_secs(300));
//! assert_eq!(quarantine.expire().len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod attribution;
pub mod ledger;
pub mod quarantine;
pub mod shapley;
pub mod slash;
pub mod vouch;

pub use attribution::{
    Attribution, AttributionError, AttributionMethod, AttributionPolicy, SagaGame, SagaTrace,
    ShapleyPolicy, Share, StepOutcome, TraceStep, attribute,
};
pub use ledger::{
    Admission, Assessment, EntryKind, LedgerEntry, LedgerError, Severity, risk_of_kinds, risk_score,
};
pub use quarantine::{
    DEFAULT_QUARANTINE, MAX_QUARANTINE, Quarantine, QuarantineError, QuarantineOutcome,
    QuarantineReason, QuarantineRecord, UnknownQuarantineReason,
};
pub use shapley::{Game, Method, Sampling, ShapleyError, ShapleyValues, SplitMix64};
pub use slash::{
    CASCADE_THRESHOLD, Cascaded, ChangeCause, MAX_CASCADE_HOPS, SIGMA_FLOOR, Scores, SigmaChange,
    SlashError, SlashReport, slash,
};
pub use vouch::{
    DEFAULT_BOND_PCT, MAX_EXPOSURE, MIN_VOUCHER_SIGMA, Vouch, VouchBook, VouchError, VouchId,
    effective_sigma,
};
