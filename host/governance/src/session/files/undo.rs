//! Undo records: what each change kept, and compensating it exactly.

use std::io;

use ahv_core::AgentId;
use cap_std::fs::Dir;

use crate::files::FileOp;
use crate::open::{self, Refusal};
use crate::vfs::VfsError;

use super::SessionFiles;
use super::checks::check_nesting;
use super::fs::{
    create_parent, entry_exists, missing_ancestors, move_across, refuse_unservable, remove_dirs,
};
use super::meta::{Db, FileMeta, Fingerprint};
use super::namespace::{AreaPath, in_guest_terms};
use super::open_dirs::Dirs;

/// One undo record, as listed by [`SessionFiles::undo_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoInfo {
    /// Its id, for [`SessionFiles::undo`] (also in [`FileChange::undo`](crate::files::FileChange::undo)).
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

/// How to compensate one change.
#[derive(Debug)]
pub(super) enum Undo {
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

/// What one vector-clock entry of a kept file state takes in memory (a
/// B-tree slot: a shared id's pointer and length, the counter, the node's
/// share); the id's text is shared with the session's other clocks.
const CLOCK_ENTRY_BYTES: u64 = 40;

/// What a kept string takes: its text and its `String`.
fn text_bytes(s: &str) -> u64 {
    s.len() as u64 + std::mem::size_of::<String>() as u64
}

/// What a kept file state takes in memory besides its ACL (counted by
/// [`Undo::acl_bytes`]): its fields, and its clock's entries.
fn meta_bytes(m: &FileMeta) -> u64 {
    std::mem::size_of::<FileMeta>() as u64
        + (m.clock.entry_count() as u64).saturating_mul(CLOCK_ENTRY_BYTES)
}

impl Undo {
    /// What the record keeps in memory: the file states, paths and clocks
    /// it holds, with their ACLs ([`Undo::acl_bytes`]). Counted in the undo
    /// log's bytes: a rename of a directory of 10,000 files keeps as many
    /// file states, ~6 MB, and nothing else bounds how many such records
    /// the log holds but their count.
    pub(super) fn kept_bytes(&self) -> u64 {
        let fingerprint = std::mem::size_of::<Fingerprint>() as u64;
        let texts = |v: &[String]| v.iter().map(|s| text_bytes(s)).fold(0, u64::saturating_add);
        let held = match self {
            Undo::Created { made_dirs, .. } => fingerprint.saturating_add(texts(made_dirs)),
            Undo::Replaced { before, .. }
            | Undo::Appended { before, .. }
            | Undo::Truncated { before, .. }
            | Undo::AclSet { before, .. } => meta_bytes(before).saturating_add(fingerprint),
            Undo::Deleted { before } => meta_bytes(before),
            Undo::DirDeleted => 0,
            Undo::DirCreated { made } => texts(made),
            Undo::Renamed { moved, made_dirs } => moved
                .iter()
                .map(|m| {
                    meta_bytes(&m.before)
                        .saturating_add(fingerprint)
                        .saturating_add(text_bytes(&m.suffix))
                })
                .fold(texts(made_dirs), u64::saturating_add),
        };
        held.saturating_add(self.acl_bytes())
    }

    /// The bytes of the ACL lists in the file states it keeps (an ACL the
    /// change left as it was counted once).
    pub(super) fn acl_bytes(&self) -> u64 {
        let pair = |before: &FileMeta, after: &Fingerprint| {
            if before.acl == after.acl {
                before.acl_bytes()
            } else {
                before.acl_bytes().saturating_add(after.acl_bytes())
            }
        };
        match self {
            Undo::Created { after, .. } => after.acl_bytes(),
            Undo::Replaced { before, after }
            | Undo::Appended { before, after }
            | Undo::Truncated { before, after }
            | Undo::AclSet { before, after } => pair(before, after),
            Undo::Deleted { before } => before.acl_bytes(),
            Undo::DirDeleted | Undo::DirCreated { .. } => 0,
            Undo::Renamed { moved, .. } => moved
                .iter()
                .map(|m| pair(&m.before, &m.after))
                .fold(0, u64::saturating_add),
        }
    }
}

/// One file moved by a rename: its path below the renamed entry (`""` for
/// the entry itself, else `/…`), its metadata before, its state after.
#[derive(Debug)]
pub(super) struct Moved {
    pub(super) suffix: String,
    pub(super) before: FileMeta,
    pub(super) after: Fingerprint,
}

#[derive(Debug)]
pub(super) struct Record {
    pub(super) id: u64,
    pub(super) agent: AgentId,
    pub(super) op: FileOp,
    pub(super) key: AreaPath,
    pub(super) to: Option<AreaPath>,
    pub(super) undo: Undo,
    /// Bytes this record keeps: at `undo/<id>`, and (added by
    /// `Db::record`) in the ACLs of the file states it holds. Counted in the
    /// undo log's bytes, which the byte quota bounds.
    pub(super) blob_bytes: u64,
}

impl Record {
    pub(super) fn has_blob(&self) -> bool {
        matches!(
            self.undo,
            Undo::Replaced { .. } | Undo::Truncated { .. } | Undo::Deleted { .. }
        )
    }

