//! The auditor: captures every governed event of every session as a delta,
//! chains and Merkle-hashes them, persists them, seals sessions with
//! commitments and has the commitment log's heads signed.
//!
//! Capture is a synchronous [`EventSink`] on the hypervisor's event bus, so a
//! delta is recorded where its event is emitted — on the emitting thread,
//! before the emitter goes on (a ring breach is audited before its trap
//! reaches anyone). Nothing is audited "by hand" at call sites.
//!
//! Layout under the audit directory (`<state>/audit`):
//!
//! | file | what |
//! |---|---|
//! | `signing-key`, `public-key` | the hypervisor's Ed25519 key ([`HypervisorKey`]) |
//! | `segments/<number>.seg` | every session's deltas, in rounds, each synced once ([`crate::segments`]) |
//! | `sessions/<session>.log` | a session's deltas as auditors before segments wrote them: read, recovered and pruned, never created ([`LogKind::SESSION_DELTAS`]) |
//! | `commitments.log` | one [`Commitment`] per sealed session; an RFC 6962 log |
//! | `heads.log` | signed heads of the commitment log ([`SignedTreeHead`]) |
//! | `lock` | held (exclusive `flock`) by the one auditor that has the directory open |
//!
//! Durability ([`Durability`]): under `EveryRecord` a capture returns once
//! its delta is written and synced, by a round of its own or one that
//! captures on other threads share; `GroupCommit` stages deltas in memory and a
//! background flusher writes and syncs them every `max_delay` (or sooner when
//! `max_records` are staged); `OnClose` writes a session's deltas when it is
//! sealed. A write is one round of the current segment: the staged deltas of
//! every session it writes, one write, one `fdatasync`. Whatever the policy, a commitment is made durable only after every
//! delta it covers, and a head is signed only over durable commitments, so a
//! crash never leaves a signature over data that is not on disk.
//!
//! Receipts: [`Auditor::seal`] returns a [`SealReceipt`] that says whether its
//! commitment is on disk ([`SealState`]). Under `EveryRecord` and `OnClose` it
//! always is: `seal` wrote and synced it (or failed). Under `GroupCommit`
//! `seal` only stages it, so the receipt is [`SealState::Pending`]: a crash
//! before the next flush round loses the commitment (the next process's
//! recovery seals the session again over whatever of its deltas reached the
//! disk, with a new commitment). Whoever reports a seal to a user waits first
//! with [`Auditor::wait_durable`], which returns once the round that writes
//! it has synced it, or fails with [`AuditError::DurableTimeout`] naming the
//! session and the commitment index. A wait starts that round at once, or
//! right after the round under way, rather than at the flusher's next tick
//! (it wakes the flusher), so it takes one or two rounds' writes and syncs;
//! seals staged while a round runs share the next one, so concurrent waiters
//! still share syncs (group commit proper).
//! What nobody waits for is written within `max_delay`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use foldhash::fast::RandomState as FastHash;

use ahv_core::{
    Clock, Event, EventBus, EventKind, EventPayload, EventSink, SessionId, SubscriptionId,
};

use crate::commitment::{Commitment, PRUNED_TAG, RecordFormatError, decode_pruned, encode_pruned};
use crate::delta::{Delta, encode_event};
use crate::hash::Hash;
use crate::merkle::{CompactTree, leaf_hash};
use crate::records::{
    Durability, LogKind, RecordError, RecordWriter, TornTail, read_log, rewrite_log, scan_log,
};
use crate::segments::{
    DEFAULT_MAX_SEGMENT_BYTES, SegmentError, SegmentWriter, SessionAssembler, StagedChunk,
    list_segments, prune_segment, read_segment, recovery_start, segment_path, segments_dir,
};
use crate::signing::{
    AnchorError, AnchorSink, BatchSigner, HeadSource, HypervisorKey, KeyError, PublicKey,
    SignedTreeHead, SignerError, WallClock,
};
use crate::spans::{CommitSpans, Span};

/// How the auditor persists and signs.
#[derive(Clone)]
pub struct AuditConfig {
    /// When deltas and commitments reach the disk (default: group commit,
    /// 64 records or 10 ms).
    pub durability: Durability,
    /// Longest a sealed session's commitment waits for a signed head (default 100 ms).
    pub sign_delay: Duration,
    /// Where signed heads go besides the local `heads.log` (e.g. an external
    /// transparency log); see [`AnchorSink`].
    pub sinks: Vec<Arc<dyn AnchorSink>>,
    /// Emit `audit.delta_captured` on the bus for every delta (default true).
    /// It doubles the bus traffic of governed calls; turn it off when nothing
    /// consumes it (`audit.committed` is always emitted).
    pub announce_deltas: bool,
    /// Under group commit, the staged (captured, not yet written) bytes
    /// beyond which a capturing thread writes them itself instead of leaving
    /// them to the flusher (backpressure; default 64 MiB).
    pub max_staged_bytes: u64,
    /// The size after which the deltas go to a new segment file (default
    /// 64 MiB; see [`crate::segments`]): the round that reaches it is the
    /// segment's last. Retention rewrites a whole segment to prune the
    /// sessions in it, and a session still running keeps its segments from
    /// being pruned whole.
    pub max_segment_bytes: u64,
    /// Sealed sessions whose commitment index is kept in memory (default
    /// 65 536); lookups by name of older ones (`commitment_index`, `prune`)
    /// scan the commitment log, and retention walks it. Every sealed
    /// session still costs 20-40 bytes (a fingerprint that refuses its late
    /// events and a second sealing), instead of ~100 with its id and index.
    pub recent_sealed: usize,
    /// Prune the delta bodies of sessions sealed long ago (default: never).
    /// The auditor's background thread applies it ([`Auditor::apply_retention`]);
    /// the pruned logs keep their leaf hashes, so their commitments verify.
    pub retention: Option<Retention>,
}

/// Age-based retention of delta bodies ([`AuditConfig::retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Sessions sealed longer ago than this, by the wall clock, lose their
    /// delta bodies.
    pub keep: Duration,
    /// How often the background thread looks for them (on the auditor's
    /// monotonic clock). Each look walks the sealed sessions once.
    pub check_every: Duration,
}

impl Retention {
    /// Keep bodies for `keep`, checking every `keep / 10` (at least a
    /// second, at most an hour).
    pub fn keep(keep: Duration) -> Retention {
        Retention {
            keep,
            check_every: (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        }
    }
}

/// When the next retention pass is due, on a monotonic clock.
#[derive(Debug, Default)]
struct RetentionTimer {
    last: Option<Duration>,
}

impl RetentionTimer {
    /// Whether a pass is due at `now` (the first one at once); if so, it is
    /// counted as done.
    fn due(&mut self, now: Duration, every: Duration) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.saturating_sub(last) >= every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            durability: Durability::default(),
            sign_delay: Duration::from_millis(100),
            sinks: Vec::new(),
            announce_deltas: true,
            max_staged_bytes: 64 << 20,
            max_segment_bytes: DEFAULT_MAX_SEGMENT_BYTES,
            recent_sealed: 1 << 16,
            retention: None,
        }
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("durability", &self.durability)
            .field("sign_delay", &self.sign_delay)
            .field("announce_deltas", &self.announce_deltas)
            .field("max_staged_bytes", &self.max_staged_bytes)
            .field("max_segment_bytes", &self.max_segment_bytes)
            .field("recent_sealed", &self.recent_sealed)
            .field("retention", &self.retention)
            .field(
                "sinks",
                &self
                    .sinks
                    .iter()
                    .map(|s| s.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What went wrong in the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing a log file.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Reading or writing a segment.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A round in a segment whose footer does not match its records.
    #[error("{}: the round at offset {offset} is unreadable: {reason}", path.display())]
    DamagedRound {
        /// The segment.
        path: PathBuf,
        /// The round's first byte.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// A segment file is missing: a later segment's start record names it
    /// as created before it, and the auditor never deletes a segment.
    /// Recovery seals no session that may have had records in it.
    #[error(
        "{} is missing: {} names it as the segment created before it (the auditor never deletes a segment)",
        path.display(),
        named_by.display()
    )]
    MissingSegment {
        /// Where the missing segment would be.
        path: PathBuf,
        /// The segment whose start record names it.
        named_by: PathBuf,
    },
    /// A session's records in the segments do not fit together (recovery
    /// leaves such a session unsealed, as evidence).
    #[error("session {session}: its records in {} do not fit together: {detail}", dir.display())]
    BadChunks {
        /// The session.
        session: String,
        /// The segment directory.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The signing key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The head signer.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// A directory could not be created or listed, or a log synced.
    #[error("{op} {path}: {source}")]
    Dir {
        /// What was being done.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record in a log is not what that log holds.
    #[error("{path}: record at offset {offset}: {source}")]
    BadRecord {
        /// The log.
        path: PathBuf,
        /// The record's offset.
        offset: u64,
        /// What is wrong with it.
        source: RecordFormatError,
    },
    /// A delta record that does not decode.
    #[error("{path}: record at offset {offset}: {source}")]
    BadDelta {
        /// The log.
        path: PathBuf,
        /// The record's offset.
        offset: u64,
        /// What is wrong with it.
        source: crate::delta::DeltaError,
    },
    /// The session's commitment is not on disk yet (a write failed and is
    /// being retried; see [`Auditor::last_error`]).
    #[error(
        "session {0}: its commitment is not written yet; retry after the audit log has been flushed"
    )]
    NotDurable(String),
    /// The session's log was already sealed.
    #[error("session {0}: its audit log is already sealed")]
    AlreadySealed(String),
    /// The session is not sealed (pruning needs a commitment first).
    #[error("session {0}: its audit log is not sealed")]
    NotSealed(String),
    /// The session has no audit log.
    #[error("session {0}: no audit log")]
    UnknownSession(String),
    /// A sealed session's commitment was not on disk within the time
    /// [`Auditor::wait_durable`] was given (a write or sync failing and
    /// being retried, or a disk slower than the wait). The session stays
    /// sealed; its commitment is written by a later round, or, after a
    /// crash, recovery seals the session again.
    #[error(
        "session {session}: commitment #{index} is not on disk after {waited:?}{}",
        .last_error.as_deref().map(|e| format!(" (last write failure: {e})")).unwrap_or_default()
    )]
    DurableTimeout {
        /// The sealed session.
        session: String,
        /// Its commitment's index in the commitment log.
        index: u64,
        /// How long the caller waited.
        waited: Duration,
        /// The last background write failure, if any ([`Auditor::last_error`]).
        last_error: Option<String>,
    },
    /// The auditor was closed.
    #[error("the auditor is closed")]
    Closed,
    /// A write of the log panicked (a bug): treated as a failed write, so
    /// what it was writing stays staged for the next round.
    #[error("writing {what} panicked: {message}")]
    WritePanicked {
        /// What was being written: `a round of deltas` or `commitments`.
        what: &'static str,
        /// The panic's message.
        message: String,
    },
    /// An event whose delta would exceed a record's 16 MiB: not audited.
    #[error(
        "session {session}: a {kind} event's delta has {len} bytes, more than a record holds; it was not audited"
    )]
    DeltaTooLarge {
        /// The session.
        session: String,
        /// The event's kind.
        kind: String,
        /// The delta's encoded length.
        len: usize,
    },
    /// Another auditor — in this process or another one — has the directory
    /// open. Two writers would interleave their appends to the commitment
    /// log and seal each other's live sessions as orphans.
    #[error("{}: another process (or auditor) has this audit directory open; stop it first, or use `ahv audit verify`, which only reads", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

/// What opening the audit directory found and did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Torn tails cut from session logs (a crash mid-write); each was saved
    /// beside its log (`saved_to`) before the log was cut. A segment's torn
    /// tail is listed too, with no `saved_to`: it stays where it is.
    pub torn: Vec<(PathBuf, TornTail)>,
    /// Sessions whose logs had no commitment (their process ended without
    /// sealing them): sealed now over the complete records they hold.
    pub sealed_on_recovery: Vec<(String, u64)>,
    /// Commitments in the log.
    pub commitments: u64,
    /// Records at the end of a segment that no whole round holds (a crash
    /// while a round was written, so never acknowledged): the segment, the
    /// first one's offset, how many. They stay in the segment as evidence
    /// (a writer never appends to a segment an earlier process wrote).
    pub uncommitted: Vec<(PathBuf, u64, usize)>,
    /// Session logs left without a commitment that could not be sealed
    /// because they are damaged (a record in the middle fails its checksum,
    /// a header is missing or wrong, a delta does not decode) or unreadable.
    /// Each is left as it is, as evidence (a torn tail is still cut and
    /// saved aside, as in [`RecoveryReport::torn`]): nothing is sealed over
    /// it, and `ahv audit verify` reports it as failed until an operator
    /// deals with it. The auditor works on without them, and records
    /// nothing more for their sessions (later events are late). A session
    /// whose records in the segments do not fit together is listed with
    /// the segment directory; a damaged round, with its segment.
    pub damaged: Vec<(PathBuf, AuditError)>,
    /// The commitment retention resumes from: where the last pass of an
    /// earlier process left off (`retention.mark`), 0 without one.
    pub retention_resumes_at: u64,
    /// The lowest segment retention reads: every one below was pruned whole
    /// by an earlier process (`retention.mark`), 1 without one.
    pub retention_segments_from: u64,
    /// Why a saved retention mark was not used (unreadable, or not naming a
    /// commitment of this log); retention then walks the commitment log from
    /// the start, which costs time, never data: it only prunes sessions
    /// sealed before its cutoff.
    pub retention_mark_ignored: Option<String>,
}

/// A sealed session: its commitment, where it sits in the commitment log, and
/// whether it was on disk when the receipt was made.
///
/// A [`SealState::Durable`] receipt promises that the commitment and every
/// delta it covers are written and synced: a crash cannot lose them. A
/// [`SealState::Pending`] one (group commit) promises only that they are
/// staged for the next flush round; report it to no one before
/// [`Auditor::wait_durable`] has turned it into a durable one. The state is a
/// snapshot: a pending receipt stays pending as a value even after its round
/// (ask [`Auditor::is_durable`], or wait, which then returns at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealReceipt {
    /// The commitment.
    pub commitment: Commitment,
    /// Its index (leaf) in the commitment log.
    pub index: u64,
    /// Whether the commitment was on disk when this receipt was made.
    pub state: SealState,
}

impl SealReceipt {
    /// Whether the commitment was on disk when this receipt was made (see
    /// [`SealState`]).
    pub fn is_durable(&self) -> bool {
        self.state == SealState::Durable
    }
}

/// Whether a [`SealReceipt`]'s commitment is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealState {
    /// Written and synced, after every delta it covers: a crash keeps it.
    Durable,
    /// Not known to be on disk when the receipt was made: staged for the
    /// next group-commit round, and a crash before that round loses it.
    /// [`Auditor::wait_durable`] waits for the round.
    Pending,
}

/// How long front ends wait for a seal to become durable
/// ([`Auditor::wait_durable`]) before they report a failure instead of the
/// receipt: far above a healthy disk's sync (and the group-commit delay); a
/// disk that takes longer is failing.
pub const DURABLE_WAIT: Duration = Duration::from_secs(10);

/// Counters for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Deltas captured.
    pub captured: u64,
    /// Events for sealed sessions (after their commitment), not captured.
    pub late: u64,
    /// Failed background writes (each is retried; see [`Auditor::last_error`]).
    pub write_failures: u64,
    /// Bytes captured and staged in memory, not yet written (the backlog;
    /// always 0 with [`Durability::EveryRecord`]).
    pub staged_bytes: u64,
    /// When the last write round that failed nothing ended, in ms since the
    /// Unix epoch by the auditor's wall clock (0: none yet). With a backlog,
    /// now minus this is how far the log lags behind.
    pub last_round_unix_ms: u64,
}

/// The audit directory under a state directory.
pub fn audit_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("audit")
}

/// Path of a session's own delta log file inside an audit directory (format
/// 1: auditors before segments wrote one per session; this one reads,
/// recovers and prunes them but writes its deltas to `segments/`).
pub fn session_log_path(audit_dir: &Path, session: &str) -> PathBuf {
    audit_dir.join("sessions").join(format!("{session}.log"))
}

/// A session's delta log as written, for tools and tests: the complete
/// records of its own file, if it has one, then those of its chunks in the
/// segments, in order (a retried round's repeat read once). Offsets are
/// within each record's own file. An empty list if the session has no
/// records; `ahv audit verify` judges them, this only reads.
///
/// # Errors
/// [`AuditError`] if a file cannot be read, or a session's records in the
/// segments do not fit together ([`AuditError::BadChunks`]).
pub fn read_session_log(
    audit_dir: &Path,
    session: &str,
) -> Result<Vec<crate::records::Record>, AuditError> {
    let path = session_log_path(audit_dir, session);
    let mut records = if std::fs::symlink_metadata(&path).is_ok() {
        read_log(&path, LogKind::SESSION_DELTAS)?.records
    } else {
        Vec::new()
    };
    let dir = segments_dir(audit_dir);
    let one = crate::segments::session_records(&dir, session)?;
    if !one.records.problems.is_empty() {
        return Err(AuditError::BadChunks {
            session: session.to_string(),
            dir,
            detail: format!("{:?}", one.records.problems),
        });
    }
    records.extend(one.records.records.into_iter().map(|l| l.record));
    Ok(records)
}

