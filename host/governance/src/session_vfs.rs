//! The session VFS: one shared area and one private area per agent, with
//! ACLs, quotas, content hashes, per-path vector clocks, undo records and
//! snapshots (DESIGN.md §5; SEMANTICS.md, "Consistency").
//!
//! # Layout
//! Everything lives in `<sessions>/<session id>/`, created on the first
//! operation that needs it (a session that never touches files costs no
//! syscalls):
//!
//! - `files/shared/…`: the shared area;
//! - `files/agents/<agent id>/…`: one private area per agent;
//! - `undo/<n>`: old contents kept by undo record `n`;
//! - `snapshots/<n>/…`: byte copies of `files/`.
//!
//! Each area is opened as its own `cap_std::fs::Dir` and wrapped in a
//! [`Vfs`], so cap-std confines every guest operation to that one area: a
//! symlink planted in `shared/` that points into a private area, into another
//! session or anywhere else outside `shared/` is refused.
//!
//! # Guest namespace
//! A guest path whose first component is `shared` names the shared area
//! (`shared/doc.md`; `shared` alone is its root). Every other path names the
//! caller's own private area (`notes/a.txt` is
//! `files/agents/<caller>/notes/a.txt`), so no agent can even name another
//! agent's private files. Listing the root `""` shows the private root's
//! names plus `shared`.
//!
//! # What is a file
//! The in-memory metadata is the truth about which files exist. Regular files
//! this `SessionFiles` did not create (planted by the host, or left by an
//! earlier process under the same session id) are not files of the session:
//! reading, hashing, stating or changing them answers `NotFound` and
//! listings hide them. Symbolic links are never listed, never modified, and
//! never followed out of their area. FIFOs, sockets and device nodes (which
//! no guest can create) are never opened and never waited on: every
//! operation that meets one answers `Denied`, listings hide them, snapshots
//! and restores do not copy them (see [`SessionFiles::snapshot`]). A regular
//! file is opened only through `crate::open` (non-blocking, its type
//! checked on the handle), and one with other hard links is never changed in
//! place (appended to, truncated): the change would reach its other names,
//! possibly outside the session. The session's own links never outlive an
//! operation: a replaced file's old inode stays linked only at its undo
//! record once the new one is renamed over the path. Directories have no ACL and no clock;
//! they are counted against [`FileQuotas::max_dirs`] (the ones a change makes
//! explicitly with `create-dir` or implicitly as a new file's parents), and
//! creating one is a change like any other: undo record, event, audit delta.
//!
//! # Order of checks
//! Every change is: path validation → ACL → vector clock (strict mode) →
//! quota → keep undo data → the change → metadata (hash, size, ACL, clock,
//! usage) → undo record. A refusal at any step changes nothing.
//!
//! # Concurrency
//! One mutex per session guards the metadata and is held for the whole
//! operation, I/O included: per-session traffic is modest, and holding it
//! makes "check the quota / clock / ACL, then change" atomic. Sessions do not
//! share locks.
//!
//! ```
//! use std::sync::Arc;
//! use ahv_core::{AgentId, Ring, SessionId};
//! use ahv_governance::files::{Caller, FileSpace};
//! use ahv_governance::session_vfs::{FileQuotas, SessionFiles};
//! use ahv_governance::vclock::ClockTable;
//! use ahv_governance::vfs::VfsError;
//! use cap_std::{ambient_authority, fs::Dir};
//!
//! let tmp = tempfile::tempdir()?;
//! let sessions = Arc::new(Dir::open_ambient_dir(tmp.path(), ambient_authority())?);
//! let files = SessionFiles::new(
//!     sessions,
//!     SessionId::new("s-1")?,
//!     FileQuotas::default(),
//!     Arc::new(ClockTable::new()),
//! );
//! let (alice, bob) = (AgentId::new("alice")?, AgentId::new("bob")?);
//! let a = Caller::untraced(&alice, Ring::Standard);
//! let b = Caller::untraced(&bob, Ring::Standard);
//!
//! files.write(a, "notes.txt", b"mine")?; // alice's private area
//! let change = files.write(a, "shared/plan.md", b"v1")?; // the shared area
//! // bob's "notes.txt" is in bob's own private area: there is none.
//! assert!(matches!(files.read(b, "notes.txt"), Err(VfsError::NotFound { .. })));
//! assert_eq!(files.read(b, "shared/plan.md")?, b"v1");
//! // Sagas compensate with the undo record of each change.
//! files.undo(change.undo.expect("undo kept"))?;
//! assert!(files.read(b, "shared/plan.md").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ahv_core::{AgentId, Ring, SessionId};
use cap_std::fs::Dir;
use sha2::{Digest, Sha256};

use crate::files::{Access, Acl, Caller, FileChange, FileOp, FileSpace, Sha256Digest};
use crate::open::{self, Refusal};
use crate::path::{PathError, RESERVED_PREFIX, VfsPath};
use crate::vclock::{ClockOrder, ClockTable, VectorClock};
use crate::vfs::{EntryKind, Stat, Vfs, VfsError, VfsLimits};

/// Most agents one [`Access::Agents`] list may name (a session has at most
/// 1000 participants).
pub const MAX_ACL_AGENTS: usize = 1000;

/// Most snapshots a session keeps at once; each is a full byte copy, so the
/// number is bounded. [`SessionFiles::drop_snapshot`] frees one.
pub const MAX_SNAPSHOTS: usize = 64;

const SHARED: &str = "shared";
const FILES_DIR: &str = "files";
const SHARED_DIR: &str = "files/shared";
const AGENTS_DIR: &str = "files/agents";
const UNDO_DIR: &str = "undo";
const SNAPSHOTS_DIR: &str = "snapshots";
const RESTORE_TMP: &str = "restore.tmp";
const TRASH_TMP: &str = "trash.tmp";
/// Deepest tree a snapshot copies: `agents/<id>/` plus the deepest guest path.
const MAX_TREE_DEPTH: usize = crate::path::MAX_DEPTH + 4;
/// How errors name the session's storage when no guest path is involved.
const SESSION_PATH: &str = "(session files)";

/// Limits of one session's files. Every field is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileQuotas {
    /// Largest file, in bytes (default 16 MiB).
    pub max_file_bytes: u64,
    /// Largest total size of the session's regular files, shared and private
    /// areas together, in bytes (default 256 MiB). It also bounds the old
    /// contents the undo log keeps on disk.
    pub max_total_bytes: u64,
    /// Most regular files in the session, all areas together (default 10 000).
    pub max_files: u64,
    /// Most directories in the session below its area roots, all areas
    /// together (default 10 000): without it a guest could exhaust the host's
    /// inodes with empty directories, which no byte or file quota sees.
    pub max_dirs: u64,
    /// Most names one listing returns (default 10 000).
    pub max_list_entries: usize,
    /// Most undo records kept; the oldest are pruned first (default 10 000).
    pub max_undo_records: usize,
}

impl Default for FileQuotas {
    fn default() -> Self {
        FileQuotas {
            max_file_bytes: 16 << 20,
            max_total_bytes: 256 << 20,
            max_files: 10_000,
            max_dirs: 10_000,
            max_list_entries: 10_000,
            max_undo_records: 10_000,
        }
    }
}

/// A snapshot taken by [`SessionFiles::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its id, for [`SessionFiles::restore`].
    pub id: u64,
    /// Regular files in it.
    pub files: u64,
    /// Their total size, in bytes.
    pub bytes: u64,
}

/// One undo record, as listed by [`SessionFiles::undo_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoInfo {
    /// Its id, for [`SessionFiles::undo`] (also in [`FileChange::undo`]).
    pub id: u64,
    /// The agent that made the change.
    pub agent: AgentId,
    /// The change.
    pub op: FileOp,
    /// The guest path as that agent names it (the source, for a rename).
    pub path: String,
    /// The destination of a rename.
    pub to: Option<String>,
}

/// What the session's regular files use, all areas together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Number of regular files.
    pub files: u64,
    /// Their total size, in bytes.
    pub bytes: u64,
    /// Directories below the area roots (the roots are not counted).
    pub dirs: u64,
}

/// The files of one shared session: the shared area and one private area per
/// agent, governed by ACLs, quotas, vector clocks and undo records (see the
/// [module docs](self)).
pub struct SessionFiles {
    sessions: Arc<Dir>,
    open: Arc<OpenDirs>,
    session: SessionId,
    quotas: FileQuotas,
    clocks: Arc<ClockTable>,
    strict: AtomicBool,
    inner: Mutex<Inner>,
}

impl Drop for SessionFiles {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        self.open.take(&mut inner.dirs);
    }
}

impl fmt::Debug for SessionFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionFiles")
            .field("session", &self.session)
            .field("strict", &self.strict.load(Ordering::Relaxed))
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

/// Which area a guest path names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Area {
    Shared,
    Private(AgentId),
}

impl Area {
    /// The guest path of `rel` (a path inside this area).
    fn guest(&self, rel: &str) -> String {
        let rel = if rel == "." { "" } else { rel };
        match (self, rel.is_empty()) {
            (Area::Shared, true) => SHARED.to_string(),
            (Area::Shared, false) => format!("{SHARED}/{rel}"),
            (Area::Private(_), true) => ".".to_string(),
            (Area::Private(_), false) => rel.to_string(),
        }
    }
}

/// A place in the session: an area and a normalised path inside it (`""` is
/// the area's root).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    area: Area,
    rel: String,
}

impl Key {
    fn guest(&self) -> String {
        self.area.guest(&self.rel)
    }

    fn is_root(&self) -> bool {
        self.rel.is_empty()
    }

    /// This key with `suffix` (empty, or starting with `/`) appended.
    fn with_suffix(&self, suffix: &str) -> Key {
        Key {
            area: self.area.clone(),
            rel: format!("{}{suffix}", self.rel),
        }
    }

    fn child(&self, name: &str) -> Key {
        Key {
            area: self.area.clone(),
            rel: if self.rel.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", self.rel)
            },
        }
    }

    /// The path as given to cap-std inside the area's directory.
    fn at(&self) -> &str {
        if self.rel.is_empty() { "." } else { &self.rel }
    }
}

/// Maps a validated guest path to its area.
fn resolve(agent: &AgentId, p: &VfsPath) -> Key {
    let s = if p.is_root() { "" } else { p.as_str() };
    let (area, rel) = if s == SHARED {
        (Area::Shared, "")
    } else if let Some(rest) = s.strip_prefix("shared/") {
        (Area::Shared, rest)
    } else {
        (Area::Private(agent.clone()), s)
    };
    Key {
        area,
        rel: rel.to_string(),
    }
}

/// A path that may name a root (for listing, stat, create-dir).
fn dir_key(agent: &AgentId, path: &str) -> Result<Key, VfsError> {
    Ok(resolve(agent, &VfsPath::parse_dir(path)?))
}

/// A path that must name an entry, not a root.
fn file_key(agent: &AgentId, path: &str) -> Result<Key, VfsError> {
    let p = VfsPath::parse(path)?;
    let key = resolve(agent, &p);
    if key.is_root() {
        return Err(PathError::Empty {
            path: p.to_string(),
        }
        .into());
    }
    Ok(key)
}

/// The key of a path relative to `files/` (as met while copying trees).
fn files_key(rel: &str) -> Option<Key> {
    if let Some(rest) = rel.strip_prefix("shared/") {
        return Some(Key {
            area: Area::Shared,
            rel: rest.to_string(),
        });
    }
    let (agent, rest) = rel.strip_prefix("agents/")?.split_once('/')?;
    Some(Key {
        area: Area::Private(AgentId::new(agent).ok()?),
        rel: rest.to_string(),
    })
}

/// What the session knows about one regular file.
#[derive(Clone)]
struct FileMeta {
    /// `Some` for shared files; private files are their owner's alone.
    acl: Option<Acl>,
    size: u64,
    digest: Sha256Digest,
    /// SHA-256 state after all `size` bytes, so an append hashes only what it adds.
    hasher: Sha256,
    /// The clock of the path's last write.
    clock: VectorClock,
}

impl fmt::Debug for FileMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileMeta")
            .field("acl", &self.acl)
            .field("size", &self.size)
            .field("digest", &hex::encode(self.digest))
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl FileMeta {
    fn new(contents: &[u8], acl: Option<Acl>, clock: VectorClock) -> FileMeta {
        let hasher = Sha256::new_with_prefix(contents);
        FileMeta {
            acl,
            size: contents.len() as u64,
            digest: hasher.clone().finalize().into(),
            hasher,
            clock,
        }
    }

    fn appended(&self, bytes: &[u8], clock: VectorClock) -> FileMeta {
        let mut hasher = self.hasher.clone();
        hasher.update(bytes);
        FileMeta {
            acl: self.acl.clone(),
            size: self.size.saturating_add(bytes.len() as u64),
            digest: hasher.clone().finalize().into(),
            hasher,
            clock,
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.size,
            digest: self.digest,
            acl: self.acl.clone(),
        }
    }

    fn matches(&self, f: &Fingerprint) -> bool {
        self.size == f.size && self.digest == f.digest && self.acl == f.acl
    }
}

/// The state a change left a file in; an undo checks it is still so.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    size: u64,
    digest: Sha256Digest,
    acl: Option<Acl>,
}

/// How to compensate one change.
#[derive(Debug)]
enum Undo {
    /// A write or append created the file (and these directories, deepest first): delete them.
    Created {
        after: Fingerprint,
        made_dirs: Vec<String>,
    },
    /// A write replaced the file; the old inode is hard-linked at `undo/<id>`.
    Replaced {
        before: Box<FileMeta>,
        after: Fingerprint,
    },
    /// An append: shorten back to the old length.
    Appended {
        before: Box<FileMeta>,
        after: Fingerprint,
    },
    /// A truncation; the cut bytes are at `undo/<id>`.
    Truncated {
        before: Box<FileMeta>,
        after: Fingerprint,
    },
    /// A file deletion; the file itself was moved to `undo/<id>`.
    Deleted { before: Box<FileMeta> },
    /// An empty directory was deleted.
    DirDeleted,
    /// `create-dir` made these directories, deepest (the one asked for) first.
    DirCreated { made: Vec<String> },
    /// A rename (of a file, or of a directory and the files below it).
    Renamed {
        moved: Vec<Moved>,
        made_dirs: Vec<String>,
    },
    /// An ACL change.
    AclSet {
        before: Box<FileMeta>,
        after: Fingerprint,
    },
}

/// One file moved by a rename: its path below the renamed entry (`""` for
/// the entry itself, else `/…`), its metadata before, its state after.
#[derive(Debug)]
struct Moved {
    suffix: String,
    before: FileMeta,
    after: Fingerprint,
}

#[derive(Debug)]
struct Record {
    id: u64,
    agent: AgentId,
    op: FileOp,
    key: Key,
    to: Option<Key>,
    undo: Undo,
    /// Bytes this record keeps at `undo/<id>`.
    blob_bytes: u64,
}

impl Record {
    fn has_blob(&self) -> bool {
        matches!(
            self.undo,
            Undo::Replaced { .. } | Undo::Truncated { .. } | Undo::Deleted { .. }
        )
    }

    fn info(&self) -> UndoInfo {
        UndoInfo {
            id: self.id,
            agent: self.agent.clone(),
            op: self.op,
            path: self.key.guest(),
            to: self.to.as_ref().map(Key::guest),
        }
    }

    fn conflict(&self, path: String, why: &str) -> VfsError {
        VfsError::Conflict {
            path,
            reason: format!(
                "cannot apply undo record {} ({} of {} by {}): {why}",
                self.id,
                self.op.name(),
                self.key.guest(),
                self.agent
            ),
        }
    }
}

fn blob(id: u64) -> String {
    id.to_string()
}

#[derive(Debug, Clone)]
struct Snapshot {
    files: BTreeMap<Key, FileMeta>,
    usage: Usage,
}

/// The session's metadata.
#[derive(Debug, Default)]
struct Db {
    files: BTreeMap<Key, FileMeta>,
    usage: Usage,
    log: VecDeque<Record>,
    /// Bytes kept on disk by the records in `log`.
    log_bytes: u64,
    last_undo: u64,
    snapshots: BTreeMap<u64, Snapshot>,
    last_snapshot: u64,
}

impl Db {
    fn next_undo_id(&mut self) -> u64 {
        self.last_undo += 1;
        self.last_undo
    }

    /// Sets or removes one file's metadata, keeping the usage in step.
    fn put(&mut self, key: Key, meta: Option<FileMeta>) {
        if let Some(m) = &meta {
            self.usage.files += 1;
            self.usage.bytes = self.usage.bytes.saturating_add(m.size);
        }
        let old = match meta {
            Some(m) => self.files.insert(key, m),
            None => self.files.remove(&key),
        };
        if let Some(o) = old {
            self.usage.files = self.usage.files.saturating_sub(1);
            self.usage.bytes = self.usage.bytes.saturating_sub(o.size);
        }
    }

    /// The files strictly below directory `dir`, with their suffix (`/…`).
    fn files_under(&self, dir: &Key) -> Vec<(String, FileMeta)> {
        // Every path below `d` sorts in [`d/`, `d0`): '0' follows '/'.
        let lo = dir.with_suffix("/");
        let hi = dir.with_suffix("0");
        self.files
            .range(lo..hi)
            .map(|(k, m)| (k.rel[dir.rel.len()..].to_string(), m.clone()))
            .collect()
    }

    fn has_files_under(&self, dir: &Key) -> bool {
        self.files
            .range(dir.with_suffix("/")..dir.with_suffix("0"))
            .next()
            .is_some()
    }

    /// Appends a record and prunes the oldest beyond the bounds; the id, if
    /// the record is still kept.
    fn record(&mut self, undo_dir: &Dir, quotas: &FileQuotas, rec: Record) -> Option<u64> {
        let id = rec.id;
        self.log_bytes = self.log_bytes.saturating_add(rec.blob_bytes);
        self.log.push_back(rec);
        while self.log.len() > quotas.max_undo_records || self.log_bytes > quotas.max_total_bytes {
            let Some(old) = self.log.pop_front() else {
                break;
            };
            self.log_bytes = self.log_bytes.saturating_sub(old.blob_bytes);
            if old.has_blob() {
                discard_blob(undo_dir, old.id);
            }
        }
        self.log.back().filter(|r| r.id == id).map(|r| r.id)
    }
}

/// The vector-clock entry a restore ticks (see [`SessionFiles::restore`]).
/// It is in the reserved namespace
/// ([`crate::session::RESERVED_AGENT_PREFIX`]): no agent joins under it.
pub const RESTORE_CLOCK: &str = "ahv:restore";

fn restore_clock() -> AgentId {
    AgentId::new(RESTORE_CLOCK).unwrap_or_else(|_| unreachable!("a valid agent id"))
}

/// Most directory descriptors idle sessions keep open by default (see
/// [`OpenDirs`]).
pub const DEFAULT_OPEN_DIRS: usize = 512;