    pub(super) fn info(&self) -> UndoInfo {
        UndoInfo {
            id: self.id,
            agent: self.agent.clone(),
            op: self.op,
            path: self.key.guest(),
            to: self.to.as_ref().map(AreaPath::guest),
        }
    }

    pub(super) fn conflict(&self, path: String, why: &str) -> VfsError {
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

pub(super) fn blob(id: u64) -> String {
    id.to_string()
}

/// Keeps the current inode at `rel` under `name` in the undo directory: a hard
/// link, or a copy (of at most `max` bytes) where links are not possible.
/// Whatever stands at `name` already (planted: the names are predictable)
/// is replaced, never written through.
pub(super) fn keep_old(
    dir: &Dir,
    rel: &str,
    undo: &Dir,
    name: &str,
    max: u64,
) -> Result<(), Refusal> {
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

pub(super) fn discard_blob(undo: &Dir, id: u64) {
    match undo.remove_file(blob(id)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(record = id, error = %e, "could not remove an undo blob"),
    }
}

impl SessionFiles {
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

    pub(super) fn compensate(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        rec: &Record,
    ) -> Result<(), VfsError> {
        let key = &rec.key;
        let guest = key.guest();
        let vfs = dirs.area(&key.area)?;
        let undo_io = |e: io::Error| VfsError::io("undo", guest.clone(), e);
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
                    Err(r) => return Err(VfsError::refused("undo", guest.clone(), r)),
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
                // Noted first: a failure may leave some parents made.
                db.reshaped_at(Some(key));
                create_parent(&vfs, key)?;
                db.usage.dirs += made;
                dirs.undo
                    .rename(blob(rec.id), vfs.dir(), &key.rel)
                    .map_err(undo_io)?;
                db.put_noted(key.clone(), Some((**before).clone()));
            }
            Undo::DirDeleted => {
                if entry_exists(vfs.dir(), &key.rel).map_err(undo_io)? {
                    return Err(rec.conflict(
                        guest.clone(),
                        "something was created at the path since; undo that first",
                    ));
                }
                let made = 1 + missing_ancestors(vfs.dir(), &key.rel).len() as u64;
                // Noted first: a failure may leave some of them made.
                db.reshaped_at(Some(key));
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
                // with it while their metadata stayed behind. (A set: a
                // directory of 10,000 files compared pairwise took 168 ms
                // under the session's lock.)
                let was_moved: std::collections::HashSet<&str> =
                    moved.iter().map(|m| m.suffix.as_str()).collect();
                if db
                    .files_under(dst)
                    .iter()
                    .any(|(suffix, _)| !was_moved.contains(suffix.as_str()))
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
                    .map_err(|e| VfsError::io("undo", dst_guest.clone(), e))?
                {
                    return Err(rec.conflict(dst_guest, "the renamed entry is gone"));
                }
                // Directories made below the renamed one since would nest
                // deeper than a guest may name once it moves back.
                if dv
                    .dir()
                    .symlink_metadata(&dst.rel)
                    .is_ok_and(|m| m.is_dir())
                {
                    match check_nesting("undo", dv.dir(), dst, key) {
                        Ok(()) => {}
                        Err(VfsError::InvalidPath(e)) => {
                            return Err(rec.conflict(
                                guest.clone(),
                                &format!(
                                    "moving back would nest too deep ({e}); undo the later changes first"
                                ),
                            ));
                        }
                        Err(e) => return Err(e),
                    }
                }
                // The old path's parents may be gone since: moving back makes them.
                let back = missing_ancestors(vfs.dir(), &key.rel).len() as u64;
                // Whatever moves back, files or only directories; noted first,
                // as a failed move may leave the parents it made.
                db.reshaped_at(Some(key));
                if key.area == dst.area {
                    vfs.rename(&dst.rel, &key.rel).map_err(in_area)?;
                } else {
                    move_across(&dv, dst, &vfs, key)?;
                }
                for m in moved {
                    db.put_noted(dst.with_suffix(&m.suffix), None);
                    db.put_noted(key.with_suffix(&m.suffix), Some(m.before.clone()));
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
}

#[cfg(test)]
mod tests {
    use crate::session::files::test_support::*;

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