/// The commitment log inside an audit directory.
pub fn commitments_path(audit_dir: &Path) -> PathBuf {
    audit_dir.join("commitments.log")
}

/// The signed-head log inside an audit directory.
pub fn heads_path(audit_dir: &Path) -> PathBuf {
    audit_dir.join("heads.log")
}

/// The retention mark inside an audit directory: where the next retention
/// pass resumes in the commitment log (a hint, checked against the log when
/// loaded; `verify` does not read it).
pub fn retention_mark_path(audit_dir: &Path) -> PathBuf {
    audit_dir.join("retention.mark")
}

/// Runs `write` (a round's write of `what`) and turns a panic in it into
/// [`AuditError::WritePanicked`], so that the round's failure path stages
/// what it took again instead of losing it, and the flusher thread lives
/// on. A writer the panic interrupted is left as a failed write leaves it.
fn contained<T>(
    what: &'static str,
    write: impl FnOnce() -> Result<T, AuditError>,
) -> Result<T, AuditError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Err(AuditError::WritePanicked { what, message })
    })
}

/// A pause tests can put into a capture, to run other captures inside a
/// window that a race would need.
#[cfg(test)]
mod test_hooks {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    type Hook = (String, Box<dyn FnOnce() + Send>);

    static STAGED: Mutex<Option<Hook>> = Mutex::new(None);
    /// Whether a hook is set: captures look at it before taking the lock,
    /// so that an unused hook changes no other test's interleavings.
    static ARMED: AtomicBool = AtomicBool::new(false);

    /// Runs `hook` once, in the first `EveryRecord` capture of `session`
    /// after it staged its delta and released the session's lock, before
    /// it waits for its round.
    pub(super) fn on_staged(session: &str, hook: impl FnOnce() + Send + 'static) {
        *STAGED.lock().unwrap() = Some((session.to_string(), Box::new(hook)));
        ARMED.store(true, Ordering::SeqCst);
    }

    pub(super) fn staged(session: &ahv_core::SessionId) {
        if !ARMED.load(Ordering::SeqCst) {
            return;
        }
        let hook = {
            let mut slot = STAGED.lock().unwrap();
            match slot.as_ref() {
                Some((s, _)) if s == session.as_str() => {
                    ARMED.store(false, Ordering::SeqCst);
                    slot.take()
                }
                _ => None,
            }
        };
        if let Some((_, hook)) = hook {
            hook();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session's log.
struct SessionLog {
    id: SessionId,
    /// Its fingerprint in [`SealedSet`], computed once when the log is made
    /// (the check that it was not sealed already) and used again by its
    /// seal: one SHA-256 per session, not two.
    sealed_key: u128,
    state: Mutex<SessionState>,
    /// The lowest segment its chunks can be in (0: none written yet): the
    /// segment its first chunk went to, or, if a round holding one failed
    /// first, the lowest that round could have reached. Counted in
    /// [`Shared::live_segments`] until its commitment is durable.
    first_segment: AtomicU64,
    /// Whether this process wrote all its chunks, so that `first_segment`
    /// bounds them (not so for a session recovery sealed).
    spanned: bool,
    /// Its commitment's index once sealed ([`NOT_SEALED`] before): what
    /// [`Shared::commitment_index`] answers while the log is in memory.
    commitment: AtomicU64,
}

/// [`SessionLog::commitment`] of a log not sealed yet.
const NOT_SEALED: u64 = u64::MAX;

/// A session's live log; the next seq is `tree.len()` and the parent of the
/// next delta is the tree's last leaf.
#[derive(Default)]
struct SessionState {
    tree: CompactTree,
    /// Deltas not yet handed to the writer: `u32 LE length ‖ body`, repeated
    /// (a buffer from [`Shared::buffers`] once the first delta is staged).
    staged: Vec<u8>,
    staged_count: usize,
    dirty: bool,
    /// Sealed: later events are late.
    sealed: bool,
}

/// The commitment log.
struct CommitLog {
    state: Mutex<CommitState>,
    /// The sealed sessions whose logs have left memory: a lock of their
    /// own, which no seal takes (the round that writes a commitment fills
    /// them, and a table's growth there holds up no seal).
    sealed: Mutex<Sealed>,
    io: Mutex<RecordWriter>,
    /// Notified (with `state`) whenever `CommitState::durable` moves, for
    /// [`Auditor::wait_durable`].
    durable_moved: Condvar,
}

/// Maps keyed by session id (host-generated ids: a fast hasher is enough).
type SessionMap<V> = HashMap<SessionId, V, FastHash>;

struct CommitState {
    /// The commitment log's right edge: its proofs are made from the file.
    tree: CompactTree,
    /// Commitments appended but not yet written, in order.
    staged: Vec<StagedCommit>,
    durable: (u64, Hash),
}

/// The sealed sessions a round has written (see [`CommitLog::sealed`]).
struct Sealed {
    /// The sessions whose commitments were written most recently, with
    /// their indexes.
    recent: RecentSealed,
    /// Every sealed session whose log has left memory, as a 128-bit
    /// fingerprint (20-40 B each, a fraction of keeping its id): refuses
    /// late events and a second sealing exactly. A sealed log stays in
    /// [`Shared::sessions`], which refuses them itself, until the round
    /// that writes its commitment puts it here.
    ever: SealedSet,
}

/// Fingerprints of every sealed session id: the first 128 bits of its
/// SHA-256 (one compression for a short id, twice per session). A false
/// "already sealed" would take a 128-bit SHA-256 collision.
struct SealedSet {
    set: std::collections::HashSet<u128, FastHash>,
}

impl SealedSet {
    fn new() -> SealedSet {
        SealedSet {
            set: std::collections::HashSet::default(),
        }
    }

    /// Room for `n` more without rehashing (sized once at open from the
    /// commitment log's length, instead of doubling through it).
    fn reserve(&mut self, n: usize) {
        self.set.reserve(n);
    }

    fn key(session: &str) -> u128 {
        let h = Hash::of_parts(&[b"ahv-sealed-session\0", session.as_bytes()]);
        let mut k = [0u8; 16];
        k.copy_from_slice(&h.0[..16]);
        u128::from_le_bytes(k)
    }

    /// Adds a session by its fingerprint ([`SealedSet::key`]); false if it
    /// was there already.
    fn insert_key(&mut self, key: u128) -> bool {
        self.set.insert(key)
    }

    fn contains_key(&self, key: u128) -> bool {
        self.set.contains(&key)
    }
}

/// The last `cap` sealed sessions whose commitments were written (one not
/// written yet is in [`Shared::sessions`], with its index) and their
/// commitment indexes, oldest evicted first, keyed by their [`SealedSet`]
/// fingerprints: a sealed log has its fingerprint already, so remembering
/// it hashes no id and keeps no id.
struct RecentSealed {
    index: HashMap<u128, u64, FastHash>,
    order: std::collections::VecDeque<u128>,
    cap: usize,
}

impl RecentSealed {
    fn new(cap: usize) -> RecentSealed {
        RecentSealed {
            index: HashMap::default(),
            order: std::collections::VecDeque::new(),
            cap,
        }
    }

    /// Remembers the session whose fingerprint is `key`.
    fn insert(&mut self, key: u128, index: u64) {
        if self.cap == 0 {
            return;
        }
        if self.order.len() == self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.index.remove(&old);
        }
        self.index.insert(key, index);
        self.order.push_back(key);
    }

    /// The commitment index of the session whose fingerprint is `key`, if
    /// it is among the remembered ones.
    fn get(&self, key: u128) -> Option<u64> {
        self.index.get(&key).copied()
    }
}

/// A commitment waiting to be written.
struct StagedCommit {
    bytes: Vec<u8>,
    /// The session log it covers (written first).
    log: Arc<SessionLog>,
}

impl HeadSource for CommitLog {
    fn current(&self) -> (u64, Hash) {
        lock(&self.state).durable
    }
}

/// The local signed-head log: the embedded default anchor.
struct HeadLog {
    writer: Mutex<RecordWriter>,
}

impl AnchorSink for HeadLog {
    fn name(&self) -> &str {
        "heads.log"
    }

    fn publish(&self, head: &SignedTreeHead) -> Result<(), AnchorError> {
        let mut w = lock(&self.writer);
        w.append(&head.to_bytes(), Duration::ZERO)
            .and_then(|_| w.flush())
            .map_err(|e| AnchorError {
                sink: "heads.log".into(),
                reason: e.to_string(),
            })
    }
}

/// How often, in event time, the offset from the event clock to the wall
/// clock is read again (see `Shared::delta_time`).
const REANCHOR_EVERY: Duration = Duration::from_secs(1);

/// The offset that turns an event's time into wall time.
#[derive(Default)]
struct WallTime {
    /// Wall-clock ns minus event-clock ns at the last reading.
    offset: AtomicI64,
    /// The event time (ns) from which the offset is read again; 0: at once.
    next: AtomicU64,
}

struct Shared {
    dir: PathBuf,
    announce: bool,
    max_staged: u64,
    durability: Durability,
    clock: Arc<dyn Clock>,
    wall: Arc<dyn WallClock>,
    /// The clock events are timed by: the attached bus's, else `clock`.
    /// Locked while the wall-time offset is read again, so that reading
    /// and attaching do not interleave.
    event_clock: Mutex<Option<Arc<dyn Clock>>>,
    /// Maps events' times to wall time for their deltas.
    wall_time: WallTime,
    /// Every session's log from its first event until the round that
    /// writes its commitment (or for good, if that round never comes).
    sessions: RwLock<SessionMap<Arc<SessionLog>>>,
    /// Sessions created with auditing off.
    excluded: Mutex<std::collections::HashSet<SessionId, FastHash>>,
    /// How many sessions `excluded` holds, written under its lock, so that
    /// an audited event skips the lock while no session is excluded.
    excluded_len: AtomicUsize,
    dirty: Mutex<DirtyList>,
    commits: Arc<CommitLog>,
    signer: OnceLock<BatchSigner>,
    bus: OnceLock<(Weak<EventBus>, SubscriptionId)>,
    captured: AtomicU64,
    late: AtomicU64,
    write_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: AtomicBool,
    tick: (Mutex<bool>, Condvar),
    /// Bytes staged in memory across sessions, not yet written.
    staged_bytes: AtomicU64,
    /// Wall time (ms) of the end of the last flush round without a failure.
    last_round_ms: AtomicU64,
    /// Held for a whole flush round.
    round: Mutex<()>,
    /// Emptied staging buffers for reuse, so capture does not allocate and
    /// grow a fresh buffer per session (nor free it on the flusher's thread).
    buffers: Mutex<Vec<Vec<u8>>>,
    /// The segment writer; held while a round's chunks are taken from their
    /// sessions and written, so a session's chunks reach the segments in
    /// the order they were staged. Only ever held as a [`WriterHold`], so
    /// that every release wakes the captures waiting for rounds.
    segments: WriterCell,
    /// How many sessions not yet durably sealed have their first chunk in
    /// each segment: the lowest is the oldest live segment a new segment's
    /// start record names, so recovery reads no segment before it. An
    /// orphan recovery could not seal, and a segment it could not read,
    /// count here for good: every later reopen reads them and reports
    /// them again.
    live_segments: Mutex<std::collections::BTreeMap<u64, usize>>,
    /// Where the next retention pass starts; held by whatever prunes.
    retention: Mutex<RetentionMark>,
    /// Which segments the sessions behind this process's commitments were
    /// written to, so a retention pass reads only those.
    spans: Mutex<CommitSpans>,
}

/// Sessions with staged deltas no round has taken yet.
#[derive(Default)]
struct DirtyList {
    logs: Vec<Arc<SessionLog>>,
    /// How many rounds have taken the list: a delta staged and listed now
    /// is taken by round `drains + 1` at the latest.
    drains: u64,
}

/// Rounds finished so far.
#[derive(Default)]
struct RoundsDone {
    /// The highest `drains` number of a finished round.
    drained: u64,
    /// How many times the writer was released (by a round or anything
    /// else that held it).
    released: u64,
}

use writer_cell::{WriterCell, WriterHold};

/// The segment writer's lock, apart: its mutex can be locked only as a
/// [`WriterHold`], whose release every capture waiting for a round hears.
mod writer_cell {
    use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};

    use super::{RoundsDone, lock};
    use crate::segments::SegmentWriter;

    /// The writer and the count of its releases.
    pub(super) struct WriterCell {
        writer: Mutex<SegmentWriter>,
        /// Rounds finished and releases, for captures under `EveryRecord`
        /// waiting for one that took their delta.
        rounds: (Mutex<RoundsDone>, Condvar),
    }

    impl WriterCell {
        /// A cell holding `writer`.
        pub(super) fn new(writer: SegmentWriter) -> WriterCell {
            WriterCell {
                writer: Mutex::new(writer),
                rounds: (Mutex::new(RoundsDone::default()), Condvar::new()),
            }
        }

        /// The writer, held until the hold is dropped.
        pub(super) fn hold(&self) -> WriterHold<'_> {
            self.held(lock(&self.writer))
        }

        /// The writer if no one holds it.
        pub(super) fn try_hold(&self) -> Option<WriterHold<'_>> {
            let guard = match self.writer.try_lock() {
                Ok(w) => w,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return None,
            };
            Some(self.held(guard))
        }

        fn held<'a>(&'a self, guard: MutexGuard<'a, SegmentWriter>) -> WriterHold<'a> {
            WriterHold {
                guard,
                release: Release {
                    rounds: &self.rounds,
                    drained: 0,
                },
            }
        }

        /// The rounds' count and the condition variable every release
        /// notifies.
        pub(super) fn rounds(&self) -> &(Mutex<RoundsDone>, Condvar) {
            &self.rounds
        }
    }

    /// The segment writer, held. Dropping it releases the writer, then
    /// counts the release (and the round, if it was one) and wakes the
    /// captures waiting in `Shared::write_through`: whatever held the
    /// writer, one that found it held learns it is free again.
    pub(super) struct WriterHold<'a> {
        /// Dropped first (fields drop in order): released before it is
        /// counted.
        guard: MutexGuard<'a, SegmentWriter>,
        release: Release<'a>,
    }

    impl WriterHold<'_> {
        /// Counts this hold, when released, as round `drain`
        /// ([`super::DirtyList::drains`]): call once the round is done.
        pub(super) fn finish_round(&mut self, drain: u64) {
            self.release.drained = drain;
        }
    }

    /// Counts a release of the writer when dropped.
    struct Release<'a> {
        rounds: &'a (Mutex<RoundsDone>, Condvar),
        /// The round's number if the hold was a round; 0 otherwise.
        drained: u64,
    }

    impl std::ops::Deref for WriterHold<'_> {
        type Target = SegmentWriter;
        fn deref(&self) -> &SegmentWriter {
            &self.guard
        }
    }

    impl std::ops::DerefMut for WriterHold<'_> {
        fn deref_mut(&mut self) -> &mut SegmentWriter {
            &mut self.guard
        }
    }

    impl Drop for Release<'_> {
        fn drop(&mut self) {
            let (done, cv) = self.rounds;
            {
                let mut r = lock(done);
                r.drained = r.drained.max(self.drained);
                r.released += 1;
            }
            cv.notify_all();
        }
    }
}

/// How far retention has walked the commitment log. Its resume point is
/// saved (`retention.mark`) after every pass that moved it, so a new process
/// does not walk the whole commitment log again.
#[derive(Default)]
struct RetentionMark {
    /// The next commitment to look at.
    next: MarkPos,
    /// Sessions whose pruning failed, tried again by the next pass, with
    /// where their commitments sit (in commitment order).
    retry: Vec<(String, MarkPos)>,
    /// The resume point last saved (or loaded), so an unchanged one is not
    /// written again.
    saved: MarkPos,
    /// The lowest segment that may still hold records to prune; every one
    /// below is pruned whole. Saved with the resume point.
    segments_from: u64,
    /// The one last saved (or loaded).
    saved_segments_from: u64,
}

/// A commitment's index in the commitment log and the file offset of its
/// record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct MarkPos {
    index: u64,
    offset: u64,
}

