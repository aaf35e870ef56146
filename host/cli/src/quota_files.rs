//! The files of an agent that `ahv run` (or the demo's tour) runs outside a
//! shared session: one directory, under the session quotas.
//!
//! A session's [`SessionFiles`](ahv_governance::session_vfs::SessionFiles)
//! counts files, directories and bytes, but it lays files out in its own tree
//! and hides every file it did not create, so it cannot give an agent an
//! existing directory to work on, which is what `ahv run --dir` is for. The
//! standalone [`Vfs`] confines paths but counts nothing. [`QuotaFiles`] is a
//! [`Vfs`] that keeps the session's counts: what the directory holds when the
//! agent starts counts against the quotas, and every change that would make
//! a file, a directory or bytes past its quota is refused with a `quota`
//! error before anything changes. One agent runs at a time, and the counts
//! are checked and updated under one lock around each change.

use std::sync::{Mutex, MutexGuard};

use ahv_governance::files::{Acl, Caller, FileChange, FileSpace, Sha256Digest};
use ahv_governance::path::VfsPath;
use ahv_governance::session_vfs::{FileQuotas, Usage};
use ahv_governance::vfs::{EntryKind, Stat, Vfs, VfsError, VfsLimits};
use anyhow::{Context, bail};
use cap_std::fs::Dir;

/// A directory under file, directory and byte quotas.
#[derive(Debug)]
pub(crate) struct QuotaFiles {
    vfs: Vfs,
    quotas: FileQuotas,
    usage: Mutex<Usage>,
}

impl QuotaFiles {
    /// Counts what `dir` holds and wraps it.
    ///
    /// # Errors
    /// When the directory cannot be read, or already holds more than a quota
    /// allows (the walk stops there, so a huge directory costs no more).
    pub(crate) fn open(dir: Dir, quotas: FileQuotas) -> anyhow::Result<QuotaFiles> {
        let usage = measure(&dir, &quotas)?;
        let limits = VfsLimits {
            max_file_bytes: quotas.max_file_bytes,
            max_list_entries: quotas.max_list_entries,
        };
        Ok(QuotaFiles {
            vfs: Vfs::new(dir, limits),
            quotas,
            usage: Mutex::new(usage),
        })
    }

    /// What the directory holds now.
    pub(crate) fn usage(&self) -> Usage {
        *self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The size of the regular file at `p`, if there is one.
    fn file_size(&self, p: &VfsPath) -> Option<u64> {
        match self.vfs.stat(p.as_str()) {
            Ok(Stat {
                kind: EntryKind::File,
                size,
            }) => Some(size),
            _ => None,
        }
    }

    /// The directories that making `p`'s parents (and `p` itself, if
    /// `itself`) would create, deepest first.
    fn missing_dirs(&self, p: &VfsPath, itself: bool) -> Vec<VfsPath> {
        let mut missing = Vec::new();
        let mut next = if itself { Some(p.clone()) } else { p.parent() };
        while let Some(dir) = next {
            match self.vfs.stat(dir.as_str()) {
                Err(VfsError::NotFound { .. }) => {
                    next = dir.parent();
                    missing.push(dir);
                }
                // It exists (or the change will fail on it): nothing above is made.
                _ => break,
            }
        }
        missing
    }

    /// Refuses a change that would pass a quota.
    fn check(
        &self,
        usage: &Usage,
        p: &VfsPath,
        new_files: u64,
        new_dirs: u64,
        bytes_after: u64,
    ) -> Result<(), VfsError> {
        let q = &self.quotas;
        let refuse = |reason: String| {
            Err(VfsError::Quota {
                path: p.to_string(),
                reason,
            })
        };
        if new_dirs > 0 && usage.dirs.saturating_add(new_dirs) > q.max_dirs {
            return refuse(format!(
                "would make {new_dirs} directory(ies) where {} of at most {} exist (ahv run --max-dirs)",
                usage.dirs, q.max_dirs
            ));
        }
        if new_files > 0 && usage.files.saturating_add(new_files) > q.max_files {
            return refuse(format!(
                "would make a file where {} of at most {} exist (ahv run --max-files)",
                usage.files, q.max_files
            ));
        }
        // Shrinking is always allowed, even past the quota.
        if bytes_after > q.max_total_bytes && bytes_after > usage.bytes {
            return refuse(format!(
                "files would hold {bytes_after} bytes; the limit is {} (ahv run --max-bytes)",
                q.max_total_bytes
            ));
        }
        Ok(())
    }

    /// Counts the directories of `made` that exist now: a change that failed
    /// half-way may have made some of them.
    fn settle(&self, usage: &mut Usage, made: &[VfsPath]) {
        let now = made
            .iter()
            .filter(|d| {
                matches!(
                    self.vfs.stat(d.as_str()),
                    Ok(Stat {
                        kind: EntryKind::Directory,
                        ..
                    })
                )
            })
            .count() as u64;
        usage.dirs = usage.dirs.saturating_add(now);
    }

    /// A write or an append of `len` bytes to `path` (`replace`: a write).
    fn put(
        &self,
        path: &str,
        len: u64,
        replace: bool,
        change: impl FnOnce(&Vfs) -> Result<FileChange, VfsError>,
    ) -> Result<FileChange, VfsError> {
        let Ok(p) = VfsPath::parse(path) else {
            // The file space names the bad path; nothing can change.
            return change(&self.vfs);
        };
        let mut usage = self.lock();
        let old = self.file_size(&p);
        let missing = self.missing_dirs(&p, false);
        let kept = if replace { 0 } else { old.unwrap_or(0) };
        let bytes_after = usage
            .bytes
            .saturating_sub(old.unwrap_or(0))
            .saturating_add(kept)
            .saturating_add(len);
        self.check(
            &usage,
            &p,
            u64::from(old.is_none()),
            missing.len() as u64,
            bytes_after,
        )?;
        let result = change(&self.vfs);
        self.settle(&mut usage, &missing);
        if result.is_ok() {
            if old.is_none() {
                usage.files = usage.files.saturating_add(1);
            }
            usage.bytes = bytes_after;
        }
        result
    }
}

/// Counts the regular files, their bytes and the directories under `dir`
/// (symbolic links are not followed), stopping at the first quota passed.
fn measure(dir: &Dir, quotas: &FileQuotas) -> anyhow::Result<Usage> {
    let mut usage = Usage::default();
    let mut pending = vec![String::from(".")];
    while let Some(rel) = pending.pop() {
        let entries = dir
            .read_dir(&rel)
            .with_context(|| format!("reading the agent's directory {rel}"))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading the agent's directory {rel}"))?;
            let name = entry.file_name();
            let path = format!("{rel}/{}", name.to_string_lossy());
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {path}"))?;
            if kind.is_dir() {
                usage.dirs += 1;
                pending.push(path);
            } else if kind.is_file() {
                usage.files += 1;
                let len = entry
                    .metadata()
                    .with_context(|| format!("reading {path}"))?
                    .len();
                usage.bytes = usage.bytes.saturating_add(len);
            }
            let over = [
                ("directories", usage.dirs, quotas.max_dirs, "--max-dirs"),
                ("files", usage.files, quotas.max_files, "--max-files"),
                ("bytes", usage.bytes, quotas.max_total_bytes, "--max-bytes"),
            ]
            .into_iter()
            .find(|(_, n, max, _)| n > max);
            if let Some((what, _, max, flag)) = over {
                bail!(
                    "the agent's directory already holds more than {max} {what}, its quota; \
                     give it a smaller directory or raise {flag}"
                );
            }
        }
    }
    Ok(usage)
}