/// A bound on the directory descriptors that sessions keep open *between*
/// file operations, shared by every session of a hypervisor. A session's
/// files use one descriptor for its directory, one for its undo records and
/// one per area it has touched (shared, and each agent's private area). Past
/// the bound a session closes them after each operation and reopens them for
/// the next (a few `openat` calls), so a hypervisor with thousands of live
/// sessions, or a session with hundreds of agents, never runs out of
/// descriptors — which would also fail its audit log. Operations in progress
/// hold theirs until they end, so the process may briefly exceed the bound by
/// what its concurrent operations use.
#[derive(Debug)]
pub struct OpenDirs {
    held: AtomicUsize,
    max: usize,
}

impl OpenDirs {
    /// A budget of `max` descriptors.
    pub fn new(max: usize) -> Arc<OpenDirs> {
        Arc::new(OpenDirs {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// Descriptors idle sessions keep open now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes `n` more if they fit.
    fn try_hold(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&after| after <= self.max)
            })
            .is_ok()
    }

    /// Takes the handles kept in `held` out of the budget: closed when the
    /// caller drops them, or held again through [`OpenDirs::try_hold`].
    fn take(&self, held: &mut Option<Dirs>) -> Option<Dirs> {
        let d = held.take()?;
        self.release(d.descriptors());
        Some(d)
    }

    fn release(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(n))
            });
    }
}

/// The session's directory handles, opened on first use.
#[derive(Debug)]
struct Dirs {
    root: Dir,
    undo: Dir,
    shared: Option<Arc<Vfs>>,
    private: HashMap<AgentId, Arc<Vfs>>,
    limits: VfsLimits,
}

impl Dirs {
    /// Descriptors these handles hold.
    fn descriptors(&self) -> usize {
        2 + usize::from(self.shared.is_some()) + self.private.len()
    }