impl RetentionMark {
    /// Has the next pass try `targets` again, each once.
    fn retry_all(&mut self, targets: Vec<(String, MarkPos)>) {
        let listed: std::collections::HashSet<String> =
            self.retry.iter().map(|(s, _)| s.clone()).collect();
        for (s, at) in targets {
            if !listed.contains(&s) {
                self.retry.push((s, at));
            }
        }
    }

    /// Where a new process should resume: the first commitment this one
    /// still has to prune (a failed one), or the next unseen one.
    fn resume(&self) -> MarkPos {
        self.retry.first().map_or(self.next, |(_, at)| *at)
    }
}

/// Version byte of a saved retention mark (version 1, without the segment,
/// is still read).
const RETENTION_MARK_VERSION: u8 = 2;

impl MarkPos {
    /// `version 0x02 ‖ index: u64 ‖ offset: u64 ‖ segments from: u64`
    /// (big-endian; FORMAT.md).
    fn encode(self, segments_from: u64) -> [u8; 25] {
        let mut out = [0u8; 25];
        out[0] = RETENTION_MARK_VERSION;
        out[1..9].copy_from_slice(&self.index.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..].copy_from_slice(&segments_from.to_be_bytes());
        out
    }

    /// A saved mark and the segment retention resumes from (1 for a
    /// version-1 mark, which has none).
    fn decode(body: &[u8]) -> Result<(MarkPos, u64), String> {
        let expected = match body.first() {
            Some(1) => 17,
            Some(2) => 25,
            Some(v) => return Err(format!("unknown version {v:#04x}")),
            None => return Err("an empty record".into()),
        };
        if body.len() != expected {
            return Err(format!("{} bytes, expected {expected}", body.len()));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let segments_from = if expected == 25 { word(17) } else { 1 };
        Ok((
            MarkPos {
                index: word(1),
                offset: word(9),
            },
            segments_from,
        ))
    }
}

/// The saved retention mark, if there is one: `Ok(None)` when none was
/// saved, `Err(why)` when the file is unusable.
fn load_retention_mark(dir: &Path) -> Result<Option<(MarkPos, u64)>, String> {
    let path = retention_mark_path(dir);
    if !path.exists() {
        return Ok(None);
    }
    let recovered = read_log(&path, LogKind::RETENTION_MARK).map_err(|e| e.to_string())?;
    match (&recovered.records[..], recovered.is_clean()) {
        ([one], true) => MarkPos::decode(&one.body).map(Some),
        (records, _) => Err(format!(
            "{} records{}, expected exactly one",
            records.len(),
            if recovered.is_clean() {
                ""
            } else {
                " and damage"
            }
        )),
    }
}

/// A new staging buffer's capacity: a short session's deltas fit.
const BUFFER_CAPACITY: usize = 4 << 10;
/// How much of a session's new staging buffer capture asks the CPU to make
/// writable ahead of use: about the deltas of a short session (the benches'
/// pipeline stages ~1.5 KiB). A reused buffer was last read by the flusher's
/// thread (and a fresh one may be memory that thread freed), so without the
/// hint each line's first write waits for another core. Measured with
/// `lifecycle_probe default pipeline` (README, "Performance"): ~0.8 µs of a
/// ~15.9 µs session; 1 KiB recovered about half of that, 4 KiB no more than
/// 2 KiB.
const STAGED_PREFETCH: usize = 2 << 10;
/// Staging buffers larger than this are freed rather than reused.
const MAX_REUSED_CAPACITY: usize = 64 << 10;
/// Most staging buffers kept for reuse.
const MAX_REUSED_BUFFERS: usize = 1024;

/// The audit log of one hypervisor (see the module docs).
pub struct Auditor {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    public: PublicKey,
    /// The directory's exclusive lock, released by a successful close.
    lock: Mutex<Option<std::fs::File>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("dir", &self.shared.dir)
            .field("public_key", &self.public.to_hex())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Auditor {
    /// Opens (creating if needed) the audit directory `dir`: loads or creates
    /// the signing key, recovers the commitment and head logs (a torn tail is
    /// saved aside and reported), seals every session an earlier process
    /// left without a commitment (in its own file, or in the segments from
    /// the last segment's start on; what a crash left at a segment's end is
    /// reported and kept), and starts the head signer and — under group
    /// commit — the flusher thread. Its deltas go to a new segment: it never
    /// appends to one an earlier process wrote.
    ///
    /// # Errors
    /// [`AuditError`] naming the file: a damaged commitment or head log
    /// (appending after damage would bury it), a bad key, an I/O failure.
    pub fn open(
        dir: &Path,
        config: AuditConfig,
        clock: Arc<dyn Clock>,
        wall: Arc<dyn WallClock>,
    ) -> Result<(Auditor, RecoveryReport), AuditError> {
        // Format 1's per-session files: read for orphans, pruned, never
        // created any more (the deltas go to `segments/`).
        let sessions_dir = dir.join("sessions");
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Dir {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let key = HypervisorKey::load_or_create(dir)?;
        let public = key.public_key();
        let mut report = RecoveryReport::default();

        let cpath = commitments_path(dir);
        let mut tree = CompactTree::new();
        let mut recent = RecentSealed::new(config.recent_sealed);
        let mut ever = SealedSet::new();
        // A commitment record takes at least ~80 bytes (framing, version,
        // size, root, time and a short id): an upper bound on the count.
        let log_len = std::fs::metadata(&cpath).map_or(0, |m| m.len());
        ever.reserve(usize::try_from(log_len / 80).unwrap_or(0));
        // Only the last `recent_sealed` stay indexed: collected in a ring
        // while streaming and indexed once at the end, rather than inserted
        // into (and evicted from) the index for every commitment.
        let mut last: std::collections::VecDeque<(u128, u64)> =
            std::collections::VecDeque::with_capacity(config.recent_sealed.min(1 << 20));
        let saved_mark = load_retention_mark(dir);
        // Whether the saved mark names a record boundary of this log.
        let mut mark_found = false;
        let mut first_error = None;
        // Streamed: the commitment log grows with every session ever sealed.
        let cwriter = open_or_create(&cpath, LogKind::COMMITMENTS, &mut report, |r| {
            if first_error.is_some() {
                return;
            }
            let bad = |source| AuditError::BadRecord {
                path: cpath.clone(),
                offset: r.offset,
                source,
            };
            let decoded = Commitment::decode(&r.body).map_err(bad).and_then(|c| {
                SessionId::new(c.session).map_err(|e| {
                    bad(RecordFormatError::SessionId {
                        what: "commitment",
                        reason: e.to_string(),
                    })
                })
            });
            let session = match decoded {
                Ok(s) => s,
                Err(e) => {
                    first_error = Some(e);
                    return;
                }
            };
            if let Ok(Some((m, _))) = &saved_mark {
                mark_found |= m.index == tree.len().0 && m.offset == r.offset;
            }
            let index = tree.append_leaf_hash(leaf_hash(&r.body)).0;
            // A duplicate commitment is `verify`'s to report; here the
            // session is sealed either way.
            let key = SealedSet::key(session.as_str());
            let _ = ever.insert_key(key);
            if config.recent_sealed > 0 {
                if last.len() == config.recent_sealed {
                    last.pop_front();
                }
                last.push_back((key, index));
            }
        })?;
        for (key, index) in last {
            recent.insert(key, index);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        // An earlier process may have written commitments it never synced
        // (it crashed first): they are durable only once synced, and
        // retention prunes what durable commitments cover.
        std::fs::File::open(&cpath)
            .and_then(|f| f.sync_all())
            .map_err(|source| AuditError::Dir {
                op: "sync",
                path: cpath.clone(),
                source,
            })?;
        let durable = (tree.len().0, tree.root());
        let end = MarkPos {
            index: durable.0,
            offset: cwriter.durable_len(),
        };
        let (resume, segments_from) = match saved_mark {
            Ok(None) => (MarkPos::default(), 1),
            Ok(Some((m, from))) if mark_found || m == end || m == MarkPos::default() => {
                // Never past the segments there are: one that is not there
                // yet cannot have been pruned.
                let past_all = list_segments(&segments_dir(dir))?
                    .last()
                    .map_or(1, |(n, _)| n.saturating_add(1));
                (m, from.clamp(1, past_all))
            }
            Ok(Some((m, _))) => {
                report.retention_mark_ignored = Some(format!(
                    "commitment {} does not start at byte {} of {} ({} commitments, {} bytes)",
                    m.index,
                    m.offset,
                    cpath.display(),
                    end.index,
                    end.offset
                ));
                (MarkPos::default(), 1)
            }
            Err(why) => {
                report.retention_mark_ignored = Some(why);
                (MarkPos::default(), 1)
            }
        };
        if let Some(why) = &report.retention_mark_ignored {
            tracing::warn!(
                path = %retention_mark_path(dir).display(),
                %why,
                "retention mark not used: retention walks the commitment log from the start"
            );
            // Removed, so that it cannot come to name a boundary of a log that
            // has grown since (the next pass that moves writes a new one).
            if let Err(e) = std::fs::remove_file(retention_mark_path(dir)) {
                tracing::warn!(error = %e, "could not remove the unused retention mark");
            }
        }
        report.retention_resumes_at = resume.index;
        report.retention_segments_from = segments_from;
        let commits = Arc::new(CommitLog {
            state: Mutex::new(CommitState {
                tree,
                staged: Vec::new(),
                durable,
            }),
            sealed: Mutex::new(Sealed { recent, ever }),
            io: Mutex::new(cwriter),
            durable_moved: Condvar::new(),
        });
        report.commitments = durable.0;

        let hpath = heads_path(dir);
        let hwriter = open_or_create(&hpath, LogKind::SIGNED_HEADS, &mut report, drop)?;

        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            announce: config.announce_deltas,
            max_staged: config.max_staged_bytes,
            durability: config.durability,
            clock,
            wall: wall.clone(),
            event_clock: Mutex::new(None),
            wall_time: WallTime::default(),
            sessions: RwLock::new(SessionMap::default()),
            excluded: Mutex::new(std::collections::HashSet::default()),
            excluded_len: AtomicUsize::new(0),
            dirty: Mutex::new(DirtyList::default()),
            commits: commits.clone(),
            signer: OnceLock::new(),
            bus: OnceLock::new(),
            captured: AtomicU64::new(0),
            late: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            tick: (Mutex::new(false), Condvar::new()),
            staged_bytes: AtomicU64::new(0),
            last_round_ms: AtomicU64::new(0),
            round: Mutex::new(()),
            buffers: Mutex::new(Vec::new()),
            segments: WriterCell::new(SegmentWriter::open(
                &segments_dir(dir),
                config.max_segment_bytes,
            )?),
            live_segments: Mutex::new(std::collections::BTreeMap::new()),
            retention: Mutex::new(RetentionMark {
                next: resume,
                retry: Vec::new(),
                saved: resume,
                segments_from,
                saved_segments_from: segments_from,
            }),
            spans: Mutex::new(CommitSpans::default()),
        });
        shared.seal_orphans(&sessions_dir, &mut report)?;

        let mut sinks: Vec<Arc<dyn AnchorSink>> = vec![Arc::new(HeadLog {
            writer: Mutex::new(hwriter),
        })];
        sinks.extend(config.sinks.iter().cloned());
        let signer = BatchSigner::spawn(key, commits, sinks, wall, config.sign_delay)?;
        // Commitments from an earlier process that it did not live to sign.
        signer.notify();
        let _ = shared.signer.set(signer);

        // The background thread: group commit's flusher, and retention.
        let flush_every = match config.durability {
            Durability::GroupCommit { max_delay, .. } => Some(max_delay),
            Durability::EveryRecord | Durability::OnClose => None,
        };
        let flusher = if flush_every.is_some() || config.retention.is_some() {
            let s = shared.clone();
            let retention = config.retention;
            Some(
                std::thread::Builder::new()
                    .name("ahv-audit-flusher".into())
                    .spawn(move || s.background(flush_every, retention))
                    .map_err(|source| AuditError::Dir {
                        op: "start the flusher for",
                        path: dir.to_path_buf(),
                        source,
                    })?,
            )
        } else {
            None
        };
        Ok((
            Auditor {
                shared,
                flusher: Mutex::new(flusher),
                public,
                lock: Mutex::new(Some(lock)),
            },
            report,
        ))
    }

    /// Subscribes the auditor to `bus`: from now on every event of a session
    /// is captured as it is emitted, and the auditor emits its own
    /// `audit.delta_captured` / `audit.committed` events there. A delta's
    /// time is its event's, taken from the bus clock and moved to the wall
    /// clock by an offset read again once a second of event time has passed,
    /// so a wall clock that is set is followed within that second (an event
    /// clock that never moves, as a fake one in a test, keeps the first
    /// offset). Without a bus, the times of events handed to
    /// [`Auditor::capture`] are read on the clock given to
    /// [`Auditor::open`]. Call once; later calls do nothing.
    pub fn attach(&self, bus: &Arc<EventBus>) {
        // Held throughout: attaches do not race, and no capture reads the
        // offset again until this bus's clock is the one it is read on.
        let mut clock = lock(&self.shared.event_clock);
        if self.shared.bus.get().is_some() {
            return;
        }
        *clock = Some(bus.clock().clone());
        self.shared.wall_time.next.store(0, Ordering::Release);
        let id = bus.subscribe(Capture(self.shared.clone()));
        let set = self.shared.bus.set((Arc::downgrade(bus), id));
        debug_assert!(
            set.is_ok(),
            "attach holds event_clock: no other attach set the bus"
        );
    }

    /// Stops auditing `session` (created with auditing off): its events are
    /// not captured until [`Auditor::include`]. Call before its first event.
    pub fn exclude(&self, session: &SessionId) {
        let mut set = lock(&self.shared.excluded);
        set.insert(session.clone());
        self.shared.excluded_len.store(set.len(), Ordering::Release);
    }

    /// Forgets an [`Auditor::exclude`] (when the session is gone).
    pub fn include(&self, session: &SessionId) {
        let mut set = lock(&self.shared.excluded);
        set.remove(session);
        self.shared.excluded_len.store(set.len(), Ordering::Release);
    }

    /// The public key that verifies this auditor's signed heads.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Captures one event as a delta of its session and returns its sequence
    /// number and hash; `None` for events without a session, the auditor's own
    /// events, and events of a sealed session (counted as late).
    ///
    /// This is what the bus subscription calls; it is public for embedding
    /// without a bus and for benchmarks. The delta's time is the event's
    /// `time`, moved to the wall clock ([`Auditor::attach`]).
    pub fn capture(&self, event: &Event) -> Option<(u64, Hash)> {
        self.shared.capture(event)
    }

    /// Seals a session's log: its commitment (size and root now) is appended to
    /// the commitment log and a signature over it is scheduled. Never waits
    /// for the signature. Under `EveryRecord` and `OnClose` it writes and
    /// syncs the session's deltas and the commitment before returning, and
    /// the receipt is [`SealState::Durable`]; under group commit it only
    /// stages them for the flusher, which writes them (deltas first) within
    /// `max_delay`, and the receipt is [`SealState::Pending`] — wait for it
    /// with [`Auditor::wait_durable`] before reporting it.
    ///
    /// # Errors
    /// [`AuditError::AlreadySealed`]; I/O errors under synchronous policies.
    pub fn seal(&self, session: &SessionId) -> Result<SealReceipt, AuditError> {
        self.shared.seal(session, ahv_core::TraceId(0), None)
    }

    /// [`Auditor::seal`] as part of a traced operation: its
    /// `audit.committed` event carries `trace` and names `parent` (say, the
    /// session's `session.archived`) as its cause.
    ///
    /// # Errors
    /// As [`Auditor::seal`].
    pub fn seal_traced(
        &self,
        session: &SessionId,
        trace: ahv_core::TraceId,
        parent: Option<ahv_core::EventId>,
    ) -> Result<SealReceipt, AuditError> {
        self.shared.seal(session, trace, parent)
    }

    /// Waits until `receipt`'s commitment is on disk and returns the receipt
    /// as [`SealState::Durable`]; at once if it is already. Under group
    /// commit the wait wakes the background flusher, so the round that
    /// writes the commitment starts at once (or right after the round under
    /// way) instead of at the end of `max_delay`: the wait takes about a
    /// round's writes and sync on a healthy disk. Waiters whose seals are
    /// staged while a round runs share the next round and its sync, as in a
    /// database's group commit. The waiting thread writes nothing itself
    /// ([`Auditor::flush`] does). `receipt` must come from this auditor.
    /// Front ends wait [`DURABLE_WAIT`].
    ///
    /// # Errors
    /// [`AuditError::DurableTimeout`], naming the session and the commitment
    /// index (and the last write failure), when it is not on disk within
    /// `timeout`.
    pub fn wait_durable(
        &self,
        receipt: &SealReceipt,
        timeout: Duration,
    ) -> Result<SealReceipt, AuditError> {
        let durable = SealReceipt {
            state: SealState::Durable,
            ..receipt.clone()
        };
        if receipt.is_durable() {
            return Ok(durable);
        }
        let commits = &self.shared.commits;
        if lock(&commits.state).durable.0 <= receipt.index {
            // Group commit: the round that makes it durable starts now, not
            // at the flusher's next tick. Seals staged while a round runs go
            // into the one right after it, so concurrent waiters still share
            // rounds and syncs.
            self.shared.wake_flusher();
        }
        let (cs, _) = commits
            .durable_moved
            .wait_timeout_while(lock(&commits.state), timeout, |cs| {
                cs.durable.0 <= receipt.index
            })
            .unwrap_or_else(|p| p.into_inner());
        if cs.durable.0 > receipt.index {
            return Ok(durable);
        }
        drop(cs);
        Err(AuditError::DurableTimeout {
            session: receipt.commitment.session.clone(),
            index: receipt.index,
            waited: timeout,
            last_error: self.last_error(),
        })
    }

    /// Whether `receipt`'s commitment is on disk now (a pending receipt
    /// becomes durable at the end of its group-commit round).
    pub fn is_durable(&self, receipt: &SealReceipt) -> bool {
        receipt.is_durable() || receipt.index < self.durable_commitments()
    }

    /// How many commitments are on disk: every commitment whose index is
    /// below this is durable, with the deltas it covers.
    pub fn durable_commitments(&self) -> u64 {
        lock(&self.shared.commits.state).durable.0
    }

    /// Writes and syncs everything staged (deltas, then commitments) and has
    /// the current head signed; returns it. What shutdown does, callable any time.
    ///
    /// # Errors
    /// The first write or signing failure.
    pub fn flush(&self) -> Result<Option<SignedTreeHead>, AuditError> {
        self.shared.flush_all()?;
        match self.shared.signer.get() {
            Some(s) => Ok(s.flush()?),
            None => Err(AuditError::Closed),
        }
    }

    /// Stops the flusher, writes everything, signs the final head and stops
    /// the signer; then releases the directory's lock. Dropping the auditor
    /// does the same, ignoring errors.
    ///
    /// # Errors
    /// As [`Auditor::flush`].
    pub fn close(&self) -> Result<Option<SignedTreeHead>, AuditError> {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let (m, cv) = &self.shared.tick;
            *lock(m) = true;
            cv.notify_all();
        }
        if let Some(t) = lock(&self.flusher).take() {
            let _ = t.join();
        }
        if let Some((bus, id)) = self.shared.bus.get()
            && let Some(bus) = bus.upgrade()
        {
            bus.unsubscribe(*id);
        }
        let head = self.flush()?;
        // Everything is written: another auditor may take the directory.
        lock(&self.lock).take();
        Ok(head)
    }

