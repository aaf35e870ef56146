//! The file operations behind the `vfs-read` / `vfs-write` capabilities.

use std::io;

use ahv_core::Ring;

use crate::files::{Access, Acl, Caller, FileChange, FileOp, FileSpace, Sha256Digest};
use crate::open;
use crate::path::RESERVED_PREFIX;
use crate::vclock::VectorClock;
use crate::vfs::{EntryKind, Staged, Stat, VfsError};

use super::checks::{MAX_ACL_AGENTS, Need, check_access, check_nesting, creation_acl, private_acl};
use super::fs::{
    entry_exists, missing_ancestors, move_across, not_a_file, refuse_unservable, special_denied,
    symlink_denied, unmake_dirs,
};
use super::meta::{Db, FileMeta};
use super::namespace::{Area, AreaPath, dir_key, file_key, in_guest_terms};
use super::open_dirs::Dirs;
use super::undo::{Moved, Record, Undo, blob, discard_blob, keep_old};
use super::{SHARED, SessionFiles};

/// Shared files and private files are governed by different rules; see the
/// module docs.
impl FileSpace for SessionFiles {
    fn max_file_bytes(&self) -> u64 {
        self.quotas.max_file_bytes
    }

    /// The bytes are read outside the session's lock (a 16 MiB file takes
    /// 3–12 ms here, and the lowest ring may read 50 times a second):
    /// under the lock, the checks and the file opened; without it, the
    /// file's recorded size read and hashed. Bytes whose SHA-256 is the
    /// recorded one are the contents the checks saw, whatever changed in
    /// between (an append or truncate works in place). A file changed
    /// under [`READS_UNLOCKED`] attempts in a row is read under the lock.
    /// Only the recorded size is read: a file grown on disk behind the
    /// session's back reads as the session wrote it (one changed in place
    /// behind its back is read, after two failed tries, as it now is).
    fn read(&self, who: Caller<'_>, path: &str) -> Result<Vec<u8>, VfsError> {
        let key = file_key(who.agent, path)?;
        for _ in 0..READS_UNLOCKED {
            let (file, size, digest, clock) = self.with(|dirs, db| {
                let Some(m) = db.files.get(&key) else {
                    return Err(self.missing(dirs, &key, "read"));
                };
                check_access(who, m, &key.guest(), Need::Read)?;
                let file = dirs
                    .area(&key.area)?
                    .open_read(&key.rel)
                    .map_err(|e| in_guest_terms(e, &key.area))?;
                Ok((file, m.size, m.digest, m.clock.clone()))
            })?;
            #[cfg(test)]
            pause::run(pause::At::Read);
            let bytes = open::read_prefix(file, size, size)
                .map_err(|e| VfsError::io("read", key.guest(), e))?;
            if bytes.len() as u64 == size
                && <sha2::Sha256 as sha2::Digest>::digest(&bytes).as_slice() == digest
            {
                self.clocks.observe(who.agent, &clock);
                return Ok(bytes);
            }
        }
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
    /// The directory is read without the session's lock (10,000 entries
    /// take ~7 ms here, and the lowest ring may list 50 times a second);
    /// which of its regular files are the session's is then looked up
    /// under it. A listing is thus not one instant's: an entry made or
    /// removed while it runs may or may not be in it, as with `readdir`.
    /// More than [`FileQuotas::max_list_entries`](super::FileQuotas::max_list_entries)
    /// directories and session files is `Quota`, and so is a directory of
    /// more than that plus [`FileQuotas::max_files`](super::FileQuotas::max_files)
    /// directories and regular files in all (it is read before the
    /// session's files are told apart from others).
    fn list(&self, who: Caller<'_>, path: &str) -> Result<Vec<String>, VfsError> {
        let key = dir_key(who.agent, path)?;
        let vfs = self.with(|dirs, _| dirs.area(&key.area))?;
        let guest = key.guest();
        let too_many = || VfsError::Quota {
            path: guest.clone(),
            reason: format!(
                "directory has more than {} entries",
                self.quotas.max_list_entries
            ),
        };
        let fail = |e: io::Error| VfsError::io("list", guest.clone(), e);
        let read_at_most =
            (self.quotas.max_list_entries as u64).saturating_add(self.quotas.max_files);
        let (mut names, mut files) = (Vec::new(), Vec::new());
        for entry in vfs.dir().read_dir(key.at()).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            let kind = match open::listed_type(&entry) {
                Ok(kind) => kind,
                // Removed since it was listed (asked only where listings
                // give no type): not in this listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fail(e)),
            };
            if kind.is_dir() {
                names.push(name);
            } else if kind.is_file() {
                files.push(name);
            }
            if (names.len() + files.len()) as u64 > read_at_most {
                return Err(VfsError::Quota {
                    path: guest.clone(),
                    reason: format!(
                        "directory has more than {read_at_most} entries (at most {} of them the session's)",
                        self.quotas.max_list_entries
                    ),
                });
            }
        }
        #[cfg(test)]
        pause::run(pause::At::Listed);
        self.with(|_, db| {
            names.extend(
                files
                    .into_iter()
                    .filter(|name| db.files.contains_key(&key.child(name))),
            );
            Ok(())
        })?;
        if key.area != Area::Shared && key.is_root() && !names.iter().any(|n| n == SHARED) {
            names.push(SHARED.to_string());
        }
        if names.len() > self.quotas.max_list_entries {
            return Err(too_many());
        }
        names.sort();
        Ok(names)
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
                Err(e) => Err(VfsError::io("stat", key.guest(), e)),
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

    /// In three steps, so that the session's lock is not held while the
    /// bytes go to disk (a 16 MiB write and its sync take ~50 ms here, and
    /// every other file operation of the session waits for the lock on a
    /// runtime thread): under the lock, the checks the write will make
    /// again (a write refused now writes nothing); without it, the bytes
    /// written, synced and hashed under a temporary name; under the lock
    /// again, every check, then a rename into place.
    fn write(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        let key = file_key(who.agent, path)?;
        let size = contents.len() as u64;
        let vfs = self.with(|dirs, db| {
            self.may_write(db, who, &key, size)?;
            dirs.area(&key.area)
        })?;
        let staged = vfs
            .stage(&key.rel, contents)
            .map_err(|e| in_guest_terms(e, &key.area))?;
        #[cfg(test)]
        pause::run(pause::At::Staged);
        self.with(|dirs, db| {
            let contents = Contents {
                bytes: contents,
                staged: Some(staged),
            };
            self.write_file(dirs, db, who, &key, contents, FileOp::Write)
        })
    }

    /// An append that creates its file is a write: its bytes are staged
    /// and synced outside the session's lock (see `write`). One that
    /// extends a file hashes its bytes outside the lock (16 MiB take
    /// ~10 ms here) into a copy of the file's hash state, and extends the
    /// file in place under it; if the file changed meanwhile, it is hashed
    /// again there. One that finds the file created meanwhile extends it.
    fn append(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        let key = file_key(who.agent, path)?;
        let plan = self.with(|dirs, db| match db.files.get(&key) {
            // The checks the append makes again: one refused now hashes nothing.
            Some(m) => {
                let guest = key.guest();
                check_access(who, m, &guest, Need::Write)?;
                self.check_clock(who.agent, &m.clock, &guest)?;
                let new_size = m.size.saturating_add(contents.len() as u64);
                self.check_quota(&db.usage, &guest, Some(m.size), new_size)?;
                Ok(AppendPlan::Extend(Prehashed {
                    size: m.size,
                    digest: m.digest,
                    hasher: m.hasher.clone(),
                }))
            }
            None => {
                self.may_write(db, who, &key, contents.len() as u64)?;
                dirs.area(&key.area).map(AppendPlan::Create)
            }
        })?;
        let plan = match plan {
            AppendPlan::Create(vfs) => AppendPlan::Staged(
                vfs.stage(&key.rel, contents)
                    .map_err(|e| in_guest_terms(e, &key.area))?,
            ),
            AppendPlan::Extend(mut p) => {
                sha2::Digest::update(&mut p.hasher, contents);
                AppendPlan::Extend(p)
            }
            staged @ AppendPlan::Staged(_) => staged,
        };
        #[cfg(test)]
        pause::run(match plan {
            AppendPlan::Staged(_) => pause::At::Staged,
            _ => pause::At::Hashed,
        });
        self.with(|dirs, db| match plan {
            AppendPlan::Staged(staged) if !db.files.contains_key(&key) => {
                let contents = Contents {
                    bytes: contents,
                    staged: Some(staged),
                };
                self.write_file(dirs, db, who, &key, contents, FileOp::Append)
            }
            AppendPlan::Extend(p) => self.append_file(dirs, db, who, &key, contents, Some(p)),
            // Created meanwhile: extended (the staged copy removes itself).
            _ => self.append_file(dirs, db, who, &key, contents, None),
        })
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
        // A directory's extent is measured outside the lock (it walks every
        // entry below it: ~100 ms for 10,000 directories), then the rename
        // is made under it if nothing was added or moved in the session
        // meanwhile.
        for _ in 0..RENAMES_UNLOCKED {
            let measure = self.with(|dirs, db| {
                if db.files.contains_key(&from) {
                    return Ok(None);
                }
                let sv = dirs.area(&from.area)?;
                Ok(sv
                    .dir()
                    .symlink_metadata(&from.rel)
                    .is_ok_and(|m| m.is_dir())
                    .then_some((sv, db.shape)))
            })?;
            let Some((sv, shape)) = measure else {
                return self.with(|dirs, db| self.rename_entry(dirs, db, who, &from, &to, None));
            };
            let nesting = check_nesting("rename", sv.dir(), &from, &to);
            #[cfg(test)]
            pause::run(pause::At::Measured);
            let renamed = self.with(|dirs, db| {
                if db.reshaped_since(shape, &from) {
                    return Ok(None);
                }
                self.rename_entry(dirs, db, who, &from, &to, Some(nesting))
                    .map(Some)
            })?;
            if let Some(change) = renamed {
                return Ok(change);
            }
        }
        Err(VfsError::Conflict {
            path: from.guest(),
            reason: format!(
                "entries were added or moved in the session while the directory was measured, {RENAMES_UNLOCKED} times; try again"
            ),
        })
    }

    /// A change like a write: counted against [`FileQuotas::max_dirs`](super::FileQuotas::max_dirs) (it
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
                Err(e) => return Err(VfsError::io("create-dir", guest, e)),
            }
            let mut made = vec![key.rel.to_string()];
            made.extend(missing_ancestors(vfs.dir(), &key.rel));
            self.check_dirs(&db.usage, &guest, made.len())?;
            if let Err(e) = vfs.create_dir(&key.rel) {
                db.usage.dirs += unmake_dirs(vfs.dir(), &made);
                return Err(in_guest_terms(e, &key.area));
            }
            let created = made.len() as u64;
            db.usage.dirs += created;
            db.reshaped_at(Some(&key));
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

impl SessionFiles {
    /// Reads a file as the host, for inspection (an operator's read-only
    /// view): `path` is resolved as `owner` would resolve it (`shared/…` is
    /// the shared area, anything else `owner`'s private area), but no ACL is
    /// checked and nothing is marked as seen in any agent's vector clock.
    /// Only files the session made are read, and nothing is created on disk
    /// (no area is opened for an agent that has none).
    ///
    /// # Errors
    /// [`VfsError::InvalidPath`], [`VfsError::NotFound`], [`VfsError::Io`].
    pub fn peek(&self, owner: &ahv_core::AgentId, path: &str) -> Result<Vec<u8>, VfsError> {
        let key = file_key(owner, path)?;
        self.with(|dirs, db| {
            if !db.files.contains_key(&key) {
                return Err(VfsError::NotFound { path: key.guest() });
            }
            // The session made this file, so its area exists: opening it
            // creates nothing.
            dirs.area(&key.area)?
                .read(&key.rel)
                .map_err(|e| in_guest_terms(e, &key.area))
        })
    }

