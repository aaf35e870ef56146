//! Snapshots of the session's files and restoring them.

use std::collections::BTreeMap;
use std::io;

use ahv_core::AgentId;
use cap_std::fs::Dir;

use crate::open::{self, Refusal};
use crate::path::RESERVED_PREFIX;
use crate::vclock::VectorClock;
use crate::vfs::VfsError;

use super::fs::remove_all_if_exists;
use super::meta::FileMeta;
use super::namespace::{AreaPath, files_key};
use super::undo::discard_blob;
use super::{
    FILES_DIR, MAX_TREE_DEPTH, RESTORE_TMP, SNAPSHOTS_DIR, SessionFiles, TRASH_TMP, Usage,
};

/// Most snapshots a session keeps at once; each is a full byte copy, so the
/// number is bounded. [`SessionFiles::drop_snapshot`] frees one.
pub const MAX_SNAPSHOTS: usize = 64;

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

#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    pub(super) files: BTreeMap<AreaPath, FileMeta>,
    pub(super) usage: Usage,
}

/// The vector-clock entry a restore ticks (see [`SessionFiles::restore`]).
/// It is in the reserved namespace
/// ([`crate::session::RESERVED_AGENT_PREFIX`]): no agent joins under it.
pub const RESTORE_CLOCK: &str = "ahv:restore";

pub(super) fn restore_clock() -> AgentId {
    AgentId::new(RESTORE_CLOCK).unwrap_or_else(|_| unreachable!("a valid agent id"))
}

pub(super) fn no_snapshot(op: &'static str, id: u64) -> VfsError {
    VfsError::Io {
        op,
        path: format!("snapshot {id}"),
        message: "no such snapshot".into(),
    }
}

/// Why copying a session's files failed: the file (relative to `files/`)
/// and why, or an I/O failure of the copy as a whole.
#[derive(Debug)]
pub(super) struct CopyError {
    pub(super) at: Option<String>,
    pub(super) why: Refusal,
}

impl CopyError {
    pub(super) fn whole(e: io::Error) -> CopyError {
        CopyError {
            at: None,
            why: Refusal::Io(e),
        }
    }

    pub(super) fn into_vfs(self, op: &'static str, snapshot: u64) -> VfsError {
        let guest = self.at.as_deref().and_then(files_key).map(|k| k.guest());
        match (guest, self.why) {
            (Some(path), why @ (Refusal::Symlink | Refusal::Special(_) | Refusal::Linked(_))) => {
                VfsError::refused(op, path, why)
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
pub(super) fn copy_files(
    root: &Dir,
    from: &str,
    to: &str,
    files: &BTreeMap<AreaPath, FileMeta>,
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
pub(super) fn copy_tree(
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
        let kind = open::listed_type(&entry).map_err(|e| fail(&child, e.into()))?;
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

impl SessionFiles {
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
            let fail = move |e: io::Error| VfsError::io("snapshot", format!("snapshot {id}"), e);
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
            let fail = move |e: io::Error| VfsError::io("restore", format!("snapshot {id}"), e);
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
            db.reshaped();
            Ok(())
        })
    }

    /// The ids of the snapshots kept, oldest first.
    pub fn snapshot_ids(&self) -> Vec<u64> {
        self.lock().db.snapshots.keys().copied().collect()
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
                .map_err(|e| VfsError::io("drop-snapshot", format!("snapshot {id}"), e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::files::test_support::*;

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
}