    /// Replaces the bodies of a sealed session's deltas by their leaf hashes
    /// (retention): the commitment stays verifiable, the contents are gone.
    /// Returns how many records were pruned. Reads the segments its
    /// records can be in if this process wrote them, else every segment.
    ///
    /// # Errors
    /// [`AuditError::NotSealed`] for a session without a commitment;
    /// [`AuditError::NotDurable`] when its commitment could not be written
    /// yet; [`AuditError::UnknownSession`]; damaged logs; I/O.
    pub fn prune(&self, session: &str) -> Result<u64, AuditError> {
        self.shared.flush_all()?;
        self.shared.prune_written(session)
    }

    /// The retention policy, applied once: prunes ([`Auditor::prune`]) every
    /// session sealed more than `keep` ago by the wall clock, once each.
    /// Returns how many sessions it pruned. [`AuditConfig::retention`] has
    /// the auditor's background thread do this periodically; the hot path
    /// never prunes.
    ///
    /// A call reads only the segments the due sessions' records can be in,
    /// as far as this process wrote them; for commitments an earlier
    /// process wrote, every segment from the lowest not pruned whole.
    ///
    /// # Errors
    /// The first failure; every other due session is still pruned, and the
    /// failed ones are tried again by the next call.
    pub fn apply_retention(&self, keep: Duration) -> Result<u64, AuditError> {
        self.shared.apply_retention(keep)
    }

    /// The index of a sealed session's commitment in the commitment log, if
    /// it is sealed: a lookup for recently sealed sessions, a scan of the
    /// commitment log for older ones.
    ///
    /// # Errors
    /// Reading the commitment log.
    pub fn commitment_index(&self, session: &str) -> Result<Option<u64>, AuditError> {
        self.shared.commitment_index(session)
    }

    /// The latest signed head, if any was signed by this process.
    pub fn latest_head(&self) -> Option<SignedTreeHead> {
        self.shared.signer.get().and_then(BatchSigner::latest)
    }

    /// Monitoring counters.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            captured: self.shared.captured.load(Ordering::Relaxed),
            late: self.shared.late.load(Ordering::Relaxed),
            write_failures: self.shared.write_failures.load(Ordering::Relaxed),
            staged_bytes: self.shared.staged_bytes.load(Ordering::Relaxed),
            last_round_unix_ms: self.shared.last_round_ms.load(Ordering::Relaxed),
        }
    }

    /// The last background write failure, if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The lock file inside an audit directory: [`Auditor::open`] holds an
/// exclusive advisory lock on it (`flock` on Unix) for the auditor's life.
pub fn lock_path(audit_dir: &Path) -> PathBuf {
    audit_dir.join("lock")
}

/// Whether an auditor (a running hypervisor, or `ahv audit prune`) has the
/// audit directory open right now. Probes the lock without keeping it.
pub fn dir_in_use(audit_dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(lock_path(audit_dir)) else {
        return false;
    };
    matches!(
        file.try_lock_shared(),
        Err(std::fs::TryLockError::WouldBlock)
    )
}

/// Takes the audit directory's exclusive lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, AuditError> {
    let path = lock_path(dir);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| AuditError::Dir {
            op: "open the lock file",
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(AuditError::Dir {
            op: "lock",
            path,
            source,
        }),
    }
}

fn open_or_create(
    path: &Path,
    kind: LogKind,
    report: &mut RecoveryReport,
    each: impl FnMut(crate::records::Record),
) -> Result<RecordWriter, AuditError> {
    // Our writers are flushed explicitly (by capture, seal or the flusher);
    // `OnClose` keeps the writer itself from flushing on its own.
    if path.exists() {
        let (w, rec) = RecordWriter::open_append_each(path, kind, Durability::OnClose, each)?;
        if let Some(t) = rec.tail {
            report.torn.push((path.to_path_buf(), t));
        }
        Ok(w)
    } else {
        Ok(RecordWriter::create(path, kind, Durability::OnClose)?)
    }
}

/// The bus subscription.
struct Capture(Arc<Shared>);

impl EventSink for Capture {
    fn on_event(&self, event: &Event) {
        match self.0.bus.get().and_then(|(bus, _)| bus.upgrade()) {
            Some(bus) => self.on_event_from(&bus, event),
            None => {
                self.0.capture(event);
            }
        }
    }

    /// What the bus calls: the announcement goes to the bus that delivered
    /// the event (the one this auditor subscribed to), without upgrading the
    /// auditor's weak handle per event.
    fn on_event_from(&self, bus: &EventBus, event: &Event) {
        if let Some((seq, hash)) = self.0.capture(event)
            && self.0.announce
        {
            bus.emit_following(
                event,
                EventPayload::AuditDeltaCaptured { seq, hash: hash.0 },
            );
        }
    }

    /// The auditor's own events are never captured: announcing a delta
    /// then costs the bus no delivery.
    fn wants(&self, kind: EventKind) -> bool {
        !is_audit_kind(kind)
    }
}

/// `e` and the causes its message does not already name, `outer: inner`:
/// a failed write's own words ("No space left on device") are in its
/// source, which an operator reading [`Auditor::last_error`] needs.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        next = cause.source();
    }
    message
}

fn is_audit_kind(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::AuditDeltaCaptured | EventKind::AuditCommitted
    )
}

