//! The session's shared key-value state: versioned values, vector clocks and
//! isolation levels (`docs/governance.md`, "Shared state" and "Locks"). One [`StateStore`] per
//! session; the `state-read` / `state-write` host functions are thin adapters
//! over it.
//!
//! # Versions
//! The first write of a key gives version 1 and every write adds 1. The
//! `expected_version` a writer names is the version it believes current; 0
//! means "the key must not exist". A delete removes the key (a later put names
//! 0) but its number is not reused: the key keeps a tombstone with its
//! high-water mark, so after deleting version 3 the next put yields version 4
//! and a stale writer still naming 3 cannot succeed. Tombstones are bounded:
//! beyond [`StateLimits::max_keys`] of them the oldest are forgotten and their
//! high-water marks fold into a store-wide floor above which every key
//! created afterwards without a tombstone starts (so numbers are still never
//! reused; only then does a brand-new key start above 1).
//!
//! # Consistency ([`StateStore::set_strict`], may change at run time)
//! - **Strong** (strict, the default): a put or delete is accepted only if
//!   `expected_version` equals the current version ([`StateError::Conflict`]
//!   otherwise; a missing or deleted key is version 0) **and** the writer's
//!   vector clock dominates the key's clock, i.e. it has read or written the
//!   key's latest write ([`StateError::Stale`] otherwise: a stale *or
//!   concurrent* write is refused).
//! - **Eventual**: neither check is made; the last writer wins. The new clock
//!   still merges the old one, so no history is lost.
//!
//! In both modes the new clock of the key is
//! [`ClockTable::stamp_write`]`(writer, old clock)`; a delete stamps its
//! tombstone the same way. A [`StateStore::get`] merges the clock of the
//! value it returns (or of the tombstone of a deleted key: the reader has seen
//! the delete) into the reader's clock. [`StateStore::keys`] lists names only
//! and has no clock effect. Deleting a key that does not exist is a
//! [`StateError::Conflict`] with `actual` 0 in either mode (there is nothing
//! to delete).
//!
//! # Isolation ([`StateStore::set_isolation`])
//! A transaction is one agent call, from [`StateStore::begin`] to
//! [`StateStore::end`]. The isolation level in force at `begin` governs the
//! whole transaction; operations outside a transaction use the current level.
//! - **Read committed** (default): every get sees the latest committed value.
//! - **Snapshot**: gets and key listings see the state as of `begin`, plus
//!   the agent's own writes in the transaction. A write to a key that another
//!   agent committed after the snapshot was taken is a
//!   [`StateError::Conflict`] (first committer wins), in eventual mode too.
//!   Outside a transaction, snapshot behaves like read committed. Built with
//!   MVCC: a store-wide commit sequence, and per key the revisions still
//!   visible to an open snapshot; every other old revision is pruned on each
//!   commit and at every `end`. Retained old revisions are not counted against
//!   [`StateLimits::max_total_bytes`]; they are bounded by one per open
//!   snapshot per key.
//! - **Serializable**: a get needs the caller to hold at least a
//!   [`LockMode::Read`] lock on [`LockResource::key`]`(key)`, a put or delete
//!   at least [`LockMode::Write`]; otherwise [`StateError::LockRequired`].
//!   Key listings and membership changes are phantom-protected by treating a
//!   key lock as a range lock on every key that starts with it:
//!   `keys(prefix)` needs a `Read` lock on `key(prefix)` and is refused while
//!   another agent holds a `Write` (or `Exclusive`) lock on a key under the
//!   prefix; a put that creates a key or a delete that removes one is refused
//!   while another agent holds any lock on `key(p)` for a proper prefix `p`
//!   of the key (including `""`), with `LockRequired { key: p, mode: Write }`
//!   naming the range lock to acquire (which waits for that agent). With every
//!   lock held until the transaction ends (strict two-phase locking) the
//!   histories of serializable transactions are conflict-serializable.
//!   Releasing a lock early is the agent's choice and gives up that guarantee.
//!
//! # Limits ([`StateLimits`])
//! A key is 1..=`max_key_bytes` bytes without control characters
//! ([`StateError::InvalidKey`]); a value at most `max_value_bytes`; the keys
//! and values of the latest versions total at most `max_total_bytes`; at most
//! `max_keys` keys exist ([`StateError::Quota`]). A refused write changes
//! nothing: neither the store nor any clock.
//!
//! ```
//! use std::sync::Arc;
//! use ahv_core::AgentId;
//! use ahv_governance::locks::LockManager;
//! use ahv_governance::state::{StateError, StateLimits, StateStore};
//! use ahv_governance::vclock::ClockTable;
//!
//! let store = StateStore::new(
//!     StateLimits::default(),
//!     Arc::new(ClockTable::new()),
//!     Arc::new(LockManager::new(64)),
//! );
//! let (a, b) = (AgentId::new("a")?, AgentId::new("b")?);
//! assert_eq!(store.put(&a, "findings", b"one", 0)?, 1);
//! // b has not read the key: its write is refused.
//! assert!(matches!(store.put(&b, "findings", b"two", 1), Err(StateError::Stale { .. })));
//! let seen = store.get(&b, "findings")?.expect("written");
//! assert_eq!(store.put(&b, "findings", b"two", seen.version)?, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use ahv_core::AgentId;
use thiserror::Error;

use crate::locks::{LockManager, LockMode, LockResource};
use crate::vclock::{ClockTable, StaleWrite, VectorClock};

/// Transaction isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Isolation {
    /// Every read sees the latest committed value.
    #[default]
    ReadCommitted,
    /// Reads see the state as of the transaction's start; first committer wins.
    Snapshot,
    /// Reads and writes need intent locks (strict two-phase locking).
    Serializable,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::ReadCommitted => "read-committed",
            Isolation::Snapshot => "snapshot",
            Isolation::Serializable => "serializable",
        })
    }
}

/// An isolation level name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown isolation level {input:?}: expected read-committed, snapshot or serializable")]
pub struct ParseIsolationError {
    /// The text given (truncated to 64 chars).
    pub input: String,
}

impl FromStr for Isolation {
    type Err = ParseIsolationError;

    /// Accepts `read-committed`, `snapshot`, `serializable`, in any case and
    /// with `_` for `-` (so the reference's `READ_COMMITTED` works too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "read-committed" => Ok(Isolation::ReadCommitted),
            "snapshot" => Ok(Isolation::Snapshot),
            "serializable" => Ok(Isolation::Serializable),
            _ => Err(ParseIsolationError { input: truncate(s) }),
        }
    }
}

/// Size limits of one store. [`StateLimits::default`] is the documented default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLimits {
    /// Most keys at once (default 10 000).
    pub max_keys: usize,
    /// Longest key, in bytes (default 256).
    pub max_key_bytes: usize,
    /// Largest value, in bytes (default 1 MiB).
    pub max_value_bytes: usize,
    /// Most bytes of keys plus values (latest versions) at once (default 64 MiB).
    pub max_total_bytes: u64,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            max_keys: 10_000,
            max_key_bytes: 256,
            max_value_bytes: 1 << 20,
            max_total_bytes: 64 << 20,
        }
    }
}

/// A value with its version and provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// Its version: 1 for the first write of the key, +1 per write.
    pub version: u64,
    /// The vector clock of the write that produced it.
    pub clock: VectorClock,
    /// The agent that wrote it.
    pub writer: AgentId,
}

/// What one put or delete changed: enough to undo it exactly
/// ([`StateStore::undo`]). Part of persisted change journals.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateUndo {
    /// The key.
    pub key: String,
    /// The value before the change; `None` when the key did not exist.
    pub previous: Option<Vec<u8>>,
    /// The version before the change: the value's, or for a key that did
    /// not exist the version its tombstone records (0 when it has none).
    pub previous_version: u64,
    /// The version the change left: the version written by a put, the
    /// version removed (its tombstone's) by a delete.
    pub version: u64,
    /// True when the change deleted the key.
    pub deleted: bool,
}

