//! # ahv-audit: the tamper-evident audit log
//!
//! Every governed action becomes a *delta* with a canonical byte encoding; the
//! deltas of a session form a hash chain and an RFC 6962 Merkle tree; a
//! terminated session yields a *commitment* (tree size + root) appended to a
//! commitment log whose heads are signed with the hypervisor's Ed25519 key.
//! Everything is persisted in a crash-safe framed format and can be verified
//! offline. No wasmtime here. The byte formats are in `FORMAT.md` beside this
//! crate.
//!
//! The wiring: open an [`Auditor`] on the audit directory, attach it to the
//! event bus (every event of a session is then captured as it is emitted),
//! seal a session when it ends, and verify the directory offline. A seal's
//! receipt says whether its commitment is on disk yet ([`SealState`]): under
//! group commit it is not until [`Auditor::wait_durable`] returns.
//!
//! ```
//! use std::sync::Arc;
//! use ahv_audit::{AuditConfig, Auditor, Durability, SystemWallClock, verify_dir};
//! use ahv_core::{AgentId, EventBus, EventPayload, SessionId, SystemClock, TraceId};
//!
//! let dir = tempfile::tempdir()?;
//! let clock = Arc::new(SystemClock::default());
//! let config = AuditConfig { durability: Durability::EveryRecord, ..AuditConfig::default() };
//! let (auditor, _recovery) = Auditor::open(dir.path(), config, clock.clone(), Arc::new(SystemWallClock))?;
//! let bus = Arc::new(EventBus::new(1000, clock));
//! auditor.attach(&bus);
//!
//! let session = SessionId::new("s-1")?;
//! let agent = AgentId::new("did:ex:writer")?;
//! bus.emit(Some(&session), Some(&agent), TraceId(1), None, EventPayload::StateWrite {
//!     key: "findings/a".into(),
//!     version: 1,
//! });
//! let receipt = auditor.seal(&session)?;
//! assert_eq!(receipt.commitment.tree_size, 1);
//! // Under `EveryRecord` the seal is on disk when `seal` returns; under group
//! // commit this waits for the round that writes it.
//! let receipt = auditor.wait_durable(&receipt, ahv_audit::DURABLE_WAIT)?;
//! assert!(receipt.is_durable());
//! let head = auditor.close()?.expect("the commitment log head is signed");
//! assert_eq!(head.head.size, 1);
//!
//! let report = verify_dir(dir.path(), None, Some(auditor.public_key()))?;
//! assert!(report.ok(), "{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod auditor;
pub mod commitment;
pub mod delta;
pub mod hash;
pub mod merkle;
pub mod records;
pub mod segments;
pub mod signing;
mod spans;
pub mod verify;

pub use auditor::{
    AuditConfig, AuditError, AuditStats, Auditor, DURABLE_WAIT, RecoveryReport, Retention,
    SealReceipt, SealState, audit_dir, lock_path,
};
pub use commitment::Commitment;
pub use delta::{Delta, DeltaError, Value};
pub use hash::{Hash, HashParseError};
pub use merkle::{
    ConsistencyProof, DecodeError, InclusionProof, LeafIndex, MerkleError, MerkleLog, TreeSize,
    leaf_hash, node_hash, verify_consistency, verify_inclusion,
};
pub use records::{
    CorruptRecord, Durability, IoOp, LogKind, MAX_RECORD, Record, RecordError, RecordWriter,
    Recovered, TailReason, TornTail, read_log, rewrite_log,
};
pub use signing::{
    AnchorError, AnchorSink, BatchSigner, HeadSource, HypervisorKey, KeyError, MemorySink,
    PublicKey, SignedTreeHead, SignerError, SystemWallClock, TreeHead, WallClock,
};
pub use verify::{
    AuditProof, Problem, ProblemKind, ProofError, SessionReport, SessionStatus, VerifyError,
    VerifyReport, prove, verify_dir,
};