impl Shared {
    /// The live log of a session; `None` once the session is sealed and
    /// written (its events are then late).
    fn session_log(&self, id: &SessionId) -> Option<Arc<SessionLog>> {
        if let Some(log) = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Some(log.clone());
        }
        // Hashed before the locks: only a session without a live log gets
        // here (its first event, a late event, or a seal of a session that
        // had no events).
        let sealed_key = SealedSet::key(id.as_str());
        let mut map = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = map.get(id) {
            return Some(log.clone());
        }
        if lock(&self.commits.sealed).ever.contains_key(sealed_key) || self.is_excluded(id) {
            return None;
        }
        let log = Arc::new(SessionLog {
            id: id.clone(),
            sealed_key,
            state: Mutex::new(SessionState::default()),
            first_segment: AtomicU64::new(0),
            spanned: true,
            commitment: AtomicU64::new(NOT_SEALED),
        });
        map.insert(id.clone(), log.clone());
        Some(log)
    }

    /// A staging buffer: a reused one if any.
    fn buffer(&self) -> Vec<u8> {
        lock(&self.buffers)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_CAPACITY))
    }

    /// Keeps a written staging buffer for reuse.
    fn recycle(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() > MAX_REUSED_CAPACITY {
            return;
        }
        buffer.clear();
        let mut pool = lock(&self.buffers);
        if pool.len() < MAX_REUSED_BUFFERS {
            pool.push(buffer);
        }
    }

    fn wall_ns(&self) -> u64 {
        self.wall.now_unix_ns()
    }

    /// A delta's time: its event's, on the wall clock. The event's time (on
    /// the bus clock, read once as it was emitted) is moved by an offset
    /// between the two clocks, read again once a second of event time has
    /// passed ([`REANCHOR_EVERY`]): a wall-clock read per delta was ~30 ns
    /// of the capture path. A wall clock that is set is followed within
    /// that second.
    fn delta_time(&self, event: &Event) -> u64 {
        let t = u64::try_from(event.time.as_nanos()).unwrap_or(u64::MAX);
        if t >= self.wall_time.next.load(Ordering::Acquire) {
            self.anchor_wall_time(t);
        }
        t.saturating_add_signed(self.wall_time.offset.load(Ordering::Relaxed))
    }

    #[cold]
    #[inline(never)]
    fn anchor_wall_time(&self, t: u64) {
        let clock = lock(&self.event_clock);
        // Another capture may have read it again while this one waited.
        if t < self.wall_time.next.load(Ordering::Acquire) {
            return;
        }
        let clock = clock.as_ref().unwrap_or(&self.clock);
        let mono = i128::try_from(clock.now().as_nanos()).unwrap_or(i128::MAX);
        let offset = i128::from(self.wall_ns()) - mono;
        let offset = i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX });
        // Stored first, and `next` released after it: a capture that sees
        // the new `next` sees this offset or a later one.
        self.wall_time.offset.store(offset, Ordering::Relaxed);
        let every = u64::try_from(REANCHOR_EVERY.as_nanos()).unwrap_or(u64::MAX);
        // From the clock, not from `t`: an event timed ahead of the clock
        // (a foreign cause) must not hold the offset until the clock
        // catches up; it costs an extra re-anchor instead.
        let mono = u64::try_from(mono).unwrap_or(u64::MAX);
        self.wall_time
            .next
            .store(mono.saturating_add(every), Ordering::Release);
    }

    /// Whether `session` is excluded from auditing; no lock while none is.
    fn is_excluded(&self, session: &SessionId) -> bool {
        self.excluded_len.load(Ordering::Acquire) != 0 && lock(&self.excluded).contains(session)
    }

    fn capture(&self, event: &Event) -> Option<(u64, Hash)> {
        let session = event.session.as_ref()?;
        if is_audit_kind(event.kind()) || self.stop.load(Ordering::Relaxed) {
            return None;
        }
        // Checked first: an unaudited session's events cost one lookup,
        // not the log map's locks and the sealed-session filter's hashing.
        if self.is_excluded(session) {
            return None;
        }
        let Some(log) = self.session_log(session) else {
            if self.is_excluded(session) {
                return None;
            }
            self.late.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%session, kind = %event.kind(), "event after the session's audit log was sealed");
            return None;
        };
        let time = self.delta_time(event);
        let mut guard = lock(&log.state);
        let st = &mut *guard;
        if st.sealed {
            self.late.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%session, kind = %event.kind(), "event after the session's audit log was sealed");
            return None;
        }
        let seq = st.tree.len().0;
        let parent = st.tree.last_leaf();
        if st.staged.capacity() == 0 {
            st.staged = self.buffer();
            // The misses this session's encoding would take one by one
            // start now, together, beside the rest of its work.
            let ahead = STAGED_PREFETCH.min(st.staged.capacity());
            ahv_core::prefetch::lines_for_write(st.staged.as_ptr(), ahead);
        }
        // Encoded in place behind a length prefix patched afterwards: no
        // scratch copy.
        let start = st.staged.len();
        st.staged.extend_from_slice(&[0; 4]);
        encode_event(
            &mut st.staged,
            seq,
            session.as_str(),
            time,
            parent.as_ref(),
            event,
        );
        if st.staged.len() - start - 4 > crate::records::MAX_RECORD as usize {
            // Not a record any log can hold (16 MiB): refused here, before
            // its leaf joins the tree, so the session's log and its
            // commitment stay consistent; the event goes unaudited, loudly.
            let len = st.staged.len() - start - 4;
            st.staged.truncate(start);
            // Not kept grown to the refused delta's size.
            st.staged.shrink_to(start.max(BUFFER_CAPACITY));
            drop(guard);
            let e = AuditError::DeltaTooLarge {
                session: session.to_string(),
                kind: event.kind().to_string(),
                len,
            };
            self.note_failure(&e, "an event was not audited");
            return None;
        }
        let body = &st.staged[start + 4..];
        let leaf = leaf_hash(body);
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        st.staged[start..start + 4].copy_from_slice(&len.to_le_bytes());
        st.tree.append_leaf_hash(leaf);
        st.staged_count += 1;
        let backlog = self
            .staged_bytes
            .fetch_add(u64::from(len) + 4, Ordering::Relaxed);
        self.captured.fetch_add(1, Ordering::Relaxed);
        match self.durability {
            Durability::EveryRecord => {
                // Listed under the session's lock: a capture that finds it
                // listed already knows it is in the list (or taken with
                // this delta) before its own round number is read.
                let target = {
                    let mut d = lock(&self.dirty);
                    if !std::mem::replace(&mut st.dirty, true) {
                        d.logs.push(log.clone());
                    }
                    d.drains + 1
                };
                drop(guard);
                // Directly after the lock's release: a listing moved out
                // of the lock would come after this pause.
                #[cfg(test)]
                test_hooks::staged(session);
                self.write_through(target);
            }
            Durability::GroupCommit { max_records, .. } => {
                // Only the capture that reaches the threshold wakes the
                // flusher: a futex call per capture cost ~10 % of the path.
                let wake = st.staged_count == max_records;
                let first = !std::mem::replace(&mut st.dirty, true);
                // Released before any flush: a round locks every session's
                // state, this one's included.
                drop(guard);
                if first {
                    lock(&self.dirty).logs.push(log);
                }
                if backlog > self.max_staged {
                    // The flusher is behind: the capturing thread helps
                    // (backpressure), so staged memory stays bounded. A
                    // round records its own failure.
                    let _ = self.flush_round();
                } else if wake {
                    self.wake_flusher();
                }
            }
            Durability::OnClose => {}
        }
        Some((seq, leaf))
    }

    /// Under `EveryRecord`, returns once round `target` (the first to take
    /// the dirty list after a delta was staged and its session listed) has
    /// finished: the delta is then durable, or its failure recorded by
    /// whoever ran the round. That is a round this capture runs itself if
    /// the writer is free, else one run by whoever holds it or comes next,
    /// which takes every delta staged while the round before it synced:
    /// concurrent captures share one sync, and a capture whose delta was
    /// written by another's round does not wait for the writer to learn it.
    fn write_through(&self, target: u64) {
        let (done, cv) = self.segments.rounds();
        loop {
            let seen = {
                let r = lock(done);
                if r.drained >= target {
                    return;
                }
                r.released
            };
            if let Some(writer) = self.try_writer() {
                // It records its own failure.
                let _ = self.write_round(writer, &[]);
                continue;
            }
            // Whoever holds the writer counts a release after releasing it
            // ([`WriterHold`]): one since `seen` may have freed it, so look
            // again rather than wait.
            let mut r = lock(done);
            while r.released == seen && r.drained < target {
                r = cv.wait(r).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Has the background flusher (if any) start a round now, or right
    /// after the one it is in.
    fn wake_flusher(&self) {
        let (m, cv) = &self.tick;
        *lock(m) = true;
        cv.notify_one();
    }

    fn record_failure(&self, e: &AuditError) {
        self.note_failure(e, "audit log write failed; will retry");
    }

    /// Counts a failure, logs it with `what`, and keeps it as the last error.
    fn note_failure(&self, e: &AuditError, what: &str) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        let message = with_causes(e);
        tracing::error!(error = %message, "{what}");
        *lock(&self.last_error) = Some(message);
    }

    /// Writes the staged deltas of `logs` as one round of the current
    /// segment, synced before this returns; captures go on staging
    /// meanwhile. On a failure every delta is staged again in front of
    /// anything staged since, before the writer is released, so a retry
    /// writes them in order and nothing is lost, written twice or passed by
    /// a later round (a round whose sync failed may be on disk too: readers
    /// read a retried round once). Returns [`SegmentWriter::highest_used`]
    /// afterwards: no chunk of these sessions is in a later segment.
    ///
    /// Every session listed as dirty is written too, the list taken under
    /// the writer's lock ([`Shared::write_through`] relies on it).
    fn write_logs(&self, logs: &[Arc<SessionLog>]) -> Result<u64, AuditError> {
        self.write_round(self.writer(), logs)
    }

    /// [`Shared::write_logs`] with the writer held; records its failure,
    /// if any, and then counts as finished once the writer is released:
    /// a capture that shared a failed round returns with the failure
    /// already recorded.
    fn write_round(
        &self,
        mut writer: WriterHold<'_>,
        logs: &[Arc<SessionLog>],
    ) -> Result<u64, AuditError> {
        let (dirty, drain) = {
            let mut d = lock(&self.dirty);
            d.drains += 1;
            (std::mem::take(&mut d.logs), d.drains)
        };
        let result = self.write_taken(&mut writer, logs, &dirty);
        if let Err(e) = &result {
            self.record_failure(e);
        }
        writer.finish_round(drain);
        result
    }

    /// The segment writer, held until the hold is dropped.
    fn writer(&self) -> WriterHold<'_> {
        self.segments.hold()
    }

    /// The segment writer if no one holds it.
    fn try_writer(&self) -> Option<WriterHold<'_>> {
        self.segments.try_hold()
    }

    /// The body of a round: takes the staged deltas of `logs` and `dirty`
    /// and writes them (see [`Shared::write_logs`]).
    fn write_taken(
        &self,
        writer: &mut SegmentWriter,
        logs: &[Arc<SessionLog>],
        dirty: &[Arc<SessionLog>],
    ) -> Result<u64, AuditError> {
        // Taken under the writer's lock: another thread's round cannot
        // write a later chunk of one of these sessions before this one.
        let mut taken: Vec<(Arc<SessionLog>, Vec<u8>, usize, u64)> = Vec::new();
        // A session listed twice (the dirty list and a capture's own, or
        // flagged again meanwhile) is taken once: two chunks of it in one
        // round could be staged again out of order after a failure.
        let mut seen = std::collections::HashSet::new();
        for log in logs.iter().chain(dirty) {
            if !seen.insert(Arc::as_ptr(log)) {
                continue;
            }
            let mut st = lock(&log.state);
            st.dirty = false;
            let count = std::mem::take(&mut st.staged_count);
            if count == 0 {
                continue;
            }
            let staged = std::mem::take(&mut st.staged);
            let first_seq = st.tree.len().0 - count as u64;
            taken.push((log.clone(), staged, count, first_seq));
        }
        if taken.is_empty() {
            return Ok(writer.highest_used());
        }
        let chunks: Vec<StagedChunk<'_>> = taken
            .iter()
            .map(|(log, staged, count, first_seq)| StagedChunk {
                session: log.id.as_str(),
                first_seq: *first_seq,
                // Staged bytes are bounded far below 2^32 records.
                count: u32::try_from(*count).unwrap_or(u32::MAX),
                staged,
            })
            .collect();
        // Read under the writer's lock, which every registration of a first
        // segment holds: no session written so far is missing. A session
        // forgotten later only raises the true minimum, so a start record
        // may name an older segment than needed, never a newer one.
        let oldest_live = lock(&self.live_segments)
            .keys()
            .next()
            .copied()
            .unwrap_or(u64::MAX);
        // Where a failed round may be, if it reached the disk at all.
        let floor = writer.next_round_floor();
        let now = self.clock.now();
        let written = contained("a round of deltas", || {
            writer
                .append_round(&chunks, oldest_live, now)
                .map_err(AuditError::from)
        });
        drop(chunks);
        match written {
            Ok(at) => {
                for (log, staged, _, _) in taken {
                    if log.first_segment.load(Ordering::Relaxed) == 0 {
                        log.first_segment.store(at.segment, Ordering::Relaxed);
                        *lock(&self.live_segments).entry(at.segment).or_default() += 1;
                    }
                    self.staged_bytes
                        .fetch_sub(staged.len() as u64, Ordering::Relaxed);
                    self.recycle(staged);
                }
                Ok(writer.highest_used())
            }
            Err(e) => {
                // Staged again before the writer is released: another round
                // (a capture under `EveryRecord`, a seal's round) must not
                // find the session without these deltas, or it would write
                // a later one first, or a commitment before them. In
                // reverse, so that each goes back in front of what it came
                // before.
                for (log, staged, count, _) in taken.into_iter().rev() {
                    // A round whose sync failed may be on disk: its
                    // session's chunks may start there, for recovery and
                    // retention.
                    if log.first_segment.load(Ordering::Relaxed) == 0 {
                        log.first_segment.store(floor, Ordering::Relaxed);
                        *lock(&self.live_segments).entry(floor).or_default() += 1;
                    }
                    let mut st = lock(&log.state);
                    let mut back = staged;
                    back.extend_from_slice(&st.staged);
                    st.staged = back;
                    st.staged_count += count;
                    if !st.dirty {
                        st.dirty = true;
                        drop(st);
                        lock(&self.dirty).logs.push(log);
                    }
                }
                Err(e)
            }
        }
    }

    fn seal(
        &self,
        session: &SessionId,
        trace: ahv_core::TraceId,
        parent: Option<ahv_core::EventId>,
    ) -> Result<SealReceipt, AuditError> {
        let log = self
            .session_log(session)
            .ok_or_else(|| AuditError::AlreadySealed(session.to_string()))?;
        let commitment = {
            let mut st = lock(&log.state);
            if st.sealed {
                return Err(AuditError::AlreadySealed(session.to_string()));
            }
            let c = Commitment {
                session: session.as_str().to_owned(),
                tree_size: st.tree.len().0,
                root: st.tree.root(),
                time_unix_ns: self.wall_ns(),
            };
            st.sealed = true;
            c
        };
        let bytes = commitment.encode();
        let leaf = leaf_hash(&bytes);
        let index = {
            let mut cs = lock(&self.commits.state);
            // Its fingerprint goes into `ever`, and its index into
            // `recent`, when the round that writes its commitment forgets
            // the log; until then the log, sealed above, refuses late
            // events and a second seal itself. Not here: each is a cache
            // miss in a table that grows with every session (0.3-0.5 µs of
            // a seal).
            let index = cs.tree.append_leaf_hash(leaf).0;
            log.commitment.store(index, Ordering::Relaxed);
            // The commitment log's root is computed by the flusher (O(log n)
            // node hashes: ~1-2 µs for 10^5 sessions), not by every seal.
            cs.staged.push(StagedCommit {
                bytes,
                log: log.clone(),
            });
            index
        };
        let state = match self.durability {
            // Staged just now: only a round that takes it can write it.
            Durability::GroupCommit { .. } => SealState::Pending,
            Durability::EveryRecord | Durability::OnClose => {
                self.flush_round()?;
                if lock(&self.commits.state).durable.0 > index {
                    SealState::Durable
                } else {
                    SealState::Pending
                }
            }
        };
        if let Some((bus, _)) = self.bus.get()
            && let Some(bus) = bus.upgrade()
        {
            bus.emit(
                Some(session),
                None,
                trace,
                parent,
                EventPayload::AuditCommitted {
                    tree_size: commitment.tree_size,
                    root: commitment.root.0,
                    index,
                },
            );
        }
        Ok(SealReceipt {
            commitment,
            index,
            state,
        })
    }

    /// One flush round (rounds never overlap): writes every dirty session's
    /// deltas, syncs them, then appends and syncs the staged commitments whose
    /// sessions are fully written — in commitment order, stopping at the first
    /// that must wait — and tells the signer the durable head moved. A
    /// commitment is thus never durable before the deltas it covers, and a
    /// head is only ever signed over durable commitments.
    fn flush_round(&self) -> Result<(), AuditError> {
        let _round = lock(&self.round);
        // The dirty list is taken by the round itself, under the writer's
        // lock (a capture under `EveryRecord` counts on that).
        let mut logs = Vec::new();
        // The staged commitments are always the tail of the commitment log, so
        // the head once they are all written is the current one.
        let (commits, head) = {
            let mut cs = lock(&self.commits.state);
            // The next round's list starts at this one's size: regrowing it
            // from empty made seals reallocate it (about 2 % of the audited
            // pipeline in a profile).
            let next = Vec::with_capacity(cs.staged.len());
            let staged = std::mem::replace(&mut cs.staged, next);
            let head = (!staged.is_empty()).then(|| (cs.tree.len().0, cs.tree.root()));
            (staged, head)
        };
        // `write_logs` takes a session listed twice once (a search of the
        // list per commitment here was quadratic in a round's sessions).
        logs.extend(commits.iter().map(|c| c.log.clone()));
        let mut first_error = None;
        let highest = match self.write_logs(&logs) {
            Ok(h) => h,
            Err(e) => {
                // Nothing written this round is known durable: keep every
                // commitment for the next round. (The round recorded the
                // failure.)
                self.restage_commits(commits);
                return Err(e);
            }
        };
        let ready = commits.len();
        let result = if ready == 0 {
            Ok(())
        } else {
            let mut io = lock(&self.commits.io);
            let now = self.clock.now();
            let written = contained("commitments", || {
                commits[..ready]
                    .iter()
                    .try_for_each(|c| io.append(&c.bytes, now).map(drop))
                    .and_then(|()| io.flush())
                    .map_err(AuditError::from)
            });
            if written.is_err() {
                // They are staged again below and appended by a later
                // round: left pending here too, they would be written
                // twice. (After a failed sync the writer refuses all.)
                io.discard_pending();
            }
            written
        };
        match result {
            Ok(()) => {
                let written = commits;
                if let Some(head) = head {
                    // Recorded before the sessions are forgotten (which
                    // clears their first segment).
                    let first = head.0 - written.len() as u64;
                    let mut spans = lock(&self.spans);
                    for (i, c) in written.iter().enumerate() {
                        let span = match c.log.first_segment.load(Ordering::Relaxed) {
                            _ if !c.log.spanned => Span::Unknown,
                            0 => Span::Nowhere,
                            lo => Span::Segments { lo, hi: highest },
                        };
                        spans.record(first + i as u64, span);
                    }
                    drop(spans);
                    lock(&self.commits.state).durable = head;
                    // Before the logs leave `sessions` (below): a sealed
                    // session is always in one or the other.
                    let mut sealed = lock(&self.commits.sealed);
                    for (i, c) in written.iter().enumerate() {
                        let _ = sealed.ever.insert_key(c.log.sealed_key);
                        sealed.recent.insert(c.log.sealed_key, first + i as u64);
                    }
                    drop(sealed);
                    // Once per round, waiters or not: cheap beside the sync.
                    self.commits.durable_moved.notify_all();
                }
                if ready > 0
                    && let Some(s) = self.signer.get()
                {
                    s.notify();
                }
                for c in &written {
                    self.forget_if_done(&c.log);
                }
            }
            Err(e) => {
                self.record_failure(&e);
                self.restage_commits(commits);
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_none() {
            self.last_round_ms
                .store(self.wall.now_unix_ms(), Ordering::Relaxed);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Puts commitments back in front of any staged since, keeping order.
    fn restage_commits(&self, mut back: Vec<StagedCommit>) {
        if back.is_empty() {
            return;
        }
        let mut cs = lock(&self.commits.state);
        back.append(&mut cs.staged);
        cs.staged = back;
    }

    /// Drops a sealed, fully written session from memory once its
    /// commitment is durable: it no longer holds recovery to its first
    /// segment.
    fn forget_if_done(&self, log: &Arc<SessionLog>) {
        let done = {
            let st = lock(&log.state);
            st.sealed && st.staged_count == 0
        };
        if done {
            self.sessions
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&log.id);
            // Once: a second forget of the same log finds 0.
            let first = log.first_segment.swap(0, Ordering::Relaxed);
            if first != 0 {
                let mut live = lock(&self.live_segments);
                if let Some(n) = live.get_mut(&first) {
                    *n -= 1;
                    if *n == 0 {
                        live.remove(&first);
                    }
                }
            }
        }
    }

    /// The commitment index of a sealed session: remembered if recent,
    /// else found by scanning the commitment log.
    fn commitment_index(&self, session: &str) -> Result<Option<u64>, AuditError> {
        // A session whose commitment is not written yet is still in memory.
        // Read before `recent`: a round puts it there before forgetting it.
        if let Some(log) = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
        {
            let index = log.commitment.load(Ordering::Relaxed);
            if index != NOT_SEALED {
                return Ok(Some(index));
            }
        }
        // Hashed before the lock, which every round that writes commitments takes.
        let key = SealedSet::key(session);
        if let Some(i) = lock(&self.commits.sealed).recent.get(key) {
            return Ok(Some(i));
        }
        let path = commitments_path(&self.dir);
        let (mut index, mut found, mut bad) = (0u64, None, None);
        scan_log(&path, LogKind::COMMITMENTS, 0, |r| {
            match Commitment::decode(&r.body) {
                Ok(c) if c.session == session => found = Some(index),
                Ok(_) => {}
                Err(source) => {
                    bad = Some(AuditError::BadRecord {
                        path: path.clone(),
                        offset: r.offset,
                        source,
                    });
                }
            }
            index += 1;
            found.is_none() && bad.is_none()
        })?;
        bad.map_or(Ok(found), Err)
    }

    /// Prunes a sealed session whose log and commitment are written: its
    /// own file (format 1) and its records in every segment.
    fn prune_written(&self, session: &str) -> Result<u64, AuditError> {
        let Some(index) = self.commitment_index(session)? else {
            return Err(AuditError::NotSealed(session.to_string()));
        };
        // Rewriting a log whose records or commitment are still staged (a
        // failed write) would race the retry.
        if index >= lock(&self.commits.state).durable.0 {
            return Err(AuditError::NotDurable(session.to_string()));
        }
        let path = session_log_path(&self.dir, session);
        // Serialised with retention passes: two rewrites of one log would
        // share its temporary file.
        let _pruning = lock(&self.retention);
        let in_file = path.exists();
        let mut n = if in_file { prune_log(&path)? } else { 0 };
        // The segments its records can be in, if this process wrote them.
        let (from, to) = lock(&self.spans)
            .query(index, index + 1)
            .segments_from(1)
            .unwrap_or((1, 0));
        let done = self.prune_segments(from, to, |s| s == session)?;
        n += done.pruned.get(session).copied().unwrap_or(0);
        if let Some((_, e)) = done.skipped.into_iter().next() {
            // It may have records there too.
            return Err(e);
        }
        if !in_file && !done.found.contains(session) {
            return Err(AuditError::UnknownSession(session.to_string()));
        }
        Ok(n)
    }

    /// Prunes the records of the sessions `prune` selects in every segment
    /// numbered `from..=to`. The open segment is closed first if it holds
    /// any of them (the writer then starts a new one), so no segment is
    /// rewritten while it is appended to. Returns how many records of each
    /// session were pruned, which selected sessions were seen at all, and
    /// the lowest segment from `from` on that is not pruned whole, as far
    /// as this call saw (past `to` if all it read were).
    fn prune_segments(
        &self,
        from: u64,
        to: u64,
        prune: impl Fn(&str) -> bool,
    ) -> Result<SegmentsPruned, AuditError> {
        let dir = segments_dir(&self.dir);
        // The open segment is read without holding the writer (rounds go on
        // meanwhile): the records to prune are in what was written before,
        // since their sessions' commitments are durable.
        let open = self
            .writer()
            .current_segment()
            .filter(|n| (from..=to).contains(n));
        if let Some(open) = open {
            // One it cannot make sense of is closed too (and skipped below).
            let holds = match read_segment(open, &segment_path(&dir, open)) {
                Ok(c) => c.chunks.iter().any(|c| prune(&c.session)),
                Err(e) if is_io(&e) => return Err(e.into()),
                Err(_) => true,
            };
            let mut writer = self.writer();
            if holds && writer.current_segment() == Some(open) {
                writer.close_current();
            }
        }
        let (list, open) = {
            let writer = self.writer();
            (list_segments(&dir)?, writer.current_segment())
        };
        let mut pruned = std::collections::BTreeMap::new();
        let mut found = std::collections::HashSet::new();
        let mut skipped = Vec::new();
        let mut lowest = None;
        let past_all = list
            .last()
            .map_or(from, |(n, _)| n.saturating_add(1).max(from))
            .min(to.saturating_add(1));
        for (number, path) in list {
            if number < from || number > to {
                continue;
            }
            if Some(number) == open {
                // Holds none of them; whatever it holds is not pruned yet.
                lowest.get_or_insert(number);
                continue;
            }
            let done = match prune_segment(number, &path, |s| {
                let selected = prune(s);
                if selected {
                    found.insert(s.to_string());
                }
                selected
            }) {
                Ok(d) => d,
                Err(e) if is_io(&e) => return Err(e.into()),
                Err(e) => {
                    // Its contents, not the disk: the others are pruned all
                    // the same, and later passes read it again.
                    lowest.get_or_insert(number);
                    skipped.push((path, e.into()));
                    continue;
                }
            };
            for (s, k) in done.sessions {
                *pruned.entry(s).or_insert(0) += k;
            }
            if !done.fully_pruned {
                lowest.get_or_insert(number);
            }
        }
        Ok(SegmentsPruned {
            pruned,
            found,
            next: lowest.unwrap_or(past_all),
            skipped,
        })
    }

    /// One retention pass: walks the commitment log from where the last pass
    /// stopped, pruning each session sealed before the cutoff, and stops at
    /// the first one sealed after it (commitments are appended in sealing
    /// order, so their times only grow — unless the wall clock is set back,
    /// which only delays pruning). Sessions whose pruning failed are tried
    /// again by the next pass.
    fn apply_retention(&self, keep: Duration) -> Result<u64, AuditError> {
        let cutoff = self
            .wall_ns()
            .saturating_sub(u64::try_from(keep.as_nanos()).unwrap_or(u64::MAX));
        // Everything sealed so far is written first (one round for all).
        self.flush_all()?;
        let durable = lock(&self.commits.state).durable.0;
        let mut mark = lock(&self.retention);
        let (mut n, mut first_error) = (0, None);
        // The sessions of this pass: their own files (format 1) are pruned
        // one by one as they are found, their records in the segments all
        // at once after the walk.
        let mut targets: Vec<(String, MarkPos)> = Vec::new();
        let mut in_files = std::collections::HashSet::new();
        // The commitments this pass walks start here; sessions tried again
        // have no span to go by.
        let walk_from = mark.next.index;
        let retried = !mark.retry.is_empty();
        let mut prune = |session: &str, n: &mut u64| -> Result<(), AuditError> {
            let path = session_log_path(&self.dir, session);
            // A log removed by hand leaves nothing to prune.
            if path.exists() && prune_log(&path)? > 0 {
                *n += 1;
                in_files.insert(session.to_string());
            }
            Ok(())
        };
        for (session, at) in std::mem::take(&mut mark.retry) {
            if let Err(e) = prune(&session, &mut n) {
                mark.retry.push((session.clone(), at));
                first_error.get_or_insert(e);
            }
            targets.push((session, at));
        }
        let path = commitments_path(&self.dir);
        let mut next = mark.next;
        let mut retry = Vec::new();
        let scanned = scan_log(&path, LogKind::COMMITMENTS, next.offset, |r| {
            if next.index >= durable {
                return false;
            }
            let c = match Commitment::decode(&r.body) {
                Ok(c) => c,
                Err(source) => {
                    first_error.get_or_insert(AuditError::BadRecord {
                        path: path.clone(),
                        offset: r.offset,
                        source,
                    });
                    return false;
                }
            };
            if c.time_unix_ns >= cutoff {
                return false;
            }
            if let Err(e) = prune(&c.session, &mut n) {
                retry.push((c.session.clone(), next));
                first_error.get_or_insert(e);
            }
            targets.push((c.session, next));
            next = MarkPos {
                index: next.index + 1,
                offset: r.end(),
            };
            true
        });
        mark.next = next;
        mark.retry.extend(retry);
        if let Err(e) = scanned {
            first_error.get_or_insert(e.into());
        }
        // Only the segments this pass's sessions were written to are read
        // (all from the lowest not pruned whole, when that is not known).
        let span = if retried {
            Span::Unknown
        } else {
            lock(&self.spans).query(walk_from, next.index)
        };
        if let Some((from, to)) = span.segments_from(mark.segments_from)
            && !targets.is_empty()
        {
            let set: std::collections::HashSet<&str> =
                targets.iter().map(|(s, _)| s.as_str()).collect();
            match self.prune_segments(from, to, |s| set.contains(s)) {
                Ok(done) => {
                    n += done
                        .pruned
                        .keys()
                        .filter(|s| !in_files.contains(*s))
                        .count() as u64;
                    // Segments below `from` were not read: the lowest not
                    // pruned whole is known only when none was skipped.
                    if from == mark.segments_from {
                        mark.segments_from = done.next;
                    }
                    // A segment it cannot read is reported by every pass
                    // (each reads it again) until an operator repairs it;
                    // this pass's sessions are tried again, as they may
                    // have records there.
                    if let Some((_, e)) = done.skipped.into_iter().next() {
                        mark.retry_all(std::mem::take(&mut targets));
                        first_error.get_or_insert(e);
                    }
                }
                Err(e) => {
                    // Tried again whole by the next pass (a pruned record is
                    // left as it is).
                    mark.retry_all(targets);
                    first_error.get_or_insert(e);
                }
            }
        }
        // In commitment order: the first is where a new process resumes.
        mark.retry.sort_by_key(|(_, at)| at.index);
        // Sessions tried again go by no span.
        lock(&self.spans).forget_below(mark.next.index);
        let resume = mark.resume();
        if resume != mark.saved || mark.segments_from != mark.saved_segments_from {
            // Only time is lost if this fails: the next process walks from
            // the last mark that was saved.
            match rewrite_log(
                retention_mark_path(&self.dir),
                LogKind::RETENTION_MARK,
                [resume.encode(mark.segments_from)],
            ) {
                Ok(_) => {
                    mark.saved = resume;
                    mark.saved_segments_from = mark.segments_from;
                }
                Err(e) => {
                    first_error.get_or_insert(e.into());
                }
            }
        }
        first_error.map_or(Ok(n), Err)
    }

    fn flush_all(&self) -> Result<(), AuditError> {
        // Under `OnClose` sessions are written when sealed; an explicit flush
        // (shutdown) writes the open ones too.
        if matches!(self.durability, Durability::OnClose) {
            let all: Vec<_> = self
                .sessions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            lock(&self.dirty).logs.extend(all);
        }
        self.flush_round()
    }

    /// The background thread: under group commit writes every `flush_every`
    /// (or when woken); applies `retention` when due.
    fn background(&self, flush_every: Option<Duration>, retention: Option<Retention>) {
        let (m, cv) = &self.tick;
        let every = flush_every
            .into_iter()
            .chain(retention.map(|r| r.check_every))
            .min()
            .unwrap_or(Duration::from_secs(1));
        let mut timer = RetentionTimer::default();
        loop {
            {
                // Until woken or `every` has passed: a spurious wake-up of
                // the condition variable starts no round.
                let (mut urgent, _) = cv
                    .wait_timeout_while(lock(m), every, |urgent| !*urgent)
                    .unwrap_or_else(|p| p.into_inner());
                *urgent = false;
            }
            // Errors are recorded and retried on the next tick.
            if flush_every.is_some() {
                let _ = self.flush_all();
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if let Some(r) = retention
                && timer.due(self.clock.now(), r.check_every)
                && let Err(e) = self.apply_retention(r.keep)
            {
                self.record_failure(&e);
            }
        }
    }

    /// Seals the sessions an earlier process left without a commitment:
    /// those in its own files (format 1, `sessions/<id>.log`) and those in
    /// the segments from [`recovery_start`] on. Each is sealed over the
    /// complete records it has; one whose records are damaged or do not fit
    /// together is reported ([`RecoveryReport::damaged`]) and left as it
    /// is.
    fn seal_orphans(
        &self,
        sessions_dir: &Path,
        report: &mut RecoveryReport,
    ) -> Result<(), AuditError> {
        let entries = match std::fs::read_dir(sessions_dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(AuditError::Dir {
                    op: "list",
                    path: sessions_dir.to_path_buf(),
                    source,
                });
            }
        };
        let mut names: Vec<String> = entries
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log").map(str::to_string)
            })
            .collect();
        names.sort();
        for name in names {
            let Ok(id) = SessionId::new(name.clone()) else {
                continue;
            };
            let sealed_key = SealedSet::key(id.as_str());
            if lock(&self.commits.sealed).ever.contains_key(sealed_key) {
                continue;
            }
            let path = session_log_path(&self.dir, &name);
            // One damaged log must not keep the hypervisor from starting:
            // it is reported and left as it is (see `RecoveryReport::damaged`).
            let (writer, rec) = match RecordWriter::open_append(
                &path,
                LogKind::SESSION_DELTAS,
                Durability::OnClose,
            ) {
                Ok(o) => o,
                Err(e) => {
                    self.refuse(sealed_key);
                    report.damaged.push((path, e.into()));
                    continue;
                }
            };
            // Nothing more is written to it: the session is sealed now.
            writer.close()?;
            if let Some(t) = rec.tail {
                report.torn.push((path.clone(), t));
            }
            let leaves = match rec
                .records
                .iter()
                .map(|r| record_leaf(&path, r))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(l) => l,
                Err(e) => {
                    self.refuse(sealed_key);
                    report.damaged.push((path, e));
                    continue;
                }
            };
            let n = leaves.len() as u64;
            self.seal_orphan(id, sealed_key, leaves, 0)?;
            report.sealed_on_recovery.push((name, n));
        }
        self.seal_segment_orphans(report)?;
        self.flush_round()
    }

    /// The sessions without a commitment in the segments recovery reads.
    fn seal_segment_orphans(&self, report: &mut RecoveryReport) -> Result<(), AuditError> {
        let dir = segments_dir(&self.dir);
        let start = recovery_start(&dir)?;
        let mut orphans = SessionAssembler::default();
        // Sessions that had records in a damaged round (all of them, when a
        // damaged footer hides whose they were): sealing them over what is
        // left would commit to a log cut short.
        let mut suspects = std::collections::HashMap::new();
        // Damage whose victims are unknown, by segment, in increasing order.
        // It can only hide records of sessions live in that segment: those
        // whose first chunk is there or earlier (a session whose first
        // records it hid has a gap before its first kept one, a problem of
        // its own). Sessions a later process began, in later segments, are
        // not blamed for it.
        let mut unnamed: Vec<(u64, PathBuf)> = Vec::new();
        let mut note_unnamed = |number: u64, path: &Path| {
            if unnamed.last().is_none_or(|(n, _)| *n != number) {
                unnamed.push((number, path.to_path_buf()));
            }
        };
        let list = list_segments(&dir)?;
        let present: std::collections::HashSet<u64> = list.iter().map(|(n, _)| *n).collect();
        // The last segment a round was written in: a process that stopped
        // after creating a segment, before its first round, left one too
        // short to hold any after it, and what a crash left at the end of
        // this one (or of those) is still a crash's.
        let mut last = None;
        for (number, path) in list.iter().rev() {
            if !crate::segments::holds_no_round(path)? {
                last = Some(*number);
                break;
            }
        }
        for (number, path) in list {
            if number < start {
                continue;
            }
            let contents = match read_segment(number, &path) {
                Ok(c) => c,
                Err(SegmentError::Record(e @ RecordError::Io { .. })) => return Err(e.into()),
                Err(e) => {
                    // Whatever it held is unknown.
                    note_unnamed(number, &path);
                    self.keep_live(number);
                    report.damaged.push((path, e.into()));
                    continue;
                }
            };
            // A segment named as created before this one and gone holds
            // records nobody can read: damage whose victims are unknown.
            // (One before `start` held no unsealed session's chunks.)
            if let Some(previous) = contents.previous
                && previous >= start
                && !present.contains(&previous)
            {
                let missing = segment_path(&dir, previous);
                note_unnamed(previous, &missing);
                self.keep_live(previous);
                report.damaged.push((
                    missing.clone(),
                    AuditError::MissingSegment {
                        path: missing,
                        named_by: path.clone(),
                    },
                ));
            }
            // What only a crash explains is normal at the end of the last
            // segment (and of the round-less ones after it); anywhere else,
            // and damage past the last round or a missing start record, is
            // damage whose victims are unknown. (A segment that holds
            // nothing, `unwritten`, is a crash's wherever it is: a process
            // that crashed creating it is followed by others.)
            let has_rounds = !contents.chunks.is_empty() || !contents.damaged.is_empty();
            let before_last = last.is_some_and(|l| number < l);
            let unexplained = contents
                .corrupt
                .iter()
                .any(|c| c.offset >= contents.rounds_end)
                || (before_last && (contents.tail.is_some() || !contents.uncommitted.is_empty()))
                || (contents.start.is_none() && has_rounds);
            if unexplained {
                note_unnamed(number, &path);
            }
            if let Some(t) = &contents.tail {
                report.torn.push((path.clone(), t.clone()));
            }
            if let Some(first) = contents.uncommitted.first() {
                report
                    .uncommitted
                    .push((path.clone(), first.offset, contents.uncommitted.len()));
            }
            for d in &contents.damaged {
                report.damaged.push((
                    path.clone(),
                    AuditError::DamagedRound {
                        path: path.clone(),
                        offset: d.offset,
                        reason: d.reason.clone(),
                    },
                ));
                for s in &d.sessions {
                    suspects
                        .entry(s.clone())
                        .or_insert_with(|| (number, path.clone()));
                }
                if !d.named {
                    note_unnamed(number, &path);
                }
            }
            for chunk in &contents.chunks {
                // Sealed by the commitment log, or just now from its own
                // file (format 1).
                if !self.is_sealed(&chunk.session) {
                    orphans.add_chunk(number, chunk);
                }
            }
        }
        // Pinning here is right only because recovery writes no segment
        // before this loop ends (an orphan's seal stages no deltas): a
        // segment started earlier would name an oldest live segment that
        // misses the later pins.
        for (name, s) in orphans.into_sessions() {
            // Where its chunks start, kept or not (recovery reads in
            // segment order).
            let first = s.first_segment;
            let bad_chunks = |session: String, detail: String| AuditError::BadChunks {
                session,
                dir: dir.clone(),
                detail,
            };
            let Ok(id) = SessionId::new(name.clone()) else {
                let e = bad_chunks(
                    name.chars().take(100).collect(),
                    "a footer names it, and it is no session id".into(),
                );
                self.leave_orphan(report, None, first, dir.clone(), e);
                continue;
            };
            let key = Some(SealedSet::key(id.as_str()));
            let lost_in = suspects.get(&name).or_else(|| {
                let from = first.unwrap_or(0);
                unnamed.iter().find(|(n, _)| *n >= from)
            });
            if let Some((number, segment)) = lost_in {
                let detail = format!(
                    "a damaged round of {} held (or may have held) some of its records",
                    segment.display()
                );
                let live = Some(first.map_or(*number, |f| f.min(*number)));
                let e = bad_chunks(name, detail);
                self.leave_orphan(report, key, live, segment.clone(), e);
                continue;
            }
            if !s.problems.is_empty() {
                let e = bad_chunks(name, format!("{:?}", s.problems));
                self.leave_orphan(report, key, first, dir.clone(), e);
                continue;
            }
            let leaves = match s
                .records
                .iter()
                .map(|l| record_leaf(&segment_path(&dir, l.segment), &l.record))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(l) => l,
                Err(e) => {
                    self.leave_orphan(report, key, first, dir.clone(), e);
                    continue;
                }
            };
            let n = leaves.len() as u64;
            let first = s.records.first().map_or(0, |l| l.segment);
            let sealed_key = SealedSet::key(id.as_str());
            self.seal_orphan(id, sealed_key, leaves, first)?;
            report.sealed_on_recovery.push((name, n));
        }
        Ok(())
    }

    /// Keeps `segment` live for as long as this process runs (see
    /// `live_segments`): every segment it starts names it, so every later
    /// reopen reads it.
    fn keep_live(&self, segment: u64) {
        *lock(&self.live_segments).entry(segment).or_default() += 1;
    }

    /// Leaves a session recovery will not seal as evidence: refused (by
    /// `key`, when its name is a session id), the segment `live` (where its
    /// chunks start) kept live, and `e`, found at `at`, reported.
    fn leave_orphan(
        &self,
        report: &mut RecoveryReport,
        key: Option<u128>,
        live: Option<u64>,
        at: PathBuf,
        e: AuditError,
    ) {
        if let Some(key) = key {
            self.refuse(key);
        }
        if let Some(segment) = live {
            self.keep_live(segment);
        }
        report.damaged.push((at, e));
    }

    /// Whether `session` is sealed: its log in memory is, or its log has
    /// left memory as sealed ([`Sealed::ever`]).
    fn is_sealed(&self, session: &str) -> bool {
        let in_memory = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .map(|log| lock(&log.state).sealed);
        in_memory.unwrap_or_else(|| {
            lock(&self.commits.sealed)
                .ever
                .contains_key(SealedSet::key(session))
        })
    }

    /// Records nothing more for a session whose log recovery left as
    /// evidence (damaged): its later events are late, and it cannot be
    /// sealed, as if it were.
    fn refuse(&self, sealed_key: u128) {
        let _ = lock(&self.commits.sealed).ever.insert_key(sealed_key);
    }

    /// Seals an orphan over `leaves`; `first_segment` (0 for none) holds
    /// recovery to that segment until the commitment is durable.
    fn seal_orphan(
        &self,
        id: SessionId,
        sealed_key: u128,
        leaves: Vec<Hash>,
        first_segment: u64,
    ) -> Result<(), AuditError> {
        let log = Arc::new(SessionLog {
            id: id.clone(),
            sealed_key,
            state: Mutex::new(SessionState {
                tree: CompactTree::from_leaf_hashes(leaves),
                ..SessionState::default()
            }),
            first_segment: AtomicU64::new(first_segment),
            spanned: false,
            commitment: AtomicU64::new(NOT_SEALED),
        });
        {
            // The order `session_log` takes them in.
            let mut map = self.sessions.write().unwrap_or_else(|p| p.into_inner());
            if map.contains_key(&id) || lock(&self.commits.sealed).ever.contains_key(sealed_key) {
                return Err(AuditError::AlreadySealed(id.to_string()));
            }
            map.insert(id.clone(), log);
        }
        // Released by the round that writes its commitment
        // (`forget_if_done`).
        if first_segment != 0 {
            *lock(&self.live_segments).entry(first_segment).or_default() += 1;
        }
        self.seal(&id, ahv_core::TraceId(0), None).map(drop)
    }
}