/// Why a state operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    /// The key (or key prefix) is not acceptable.
    #[error("state key {key:?}: {reason}")]
    InvalidKey {
        /// The key (truncated to 64 chars).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The version named is not the current one, or (snapshot isolation)
    /// another agent committed the key after the snapshot was taken.
    #[error("state key {key:?}: expected version {expected}, but it is at version {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The version the writer named.
        expected: u64,
        /// The current version (0: the key does not exist).
        actual: u64,
    },
    /// The writer has not seen the key's latest write (strict mode).
    #[error("state key {key:?}: {source}")]
    Stale {
        /// The key.
        key: String,
        /// The clocks involved.
        source: StaleWrite,
    },
    /// A size or count limit would be exceeded.
    #[error("state key {key:?}: {reason}")]
    Quota {
        /// The key.
        key: String,
        /// Which limit.
        reason: String,
    },
    /// An undo was refused: the key changed after the change being undone.
    #[error(
        "state key {key:?}: cannot undo the change that left it at {expected}: it is now {actual}"
    )]
    UndoConflict {
        /// The key.
        key: String,
        /// What the change left: `version N` or `deleted at version N`.
        expected: String,
        /// What the key is now, in the same form (`absent` when it never existed).
        actual: String,
    },
    /// Serializable isolation needs a lock the caller does not hold.
    #[error("state key {key:?}: serializable isolation needs a {mode} lock on key:{key}")]
    LockRequired {
        /// The key (or, for a range lock, the key prefix) to lock.
        key: String,
        /// The least mode needed.
        mode: LockMode,
    },
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// One committed revision of a key. `value` is `None` for a delete.
#[derive(Debug, Clone)]
struct Rev {
    seq: u64,
    value: Option<Vec<u8>>,
    /// The version written, or for a delete the version deleted.
    version: u64,
    clock: VectorClock,
    writer: AgentId,
}

impl Rev {
    fn versioned(&self) -> Option<Versioned> {
        self.value.as_ref().map(|value| Versioned {
            value: value.clone(),
            version: self.version,
            clock: self.clock.clone(),
            writer: self.writer.clone(),
        })
    }
}

/// A key's revisions (ascending `seq`, never empty) and the highest version
/// it ever had.
#[derive(Debug)]
struct KeyEntry {
    high_water: u64,
    revs: Vec<Rev>,
}

impl KeyEntry {
    fn latest(&self) -> Option<&Rev> {
        self.revs.last()
    }

    fn live(&self) -> Option<&Rev> {
        self.latest().filter(|r| r.value.is_some())
    }

    /// The revision a snapshot taken at `snap` sees.
    fn at(&self, snap: u64) -> Option<&Rev> {
        self.revs.iter().rev().find(|r| r.seq <= snap)
    }
}

/// One open transaction.
#[derive(Debug)]
struct Txn {
    isolation: Isolation,
    /// The commit sequence the snapshot was taken at (snapshot isolation).
    snap: Option<u64>,
    /// Key → commit sequence of this transaction's latest write of it.
    own: HashMap<String, u64>,
}

#[derive(Debug, Default)]
struct Inner {
    strict: bool,
    isolation: Isolation,
    /// The last commit sequence handed out.
    seq: u64,
    entries: BTreeMap<String, KeyEntry>,
    /// Open transactions by agent (at most the session's participants).
    /// foldhash, not SipHash: every saga step begins and ends one, and
    /// SipHash took ~1 % of a three-step saga.
    txns: HashMap<AgentId, Txn, foldhash::fast::RandomState>,
    live_keys: usize,
    live_bytes: u64,
    /// Deleted keys still remembered, by `(delete seq, key)`.
    dead: BTreeSet<(u64, String)>,
    /// Highest version of any forgotten tombstone.
    version_floor: u64,
    /// Keys with more than one revision (candidates for pruning).
    historied: BTreeSet<String>,
}

/// How one operation sees the store.
#[derive(Debug, Clone, Copy)]
struct View {
    isolation: Isolation,
    snap: Option<u64>,
}

impl Inner {
    fn view(&self, agent: &AgentId) -> View {
        match self.txns.get(agent) {
            Some(t) => View {
                isolation: t.isolation,
                snap: t.snap,
            },
            None => View {
                isolation: self.isolation,
                snap: None,
            },
        }
    }

    fn own_seq(&self, agent: &AgentId, key: &str) -> Option<u64> {
        self.txns.get(agent)?.own.get(key).copied()
    }

    /// The revision of `key` that `agent` sees.
    fn visible(&self, agent: &AgentId, view: View, key: &str) -> Option<&Rev> {
        let entry = self.entries.get(key)?;
        match view.snap {
            None => entry.latest(),
            Some(snap) => match self.own_seq(agent, key) {
                Some(own) => entry.revs.iter().find(|r| r.seq == own),
                None => entry.at(snap),
            },
        }
    }

    /// Drops the revisions of `key` that nothing can see any more.
    fn prune(&mut self, key: &str) {
        let snaps: Vec<u64> = self.txns.values().filter_map(|t| t.snap).collect();
        let owns: Vec<u64> = self
            .txns
            .values()
            .filter_map(|t| t.own.get(key).copied())
            .collect();
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        // A revision stays if it is the latest, some open transaction wrote
        // it, or some open snapshot falls between it and the next revision.
        let nexts = entry.revs.iter().skip(1).map(|r| Some(r.seq)).chain([None]);
        let keep: Vec<bool> = entry
            .revs
            .iter()
            .zip(nexts)
            .map(|(rev, next)| match next {
                None => true,
                Some(next) => {
                    owns.contains(&rev.seq) || snaps.iter().any(|s| rev.seq <= *s && *s < next)
                }
            })
            .collect();
        let mut keep = keep.into_iter();
        entry.revs.retain(|_| keep.next().unwrap_or(true));
        if entry.revs.len() <= 1 {
            self.historied.remove(key);
        }
    }

    fn prune_all(&mut self) {
        let keys: Vec<String> = self.historied.iter().cloned().collect();
        for key in keys {
            self.prune(&key);
        }
    }

    /// Forgets the oldest tombstones beyond `max`, except those an open
    /// snapshot may still need to tell "deleted since" from "never there".
    fn evict_tombstones(&mut self, max: usize) {
        let excess = self.dead.len().saturating_sub(max);
        if excess == 0 {
            return;
        }
        let oldest_snap = self.txns.values().filter_map(|t| t.snap).min();
        let victims: Vec<(u64, String)> = self
            .dead
            .iter()
            .filter(|(seq, key)| {
                oldest_snap.is_none_or(|s| *seq <= s)
                    && self.entries.get(key).is_some_and(|e| e.revs.len() == 1)
            })
            .take(excess)
            .cloned()
            .collect();
        for (seq, key) in victims {
            self.dead.remove(&(seq, key.clone()));
            if let Some(entry) = self.entries.remove(&key) {
                self.version_floor = self.version_floor.max(entry.high_water);
            }
            for t in self.txns.values_mut() {
                t.own.remove(&key);
            }
        }
    }
}

/// The session's shared key-value state.
#[derive(Debug)]
pub struct StateStore {
    limits: StateLimits,
    clocks: Arc<ClockTable>,
    locks: Arc<LockManager>,
    inner: Mutex<Inner>,
}

/// What a write does once every check passed.
#[derive(Clone, Copy)]
enum Write<'v> {
    Put(&'v [u8]),
    Delete,
}