impl FileSpace for QuotaFiles {
    fn max_file_bytes(&self) -> u64 {
        self.quotas.max_file_bytes
    }

    fn read(&self, who: Caller<'_>, path: &str) -> Result<Vec<u8>, VfsError> {
        FileSpace::read(&self.vfs, who, path)
    }

    fn list(&self, who: Caller<'_>, path: &str) -> Result<Vec<String>, VfsError> {
        FileSpace::list(&self.vfs, who, path)
    }

    fn stat(&self, who: Caller<'_>, path: &str) -> Result<Stat, VfsError> {
        FileSpace::stat(&self.vfs, who, path)
    }

    fn hash(&self, who: Caller<'_>, path: &str) -> Result<Sha256Digest, VfsError> {
        FileSpace::hash(&self.vfs, who, path)
    }

    fn write(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        self.put(path, contents.len() as u64, true, |vfs| {
            FileSpace::write(vfs, who, path, contents)
        })
    }

    fn append(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        self.put(path, contents.len() as u64, false, |vfs| {
            FileSpace::append(vfs, who, path, contents)
        })
    }

    fn truncate(&self, who: Caller<'_>, path: &str, len: u64) -> Result<FileChange, VfsError> {
        let mut usage = self.lock();
        let old = VfsPath::parse(path).ok().and_then(|p| self.file_size(&p));
        let result = FileSpace::truncate(&self.vfs, who, path, len);
        if let (Ok(_), Some(old)) = (&result, old) {
            usage.bytes = usage.bytes.saturating_sub(old).saturating_add(len);
        }
        result
    }

    fn delete(&self, who: Caller<'_>, path: &str) -> Result<FileChange, VfsError> {
        let mut usage = self.lock();
        let before = VfsPath::parse(path)
            .ok()
            .and_then(|p| self.vfs.stat(p.as_str()).ok());
        let result = FileSpace::delete(&self.vfs, who, path);
        match (&result, before) {
            (
                Ok(_),
                Some(Stat {
                    kind: EntryKind::File,
                    size,
                }),
            ) => {
                usage.files = usage.files.saturating_sub(1);
                usage.bytes = usage.bytes.saturating_sub(size);
            }
            (
                Ok(_),
                Some(Stat {
                    kind: EntryKind::Directory,
                    ..
                }),
            ) => usage.dirs = usage.dirs.saturating_sub(1),
            _ => {}
        }
        result
    }