/// What [`Shared::prune_segments`] did.
struct SegmentsPruned {
    /// Records pruned, per session.
    pruned: std::collections::BTreeMap<String, u64>,
    /// The selected sessions seen at all.
    found: std::collections::HashSet<String>,
    /// The lowest segment not pruned whole.
    next: u64,
    /// Segments that could not be read or pruned for what they hold (not
    /// an I/O failure), with why.
    skipped: Vec<(PathBuf, AuditError)>,
}

/// Whether a segment error is the disk's (an I/O failure), not the
/// contents'.
fn is_io(e: &SegmentError) -> bool {
    matches!(
        e,
        SegmentError::Record(RecordError::Io { .. }) | SegmentError::Dir { .. }
    )
}

/// Replaces the bodies of a sealed, written session log by their leaf
/// hashes; returns how many it replaced (a log already pruned is left as it
/// is).
fn prune_log(path: &Path) -> Result<u64, AuditError> {
    let recovered = read_log(path, LogKind::SESSION_DELTAS)?;
    let mut pruned = 0;
    let mut bodies = Vec::with_capacity(recovered.records.len());
    for (seq, r) in recovered.records.iter().enumerate() {
        if r.body.first() == Some(&PRUNED_TAG) {
            bodies.push(r.body.clone());
        } else {
            pruned += 1;
            bodies.push(encode_pruned(seq as u64, &leaf_hash(&r.body)).to_vec());
        }
    }
    if pruned > 0 {
        rewrite_log(path, LogKind::SESSION_DELTAS, bodies)?;
    }
    Ok(pruned)
}

