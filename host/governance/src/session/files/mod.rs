//! The session VFS: one shared area and one private area per agent, with
//! ACLs, quotas, content hashes, per-path vector clocks, undo records and
//! snapshots (`docs/governance.md`, "Files").
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
//! [`Vfs`](crate::vfs::Vfs), so cap-std confines every guest operation to that one area: a
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
//! operation that meets one answers `Denied` (`hash` and `stat` of a file of
//! the session answer from its metadata and look at nothing on disk),
//! listings hide them, snapshots and restores do not copy them (see
//! [`SessionFiles::snapshot`]). A regular file is opened only through
//! `crate::open` (non-blocking, its type checked on the handle), and one
//! with other hard links is never changed in place (appended to,
//! truncated): the change would reach its other names, possibly outside the
//! session. The session's own links never outlive an operation: a replaced
//! file's old inode stays linked only at its undo record once the new one
//! is renamed over the path. Directories have no ACL and no clock;
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
//! operation, I/O included, with two exceptions: a whole-file write stages
//! and syncs its bytes without it (then checks again and renames them into
//! place under it), and a read reads and hashes its bytes without it (then
//! returns them only if they are the recorded contents). Holding it makes
//! "check the quota / clock / ACL, then change" atomic. Sessions do not
//! share locks.
//!
//! # Where things are
//! `namespace` maps guest paths to areas; `meta` keeps what the
//! session knows about each file; `checks` holds the ACL, clock, quota and
//! nesting checks; `ops` the operations themselves; `undo` the undo records
//! and compensation; `snapshot` snapshots and restores; `open_dirs` the
//! directory handles and their descriptor budget; `fs` the filesystem
//! helpers. The module is also reachable under its first name,
//! `ahv_governance::session_vfs`.
//!
//! ```
//! use std::sync::Arc;
//! use ahv_core::{AgentId, Ring, SessionId};
//! use ahv_governance::files::{Caller, FileSpace};
//! use ahv_governance::session::files::{FileQuotas, SessionFiles};
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

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ahv_core::SessionId;
use cap_std::fs::Dir;

use crate::vclock::ClockTable;

mod checks;
mod fs;
mod meta;
mod namespace;
mod open_dirs;
mod ops;
mod snapshot;
#[cfg(test)]
mod test_support;
mod undo;

pub use checks::MAX_ACL_AGENTS;
pub use namespace::{Area, AreaPath, RelPath};
pub use open_dirs::{DEFAULT_OPEN_DIRS, OpenDirs};
pub use snapshot::{MAX_SNAPSHOTS, RESTORE_CLOCK, SnapshotInfo};
pub use undo::UndoInfo;

use open_dirs::Inner;

const SHARED: &str = "shared";
const FILES_DIR: &str = "files";
const SHARED_DIR: &str = "files/shared";
pub(super) const AGENTS_DIR: &str = "files/agents";
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
    /// areas together, in bytes (default 256 MiB), counting the agent ids
    /// their ACLs list with them. It also bounds the old contents the undo
    /// log keeps on disk, and what it keeps in memory (old file states with
    /// their ACLs and clocks, paths).
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

/// What the session's regular files use, all areas together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Number of regular files.
    pub files: u64,
    /// Their total size, in bytes, plus the bytes of the agent ids their
    /// ACLs list, each id's length plus 48 (an ACL counts against the quota
    /// as contents do).
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

    /// What the session's regular files use.
    pub fn usage(&self) -> Usage {
        self.lock().db.usage
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