    /// The area's VFS, opening (and creating) its directory on first use.
    fn area(&mut self, area: &Area) -> Result<Arc<Vfs>, VfsError> {
        match area {
            Area::Shared => {
                if let Some(v) = &self.shared {
                    return Ok(v.clone());
                }
                let dir = open_area(&self.root, SHARED_DIR)
                    .map_err(|e| io_error("open", SHARED.to_string(), e))?;
                let v = Arc::new(Vfs::new(dir, self.limits.clone()));
                self.shared = Some(v.clone());
                Ok(v)
            }
            Area::Private(agent) => {
                if let Some(v) = self.private.get(agent) {
                    return Ok(v.clone());
                }
                let dir = open_area(&self.root, &format!("{AGENTS_DIR}/{agent}"))
                    .map_err(|e| io_error("open", ".".to_string(), e))?;
                let v = Arc::new(Vfs::new(dir, self.limits.clone()));
                self.private.insert(agent.clone(), v.clone());
                Ok(v)
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Open between operations only while the [`OpenDirs`] budget holds them.
    dirs: Option<Dirs>,
    /// Whether the session directory was opened (and cleaned) before: a
    /// reopening must keep the undo records and snapshots.
    opened: bool,
    db: Db,
}

/// What an ACL check asks for.
#[derive(Debug, Clone, Copy)]
enum Need {
    Read,
    Write,
}

impl SessionFiles {
    /// The files of session `session`, kept in `<sessions>/<session id>/`.
    /// Nothing is touched on disk until the first operation that needs it.
    /// Consistency starts strict (strong).
    pub fn new(
        sessions: Arc<Dir>,
        session: SessionId,
        quotas: FileQuotas,
        clocks: Arc<ClockTable>,
    ) -> SessionFiles {
        SessionFiles {
            sessions,
            open: OpenDirs::new(DEFAULT_OPEN_DIRS),
            session,
            quotas,
            clocks,
            strict: AtomicBool::new(true),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Shares `open` (one per hypervisor) instead of a budget of this
    /// session's own of [`DEFAULT_OPEN_DIRS`].
    #[must_use]
    pub fn with_open_dirs(mut self, open: Arc<OpenDirs>) -> SessionFiles {
        // Handles held under the old budget are given back to it (closed).
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        self.open.take(&mut inner.dirs);
        self.open = open;
        self
    }

    /// Strong (`true`, the default) or eventual consistency; may change at
    /// run time. In eventual mode writes skip the vector-clock check but still
    /// advance the clocks.
    pub fn set_strict(&self, strict: bool) {
        self.strict.store(strict, Ordering::Relaxed);
    }

    /// Copies every file (bytes, not links) and directory of the session, with
    /// its metadata (ACLs, hashes, clocks, usage), into a new snapshot.
    /// Snapshots do not count against the quotas; at most [`MAX_SNAPSHOTS`]
    /// are kept at once.
    ///
    /// Only the session's files are copied, each opened without waiting
    /// (see `crate::open`); entries that are not files of the session
    /// (FIFOs, sockets, device nodes, symbolic links, unknown files) are
    /// skipped without being opened. A file of the session that is no longer
    /// a regular file on disk, or is missing, fails the snapshot: it could not
    /// be exact. Directories deeper than any guest can make (planted from
    /// outside) are created but their contents are not copied.
    ///
    /// # Errors
    /// `Quota` when [`MAX_SNAPSHOTS`] are kept already; `Denied` naming a
    /// file of the session that is now a FIFO, socket, device node or
    /// symbolic link; `Io` (naming the snapshot) when copying fails. Nothing
    /// is kept on error.
    pub fn snapshot(&self) -> Result<SnapshotInfo, VfsError> {
        self.with(|dirs, db| {
            if db.snapshots.len() >= MAX_SNAPSHOTS {
                return Err(VfsError::Quota {
                    path: SNAPSHOTS_DIR.to_string(),
                    reason: format!(
                        "the session keeps {} snapshots, the limit is {MAX_SNAPSHOTS}; drop one first",
                        db.snapshots.len()
                    ),
                });
            }
            db.last_snapshot += 1;
            let id = db.last_snapshot;
            let fail = move |e: io::Error| io_error("snapshot", format!("snapshot {id}"), e);
            let name = format!("{SNAPSHOTS_DIR}/{id}");
            dirs.root.create_dir_all(SNAPSHOTS_DIR).map_err(fail)?;
            remove_all_if_exists(&dirs.root, &name).map_err(fail)?;
            dirs.root.create_dir(&name).map_err(fail)?;
            let copied = copy_files(&dirs.root, FILES_DIR, &name, &db.files, self.max_file());
            if let Err(e) = copied {
                let _ = dirs.root.remove_dir_all(&name);
                return Err(e.into_vfs("snapshot", id));
            }
            db.snapshots.insert(
                id,
                Snapshot {
                    files: db.files.clone(),
                    usage: db.usage,
                },
            );
            Ok(SnapshotInfo {
                id,
                files: db.usage.files,
                bytes: db.usage.bytes,
            })
        })
    }

    /// Makes the session's files exactly equal to snapshot `id` (files added
    /// since are removed, removed ones come back, changed ones change back)
    /// and restores their metadata (ACLs, hashes, clocks, usage). The snapshot
    /// is kept and may be restored again.
    ///
    /// The undo log is cleared: its records describe changes to a history
    /// the restore has just discarded, and compensating one against the
    /// restored files (putting back "old" bytes over a restored file, deleting
    /// a file the snapshot holds) would corrupt them.
    ///
    /// The new tree is built beside the live one and swapped in by two
    /// renames, so a failed restore leaves the session as it was.
    ///
    /// Contents, ACLs and sizes come back exactly; the vector clocks move
    /// *forward*: every restored file's clock gains a tick of the
    /// [`RESTORE_CLOCK`] entry, so in strict mode an agent must read again
    /// (after the restore) before it writes — a write based on what it read
    /// before the restore is `stale`, never silently accepted over the
    /// restored bytes. Rolling the clocks back instead would let exactly
    /// those writes through.
    ///
    /// # Errors
    /// `Io` naming the snapshot when `id` is unknown or copying fails.
    pub fn restore(&self, id: u64) -> Result<(), VfsError> {
        self.with(|dirs, db| {
            let Some(snap) = db.snapshots.get(&id).cloned() else {
                return Err(no_snapshot("restore", id));
            };
            let fail = move |e: io::Error| io_error("restore", format!("snapshot {id}"), e);
            remove_all_if_exists(&dirs.root, RESTORE_TMP).map_err(fail)?;
            dirs.root.create_dir(RESTORE_TMP).map_err(fail)?;
            let copied = copy_files(
                &dirs.root,
                &format!("{SNAPSHOTS_DIR}/{id}"),
                RESTORE_TMP,
                &snap.files,
                self.max_file(),
            );
            if let Err(e) = copied {
                let _ = dirs.root.remove_dir_all(RESTORE_TMP);
                return Err(e.into_vfs("restore", id));
            }
            remove_all_if_exists(&dirs.root, TRASH_TMP).map_err(fail)?;
            dirs.root
                .rename(FILES_DIR, &dirs.root, TRASH_TMP)
                .map_err(fail)?;
            if let Err(e) = dirs.root.rename(RESTORE_TMP, &dirs.root, FILES_DIR) {
                // Put the live tree back: the session is as it was.
                let _ = dirs.root.rename(TRASH_TMP, &dirs.root, FILES_DIR);
                let _ = dirs.root.remove_dir_all(RESTORE_TMP);
                return Err(fail(e));
            }
            // The cached handles point into the old tree.
            dirs.shared = None;
            dirs.private.clear();
            if let Err(e) = dirs.root.remove_dir_all(TRASH_TMP) {
                tracing::warn!(session = %self.session, error = %e, "could not remove the replaced files");
            }
            for rec in db.log.drain(..) {
                if rec.has_blob() {
                    discard_blob(&dirs.undo, rec.id);
                }
            }
            db.log_bytes = 0;
            let stamp = self.clocks.stamp_write(&restore_clock(), &VectorClock::new());
            db.files = snap.files;
            for meta in db.files.values_mut() {
                meta.clock.merge(&stamp);
            }
            db.usage = snap.usage;
            Ok(())
        })
    }

    /// Deletes snapshot `id` and its copy.
    ///
    /// # Errors
    /// `Io` naming the snapshot when `id` is unknown or its copy cannot be
    /// removed (the snapshot is forgotten either way).
    pub fn drop_snapshot(&self, id: u64) -> Result<(), VfsError> {
        self.with(|dirs, db| {
            if db.snapshots.remove(&id).is_none() {
                return Err(no_snapshot("drop-snapshot", id));
            }
            dirs.root
                .remove_dir_all(format!("{SNAPSHOTS_DIR}/{id}"))
                .map_err(|e| io_error("drop-snapshot", format!("snapshot {id}"), e))
        })
    }

    /// Compensates the change recorded as undo record `id` exactly: bytes and
    /// metadata (hash, ACL, clock, usage) return to what they were before it,
    /// and the record is removed. Sagas undo their records newest first.
    /// Compensation is not limited by quotas (it puts back what was there).
    ///
    /// # Errors
    /// `Io` naming the record when it is unknown (already undone, pruned, or
    /// cleared by a restore); `Conflict` naming the record when the path
    /// changed since in a way that makes exact compensation impossible (a
    /// later change to it that has not been undone): nothing is changed and
    /// the record is kept; other `VfsError`s for I/O failures.
    pub fn undo(&self, id: u64) -> Result<(), VfsError> {
        self.with(|dirs, db| {
            let Some(pos) = db.log.iter().position(|r| r.id == id) else {
                return Err(VfsError::Io {
                    op: "undo",
                    path: format!("record {id}"),
                    message: "no such undo record (already undone, pruned from the log, or cleared by a restore)".into(),
                });
            };
            let Some(rec) = db.log.remove(pos) else {
                return Err(VfsError::Io {
                    op: "undo",
                    path: format!("record {id}"),
                    message: "no such undo record".into(),
                });
            };
            match self.compensate(dirs, db, &rec) {
                Ok(()) => {
                    db.log_bytes = db.log_bytes.saturating_sub(rec.blob_bytes);
                    if rec.has_blob() {
                        discard_blob(&dirs.undo, rec.id);
                    }
                    Ok(())
                }
                Err(e) => {
                    db.log.insert(pos, rec);
                    Err(e)
                }
            }
        })
    }

    /// The undo records kept, oldest first.
    pub fn undo_records(&self) -> Vec<UndoInfo> {
        self.lock().db.log.iter().map(Record::info).collect()
    }

    /// What the session's regular files use.
    pub fn usage(&self) -> Usage {
        self.lock().db.usage
    }

    /// Drops the cached directory handle of an agent that left; its private
    /// files stay on disk (and in snapshots and undo records).
    pub fn forget(&self, agent: &AgentId) {
        if let Some(dirs) = self.lock().dirs.as_mut()
            && dirs.private.remove(agent).is_some()
        {
            self.open.release(1);
        }
    }

    /// The canonical lock resource of a guest path: `shared/<p>` for the
    /// shared area (`shared` for its root), `private/<agent>/<p>` for the
    /// caller's private area (`private/<agent>` for its root). Touches no
    /// files.
    ///
    /// # Errors
    /// `InvalidPath` when the path is not valid.
    pub fn lock_path(&self, who: Caller<'_>, path: &str) -> Result<String, VfsError> {
        let key = dir_key(who.agent, path)?;
        Ok(match (&key.area, key.is_root()) {
            (Area::Shared, true) => SHARED.to_string(),
            (Area::Shared, false) => format!("{SHARED}/{}", key.rel),
            (Area::Private(a), true) => format!("private/{a}"),
            (Area::Private(a), false) => format!("private/{a}/{}", key.rel),
        })
    }

    /// The most bytes one copied file may have: the per-file quota (a file
    /// grown past it behind the session's back is not copied).
    fn max_file(&self) -> u64 {
        self.quotas.max_file_bytes
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the maps are still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` under the session lock with the directories opened.
    fn with<R>(
        &self,
        f: impl FnOnce(&mut Dirs, &mut Db) -> Result<R, VfsError>,
    ) -> Result<R, VfsError> {
        let mut guard = self.lock();
        let Inner { dirs, opened, db } = &mut *guard;
        let mut d = match self.open.take(dirs) {
            Some(d) => d,
            None => {
                let d = self.open_session(*opened)?;
                if !*opened {
                    // Directories already there (left under this id by an
                    // earlier process, or put there by the host) count too:
                    // deleting them must not make room past the quota.
                    db.usage.dirs += existing_dirs(&d.root);
                }
                d
            }
        };
        *opened = true;
        let r = f(&mut d, db);
        // Kept open for the next operation only within the budget.
        if self.open.try_hold(d.descriptors()) {
            *dirs = Some(d);
        }
        r
    }

    /// Creates and opens `<sessions>/<session>/`; a reopening (after the
    /// budget closed it) only opens.
    fn open_session(&self, reopen: bool) -> Result<Dirs, VfsError> {
        let fail = |e: io::Error| io_error("open", SESSION_PATH.to_string(), e);
        let root = open_area(&self.sessions, self.session.as_str()).map_err(fail)?;
        if !reopen {
            // Left-overs of an earlier process under this id: their ids would
            // collide with ours, and nothing here refers to them.
            for stale in [UNDO_DIR, SNAPSHOTS_DIR, RESTORE_TMP, TRASH_TMP] {
                remove_all_if_exists(&root, stale).map_err(fail)?;
            }
            root.create_dir_all(SHARED_DIR).map_err(fail)?;
            root.create_dir_all(AGENTS_DIR).map_err(fail)?;
            root.create_dir(UNDO_DIR).map_err(fail)?;
        }
        let undo = root.open_dir(UNDO_DIR).map_err(fail)?;
        Ok(Dirs {
            root,
            undo,
            shared: None,
            private: HashMap::new(),
            limits: VfsLimits {
                max_file_bytes: self.quotas.max_file_bytes,
                max_list_entries: self.quotas.max_list_entries,
            },
        })
    }

    fn check_clock(
        &self,
        agent: &AgentId,
        clock: &VectorClock,
        path: &str,
    ) -> Result<(), VfsError> {
        if !self.strict.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.clocks
            .check_write(agent, clock)
            .map_err(|e| VfsError::Conflict {
                path: path.to_string(),
                reason: format!(
                    "{} write: {e}",
                    if e.order == ClockOrder::Concurrent {
                        "concurrent"
                    } else {
                        "stale"
                    }
                ),
            })
    }

    /// Refuses a file of `new_size` bytes at `path` (replacing `old` bytes,
    /// or a new file) before anything changes.
    fn check_quota(
        &self,
        usage: &Usage,
        path: &str,
        old: Option<u64>,
        new_size: u64,
    ) -> Result<(), VfsError> {
        let q = &self.quotas;
        let quota = |reason: String| VfsError::Quota {
            path: path.to_string(),
            reason,
        };
        if new_size > q.max_file_bytes {
            return Err(quota(format!(
                "file would be {new_size} bytes; the per-file limit is {}",
                q.max_file_bytes
            )));
        }
        let total = usage
            .bytes
            .saturating_sub(old.unwrap_or(0))
            .saturating_add(new_size);
        if total > q.max_total_bytes {
            return Err(quota(format!(
                "the session's files would total {total} bytes ({} now); the limit is {}",
                usage.bytes, q.max_total_bytes
            )));
        }
        if old.is_none() && usage.files >= q.max_files {
            return Err(quota(format!(
                "the session has {} files; the limit is {}",
                usage.files, q.max_files
            )));
        }
        Ok(())
    }

    /// Refuses a change that would make `new` directories (beyond those the
    /// session has) before anything changes.
    fn check_dirs(&self, usage: &Usage, path: &str, new: usize) -> Result<(), VfsError> {
        let max = self.quotas.max_dirs;
        let after = usage.dirs.saturating_add(new as u64);
        if new > 0 && after > max {
            return Err(VfsError::Quota {
                path: path.to_string(),
                reason: format!(
                    "{new} new director{} would make {after}; the session's limit is {max}",
                    if new == 1 { "y" } else { "ies" }
                ),
            });
        }
        Ok(())
    }

    /// Why there is no file at `key`: a directory, a refused path, or nothing.
    fn missing(&self, dirs: &mut Dirs, key: &Key, op: &'static str) -> VfsError {
        let guest = key.guest();
        let vfs = match dirs.area(&key.area) {
            Ok(v) => v,
            Err(e) => return e,
        };
        match vfs.dir().symlink_metadata(key.at()) {
            Ok(m) if m.is_dir() => VfsError::Io {
                op,
                path: guest,
                message: "is a directory".into(),
            },
            Ok(m) => match open::special(m.file_type()) {
                Some(kind) => special_denied(guest, kind),
                None => VfsError::NotFound { path: guest },
            },
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => io_error(op, guest, e),
            Err(_) => VfsError::NotFound { path: guest },
        }
    }

    fn write_file(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &Key,
        contents: &[u8],
        op: FileOp,
    ) -> Result<FileChange, VfsError> {
        let guest = key.guest();
        let old = db.files.get(key);
        if let Some(m) = old {
            check_access(who, m, &guest, Need::Write)?;
        }
        let old_clock = old.map(|m| m.clock.clone()).unwrap_or_default();
        self.check_clock(who.agent, &old_clock, &guest)?;
        let size = contents.len() as u64;
        self.check_quota(&db.usage, &guest, old.map(|m| m.size), size)?;
        let before = old.cloned();
        // Only now: a refused write must not even create the caller's area.
        let vfs = dirs.area(&key.area)?;
        let id = db.next_undo_id();
        let made_dirs = match before {
            Some(_) => {
                // The atomic write renames a new inode over the path; this link
                // keeps the old bytes for the undo record.
                refuse_unservable(vfs.dir(), key, op.name())?;
                keep_old(
                    vfs.dir(),
                    &key.rel,
                    &dirs.undo,
                    &blob(id),
                    self.quotas.max_file_bytes,
                )
                .map_err(|r| refused(op.name(), guest.clone(), r))?;
                Vec::new()
            }
            None => missing_ancestors(vfs.dir(), &key.rel),
        };
        if let Err(e) = self.check_dirs(&db.usage, &guest, made_dirs.len()) {
            if before.is_some() {
                discard_blob(&dirs.undo, id);
            }
            return Err(e);
        }
        if let Err(e) = vfs.write(&key.rel, contents) {
            if before.is_some() {
                discard_blob(&dirs.undo, id);
            }
            db.usage.dirs += unmake_dirs(vfs.dir(), &made_dirs);
            return Err(in_guest_terms(e, &key.area));
        }
        db.usage.dirs += made_dirs.len() as u64;
        let acl = match &before {
            Some(b) => b.acl.clone(),
            None => creation_acl(who, key),
        };
        let meta = FileMeta::new(
            contents,
            acl,
            self.clocks.stamp_write(who.agent, &old_clock),
        );
        let after = meta.fingerprint();
        let digest = meta.digest;
        db.put(key.clone(), Some(meta));
        let before_digest = before.as_ref().map(|b| b.digest);
        let (undo, blob_bytes) = match before {
            Some(b) => {
                let bytes = b.size;
                (
                    Undo::Replaced {
                        before: Box::new(b),
                        after,
                    },
                    bytes,
                )
            }
            None => (Undo::Created { after, made_dirs }, 0),
        };
        let undo = db.record(
            &dirs.undo,
            &self.quotas,
            Record {
                id,
                agent: who.agent.clone(),
                op,
                key: key.clone(),
                to: None,
                undo,
                blob_bytes,
            },
        );
        Ok(FileChange {
            op,
            path: guest,
            to: None,
            before: before_digest,
            after: Some(digest),
            size,
            undo,
        })
    }

    fn append_file(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &Key,
        contents: &[u8],
    ) -> Result<FileChange, VfsError> {
        let Some(old) = db.files.get(key) else {
            // A new file; whatever unknown entry is on disk gets replaced, not extended.
            return self.write_file(dirs, db, who, key, contents, FileOp::Append);
        };
        let guest = key.guest();
        check_access(who, old, &guest, Need::Write)?;
        self.check_clock(who.agent, &old.clock, &guest)?;
        let new_size = old.size.saturating_add(contents.len() as u64);
        self.check_quota(&db.usage, &guest, Some(old.size), new_size)?;
        let before = old.clone();
        let vfs = dirs.area(&key.area)?;
        if let Err(e) = vfs.append(&key.rel, contents) {
            if matches!(e, VfsError::Io { .. }) {
                // A partial append must not survive the refusal.
                let _ = vfs.truncate(&key.rel, before.size);
            }
            return Err(in_guest_terms(e, &key.area));
        }
        let meta = before.appended(contents, self.clocks.stamp_write(who.agent, &before.clock));
        let after = meta.fingerprint();
        let digest = meta.digest;
        db.put(key.clone(), Some(meta));
        let id = db.next_undo_id();
        let before_digest = before.digest;
        let undo = db.record(
            &dirs.undo,
            &self.quotas,
            Record {
                id,
                agent: who.agent.clone(),
                op: FileOp::Append,
                key: key.clone(),
                to: None,
                undo: Undo::Appended {
                    before: Box::new(before),
                    after,
                },
                blob_bytes: 0,
            },
        );
        Ok(FileChange {
            op: FileOp::Append,
            path: guest,
            to: None,
            before: Some(before_digest),
            after: Some(digest),
            size: new_size,
            undo,
        })
    }

    fn truncate_file(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &Key,
        len: u64,
    ) -> Result<FileChange, VfsError> {
        let guest = key.guest();
        let Some(old) = db.files.get(key) else {
            return Err(self.missing(dirs, key, "truncate"));
        };
        check_access(who, old, &guest, Need::Write)?;
        if len > old.size {
            return Err(VfsError::Denied {
                path: guest,
                reason: format!(
                    "truncate only shortens: the file is {} bytes, {len} were asked for",
                    old.size
                ),
            });
        }
        self.check_clock(who.agent, &old.clock, &guest)?;
        let before = old.clone();
        let vfs = dirs.area(&key.area)?;
        let bytes = vfs
            .read(&key.rel)
            .map_err(|e| in_guest_terms(e, &key.area))?;
        if bytes.len() as u64 != before.size {
            return Err(VfsError::Io {
                op: "truncate",
                path: guest,
                message: "the file changed outside the session".into(),
            });
        }
        let at = usize::try_from(len).unwrap_or(usize::MAX).min(bytes.len());
        let (kept, cut) = bytes.split_at(at);
        let id = db.next_undo_id();
        open::write_new(&dirs.undo, &blob(id), cut)
            .map_err(|e| io_error("truncate", guest.clone(), e))?;
        if let Err(e) = vfs.truncate(&key.rel, len) {
            discard_blob(&dirs.undo, id);
            return Err(in_guest_terms(e, &key.area));
        }
        let meta = FileMeta::new(
            kept,
            before.acl.clone(),
            self.clocks.stamp_write(who.agent, &before.clock),
        );
        let after = meta.fingerprint();
        let digest = meta.digest;
        db.put(key.clone(), Some(meta));
        let before_digest = before.digest;
        let undo = db.record(
            &dirs.undo,
            &self.quotas,
            Record {
                id,
                agent: who.agent.clone(),
                op: FileOp::Truncate,
                key: key.clone(),
                to: None,
                undo: Undo::Truncated {
                    before: Box::new(before),
                    after,
                },
                blob_bytes: cut.len() as u64,
            },
        );
        Ok(FileChange {
            op: FileOp::Truncate,
            path: guest,
            to: None,
            before: Some(before_digest),
            after: Some(digest),
            size: len,
            undo,
        })
    }

    fn delete_entry(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &Key,
    ) -> Result<FileChange, VfsError> {
        let guest = key.guest();
        let vfs = dirs.area(&key.area)?;
        let id;
        let (undo, blob_bytes, before_digest) = if let Some(old) = db.files.get(key) {
            check_access(who, old, &guest, Need::Write)?;
            self.check_clock(who.agent, &old.clock, &guest)?;
            refuse_unservable(vfs.dir(), key, "delete")?;
            let before = old.clone();
            id = db.next_undo_id();
            // Moved aside, not removed: the undo record puts it back.
            vfs.dir()
                .rename(&key.rel, &dirs.undo, blob(id))
                .map_err(|e| io_error("delete", guest.clone(), e))?;
            self.clocks.stamp_write(who.agent, &before.clock);
            db.put(key.clone(), None);
            let (bytes, digest) = (before.size, before.digest);
            (
                Undo::Deleted {
                    before: Box::new(before),
                },
                bytes,
                Some(digest),
            )
        } else {
            match vfs.dir().symlink_metadata(&key.rel) {
                Ok(m) if m.is_dir() => {
                    if db.has_files_under(key) {
                        return Err(VfsError::Io {
                            op: "delete",
                            path: guest,
                            message: "directory not empty".into(),
                        });
                    }
                    vfs.delete(&key.rel)
                        .map_err(|e| in_guest_terms(e, &key.area))?;
                    db.usage.dirs = db.usage.dirs.saturating_sub(1);
                    id = db.next_undo_id();
                    (Undo::DirDeleted, 0, None)
                }
                Ok(m) if m.file_type().is_symlink() => return Err(symlink_denied(guest)),
                Ok(m) => return Err(not_a_file(guest, &m)),
                Err(e) => return Err(io_error("delete", guest, e)),
            }
        };
        let undo = db.record(
            &dirs.undo,
            &self.quotas,
            Record {
                id,
                agent: who.agent.clone(),
                op: FileOp::Delete,
                key: key.clone(),
                to: None,
                undo,
                blob_bytes,
            },
        );
        Ok(FileChange {
            op: FileOp::Delete,
            path: guest,
            to: None,
            before: before_digest,
            after: None,
            size: 0,
            undo,
        })
    }

    fn rename_entry(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        src: &Key,
        dst: &Key,
    ) -> Result<FileChange, VfsError> {
        let (src_guest, dst_guest) = (src.guest(), dst.guest());
        let sv = dirs.area(&src.area)?;
        let dv = dirs.area(&dst.area)?;
        let exists = |e: io::Error| io_error("rename", dst_guest.clone(), e);
        if db.files.contains_key(dst) || entry_exists(dv.dir(), &dst.rel).map_err(exists)? {
            return Err(VfsError::AlreadyExists { path: dst_guest });
        }
        let (moved, is_dir) = match db.files.get(src) {
            Some(m) => (vec![(String::new(), m.clone())], false),
            None => match sv.dir().symlink_metadata(&src.rel) {
                Ok(m) if m.is_dir() => (db.files_under(src), true),
                Ok(m) if m.file_type().is_symlink() => return Err(symlink_denied(src_guest)),
                Ok(m) => return Err(not_a_file(src_guest, &m)),
                Err(e) => return Err(io_error("rename", src_guest, e)),
            },
        };
        if is_dir && src.area == dst.area && dst.rel.starts_with(&format!("{}/", src.rel)) {
            return Err(VfsError::Denied {
                path: dst_guest,
                reason: format!("cannot move directory {src_guest} into itself"),
            });
        }
        if is_dir {
            check_nesting(sv.dir(), src, dst).map_err(VfsError::InvalidPath)?;
        }
        for (suffix, m) in &moved {
            let path = src.with_suffix(suffix).guest();
            check_access(who, m, &path, Need::Write)?;
            if dst.area != Area::Shared {
                // Moving a shared file into a private area takes it away from
                // everyone else: it needs read access too.
                check_access(who, m, &path, Need::Read)?;
            }
            self.check_clock(who.agent, &m.clock, &path)?;
        }
        let made_dirs = missing_ancestors(dv.dir(), &dst.rel);
        self.check_dirs(&db.usage, &dst_guest, made_dirs.len())?;
        let moved_ok = if src.area == dst.area {
            sv.rename(&src.rel, &dst.rel)
                .map_err(|e| in_guest_terms(e, &src.area))
        } else {
            move_across(&sv, src, &dv, dst)
        };
        if let Err(e) = moved_ok {
            db.usage.dirs += unmake_dirs(dv.dir(), &made_dirs);
            return Err(e);
        }
        db.usage.dirs += made_dirs.len() as u64;
        let mut record_moved = Vec::with_capacity(moved.len());
        for (suffix, before) in moved {
            let to = dst.with_suffix(&suffix);
            let mut meta = before.clone();
            meta.acl = match (&dst.area, &before.acl) {
                // The ACL moves with the file.
                (Area::Shared, Some(acl)) => Some(acl.clone()),
                (Area::Shared, None) => creation_acl(who, &to),
                (Area::Private(_), _) => None,
            };
            meta.clock = self.clocks.stamp_write(who.agent, &before.clock);
            let after = meta.fingerprint();
            db.put(src.with_suffix(&suffix), None);
            db.put(to, Some(meta));
            record_moved.push(Moved {
                suffix,
                before,
                after,
            });
        }
        let (digest, size) = match (is_dir, record_moved.first()) {
            (false, Some(m)) => (Some(m.after.digest), m.after.size),
            _ => (None, 0),
        };
        let id = db.next_undo_id();
        let undo = db.record(
            &dirs.undo,
            &self.quotas,
            Record {
                id,
                agent: who.agent.clone(),
                op: FileOp::Rename,
                key: src.clone(),
                to: Some(dst.clone()),
                undo: Undo::Renamed {
                    moved: record_moved,
                    made_dirs,
                },
                blob_bytes: 0,
            },
        );
        Ok(FileChange {
            op: FileOp::Rename,
            path: src_guest,
            to: Some(dst_guest),
            before: digest,
            after: digest,
            size,
            undo,
        })
    }

    fn set_acl_of(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &Key,
        acl: Acl,
    ) -> Result<FileChange, VfsError> {
        let guest = key.guest();
        if let Area::Private(_) = key.area {
            return Err(VfsError::Denied {
                path: guest,
                reason: "private files are their owner's alone; they have no ACL to change".into(),
            });
        }
        let Some(old) = db.files.get(key) else {
            return Err(self.no_acl(dirs, key));
        };
        let Some(current) = &old.acl else {
            return Err(VfsError::Denied {
                path: guest,
                reason: "the file has no ACL".into(),
            });
        };
        let privileged = who.ring <= Ring::Privileged;
        if who.agent != &current.owner && !privileged {
            return Err(VfsError::Denied {
                path: guest,
                reason: format!(
                    "agent {} may not change the ACL: only the owner {} or an agent in ring ≤ 1 may (the caller is in ring {})",
                    who.agent,
                    current.owner,
                    who.ring.number()
                ),
            });
        }
        if acl.owner != current.owner && !privileged {
            return Err(VfsError::Denied {
                path: guest,
                reason: format!(
                    "agent {} may not give the file to {}: only an agent in ring ≤ 1 may change the owner",
                    who.agent, acl.owner
                ),
            });
        }
        for (what, access) in [("read", &acl.read), ("write", &acl.write)] {
            if let Access::Agents(list) = access
                && list.len() > MAX_ACL_AGENTS
            {
                return Err(VfsError::Quota {
                    path: guest,
                    reason: format!(
                        "the {what} list names {} agents; the limit is {MAX_ACL_AGENTS}",
                        list.len()
                    ),
                });
            }
        }
        self.check_clock(who.agent, &old.clock, &guest)?;
        let before = old.clone();
        let mut meta = before.clone();
        meta.acl = Some(acl);
        meta.clock = self.clocks.stamp_write(who.agent, &before.clock);
        let after = meta.fingerprint();
        let (digest, size) = (meta.digest, meta.size);
        db.put(key.clone(), Some(meta));
        let id = db.next_undo_id();
        let undo = db.record(
            &dirs.undo,
            &self.quotas,
            Record {
                id,
                agent: who.agent.clone(),
                op: FileOp::SetAcl,
                key: key.clone(),
                to: None,
                undo: Undo::AclSet {
                    before: Box::new(before),
                    after,
                },
                blob_bytes: 0,
            },
        );
        Ok(FileChange {
            op: FileOp::SetAcl,
            path: guest,
            to: None,
            before: Some(digest),
            after: Some(digest),
            size,
            undo,
        })
    }

    /// Why there is no ACL at `key`: a directory (Denied) or nothing (NotFound).
    fn no_acl(&self, dirs: &mut Dirs, key: &Key) -> VfsError {
        match self.missing(dirs, key, "get-acl") {
            VfsError::Io { path, .. } => VfsError::Denied {
                path,
                reason: "is a directory; directories carry no ACL".into(),
            },
            e => e,
        }
    }

    fn compensate(&self, dirs: &mut Dirs, db: &mut Db, rec: &Record) -> Result<(), VfsError> {
        let key = &rec.key;
        let guest = key.guest();
        let vfs = dirs.area(&key.area)?;
        let undo_io = |e: io::Error| io_error("undo", guest.clone(), e);
        let in_area = |e: VfsError| in_guest_terms(e, &key.area);
        let unchanged = |after: &Fingerprint| -> Result<(), VfsError> {
            match db.files.get(key) {
                Some(m) if m.matches(after) => Ok(()),
                Some(_) => Err(rec.conflict(
                    guest.clone(),
                    "the file changed since; undo the later changes to it first",
                )),
                None => Err(rec.conflict(
                    guest.clone(),
                    "the file is gone; undo the later changes to it first",
                )),
            }
        };
        match &rec.undo {
            Undo::Created { after, made_dirs } => {
                unchanged(after)?;
                refuse_unservable(vfs.dir(), key, "undo")?;
                vfs.dir().remove_file(&key.rel).map_err(undo_io)?;
                db.put(key.clone(), None);
                let removed = remove_dirs(vfs.dir(), made_dirs);
                db.usage.dirs = db.usage.dirs.saturating_sub(removed);
            }
            Undo::Replaced { before, after } => {
                unchanged(after)?;
                refuse_unservable(vfs.dir(), key, "undo")?;
                dirs.undo
                    .rename(blob(rec.id), vfs.dir(), &key.rel)
                    .map_err(undo_io)?;
                db.put(key.clone(), Some((**before).clone()));
            }
            Undo::Appended { before, after } => {
                unchanged(after)?;
                vfs.truncate(&key.rel, before.size).map_err(in_area)?;
                db.put(key.clone(), Some((**before).clone()));
            }
            Undo::Truncated { before, after } => {
                unchanged(after)?;
                let cut = match open::read_file(&dirs.undo, &blob(rec.id), before.size) {
                    Ok(Some(cut)) => cut,
                    Ok(None) => {
                        return Err(rec.conflict(
                            guest.clone(),
                            "the kept bytes changed outside the session",
                        ));
                    }
                    Err(r) => return Err(refused("undo", guest.clone(), r)),
                };
                vfs.append(&key.rel, &cut).map_err(in_area)?;
                db.put(key.clone(), Some((**before).clone()));
            }
            Undo::Deleted { before } => {
                if db.files.contains_key(key)
                    || entry_exists(vfs.dir(), &key.rel).map_err(undo_io)?
                {
                    return Err(rec.conflict(
                        guest.clone(),
                        "something was created at the path since; undo that first",
                    ));
                }
                let made = missing_ancestors(vfs.dir(), &key.rel).len() as u64;
                create_parent(&vfs, key)?;
                db.usage.dirs += made;
                dirs.undo
                    .rename(blob(rec.id), vfs.dir(), &key.rel)
                    .map_err(undo_io)?;
                db.put(key.clone(), Some((**before).clone()));
            }
            Undo::DirDeleted => {
                if entry_exists(vfs.dir(), &key.rel).map_err(undo_io)? {
                    return Err(rec.conflict(
                        guest.clone(),
                        "something was created at the path since; undo that first",
                    ));
                }
                let made = 1 + missing_ancestors(vfs.dir(), &key.rel).len() as u64;
                vfs.create_dir(&key.rel).map_err(in_area)?;
                db.usage.dirs += made;
            }
            Undo::DirCreated { made } => {
                let refuse = |why| rec.conflict(guest.clone(), why);
                if db.has_files_under(key) {
                    return Err(refuse(
                        "files were created in the directory since; undo that first",
                    ));
                }
                match vfs.dir().symlink_metadata(&key.rel) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(refuse("the directory was replaced since; undo that first"));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(refuse(
                            "the directory is gone; undo the later changes first",
                        ));
                    }
                    Err(e) => return Err(undo_io(e)),
                }
                vfs.dir().remove_dir(&key.rel).map_err(|_| {
                    refuse("entries were created in the directory since; undo that first")
                })?;
                let removed = 1 + remove_dirs(vfs.dir(), made.get(1..).unwrap_or_default());
                db.usage.dirs = db.usage.dirs.saturating_sub(removed);
            }
            Undo::Renamed { moved, made_dirs } => {
                let Some(dst) = &rec.to else {
                    return Err(rec.conflict(guest.clone(), "the record has no destination"));
                };
                let dst_guest = dst.guest();
                let dv = dirs.area(&dst.area)?;
                for m in moved {
                    let at = dst.with_suffix(&m.suffix);
                    if !db.files.get(&at).is_some_and(|f| f.matches(&m.after)) {
                        return Err(rec.conflict(
                            at.guest(),
                            "the file changed or moved since; undo the later changes to it first",
                        ));
                    }
                }
                // Files added below a renamed directory since would move back
                // with it while their metadata stayed behind.
                if db
                    .files_under(dst)
                    .iter()
                    .any(|(suffix, _)| !moved.iter().any(|m| &m.suffix == suffix))
                {
                    return Err(rec.conflict(
                        dst_guest,
                        "files were added below the renamed directory since; undo that first",
                    ));
                }
                if db.files.contains_key(key)
                    || entry_exists(vfs.dir(), &key.rel).map_err(undo_io)?
                {
                    return Err(rec.conflict(
                        guest.clone(),
                        "something was created at the old path since; undo that first",
                    ));
                }
                if !entry_exists(dv.dir(), &dst.rel)
                    .map_err(|e| io_error("undo", dst_guest.clone(), e))?
                {
                    return Err(rec.conflict(dst_guest, "the renamed entry is gone"));
                }
                // Directories made below the renamed one since would nest
                // deeper than a guest may name once it moves back.
                if dv
                    .dir()
                    .symlink_metadata(&dst.rel)
                    .is_ok_and(|m| m.is_dir())
                    && let Err(e) = check_nesting(dv.dir(), dst, key)
                {
                    return Err(rec.conflict(
                        guest.clone(),
                        &format!(
                            "moving back would nest too deep ({e}); undo the later changes first"
                        ),
                    ));
                }
                // The old path's parents may be gone since: moving back makes them.
                let back = missing_ancestors(vfs.dir(), &key.rel).len() as u64;
                if key.area == dst.area {
                    vfs.rename(&dst.rel, &key.rel).map_err(in_area)?;
                } else {
                    move_across(&dv, dst, &vfs, key)?;
                }
                for m in moved {
                    db.put(dst.with_suffix(&m.suffix), None);
                    db.put(key.with_suffix(&m.suffix), Some(m.before.clone()));
                }
                let removed = remove_dirs(dv.dir(), made_dirs);
                db.usage.dirs = (db.usage.dirs + back).saturating_sub(removed);
            }
            Undo::AclSet { before, after } => {
                unchanged(after)?;
                db.put(key.clone(), Some((**before).clone()));
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn dump(&self) -> (Usage, Vec<String>) {
        let inner = self.lock();
        let files = inner
            .db
            .files
            .iter()
            .map(|(k, m)| {
                format!(
                    "{:?} {} size={} sha256={} acl={:?} clock={}",
                    k.area,
                    k.rel,
                    m.size,
                    hex::encode(m.digest),
                    m.acl,
                    m.clock
                )
            })
            .collect();
        (inner.db.usage, files)
    }
}

/// Shared files and private files are governed by different rules; see the
/// module docs.
impl FileSpace for SessionFiles {
    fn max_file_bytes(&self) -> u64 {
        self.quotas.max_file_bytes
    }

    fn read(&self, who: Caller<'_>, path: &str) -> Result<Vec<u8>, VfsError> {
        let key = file_key(who.agent, path)?;
        self.with(|dirs, db| {
            let Some(m) = db.files.get(&key) else {
                return Err(self.missing(dirs, &key, "read"));
            };
            check_access(who, m, &key.guest(), Need::Read)?;
            let bytes = dirs
                .area(&key.area)?
                .read(&key.rel)
                .map_err(|e| in_guest_terms(e, &key.area))?;
            self.clocks.observe(who.agent, &m.clock);
            Ok(bytes)
        })
    }

    /// Names of directories and of the session's files; symlinks and
    /// entries the session did not create are hidden. Names in a shared
    /// directory are visible to every participant, whatever the files' ACLs.
    fn list(&self, who: Caller<'_>, path: &str) -> Result<Vec<String>, VfsError> {
        let key = dir_key(who.agent, path)?;
        self.with(|dirs, db| {
            let vfs = dirs.area(&key.area)?;
            let guest = key.guest();
            let fail = |e: io::Error| io_error("list", guest.clone(), e);
            let mut names = Vec::new();
            for entry in vfs.dir().read_dir(key.at()).map_err(fail)? {
                let entry = entry.map_err(fail)?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if name.starts_with(RESERVED_PREFIX) {
                    continue;
                }
                let kind = entry.file_type().map_err(fail)?;
                if !(kind.is_dir() || kind.is_file() && db.files.contains_key(&key.child(&name))) {
                    continue;
                }
                names.push(name);
                if names.len() > self.quotas.max_list_entries {
                    break;
                }
            }
            if key.area != Area::Shared && key.is_root() && !names.iter().any(|n| n == SHARED) {
                names.push(SHARED.to_string());
            }
            if names.len() > self.quotas.max_list_entries {
                return Err(VfsError::Quota {
                    path: guest,
                    reason: format!(
                        "directory has more than {} entries",
                        self.quotas.max_list_entries
                    ),
                });
            }
            names.sort();
            Ok(names)
        })
    }

    fn stat(&self, who: Caller<'_>, path: &str) -> Result<Stat, VfsError> {
        let key = dir_key(who.agent, path)?;
        self.with(|dirs, db| {
            if let Some(m) = db.files.get(&key) {
                check_access(who, m, &key.guest(), Need::Read)?;
                self.clocks.observe(who.agent, &m.clock);
                return Ok(Stat {
                    kind: EntryKind::File,
                    size: m.size,
                });
            }
            let vfs = dirs.area(&key.area)?;
            let dir = Stat {
                kind: EntryKind::Directory,
                size: 0,
            };
            if key.is_root() {
                return Ok(dir);
            }
            match vfs.dir().symlink_metadata(&key.rel) {
                Ok(m) if m.is_dir() => Ok(dir),
                Ok(m) => Err(not_a_file(key.guest(), &m)),
                Err(e) => Err(io_error("stat", key.guest(), e)),
            }
        })
    }

    fn hash(&self, who: Caller<'_>, path: &str) -> Result<Sha256Digest, VfsError> {
        let key = file_key(who.agent, path)?;
        self.with(|dirs, db| {
            let Some(m) = db.files.get(&key) else {
                return Err(self.missing(dirs, &key, "hash"));
            };
            check_access(who, m, &key.guest(), Need::Read)?;
            self.clocks.observe(who.agent, &m.clock);
            Ok(m.digest)
        })
    }

    fn write(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        let key = file_key(who.agent, path)?;
        self.with(|dirs, db| self.write_file(dirs, db, who, &key, contents, FileOp::Write))
    }

    fn append(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        let key = file_key(who.agent, path)?;
        self.with(|dirs, db| self.append_file(dirs, db, who, &key, contents))
    }

    fn truncate(&self, who: Caller<'_>, path: &str, len: u64) -> Result<FileChange, VfsError> {
        let key = file_key(who.agent, path)?;
        self.with(|dirs, db| self.truncate_file(dirs, db, who, &key, len))
    }

    fn delete(&self, who: Caller<'_>, path: &str) -> Result<FileChange, VfsError> {
        let key = file_key(who.agent, path)?;
        self.with(|dirs, db| self.delete_entry(dirs, db, who, &key))
    }

    /// Within an area or across areas (a private file moved into `shared/`
    /// gets the creation ACL; a shared file moved into the caller's private
    /// area needs read and write access). A directory moves with every file
    /// below it; each needs the same access and passes the same clock check.
    /// Nesting is bounded here, where trees are made: a move that would give
    /// an entry below the directory a guest path deeper than
    /// [`crate::path::MAX_DEPTH`] or longer than
    /// [`crate::path::MAX_PATH_BYTES`] is `InvalidPath`, so every tree that
    /// exists can be named by guests and copied by snapshots.
    fn rename(&self, who: Caller<'_>, src: &str, dst: &str) -> Result<FileChange, VfsError> {
        let from = file_key(who.agent, src)?;
        let to = file_key(who.agent, dst)?;
        self.with(|dirs, db| self.rename_entry(dirs, db, who, &from, &to))
    }

    /// A change like a write: counted against [`FileQuotas::max_dirs`] (it
    /// and every missing parent), recorded for undo. `Ok(None)` when the
    /// directory exists already (the roots always do): nothing changed.
    fn create_dir(&self, who: Caller<'_>, path: &str) -> Result<Option<FileChange>, VfsError> {
        let key = dir_key(who.agent, path)?;
        if key.is_root() {
            return Ok(None);
        }
        let guest = key.guest();
        self.with(|dirs, db| {
            if db.files.contains_key(&key) {
                return Err(VfsError::AlreadyExists { path: guest });
            }
            let vfs = dirs.area(&key.area)?;
            match vfs.dir().symlink_metadata(&key.rel) {
                Ok(m) if m.is_dir() => return Ok(None),
                Ok(m) if m.file_type().is_symlink() => return Err(symlink_denied(guest)),
                // An entry that is not a file of the session (see the module docs).
                Ok(_) => return Err(VfsError::AlreadyExists { path: guest }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("create-dir", guest, e)),
            }
            let mut made = vec![key.rel.clone()];
            made.extend(missing_ancestors(vfs.dir(), &key.rel));
            self.check_dirs(&db.usage, &guest, made.len())?;
            if let Err(e) = vfs.create_dir(&key.rel) {
                db.usage.dirs += unmake_dirs(vfs.dir(), &made);
                return Err(in_guest_terms(e, &key.area));
            }
            let created = made.len() as u64;
            db.usage.dirs += created;
            let id = db.next_undo_id();
            let undo = db.record(
                &dirs.undo,
                &self.quotas,
                Record {
                    id,
                    agent: who.agent.clone(),
                    op: FileOp::CreateDir,
                    key: key.clone(),
                    to: None,
                    undo: Undo::DirCreated { made },
                    blob_bytes: 0,
                },
            );
            Ok(Some(FileChange {
                op: FileOp::CreateDir,
                path: guest,
                to: None,
                before: None,
                after: None,
                size: created,
                undo,
            }))
        })
    }

    /// Anyone in the session may see a shared file's ACL (it is not content,
    /// and others need to know whom to ask). A private file answers owner =
    /// its agent, read and write = owner only. A directory is `Denied` (it
    /// carries no ACL); nothing at the path is `NotFound`.
    fn get_acl(&self, who: Caller<'_>, path: &str) -> Result<Acl, VfsError> {
        let key = file_key(who.agent, path)?;
        self.with(|dirs, db| match db.files.get(&key) {
            Some(m) => Ok(match (&m.acl, &key.area) {
                (Some(acl), _) => acl.clone(),
                (None, Area::Private(owner)) => private_acl(owner),
                (None, Area::Shared) => private_acl(who.agent),
            }),
            None => Err(self.no_acl(dirs, &key)),
        })
    }

    fn set_acl(&self, who: Caller<'_>, path: &str, acl: Acl) -> Result<FileChange, VfsError> {
        let key = file_key(who.agent, path)?;
        self.with(|dirs, db| self.set_acl_of(dirs, db, who, &key, acl))
    }
}

fn private_acl(owner: &AgentId) -> Acl {
    Acl {
        owner: owner.clone(),
        read: Access::Owner,
        write: Access::Owner,
    }
}

/// The ACL of a new file: shared files are open to everyone; private files have none.
fn creation_acl(who: Caller<'_>, key: &Key) -> Option<Acl> {
    match key.area {
        Area::Shared => Some(Acl {
            owner: who.agent.clone(),
            read: Access::Everyone,
            write: Access::Everyone,
        }),
        Area::Private(_) => None,
    }
}

fn describe(access: &Access) -> String {
    match access {
        Access::Everyone => "everyone".into(),
        Access::Owner => "the owner only".into(),
        Access::Agents(list) => {
            let names: Vec<&str> = list.iter().map(AgentId::as_str).collect();
            format!("the owner and {}", names.join(", "))
        }
    }
}

fn check_access(who: Caller<'_>, meta: &FileMeta, path: &str, need: Need) -> Result<(), VfsError> {
    // Private files have no ACL: only their owner can name them.
    let Some(acl) = &meta.acl else {
        return Ok(());
    };
    let (access, what) = match need {
        Need::Read => (&acl.read, "read"),
        Need::Write => (&acl.write, "write"),
    };
    if access.allows(&acl.owner, who.agent) {
        return Ok(());
    }
    Err(VfsError::Denied {
        path: path.to_string(),
        reason: format!(
            "agent {} lacks {what} access (owner {}; {what} access: {})",
            who.agent,
            acl.owner,
            describe(access)
        ),
    })
}

/// Maps an I/O error to a `VfsError` naming `path` (a guest path).
fn io_error(op: &'static str, path: String, e: io::Error) -> VfsError {
    match e.kind() {
        io::ErrorKind::NotFound => VfsError::NotFound { path },
        io::ErrorKind::AlreadyExists => VfsError::AlreadyExists { path },
        // cap-std reports every attempt to leave a directory as PermissionDenied.
        io::ErrorKind::PermissionDenied => VfsError::Denied {
            path,
            reason: e.to_string(),
        },
        _ => VfsError::Io {
            op,
            path,
            message: e.to_string(),
        },
    }
}

/// Rewrites the area-relative path in an error from an area's [`Vfs`] as the
/// guest path.
fn in_guest_terms(e: VfsError, area: &Area) -> VfsError {
    match e {
        VfsError::NotFound { path } => VfsError::NotFound {
            path: area.guest(&path),
        },
        VfsError::AlreadyExists { path } => VfsError::AlreadyExists {
            path: area.guest(&path),
        },
        VfsError::Denied { path, reason } => VfsError::Denied {
            path: area.guest(&path),
            reason,
        },
        VfsError::Quota { path, reason } => VfsError::Quota {
            path: area.guest(&path),
            reason,
        },
        VfsError::Conflict { path, reason } => VfsError::Conflict {
            path: area.guest(&path),
            reason,
        },
        VfsError::Io { op, path, message } => VfsError::Io {
            op,
            path: area.guest(&path),
            message,
        },
        e @ VfsError::InvalidPath(_) => e,
    }
}

fn symlink_denied(path: String) -> VfsError {
    VfsError::Denied {
        path,
        reason: "is a symbolic link; links are never modified".into(),
    }
}

fn no_snapshot(op: &'static str, id: u64) -> VfsError {
    VfsError::Io {
        op,
        path: format!("snapshot {id}"),
        message: "no such snapshot".into(),
    }
}

/// Refuses a symlink or a FIFO, socket or device node at `key` (nothing
/// there is fine): what a rename, a link or an unlink may not touch.
fn refuse_unservable(dir: &Dir, key: &Key, op: &'static str) -> Result<(), VfsError> {
    open::refusal(dir, &key.rel)
        .map(drop)
        .map_err(|r| refused(op, key.guest(), r))
}

/// Maps a refused open of the entry at guest path `path`.
fn refused(op: &'static str, path: String, r: Refusal) -> VfsError {
    match r {
        Refusal::Io(e) => io_error(op, path, e),
        Refusal::Directory => VfsError::Io {
            op,
            path,
            message: r.reason(),
        },
        Refusal::Symlink | Refusal::Special(_) | Refusal::Linked(_) => VfsError::Denied {
            path,
            reason: r.reason(),
        },
    }
}

fn special_denied(path: String, kind: &str) -> VfsError {
    VfsError::Denied {
        path,
        reason: open::special_reason(kind),
    }
}

/// Why a non-directory entry that is not a file of the session is not one:
/// a FIFO, socket or device node is `Denied`, anything else is `NotFound`.
fn not_a_file(path: String, m: &cap_std::fs::Metadata) -> VfsError {
    match open::special(m.file_type()) {
        Some(kind) => special_denied(path, kind),
        None => VfsError::NotFound { path },
    }
}

/// Whether anything (a symlink included) is at `rel`.
fn entry_exists(dir: &Dir, rel: &str) -> io::Result<bool> {
    match dir.symlink_metadata(rel) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates (if needed) and opens directory `rel` below `parent`, refusing a
/// symlink in its place.
fn open_area(parent: &Dir, rel: &str) -> io::Result<Dir> {
    parent.create_dir_all(rel)?;
    if parent.symlink_metadata(rel)?.file_type().is_symlink() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a symbolic link stands where a session directory belongs",
        ));
    }
    parent.open_dir(rel)
}

fn remove_all_if_exists(dir: &Dir, rel: &str) -> io::Result<()> {
    match dir.symlink_metadata(rel) {
        Ok(m) if m.is_dir() => dir.remove_dir_all(rel),
        Ok(_) => dir.remove_file(rel),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Keeps the current inode at `rel` under `name` in the undo directory: a hard
/// link, or a copy (of at most `max` bytes) where links are not possible.
/// Whatever stands at `name` already (planted: the names are predictable)
/// is replaced, never written through.
fn keep_old(dir: &Dir, rel: &str, undo: &Dir, name: &str, max: u64) -> Result<(), Refusal> {
    let link = || dir.hard_link(rel, undo, name);
    let linked = match link() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            undo.remove_file(name)?;
            link()
        }
        r => r,
    };
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Refusal::Io(e)),
        Err(_) => open::copy_file(dir, rel, undo, name, max).map(drop),
    }
}

fn discard_blob(undo: &Dir, id: u64) {
    match undo.remove_file(blob(id)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(record = id, error = %e, "could not remove an undo blob"),
    }
}

/// The ancestors of `rel` that do not exist yet, deepest first (a write or
/// rename creates them; its undo removes them again).
fn missing_ancestors(dir: &Dir, rel: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut cur = rel;
    while let Some((parent, _)) = cur.rsplit_once('/') {
        match dir.symlink_metadata(parent) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(parent.to_string());
                cur = parent;
            }
            _ => break,
        }
    }
    missing
}

/// After a failed change: removes whichever of the directories it was to make
/// (deepest first) it did make; returns how many of them are left (counted
/// then, as any directory is).
fn unmake_dirs(dir: &Dir, made: &[String]) -> u64 {
    let existing: Vec<String> = made
        .iter()
        .filter(|d| entry_exists(dir, d).unwrap_or(false))
        .cloned()
        .collect();
    existing.len() as u64 - remove_dirs(dir, &existing)
}

/// Removes directories made by an undone change, deepest first, stopping at
/// the first that is not empty (something else lives there now); returns how
/// many it removed.
fn remove_dirs(dir: &Dir, made: &[String]) -> u64 {
    let mut removed = 0;
    for d in made {
        if dir.remove_dir(d).is_err() {
            break;
        }
        removed += 1;
    }
    removed
}

fn create_parent(vfs: &Vfs, key: &Key) -> Result<(), VfsError> {
    match key.rel.rsplit_once('/') {
        Some((parent, _)) => vfs
            .create_dir(parent)
            .map_err(|e| in_guest_terms(e, &key.area)),
        None => Ok(()),
    }
}

/// Refuses to move directory `from` (in `dir`) to `to` when an entry below it
/// would get a guest path longer or deeper than a guest may name
/// ([`crate::path::MAX_PATH_BYTES`], [`crate::path::MAX_DEPTH`]): nesting
/// is bounded where trees are made, so every tree that exists can be named,
/// listed, deleted and copied into a snapshot.
fn check_nesting(dir: &Dir, from: &Key, to: &Key) -> Result<(), PathError> {
    use crate::path::{MAX_DEPTH, MAX_PATH_BYTES};
    let base = to.guest();
    let base_depth = base.split('/').count();
    // Looking deeper than the limit allows is pointless: one level beyond it
    // already refuses.
    let allowed = MAX_DEPTH.saturating_sub(base_depth);
    let extent = extent_below(dir, &from.rel, allowed + 1);
    let shown = || {
        let mut s: String = base.chars().take(64).collect();
        s.push_str("/…");
        s
    };
    if base_depth + extent.depth > MAX_DEPTH {
        return Err(PathError::TooDeep {
            path: shown(),
            depth: base_depth + extent.depth,
            max: MAX_DEPTH,
        });
    }
    if base.len() + extent.bytes > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            len: base.len() + extent.bytes,
            max: MAX_PATH_BYTES,
        });
    }
    Ok(())
}

/// How deep and how long the paths below a directory are.
#[derive(Debug, Default, Clone, Copy)]
struct Extent {
    /// Most components below it.
    depth: usize,
    /// Most bytes below it, each component with its leading `/`.
    bytes: usize,
}

/// The extent of the entries below directory `rel` (symbolic links not
/// followed, the host's reserved names left out), looking at most `max`
/// levels down; unreadable parts count as empty.
fn extent_below(dir: &Dir, rel: &str, max: usize) -> Extent {
    fn walk(dir: &Dir, depth: usize, bytes: usize, max: usize, out: &mut Extent) {
        let Ok(entries) = dir.entries() else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            let (d, b) = (depth + 1, bytes + 1 + name.len());
            out.depth = out.depth.max(d);
            out.bytes = out.bytes.max(b);
            if d < max
                && entry.file_type().is_ok_and(|t| t.is_dir())
                && let Ok(sub) = entry.open_dir()
            {
                walk(&sub, d, b, max, out);
            }
        }
    }
    let mut out = Extent::default();
    if let Ok(top) = dir.open_dir(if rel.is_empty() { "." } else { rel }) {
        walk(&top, 0, 0, max, &mut out);
    }
    out
}

/// Moves an entry from one area to another (both under the session directory).
fn move_across(from: &Vfs, src: &Key, to: &Vfs, dst: &Key) -> Result<(), VfsError> {
    refuse_unservable(from.dir(), src, "rename")?;
    create_parent(to, dst)?;
    from.dir()
        .rename(&src.rel, to.dir(), &dst.rel)
        .map_err(|e| io_error("rename", dst.guest(), e))
}

/// Copies directories and the regular files `keep` accepts (by their path
/// relative to the top) from `src` to `dst`, as bytes. Symlinks are skipped.
/// Directories below the area roots of a session's `files/` (symbolic links
/// not followed, at most [`MAX_TREE_DEPTH`] deep); unreadable parts count
/// as empty.
fn existing_dirs(root: &Dir) -> u64 {
    fn subdirs(dir: &Dir) -> Vec<cap_std::fs::DirEntry> {
        dir.entries().map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .collect()
            },
        )
    }
    fn below(dir: &Dir, depth: usize) -> u64 {
        if depth > MAX_TREE_DEPTH {
            return 0;
        }
        subdirs(dir)
            .iter()
            .map(|e| 1 + e.open_dir().map_or(0, |d| below(&d, depth + 1)))
            .sum()
    }
    let shared = root.open_dir(SHARED_DIR).map_or(0, |d| below(&d, 1));
    let private = root.open_dir(AGENTS_DIR).map_or(0, |agents| {
        subdirs(&agents)
            .iter()
            .filter_map(|e| e.open_dir().ok())
            .map(|area| below(&area, 2))
            .sum()
    });
    shared + private
}

/// Why copying a session's files failed: the file (relative to `files/`)
/// and why, or an I/O failure of the copy as a whole.
#[derive(Debug)]
struct CopyError {
    at: Option<String>,
    why: Refusal,
}

impl CopyError {
    fn whole(e: io::Error) -> CopyError {
        CopyError {
            at: None,
            why: Refusal::Io(e),
        }
    }

    fn into_vfs(self, op: &'static str, snapshot: u64) -> VfsError {
        let guest = self.at.as_deref().and_then(files_key).map(|k| k.guest());
        match (guest, self.why) {
            (Some(path), why @ (Refusal::Symlink | Refusal::Special(_) | Refusal::Linked(_))) => {
                refused(op, path, why)
            }
            (Some(path), why) => VfsError::Io {
                op,
                path: format!("snapshot {snapshot}"),
                message: format!("{path}: {}", why.reason()),
            },
            (None, why) => VfsError::Io {
                op,
                path: format!("snapshot {snapshot}"),
                message: why.reason(),
            },
        }
    }
}

/// Copies the files of `files` (keyed as below `files/`) and every directory
/// from `root/from` into the new directory `root/to`; see
/// [`SessionFiles::snapshot`] for what is skipped and what fails.
fn copy_files(
    root: &Dir,
    from: &str,
    to: &str,
    files: &BTreeMap<Key, FileMeta>,
    max: u64,
) -> Result<(), CopyError> {
    let src = root.open_dir(from).map_err(CopyError::whole)?;
    let dst = root.open_dir(to).map_err(CopyError::whole)?;
    let keep = |rel: &str| files_key(rel).is_some_and(|k| files.contains_key(&k));
    let mut copied = 0;
    copy_tree(&src, &dst, "", 0, &keep, max, &mut copied)?;
    if copied != files.len() as u64 {
        return Err(CopyError::whole(io::Error::other(format!(
            "{} of the session's {} files are missing from its directory \
             (removed or replaced outside the session)",
            files.len() as u64 - copied,
            files.len()
        ))));
    }
    Ok(())
}

/// Copies the directories below `src` and the regular files `keep` accepts
/// (by their path relative to the top) into `dst`, counting the files in
/// `copied`. Nothing else is opened: not symbolic links, not special
/// entries, not files `keep` refuses. Directories deeper than
/// [`MAX_TREE_DEPTH`] are left empty.
fn copy_tree(
    src: &Dir,
    dst: &Dir,
    rel: &str,
    depth: usize,
    keep: &dyn Fn(&str) -> bool,
    max: u64,
    copied: &mut u64,
) -> Result<(), CopyError> {
    if depth > MAX_TREE_DEPTH {
        // No guest can make such a tree (renames are bounded too); it was
        // planted, and `existing_dirs` stops counting at the same depth.
        tracing::warn!(
            path = rel,
            "a directory tree deeper than any guest can make was not copied"
        );
        return Ok(());
    }
    let at = |name: &str| {
        if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        }
    };
    let fail = |child: &str, why: Refusal| CopyError {
        at: Some(child.to_string()),
        why,
    };
    for entry in src.entries().map_err(CopyError::whole)? {
        let entry = entry.map_err(CopyError::whole)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let child = at(&name);
        // The type from the listing: nothing is opened to learn it.
        let kind = entry.file_type().map_err(|e| fail(&child, e.into()))?;
        if kind.is_dir() {
            dst.create_dir(&name).map_err(|e| fail(&child, e.into()))?;
            let sub = |d: &Dir| d.open_dir(&name).map_err(|e| fail(&child, e.into()));
            copy_tree(&sub(src)?, &sub(dst)?, &child, depth + 1, keep, max, copied)?;
        } else if keep(&child) {
            if kind.is_symlink() {
                return Err(fail(&child, Refusal::Symlink));
            }
            if let Some(k) = open::special(kind) {
                return Err(fail(&child, Refusal::Special(k)));
            }
            open::copy_file(src, &name, dst, &name, max).map_err(|r| fail(&child, r))?;
            *copied += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::sha256;
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn ring2(agent: &AgentId) -> Caller<'_> {
        Caller::untraced(agent, Ring::Standard)
    }

    fn ring1(agent: &AgentId) -> Caller<'_> {
        Caller::untraced(agent, Ring::Privileged)
    }

    struct Env {
        tmp: tempfile::TempDir,
        files: SessionFiles,
    }

    impl Env {
        fn sessions(&self) -> PathBuf {
            self.tmp.path().join("sessions")
        }
        fn session_dir(&self) -> PathBuf {
            self.sessions().join("s1")
        }
        fn files_dir(&self) -> PathBuf {
            self.session_dir().join("files")
        }
        fn undo_dir(&self) -> PathBuf {
            self.session_dir().join("undo")
        }
        /// The files tree and the metadata, for exact comparisons. An
        /// agent's empty private root is left out: it is created on the
        /// agent's first use and no guest can see it.
        fn state(&self) -> (Tree, (Usage, Vec<String>)) {
            let mut files = tree(&self.files_dir());
            let roots: Vec<String> = files
                .keys()
                .filter(|k| k.starts_with("agents/") && k.matches('/').count() == 1)
                .filter(|k| !files.keys().any(|c| c.starts_with(&format!("{k}/"))))
                .cloned()
                .collect();
            for r in roots {
                files.remove(&r);
            }
            let dump = self.files.dump();
            // The directory count is exact: every directory below the roots.
            let on_disk = files
                .iter()
                .filter(|(k, v)| {
                    *v == "dir"
                        && *k != "shared"
                        && *k != "agents"
                        && !(k.starts_with("agents/") && k.matches('/').count() == 1)
                })
                .count() as u64;
            assert_eq!(
                dump.0.dirs, on_disk,
                "directories counted vs on disk: {files:?}"
            );
            (files, dump)
        }
    }

    fn env_with(quotas: FileQuotas) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let sessions = tmp.path().join("sessions");
        std::fs::create_dir(&sessions).unwrap();
        let dir = Dir::open_ambient_dir(&sessions, cap_std::ambient_authority()).unwrap();
        let files = SessionFiles::new(
            Arc::new(dir),
            SessionId::new("s1").unwrap(),
            quotas,
            Arc::new(ClockTable::new()),
        );
        Env { tmp, files }
    }

    fn env() -> Env {
        env_with(FileQuotas::default())
    }

    type Tree = BTreeMap<String, String>;

    /// Every entry under `dir` by relative path: `dir`, `file:<bytes>` or `link:<target>`.
    fn tree(dir: &Path) -> Tree {
        fn walk(dir: &Path, rel: &str, out: &mut Tree) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let ty = e.file_type().unwrap();
                if ty.is_symlink() {
                    let target = std::fs::read_link(e.path()).unwrap();
                    out.insert(child, format!("link:{}", target.display()));
                } else if ty.is_dir() {
                    out.insert(child.clone(), "dir".into());
                    walk(&e.path(), &child, out);
                } else {
                    let bytes = std::fs::read(e.path()).unwrap();
                    out.insert(child, format!("file:{}", String::from_utf8_lossy(&bytes)));
                }
            }
        }
        let mut out = Tree::new();
        if dir.exists() {
            walk(dir, "", &mut out);
        }
        out
    }

    fn acl(owner: &AgentId, read: Access, write: Access) -> Acl {
        Acl {
            owner: owner.clone(),
            read,
            write,
        }
    }

    fn is_denied<T: fmt::Debug>(r: Result<T, VfsError>) -> bool {
        matches!(r, Err(VfsError::Denied { .. }))
    }

    #[test]
    fn session_files_are_send_sync_debug_and_a_file_space() {
        fn check<T: Send + Sync + fmt::Debug>() {}
        check::<SessionFiles>();
        let e = env();
        let space: Box<dyn FileSpace> = Box::new(e.files);
        assert!(format!("{space:?}").contains("s1"));
    }

    #[test]
    fn session_directory_is_created_lazily() {
        let e = env();
        let a = id("alice");
        e.files.set_strict(false);
        e.files.set_strict(true);
        assert_eq!(e.files.usage(), Usage::default());
        assert!(e.files.undo_records().is_empty());
        e.files.forget(&a);
        assert_eq!(
            e.files.lock_path(ring2(&a), "shared/x").unwrap(),
            "shared/x"
        );
        assert!(
            std::fs::read_dir(e.sessions()).unwrap().next().is_none(),
            "nothing on disk before the first file operation"
        );
        e.files.write(ring2(&a), "x.txt", b"1").unwrap();
        assert!(e.files_dir().join("agents/alice/x.txt").is_file());
        assert!(e.files_dir().join("shared").is_dir());
    }

    #[test]
    fn agents_have_private_namespaces_and_share_one_area() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "notes.txt", b"A").unwrap();
        e.files.write(ring2(&b), "notes.txt", b"B").unwrap();
        assert_eq!(e.files.read(ring2(&a), "notes.txt").unwrap(), b"A");
        assert_eq!(e.files.read(ring2(&b), "notes.txt").unwrap(), b"B");
        assert_eq!(
            std::fs::read(e.files_dir().join("agents/alice/notes.txt")).unwrap(),
            b"A"
        );
        assert_eq!(
            std::fs::read(e.files_dir().join("agents/bob/notes.txt")).unwrap(),
            b"B"
        );

        e.files.write(ring2(&a), "shared/x", b"S").unwrap();
        assert_eq!(e.files.read(ring2(&b), "shared/x").unwrap(), b"S");
        e.files.write(ring2(&b), "shared/x", b"S2").unwrap();
        assert_eq!(e.files.read(ring2(&a), "./shared//x").unwrap(), b"S2");
        assert_eq!(
            std::fs::read(e.files_dir().join("shared/x")).unwrap(),
            b"S2"
        );

        assert_eq!(
            e.files.list(ring2(&a), "").unwrap(),
            ["notes.txt", "shared"]
        );
        assert_eq!(
            e.files.list(ring2(&b), ".").unwrap(),
            ["notes.txt", "shared"]
        );
        assert_eq!(e.files.list(ring2(&b), "shared").unwrap(), ["x"]);
        assert_eq!(e.files.list(ring2(&a), "./shared/").unwrap(), ["x"]);
        // No agent can name another's private area: this is bob's own `agents/…`.
        assert!(matches!(
            e.files.read(ring2(&b), "agents/alice/notes.txt"),
            Err(VfsError::NotFound { path }) if path == "agents/alice/notes.txt"
        ));
        assert_eq!(
            e.files.usage(),
            Usage {
                files: 3,
                bytes: 4,
                dirs: 0
            }
        );
        assert_eq!(
            e.files.stat(ring2(&a), "notes.txt").unwrap(),
            Stat {
                kind: EntryKind::File,
                size: 1
            }
        );
        assert_eq!(
            e.files.stat(ring2(&a), "shared").unwrap().kind,
            EntryKind::Directory
        );
        assert_eq!(
            e.files.stat(ring2(&a), "").unwrap().kind,
            EntryKind::Directory
        );
        assert!(matches!(
            e.files.stat(ring2(&a), "nope"),
            Err(VfsError::NotFound { path }) if path == "nope"
        ));
        assert!(matches!(
            e.files.read(ring2(&a), "shared/nope"),
            Err(VfsError::NotFound { path }) if path == "shared/nope"
        ));
    }

    #[test]
    fn paths_are_validated_and_normalised() {
        let e = env();
        let a = id("alice");
        let who = ring2(&a);
        let long = "x".repeat(2000);
        let deep = vec!["d"; 40].join("/");
        for bad in [
            "../x",
            "/etc/passwd",
            "shared/../agents/bob/secret",
            "shared/../../s2/files",
            "a\0b",
            "a\\b",
            "a\nb",
            ".ahv-tmp-1",
            "shared/.ahv",
            long.as_str(),
            deep.as_str(),
        ] {
            assert!(
                matches!(e.files.read(who, bad), Err(VfsError::InvalidPath(_))),
                "read {bad:?}"
            );
            assert!(
                matches!(e.files.write(who, bad, b"x"), Err(VfsError::InvalidPath(_))),
                "write {bad:?}"
            );
            assert!(matches!(
                e.files.list(who, bad),
                Err(VfsError::InvalidPath(_))
            ));
            assert!(matches!(
                e.files.lock_path(who, bad),
                Err(VfsError::InvalidPath(_))
            ));
        }
        for root in ["", ".", "shared", "./shared/", "shared/."] {
            assert!(
                matches!(
                    e.files.write(who, root, b"x"),
                    Err(VfsError::InvalidPath(PathError::Empty { .. }))
                ),
                "write {root:?}"
            );
            assert!(matches!(
                e.files.delete(who, root),
                Err(VfsError::InvalidPath(PathError::Empty { .. }))
            ));
        }
        let c = e.files.write(who, "./shared//y.txt", b"y").unwrap();
        assert_eq!(c.path, "shared/y.txt");
        assert_eq!(e.files.read(who, "shared/y.txt").unwrap(), b"y");
        let c = e.files.write(who, "shared/ünï/ß 文件.txt", b"u").unwrap();
        assert_eq!(c.path, "shared/ünï/ß 文件.txt");
        assert_eq!(e.files.list(who, "shared/ünï").unwrap(), ["ß 文件.txt"]);
        // `Shared` is not `shared`: an ordinary private name.
        e.files.write(who, "Shared/z", b"z").unwrap();
        assert!(e.files_dir().join("agents/alice/Shared/z").is_file());
        assert_eq!(e.files.lock_path(who, "shared").unwrap(), "shared");
        assert_eq!(
            e.files.lock_path(who, "./shared//a/b").unwrap(),
            "shared/a/b"
        );
        assert_eq!(e.files.lock_path(who, "a//b").unwrap(), "private/alice/a/b");
        assert_eq!(e.files.lock_path(who, "").unwrap(), "private/alice");
    }

    #[test]
    fn planted_symlinks_reach_nothing_outside_their_area() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        let root = e.tmp.path();
        std::fs::write(root.join("outside.txt"), b"outside").unwrap();
        let other = e.sessions().join("s2/files/shared");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("secret.txt"), b"other session").unwrap();
        e.files.write(ring2(&b), "secret", b"bob's secret").unwrap();
        e.files.write(ring2(&a), "mine", b"alice").unwrap();
        e.files.write(ring2(&a), "shared/doc", b"doc").unwrap();
        e.files.write(ring2(&a), "shared/doc2", b"doc2").unwrap();
        e.files.write(ring2(&a), "shared/doc3", b"doc3").unwrap();
        e.files.write(ring2(&a), "known", b"known").unwrap();

        let shared = e.files_dir().join("shared");
        let private = e.files_dir().join("agents/alice");
        let link = |target: &Path, at: &Path| std::os::unix::fs::symlink(target, at).unwrap();
        link(Path::new("../agents/bob/secret"), &shared.join("to-bob"));
        link(Path::new("../agents/bob"), &shared.join("to-bob-dir"));
        link(
            Path::new("../../../s2/files/shared/secret.txt"),
            &shared.join("to-other"),
        );
        link(&root.join("outside.txt"), &shared.join("to-outside"));
        link(root, &shared.join("to-outside-dir"));
        link(Path::new("../bob/secret"), &private.join("to-bob"));
        link(Path::new("../../shared"), &private.join("to-shared-dir"));
        // Known files replaced behind the session's back: reads go to disk
        // and must be stopped by cap-std.
        for (at, target) in [
            (shared.join("doc"), PathBuf::from("../agents/bob/secret")),
            (
                shared.join("doc2"),
                PathBuf::from("../../../s2/files/shared/secret.txt"),
            ),
            (shared.join("doc3"), root.join("outside.txt")),
            (private.join("known"), PathBuf::from("../bob/secret")),
        ] {
            std::fs::remove_file(&at).unwrap();
            link(&target, &at);
        }
        let before_outside = tree(root.join("sessions/s2").as_path());
        let bob_before = tree(&e.files_dir().join("agents/bob"));

        let who = ring2(&a);
        let secrets: [&[u8]; 3] = [b"bob's secret", b"other session", b"outside"];
        for path in [
            "shared/to-bob",
            "shared/to-other",
            "shared/to-outside",
            "shared/doc",
            "shared/doc2",
            "shared/doc3",
            "to-bob",
            "known",
            "shared/to-bob-dir/secret",
            "shared/to-outside-dir/outside.txt",
            "to-shared-dir/doc",
        ] {
            match e.files.read(who, path) {
                Err(VfsError::Denied { .. } | VfsError::NotFound { .. }) => {}
                Ok(bytes) => panic!(
                    "read {path} returned {:?} (a secret: {})",
                    String::from_utf8_lossy(&bytes),
                    secrets.contains(&bytes.as_slice())
                ),
                Err(other) => panic!("read {path}: unexpected {other:?}"),
            }
            // A known file's hash comes from the session's metadata: the
            // content the session wrote, never a planted target's.
            if let Ok(h) = e.files.hash(who, path) {
                assert!(!secrets.iter().any(|s| sha256(s) == h), "hash {path}");
            }
            assert!(e.files.write(who, path, b"pwned").is_err(), "write {path}");
            assert!(
                e.files.append(who, path, b"pwned").is_err(),
                "append {path}"
            );
            assert!(e.files.truncate(who, path, 0).is_err(), "truncate {path}");
            assert!(e.files.delete(who, path).is_err(), "delete {path}");
            assert!(
                e.files.rename(who, path, "stolen").is_err(),
                "rename {path}"
            );
            // An ACL lives in the metadata: for a known file it may change
            // (touching nothing on disk); for anything else there is none.
            let known = ["shared/doc", "shared/doc2", "shared/doc3", "known"];
            assert!(
                known.contains(&path)
                    || e.files
                        .set_acl(who, path, acl(&a, Access::Everyone, Access::Everyone))
                        .is_err(),
                "set_acl {path}"
            );
        }
        for dir in [
            "shared/to-bob-dir",
            "shared/to-outside-dir",
            "to-shared-dir",
        ] {
            assert!(is_denied(e.files.list(who, dir)), "list {dir}");
            assert!(
                is_denied(e.files.write(who, &format!("{dir}/new.txt"), b"x")),
                "write into {dir}"
            );
            assert!(
                is_denied(e.files.create_dir(who, &format!("{dir}/sub"))),
                "mkdir in {dir}"
            );
            assert!(
                is_denied(e.files.rename(who, "mine", &format!("{dir}/mine"))),
                "move into {dir}"
            );
        }
        // Links are not shown, not even where a known file was.
        assert!(e.files.list(who, "shared").unwrap().is_empty());
        assert_eq!(e.files.list(who, "").unwrap(), ["mine", "shared"]);

        assert_eq!(std::fs::read(root.join("outside.txt")).unwrap(), b"outside");
        assert_eq!(tree(root.join("sessions/s2").as_path()), before_outside);
        assert_eq!(tree(&e.files_dir().join("agents/bob")), bob_before);
        assert_eq!(e.files.read(ring2(&b), "secret").unwrap(), b"bob's secret");
        let outside: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            outside.len(),
            2,
            "only sessions/ and outside.txt: {outside:?}"
        );
    }

    /// Every operation on a FIFO, socket or device node (at an unknown path,
    /// or where a file of the session was) answers `Denied` at once;
    /// listings hide them; snapshots skip the unknown ones and refuse a
    /// file of the session that became one; nothing waits on them.
    #[test]
    fn special_entries_are_refused_without_waiting() {
        use crate::open::tests::{mkdev, mkfifo, quickly, socket};
        let Env { tmp, files } = env();
        let files = Arc::new(files);
        let a = id("alice");
        files.set_strict(false);
        files.write(ring2(&a), "shared/known", b"known").unwrap();
        files.write(ring2(&a), "mine", b"mine").unwrap();
        files.write(ring2(&a), "shared/keep", b"keep").unwrap();
        let base = tmp.path().join("sessions/s1/files");
        let (shared, private) = (base.join("shared"), base.join("agents/alice"));
        mkfifo(&shared.join("fifo"));
        mkfifo(&private.join("pfifo"));
        let _listener = socket(&shared.join("sock"));
        let mut unknown = vec!["shared/fifo", "pfifo", "shared/sock"];
        if mkdev(&shared.join("dev")) {
            unknown.push("shared/dev");
        }
        // A snapshot skips entries that are not files of the session.
        let snap = {
            let f = files.clone();
            quickly("snapshot", move || f.snapshot()).unwrap()
        };
        assert_eq!(snap.files, 3);
        // Files of the session replaced behind its back.
        std::fs::remove_file(shared.join("known")).unwrap();
        mkfifo(&shared.join("known"));
        std::fs::remove_file(private.join("mine")).unwrap();
        mkfifo(&private.join("mine"));

        type Op = fn(&SessionFiles, Caller<'_>, &str) -> Result<(), VfsError>;
        let ops: [(&str, Op); 8] = [
            ("read", |f, w, p| f.read(w, p).map(drop)),
            ("append", |f, w, p| f.append(w, p, b"x").map(drop)),
            ("truncate", |f, w, p| f.truncate(w, p, 0).map(drop)),
            ("write", |f, w, p| f.write(w, p, b"x").map(drop)),
            ("delete", |f, w, p| f.delete(w, p).map(drop)),
            ("rename", |f, w, p| f.rename(w, p, "moved").map(drop)),
            ("stat", |f, w, p| f.stat(w, p).map(drop)),
            ("hash", |f, w, p| f.hash(w, p).map(drop)),
        ];
        for path in unknown.iter().copied().chain(["shared/known", "mine"]) {
            for (what, op) in ops {
                let known = path == "shared/known" || path == "mine";
                // A file of the session is described from its metadata,
                // which touches nothing on disk; truncate of an unknown
                // path is NotFound before anything is looked at.
                if known && matches!(what, "stat" | "hash") {
                    continue;
                }
                let (f, agent) = (files.clone(), a.clone());
                let r = quickly(&format!("{what} {path}"), move || {
                    op(&f, ring2(&agent), path)
                });
                let ok = match (&r, what) {
                    (Err(VfsError::Denied { path: p, reason }), _) => {
                        p == path
                            && (reason.contains("FIFO")
                                || reason.contains("socket")
                                || reason.contains("device"))
                    }
                    (Err(VfsError::NotFound { .. }), "truncate") => !known,
                    _ => false,
                };
                assert!(ok, "{what} {path}: {r:?}");
            }
        }
        // Listings show neither the planted entries nor the replaced files.
        assert_eq!(files.list(ring2(&a), "shared").unwrap(), ["keep"]);
        assert_eq!(files.list(ring2(&a), "").unwrap(), ["shared"]);
        // A file of the session that is now a FIFO: the snapshot cannot be
        // exact, so it fails (naming it) and keeps nothing.
        let f = files.clone();
        match quickly("snapshot", move || f.snapshot()) {
            Err(VfsError::Denied { path, .. }) => {
                assert!(path == "shared/known" || path == "mine", "{path}")
            }
            other => panic!("snapshot over a FIFO: {other:?}"),
        }
        assert!(!base.join("../snapshots/2").exists());
        // A restore never opens what was planted in the snapshot's copy.
        let copy = tmp
            .path()
            .join("sessions/s1/snapshots")
            .join(snap.id.to_string());
        std::fs::remove_file(copy.join("shared/keep")).unwrap();
        mkfifo(&copy.join("shared/keep"));
        let f = files.clone();
        assert!(matches!(
            quickly("restore", move || f.restore(snap.id)),
            Err(VfsError::Denied { path, .. }) if path == "shared/keep"
        ));
        assert!(
            std::fs::symlink_metadata(shared.join("keep"))
                .unwrap()
                .is_file(),
            "a failed restore leaves the session as it was"
        );
        assert_eq!(files.read(ring2(&a), "shared/keep").unwrap(), b"keep");
    }

    /// A hard link planted where a file of the session was (or made to one
    /// of its files from outside) is never changed in place; the file
    /// outside keeps its bytes through every operation and every undo.
    #[test]
    fn planted_hard_links_are_never_changed_in_place() {
        let e = env();
        let a = id("alice");
        let w = ring2(&a);
        e.files.set_strict(false);
        let outside = e.tmp.path().join("outside.txt");
        std::fs::write(&outside, b"outside").unwrap();
        let shared = e.files_dir().join("shared");
        e.files.write(w, "shared/doc", b"outside").unwrap();
        let appended = e.files.append(w, "shared/grow", b"abc").unwrap();
        let appended = e
            .files
            .append(w, "shared/grow", b"def")
            .unwrap()
            .undo
            .or(appended.undo)
            .unwrap();
        let truncated = e.files.truncate(w, "shared/grow", 2).unwrap().undo.unwrap();
        // Replace the session's files with links to the outside file.
        std::fs::remove_file(shared.join("doc")).unwrap();
        std::fs::hard_link(&outside, shared.join("doc")).unwrap();
        fn linked<T>(r: Result<T, VfsError>) -> bool {
            matches!(&r, Err(VfsError::Denied { reason, .. }) if reason.contains("hard links"))
        }
        assert!(linked(e.files.append(w, "shared/doc", b" pwned")));
        assert!(linked(e.files.truncate(w, "shared/doc", 1)));
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        // An undo that would truncate or append in place is refused too.
        let link = e.tmp.path().join("grow-link");
        std::fs::hard_link(shared.join("grow"), &link).unwrap();
        assert!(linked(e.files.undo(truncated)));
        assert_eq!(std::fs::read(&link).unwrap(), b"ab");
        std::fs::remove_file(&link).unwrap();
        e.files.undo(truncated).unwrap();
        assert_eq!(e.files.read(w, "shared/grow").unwrap(), b"abcdef");
        std::fs::hard_link(shared.join("grow"), &link).unwrap();
        assert!(linked(e.files.undo(appended)));
        assert_eq!(std::fs::read(&link).unwrap(), b"abcdef");
        // A write puts a new inode at the path; the outside file keeps its bytes.
        let c = e.files.write(w, "shared/doc", b"new").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        assert_eq!(e.files.read(w, "shared/doc").unwrap(), b"new");
        e.files.append(w, "shared/doc", b"!").unwrap();
        assert_eq!(e.files.read(w, "shared/doc").unwrap(), b"new!");
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        // Its undo puts the old entry back (the link), changing no bytes.
        e.files.undo(c.undo.unwrap()).unwrap_err();
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
    }

    /// The hostile sequence that made every later snapshot fail: two deep
    /// trees and one rename that nests one into the other. Nesting is
    /// bounded where it happens, so the rename is refused and snapshots go
    /// on working for everyone.
    #[test]
    fn renames_never_nest_trees_deeper_than_a_guest_path() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        let (wa, wb) = (ring2(&a), ring2(&b));
        e.files.set_strict(false);
        let deep = |p: &str| {
            (1..=crate::path::MAX_DEPTH)
                .map(|i| format!("{p}{i}"))
                .collect::<Vec<_>>()
                .join("/")
        };
        e.files.create_dir(wa, &deep("a")).unwrap();
        e.files.create_dir(wa, &deep("b")).unwrap();
        e.files
            .write(
                wa,
                &format!("{}/f", deep("c").rsplit_once('/').unwrap().0),
                b"f",
            )
            .unwrap();
        e.files.write(wb, "shared/doc", b"bob's").unwrap();
        let before = e.state();
        let too_deep = |r: Result<FileChange, VfsError>| {
            matches!(r, Err(VfsError::InvalidPath(PathError::TooDeep { .. })))
        };
        // Into another deep tree, one level deeper, into shared/ (one more
        // component).
        assert!(too_deep(e.files.rename(
            wa,
            "a1",
            &format!("{}/x", deep("b"))
        )));
        assert!(too_deep(e.files.rename(wa, "a1/a2", "b1/b2/n")));
        assert!(too_deep(e.files.rename(wa, "a1", "shared/a1")));
        assert!(
            too_deep(e.files.rename(wa, "c1", "shared/c1")),
            "files count too"
        );
        assert_eq!(e.state(), before, "a refused rename changes nothing");
        // Exactly as deep as a guest path may be is fine.
        e.files.rename(wa, "a1/a2", "z").unwrap();
        e.files.rename(wa, "z", "y/z").unwrap();
        e.files
            .list(wa, &deep("a").replacen("a1/a2", "y/z", 1))
            .unwrap();
        // Too long in bytes: four 200-byte names below the one moved under
        // two more.
        let long = |c: char| c.to_string().repeat(200);
        let tree = (0..5).map(|_| long('l')).collect::<Vec<_>>().join("/");
        e.files.create_dir(wa, &tree).unwrap();
        assert!(matches!(
            e.files
                .rename(wa, &long('l'), &format!("{0}/{0}/x", long('m'))),
            Err(VfsError::InvalidPath(PathError::TooLong { .. }))
        ));
        // Snapshots work for everyone, and restore.
        let snap = e.files.snapshot().unwrap();
        e.files.write(wb, "shared/doc", b"changed").unwrap();
        e.files.restore(snap.id).unwrap();
        assert_eq!(e.files.read(wb, "shared/doc").unwrap(), b"bob's");
    }

    /// Undoing a rename moves the directory back with whatever was made
    /// below it since: refused when that would nest too deep.
    #[test]
    fn undoing_a_rename_never_nests_too_deep() {
        let e = env();
        let a = id("alice");
        let w = ring2(&a);
        let path = |p: &str, n: usize| {
            (1..=n)
                .map(|i| format!("{p}{i}"))
                .collect::<Vec<_>>()
                .join("/")
        };
        e.files.create_dir(w, &path("d", 31)).unwrap();
        let r = e.files.rename(w, &path("d", 31), "top").unwrap();
        e.files
            .create_dir(w, &format!("top/{}", path("x", 20)))
            .unwrap();
        let before = e.state();
        assert!(matches!(
            e.files.undo(r.undo.unwrap()),
            Err(VfsError::Conflict { reason, .. }) if reason.contains("too deep")
        ));
        assert_eq!(e.state(), before);
        e.files
            .delete(w, &format!("top/{}", path("x", 20)))
            .unwrap();
        for n in (1..20).rev() {
            e.files.delete(w, &format!("top/{}", path("x", n))).unwrap();
        }
        e.files.undo(r.undo.unwrap()).unwrap();
        assert!(e.files.stat(w, &path("d", 31)).is_ok());
    }

    #[test]
    fn shared_files_follow_their_acl() {
        let e = env();
        let (a, b, c) = (id("alice"), id("bob"), id("carol"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "shared/doc", b"v1").unwrap();
        assert_eq!(
            e.files.get_acl(ring2(&b), "shared/doc").unwrap(),
            acl(&a, Access::Everyone, Access::Everyone),
            "creator owns it, everyone may read and write"
        );
        e.files
            .write(ring2(&b), "shared/doc", b"v2 by bob")
            .unwrap();
        e.files
            .set_acl(
                ring2(&a),
                "shared/doc",
                acl(&a, Access::Everyone, Access::Owner),
            )
            .unwrap();
        assert_eq!(e.files.read(ring2(&b), "shared/doc").unwrap(), b"v2 by bob");
        let err = e.files.write(ring2(&b), "shared/doc", b"v3").unwrap_err();
        match &err {
            VfsError::Denied { path, reason } => {
                assert_eq!(path, "shared/doc");
                assert!(
                    reason.contains("bob") && reason.contains("write"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(is_denied(e.files.append(ring2(&b), "shared/doc", b"+")));
        assert!(is_denied(e.files.truncate(ring2(&b), "shared/doc", 0)));
        assert!(is_denied(e.files.delete(ring2(&b), "shared/doc")));
        assert!(is_denied(e.files.rename(
            ring2(&b),
            "shared/doc",
            "shared/d2"
        )));
        assert!(is_denied(e.files.rename(ring2(&b), "shared/doc", "stolen")));
        // Ring 1 is not an ACL bypass; it may change the ACL (recorded) instead.
        assert!(is_denied(e.files.write(ring1(&b), "shared/doc", b"v3")));
        e.files
            .write(ring2(&a), "shared/doc", b"v3 by alice")
            .unwrap();

        e.files
            .set_acl(
                ring2(&a),
                "shared/doc",
                acl(&a, Access::Agents(vec![c.clone()]), Access::Owner),
            )
            .unwrap();
        let err = e.files.read(ring2(&b), "shared/doc").unwrap_err();
        assert!(
            matches!(&err, VfsError::Denied { reason, .. } if reason.contains("read") && reason.contains("carol")),
            "{err:?}"
        );
        assert!(is_denied(e.files.stat(ring2(&b), "shared/doc")));
        assert!(is_denied(e.files.hash(ring2(&b), "shared/doc")));
        assert_eq!(
            e.files.read(ring2(&c), "shared/doc").unwrap(),
            b"v3 by alice"
        );
        // Names stay visible.
        assert_eq!(e.files.list(ring2(&b), "shared").unwrap(), ["doc"]);

        // The ACL moves with the file.
        e.files
            .rename(ring2(&a), "shared/doc", "shared/sub/doc")
            .unwrap();
        assert_eq!(
            e.files.get_acl(ring2(&a), "shared/sub/doc").unwrap(),
            acl(&a, Access::Agents(vec![c.clone()]), Access::Owner)
        );
        assert!(is_denied(e.files.read(ring2(&b), "shared/sub/doc")));
        // A directory move needs write access to every file below it.
        assert!(is_denied(e.files.rename(
            ring2(&b),
            "shared/sub",
            "shared/mine"
        )));
        e.files
            .rename(ring2(&a), "shared/sub", "shared/sub2")
            .unwrap();
        assert_eq!(
            e.files.read(ring2(&c), "shared/sub2/doc").unwrap(),
            b"v3 by alice"
        );
    }

    #[test]
    fn acl_changes_need_the_owner_or_ring_1() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "shared/doc", b"x").unwrap();
        let open = acl(&a, Access::Everyone, Access::Everyone);
        let closed = acl(&a, Access::Owner, Access::Owner);
        let err = e
            .files
            .set_acl(ring2(&b), "shared/doc", closed.clone())
            .unwrap_err();
        assert!(
            matches!(&err, VfsError::Denied { path, reason } if path == "shared/doc" && reason.contains("bob") && reason.contains("owner")),
            "{err:?}"
        );
        let c = e
            .files
            .set_acl(ring1(&b), "shared/doc", closed.clone())
            .unwrap();
        assert_eq!(c.op, FileOp::SetAcl);
        assert_eq!(c.after, Some(sha256(b"x")));
        assert_eq!(e.files.get_acl(ring2(&a), "shared/doc").unwrap(), closed);
        // Only ring ≤ 1 changes the owner, even for the owner itself.
        let to_bob = acl(&b, Access::Owner, Access::Owner);
        assert!(is_denied(e.files.set_acl(
            ring2(&a),
            "shared/doc",
            to_bob.clone()
        )));
        e.files
            .set_acl(ring2(&a), "shared/doc", open.clone())
            .unwrap();
        let root = Caller::untraced(&b, Ring::Root);
        e.files.set_acl(root, "shared/doc", to_bob.clone()).unwrap();
        assert_eq!(e.files.get_acl(ring2(&a), "shared/doc").unwrap(), to_bob);
        assert!(is_denied(e.files.read(ring2(&a), "shared/doc")));

        // Private files: owner-only, no ACL to change.
        e.files.write(ring2(&a), "mine", b"m").unwrap();
        assert_eq!(
            e.files.get_acl(ring2(&a), "mine").unwrap(),
            acl(&a, Access::Owner, Access::Owner)
        );
        assert!(is_denied(e.files.set_acl(ring2(&a), "mine", open.clone())));
        assert!(is_denied(e.files.set_acl(ring1(&a), "mine", open.clone())));
        // Directories carry no ACL; missing files are NotFound.
        e.files.create_dir(ring2(&a), "shared/dir").unwrap();
        assert!(is_denied(e.files.get_acl(ring2(&a), "shared/dir")));
        assert!(is_denied(e.files.set_acl(
            ring1(&a),
            "shared/dir",
            open.clone()
        )));
        assert!(matches!(
            e.files.get_acl(ring2(&a), "shared/none"),
            Err(VfsError::NotFound { .. })
        ));
        // ACL lists are bounded.
        let many: Vec<AgentId> = (0..=MAX_ACL_AGENTS).map(|i| id(&format!("a{i}"))).collect();
        e.files.write(ring2(&a), "shared/other", b"o").unwrap();
        assert!(matches!(
            e.files.set_acl(
                ring2(&a),
                "shared/other",
                acl(&a, Access::Agents(many), Access::Owner)
            ),
            Err(VfsError::Quota { .. })
        ));
    }

    #[test]
    fn quotas_refuse_before_anything_changes() {
        let e = env_with(FileQuotas {
            max_file_bytes: 10,
            max_total_bytes: 25,
            max_files: 3,
            ..FileQuotas::default()
        });
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "f1", &[1; 10]).unwrap();
        e.files.write(ring2(&b), "shared/f2", &[2; 10]).unwrap();
        let full = e.state();
        let usage = e.files.usage();
        assert_eq!(
            usage,
            Usage {
                files: 2,
                bytes: 20,
                dirs: 0,
            }
        );

        let err = e.files.write(ring2(&b), "f3", &[3; 6]).unwrap_err();
        assert!(
            matches!(&err, VfsError::Quota { path, reason } if path == "f3" && reason.contains("26") && reason.contains("25")),
            "{err:?}"
        );
        let err = e.files.write(ring2(&a), "f1", &[9; 11]).unwrap_err();
        assert!(
            matches!(&err, VfsError::Quota { path, reason } if path == "f1" && reason.contains("11") && reason.contains("10")),
            "{err:?}"
        );
        assert!(matches!(
            e.files.append(ring2(&a), "shared/f2", b"x"),
            Err(VfsError::Quota { .. })
        ));
        assert!(matches!(
            e.files.append(ring2(&a), "new", &[0; 6]),
            Err(VfsError::Quota { .. })
        ));
        assert_eq!(e.state(), full, "refusals change nothing, byte for byte");
        assert_eq!(e.files.usage(), usage);

        e.files.write(ring2(&b), "f3", &[3; 5]).unwrap();
        let err = e.files.write(ring2(&a), "f4", b"").unwrap_err();
        assert!(
            matches!(&err, VfsError::Quota { reason, .. } if reason.contains("3 files")),
            "{err:?}"
        );
        // Replacing a file counts only the difference.
        e.files.write(ring2(&a), "f1", &[1; 5]).unwrap();
        e.files.write(ring2(&b), "shared/f2", &[2; 10]).unwrap();
        e.files.append(ring2(&a), "f1", &[1; 5]).unwrap();
        assert_eq!(
            e.files.usage(),
            Usage {
                files: 3,
                bytes: 25,
                dirs: 0,
            }
        );
        // Deleting frees room.
        e.files.delete(ring2(&b), "f3").unwrap();
        e.files.write(ring2(&a), "f4", &[4; 5]).unwrap();
        assert_eq!(
            e.files.usage(),
            Usage {
                files: 3,
                bytes: 25,
                dirs: 0,
            }
        );
        assert_eq!(e.files.read(ring2(&a), "f1").unwrap(), [1; 10]);
        assert_eq!(e.files.read(ring2(&a), "shared/f2").unwrap(), [2; 10]);
    }

    #[test]
    fn listings_are_bounded() {
        let e = env_with(FileQuotas {
            max_list_entries: 3,
            ..FileQuotas::default()
        });
        let a = id("alice");
        for n in ["a", "b"] {
            e.files.write(ring2(&a), n, b"").unwrap();
        }
        assert_eq!(e.files.list(ring2(&a), "").unwrap(), ["a", "b", "shared"]);
        e.files.write(ring2(&a), "c", b"").unwrap();
        assert!(matches!(
            e.files.list(ring2(&a), ""),
            Err(VfsError::Quota { .. })
        ));
    }

    #[test]
    fn hashes_follow_every_change() {
        let e = env();
        let a = id("alice");
        let who = ring2(&a);
        let c = e.files.write(who, "shared/h", b"hello").unwrap();
        assert_eq!(
            (c.op, c.before, c.after, c.size),
            (FileOp::Write, None, Some(sha256(b"hello")), 5)
        );
        assert_eq!(c.path, "shared/h");
        assert!(c.undo.is_some());
        let c = e.files.append(who, "shared/h", b" world").unwrap();
        assert_eq!(
            (c.before, c.after, c.size),
            (Some(sha256(b"hello")), Some(sha256(b"hello world")), 11)
        );
        assert_eq!(
            e.files.hash(who, "shared/h").unwrap(),
            sha256(b"hello world")
        );
        let c = e.files.truncate(who, "shared/h", 4).unwrap();
        assert_eq!(
            (c.op, c.after, c.size),
            (FileOp::Truncate, Some(sha256(b"hell")), 4)
        );
        assert!(
            is_denied(e.files.truncate(who, "shared/h", 5)),
            "truncate only shortens"
        );
        let c = e.files.append(who, "shared/h", b"o").unwrap();
        assert_eq!(c.after, Some(sha256(b"hello")));
        let c = e.files.rename(who, "shared/h", "h2").unwrap();
        assert_eq!(
            (c.op, c.path.as_str(), c.to.as_deref()),
            (FileOp::Rename, "shared/h", Some("h2"))
        );
        assert_eq!(
            (c.before, c.after, c.size),
            (Some(sha256(b"hello")), Some(sha256(b"hello")), 5)
        );
        assert_eq!(
            e.files.hash(who, "h2").unwrap(),
            sha256(&e.files.read(who, "h2").unwrap())
        );
        let c = e.files.delete(who, "h2").unwrap();
        assert_eq!(
            (c.op, c.before, c.after, c.size),
            (FileOp::Delete, Some(sha256(b"hello")), None, 0)
        );
        let c = e.files.append(who, "new", b"n").unwrap();
        assert_eq!(
            (c.op, c.before, c.after),
            (FileOp::Append, None, Some(sha256(b"n")))
        );
        assert!(matches!(
            e.files.hash(who, "h2"),
            Err(VfsError::NotFound { .. })
        ));
        e.files.create_dir(who, "d").unwrap();
        assert!(matches!(e.files.hash(who, "d"), Err(VfsError::Io { .. })));
    }

    #[test]
    fn strict_mode_refuses_writers_that_missed_the_latest_write() {
        let e = env();
        let (a, b, c) = (id("alice"), id("bob"), id("carol"));
        e.files.write(ring2(&a), "shared/doc", b"a1").unwrap();
        let err = e.files.write(ring2(&b), "shared/doc", b"b1").unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { path, reason } if path == "shared/doc" && reason.starts_with("stale")),
            "{err:?}"
        );
        for refused in [
            e.files.append(ring2(&b), "shared/doc", b"+"),
            e.files.truncate(ring2(&b), "shared/doc", 0),
            e.files.delete(ring2(&b), "shared/doc"),
            e.files.rename(ring2(&b), "shared/doc", "shared/moved"),
            e.files.set_acl(
                ring1(&b),
                "shared/doc",
                acl(&a, Access::Owner, Access::Owner),
            ),
        ] {
            assert!(
                matches!(refused, Err(VfsError::Conflict { .. })),
                "{refused:?}"
            );
        }
        assert_eq!(e.files.read(ring2(&a), "shared/doc").unwrap(), b"a1");
        // After reading, bob has seen alice's write.
        assert_eq!(e.files.read(ring2(&b), "shared/doc").unwrap(), b"a1");
        e.files.write(ring2(&b), "shared/doc", b"b1").unwrap();
        // Now alice is the stale one; a stat or hash counts as a read.
        assert!(matches!(
            e.files.write(ring2(&a), "shared/doc", b"a2"),
            Err(VfsError::Conflict { .. })
        ));
        e.files.hash(ring2(&a), "shared/doc").unwrap();
        e.files.write(ring2(&a), "shared/doc", b"a2").unwrap();
        // Concurrent: carol has seen something alice's file never saw, and not the latest.
        e.files.stat(ring2(&c), "shared/doc").unwrap();
        e.files.write(ring2(&a), "shared/doc", b"a3").unwrap();
        e.files.write(ring2(&c), "shared/other", b"c1").unwrap();
        let err = e.files.write(ring2(&c), "shared/doc", b"c2").unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { reason, .. } if reason.starts_with("concurrent")),
            "{err:?}"
        );
        // Eventual mode accepts, and still advances the clocks.
        e.files.set_strict(false);
        e.files.write(ring2(&c), "shared/doc", b"c2").unwrap();
        e.files.set_strict(true);
        assert!(matches!(
            e.files.write(ring2(&a), "shared/doc", b"a4"),
            Err(VfsError::Conflict { .. })
        ));
        // Private files only ever see their owner.
        e.files.write(ring2(&b), "p", b"1").unwrap();
        e.files.write(ring2(&b), "p", b"2").unwrap();
    }

    #[test]
    fn concurrent_clocks_are_reported_as_such() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.write(ring2(&a), "shared/x", b"a").unwrap();
        e.files.read(ring2(&b), "shared/x").unwrap();
        e.files.write(ring2(&b), "shared/x", b"b").unwrap();
        // alice writes elsewhere: her clock now has an entry x's clock lacks.
        e.files.write(ring2(&a), "shared/y", b"a").unwrap();
        let err = e.files.write(ring2(&a), "shared/x", b"a2").unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { reason, .. } if reason.starts_with("concurrent")),
            "{err:?}"
        );
    }

    /// Runs `change`, checks it changed something, undoes it and checks that
    /// files and metadata are exactly as before.
    fn undo_restores(e: &Env, change: impl FnOnce() -> FileChange) {
        let before = e.state();
        let records = e.files.undo_records().len();
        let c = change();
        assert_ne!(e.state(), before, "{c:?} changed nothing");
        let id = c.undo.expect("an undo record");
        let info = e.files.undo_records().pop().unwrap();
        assert_eq!(
            (info.id, info.op, info.path.as_str(), info.to.as_deref()),
            (id, c.op, c.path.as_str(), c.to.as_deref())
        );
        e.files.undo(id).unwrap();
        assert_eq!(e.state(), before, "after undoing {c:?}");
        assert_eq!(e.files.undo_records().len(), records);
        assert!(
            matches!(e.files.undo(id), Err(VfsError::Io { op: "undo", .. })),
            "only once"
        );
    }

    #[test]
    fn undo_compensates_each_kind_of_change() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        let (wa, wb) = (ring2(&a), ring2(&b));
        e.files.write(wa, "shared/doc", b"original").unwrap();
        e.files.write(wa, "notes/n.txt", b"note").unwrap();
        e.files.write(wb, "shared/dir/one", b"1").unwrap();
        e.files.write(wb, "shared/dir/sub/two", b"22").unwrap();
        e.files.create_dir(wa, "empty").unwrap();

        undo_restores(&e, || {
            e.files.write(wa, "new/deep/file.txt", b"new").unwrap()
        });
        assert!(
            !e.files_dir().join("agents/alice/new").exists(),
            "made dirs removed"
        );
        undo_restores(&e, || {
            e.files.write(wb, "shared/doc", b"overwritten").unwrap()
        });
        undo_restores(&e, || {
            e.files.append(wb, "shared/doc", b" and more").unwrap()
        });
        undo_restores(&e, || {
            e.files.append(wa, "fresh", b"created by append").unwrap()
        });
        undo_restores(&e, || e.files.truncate(wb, "shared/doc", 3).unwrap());
        undo_restores(&e, || e.files.truncate(wa, "notes/n.txt", 0).unwrap());
        undo_restores(&e, || e.files.delete(wb, "shared/doc").unwrap());
        undo_restores(&e, || e.files.delete(wa, "empty").unwrap());
        undo_restores(&e, || {
            e.files
                .rename(wa, "notes/n.txt", "archive/2024/n.txt")
                .unwrap()
        });
        undo_restores(&e, || e.files.rename(wa, "notes", "renamed").unwrap());
        undo_restores(&e, || {
            e.files
                .rename(wa, "shared/dir", "shared/moved/dir")
                .unwrap()
        });
        undo_restores(&e, || {
            e.files.rename(wa, "notes", "shared/published").unwrap()
        });
        undo_restores(&e, || e.files.rename(wb, "shared/dir", "taken").unwrap());
        undo_restores(&e, || e.files.rename(wa, "shared/doc", "doc").unwrap());
        undo_restores(&e, || {
            e.files
                .set_acl(wa, "shared/doc", acl(&a, Access::Owner, Access::Owner))
                .unwrap()
        });
        assert_eq!(e.files.read(wb, "shared/doc").unwrap(), b"original");
        assert_eq!(
            e.files.get_acl(wb, "shared/doc").unwrap(),
            acl(&a, Access::Everyone, Access::Everyone)
        );
        assert_eq!(
            std::fs::read_dir(e.undo_dir()).unwrap().count(),
            0,
            "undone records leave no blobs"
        );
    }

    #[test]
    fn undo_refuses_when_the_path_changed_since() {
        let e = env();
        let a = id("alice");
        let who = ring2(&a);
        e.files.write(who, "f", b"v1").unwrap();
        let w2 = e.files.write(who, "f", b"v2").unwrap().undo.unwrap();
        let ap = e.files.append(who, "f", b"+").unwrap().undo.unwrap();
        let err = e.files.undo(w2).unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { path, reason } if path == "f" && reason.contains(&format!("undo record {w2}"))),
            "{err:?}"
        );
        assert_eq!(e.files.read(who, "f").unwrap(), b"v2+");
        e.files.undo(ap).unwrap();
        e.files.undo(w2).unwrap();
        assert_eq!(e.files.read(who, "f").unwrap(), b"v1");

        e.files.write(who, "g", b"g").unwrap();
        let del = e.files.delete(who, "g").unwrap().undo.unwrap();
        e.files.write(who, "g", b"g again").unwrap();
        assert!(matches!(e.files.undo(del), Err(VfsError::Conflict { .. })));
        assert_eq!(e.files.read(who, "g").unwrap(), b"g again");

        e.files.write(who, "h", b"h").unwrap();
        let ren = e.files.rename(who, "h", "i").unwrap().undo.unwrap();
        e.files.write(who, "i", b"changed").unwrap();
        assert!(matches!(e.files.undo(ren), Err(VfsError::Conflict { .. })));
        e.files.write(who, "j", b"j").unwrap();
        let ren2 = e.files.rename(who, "j", "k").unwrap().undo.unwrap();
        e.files.write(who, "j", b"new j").unwrap();
        assert!(matches!(e.files.undo(ren2), Err(VfsError::Conflict { .. })));

        e.files.write(who, "dir/one", b"1").unwrap();
        let ren3 = e.files.rename(who, "dir", "dir2").unwrap().undo.unwrap();
        let added = e
            .files
            .write(who, "dir2/added", b"+")
            .unwrap()
            .undo
            .unwrap();
        let err = e.files.undo(ren3).unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { path, .. } if path == "dir2"),
            "{err:?}"
        );
        e.files.undo(added).unwrap();
        e.files.undo(ren3).unwrap();
        assert_eq!(e.files.list(who, "dir").unwrap(), ["one"]);

        let acl_rec = e
            .files
            .set_acl(who, "shared/x", acl(&a, Access::Owner, Access::Owner))
            .map(|c| c.undo);
        assert!(matches!(acl_rec, Err(VfsError::NotFound { .. })));
        let err = e.files.undo(9999).unwrap_err();
        assert!(err.to_string().contains("9999"), "{err}");
        assert!(
            e.files
                .undo_records()
                .iter()
                .any(|r| r.id == ren && r.to.as_deref() == Some("i"))
        );
    }

    #[test]
    fn the_undo_log_is_bounded() {
        let e = env_with(FileQuotas {
            max_undo_records: 3,
            ..FileQuotas::default()
        });
        let a = id("alice");
        let ids: Vec<u64> = (0..6)
            .map(|i| {
                e.files
                    .write(ring2(&a), "f", format!("v{i}").as_bytes())
                    .unwrap()
                    .undo
                    .unwrap()
            })
            .collect();
        let kept: Vec<u64> = e.files.undo_records().iter().map(|r| r.id).collect();
        assert_eq!(kept, ids[3..]);
        assert_eq!(
            std::fs::read_dir(e.undo_dir()).unwrap().count(),
            3,
            "pruned blobs are deleted"
        );
        assert!(matches!(e.files.undo(ids[0]), Err(VfsError::Io { .. })));
        for id in ids[3..].iter().rev() {
            e.files.undo(*id).unwrap();
        }
        assert_eq!(e.files.read(ring2(&a), "f").unwrap(), b"v2");

        // The old contents kept are bounded by max_total_bytes too.
        let e = env_with(FileQuotas {
            max_total_bytes: 100,
            ..FileQuotas::default()
        });
        for i in 0..4u8 {
            e.files.write(ring2(&a), "big", &[i; 60]).unwrap();
        }
        let kept_bytes: u64 = std::fs::read_dir(e.undo_dir())
            .unwrap()
            .map(|f| f.unwrap().metadata().unwrap().len())
            .sum();
        assert!(kept_bytes <= 100, "{kept_bytes}");
        // Each overwrite keeps 60 bytes: only the newest record fits.
        assert_eq!(e.files.undo_records().len(), 1);
        assert_eq!(kept_bytes, 60);
    }

    #[test]
    fn restore_returns_exactly_to_the_snapshot() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        let (wa, wb) = (ring2(&a), ring2(&b));
        e.files.write(wa, "a.txt", b"alice a").unwrap();
        e.files.write(wa, "d/x", b"alice x").unwrap();
        e.files.write(wa, "shared/s1", b"one").unwrap();
        e.files.write(wb, "shared/s2", b"two").unwrap();
        e.files.write(wb, "log", b"line 1\n").unwrap();
        e.files
            .set_acl(wb, "shared/s2", acl(&b, Access::Everyone, Access::Owner))
            .unwrap();
        e.files.create_dir(wa, "shared/empty").unwrap();
        let snap = e.files.snapshot().unwrap();
        assert_eq!((snap.files, snap.bytes), (5, 7 + 7 + 3 + 3 + 7));
        let before = e.state();
        let lists = |e: &Env| {
            (
                e.files.list(wa, "").unwrap(),
                e.files.list(wb, "").unwrap(),
                e.files.list(wa, "shared").unwrap(),
            )
        };
        let listed = lists(&e);

        e.files.write(wa, "a.txt", b"changed").unwrap();
        e.files.append(wb, "log", b"line 2\n").unwrap();
        e.files.append(wa, "shared/s1", b" more").unwrap();
        e.files.delete(wa, "d/x").unwrap();
        e.files.rename(wb, "shared/s2", "shared/s3").unwrap();
        e.files
            .set_acl(wa, "shared/s1", acl(&a, Access::Owner, Access::Owner))
            .unwrap();
        e.files.write(wb, "new.txt", b"new in bob").unwrap();
        e.files.write(wa, "shared/new", b"new in shared").unwrap();
        let carol = id("carol");
        e.files.write(ring2(&carol), "c", b"carol").unwrap();
        e.files.create_dir(wa, "shared/newdir").unwrap();
        e.files.delete(wa, "shared/empty").unwrap();
        assert_ne!(e.state(), before);

        e.files.restore(snap.id).unwrap();
        // Exactly the snapshot, but for the clocks: each gains the restore's tick.
        let restored = |n: u64| {
            let (tree, (usage, metas)) = before.clone();
            let ticked = |m: &String| m.replace("clock={", &format!("clock={{ahv:restore: {n}, "));
            (tree, (usage, metas.iter().map(ticked).collect::<Vec<_>>()))
        };
        assert_eq!(e.state(), restored(1));
        assert_eq!(lists(&e), listed);
        assert_eq!(
            e.files.usage(),
            Usage {
                files: 5,
                bytes: snap.bytes,
                dirs: 2,
            }
        );
        assert_eq!(e.files.read(wb, "log").unwrap(), b"line 1\n");
        assert_eq!(
            e.files.get_acl(wa, "shared/s2").unwrap(),
            acl(&b, Access::Everyone, Access::Owner)
        );
        assert!(
            e.files.undo_records().is_empty(),
            "restore clears the undo log"
        );
        assert_eq!(std::fs::read_dir(e.undo_dir()).unwrap().count(), 0);

        // The snapshot is unaffected by later changes and can be restored again.
        e.files.append(wb, "log", b"line 2\n").unwrap();
        e.files.write(wa, "shared/s1", b"again").unwrap();
        let later = e.files.snapshot().unwrap();
        e.files.restore(snap.id).unwrap();
        assert_eq!(e.state(), restored(2));
        e.files.restore(later.id).unwrap();
        assert_eq!(e.files.read(wb, "log").unwrap(), b"line 1\nline 2\n");
        e.files.drop_snapshot(later.id).unwrap();
        assert!(
            !e.session_dir()
                .join(format!("snapshots/{}", later.id))
                .exists()
        );

        let err = e.files.restore(42).unwrap_err();
        assert!(err.to_string().contains("snapshot 42"), "{err}");
        assert!(e.files.drop_snapshot(42).is_err());
    }

    /// In strict mode a write based on what the writer read before a restore
    /// is stale: it must read the restored file first.
    #[test]
    fn after_a_restore_writers_must_read_again() {
        let e = env();
        let alice = id("alice");
        let w = ring2(&alice);
        e.files.write(w, "shared/doc", b"v1").unwrap();
        let snap = e.files.snapshot().unwrap();
        e.files.write(w, "shared/doc", b"v2").unwrap();
        e.files.restore(snap.id).unwrap();
        let err = e
            .files
            .write(w, "shared/doc", b"v3 built on v2")
            .unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { reason, .. } if reason.contains("has not seen the latest write")),
            "{err:?}"
        );
        assert_eq!(e.files.read(w, "shared/doc").unwrap(), b"v1");
        e.files.write(w, "shared/doc", b"v3 built on v1").unwrap();
    }

    #[test]
    fn snapshots_are_bounded() {
        let e = env();
        for _ in 0..MAX_SNAPSHOTS {
            e.files.snapshot().unwrap();
        }
        assert!(matches!(e.files.snapshot(), Err(VfsError::Quota { .. })));
        e.files.drop_snapshot(1).unwrap();
        e.files.snapshot().unwrap();
    }

    #[test]
    fn moving_between_areas_changes_the_acl() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "draft.md", b"draft").unwrap();
        e.files
            .rename(ring2(&a), "draft.md", "shared/pub/draft.md")
            .unwrap();
        assert_eq!(
            e.files.read(ring2(&b), "shared/pub/draft.md").unwrap(),
            b"draft"
        );
        assert_eq!(
            e.files.get_acl(ring2(&b), "shared/pub/draft.md").unwrap(),
            acl(&a, Access::Everyone, Access::Everyone)
        );
        e.files
            .set_acl(
                ring2(&a),
                "shared/pub/draft.md",
                acl(&a, Access::Owner, Access::Everyone),
            )
            .unwrap();
        let err = e
            .files
            .rename(ring2(&b), "shared/pub/draft.md", "mine.md")
            .unwrap_err();
        assert!(
            matches!(&err, VfsError::Denied { reason, .. } if reason.contains("read")),
            "{err:?}"
        );
        e.files.rename(ring2(&a), "shared/pub", "back").unwrap();
        assert_eq!(e.files.read(ring2(&a), "back/draft.md").unwrap(), b"draft");
        assert_eq!(
            e.files.get_acl(ring2(&a), "back/draft.md").unwrap(),
            acl(&a, Access::Owner, Access::Owner)
        );
        assert!(e.files_dir().join("agents/alice/back/draft.md").is_file());
        assert!(matches!(
            e.files.rename(ring2(&a), "back", "back/inner"),
            Err(VfsError::Denied { .. })
        ));
        e.files.write(ring2(&a), "other", b"o").unwrap();
        assert!(matches!(
            e.files.rename(ring2(&a), "other", "back/draft.md"),
            Err(VfsError::AlreadyExists { path }) if path == "back/draft.md"
        ));
        assert_eq!(
            e.files.usage(),
            Usage {
                files: 2,
                bytes: 6,
                dirs: 1
            }
        );
    }

    #[test]
    fn forget_keeps_the_files() {
        let e = env();
        let a = id("alice");
        e.files.write(ring2(&a), "keep", b"k").unwrap();
        e.files.forget(&a);
        assert!(e.files_dir().join("agents/alice/keep").is_file());
        assert_eq!(e.files.read(ring2(&a), "keep").unwrap(), b"k");
    }

    #[test]
    fn deleting_directories() {
        let e = env();
        let a = id("alice");
        e.files.write(ring2(&a), "d/f", b"f").unwrap();
        assert!(matches!(
            e.files.delete(ring2(&a), "d"),
            Err(VfsError::Io { op: "delete", .. })
        ));
        e.files.delete(ring2(&a), "d/f").unwrap();
        e.files.delete(ring2(&a), "d").unwrap();
        assert!(matches!(
            e.files.delete(ring2(&a), "d"),
            Err(VfsError::NotFound { .. })
        ));
        assert_eq!(e.files.usage(), Usage::default());
    }

    #[test]
    fn directories_count_against_their_quota_and_are_undone() {
        let e = env_with(FileQuotas {
            max_dirs: 3,
            ..FileQuotas::default()
        });
        let a = id("alice");
        let w = ring2(&a);
        let c = e.files.create_dir(w, "a/b").unwrap().unwrap();
        assert_eq!(
            (c.op, c.path.as_str(), c.size),
            (FileOp::CreateDir, "a/b", 2)
        );
        assert_eq!(
            e.files.create_dir(w, "a/b").unwrap(),
            None,
            "exists: no change"
        );
        assert_eq!(e.files.create_dir(w, "").unwrap(), None, "a root");
        assert_eq!(e.files.usage().dirs, 2);
        let before = e.state();
        fn quota<T: fmt::Debug>(r: Result<T, VfsError>) -> String {
            match r {
                Err(VfsError::Quota { reason, .. }) => reason,
                other => panic!("not a quota refusal: {other:?}"),
            }
        }
        let why = quota(e.files.create_dir(w, "a/c/d"));
        assert!(why.contains("2 new directories would make 4"), "{why}");
        quota(e.files.write(w, "y/z/f", b"f"));
        assert_eq!(e.state(), before, "refusals change nothing");
        e.files.write(w, "x/f", b"f").unwrap();
        e.files.write(w, "a/b/f", b"f").unwrap();
        assert_eq!(e.files.usage().dirs, 3);
        quota(e.files.rename(w, "a/b/f", "q/f"));
        quota(e.files.create_dir(w, "shared/s"));
        // Files are not directories, and the other way round.
        assert!(matches!(
            e.files.create_dir(w, "x/f"),
            Err(VfsError::AlreadyExists { .. })
        ));
        // Undo: refused while the directory holds a file, then complete.
        let err = e.files.undo(c.undo.unwrap()).unwrap_err();
        assert!(matches!(err, VfsError::Conflict { .. }), "{err:?}");
        e.files.delete(w, "a/b/f").unwrap();
        e.files.undo(c.undo.unwrap()).unwrap();
        assert!(!e.files_dir().join("agents/alice/a").exists());
        e.files.delete(w, "x/f").unwrap();
        e.files.delete(w, "x").unwrap();
        let roots: Tree = [("agents", "dir"), ("shared", "dir")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert_eq!(e.state().0, roots);
        assert_eq!(e.files.usage(), Usage::default());
        // A planted symlink is not a directory to create.
        std::os::unix::fs::symlink("/tmp", e.files_dir().join("shared/l")).unwrap();
        assert!(is_denied(e.files.create_dir(w, "shared/l")));
        assert!(matches!(
            e.files.create_dir(w, "shared/l/x"),
            Err(VfsError::Denied { .. })
        ));
    }

    /// Descriptors this process holds on entries under `dir`.
    #[cfg(target_os = "linux")]
    fn descriptors_under(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    /// Past the shared budget a session closes its directories after each
    /// operation; reopened, it still has its undo records and snapshots.
    #[cfg(target_os = "linux")]
    #[test]
    fn idle_sessions_keep_no_more_descriptors_than_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let sessions =
            Arc::new(Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap());
        let open = OpenDirs::new(4);
        let files = |name: &str| {
            SessionFiles::new(
                sessions.clone(),
                SessionId::new(name).unwrap(),
                FileQuotas::default(),
                Arc::new(ClockTable::new()),
            )
            .with_open_dirs(open.clone())
        };
        let alice = id("alice");
        let w = ring2(&alice);
        let (a, b) = (files("a"), files("b"));
        a.write(w, "shared/x", b"1").unwrap();
        a.write(w, "mine", b"1").unwrap();
        // Its directory, undo records, shared and private areas.
        assert_eq!(open.held(), 4);
        assert_eq!(descriptors_under(&tmp.path().join("a")), 4);
        b.write(w, "mine", b"b1").unwrap();
        assert_eq!(open.held(), 4, "b's would not fit");
        assert_eq!(descriptors_under(&tmp.path().join("b")), 0);
        let snap = b.snapshot().unwrap();
        let c = b.write(w, "mine", b"b2").unwrap();
        b.undo(c.undo.unwrap()).unwrap();
        assert_eq!(b.read(w, "mine").unwrap(), b"b1");
        b.write(w, "mine", b"b3").unwrap();
        b.restore(snap.id).unwrap();
        assert_eq!(b.read(w, "mine").unwrap(), b"b1");
        assert_eq!(descriptors_under(&tmp.path().join("b")), 0);
        drop(a);
        assert_eq!(open.held(), 0, "a dropped session gives its share back");
        b.read(w, "mine").unwrap();
        assert_eq!(open.held(), 3);
        assert_eq!(descriptors_under(&tmp.path().join("b")), 3);
        b.forget(&alice);
        assert_eq!(open.held(), 2);

        // Moving a used session to another budget closes what the old one held.
        let c = SessionFiles::new(
            sessions.clone(),
            SessionId::new("c").unwrap(),
            FileQuotas::default(),
            Arc::new(ClockTable::new()),
        );
        c.write(w, "mine", b"c").unwrap();
        assert_eq!(descriptors_under(&tmp.path().join("c")), 3);
        let c = c.with_open_dirs(open.clone());
        assert_eq!(descriptors_under(&tmp.path().join("c")), 0);
        assert_eq!(open.held(), 2);
        c.read(w, "mine").unwrap();
        assert_eq!(open.held(), 2, "its 3 do not fit beside b's 2 in 4");
        assert_eq!(descriptors_under(&tmp.path().join("c")), 0);
    }

    /// Directories already in the session's tree when it is first opened
    /// count against the quota, so deleting them makes no room past it.
    #[test]
    fn directories_found_at_first_open_are_counted() {
        let e = env_with(FileQuotas {
            max_dirs: 3,
            ..FileQuotas::default()
        });
        std::fs::create_dir_all(e.files_dir().join("shared/old/a")).unwrap();
        std::fs::create_dir_all(e.files_dir().join("agents/alice/kept")).unwrap();
        let alice = id("alice");
        let w = ring2(&alice);
        assert!(matches!(
            e.files.create_dir(w, "new"),
            Err(VfsError::Quota { .. })
        ));
        assert_eq!(e.files.usage().dirs, 3);
        e.files.delete(w, "shared/old/a").unwrap();
        e.files.create_dir(w, "new").unwrap();
        assert_eq!(e.state().1.0.dirs, 3);
    }

    /// Undoing out of order (a saga compensating one step) may re-create
    /// parents deleted since; they are counted like any other directory.
    #[test]
    fn out_of_order_undo_counts_the_parents_it_recreates() {
        let e = env();
        let alice = id("alice");
        let w = ring2(&alice);
        e.files.write(w, "d/f", b"f").unwrap();
        let deleted = e.files.delete(w, "d/f").unwrap().undo.unwrap();
        e.files.delete(w, "d").unwrap();
        e.files.undo(deleted).unwrap();
        assert_eq!(e.files.read(w, "d/f").unwrap(), b"f");
        assert_eq!(e.state().1.0.dirs, 1);
        e.files.write(w, "p/g", b"g").unwrap();
        let renamed = e.files.rename(w, "p/g", "q/g").unwrap().undo.unwrap();
        e.files.delete(w, "p").unwrap();
        assert_eq!(e.state().1.0.dirs, 2, "d and q");
        e.files.undo(renamed).unwrap();
        assert_eq!(e.files.read(w, "p/g").unwrap(), b"g");
        assert_eq!(e.state().1.0.dirs, 2, "d and p: q went with the undo");
        let made = e.files.create_dir(w, "m/n").unwrap().unwrap().undo.unwrap();
        e.files.delete(w, "m/n").unwrap();
        let err = e.files.undo(made).unwrap_err();
        assert!(
            matches!(&err, VfsError::Conflict { reason, .. } if reason.contains("gone")),
            "{err:?}"
        );
        assert_eq!(e.state().1.0.dirs, 3, "d, p and m");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(usize, usize, Vec<u8>),
        Append(usize, usize, Vec<u8>),
        Truncate(usize, usize, u64),
        Delete(usize, usize),
        Rename(usize, usize, usize),
        SetAcl(usize, usize, bool),
        CreateDir(usize, usize),
    }

    const PATHS: [&str; 8] = [
        "a",
        "d/b",
        "d",
        "e/f",
        "shared/c",
        "shared/d/e",
        "shared/d",
        "shared/g",
    ];

    fn op() -> impl Strategy<Value = Op> {
        let agent = 0..2usize;
        let path = 0..PATHS.len();
        let bytes = proptest::collection::vec(any::<u8>(), 0..8);
        prop_oneof![
            (agent.clone(), path.clone(), bytes.clone()).prop_map(|(a, p, b)| Op::Write(a, p, b)),
            (agent.clone(), path.clone(), bytes).prop_map(|(a, p, b)| Op::Append(a, p, b)),
            (agent.clone(), path.clone(), 0..10u64).prop_map(|(a, p, n)| Op::Truncate(a, p, n)),
            (agent.clone(), path.clone()).prop_map(|(a, p)| Op::Delete(a, p)),
            (agent.clone(), path.clone(), path.clone()).prop_map(|(a, p, q)| Op::Rename(a, p, q)),
            (agent.clone(), path.clone(), any::<bool>())
                .prop_map(|(a, p, open)| Op::SetAcl(a, p, open)),
            (agent, path).prop_map(|(a, p)| Op::CreateDir(a, p)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever happened, undoing every recorded change newest first
        /// gives back the initial files and metadata exactly.
        #[test]
        fn undoing_everything_newest_first_restores_the_initial_tree(ops in proptest::collection::vec(op(), 1..24)) {
            let e = env();
            e.files.set_strict(false);
            let agents = [id("x"), id("y")];
            // y is in ring 1, so some ACL changes by a non-owner succeed.
            let callers = [ring2(&agents[0]), ring1(&agents[1])];
            e.files.write(callers[0], "a", b"seed a").unwrap();
            e.files.write(callers[0], "d/b", b"seed b").unwrap();
            e.files.write(callers[1], "shared/c", b"seed c").unwrap();
            e.files.write(callers[1], "d/b", b"y's b").unwrap();
            let before = e.state();
            let mut ids = Vec::new();
            for op in &ops {
                let r = match op.clone() {
                    Op::Write(w, p, b) => e.files.write(callers[w], PATHS[p], &b),
                    Op::Append(w, p, b) => e.files.append(callers[w], PATHS[p], &b),
                    Op::Truncate(w, p, n) => e.files.truncate(callers[w], PATHS[p], n),
                    Op::Delete(w, p) => e.files.delete(callers[w], PATHS[p]),
                    Op::Rename(w, p, q) => e.files.rename(callers[w], PATHS[p], PATHS[q]),
                    Op::SetAcl(w, p, open) => {
                        let owner = e.files.get_acl(callers[w], PATHS[p]).map(|a| a.owner);
                        let access = if open { Access::Everyone } else { Access::Owner };
                        owner.and_then(|o| e.files.set_acl(callers[w], PATHS[p], acl(&o, access.clone(), access)))
                    }
                    Op::CreateDir(w, p) => match e.files.create_dir(callers[w], PATHS[p]) {
                        Ok(None) => continue,
                        Ok(Some(c)) => Ok(c),
                        Err(err) => Err(err),
                    },
                };
                if let Ok(c) = r {
                    ids.push(c.undo.expect("an undo record"));
                }
            }
            for id in ids.iter().rev() {
                let r = e.files.undo(*id);
                prop_assert!(r.is_ok(), "undo {id}: {r:?} after {ops:?}");
            }
            prop_assert_eq!(e.state(), before);
            prop_assert_eq!(std::fs::read_dir(e.undo_dir()).unwrap().count(), 0);
        }
    }
}