/// The leaf hash of a delta-log record: a delta's is computed, a pruned
/// record carries it.
fn record_leaf(path: &Path, r: &crate::records::Record) -> Result<Hash, AuditError> {
    if r.body.first() == Some(&PRUNED_TAG) {
        decode_pruned(&r.body)
            .map(|(_, h)| h)
            .map_err(|source| AuditError::BadRecord {
                path: path.to_path_buf(),
                offset: r.offset,
                source,
            })
    } else {
        Delta::decode(&r.body).map_err(|source| AuditError::BadDelta {
            path: path.to_path_buf(),
            offset: r.offset,
            source,
        })?;
        Ok(leaf_hash(&r.body))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::signing::FakeWallClock;
    use ahv_core::{AgentId, FakeClock, TraceId};

    /// An auditor under `durability` on a bus, both on fake clocks.
    pub(crate) fn open(dir: &Path, durability: Durability) -> (Auditor, Arc<EventBus>) {
        open_with(
            dir,
            AuditConfig {
                durability,
                ..AuditConfig::default()
            },
        )
    }

    /// An auditor configured by `config` on a bus, both on fake clocks
    /// (the wall clock at 1 700 000 000 000 ms).
    pub(crate) fn open_with(dir: &Path, config: AuditConfig) -> (Auditor, Arc<EventBus>) {
        let clock = Arc::new(FakeClock::new());
        let (auditor, _) = Auditor::open(
            dir,
            config,
            clock.clone(),
            Arc::new(FakeWallClock::new(1_700_000_000_000)),
        )
        .unwrap();
        let bus = Arc::new(EventBus::new(1024, clock));
        auditor.attach(&bus);
        (auditor, bus)
    }

    /// A write of state key `k` at `version`.
    fn state_write(version: u64) -> EventPayload {
        EventPayload::StateWrite {
            key: "k".into(),
            version,
        }
    }

    /// A session with `n` state writes, sealed.
    fn sealed(auditor: &Auditor, bus: &EventBus, name: &str, n: u64) -> SealReceipt {
        let s = SessionId::new(name).unwrap();
        let agent = AgentId::new("did:ex:writer").unwrap();
        for version in 1..=n {
            bus.emit(
                Some(&s),
                Some(&agent),
                TraceId(1),
                None,
                state_write(version),
            );
        }
        auditor.seal(&s).unwrap()
    }

    /// The commitments on disk now, in log order (read from the file, not
    /// from the auditor).
    fn on_disk(dir: &Path) -> Vec<Commitment> {
        read_log(commitments_path(dir), LogKind::COMMITMENTS)
            .unwrap()
            .records
            .iter()
            .map(|r| Commitment::decode(&r.body).unwrap())
            .collect()
    }

    /// A group commit whose flusher never comes round during a test.
    const NEVER: Durability = Durability::GroupCommit {
        max_records: usize::MAX,
        max_delay: Duration::from_secs(3600),
    };

    /// An auditor writing every record at once, on its own fake clock
    /// `own`, with a fake wall clock at 1 700 000 000 000 ms, attached to a
    /// bus timed by `bus_clock`.
    fn timed_auditor(
        dir: &Path,
        own: Arc<FakeClock>,
        bus_clock: Arc<FakeClock>,
    ) -> (Auditor, Arc<EventBus>, FakeWallClock) {
        let wall = FakeWallClock::new(1_700_000_000_000);
        let config = AuditConfig {
            durability: Durability::EveryRecord,
            ..AuditConfig::default()
        };
        let (auditor, _) = Auditor::open(dir, config, own, Arc::new(wall.clone())).unwrap();
        let bus = Arc::new(EventBus::new(64, bus_clock));
        auditor.attach(&bus);
        (auditor, bus, wall)
    }

    /// The times of `session`'s deltas on disk, in order.
    fn delta_times(dir: &Path, session: &str) -> Vec<u64> {
        read_session_log(dir, session)
            .unwrap()
            .iter()
            .map(|r| Delta::decode(&r.body).unwrap().time_unix_ns)
            .collect()
    }

    /// A state write in `session` at `time`, for handing to
    /// [`Auditor::capture`] directly (not through a bus).
    fn handed_over(session: &SessionId, time: Duration, v: u64) -> Event {
        Event {
            id: ahv_core::EventId(99),
            time,
            session: Some(session.clone()),
            agent: None,
            trace: TraceId(2),
            parent: None,
            payload: state_write(v),
        }
    }

    const MS: u64 = 1_000_000;
    const BASE: u64 = 1_700_000_000_000 * MS;

    #[test]
    fn a_delta_is_timed_by_its_event_and_follows_a_set_wall_clock_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new());
        let (_auditor, bus, wall) = timed_auditor(dir.path(), clock.clone(), clock.clone());
        let s = SessionId::new("s-timed").unwrap();
        let write = |v| bus.emit(Some(&s), None, TraceId(1), None, state_write(v));
        write(1);
        // The event clock moves: the delta's time moves with it.
        clock.advance(Duration::from_millis(250));
        write(2);
        // The wall clock is set an hour ahead: followed once a second of
        // event time has passed, not before.
        wall.set(1_700_000_000_000 + 3_600_000);
        clock.advance(Duration::from_millis(250));
        write(3);
        clock.advance(Duration::from_millis(600));
        write(4);
        let times = delta_times(dir.path(), "s-timed");
        assert_eq!(
            times,
            [
                BASE,
                BASE + 250 * MS,
                BASE + 500 * MS,
                // Read again at 1.1 s: the event happened as the wall clock
                // was read.
                BASE + 3_600_000 * MS,
            ],
            "{times:?}"
        );
    }

    #[test]
    fn deltas_are_timed_on_the_attached_buss_clock_and_never_wrap_below_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        // The bus's clock is not the auditor's: five seconds ahead of it.
        let bus_clock = Arc::new(FakeClock::new());
        bus_clock.advance(Duration::from_secs(5));
        let (auditor, bus, wall) =
            timed_auditor(dir.path(), Arc::new(FakeClock::new()), bus_clock.clone());
        let s = SessionId::new("s-own-clock").unwrap();
        let write = |v| bus.emit(Some(&s), None, TraceId(1), None, state_write(v));
        write(1);
        bus_clock.advance(Duration::from_millis(20));
        write(2);
        // An event handed over directly, timed long before the offset was
        // read, on a wall clock just after the epoch: clamped to the epoch,
        // not wrapped round to the far future.
        wall.set(1);
        bus_clock.advance(Duration::from_secs(2));
        write(3);
        auditor
            .capture(&handed_over(&s, Duration::ZERO, 4))
            .unwrap();
        let times = delta_times(dir.path(), "s-own-clock");
        assert_eq!(times, [BASE, BASE + 20 * MS, MS, 0], "{times:?}");
    }

    #[test]
    fn an_event_timed_ahead_of_the_clock_does_not_hold_the_wall_offset() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new());
        let (auditor, bus, wall) = timed_auditor(dir.path(), clock.clone(), clock.clone());
        let s = SessionId::new("s-ahead").unwrap();
        let write = |v| bus.emit(Some(&s), None, TraceId(1), None, state_write(v));
        write(1);
        // Handed over directly, timed 10 s ahead of the clock.
        auditor
            .capture(&handed_over(&s, Duration::from_secs(10), 2))
            .unwrap();
        // A second of the clock later the set wall clock is followed, as if
        // that event had not been: the offset is read again on the clock's
        // schedule, not the event's.
        wall.set(1_700_000_000_000 + 3_600_000);
        clock.advance(Duration::from_millis(1100));
        write(3);
        let times = delta_times(dir.path(), "s-ahead");
        assert_eq!(
            times,
            [BASE, BASE + 10_000 * MS, BASE + 3_600_000 * MS],
            "{times:?}"
        );
    }

    #[test]
    fn an_excluded_session_is_not_captured_even_after_it_had_a_log_until_included() {
        let tmp = tempfile::tempdir().unwrap();
        let (auditor, bus) = open(&tmp.path().join("audit"), NEVER);
        let s = SessionId::new("s-excluded").unwrap();
        let write = |v| bus.emit(Some(&s), None, TraceId(1), None, state_write(v));
        auditor.exclude(&s);
        write(1);
        write(2);
        let stats = auditor.stats();
        assert_eq!((stats.captured, stats.late), (0, 0), "{stats:?}");
        auditor.include(&s);
        write(3);
        assert_eq!(auditor.stats().captured, 1);
        // Excluded again while it has a log: still nothing is captured.
        auditor.exclude(&s);
        write(4);
        let stats = auditor.stats();
        assert_eq!((stats.captured, stats.late), (1, 0), "{stats:?}");
    }

    #[test]
    fn a_pending_receipt_becomes_durable_once_the_group_commit_holding_it_is_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(
            &dir,
            Durability::GroupCommit {
                max_records: 64,
                max_delay: Duration::from_millis(10),
            },
        );
        let receipts: Vec<SealReceipt> = (0..3)
            .map(|i| sealed(&auditor, &bus, &format!("s-{i}"), i + 1))
            .collect();
        for r in &receipts {
            assert_eq!(r.state, SealState::Pending, "{r:?}");
            assert!(!r.is_durable());
        }
        for r in &receipts {
            let durable = auditor.wait_durable(r, Duration::from_secs(60)).unwrap();
            assert!(durable.is_durable());
            assert_eq!(
                (&durable.commitment, durable.index),
                (&r.commitment, r.index)
            );
            assert!(auditor.is_durable(r));
            // What the receipt names is in the file, at its index.
            let disk = on_disk(&dir);
            assert_eq!(disk.get(r.index as usize), Some(&r.commitment), "{disk:?}");
        }
    }

    /// Under a group commit whose flusher would not come round for an hour,
    /// a wait starts the round that writes the receipt: it returns long
    /// before the delay (here, the wait's bound of 10 s), durable.
    #[test]
    fn waiting_for_a_pending_receipt_starts_its_round_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, NEVER);
        let first = sealed(&auditor, &bus, "s-first", 1);
        let r = sealed(&auditor, &bus, "s-second", 2);
        assert_eq!(r.index, 1);
        assert!(!r.is_durable() && on_disk(&dir).is_empty());
        // Real time: a condition variable's timeout cannot run on a fake clock.
        let durable = auditor.wait_durable(&r, DURABLE_WAIT).unwrap();
        assert!(durable.is_durable() && auditor.is_durable(&first));
        // The round took what was staged before it: both commitments, in order.
        assert_eq!(on_disk(&dir), vec![first.commitment, r.commitment]);
    }

    /// A round that cannot finish (a stuck disk, here the round's lock held)
    /// keeps no waiter past its bound; the seals staged meanwhile are all
    /// written, and their waiters woken, once a round can run.
    #[test]
    fn a_wait_is_bounded_while_no_round_can_finish() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, NEVER);
        let auditor = Arc::new(auditor);
        let stuck = lock(&auditor.shared.round);
        let r = sealed(&auditor, &bus, "s-stuck", 2);
        let err = auditor
            .wait_durable(&r, Duration::from_millis(30))
            .unwrap_err();
        match &err {
            AuditError::DurableTimeout {
                session,
                index,
                waited,
                last_error,
            } => {
                assert_eq!(
                    (session.as_str(), *index, *waited, last_error),
                    ("s-stuck", 0, Duration::from_millis(30), &None)
                );
            }
            other => panic!("expected DurableTimeout, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("s-stuck") && message.contains("#0"),
            "{message}"
        );
        let waiters: Vec<_> = (0..4)
            .map(|i| {
                let receipt = sealed(&auditor, &bus, &format!("s-waiter-{i}"), 1);
                let a = auditor.clone();
                std::thread::spawn(move || a.wait_durable(&receipt, DURABLE_WAIT))
            })
            .collect();
        assert!(on_disk(&dir).is_empty() && !auditor.is_durable(&r));
        drop(stuck);
        for w in waiters {
            assert!(w.join().unwrap().unwrap().is_durable());
        }
        assert!(auditor.is_durable(&r));
        assert_eq!(on_disk(&dir).len(), 5);
    }

    /// Many threads sealing and waiting at once, with no tick to fall back
    /// on: every wait ends durable within its bound, whatever the
    /// interleaving of waits, wake-ups and rounds (a lost wake-up would
    /// leave a waiter to its 10 s bound and fail here).
    #[test]
    fn concurrent_waiters_all_become_durable_without_the_flushers_tick() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, NEVER);
        let auditor = Arc::new(auditor);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (auditor, bus) = (auditor.clone(), bus.clone());
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let r = sealed(&auditor, &bus, &format!("s-{t}-{i}"), 1);
                        let durable = auditor.wait_durable(&r, DURABLE_WAIT).unwrap();
                        assert!(durable.is_durable() && auditor.is_durable(&r));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(on_disk(&dir).len(), 100);
    }

    /// Whichever thread runs the round that syncs a receipt (here a
    /// `flush` on this one, or the flusher the wait woke) wakes its waiter.
    #[test]
    fn a_waiter_wakes_when_another_thread_syncs_its_receipt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, NEVER);
        let r = sealed(&auditor, &bus, "s-waited", 2);
        let auditor = Arc::new(auditor);
        let (a2, r2) = (auditor.clone(), r.clone());
        let waiter = std::thread::spawn(move || a2.wait_durable(&r2, Duration::from_secs(60)));
        auditor.flush().unwrap();
        let durable = waiter.join().unwrap().unwrap();
        assert!(durable.is_durable());
        assert_eq!(on_disk(&dir), vec![r.commitment]);
    }

    #[test]
    fn a_recorded_failure_names_its_causes_once() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let record = AuditError::Record(RecordError::Io {
            op: crate::records::IoOp::Write,
            path: "/a/sessions/s-1.log".into(),
            source: io,
        });
        assert_eq!(
            with_causes(&record),
            "cannot write record log /a/sessions/s-1.log: No space left on device"
        );
        // A message that already quotes its source does not repeat it.
        let dir = AuditError::Dir {
            op: "sync (syncfs)",
            path: "/a/sessions".into(),
            source: std::io::Error::other("I/O error"),
        };
        assert_eq!(with_causes(&dir), dir.to_string());
    }

    /// Emits state writes `versions` in session `s`.
    fn writes(bus: &EventBus, s: &SessionId, versions: std::ops::RangeInclusive<u64>) {
        let agent = AgentId::new("did:ex:writer").unwrap();
        for version in versions {
            bus.emit(
                Some(s),
                Some(&agent),
                TraceId(1),
                None,
                state_write(version),
            );
        }
    }

    /// Seals `s`, closes the auditor and verifies the directory: the log
    /// holds each of the session's `n` deltas once, and everything checks.
    fn seal_close_and_verify(auditor: Auditor, dir: &Path, s: &SessionId, n: u64) {
        let receipt = auditor.seal(s).unwrap();
        assert_eq!(receipt.commitment.tree_size, n);
        let key = *auditor.public_key();
        auditor.close().unwrap();
        assert_eq!(auditor.stats().late, 0, "{:?}", auditor.stats());
        let logged = read_session_log(dir, s.as_str()).unwrap();
        assert_eq!(logged.len() as u64, n, "each delta once: {logged:?}");
        let report = crate::verify::verify_dir(dir, None, Some(&key)).unwrap();
        assert!(report.ok(), "{report}");
    }

    /// A group-commit round whose write fails keeps the deltas for the next
    /// round; the writer must not keep them too, or they are written twice.
    #[test]
    fn a_failed_round_is_retried_without_writing_its_deltas_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, NEVER);
        let s = SessionId::new("s-retried").unwrap();
        writes(&bus, &s, 1..=3);
        crate::records::test_faults::fail_next_writes(1);
        let failed = auditor.flush();
        assert!(failed.is_err(), "the injected failure: {failed:?}");
        assert!(
            auditor.last_error().is_some_and(|e| e.contains("injected")),
            "{:?}",
            auditor.last_error()
        );
        writes(&bus, &s, 4..=4);
        seal_close_and_verify(auditor, &dir, &s, 4);
    }

    /// A group-commit auditor (its flusher never runs) in a new directory
    /// (`<tmp>/audit`), with two deltas of session `name` written and two
    /// more staged.
    fn two_written_two_staged(
        name: &str,
    ) -> (tempfile::TempDir, Auditor, Arc<EventBus>, SessionId) {
        let tmp = tempfile::tempdir().unwrap();
        let (auditor, bus) = open(&tmp.path().join("audit"), NEVER);
        let s = SessionId::new(name).unwrap();
        writes(&bus, &s, 1..=2);
        auditor.flush().unwrap();
        writes(&bus, &s, 3..=4);
        (tmp, auditor, bus, s)
    }

    /// A panic in a round's write (a bug: none is expected) is contained:
    /// the round fails like a failed write, what it took is staged again,
    /// and the next round writes it. Under group commit (here on the
    /// caller's thread; the flusher's rounds are the same code) for the
    /// deltas and for the commitments, and under `EveryRecord` in the
    /// capture that runs the round.
    #[test]
    fn a_round_whose_write_panics_loses_nothing_and_the_next_writes_it() {
        use crate::records::test_faults::panic_after_writes;
        let panicked = |r: Result<Option<SignedTreeHead>, AuditError>, what: &str| {
            assert!(
                matches!(&r, Err(AuditError::WritePanicked { what: w, .. }) if *w == what),
                "{r:?}"
            );
        };
        // What the segments hold of `s`: its records, how many of them
        // were read twice, and the segments.
        let on_disk = |dir: &Path, s: &SessionId| {
            let segs = segments_dir(dir);
            let one = crate::segments::session_records(&segs, s.as_str()).unwrap();
            let segments = list_segments(&segs).unwrap().len();
            (one.records.records.len(), one.records.repeated, segments)
        };
        let (tmp, auditor, bus, s) = two_written_two_staged("s-deltas");
        let dir = tmp.path().join("audit");
        // The round's one write: half of it reaches the file, then the panic.
        panic_after_writes(0);
        panicked(auditor.flush(), "a round of deltas");
        assert!(
            auditor.last_error().is_some_and(|e| e.contains("panicked")),
            "{:?}",
            auditor.last_error()
        );
        assert_eq!(
            on_disk(&dir, &s),
            (2, 0, 1),
            "the failed round is not on disk"
        );
        writes(&bus, &s, 5..=5);
        auditor.flush().unwrap();
        assert_eq!(
            on_disk(&dir, &s),
            (5, 0, 1),
            "written once, after the half round was cut off, in the same segment"
        );
        let c = SessionId::new("s-commitment").unwrap();
        writes(&bus, &c, 1..=2);
        auditor.flush().unwrap();
        let receipt = auditor.seal(&c).unwrap();
        // The round's only write is the commitment log's.
        panic_after_writes(0);
        panicked(auditor.flush(), "commitments");
        assert!(!auditor.is_durable(&receipt));
        auditor.flush().unwrap();
        assert!(auditor.is_durable(&receipt));
        seal_close_and_verify(auditor, &dir, &s, 5);

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, Durability::EveryRecord);
        let s = SessionId::new("s-every").unwrap();
        writes(&bus, &s, 1..=1);
        panic_after_writes(0);
        writes(&bus, &s, 2..=2);
        assert_eq!(auditor.stats().write_failures, 1, "{:?}", auditor.stats());
        assert_eq!(on_disk(&dir, &s), (1, 0, 1));
        writes(&bus, &s, 3..=3);
        assert_eq!(on_disk(&dir, &s), (3, 0, 1));
        seal_close_and_verify(auditor, &dir, &s, 3);
    }

    /// A panic that repeats in every write (a bug in the write path) is
    /// contained each time: no second panic while the first unwinds (which
    /// would abort the process), and nothing written until a write works.
    #[test]
    fn a_panic_repeating_in_every_write_is_contained_each_time() {
        let (tmp, auditor, _bus, s) = two_written_two_staged("s-repeating");
        let dir = tmp.path().join("audit");
        crate::records::test_faults::panic_next_writes(8);
        for _ in 0..3 {
            assert!(
                matches!(auditor.flush(), Err(AuditError::WritePanicked { .. })),
                "{:?}",
                auditor.last_error()
            );
        }
        crate::records::test_faults::panic_next_writes(0);
        seal_close_and_verify(auditor, &dir, &s, 4);
    }

    /// A segment whose creation fails after the file was made is removed,
    /// and the next write creates the next one: the failed delta is written
    /// there, before the later ones.
    #[test]
    fn a_segment_whose_creation_failed_is_replaced_by_the_next_write() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, Durability::EveryRecord);
        let s = SessionId::new("s-recreated").unwrap();
        crate::records::test_faults::fail_next_writes(1);
        writes(&bus, &s, 1..=1);
        assert!(
            auditor.last_error().is_some_and(|e| e.contains("injected")),
            "{:?}",
            auditor.last_error()
        );
        writes(&bus, &s, 2..=3);
        let segments = list_segments(&segments_dir(&dir)).unwrap();
        assert_eq!(
            segments.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [2],
            "segment 1 was removed, its number not reused"
        );
        seal_close_and_verify(auditor, &dir, &s, 3);
    }

    #[test]
    fn synchronous_policies_return_receipts_already_on_disk() {
        for durability in [Durability::EveryRecord, Durability::OnClose] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("audit");
            let (auditor, bus) = open(&dir, durability);
            let r = sealed(&auditor, &bus, "s-sync", 3);
            assert_eq!(r.state, SealState::Durable, "{durability:?}");
            assert_eq!(on_disk(&dir), vec![r.commitment.clone()], "{durability:?}");
            // Nothing to wait for.
            assert_eq!(auditor.wait_durable(&r, Duration::ZERO).unwrap(), r);
        }
    }

    /// How many of `session`'s deltas are written (captured and no longer
    /// staged).
    fn deltas_written(shared: &Shared, session: &SessionId) -> u64 {
        let log = shared.session_log(session).unwrap();
        let st = lock(&log.state);
        st.tree.len().0 - st.staged_count as u64
    }

    /// A state write of `session` at `version`, as an event straight for
    /// `capture` (no bus).
    fn state_write_of(session: &SessionId, version: u64) -> Event {
        Event {
            id: ahv_core::EventId(0),
            time: Duration::ZERO,
            session: Some(session.clone()),
            agent: None,
            trace: TraceId(1),
            parent: None,
            payload: state_write(version),
        }
    }

    #[test]
    fn under_every_record_no_capture_returns_before_a_round_wrote_its_delta() {
        // Straight into `capture`, several threads per session, so that
        // captures overlap as often as they can: when one returns, its
        // delta is written (no longer staged), or a failure was recorded
        // before it returned.
        let tmp = tempfile::tempdir().unwrap();
        let (auditor, _bus) = open(tmp.path(), Durability::EveryRecord);
        let shared = &*auditor.shared;
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                scope.spawn(move || {
                    let session = SessionId::new(format!("s-{}", t % 2)).unwrap();
                    for version in 0..500 {
                        let event = state_write_of(&session, version);
                        let failures = shared.write_failures.load(Ordering::SeqCst);
                        let (seq, _) = shared.capture(&event).unwrap();
                        let written = deltas_written(shared, &session);
                        assert!(
                            written > seq
                                || shared.write_failures.load(Ordering::SeqCst) > failures,
                            "{session}: delta {seq} staged, not written, when its capture returned"
                        );
                    }
                });
            }
        });
        assert_eq!(auditor.stats().write_failures, 0);
        auditor.close().unwrap();
    }

    /// The same promise, with the window a race would need held open: a
    /// capture stops after staging its delta and releasing the session's
    /// lock, and another capture of the session runs to its end meanwhile.
    /// The first one must have listed the session already (under its
    /// lock), or the second's round would not take it and the second
    /// would return with its delta staged.
    #[test]
    fn under_every_record_a_capture_paused_after_staging_has_listed_its_session() {
        let tmp = tempfile::tempdir().unwrap();
        let (auditor, _bus) = open(tmp.path(), Durability::EveryRecord);
        let session = SessionId::new("s-paused").unwrap();
        let event = |version| state_write_of(&session, version);
        let (paused_tx, paused_rx) = std::sync::mpsc::channel();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
        test_hooks::on_staged("s-paused", move || {
            paused_tx.send(()).unwrap();
            resume_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the test to resume the paused capture within 30 s");
        });
        let shared = &*auditor.shared;
        std::thread::scope(|scope| {
            // Dropped if this thread panics first, so that the paused
            // capture stops waiting at once.
            let resume_tx = resume_tx;
            let first = event(0);
            let paused = scope.spawn(move || shared.capture(&first).unwrap().0);
            paused_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the first capture to reach its pause within 30 s");
            let (seq, _) = shared.capture(&event(1)).unwrap();
            let written = deltas_written(shared, &session);
            resume_tx.send(()).unwrap();
            assert_eq!(paused.join().unwrap(), 0);
            assert!(
                written > seq,
                "delta {seq} staged, not written, when its capture returned ({written} written)"
            );
        });
        assert_eq!(auditor.stats().write_failures, 0);
        auditor.close().unwrap();
    }

    #[test]
    fn a_capture_waiting_for_the_writer_wakes_when_a_prune_releases_it() {
        // Under `EveryRecord` a capture that finds the writer held waits
        // for its release; a retention pass or a prune holds it without
        // running a round, and must wake the capture all the same.
        let tmp = tempfile::tempdir().unwrap();
        let (auditor, bus) = open(tmp.path(), Durability::EveryRecord);
        let held = auditor.shared.writer();
        let (tx, rx) = std::sync::mpsc::channel();
        let emitter = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                bus.emit(
                    Some(&SessionId::new("s-w").unwrap()),
                    None,
                    TraceId(1),
                    None,
                    state_write(1),
                );
                tx.send(()).unwrap();
            })
        };
        // Time for the capture to find the writer held and wait (if it has
        // not yet, the test shows nothing, and passes).
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            rx.try_recv().is_err(),
            "the capture returned with the writer held"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the capture was not woken when the writer was released");
        emitter.join().unwrap();
        assert_eq!(auditor.stats().write_failures, 0);
        auditor.close().unwrap();
    }

    /// A sealed session leaves memory only once the round that writes its
    /// commitment has put it among the sealed ones: at every step before
    /// and after, its late events are refused, a second seal is refused,
    /// and its commitment's index is known.
    #[test]
    fn a_sealed_session_is_refused_and_found_before_and_after_its_commitment_is_written() {
        for recent_sealed in [0, 1 << 16] {
            let tmp = tempfile::tempdir().unwrap();
            let (auditor, bus) = open_with(
                tmp.path(),
                AuditConfig {
                    durability: NEVER,
                    recent_sealed,
                    ..AuditConfig::default()
                },
            );
            let step = std::cell::Cell::new(0u64);
            let check = |s: &SessionId, index: u64, when: &str| {
                bus.emit(Some(s), None, TraceId(1), None, state_write(99));
                step.set(step.get() + 1);
                assert_eq!(
                    auditor.stats().late,
                    step.get(),
                    "a late event {when} (recent_sealed {recent_sealed})"
                );
                assert!(
                    matches!(auditor.seal(s), Err(AuditError::AlreadySealed(_))),
                    "a second seal {when} (recent_sealed {recent_sealed})"
                );
                assert_eq!(
                    auditor.commitment_index(s.as_str()).unwrap(),
                    Some(index),
                    "the index {when} (recent_sealed {recent_sealed})"
                );
            };
            let a = SessionId::new("s-a").unwrap();
            writes(&bus, &a, 1..=2);
            assert!(!auditor.seal(&a).unwrap().is_durable());
            check(&a, 0, "before any round");
            crate::records::test_faults::fail_next_writes(1);
            assert!(auditor.flush().is_err(), "the injected failure");
            check(&a, 0, "after a round that failed");
            auditor.flush().unwrap();
            assert_eq!(auditor.durable_commitments(), 1);
            check(&a, 0, "once its commitment is written");
            // A session sealed without events: its log is made by the seal.
            let b = SessionId::new("s-b").unwrap();
            auditor.seal(&b).unwrap();
            check(&b, 1, "for a session sealed without events");
            auditor.flush().unwrap();
            check(&b, 1, "for it once written");
            check(&a, 0, "after a later round");
            assert_eq!(auditor.stats().captured, 2);
            auditor.close().unwrap();
            let r = crate::verify_dir(tmp.path(), None, None).unwrap();
            assert!(r.ok(), "{r}");
            assert_eq!(on_disk(tmp.path()).len(), 2, "each commitment once");
        }
    }

    #[test]
    fn a_commitment_whose_write_failed_is_written_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (auditor, bus) = open(tmp.path(), Durability::EveryRecord);
        // Its delta written by its own capture; its seal's round then has
        // only the commitment to write, and that write fails.
        let a = SessionId::new("s-a").unwrap();
        bus.emit(Some(&a), None, TraceId(1), None, state_write(1));
        crate::records::test_faults::fail_next_writes(1);
        assert!(auditor.seal(&a).is_err());
        sealed(&auditor, &bus, "s-b", 1);
        auditor.close().unwrap();
        let names: Vec<String> = on_disk(tmp.path()).into_iter().map(|c| c.session).collect();
        assert_eq!(names, ["s-a", "s-b"]);
        let r = crate::verify_dir(tmp.path(), None, None).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn a_retention_pass_is_due_at_once_then_every_interval_on_the_clock() {
        let every = Duration::from_secs(60);
        let mut t = RetentionTimer::default();
        assert!(t.due(Duration::from_secs(5), every));
        assert!(!t.due(Duration::from_secs(64), every));
        assert!(t.due(Duration::from_secs(65), every));
        assert!(!t.due(Duration::from_secs(65), every));
        // A clock that went backwards (it cannot, but) never makes it due early.
        assert!(!t.due(Duration::from_secs(1), every));
        assert!(t.due(Duration::from_secs(125), every));
    }

    #[test]
    fn the_default_check_interval_is_a_tenth_of_the_kept_time_within_bounds() {
        let r = |s| {
            Retention::keep(Duration::from_secs(s))
                .check_every
                .as_secs()
        };
        assert_eq!(r(3), 1);
        assert_eq!(r(600), 60);
        assert_eq!(r(30 * 86_400), 3600);
    }
}
