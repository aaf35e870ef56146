//! The agent's files: a directory handle (`cap_std::fs::Dir`) and the rules
//! around it.
//!
//! Every operation validates its path with [`VfsPath`] first, then works only
//! through the directory handle, so nothing outside the directory is reachable:
//! `..` and absolute paths never get this far, and cap-std refuses any symlink
//! that resolves outside. Entries that are symlinks are never modified
//! (written, appended, renamed, deleted): the guest cannot create them, so any
//! symlink was planted by someone else and is treated as hostile.
//!
//! Only regular files and directories are served. A FIFO, socket or device
//! node in the directory (which no guest can create) is refused with
//! `Denied` by every operation, listings leave it out, and nothing ever
//! waits on it: entries are opened only through `crate::open`
//! (non-blocking, type checked on the handle). A file with other hard links
//! may be read or replaced (a write puts a new inode at the path), but never
//! changed in place: an append or a truncation would reach its other names,
//! which may lie outside the directory.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cap_std::fs::Dir;
use thiserror::Error;

use crate::open::{self, How, Refusal};
use crate::path::{PathError, VfsPath};

/// Size limits of one VFS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfsLimits {
    /// Largest file that may be written or read, in bytes.
    pub max_file_bytes: u64,
    /// Largest number of entries a directory listing returns.
    pub max_list_entries: usize,
}

impl Default for VfsLimits {
    fn default() -> Self {
        VfsLimits {
            max_file_bytes: 16 << 20,
            max_list_entries: 10_000,
        }
    }
}

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
}

/// Metadata of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

/// Why a VFS operation was refused or failed. Messages never contain host paths.
#[derive(Debug, Error)]
pub enum VfsError {
    /// The guest path is not valid.
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    /// Nothing exists at the path.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The normalised path.
        path: String,
    },
    /// Something already exists at the path.
    #[error("{path}: already exists")]
    AlreadyExists {
        /// The normalised path.
        path: String,
    },
    /// Policy refuses the operation on this path.
    #[error("{path}: {reason}")]
    Denied {
        /// The normalised path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A size or count limit.
    #[error("{path}: {reason}")]
    Quota {
        /// The normalised path.
        path: String,
        /// Which limit.
        reason: String,
    },
    /// A write from an agent that has not seen the latest write to the path
    /// (strict consistency), or another consistency refusal.
    #[error("{path}: conflict: {reason}")]
    Conflict {
        /// The normalised path.
        path: String,
        /// What the writer had not seen.
        reason: String,
    },
    /// Another I/O failure.
    #[error("{op} {path}: {message}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The normalised path.
        path: String,
        /// The OS's description (no host paths).
        message: String,
    },
}

impl VfsError {
    fn from_io(op: &'static str, path: &VfsPath, e: io::Error) -> VfsError {
        VfsError::io(op, path.to_string(), e)
    }