/// What a write must find before it may go ahead.
#[derive(Clone, Copy)]
enum Guard<'u> {
    /// A guest's compare-and-set: the version it names (checked in strict mode).
    Expect(u64),
    /// A compensation: the key must still be as this change left it.
    Undo(&'u StateUndo),
}

fn describe_state(version: u64, deleted: bool) -> String {
    if deleted {
        format!("deleted at version {version}")
    } else {
        format!("version {version}")
    }
}

impl StateStore {
    /// The store's size limits.
    pub fn limits(&self) -> &StateLimits {
        &self.limits
    }

    /// An empty store in strong consistency and read-committed isolation,
    /// sharing the session's clocks and locks.
    pub fn new(
        limits: StateLimits,
        clocks: Arc<ClockTable>,
        locks: Arc<LockManager>,
    ) -> StateStore {
        StateStore {
            limits,
            clocks,
            locks,
            inner: Mutex::new(Inner {
                strict: true,
                ..Inner::default()
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; every update leaves
        // the store consistent before anything can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the consistency mode: strong (`true`, the default) or eventual.
    pub fn set_strict(&self, strict: bool) {
        self.inner().strict = strict;
    }

    /// Sets the isolation level for transactions that begin afterwards and
    /// for operations outside a transaction.
    pub fn set_isolation(&self, iso: Isolation) {
        self.inner().isolation = iso;
    }

    /// The current isolation level.
    pub fn isolation(&self) -> Isolation {
        self.inner().isolation
    }

    /// Starts `agent`'s transaction (one agent call) under the current
    /// isolation level; under snapshot isolation this pins its view. A
    /// transaction still open is ended first.
    pub fn begin(&self, agent: &AgentId) {
        let mut inner = self.inner();
        let isolation = inner.isolation;
        let snap = (isolation == Isolation::Snapshot).then_some(inner.seq);
        let previous = inner.txns.insert(
            agent.clone(),
            Txn {
                isolation,
                snap,
                own: HashMap::new(),
            },
        );
        if previous.is_some_and(|t| t.snap.is_some()) {
            inner.prune_all();
        }
    }

    /// Ends `agent`'s transaction (called after every call, even one that
    /// trapped) and drops the old revisions nobody can see any more.
    pub fn end(&self, agent: &AgentId) {
        let mut inner = self.inner();
        if inner.txns.remove(agent).is_some_and(|t| t.snap.is_some()) {
            inner.prune_all();
            inner.evict_tombstones(self.limits.max_keys);
        }
    }

    /// The agent left the session: ends its transaction.
    pub fn forget(&self, agent: &AgentId) {
        self.end(agent);
    }

    fn check_key(&self, key: &str, allow_empty: bool) -> Result<(), StateError> {
        let bad = |reason: String| {
            Err(StateError::InvalidKey {
                key: truncate(key),
                reason,
            })
        };
        if key.is_empty() && !allow_empty {
            return bad("a key must not be empty".into());
        }
        if key.len() > self.limits.max_key_bytes {
            return bad(format!(
                "{} bytes long; the maximum is {}",
                key.len(),
                self.limits.max_key_bytes
            ));
        }
        if let Some(ch) = key.chars().find(|c| c.is_control()) {
            return bad(format!("contains the control character {ch:?}"));
        }
        Ok(())
    }

    fn require_lock(&self, agent: &AgentId, key: &str, mode: LockMode) -> Result<(), StateError> {
        if self.locks.holds(agent, &LockResource::key(key), mode) {
            Ok(())
        } else {
            Err(StateError::LockRequired {
                key: key.to_owned(),
                mode,
            })
        }
    }

    /// Refuses a membership change of `key` while another agent holds a
    /// range lock on one of its proper prefixes.
    fn require_no_range_lock(&self, agent: &AgentId, key: &str) -> Result<(), StateError> {
        let ranges: Vec<LockResource> = key
            .char_indices()
            .map(|(i, _)| LockResource::key(&key[..i]))
            .collect();
        match self.locks.held_by_other(agent, &ranges) {
            Some(range) => Err(StateError::LockRequired {
                key: range.key_name().unwrap_or_default().to_owned(),
                mode: LockMode::Write,
            }),
            None => Ok(()),
        }
    }

    /// Reads a key: `None` if it does not exist (in the caller's view). Merges
    /// the value's clock (or a deleted key's tombstone clock) into the
    /// caller's clock.
    ///
    /// # Errors
    /// [`StateError::InvalidKey`]; [`StateError::LockRequired`] under
    /// serializable isolation without a read lock on the key.
    pub fn get(&self, agent: &AgentId, key: &str) -> Result<Option<Versioned>, StateError> {
        self.check_key(key, false)?;
        let inner = self.inner();
        let view = inner.view(agent);
        if view.isolation == Isolation::Serializable {
            self.require_lock(agent, key, LockMode::Read)?;
        }
        let Some(rev) = inner.visible(agent, view, key) else {
            return Ok(None);
        };
        self.clocks.observe(agent, &rev.clock);
        Ok(rev.versioned())
    }

    /// The existing keys starting with `prefix` as the host sees them (as
    /// [`StateStore::peek`]: no isolation, no locks, no clock effects),
    /// sorted, at most [`StateLimits::max_keys`].
    ///
    /// # Errors
    /// [`StateError::InvalidKey`] for a prefix too long or with control
    /// characters.
    pub fn peek_keys(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        self.check_key(prefix, true)?;
        let inner = self.inner();
        Ok(inner
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live().is_some())
            .map(|(k, _)| k.clone())
            .take(self.limits.max_keys)
            .collect())
    }

    /// The existing keys starting with `prefix` (in the caller's view),
    /// sorted, at most [`StateLimits::max_keys`].
    ///
    /// # Errors
    /// [`StateError::InvalidKey`] for a prefix too long or with control
    /// characters; [`StateError::LockRequired`] under serializable isolation
    /// without a read lock on `key(prefix)`, or while another agent holds a
    /// write lock on a key under the prefix (the error names that key).
    pub fn keys(&self, agent: &AgentId, prefix: &str) -> Result<Vec<String>, StateError> {
        self.check_key(prefix, true)?;
        let inner = self.inner();
        let view = inner.view(agent);
        if view.isolation == Isolation::Serializable {
            self.require_lock(agent, prefix, LockMode::Read)?;
            if let Some(key) = self.locks.written_by_other_under(agent, prefix) {
                return Err(StateError::LockRequired {
                    key,
                    mode: LockMode::Read,
                });
            }
        }
        Ok(inner
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| {
                inner
                    .visible(agent, view, k)
                    .is_some_and(|r| r.value.is_some())
            })
            .map(|(k, _)| k.clone())
            .take(self.limits.max_keys)
            .collect())
    }

    /// Writes `value` if the rules of the consistency mode and isolation
    /// level allow it; returns the new version.
    ///
    /// # Errors
    /// [`StateError::InvalidKey`]; [`StateError::Quota`];
    /// [`StateError::LockRequired`] (serializable);
    /// [`StateError::Conflict`] when `expected_version` is not current
    /// (strict) or another agent committed the key after the caller's
    /// snapshot; [`StateError::Stale`] when the caller has not seen the key's
    /// latest write (strict).
    pub fn put(
        &self,
        agent: &AgentId,
        key: &str,
        value: &[u8],
        expected_version: u64,
    ) -> Result<u64, StateError> {
        self.put_undoable(agent, key, value, expected_version)
            .map(|u| u.version)
    }

    /// [`StateStore::put`], returning what the write changed (the previous
    /// value and whether it existed, the version written) so that it can be
    /// undone with [`StateStore::undo`].
    ///
    /// # Errors
    /// As [`StateStore::put`].
    pub fn put_undoable(
        &self,
        agent: &AgentId,
        key: &str,
        value: &[u8],
        expected_version: u64,
    ) -> Result<StateUndo, StateError> {
        self.check_key(key, false)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(StateError::Quota {
                key: key.to_owned(),
                reason: format!(
                    "the value is {} bytes; the maximum is {}",
                    value.len(),
                    self.limits.max_value_bytes
                ),
            });
        }
        self.write(
            agent,
            key,
            Guard::Expect(expected_version),
            Write::Put(value),
        )
    }

    /// Deletes a key under the same rules as [`StateStore::put`]; returns the
    /// version deleted.
    ///
    /// # Errors
    /// As [`StateStore::put`]; deleting a key that does not exist is a
    /// [`StateError::Conflict`] with `actual` 0.
    pub fn delete(
        &self,
        agent: &AgentId,
        key: &str,
        expected_version: u64,
    ) -> Result<u64, StateError> {
        self.delete_undoable(agent, key, expected_version)
            .map(|u| u.version)
    }

    /// [`StateStore::delete`], returning what it changed (the value deleted,
    /// the version deleted) so that it can be undone with [`StateStore::undo`].
    ///
    /// # Errors
    /// As [`StateStore::delete`].
    pub fn delete_undoable(
        &self,
        agent: &AgentId,
        key: &str,
        expected_version: u64,
    ) -> Result<StateUndo, StateError> {
        self.check_key(key, false)?;
        self.write(agent, key, Guard::Expect(expected_version), Write::Delete)
    }

    /// Undoes one put or delete on behalf of `agent` (a saga compensating
    /// its step): the key gets back exactly its previous value *and version
    /// number*, or ceases to exist (with the tombstone version it had) if it
    /// did not exist before. Allowed only while the key is still as the
    /// change left it: live at the version it wrote, or deleted with the
    /// tombstone it left. Because the previous version comes back, undoing
    /// a run of changes newest first passes each check in turn, while a
    /// change by anyone else in between makes the older undo a conflict.
    ///
    /// Versions are still never handed out twice: the key's high-water mark
    /// stays, so the next write after an undo gets a number above every one
    /// used before. The compensation is a write like any other for the
    /// clocks (the key's clock advances, a new revision is committed, so
    /// snapshots taken earlier keep their view) and for events. Consistency
    /// checks (expected version, clock dominance) are replaced by the check
    /// above; isolation locks and quotas still apply. Returns what the
    /// compensation changed.
    ///
    /// # Errors
    /// [`StateError::UndoConflict`] when the key changed since;
    /// [`StateError::InvalidKey`], [`StateError::Quota`],
    /// [`StateError::LockRequired`] as for a put.
    pub fn undo(&self, agent: &AgentId, change: &StateUndo) -> Result<StateUndo, StateError> {
        let key = change.key.as_str();
        self.check_key(key, false)?;
        let write = match &change.previous {
            Some(value) => Write::Put(value),
            None => Write::Delete,
        };
        self.write(agent, key, Guard::Undo(change), write)
    }

    fn write(
        &self,
        agent: &AgentId,
        key: &str,
        check: Guard<'_>,
        write: Write<'_>,
    ) -> Result<StateUndo, StateError> {
        let mut guard = self.inner();
        let inner = &mut *guard;
        let view = inner.view(agent);
        let entry = inner.entries.get(key);
        let latest = entry.and_then(KeyEntry::latest);
        let live = entry.and_then(KeyEntry::live);
        let current = live.map_or(0, |r| r.version);
        let expected = match check {
            Guard::Expect(v) => v,
            Guard::Undo(_) => current,
        };
        // The version before this write, as StateUndo::previous_version names it.
        let previous_version = latest.map_or(0, |r| r.version);
        let conflict = || StateError::Conflict {
            key: key.to_owned(),
            expected,
            actual: current,
        };
        if let Guard::Undo(change) = check {
            // A forgotten tombstone leaves the key absent, which is the
            // state the delete left as far as any reader can tell.
            let unchanged = match latest {
                Some(r) => r.value.is_some() != change.deleted && r.version == change.version,
                None => change.deleted,
            };
            if !unchanged {
                let actual = match latest {
                    Some(r) => describe_state(r.version, r.value.is_none()),
                    None => "absent".to_owned(),
                };
                return Err(StateError::UndoConflict {
                    key: key.to_owned(),
                    expected: describe_state(change.version, change.deleted),
                    actual,
                });
            }
        }

        // Every check first: a refused write changes nothing.
        if view.isolation == Isolation::Serializable {
            // A compensation puts back what the agent's own committed change
            // replaced; the agent need not hold the lock any more (its call
            // ended, or it trapped and its locks died), but no one else may
            // hold one on the key.
            match check {
                Guard::Undo(_) => {
                    if let Some(r) = self.locks.held_by_other(agent, &[LockResource::key(key)]) {
                        return Err(StateError::LockRequired {
                            key: r.key_name().unwrap_or(key).to_owned(),
                            mode: LockMode::Write,
                        });
                    }
                }
                Guard::Expect(_) => self.require_lock(agent, key, LockMode::Write)?,
            }
            let changes_membership = matches!(
                (&write, live),
                (Write::Put(_), None) | (Write::Delete, Some(_))
            );
            if changes_membership {
                self.require_no_range_lock(agent, key)?;
            }
        }
        if let (Guard::Expect(_), Some(snap), Some(latest)) = (check, view.snap, latest)
            && latest.seq > snap
            && inner.own_seq(agent, key) != Some(latest.seq)
        {
            return Err(conflict());
        }
        if matches!(write, Write::Delete) && live.is_none() {
            return Err(conflict());
        }
        let restore = match check {
            Guard::Undo(change) => Some(change.previous_version),
            Guard::Expect(_) => None,
        };
        let zero = VectorClock::new();
        let old_clock = latest.map_or(&zero, |r| &r.clock);
        if inner.strict && matches!(check, Guard::Expect(_)) {
            if expected != current {
                return Err(conflict());
            }
            self.clocks
                .check_write(agent, old_clock)
                .map_err(|source| StateError::Stale {
                    key: key.to_owned(),
                    source,
                })?;
        }
        let old_bytes = live.map_or(0, |r| entry_bytes(key, r.value.as_deref()));
        if let Write::Put(value) = write {
            let new_bytes = entry_bytes(key, Some(value));
            let total = inner.live_bytes - old_bytes + new_bytes;
            if total > self.limits.max_total_bytes {
                return Err(StateError::Quota {
                    key: key.to_owned(),
                    reason: format!(
                        "the store would hold {total} bytes; the maximum is {}",
                        self.limits.max_total_bytes
                    ),
                });
            }
            if live.is_none() && inner.live_keys >= self.limits.max_keys {
                return Err(StateError::Quota {
                    key: key.to_owned(),
                    reason: format!("the store already holds {} keys", self.limits.max_keys),
                });
            }
        }

        // Commit.
        let previous = live.and_then(|r| r.value.clone());
        let clock = self.clocks.stamp_write(agent, old_clock);
        let was_dead = latest.filter(|r| r.value.is_none()).map(|r| r.seq);
        let high_water = entry.map_or(inner.version_floor, |e| e.high_water);
        inner.seq = inner.seq.saturating_add(1);
        let seq = inner.seq;
        let (rev, result) = match write {
            Write::Put(value) => {
                let version = restore.unwrap_or_else(|| high_water.saturating_add(1));
                inner.live_bytes = inner.live_bytes - old_bytes + entry_bytes(key, Some(value));
                if live.is_none() {
                    inner.live_keys += 1;
                }
                if let Some(dead_seq) = was_dead {
                    inner.dead.remove(&(dead_seq, key.to_owned()));
                }
                let rev = Rev {
                    seq,
                    value: Some(value.to_vec()),
                    version,
                    clock,
                    writer: agent.clone(),
                };
                (rev, version)
            }
            Write::Delete => {
                inner.live_bytes -= old_bytes;
                inner.live_keys -= 1;
                inner.dead.insert((seq, key.to_owned()));
                let version = restore.unwrap_or(current);
                let rev = Rev {
                    seq,
                    value: None,
                    version,
                    clock,
                    writer: agent.clone(),
                };
                (rev, version)
            }
        };
        let entry = inner
            .entries
            .entry(key.to_owned())
            .or_insert_with(|| KeyEntry {
                high_water,
                revs: Vec::new(),
            });
        entry.high_water = entry.high_water.max(rev.version);
        entry.revs.push(rev);
        if entry.revs.len() > 1 {
            inner.historied.insert(key.to_owned());
        }
        if let Some(txn) = inner.txns.get_mut(agent)
            && txn.snap.is_some()
        {
            txn.own.insert(key.to_owned(), seq);
        }
        inner.prune(key);
        inner.evict_tombstones(self.limits.max_keys);
        Ok(StateUndo {
            key: key.to_owned(),
            previous,
            previous_version,
            version: result,
            deleted: matches!(write, Write::Delete),
        })
    }

    /// The latest committed value of a key, for the host: no isolation, no
    /// locks, no clock effects.
    pub fn peek(&self, key: &str) -> Option<Versioned> {
        self.inner()
            .entries
            .get(key)
            .and_then(KeyEntry::live)
            .and_then(Rev::versioned)
    }

    /// How many keys exist and how many bytes their keys and latest values
    /// take.
    pub fn usage(&self) -> (usize, u64) {
        let inner = self.inner();
        (inner.live_keys, inner.live_bytes)
    }

    /// How many revisions the store keeps in all (tombstones included): the
    /// measure of what pruning leaves.
    #[cfg(test)]
    fn retained_revisions(&self) -> usize {
        self.inner().entries.values().map(|e| e.revs.len()).sum()
    }
}

fn entry_bytes(key: &str, value: Option<&[u8]>) -> u64 {
    (key.len() + value.map_or(0, <[u8]>::len)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vclock::ClockOrder;
    use proptest::prelude::*;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    struct Fixture {
        store: StateStore,
        clocks: Arc<ClockTable>,
        locks: Arc<LockManager>,
    }

    fn fixture(limits: StateLimits) -> Fixture {
        let clocks = Arc::new(ClockTable::new());
        let locks = Arc::new(LockManager::new(64));
        Fixture {
            store: StateStore::new(limits, clocks.clone(), locks.clone()),
            clocks,
            locks,
        }
    }

    fn store() -> Fixture {
        fixture(StateLimits::default())
    }

    #[test]
    fn isolation_names_round_trip() {
        for iso in [
            Isolation::ReadCommitted,
            Isolation::Snapshot,
            Isolation::Serializable,
        ] {
            assert_eq!(iso.to_string().parse::<Isolation>(), Ok(iso));
        }
        assert_eq!(
            "READ_COMMITTED".parse::<Isolation>(),
            Ok(Isolation::ReadCommitted)
        );
        assert_eq!(Isolation::default(), Isolation::ReadCommitted);
        assert!("repeatable-read".parse::<Isolation>().is_err());
    }

    #[test]
    fn versions_start_at_one_and_count_writes() {
        let f = store();
        let a = id("a");
        assert_eq!(f.store.get(&a, "k").unwrap(), None);
        assert_eq!(f.store.put(&a, "k", b"1", 0), Ok(1));
        assert_eq!(f.store.put(&a, "k", b"2", 1), Ok(2));
        let v = f.store.get(&a, "k").unwrap().unwrap();
        assert_eq!((v.value.as_slice(), v.version), (&b"2"[..], 2));
        assert_eq!(v.writer, a);
        assert_eq!(
            f.store.put(&a, "k", b"3", 0),
            Err(StateError::Conflict {
                key: "k".into(),
                expected: 0,
                actual: 2
            }),
            "0 means the key must not exist"
        );
        assert_eq!(f.store.peek("k").unwrap().version, 2);
    }

    #[test]
    fn a_recreated_key_continues_numbering() {
        let f = store();
        let (a, b) = (id("a"), id("b"));
        for v in 0..3 {
            f.store.put(&a, "k", b"x", v).unwrap();
        }
        // b read version 3 before the delete.
        assert_eq!(f.store.get(&b, "k").unwrap().unwrap().version, 3);
        assert_eq!(f.store.delete(&a, "k", 3), Ok(3));
        assert_eq!(f.store.get(&a, "k").unwrap(), None);
        assert_eq!(f.store.peek("k"), None);
        assert_eq!(f.store.usage(), (0, 0));
        assert_eq!(f.store.put(&a, "k", b"y", 0), Ok(4));
        // b's stale version can never match again.
        assert!(matches!(
            f.store.put(&b, "k", b"z", 3),
            Err(StateError::Conflict { actual: 4, .. })
        ));
        f.store.set_strict(false);
        f.store.delete(&a, "k", 99).unwrap();
        assert_eq!(f.store.put(&b, "k", b"z", 0), Ok(5));
    }

    #[test]
    fn deleting_a_missing_key_is_a_conflict() {
        let f = store();
        let a = id("a");
        for strict in [true, false] {
            f.store.set_strict(strict);
            assert_eq!(
                f.store.delete(&a, "nope", 0),
                Err(StateError::Conflict {
                    key: "nope".into(),
                    expected: 0,
                    actual: 0
                })
            );
        }
    }

    #[test]
    fn a_get_merges_the_clock_and_a_deletion_is_seen() {
        let f = store();
        let (a, b) = (id("a"), id("b"));
        f.store.put(&a, "k", b"x", 0).unwrap();
        assert!(f.clocks.clock_of(&b).is_zero());
        f.store.get(&b, "k").unwrap();
        assert_eq!(f.clocks.clock_of(&b).get(&a), 1);
        f.store.delete(&b, "k", 1).unwrap();
        // a has not seen the delete: re-creating is stale.
        assert!(matches!(
            f.store.put(&a, "k", b"y", 0),
            Err(StateError::Stale { .. })
        ));
        assert_eq!(f.store.get(&a, "k").unwrap(), None);
        assert_eq!(f.store.put(&a, "k", b"y", 0), Ok(2));
    }

    #[test]
    fn concurrent_strict_writers_the_second_is_refused() {
        let f = store();
        let (a, b) = (id("a"), id("b"));
        f.store.put(&a, "k", b"0", 0).unwrap();
        let seen_a = f.store.get(&a, "k").unwrap().unwrap();
        let seen_b = f.store.get(&b, "k").unwrap().unwrap();
        assert_eq!(f.store.put(&a, "k", b"a", seen_a.version), Ok(2));
        let second = f.store.put(&b, "k", b"b", seen_b.version);
        assert_eq!(
            second,
            Err(StateError::Conflict {
                key: "k".into(),
                expected: 1,
                actual: 2
            })
        );
        // Guessing the version does not help: b's clock has not seen a's write.
        let guessed = f.store.put(&b, "k", b"b", 2);
        match guessed {
            Err(StateError::Stale { key, source }) => {
                assert_eq!(key, "k");
                assert_eq!(source.order, ClockOrder::Before);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.store.peek("k").unwrap().value, b"a");

        // Knowledge travels through other keys: d learns of k's version 3
        // by reading what c wrote after reading k, but not of b's version 4.
        f.store.put(&b, "other", b"o", 0).unwrap();
        f.store.get(&b, "k").unwrap();
        f.store.put(&b, "k", b"b", 2).unwrap();
        let (c, d) = (id("c"), id("d"));
        f.store.get(&c, "k").unwrap();
        f.store.put(&d, "unrelated", b"u", 0).unwrap();
        f.store.get(&c, "unrelated").unwrap();
        f.store.put(&c, "unrelated", b"v", 1).unwrap();
        f.store.get(&d, "unrelated").unwrap();
        f.store.put(&b, "k", b"b2", 3).unwrap();
        f.store.get(&d, "unrelated").unwrap();
        // d's clock is before k's: refused.
        assert!(matches!(
            f.store.put(&d, "k", b"d", 4),
            Err(StateError::Stale { .. })
        ));
        assert_eq!(f.store.peek("k").unwrap().value, b"b2");
    }

    #[test]
    fn a_concurrent_clock_is_stale() {
        let f = store();
        let (a, b) = (id("a"), id("b"));
        f.store.put(&a, "k", b"1", 0).unwrap();
        f.store.put(&b, "mine", b"1", 0).unwrap();
        // b knows something a does not, and a wrote k which b has not seen.
        let err = f.store.put(&b, "k", b"2", 1).unwrap_err();
        match err {
            StateError::Stale { source, .. } => {
                assert_eq!(source.order, ClockOrder::Concurrent)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn eventual_mode_accepts_both_and_keeps_history() {
        let f = store();
        f.store.set_strict(false);
        let (a, b) = (id("a"), id("b"));
        assert_eq!(f.store.put(&a, "k", b"a", 0), Ok(1));
        let a_clock = f.clocks.clock_of(&a);
        assert_eq!(f.store.put(&b, "k", b"b", 0), Ok(2), "last writer wins");
        let b_clock = f.clocks.clock_of(&b);
        let final_clock = f.store.peek("k").unwrap().clock;
        assert!(final_clock.dominates(&a_clock) && final_clock.dominates(&b_clock));
        assert_eq!(f.store.peek("k").unwrap().value, b"b");
        // Back to strong: the rules apply again.
        f.store.set_strict(true);
        assert!(matches!(
            f.store.put(&a, "k", b"a2", 2),
            Err(StateError::Stale { .. })
        ));
    }

    #[test]
    fn read_committed_sees_the_latest() {
        let f = store();
        let (a, b) = (id("a"), id("b"));
        f.store.put(&a, "k", b"1", 0).unwrap();
        f.store.begin(&b);
        assert_eq!(f.store.get(&b, "k").unwrap().unwrap().value, b"1");
        f.store.put(&a, "k", b"2", 1).unwrap();
        assert_eq!(f.store.get(&b, "k").unwrap().unwrap().value, b"2");
        f.store.end(&b);
    }

    #[test]
    fn snapshot_reader_sees_the_old_value_until_it_begins_again() {
        let f = store();
        f.store.set_isolation(Isolation::Snapshot);
        let (a, b) = (id("a"), id("b"));
        f.store.put(&a, "k", b"old", 0).unwrap();
        f.store.begin(&b);
        f.store.put(&a, "k", b"new", 1).unwrap();
        f.store.put(&a, "fresh", b"f", 0).unwrap();
        f.store.delete(&a, "k", 2).unwrap();
        let seen = f.store.get(&b, "k").unwrap().unwrap();
        assert_eq!((seen.value.as_slice(), seen.version), (&b"old"[..], 1));
        assert_eq!(f.store.get(&b, "fresh").unwrap(), None);
        assert_eq!(f.store.keys(&b, "").unwrap(), vec!["k".to_owned()]);
        // Outside a transaction, snapshot is read committed.
        assert_eq!(f.store.get(&a, "k").unwrap(), None);
        f.store.end(&b);
        f.store.begin(&b);
        assert_eq!(f.store.get(&b, "k").unwrap(), None);
        assert_eq!(f.store.get(&b, "fresh").unwrap().unwrap().value, b"f");
        assert_eq!(f.store.keys(&b, "").unwrap(), vec!["fresh".to_owned()]);
        f.store.end(&b);
    }

    #[test]
    fn snapshot_first_committer_wins_even_in_eventual_mode() {
        let f = store();
        f.store.set_isolation(Isolation::Snapshot);
        f.store.set_strict(false);
        let (a, b) = (id("a"), id("b"));
        f.store.put(&a, "k", b"1", 0).unwrap();
        f.store.begin(&a);
        f.store.begin(&b);
        assert_eq!(f.store.put(&a, "k", b"a", 1), Ok(2));
        assert_eq!(
            f.store.put(&b, "k", b"b", 2),
            Err(StateError::Conflict {
                key: "k".into(),
                expected: 2,
                actual: 2
            })
        );
        assert!(matches!(
            f.store.delete(&b, "k", 2),
            Err(StateError::Conflict { .. })
        ));
        // b still sees its snapshot; a sees its own write and may write again.
        assert_eq!(f.store.get(&b, "k").unwrap().unwrap().value, b"1");
        assert_eq!(f.store.get(&a, "k").unwrap().unwrap().value, b"a");
        assert_eq!(f.store.put(&a, "k", b"a2", 2), Ok(3));
        // A key created by another after the snapshot also conflicts.
        f.store.put(&a, "new", b"n", 0).unwrap();
        assert!(matches!(
            f.store.put(&b, "new", b"m", 0),
            Err(StateError::Conflict { .. })
        ));
        f.store.end(&a);
        f.store.end(&b);
        f.store.begin(&b);
        assert_eq!(f.store.put(&b, "k", b"b", 3), Ok(4));
        f.store.end(&b);
    }

    #[test]
    fn snapshot_sees_own_writes_over_later_commits() {
        let f = store();
        f.store.set_isolation(Isolation::Snapshot);
        f.store.set_strict(false);
        let (a, b) = (id("a"), id("b"));
        f.store.begin(&a);
        f.store.put(&a, "k", b"mine", 0).unwrap();
        f.store.put(&b, "k", b"theirs", 0).unwrap();
        assert_eq!(f.store.get(&a, "k").unwrap().unwrap().value, b"mine");
        assert!(matches!(
            f.store.put(&a, "k", b"again", 1),
            Err(StateError::Conflict { .. })
        ));
        f.store.end(&a);
        assert_eq!(f.store.get(&a, "k").unwrap().unwrap().value, b"theirs");
    }

    #[test]
    fn old_revisions_are_pruned_when_no_snapshot_needs_them() {
        let f = store();
        f.store.set_isolation(Isolation::Snapshot);
        f.store.set_strict(false);
        let (a, b) = (id("a"), id("b"));
        for _ in 0..10 {
            f.store.put(&a, "k", b"x", 0).unwrap();
        }
        assert_eq!(f.store.retained_revisions(), 1, "nobody reads the past");
        f.store.begin(&b);
        for _ in 0..10 {
            f.store.put(&a, "k", b"y", 0).unwrap();
        }
        assert_eq!(
            f.store.retained_revisions(),
            2,
            "b's view and the latest, nothing in between"
        );
        assert_eq!(f.store.get(&b, "k").unwrap().unwrap().version, 10);
        f.store.end(&b);
        assert_eq!(f.store.retained_revisions(), 1);
        assert_eq!(f.store.get(&b, "k").unwrap().unwrap().version, 20);
        // A re-begin releases the old snapshot too.
        f.store.begin(&b);
        f.store.put(&a, "k", b"z", 0).unwrap();
        assert_eq!(f.store.retained_revisions(), 2);
        f.store.begin(&b);
        assert_eq!(f.store.retained_revisions(), 1);
        f.store.forget(&b);
    }

    #[test]
    fn tombstones_are_bounded_and_numbers_never_reused() {
        let f = fixture(StateLimits {
            max_keys: 2,
            ..StateLimits::default()
        });
        let a = id("a");
        for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
            let mut v = 0;
            for _ in 0..=i {
                v = f.store.put(&a, key, b"x", v).unwrap();
            }
            f.store.delete(&a, key, v).unwrap();
        }
        // k1's tombstone (version 1) was forgotten; k2 (2) and k3 (3) remain.
        assert_eq!(f.store.retained_revisions(), 2);
        assert_eq!(f.store.put(&a, "k3", b"x", 0), Ok(4));
        assert_eq!(
            f.store.put(&a, "k1", b"x", 0),
            Ok(2),
            "k1 starts above the floor, never at a number it had"
        );
        f.store.delete(&a, "k3", 4).unwrap();
        assert_eq!(
            f.store.put(&a, "fresh", b"x", 0),
            Ok(2),
            "so does a brand-new key"
        );
        f.store.delete(&a, "k1", 2).unwrap();
        assert_eq!(
            f.store.put(&a, "k2", b"x", 0),
            Ok(3),
            "k2 gets a number it never had"
        );
    }

    #[test]
    fn serializable_needs_locks() {
        let f = store();
        f.store.set_isolation(Isolation::Serializable);
        let a = id("a");
        f.store.begin(&a);
        assert_eq!(
            f.store.get(&a, "k"),
            Err(StateError::LockRequired {
                key: "k".into(),
                mode: LockMode::Read
            })
        );
        assert_eq!(
            f.store.put(&a, "k", b"x", 0),
            Err(StateError::LockRequired {
                key: "k".into(),
                mode: LockMode::Write
            })
        );
        let r = LockResource::key("k");
        f.locks.try_acquire(&a, &r, LockMode::Read).unwrap();
        assert_eq!(f.store.get(&a, "k"), Ok(None));
        assert!(matches!(
            f.store.put(&a, "k", b"x", 0),
            Err(StateError::LockRequired {
                mode: LockMode::Write,
                ..
            })
        ));
        assert_eq!(f.store.usage(), (0, 0));
        f.locks.try_acquire(&a, &r, LockMode::Write).unwrap();
        assert_eq!(f.store.put(&a, "k", b"x", 0), Ok(1));
        assert_eq!(f.store.get(&a, "k").unwrap().unwrap().version, 1);
        assert_eq!(f.store.delete(&a, "k", 1), Ok(1));
        f.store.end(&a);
        f.locks.release_all(&a);
        assert!(matches!(
            f.store.get(&a, "k"),
            Err(StateError::LockRequired { .. })
        ));
    }

    #[test]
    fn serializable_listing_is_phantom_protected() {
        let f = store();
        f.store.set_isolation(Isolation::Serializable);
        let (a, b) = (id("a"), id("b"));
        let lock = |who: &AgentId, key: &str, mode| {
            f.locks
                .try_acquire(who, &LockResource::key(key), mode)
                .unwrap()
        };
        assert!(matches!(
            f.store.keys(&a, "find"),
            Err(StateError::LockRequired {
                mode: LockMode::Read,
                ..
            })
        ));
        lock(&a, "find", LockMode::Read);
        assert_eq!(f.store.keys(&a, "find"), Ok(vec![]));
        // b may not create a key a's range covers...
        lock(&b, "findings", LockMode::Write);
        assert_eq!(
            f.store.put(&b, "findings", b"x", 0),
            Err(StateError::LockRequired {
                key: "find".into(),
                mode: LockMode::Write
            })
        );
        // ...and while b holds a write lock under the prefix, a may not list.
        lock(&a, "fin", LockMode::Read);
        assert_eq!(
            f.store.keys(&a, "fin"),
            Err(StateError::LockRequired {
                key: "findings".into(),
                mode: LockMode::Read
            })
        );
        // Outside the range, or once a's range lock is gone, b proceeds.
        lock(&b, "other", LockMode::Write);
        assert_eq!(f.store.put(&b, "other", b"o", 0), Ok(1));
        f.locks.release_all(&a);
        assert_eq!(f.store.put(&b, "findings", b"x", 0), Ok(1));
        // Updating an existing key does not change membership.
        lock(&a, "", LockMode::Read);
        assert_eq!(f.store.put(&b, "findings", b"y", 1), Ok(2));
        assert!(matches!(
            f.store.delete(&b, "findings", 2),
            Err(StateError::LockRequired { key, .. }) if key.is_empty()
        ));
    }

    #[test]
    fn keys_are_validated() {
        let f = store();
        let a = id("a");
        let long = "k".repeat(257);
        for (key, why) in [
            ("", "empty"),
            (long.as_str(), "257 bytes"),
            ("a\u{0}b", "control character"),
            ("tab\there", "control character"),
        ] {
            match f.store.put(&a, key, b"x", 0) {
                Err(StateError::InvalidKey { key: k, reason }) => {
                    assert!(k.chars().count() <= 64, "{why}");
                    assert!(reason.contains(why), "{why}: {reason}");
                }
                other => panic!("{why}: {other:?}"),
            }
            assert!(matches!(
                f.store.get(&a, key),
                Err(StateError::InvalidKey { .. })
            ));
        }
        assert!(f.store.put(&a, &"k".repeat(256), b"x", 0).is_ok());
        assert_eq!(f.store.keys(&a, ""), Ok(vec!["k".repeat(256)]));
        assert!(matches!(
            f.store.keys(&a, "\n"),
            Err(StateError::InvalidKey { .. })
        ));
        assert_eq!(f.store.usage(), (1, 257));
    }

    #[test]
    fn a_refused_write_changes_nothing() {
        let f = fixture(StateLimits {
            max_keys: 2,
            max_key_bytes: 8,
            max_value_bytes: 10,
            max_total_bytes: 20,
        });
        let a = id("a");
        assert_eq!(f.store.put(&a, "k1", b"0123456789", 0), Ok(1));
        let clock = f.clocks.clock_of(&a);
        let too_big = f.store.put(&a, "k2", b"01234567890", 0);
        assert!(
            matches!(&too_big, Err(StateError::Quota { key, reason }) if key == "k2" && reason.contains("11 bytes")),
            "{too_big:?}"
        );
        // 12 + 2 + 8 > 20.
        let over_total = f.store.put(&a, "k2", b"01234567", 0);
        assert!(
            matches!(&over_total, Err(StateError::Quota { reason, .. }) if reason.contains("22 bytes")),
            "{over_total:?}"
        );
        // Growing an existing value counts the difference only.
        assert!(matches!(
            f.store.put(&a, "k1", b"01234567890", 1),
            Err(StateError::Quota { .. })
        ));
        assert_eq!(f.store.put(&a, "k2", b"0123", 0), Ok(1));
        assert!(matches!(
            f.store.put(&a, "k3", b"", 0),
            Err(StateError::Quota { reason, .. }) if reason.contains("2 keys")
        ));
        let earlier = f.store.peek("k1").unwrap();
        assert_eq!(earlier.value, b"0123456789");
        assert_eq!(earlier.version, 1);
        assert_eq!(f.store.usage(), (2, 18));
        // Refusals did not tick a's clock: only the k2 write did.
        let mut expected = clock;
        expected.tick(&a);
        assert_eq!(f.clocks.clock_of(&a), expected);
        // Freeing space makes room again.
        f.store.delete(&a, "k2", 1).unwrap();
        assert_eq!(f.store.usage(), (1, 12));
        assert_eq!(f.store.put(&a, "k3", b"", 0), Ok(1));
    }

    #[test]
    fn undo_restores_the_previous_value_and_existence_exactly() {
        let f = store();
        let a = id("a");
        let created = f.store.put_undoable(&a, "k", b"one", 0).unwrap();
        assert_eq!(
            (
                created.previous.as_deref(),
                created.previous_version,
                created.version
            ),
            (None, 0, 1)
        );
        let changed = f.store.put_undoable(&a, "k", b"two", 1).unwrap();
        assert_eq!(changed.previous.as_deref(), Some(&b"one"[..]));
        let deleted = f.store.delete_undoable(&a, "k", 2).unwrap();
        assert!(deleted.deleted && deleted.version == 2);
        f.store.undo(&a, &deleted).unwrap();
        assert_eq!(f.store.peek("k").unwrap().value, b"two");
        f.store.undo(&a, &changed).unwrap();
        let v = f.store.peek("k").unwrap();
        assert_eq!((v.value.as_slice(), v.version), (&b"one"[..], 1));
        f.store.undo(&a, &created).unwrap();
        assert_eq!(f.store.peek("k"), None);
        assert_eq!(f.store.usage(), (0, 0));
        // Numbers are never handed out twice.
        assert_eq!(f.store.put(&a, "k", b"three", 0), Ok(3));
    }

    #[test]
    fn undo_is_a_conflict_once_the_key_changed_since() {
        let f = store();
        let (a, b) = (id("a"), id("b"));
        let first = f.store.put_undoable(&a, "k", b"a", 0).unwrap();
        f.store.get(&b, "k").unwrap();
        f.store.put(&b, "k", b"b", 1).unwrap();
        let err = f.store.undo(&a, &first).unwrap_err();
        assert_eq!(
            err,
            StateError::UndoConflict {
                key: "k".into(),
                expected: "version 1".into(),
                actual: "version 2".into(),
            }
        );
        assert_eq!(f.store.peek("k").unwrap().value, b"b", "nothing changed");
        f.store.get(&b, "k").unwrap();
        let gone = f.store.delete_undoable(&b, "k", 2).unwrap();
        f.store.put(&b, "k", b"again", 0).unwrap();
        assert!(matches!(
            f.store.undo(&b, &gone),
            Err(StateError::UndoConflict { actual, .. }) if actual == "version 3"
        ));
    }

    #[test]
    fn undo_under_serializable_needs_no_lock_of_its_own_but_no_one_elses_either() {
        let f = store();
        let (a, b) = (id("a"), id("b"));
        let put = f.store.put_undoable(&a, "k", b"v", 0).unwrap();
        f.store.set_isolation(Isolation::Serializable);
        // Another agent's lock on the key: the undo would break its isolation.
        f.locks
            .try_acquire(&b, &LockResource::key("k"), LockMode::Read)
            .unwrap();
        assert!(matches!(
            f.store.undo(&a, &put),
            Err(StateError::LockRequired { .. })
        ));
        f.locks.release_all(&b);
        // The agent whose change it was no longer holds a lock (its call
        // ended): the compensation goes through.
        f.store.undo(&a, &put).unwrap();
        assert_eq!(f.store.peek("k"), None);
    }

    #[test]
    fn the_store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<StateStore>();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(usize, usize),
        /// Put naming the version the agent last saw.
        Put(usize, usize),
        /// Put naming a guessed version.
        Guess(usize, usize, u64),
        Delete(usize, usize),
    }

    fn op(agents: usize, keys: usize) -> impl Strategy<Value = Op> {
        let (ag, k) = (0..agents, 0..keys);
        prop_oneof![
            (ag.clone(), k.clone()).prop_map(|(a, k)| Op::Get(a, k)),
            (ag.clone(), k.clone()).prop_map(|(a, k)| Op::Put(a, k)),
            (ag.clone(), k.clone(), 0u64..6).prop_map(|(a, k, v)| Op::Guess(a, k, v)),
            (ag, k).prop_map(|(a, k)| Op::Delete(a, k)),
        ]
    }

    fn history() -> impl Strategy<Value = (usize, usize, Vec<Op>)> {
        (2usize..=3, 1usize..=2).prop_flat_map(|(agents, keys)| {
            (
                Just(agents),
                Just(keys),
                proptest::collection::vec(op(agents, keys), 1..60),
            )
        })
    }

    proptest! {
        #[test]
        fn strict_mode_accepts_only_writes_that_saw_the_latest((agents, keys, ops) in history()) {
            let f = store();
            let ids: Vec<AgentId> = (0..agents).map(|i| id(&format!("agent{i}"))).collect();
            let names: Vec<String> = (0..keys).map(|k| format!("key{k}")).collect();
            // What each agent last read or wrote, per key (0: absent).
            let mut seen: HashMap<(usize, usize), u64> = HashMap::new();
            // The model's clock of each key (tombstones included).
            let mut key_clock: HashMap<usize, VectorClock> = HashMap::new();
            for op in ops {
                let (a, k) = match op {
                    Op::Get(a, k) | Op::Put(a, k) | Op::Guess(a, k, _) | Op::Delete(a, k) => (a, k),
                };
                let (agent, key) = (&ids[a], names[k].as_str());
                let last = seen.get(&(a, k)).copied().unwrap_or(0);
                let before_version = f.store.peek(key).map_or(0, |v| v.version);
                let before_clock = f.clocks.clock_of(agent);
                let kc = key_clock.get(&k).cloned().unwrap_or_default();
                let (expected, result) = match op {
                    Op::Get(..) => {
                        let got = f.store.get(agent, key).unwrap();
                        seen.insert((a, k), got.map_or(0, |v| v.version));
                        continue;
                    }
                    Op::Put(..) => (last, f.store.put(agent, key, b"v", last)),
                    Op::Guess(_, _, v) => (v, f.store.put(agent, key, b"v", v)),
                    Op::Delete(..) => (last, f.store.delete(agent, key, last).map(|_| 0)),
                };
                match result {
                    Ok(now) => {
                        prop_assert_eq!(expected, before_version, "accepted a stale version");
                        prop_assert!(before_clock.dominates(&kc), "accepted a write that had not seen the latest");
                        if keys == 1 {
                            prop_assert_eq!(expected, last, "accepted a version the agent never saw");
                        }
                        seen.insert((a, k), now);
                        key_clock.insert(k, f.clocks.clock_of(agent));
                    }
                    Err(StateError::Conflict { actual, .. }) => {
                        prop_assert_eq!(actual, before_version);
                        prop_assert!(expected != before_version || matches!(op, Op::Delete(..)));
                    }
                    Err(StateError::Stale { .. }) => {
                        prop_assert!(!before_clock.dominates(&kc));
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
                if let Some(v) = f.store.peek(key) {
                    prop_assert_eq!(v.clock.compare(&key_clock[&k]), ClockOrder::Equal);
                }
            }
        }

        #[test]
        fn two_writers_from_the_same_version_never_both_succeed(
            first in 0usize..2, value_a in proptest::collection::vec(any::<u8>(), 0..8)
        ) {
            let f = store();
            let ids = [id("a"), id("b")];
            f.store.put(&ids[0], "k", b"init", 0).unwrap();
            let v0 = f.store.get(&ids[0], "k").unwrap().unwrap().version;
            let v1 = f.store.get(&ids[1], "k").unwrap().unwrap().version;
            let r1 = f.store.put(&ids[first], "k", &value_a, [v0, v1][first]);
            let other = 1 - first;
            let r2 = f.store.put(&ids[other], "k", b"late", [v0, v1][other]);
            prop_assert!(r1.is_ok());
            let refused = matches!(r2, Err(StateError::Conflict { .. } | StateError::Stale { .. }));
            prop_assert!(refused, "second writer accepted: {:?}", r2);
            prop_assert_eq!(f.store.peek("k").unwrap().value, value_a);
        }
    }
}
