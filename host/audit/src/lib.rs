//! # ahv-audit: the tamper-evident audit log
//!
//! Every governed action becomes a *delta* with a canonical byte encoding; the
//! deltas of a session form a hash chain and an RFC 6962 Merkle tree; a
//! terminated session yields a *commitment* (tree size + root) appended to a
//! commitment log whose heads are signed with the hypervisor's Ed25519 key.
//! Everything is persisted in a crash-safe framed format and can be verified
//! offline. No wasmtime here.
#![deny(missing_docs)]

pub mod auditor;
pub mod commitment;
pub mod delta;
pub mod hash;
pub mod merkle;
pub mod records;
pub mod signing;
pub mod verify;

pub use auditor::{
    AuditConfig, AuditError, AuditStats, Auditor, RecoveryReport, SealReceipt, audit_dir,
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