    /// Lists a directory as the host, for inspection: as
    /// [`FileSpace::list`] for `owner`, except that nothing is created on
    /// disk: an agent without a private area has an empty one (its top
    /// lists only `shared`).
    ///
    /// # Errors
    /// As [`FileSpace::list`].
    pub fn peek_list(
        &self,
        owner: &ahv_core::AgentId,
        path: &str,
    ) -> Result<Vec<String>, VfsError> {
        let key = dir_key(owner, path)?;
        if let Area::Private(agent) = &key.area {
            let exists = self
                .with(|dirs, _| Ok(dirs.root.is_dir(format!("{}/{agent}", super::AGENTS_DIR))))?;
            if !exists {
                return if key.is_root() {
                    Ok(vec![SHARED.to_string()])
                } else {
                    Err(VfsError::NotFound { path: key.guest() })
                };
            }
        }
        self.list(Caller::untraced(owner, Ring::Sandbox), path)
    }

    /// Why there is no file at `key`: a directory, a refused path, or nothing.
    pub(super) fn missing(&self, dirs: &mut Dirs, key: &AreaPath, op: &'static str) -> VfsError {
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
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => VfsError::io(op, guest, e),
            Err(_) => VfsError::NotFound { path: guest },
        }
    }

    pub(super) fn write_file(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &AreaPath,
        contents: Contents<'_>,
        op: FileOp,
    ) -> Result<FileChange, VfsError> {
        let Contents {
            bytes: contents,
            staged,
        } = contents;
        let guest = key.guest();
        let size = contents.len() as u64;
        self.may_write(db, who, key, size)?;
        let old = db.files.get(key);
        let old_clock = old.map(|m| m.clock.clone()).unwrap_or_default();
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
                .map_err(|r| VfsError::refused(op.name(), guest.clone(), r))?;
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
        let hasher = staged.as_ref().and_then(|s| s.hasher().cloned());
        let written = match staged {
            Some(staged) => vfs.place(&key.rel, staged),
            None => vfs.write(&key.rel, contents),
        };
        if let Err(e) = written {
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
        let clock = self.clocks.stamp_write(who.agent, &old_clock);
        let meta = match hasher {
            Some(h) => FileMeta::hashed(h, size, acl, clock),
            None => FileMeta::new(contents, acl, clock),
        };
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

    /// The checks of a write of `size` bytes at `key` by `who`, before
    /// anything is done: its ACL, its clock, the quotas.
    fn may_write(
        &self,
        db: &Db,
        who: Caller<'_>,
        key: &AreaPath,
        size: u64,
    ) -> Result<(), VfsError> {
        let guest = key.guest();
        let old = db.files.get(key);
        if let Some(m) = old {
            check_access(who, m, &guest, Need::Write)?;
        }
        let empty = VectorClock::default();
        self.check_clock(who.agent, old.map_or(&empty, |m| &m.clock), &guest)?;
        self.check_quota(&db.usage, &guest, old.map(|m| m.size), size)
    }

    pub(super) fn append_file(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &AreaPath,
        contents: &[u8],
        prehashed: Option<Prehashed>,
    ) -> Result<FileChange, VfsError> {
        let Some(old) = db.files.get(key) else {
            // A new file; whatever unknown entry is on disk gets replaced, not extended.
            let contents = Contents {
                bytes: contents,
                staged: None,
            };
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
        let clock = self.clocks.stamp_write(who.agent, &before.clock);
        let meta = match prehashed {
            // Hashed from this very state: the bytes need no second pass.
            Some(p) if p.size == before.size && p.digest == before.digest => {
                before.appended_hashed(contents.len() as u64, p.hasher, clock)
            }
            _ => before.appended(contents, clock),
        };
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

    pub(super) fn truncate_file(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &AreaPath,
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
            .map_err(|e| VfsError::io("truncate", guest.clone(), e))?;
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

    pub(super) fn delete_entry(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &AreaPath,
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
                .map_err(|e| VfsError::io("delete", guest.clone(), e))?;
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
                Err(e) => return Err(VfsError::io("delete", guest, e)),
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

    pub(super) fn rename_entry(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        src: &AreaPath,
        dst: &AreaPath,
        nesting: Option<Result<(), VfsError>>,
    ) -> Result<FileChange, VfsError> {
        let (src_guest, dst_guest) = (src.guest(), dst.guest());
        let sv = dirs.area(&src.area)?;
        let dv = dirs.area(&dst.area)?;
        let exists = |e: io::Error| VfsError::io("rename", dst_guest.clone(), e);
        if db.files.contains_key(dst) || entry_exists(dv.dir(), &dst.rel).map_err(exists)? {
            return Err(VfsError::AlreadyExists { path: dst_guest });
        }
        let (moved, is_dir) = match db.files.get(src) {
            Some(m) => (vec![(String::new(), m.clone())], false),
            None => match sv.dir().symlink_metadata(&src.rel) {
                Ok(m) if m.is_dir() => (db.files_under(src), true),
                Ok(m) if m.file_type().is_symlink() => return Err(symlink_denied(src_guest)),
                Ok(m) => return Err(not_a_file(src_guest, &m)),
                Err(e) => return Err(VfsError::io("rename", src_guest, e)),
            },
        };
        if is_dir && src.area == dst.area && dst.rel.starts_with(&format!("{}/", src.rel)) {
            return Err(VfsError::Denied {
                path: dst_guest,
                reason: format!("cannot move directory {src_guest} into itself"),
            });
        }
        if is_dir {
            // Measured by the caller outside the lock, with nothing added or
            // moved since, or now.
            nesting.unwrap_or_else(|| check_nesting("rename", sv.dir(), src, dst))?;
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
        // Whatever was moved, files or only directories.
        db.reshaped_at(Some(dst));
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
            db.put_noted(src.with_suffix(&suffix), None);
            db.put_noted(to, Some(meta));
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

    pub(super) fn set_acl_of(
        &self,
        dirs: &mut Dirs,
        db: &mut Db,
        who: Caller<'_>,
        key: &AreaPath,
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
        // The ids an ACL lists count with the session's bytes (see
        // `FileMeta::acl_bytes`): a guest's ACLs are bounded by the quota
        // its files are.
        let (was, will) = (old.acl_bytes(), super::meta::acl_bytes(&acl));
        let total = db.usage.bytes.saturating_sub(was).saturating_add(will);
        if will > was && total > self.quotas.max_total_bytes {
            return Err(VfsError::Quota {
                path: guest,
                reason: format!(
                    "the ACL names {will} bytes of agent ids; with them the session's files would total {total} bytes ({} now), and the limit is {}",
                    db.usage.bytes, self.quotas.max_total_bytes
                ),
            });
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
    pub(super) fn no_acl(&self, dirs: &mut Dirs, key: &AreaPath) -> VfsError {
        match self.missing(dirs, key, "get-acl") {
            VfsError::Io { path, .. } => VfsError::Denied {
                path,
                reason: "is a directory; directories carry no ACL".into(),
            },
            e => e,
        }
    }
}

/// What an append does once it holds the session's lock again.
enum AppendPlan {
    /// Make the file (checked; its area, to stage the bytes in).
    Create(std::sync::Arc<crate::vfs::Vfs>),
    /// Make the file from these staged bytes.
    Staged(Staged),
    /// Extend the file.
    Extend(Prehashed),
}

/// A file's hash state after an append's bytes, and the file's size and
/// digest before them, which it is valid for.
pub(super) struct Prehashed {
    size: u64,
    digest: Sha256Digest,
    hasher: sha2::Sha256,
}

/// A file's new contents, and the same bytes already staged if they are
/// ([`Vfs::stage`](crate::vfs::Vfs::stage)).
pub(super) struct Contents<'a> {
    bytes: &'a [u8],
    staged: Option<Staged>,
}

/// How many times a read reads outside the session's lock before it reads
/// under it (see `SessionFiles::read`).
const READS_UNLOCKED: usize = 2;

/// How many times a rename measures a directory outside the session's lock
/// before it gives up with a conflict (see `SessionFiles::rename`).
const RENAMES_UNLOCKED: usize = 3;

/// Pauses tests can put where an operation works outside the session's
/// lock: between a write's staging and its placing, between a read's
/// opening and its reading.
#[cfg(test)]
pub(super) mod pause {
    use std::cell::RefCell;

    type Hook = Box<dyn FnOnce()>;

    /// Where a pause runs.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(in crate::session::files) enum At {
        /// A write has staged its bytes.
        Staged,
        /// A read has opened its file.
        Read,
        /// A rename has measured the directory it moves.
        Measured,
        /// A listing has read its directory.
        Listed,
        /// An append to a file has hashed its bytes.
        Hashed,
    }

    thread_local! {
        static HOOKS: RefCell<Vec<(At, Hook)>> = const { RefCell::new(Vec::new()) };
    }

    /// Runs `f` once, on this thread, at its next operation to reach `at`
    /// (pauses set for one point run in the order they were set).
    pub(in crate::session::files) fn set(at: At, f: impl FnOnce() + 'static) {
        HOOKS.with(|h| h.borrow_mut().push((at, Box::new(f))));
    }

    pub(super) fn run(at: At) {
        let hook = HOOKS.with(|h| {
            let mut h = h.borrow_mut();
            let i = h.iter().position(|(a, _)| *a == at)?;
            Some(h.remove(i).1)
        });
        if let Some(f) = hook {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::files::test_support::*;

    /// Has agent `name` act on `e`'s files at ring 2 when this thread's
    /// next operation reaches `at` ([`pause::set`]).
    fn acts_at(
        at: pause::At,
        e: &Arc<Env>,
        name: &'static str,
        f: impl FnOnce(&SessionFiles, Caller<'_>) + 'static,
    ) {
        let e = e.clone();
        pause::set(at, move || {
            let who = id(name);
            f(&e.files, ring2(&who));
        });
    }

    /// Runs `f` on a thread of its own and returns what it returns; fails
    /// with `what` if it takes more than 30 s (the tests below run another
    /// operation of the session, on the same thread, inside an operation's
    /// window without the lock: holding the lock there deadlocks).
    fn within_30s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, finished) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = done.send(f());
        });
        match finished.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(out) => out,
            // It panicked: its panic is the test's.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the thread sends before it ends"),
            },
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// A write's bytes go to disk outside the session's lock: another file
    /// operation of the session (here on the writing thread itself, which
    /// would deadlock if the write held the lock) runs while they are
    /// staged, and a change it makes to the same file is seen by the
    /// write's second look (a conflict), which leaves nothing behind.
    #[test]
    fn a_write_stages_its_bytes_outside_the_session_lock() {
        let (alice, staged_left, now) = within_30s(
            "the write and the operations in its staging ended within 30 s (a deadlock means the write held the session's lock while staging)",
            move || {
                let e = Arc::new(env());
                let (a, b) = (id("alice"), id("bob"));
                e.files.set_strict(true);
                e.files.write(ring2(&a), "shared/f", b"first").unwrap();
                e.files.read(ring2(&b), "shared/f").unwrap();
                acts_at(pause::At::Staged, &e, "bob", move |files, who| {
                    // While alice's write is staged: bob reads another
                    // file and rewrites this one.
                    files.write(who, "shared/other", b"o").unwrap();
                    files.write(who, "shared/f", b"bob's").unwrap();
                });
                let alice = e.files.write(ring2(&a), "shared/f", b"alice's");
                let staged_left: Vec<String> = std::fs::read_dir(e.files_dir().join("shared"))
                    .unwrap()
                    .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".ahv"))
                    .collect();
                let now = e.files.read(ring2(&a), "shared/f");
                (alice, staged_left, now)
            },
        );
        assert!(matches!(alice, Err(VfsError::Conflict { .. })), "{alice:?}");
        assert!(staged_left.is_empty(), "{staged_left:?}");
        assert_eq!(now.unwrap(), b"bob's");
    }

    /// An append that creates its file stages its bytes outside the
    /// session's lock, as a write does; if the file was created while they
    /// were staged, the append extends it instead.
    #[test]
    fn an_append_that_creates_its_file_stages_it_outside_the_session_lock() {
        let (created, raced, staged_left, new, both) = within_30s(
            "the appends and the writes in their staging ended within 30 s (a deadlock means an append held the session's lock while staging)",
            move || {
                let e = Arc::new(env());
                let (a, b) = (id("alice"), id("bob"));
                e.files.set_strict(false);
                acts_at(pause::At::Staged, &e, "bob", move |files, who| {
                    files.write(who, "shared/other", b"o").unwrap();
                });
                let created = e.files.append(ring2(&a), "shared/new", b"one");
                acts_at(pause::At::Staged, &e, "bob", move |files, who| {
                    files.write(who, "shared/raced", b"bob's ").unwrap();
                });
                let raced = e.files.append(ring2(&a), "shared/raced", b"alice's");
                let staged_left: Vec<String> = std::fs::read_dir(e.files_dir().join("shared"))
                    .unwrap()
                    .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".ahv"))
                    .collect();
                let new = e.files.read(ring2(&b), "shared/new");
                let both = e.files.read(ring2(&b), "shared/raced");
                (created, raced, staged_left, new, both)
            },
        );
        let created = created.unwrap();
        assert_eq!((created.op, created.before), (FileOp::Append, None));
        assert_eq!(raced.unwrap().before, Some(sha256(b"bob's ")));
        assert!(staged_left.is_empty(), "{staged_left:?}");
        assert_eq!(new.unwrap(), b"one");
        assert_eq!(both.unwrap(), b"bob's alice's");
    }

    /// A rename measures the directory it moves outside the session's lock
    /// (another operation runs in that window on the renaming thread itself,
    /// which would deadlock if the lock were held), and measures again when
    /// the session changed meanwhile: here an empty chain of directories
    /// moved into the renamed one makes the move nest too deep, which the
    /// first measure could not see.
    #[test]
    fn a_rename_measures_its_directory_outside_the_session_lock() {
        let (deep, elsewhere, busy, fine) = within_30s(
            "the renames and the operations in their measuring ended within 30 s (a deadlock means a rename measured under the session's lock)",
            move || {
                let e = Arc::new(env());
                let a = id("alice");
                e.files.set_strict(false);
                e.files.write(ring2(&a), "a/f", b"x").unwrap();
                // 30 levels below `z` (depth 31): 32 once moved into `a`, 34 once
                // `a` moves to `b/c/a`, past `MAX_DEPTH`.
                let chain: Vec<String> = (0..30).map(|i| format!("{i}")).collect();
                e.files
                    .create_dir(ring2(&a), &format!("z/{}", chain.join("/")))
                    .unwrap();
                acts_at(pause::At::Measured, &e, "alice", |files, who| {
                    files.rename(who, "z", "a/z").unwrap();
                });
                let deep = e.files.rename(ring2(&a), "a", "b/c/a");
                // Changes elsewhere in its window (bob's own files, alice's
                // beside the directory), and changes in place below it, do not
                // hold the rename up, however many: it is made after its first
                // measure.
                let b = id("bob");
                for i in 0..300 {
                    e.files
                        .write(ring2(&b), &format!("many/{i}"), b"m")
                        .unwrap();
                }
                let measured_again = std::rc::Rc::new(std::cell::Cell::new(false));
                {
                    let e = e.clone();
                    let flag = measured_again.clone();
                    pause::set(pause::At::Measured, move || {
                        let (a, b) = (id("alice"), id("bob"));
                        for i in 0..100 {
                            e.files.write(ring2(&b), &format!("w{i}"), b"w").unwrap();
                        }
                        e.files.rename(ring2(&b), "many", "moved").unwrap();
                        for _ in 0..300 {
                            e.files.append(ring2(&a), "a/f", b"+").unwrap();
                        }
                        e.files.write(ring2(&a), "ab", b"w").unwrap();
                        e.files.create_dir(ring2(&a), "c/d").unwrap();
                        // Set last: bob's rename above measures too.
                        pause::set(pause::At::Measured, move || flag.set(true));
                    });
                }
                let elsewhere = e.files.rename(ring2(&a), "a", "b");
                assert!(
                    !measured_again.get(),
                    "a change elsewhere made the rename measure again"
                );
                pause::run(pause::At::Measured);
                // A change below it in every window: a conflict once the tries
                // run out.
                for i in 0..RENAMES_UNLOCKED {
                    acts_at(pause::At::Measured, &e, "alice", move |files, who| {
                        files.write(who, &format!("b/w{i}"), b"w").unwrap();
                    });
                }
                let busy = e.files.rename(ring2(&a), "b", "d");
                let fine = e.files.rename(ring2(&a), "b", "d");
                pause::run(pause::At::Measured);
                (deep, elsewhere, busy, fine)
            },
        );
        assert!(
            matches!(
                deep,
                Err(VfsError::InvalidPath(
                    crate::path::PathError::TooDeep { .. }
                ))
            ),
            "{deep:?}"
        );
        elsewhere.unwrap();
        assert!(matches!(busy, Err(VfsError::Conflict { .. })), "{busy:?}");
        fine.unwrap();
    }

    /// A listing reads its directory outside the session's lock (a write
    /// runs in that window on the listing thread itself, which would
    /// deadlock if the lock were held); only the session's files are
    /// listed, as the session knows them once the directory is read.
    #[test]
    fn a_listing_reads_its_directory_outside_the_session_lock() {
        let listed = within_30s(
            "the listing and the delete in its window ended within 30 s (a deadlock means the listing read its directory under the session's lock)",
            move || {
                let e = Arc::new(env());
                let a = id("alice");
                e.files.write(ring2(&a), "d/kept", b"k").unwrap();
                e.files.write(ring2(&a), "d/gone", b"g").unwrap();
                e.files.create_dir(ring2(&a), "d/sub").unwrap();
                std::fs::write(e.files_dir().join("agents/alice/d/planted"), b"p").unwrap();
                acts_at(pause::At::Listed, &e, "alice", move |files, who| {
                    files.delete(who, "d/gone").unwrap();
                });
                e.files.list(ring2(&a), "d")
            },
        );
        assert_eq!(listed.unwrap(), ["kept", "sub"]);
    }

    /// An append to a file hashes its bytes outside the session's lock
    /// (other operations run in that window on the appending thread
    /// itself); when the file changed meanwhile, its hash is computed again
    /// from the file's new state, so the recorded digest is always that of
    /// the contents.
    #[test]
    fn an_append_hashes_its_bytes_outside_the_session_lock() {
        let (quiet, raced, read, hash) = within_30s(
            "the appends and the operations in their hashing ended within 30 s (a deadlock means an append hashed under the session's lock)",
            move || {
                let e = Arc::new(env());
                let (a, b) = (id("alice"), id("bob"));
                e.files.set_strict(false);
                e.files.write(ring2(&a), "shared/log", b"base ").unwrap();
                acts_at(pause::At::Hashed, &e, "bob", move |files, who| {
                    files.write(who, "shared/other", b"o").unwrap();
                });
                let quiet = e.files.append(ring2(&a), "shared/log", b"one ");
                acts_at(pause::At::Hashed, &e, "bob", move |files, who| {
                    files.append(who, "shared/log", b"bob's ").unwrap();
                });
                let raced = e.files.append(ring2(&a), "shared/log", b"two");
                let read = e.files.read(ring2(&b), "shared/log");
                let hash = e.files.hash(ring2(&b), "shared/log");
                (quiet, raced, read, hash)
            },
        );
        assert_eq!(quiet.unwrap().after, Some(sha256(b"base one ")));
        let raced = raced.unwrap();
        assert_eq!(raced.before, Some(sha256(b"base one bob's ")));
        assert_eq!(raced.after, Some(sha256(b"base one bob's two")));
        assert_eq!(read.unwrap(), b"base one bob's two");
        assert_eq!(hash.unwrap(), sha256(b"base one bob's two"));
    }

    /// A read's bytes are read outside the session's lock: another file
    /// operation of the session (on the reading thread itself, which would
    /// deadlock if the read held the lock) runs between its opening and its
    /// reading. An append made there works in place, on the file the read
    /// opened: the read still returns the contents its checks saw.
    #[test]
    fn a_read_reads_its_bytes_outside_the_session_lock() {
        let (read, again, stale, fresh) = within_30s(
            "the read and the operations between its opening and its reading ended within 30 s (a deadlock means the read held the session's lock)",
            move || {
                let e = Arc::new(env());
                let (a, b) = (id("alice"), id("bob"));
                e.files.write(ring2(&a), "shared/f", b"first").unwrap();
                acts_at(pause::At::Read, &e, "alice", move |files, who| {
                    files.write(who, "shared/other", b"o").unwrap();
                    files.append(who, "shared/f", b" and more").unwrap();
                });
                e.files.set_strict(true);
                let read = e.files.read(ring2(&b), "shared/f");
                // Bob saw the clock of what he read, not of the append: his
                // write over it is stale.
                let stale = e.files.write(ring2(&b), "shared/f", b"bob's");
                let again = e.files.read(ring2(&b), "shared/f");
                let fresh = e.files.write(ring2(&b), "shared/f", b"bob's");
                (read, again, stale, fresh)
            },
        );
        assert_eq!(read.unwrap(), b"first");
        assert_eq!(again.unwrap(), b"first and more");
        assert!(matches!(stale, Err(VfsError::Conflict { .. })), "{stale:?}");
        fresh.unwrap();
    }

    /// Contents changed in place between a read's opening and its reading
    /// (a truncate and an append of the same length: the size alone would
    /// not tell) are never returned mixed: the read that saw them change
    /// reads again and returns the new contents whole.
    #[test]
    fn a_read_never_returns_contents_changed_while_it_read() {
        let e = Arc::new(env());
        let (a, b) = (id("alice"), id("bob"));
        e.files.write(ring2(&a), "shared/f", b"first").unwrap();
        let rewrite = |e: &Arc<Env>, keep: u64, add: &'static [u8]| {
            let e = e.clone();
            move || {
                let a = id("alice");
                e.files.truncate(ring2(&a), "shared/f", keep).unwrap();
                e.files.append(ring2(&a), "shared/f", add).unwrap();
            }
        };
        e.files.set_strict(true);
        pause::set(pause::At::Read, rewrite(&e, 2, b"XYZ"));
        assert_eq!(e.files.read(ring2(&b), "shared/f").unwrap(), b"fiXYZ");
        // The clock bob observed is that of the contents he got: his write
        // over them is not stale.
        e.files.write(ring2(&b), "shared/f", b"bob's").unwrap();
        e.files.write(ring2(&a), "shared/f", b"first").unwrap_err();
        e.files.read(ring2(&a), "shared/f").unwrap();
        e.files.write(ring2(&a), "shared/f", b"first").unwrap();

        // Changed under every unlocked attempt: read under the lock.
        for add in [b"123", b"456"] {
            pause::set(pause::At::Read, rewrite(&e, 2, add));
        }
        let third = std::rc::Rc::new(std::cell::Cell::new(false));
        pause::set(pause::At::Read, {
            let third = third.clone();
            move || third.set(true)
        });
        assert_eq!(e.files.read(ring2(&b), "shared/f").unwrap(), b"fi456");
        assert!(!third.get(), "a third read outside the lock");
        pause::run(pause::At::Read);
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
        // Files the session did not write are not listed, nor counted
        // (up to `max_files` of them).
        e.files.create_dir(ring2(&a), "d").unwrap();
        e.files.write(ring2(&a), "d/known", b"").unwrap();
        for n in ["x", "y", "z"] {
            std::fs::write(e.files_dir().join(format!("agents/alice/d/{n}")), b"").unwrap();
        }
        assert_eq!(e.files.list(ring2(&a), "d").unwrap(), ["known"]);
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
}