    fn rename(&self, who: Caller<'_>, src: &str, dst: &str) -> Result<FileChange, VfsError> {
        let Ok(d) = VfsPath::parse(dst) else {
            return FileSpace::rename(&self.vfs, who, src, dst);
        };
        let mut usage = self.lock();
        let missing = self.missing_dirs(&d, false);
        self.check(&usage, &d, 0, missing.len() as u64, usage.bytes)?;
        let result = FileSpace::rename(&self.vfs, who, src, dst);
        self.settle(&mut usage, &missing);
        result
    }

    fn create_dir(&self, who: Caller<'_>, path: &str) -> Result<Option<FileChange>, VfsError> {
        let Ok(p) = VfsPath::parse(path) else {
            return FileSpace::create_dir(&self.vfs, who, path);
        };
        let mut usage = self.lock();
        let missing = self.missing_dirs(&p, true);
        if missing.is_empty() {
            // Nothing to make (or something in the way): the file space says which.
            return FileSpace::create_dir(&self.vfs, who, path);
        }
        self.check(&usage, &p, 0, missing.len() as u64, usage.bytes)?;
        let result = FileSpace::create_dir(&self.vfs, who, path);
        self.settle(&mut usage, &missing);
        result
    }

    fn get_acl(&self, who: Caller<'_>, path: &str) -> Result<Acl, VfsError> {
        FileSpace::get_acl(&self.vfs, who, path)
    }

    fn set_acl(&self, who: Caller<'_>, path: &str, acl: Acl) -> Result<FileChange, VfsError> {
        FileSpace::set_acl(&self.vfs, who, path, acl)
    }
}

#[cfg(test)]
mod tests {
    use ahv_core::{AgentId, Ring};
    use cap_std::ambient_authority;

    use super::*;

    fn files(quotas: FileQuotas) -> (tempfile::TempDir, QuotaFiles) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
        (tmp, QuotaFiles::open(dir, quotas).unwrap())
    }

    fn quota(r: Result<impl std::fmt::Debug, VfsError>) -> String {
        match r {
            Err(VfsError::Quota { reason, .. }) => reason,
            other => panic!("expected a quota refusal, got {other:?}"),
        }
    }

    #[test]
    fn directories_made_explicitly_or_as_parents_count_and_stop_at_the_quota() {
        let (tmp, f) = files(FileQuotas {
            max_dirs: 3,
            ..FileQuotas::default()
        });
        let me = AgentId::new("did:test:a").unwrap();
        let who = Caller::untraced(&me, Ring::Standard);
        f.create_dir(who, "a/b").unwrap();
        assert_eq!(f.usage().dirs, 2);
        // Two more would be needed: refused, nothing made.
        assert!(quota(f.write(who, "c/d/e.txt", b"x")).contains("--max-dirs"));
        assert!(!tmp.path().join("c").exists());
        f.write(who, "c/e.txt", b"x").unwrap();
        assert_eq!(
            f.usage(),
            Usage {
                files: 1,
                bytes: 1,
                dirs: 3
            }
        );
        quota(f.create_dir(who, "storm"));
        quota(f.rename(who, "c/e.txt", "z/e.txt"));
        // An existing directory is no change; a deleted one frees its place.
        f.create_dir(who, "a/b").unwrap();
        f.delete(who, "a/b").unwrap();
        f.create_dir(who, "storm").unwrap();
        assert_eq!(f.usage().dirs, 3);
    }

    #[test]
    fn files_and_bytes_stop_at_their_quotas_and_shrinking_is_always_allowed() {
        let (_tmp, f) = files(FileQuotas {
            max_files: 2,
            max_total_bytes: 10,
            ..FileQuotas::default()
        });
        let me = AgentId::new("did:test:a").unwrap();
        let who = Caller::untraced(&me, Ring::Standard);
        f.write(who, "a", b"12345678").unwrap();
        assert!(quota(f.write(who, "b", b"123")).contains("--max-bytes"));
        f.write(who, "b", b"12").unwrap();
        assert!(quota(f.write(who, "c", b"")).contains("--max-files"));
        quota(f.append(who, "b", b"1"));
        f.write(who, "a", b"1").unwrap();
        f.append(who, "b", b"1234567").unwrap();
        assert_eq!(
            f.usage(),
            Usage {
                files: 2,
                bytes: 10,
                dirs: 0
            }
        );
        f.delete(who, "a").unwrap();
        f.write(who, "c", b"").unwrap();
        assert_eq!(
            f.usage(),
            Usage {
                files: 2,
                bytes: 9,
                dirs: 0
            }
        );
    }

    #[test]
    fn what_the_directory_holds_counts_and_too_much_is_refused_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("x/y")).unwrap();
        std::fs::write(tmp.path().join("x/y/f"), b"abc").unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("root-link")).unwrap();
        let open = |max_dirs| {
            let dir = Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
            QuotaFiles::open(
                dir,
                FileQuotas {
                    max_dirs,
                    ..FileQuotas::default()
                },
            )
        };
        let f = open(2).unwrap();
        assert_eq!(
            f.usage(),
            Usage {
                files: 1,
                bytes: 3,
                dirs: 2
            }
        );
        let err = format!("{:#}", open(1).unwrap_err());
        assert!(
            err.contains("more than 1 directories") && err.contains("--max-dirs"),
            "{err}"
        );
    }
}