    /// Maps an I/O error of `op` on `path` (as the caller names it).
    pub(crate) fn io(op: &'static str, path: String, e: io::Error) -> VfsError {
        match e.kind() {
            io::ErrorKind::NotFound => VfsError::NotFound { path },
            io::ErrorKind::AlreadyExists => VfsError::AlreadyExists { path },
            // cap-std reports every attempt to leave the directory as PermissionDenied.
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

    /// Maps a refused open of `path` (an area-relative or guest path).
    pub(crate) fn refused(op: &'static str, path: String, r: Refusal) -> VfsError {
        match r {
            Refusal::Io(e) => VfsError::io(op, path, e),
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
}

/// The number in the next temporary name, for the whole process: a
/// session's area directory may be opened by more than one `Vfs` over time
/// (its descriptor closed and reopened between operations), and a write's
/// bytes are staged outside the session's lock, so a counter per `Vfs` gave
/// two in-flight writes the same name, and one's bytes could be placed at
/// the other's path. With the process id in the name it is unique to this
/// process; a file of that name can only be an earlier process's leftover.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The agent's files: one directory, reached only through a capability handle.
#[derive(Debug)]
pub struct Vfs {
    dir: Dir,
    limits: VfsLimits,
}

impl Vfs {
    /// Wraps a directory handle.
    pub fn new(dir: Dir, limits: VfsLimits) -> Vfs {
        Vfs { dir, limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &VfsLimits {
        &self.limits
    }

    /// The directory handle, for the session VFS's own moves between areas
    /// and its undo store (hard links, renames). Callers keep the same rules:
    /// validated paths only, symlinks never modified.
    pub(crate) fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Reads a whole file.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` (escape), `Quota` (larger than
    /// `max_file_bytes`) or `Io` (a directory, for example).
    pub fn read(&self, path: &str) -> Result<Vec<u8>, VfsError> {
        let p = VfsPath::parse(path)?;
        let max = self.limits.max_file_bytes;
        match open::read_file(&self.dir, p.as_str(), max) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(VfsError::Quota {
                path: p.to_string(),
                reason: format!("file exceeds the read limit {max}"),
            }),
            Err(r) => Err(VfsError::refused("read", p.to_string(), r)),
        }
    }

    /// Opens the regular file at `path` for reading, refusing what
    /// [`Vfs::read`] refuses but reading nothing yet: the handle goes on
    /// reading the file it opened when a write renames another into place.
    ///
    /// # Errors
    /// As [`Vfs::read`], except `Quota`.
    pub(crate) fn open_read(&self, path: &str) -> Result<cap_std::fs::File, VfsError> {
        let p = VfsPath::parse(path)?;
        open::open_file(&self.dir, p.as_str(), How::Read)
            .map(|(file, _)| file)
            .map_err(|r| VfsError::refused("read", p.to_string(), r))
    }

    /// Lists a directory: sorted names, the host's reserved names hidden.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied`, `Quota` (more than
    /// `max_list_entries` entries) or `Io`.
    pub fn list(&self, path: &str) -> Result<Vec<String>, VfsError> {
        let p = VfsPath::parse_dir(path)?;
        let entries = self
            .dir
            .read_dir(p.as_str())
            .map_err(|e| VfsError::from_io("list", &p, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| VfsError::from_io("list", &p, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(crate::path::RESERVED_PREFIX) {
                continue;
            }
            // The entry's type from the listing itself (or `lstat` where the
            // listing gives none): nothing is opened.
            let kind = match open::listed_type(&entry) {
                Ok(kind) => kind,
                // Removed since it was listed: not in this listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(VfsError::from_io("list", &p, e)),
            };
            if open::special(kind).is_some() {
                continue;
            }
            if names.len() == self.limits.max_list_entries {
                return Err(VfsError::Quota {
                    path: p.to_string(),
                    reason: format!(
                        "directory has more than {} entries",
                        self.limits.max_list_entries
                    ),
                });
            }
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Describes one entry (following symlinks that stay inside).
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` (a FIFO, socket or device node,
    /// or an escape) or `Io`.
    pub fn stat(&self, path: &str) -> Result<Stat, VfsError> {
        let p = VfsPath::parse_dir(path)?;
        let meta = self
            .dir
            .metadata(p.as_str())
            .map_err(|e| VfsError::from_io("stat", &p, e))?;
        if let Some(kind) = open::special(meta.file_type()) {
            return Err(VfsError::refused(
                "stat",
                p.to_string(),
                Refusal::Special(kind),
            ));
        }
        Ok(if meta.is_dir() {
            Stat {
                kind: EntryKind::Directory,
                size: 0,
            }
        } else {
            Stat {
                kind: EntryKind::File,
                size: meta.len(),
            }
        })
    }

    /// Replaces or creates a file atomically (temporary file + rename),
    /// creating parent directories.
    ///
    /// # Errors
    /// `InvalidPath`, `Quota` (content larger than `max_file_bytes`), `Denied`
    /// (a symlink, a FIFO, socket or device node, or an escape) or `Io`.
    pub fn write(&self, path: &str, contents: &[u8]) -> Result<(), VfsError> {
        let p = VfsPath::parse(path)?;
        self.check_size(&p, contents.len() as u64)?;
        self.refuse_unservable("write", &p)?;
        self.create_parent(&p)?;
        let tmp = self.tmp_name(&p);
        let result = (|| {
            let mut f = open::create_new(&self.dir, &tmp)?;
            f.write_all(contents)?;
            f.sync_data()?;
            self.dir.rename(&tmp, &self.dir, p.as_str())
        })();
        result.map_err(|e| {
            // Best effort: the temporary file is hidden from guests either way.
            let _ = self.dir.remove_file(&tmp);
            VfsError::from_io("write", &p, e)
        })
    }

    /// The slow half of a [`Vfs::write`], which needs no lock: writes
    /// `contents` to a new temporary file at this directory's root and syncs
    /// it, hashing them on the way. Nothing is at `path` yet; [`Vfs::place`]
    /// puts them there. A staged file not placed is removed when dropped.
    ///
    /// # Errors
    /// `InvalidPath`, `Quota` (content larger than `max_file_bytes`) or `Io`.
    pub fn stage(self: &Arc<Vfs>, path: &str, contents: &[u8]) -> Result<Staged, VfsError> {
        let p = VfsPath::parse(path)?;
        self.check_size(&p, contents.len() as u64)?;
        let name = self.tmp_name_at_root();
        let mut staged = Staged {
            vfs: self.clone(),
            name,
            hasher: None,
            len: contents.len() as u64,
        };
        let mut f = open::create_new(&self.dir, &staged.name)
            .map_err(|e| VfsError::from_io("write", &p, e))?;
        f.write_all(contents)
            .and_then(|()| f.sync_data())
            .map_err(|e| VfsError::from_io("write", &p, e))?;
        staged.hasher = Some(<sha2::Sha256 as sha2::Digest>::new_with_prefix(contents));
        Ok(staged)
    }

    /// The fast half of a [`Vfs::write`]: puts `staged` (from this
    /// directory's [`Vfs::stage`], or another's on the same file system) at
    /// `path`, creating its parents, with one rename.
    ///
    /// # Errors
    /// As [`Vfs::write`].
    pub fn place(&self, path: &str, mut staged: Staged) -> Result<(), VfsError> {
        let p = VfsPath::parse(path)?;
        self.check_size(&p, staged.len)?;
        self.refuse_unservable("write", &p)?;
        self.create_parent(&p)?;
        let name = std::mem::take(&mut staged.name);
        staged
            .vfs
            .dir
            .rename(&name, &self.dir, p.as_str())
            .map_err(|e| {
                let _ = staged.vfs.dir.remove_file(&name);
                VfsError::from_io("write", &p, e)
            })
    }

    /// Appends to a file, creating it and its parents if needed.
    ///
    /// # Errors
    /// As [`Vfs::write`]; `Quota` if the file would exceed `max_file_bytes`;
    /// `Denied` if the file has other hard links.
    pub fn append(&self, path: &str, contents: &[u8]) -> Result<(), VfsError> {
        let p = VfsPath::parse(path)?;
        self.refuse_unservable("append", &p)?;
        // Before anything is created: an append too large even for an empty
        // file must not leave an empty file behind (it would escape the file
        // count of `ahv run`, which counts only changes that succeed).
        self.check_size(&p, contents.len() as u64)?;
        self.create_parent(&p)?;
        let (mut f, meta) = open::open_file(&self.dir, p.as_str(), How::Append)
            .map_err(|r| VfsError::refused("append", p.to_string(), r))?;
        self.check_size(&p, meta.len().saturating_add(contents.len() as u64))?;
        f.write_all(contents)
            .map_err(|e| VfsError::from_io("append", &p, e))
    }

    /// Shortens a file to `len` bytes (host use: undoing an append).
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` (a symlink, a special entry, a
    /// file with other hard links) or `Io`.
    pub fn truncate(&self, path: &str, len: u64) -> Result<(), VfsError> {
        let p = VfsPath::parse(path)?;
        let (f, _) = open::open_file(&self.dir, p.as_str(), How::Change)
            .map_err(|r| VfsError::refused("truncate", p.to_string(), r))?;
        f.set_len(len)
            .map_err(|e| VfsError::from_io("truncate", &p, e))
    }

    /// Deletes a file or an empty directory.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` (a symlink, a FIFO, socket or
    /// device node) or `Io` (a non-empty directory).
    pub fn delete(&self, path: &str) -> Result<(), VfsError> {
        let p = VfsPath::parse(path)?;
        let Some(meta) = open::refusal(&self.dir, p.as_str())
            .map_err(|r| VfsError::refused("delete", p.to_string(), r))?
        else {
            return Err(VfsError::NotFound {
                path: p.to_string(),
            });
        };
        let r = if meta.is_dir() {
            self.dir.remove_dir(p.as_str())
        } else {
            self.dir.remove_file(p.as_str())
        };
        r.map_err(|e| VfsError::from_io("delete", &p, e))
    }

    /// Renames `src` to `dst`; `dst` must not exist. Creates `dst`'s parents.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `AlreadyExists`, `Denied` (a symlink, a
    /// FIFO, socket or device node) or `Io`.
    pub fn rename(&self, src: &str, dst: &str) -> Result<(), VfsError> {
        let s = VfsPath::parse(src)?;
        let d = VfsPath::parse(dst)?;
        if open::refusal(&self.dir, s.as_str())
            .map_err(|r| VfsError::refused("rename", s.to_string(), r))?
            .is_none()
        {
            return Err(VfsError::NotFound {
                path: s.to_string(),
            });
        }
        match self.dir.symlink_metadata(d.as_str()) {
            Ok(_) => {
                return Err(VfsError::AlreadyExists {
                    path: d.to_string(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(VfsError::from_io("rename", &d, e)),
        }
        self.create_parent(&d)?;
        self.dir
            .rename(s.as_str(), &self.dir, d.as_str())
            .map_err(|e| VfsError::from_io("rename", &d, e))
    }

    /// Creates a directory and its parents (no error if it exists).
    ///
    /// # Errors
    /// `InvalidPath`, `Denied` or `Io` (a file is in the way).
    pub fn create_dir(&self, path: &str) -> Result<(), VfsError> {
        let p = VfsPath::parse(path)?;
        self.dir
            .create_dir_all(p.as_str())
            .map_err(|e| VfsError::from_io("create-dir", &p, e))
    }

    fn check_size(&self, p: &VfsPath, size: u64) -> Result<(), VfsError> {
        let max = self.limits.max_file_bytes;
        if size > max {
            return Err(VfsError::Quota {
                path: p.to_string(),
                reason: format!("file would be {size} bytes; the limit is {max}"),
            });
        }
        Ok(())
    }

    /// Refuses a symlink or a special entry at `p` (nothing there is fine).
    fn refuse_unservable(&self, op: &'static str, p: &VfsPath) -> Result<(), VfsError> {
        open::refusal(&self.dir, p.as_str())
            .map(drop)
            .map_err(|r| VfsError::refused(op, p.to_string(), r))
    }

    fn create_parent(&self, p: &VfsPath) -> Result<(), VfsError> {
        match p.parent() {
            Some(parent) => self
                .dir
                .create_dir_all(parent.as_str())
                .map_err(|e| VfsError::from_io("create-dir", &parent, e)),
            None => Ok(()),
        }
    }

    fn tmp_name_at_root(&self) -> String {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}-tmp-{}-{n}",
            crate::path::RESERVED_PREFIX,
            std::process::id()
        )
    }

    fn tmp_name(&self, p: &VfsPath) -> String {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-tmp-{}-{n}",
            crate::path::RESERVED_PREFIX,
            std::process::id()
        );
        match p.parent() {
            Some(parent) => format!("{parent}/{name}"),
            None => name,
        }
    }
}

/// A file's new contents written and synced under a temporary name, not
/// yet in place ([`Vfs::stage`], [`Vfs::place`]); removed when dropped
/// unplaced.
#[derive(Debug)]
pub struct Staged {
    vfs: Arc<Vfs>,
    /// Empty once placed.
    name: String,
    /// The SHA-256 state after all of the contents.
    hasher: Option<sha2::Sha256>,
    len: u64,
}

impl Staged {
    /// The SHA-256 state after all of the staged contents.
    pub fn hasher(&self) -> Option<&sha2::Sha256> {
        self.hasher.as_ref()
    }

    /// How many bytes are staged.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing is staged (an empty file).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            // Best effort: the temporary file is hidden from guests either way.
            let _ = self.vfs.dir.remove_file(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::FileSpace;
    use cap_std::ambient_authority;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, Vfs) {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("agent");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(tmp.path().join("sentinel.txt"), b"outside").unwrap();
        let dir = Dir::open_ambient_dir(&inner, ambient_authority()).unwrap();
        let limits = VfsLimits {
            max_file_bytes: 1024,
            max_list_entries: 5,
        };
        (tmp, inner, Vfs::new(dir, limits))
    }

    /// Two handles on one directory (an area reopened between a write's
    /// staging and its placing) stage under different names, so each
    /// write places its own bytes; an unplaced staging removes only its
    /// own file. With a counter per handle both were `…-0`: the second
    /// staging replaced the first's file, whose write then placed the
    /// other's bytes.
    #[test]
    fn stagings_through_two_handles_on_one_directory_never_share_a_name() {
        let (_t, inner, vfs) = setup();
        let a = Arc::new(vfs);
        let b = Arc::new(Vfs::new(
            Dir::open_ambient_dir(&inner, ambient_authority()).unwrap(),
            VfsLimits::default(),
        ));
        let from_a = a.stage("x", b"from a").unwrap();
        let from_b = b.stage("y", b"from b").unwrap();
        let dropped = b.stage("z", b"dropped").unwrap();
        drop(dropped);
        a.place("x", from_a).unwrap();
        b.place("y", from_b).unwrap();
        assert_eq!(a.read("x").unwrap(), b"from a");
        assert_eq!(a.read("y").unwrap(), b"from b");
        let left: Vec<String> = std::fs::read_dir(&inner)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(crate::path::RESERVED_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn an_oversized_append_creates_nothing() {
        let (_t, inner, vfs) = setup();
        let err = vfs.append("new/big.bin", &[0u8; 1025]).unwrap_err();
        assert!(matches!(err, VfsError::Quota { .. }), "{err}");
        assert!(!inner.join("new/big.bin").exists(), "no empty file left");
        assert!(!inner.join("new").exists(), "no parent made either");
    }

    #[test]
    fn write_read_list_stat_round_trip() {
        let (_t, inner, vfs) = setup();
        vfs.write("notes/today.md", b"hello").unwrap();
        assert_eq!(vfs.read("notes/today.md").unwrap(), b"hello");
        assert_eq!(vfs.read("./notes//today.md").unwrap(), b"hello");
        assert_eq!(
            std::fs::read(inner.join("notes/today.md")).unwrap(),
            b"hello"
        );
        vfs.append("notes/today.md", b" world").unwrap();
        assert_eq!(vfs.read("notes/today.md").unwrap(), b"hello world");
        assert_eq!(vfs.list(".").unwrap(), ["notes"]);
        assert_eq!(vfs.list("notes").unwrap(), ["today.md"]);
        assert_eq!(
            vfs.stat("notes/today.md").unwrap(),
            Stat {
                kind: EntryKind::File,
                size: 11
            }
        );
        assert_eq!(vfs.stat("notes").unwrap().kind, EntryKind::Directory);
        vfs.rename("notes/today.md", "archive/old.md").unwrap();
        assert!(matches!(
            vfs.read("notes/today.md"),
            Err(VfsError::NotFound { .. })
        ));
        assert_eq!(vfs.read("archive/old.md").unwrap(), b"hello world");
        vfs.truncate("archive/old.md", 5).unwrap();
        assert_eq!(vfs.read("archive/old.md").unwrap(), b"hello");
        vfs.delete("archive/old.md").unwrap();
        vfs.delete("archive").unwrap();
        vfs.delete("notes").unwrap();
        assert!(vfs.list(".").unwrap().is_empty());
    }

    #[test]
    fn writes_leave_no_temporary_files_visible() {
        let (_t, inner, vfs) = setup();
        vfs.write("a.txt", b"1").unwrap();
        vfs.write("a.txt", b"2").unwrap();
        assert_eq!(vfs.list(".").unwrap(), ["a.txt"]);
        let on_disk: Vec<_> = std::fs::read_dir(&inner)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(on_disk, ["a.txt"]);
    }

    #[test]
    fn missing_existing_and_directory_errors_are_specific() {
        let (_t, _i, vfs) = setup();
        assert!(
            matches!(vfs.read("nope.txt"), Err(VfsError::NotFound { path }) if path == "nope.txt")
        );
        assert!(matches!(
            vfs.delete("nope.txt"),
            Err(VfsError::NotFound { .. })
        ));
        vfs.write("a", b"").unwrap();
        vfs.write("b", b"").unwrap();
        assert!(
            matches!(vfs.rename("a", "b"), Err(VfsError::AlreadyExists { path }) if path == "b")
        );
        vfs.create_dir("d/e").unwrap();
        assert!(matches!(
            vfs.read("d"),
            Err(VfsError::Io { op: "read", .. })
        ));
        assert!(
            matches!(vfs.delete("d"), Err(VfsError::Io { op: "delete", .. })),
            "non-empty dir"
        );
    }

    #[test]
    fn quotas_refuse_without_changing_existing_data() {
        let (_t, _i, vfs) = setup();
        vfs.write("f", b"keep").unwrap();
        assert!(matches!(
            vfs.write("f", &[0u8; 1025]),
            Err(VfsError::Quota { .. })
        ));
        assert!(matches!(
            vfs.append("f", &[0u8; 1021]),
            Err(VfsError::Quota { .. })
        ));
        assert_eq!(vfs.read("f").unwrap(), b"keep");
        for i in 0..5 {
            vfs.write(&format!("g{i}"), b"").unwrap();
        }
        assert!(
            matches!(vfs.list("."), Err(VfsError::Quota { .. })),
            "6 entries > 5"
        );
    }

    #[test]
    fn escapes_are_refused_and_outside_is_untouched() {
        let (t, inner, vfs) = setup();
        std::os::unix::fs::symlink(t.path(), inner.join("escape-link")).unwrap();
        std::os::unix::fs::symlink(t.path().join("sentinel.txt"), inner.join("file-link")).unwrap();
        assert!(matches!(
            vfs.read("../sentinel.txt"),
            Err(VfsError::InvalidPath(PathError::Parent { .. }))
        ));
        assert!(matches!(
            vfs.read("/etc/passwd"),
            Err(VfsError::InvalidPath(PathError::Absolute { .. }))
        ));
        assert!(matches!(
            vfs.read("escape-link/sentinel.txt"),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.read("file-link"),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.list("escape-link"),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.write("escape-link/new.txt", b"x"),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.write("file-link", b"x"),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.append("file-link", b"x"),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.truncate("file-link", 0),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.delete("file-link"),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.rename("escape-link", "mine"),
            Err(VfsError::Denied { .. })
        ));
        assert!(matches!(
            vfs.create_dir("escape-link/sub"),
            Err(VfsError::Denied { .. })
        ));
        vfs.write("inside.txt", b"i").unwrap();
        assert!(matches!(
            vfs.rename("inside.txt", "escape-link/x"),
            Err(VfsError::Denied { .. })
        ));
        assert_eq!(
            std::fs::read(t.path().join("sentinel.txt")).unwrap(),
            b"outside"
        );
        let outside: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            outside.len(),
            2,
            "only agent/ and sentinel.txt outside: {outside:?}"
        );
    }

    #[test]
    fn fifos_sockets_and_devices_are_refused_without_waiting() {
        use crate::open::tests::{mkdev, mkfifo, quickly, socket};
        let (_t, inner, vfs) = setup();
        let vfs = std::sync::Arc::new(vfs);
        mkfifo(&inner.join("fifo"));
        let _listener = socket(&inner.join("sock"));
        let mut names = vec!["fifo", "sock"];
        if mkdev(&inner.join("dev")) {
            names.push("dev");
        }
        // A link to a FIFO inside the directory is followed by reads: the
        // handle's type still refuses it.
        std::os::unix::fs::symlink("fifo", inner.join("to-fifo")).unwrap();
        vfs.write("ok.txt", b"ok").unwrap();
        type Op = fn(&Vfs, &str) -> Result<(), VfsError>;
        let ops: [(&str, Op); 7] = [
            ("read", |v, n| v.read(n).map(drop)),
            ("append", |v, n| v.append(n, b"x")),
            ("truncate", |v, n| v.truncate(n, 0)),
            ("write", |v, n| v.write(n, b"x")),
            ("delete", |v, n| v.delete(n)),
            ("rename", |v, n| v.rename(n, "moved")),
            ("stat", |v, n| v.stat(n).map(drop)),
        ];
        for name in names.iter().copied().chain(["to-fifo"]) {
            for (what, op) in ops {
                if what == "stat" && name == "to-fifo" {
                    continue;
                }
                let v = vfs.clone();
                let r = quickly(&format!("{what} {name}"), move || op(&v, name));
                assert!(
                    matches!(&r, Err(VfsError::Denied { path, .. }) if path == name),
                    "{what} {name}: {r:?}"
                );
            }
        }
        let v = vfs.clone();
        assert!(matches!(
            quickly("stat to-fifo", move || v.stat("to-fifo")),
            Err(VfsError::Denied { .. })
        ));
        // Listings leave them out (the in-directory symlink stays listed).
        assert_eq!(vfs.list(".").unwrap(), ["ok.txt", "to-fifo"]);
        let fs = |name: &str| std::fs::symlink_metadata(inner.join(name)).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(fs("fifo").file_type().is_fifo(), "left as it was");
        assert!(fs("sock").file_type().is_socket());
    }

    #[test]
    fn planted_hard_links_are_never_changed_in_place() {
        let (t, inner, vfs) = setup();
        let victim = t.path().join("sentinel.txt");
        std::fs::hard_link(&victim, inner.join("link.txt")).unwrap();
        let linked = |r: Result<(), VfsError>| matches!(r, Err(VfsError::Denied { reason, .. }) if reason.contains("hard links"));
        assert!(linked(vfs.append("link.txt", b" pwned")));
        assert!(linked(vfs.truncate("link.txt", 0)));
        assert!(linked(
            FileSpace::append(
                &vfs,
                crate::files::Caller::untraced(
                    &ahv_core::AgentId::new("a").unwrap(),
                    ahv_core::Ring::Standard
                ),
                "link.txt",
                b"x"
            )
            .map(drop)
        ));
        assert_eq!(std::fs::read(&victim).unwrap(), b"outside");
        // A write puts a new inode at the path: the other name keeps its bytes.
        vfs.write("link.txt", b"mine").unwrap();
        assert_eq!(vfs.read("link.txt").unwrap(), b"mine");
        vfs.append("link.txt", b"!").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"outside");
    }

    #[test]
    fn planted_temporary_names_are_never_written_through() {
        let (t, inner, vfs) = setup();
        let pid = std::process::id();
        for n in 0..3 {
            std::os::unix::fs::symlink(
                t.path().join("sentinel.txt"),
                inner.join(format!(".ahv-tmp-{pid}-{n}")),
            )
            .unwrap();
        }
        crate::open::tests::mkfifo(&inner.join(format!(".ahv-tmp-{pid}-3")));
        let vfs = std::sync::Arc::new(vfs);
        for i in 0..4 {
            let v = vfs.clone();
            crate::open::tests::quickly("write", move || v.write("f", format!("{i}").as_bytes()))
                .unwrap();
        }
        assert_eq!(vfs.read("f").unwrap(), b"3");
        assert_eq!(
            std::fs::read(t.path().join("sentinel.txt")).unwrap(),
            b"outside"
        );
    }

    #[test]
    fn in_directory_symlinks_may_be_read() {
        let (_t, inner, vfs) = setup();
        vfs.write("real.txt", b"real").unwrap();
        std::os::unix::fs::symlink("real.txt", inner.join("alias")).unwrap();
        assert_eq!(vfs.read("alias").unwrap(), b"real");
    }
}
