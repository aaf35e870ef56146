//! The session's directory handles and the descriptor budget they share
//! with every other session of a hypervisor.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ahv_core::AgentId;
use cap_std::fs::Dir;

use crate::vfs::{Vfs, VfsError, VfsLimits};

use super::fs::{open_area, remove_all_if_exists};
use super::meta::Db;
use super::namespace::Area;
use super::{
    AGENTS_DIR, MAX_TREE_DEPTH, RESTORE_TMP, SESSION_PATH, SHARED, SHARED_DIR, SNAPSHOTS_DIR,
    SessionFiles, TRASH_TMP, UNDO_DIR,
};

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
    pub(super) held: AtomicUsize,
    pub(super) max: usize,
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
    pub(super) fn try_hold(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&after| after <= self.max)
            })
            .is_ok()
    }

    /// Takes the handles kept in `held` out of the budget: closed when the
    /// caller drops them, or held again through [`OpenDirs::try_hold`].
    pub(super) fn take(&self, held: &mut Option<Dirs>) -> Option<Dirs> {
        let d = held.take()?;
        self.release(d.descriptors());
        Some(d)
    }

    pub(super) fn release(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(n))
            });
    }
}

/// The session's directory handles, opened on first use.
#[derive(Debug)]
pub(super) struct Dirs {
    pub(super) root: Dir,
    pub(super) undo: Dir,
    pub(super) shared: Option<Arc<Vfs>>,
    pub(super) private: HashMap<AgentId, Arc<Vfs>>,
    pub(super) limits: VfsLimits,
}

impl Dirs {
    /// Descriptors these handles hold.
    pub(super) fn descriptors(&self) -> usize {
        2 + usize::from(self.shared.is_some()) + self.private.len()
    }

    /// The area's VFS, opening (and creating) its directory on first use.
    pub(super) fn area(&mut self, area: &Area) -> Result<Arc<Vfs>, VfsError> {
        match area {
            Area::Shared => {
                if let Some(v) = &self.shared {
                    return Ok(v.clone());
                }
                let dir = open_area(&self.root, SHARED_DIR)
                    .map_err(|e| VfsError::io("open", SHARED.to_string(), e))?;
                let v = Arc::new(Vfs::new(dir, self.limits.clone()));
                self.shared = Some(v.clone());
                Ok(v)
            }
            Area::Private(agent) => {
                if let Some(v) = self.private.get(agent) {
                    return Ok(v.clone());
                }
                let dir = open_area(&self.root, &format!("{AGENTS_DIR}/{agent}"))
                    .map_err(|e| VfsError::io("open", ".".to_string(), e))?;
                let v = Arc::new(Vfs::new(dir, self.limits.clone()));
                self.private.insert(agent.clone(), v.clone());
                Ok(v)
            }
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    /// Open between operations only while the [`OpenDirs`] budget holds them.
    pub(super) dirs: Option<Dirs>,
    /// Whether the session directory was opened (and cleaned) before: a
    /// reopening must keep the undo records and snapshots.
    pub(super) opened: bool,
    pub(super) db: Db,
}

/// Copies directories and the regular files `keep` accepts (by their path
/// relative to the top) from `src` to `dst`, as bytes. Symlinks are skipped.
/// Directories below the area roots of a session's `files/` (symbolic links
/// not followed, at most [`MAX_TREE_DEPTH`] deep); unreadable parts count
/// as empty.
pub(super) fn existing_dirs(root: &Dir) -> u64 {
    pub(super) fn subdirs(dir: &Dir) -> Vec<cap_std::fs::DirEntry> {
        dir.entries().map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| crate::open::listed_type(e).is_ok_and(|t| t.is_dir()))
                    .collect()
            },
        )
    }
    pub(super) fn below(dir: &Dir, depth: usize) -> u64 {
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

impl SessionFiles {
    /// Drops the cached directory handle of an agent that left; its private
    /// files stay on disk (and in snapshots and undo records).
    pub fn forget(&self, agent: &AgentId) {
        if let Some(dirs) = self.lock().dirs.as_mut()
            && dirs.private.remove(agent).is_some()
        {
            self.open.release(1);
        }
    }

    /// Runs `f` under the session lock with the directories opened.
    pub(super) fn with<R>(
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
    pub(super) fn open_session(&self, reopen: bool) -> Result<Dirs, VfsError> {
        let fail = |e: io::Error| VfsError::io("open", SESSION_PATH.to_string(), e);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::files::test_support::*;

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
}
