//! Content-addressed blobs that a saga's durable progress refers to.
//!
//! When a step commits under a durable store, the host keeps what the step
//! left behind (the bytes of each file and state value it changed) so that a
//! restarted host can put it back into a new session before resuming or
//! compensating the saga. Those bytes are kept here, once per content, under
//! the hex SHA-256 of the content; the journal record names the hash. A blob
//! is written to a temporary name, flushed, renamed into place and its
//! directory flushed, all before the commit record that names it is
//! appended, so a record never names a blob a crash lost. Reading a blob
//! checks its hash: a damaged blob is an error naming it, never wrong bytes.
//!
//! Blobs are never deleted while a saga may need them; `ahv saga` keeps them
//! with the saga journal.
//!
//! ```
//! use ahv_saga::blobs::BlobStore;
//!
//! let tmp = tempfile::tempdir()?;
//! let blobs = BlobStore::open(tmp.path())?;
//! let hash = blobs.put(b"release notes")?;
//! assert_eq!(blobs.put(b"release notes")?, hash); // stored once
//! assert_eq!(blobs.get(&hash)?, b"release notes");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::journal::sync_dir;
use thiserror::Error;

/// Largest blob kept, in bytes: a file or value larger than this cannot be
/// a step's redo (the session's own quotas are far below it by default).
pub const MAX_BLOB_BYTES: u64 = 256 << 20;

/// Why a blob could not be stored or read.
#[derive(Debug, Error)]
pub enum BlobError {
    /// An I/O error, with the path it happened on.
    #[error("saga blob {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Not a hash this store could have written.
    #[error("saga blob name {name:?} is not 64 lower-case hex digits")]
    BadName {
        /// The name given.
        name: String,
    },
    /// The blob's bytes do not hash to its name.
    #[error("saga blob {hash} is damaged: its content hashes to {actual}")]
    Damaged {
        /// The name.
        hash: String,
        /// What the content hashes to.
        actual: String,
    },
    /// The blob is over [`MAX_BLOB_BYTES`].
    #[error("saga blob of {len} bytes is over the {MAX_BLOB_BYTES}-byte limit")]
    TooLarge {
        /// Its size.
        len: u64,
    },
}

/// A directory of content-addressed blobs.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    tmp_counter: AtomicU64,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The hex SHA-256 of `bytes`: a blob's name.
pub fn blob_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn valid_name(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    /// Opens (creating it if needed) the store in `dir`.
    ///
    /// # Errors
    /// [`BlobError::Io`] naming the directory.
    pub fn open(dir: &Path) -> Result<BlobStore, BlobError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `bytes` durably (unless a blob with its hash is there) and
    /// returns its hash.
    ///
    /// # Errors
    /// [`BlobError::TooLarge`], or [`BlobError::Io`] naming the file.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let hash = self.put_unsynced(bytes)?;
        self.sync()?;
        Ok(hash)
    }

    /// [`BlobStore::put`] without its last step, the directory's sync: the
    /// blob's bytes are durable, its name only after a [`BlobStore::sync`].
    /// Many puts then share one directory sync (a step that moved a
    /// directory of 10,000 files put each of them, and synced the
    /// directory 10,000 times, even for blobs already there).
    ///
    /// # Errors
    /// As [`BlobStore::put`].
    pub fn put_unsynced(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge { len });
        }
        let hash = blob_hash(bytes);
        let path = self.dir.join(&hash);
        // A blob under its hash was complete when renamed into place; its
        // directory entry is flushed again by the sync that follows, in
        // case the process that put it there died before flushing it.
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == len) {
            return Ok(hash);
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{n}-{}", std::process::id(), &hash[..16]));
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_at(&tmp));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(hash)
    }

    /// Makes the names of every blob put so far durable (one sync of the
    /// directory).
    ///
    /// # Errors
    /// [`BlobError::Io`] naming the directory.
    pub fn sync(&self) -> Result<(), BlobError> {
        sync_dir(&self.dir).map_err(io_at(&self.dir))
    }

    /// The bytes stored under `hash`, checked against it.
    ///
    /// # Errors
    /// [`BlobError::BadName`], [`BlobError::Damaged`], [`BlobError::TooLarge`],
    /// or [`BlobError::Io`] (a missing blob is `NotFound`).
    pub fn get(&self, hash: &str) -> Result<Vec<u8>, BlobError> {
        if !valid_name(hash) {
            return Err(BlobError::BadName {
                name: hash.chars().take(80).collect(),
            });
        }
        let path = self.dir.join(hash);
        let len = fs::metadata(&path).map_err(io_at(&path))?.len();
        if len > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge { len });
        }
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let actual = blob_hash(&bytes);
        if actual != hash {
            return Err(BlobError::Damaged {
                hash: hash.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts that leave the directory's sync to one `sync` store the same
    /// blobs, readable at once, and a blob already there is not written
    /// again.
    #[test]
    fn unsynced_puts_share_one_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(tmp.path()).unwrap();
        let hashes: Vec<String> = (0..20u8)
            .map(|i| blobs.put_unsynced(&[i; 100]).unwrap())
            .collect();
        blobs.sync().unwrap();
        for (i, h) in (0..20u8).zip(&hashes) {
            assert_eq!(blobs.get(h).unwrap(), [i; 100]);
        }
        let path = tmp.path().join(&hashes[0]);
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(blobs.put_unsynced(&[0; 100]).unwrap(), hashes[0]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
        assert_eq!(blobs.put(&[0; 100]).unwrap(), hashes[0]);
    }

    #[test]
    fn put_is_idempotent_and_get_checks_the_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(&tmp.path().join("b")).unwrap();
        let h = blobs.put(b"abc").unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(blobs.put(b"abc").unwrap(), h);
        assert_eq!(blobs.get(&h).unwrap(), b"abc");
        let empty = blobs.put(b"").unwrap();
        assert_eq!(blobs.get(&empty).unwrap(), b"");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(blobs.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| valid_name(n)), "{names:?}");
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn a_damaged_missing_or_misnamed_blob_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(tmp.path()).unwrap();
        let h = blobs.put(b"original").unwrap();
        fs::write(tmp.path().join(&h), b"tampered").unwrap();
        let err = blobs.get(&h).unwrap_err();
        assert!(matches!(err, BlobError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains(&h), "{err}");

        let missing = blob_hash(b"never stored");
        let err = blobs.get(&missing).unwrap_err();
        assert!(
            matches!(&err, BlobError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
        for bad in ["../etc/passwd", "", &h.to_uppercase(), &h[..63]] {
            assert!(
                matches!(blobs.get(bad), Err(BlobError::BadName { .. })),
                "{bad:?}"
            );
        }
    }
}
