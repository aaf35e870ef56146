//! What the session knows about its files: per-file metadata (ACL, size,
//! hash, clock) and the metadata table with its usage counts.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use cap_std::fs::Dir;
use sha2::{Digest, Sha256};

use crate::files::{Acl, Sha256Digest};
use crate::vclock::VectorClock;

use super::namespace::AreaPath;
use super::snapshot::Snapshot;
use super::undo::{Record, discard_blob};
use super::{FileQuotas, Usage};

/// What the session knows about one regular file.
#[derive(Clone)]
pub(super) struct FileMeta {
    /// `Some` for shared files; private files are their owner's alone.
    pub(super) acl: Option<Acl>,
    pub(super) size: u64,
    pub(super) digest: Sha256Digest,
    /// SHA-256 state after all `size` bytes, so an append hashes only what it adds.
    pub(super) hasher: Sha256,
    /// The clock of the path's last write.
    pub(super) clock: VectorClock,
}

impl FileMeta {
    /// The bytes of the agent ids its ACL lists (0 for `everyone`, `owner`
    /// or no ACL): counted with the file's size in the session's usage, so
    /// that long ACLs are bounded by the same quota as contents.
    pub(super) fn acl_bytes(&self) -> u64 {
        self.acl.as_ref().map_or(0, acl_bytes)
    }

    /// What the file counts for in the session's byte usage.
    pub(super) fn counted_bytes(&self) -> u64 {
        self.size.saturating_add(self.acl_bytes())
    }
}

/// What one agent id in an ACL list is counted for besides its bytes: its
/// own allocation's header and its slot in the list (a list of 1,000 ids of
/// one byte takes ~45 KB, not 1 KB).
pub(super) const ACL_ID_OVERHEAD: u64 = 48;

/// The bytes `acl`'s read and write lists take: each agent id's length
/// plus [`ACL_ID_OVERHEAD`].
pub(super) fn acl_bytes(acl: &crate::files::Acl) -> u64 {
    [&acl.read, &acl.write]
        .into_iter()
        .filter_map(|a| match a {
            crate::files::Access::Agents(list) => Some(list),
            _ => None,
        })
        .flatten()
        .map(|id| id.as_str().len() as u64 + ACL_ID_OVERHEAD)
        .sum()
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
    pub(super) fn new(contents: &[u8], acl: Option<Acl>, clock: VectorClock) -> FileMeta {
        let hasher = Sha256::new_with_prefix(contents);
        FileMeta {
            acl,
            size: contents.len() as u64,
            digest: hasher.clone().finalize().into(),
            hasher,
            clock,
        }
    }

    /// The metadata of `size` bytes whose SHA-256 state `hasher` is (their
    /// hash computed as they were staged, outside the session's lock).
    pub(super) fn hashed(
        hasher: Sha256,
        size: u64,
        acl: Option<Acl>,
        clock: VectorClock,
    ) -> FileMeta {
        FileMeta {
            acl,
            size,
            digest: hasher.clone().finalize().into(),
            hasher,
            clock,
        }
    }

    pub(super) fn appended(&self, bytes: &[u8], clock: VectorClock) -> FileMeta {
        let mut hasher = self.hasher.clone();
        hasher.update(bytes);
        self.appended_hashed(bytes.len() as u64, hasher, clock)
    }

    /// [`FileMeta::appended`] with the bytes already hashed into `hasher`
    /// (this file's state, cloned, then updated with them).
    pub(super) fn appended_hashed(&self, len: u64, hasher: Sha256, clock: VectorClock) -> FileMeta {
        FileMeta {
            acl: self.acl.clone(),
            size: self.size.saturating_add(len),
            digest: hasher.clone().finalize().into(),
            hasher,
            clock,
        }
    }

    pub(super) fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.size,
            digest: self.digest,
            acl: self.acl.clone(),
        }
    }

    pub(super) fn matches(&self, f: &Fingerprint) -> bool {
        self.size == f.size && self.digest == f.digest && self.acl == f.acl
    }
}

/// The state a change left a file in; an undo checks it is still so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint {
    pub(super) size: u64,
    pub(super) digest: Sha256Digest,
    pub(super) acl: Option<Acl>,
}

impl Fingerprint {
    /// The bytes its ACL's lists take ([`acl_bytes`]).
    pub(super) fn acl_bytes(&self) -> u64 {
        self.acl.as_ref().map_or(0, acl_bytes)
    }
}

/// The session's metadata.
#[derive(Debug, Default)]
pub(super) struct Db {
    pub(super) files: BTreeMap<AreaPath, FileMeta>,
    pub(super) usage: Usage,
    pub(super) log: VecDeque<Record>,
    /// Bytes kept on disk by the records in `log`.
    pub(super) log_bytes: u64,
    pub(super) last_undo: u64,
    pub(super) snapshots: BTreeMap<u64, Snapshot>,
    pub(super) last_snapshot: u64,
    /// Counts changes that may add or move an entry below a directory (a
    /// new file, a directory made, a rename, an undo that brings entries
    /// back, a restore); removals and changes in place are not counted, as
    /// they never deepen a directory or lengthen its names.
    pub(super) shape: u64,
    /// Where the last [`MAX_RESHAPES`] of those changes were made (`None`:
    /// anywhere), by their count: a directory measured outside the lock is
    /// as measured if none was made on its branch since.
    pub(super) reshapes: VecDeque<(u64, Option<AreaPath>)>,
}

/// How many changes' places [`Db::reshapes`] keeps; a directory measured
/// while more were made is measured again.
const MAX_RESHAPES: usize = 256;

impl Db {
    pub(super) fn next_undo_id(&mut self) -> u64 {
        self.last_undo += 1;
        self.last_undo
    }

    /// Notes a change that may add or move entries anywhere.
    pub(super) fn reshaped(&mut self) {
        self.reshaped_at(None);
    }

    /// Notes a change that may add or move entries at or below `at`
    /// (anywhere if `None`).
    pub(super) fn reshaped_at(&mut self, at: Option<&AreaPath>) {
        self.shape = self.shape.wrapping_add(1);
        self.reshapes.push_back((self.shape, at.cloned()));
        if self.reshapes.len() > MAX_RESHAPES {
            self.reshapes.pop_front();
        }
    }

    /// Whether a change that may add or move entries at or below `dir` (or
    /// replace it) was made since the count was `since`.
    pub(super) fn reshaped_since(&self, since: u64, dir: &AreaPath) -> bool {
        if self.shape == since {
            return false;
        }
        // The changes since are all still listed only if the oldest listed
        // came right after `since`, or before.
        if self
            .reshapes
            .front()
            .is_none_or(|(n, _)| *n > since.wrapping_add(1))
        {
            return true;
        }
        self.reshapes
            .iter()
            .filter(|(n, _)| *n > since)
            .any(|(_, at)| at.as_ref().is_none_or(|p| p.on_branch_of(dir)))
    }

    /// Sets or removes one file's metadata, keeping the usage in step. A
    /// file that was not there is noted as a change at its path
    /// ([`Db::reshaped_at`]); one changed in place adds no entry.
    pub(super) fn put(&mut self, key: AreaPath, meta: Option<FileMeta>) {
        if meta.is_some() && !self.files.contains_key(&key) {
            self.reshaped_at(Some(&key));
        }
        self.put_noted(key, meta);
    }

    /// [`Db::put`] for a change its caller notes itself (a rename, once at
    /// its destination, for every file it moves).
    pub(super) fn put_noted(&mut self, key: AreaPath, meta: Option<FileMeta>) {
        if let Some(m) = &meta {
            self.usage.files += 1;
            self.usage.bytes = self.usage.bytes.saturating_add(m.counted_bytes());
        }
        let old = match meta {
            Some(m) => self.files.insert(key, m),
            None => self.files.remove(&key),
        };
        if let Some(o) = old {
            self.usage.files = self.usage.files.saturating_sub(1);
            self.usage.bytes = self.usage.bytes.saturating_sub(o.counted_bytes());
        }
    }

    /// The files strictly below directory `dir`, with their suffix (`/…`).
    pub(super) fn files_under(&self, dir: &AreaPath) -> Vec<(String, FileMeta)> {
        // Every path below `d` sorts in [`d/`, `d0`): '0' follows '/'.
        let lo = dir.with_suffix("/");
        let hi = dir.with_suffix("0");
        self.files
            .range(lo..hi)
            .map(|(k, m)| (k.rel[dir.rel.len()..].to_string(), m.clone()))
            .collect()
    }

    pub(super) fn has_files_under(&self, dir: &AreaPath) -> bool {
        self.files
            .range(dir.with_suffix("/")..dir.with_suffix("0"))
            .next()
            .is_some()
    }

    /// Appends a record and prunes the oldest beyond the bounds; the id, if
    /// the record is still kept.
    pub(super) fn record(
        &mut self,
        undo_dir: &Dir,
        quotas: &FileQuotas,
        rec: Record,
    ) -> Option<u64> {
        let id = rec.id;
        // What it keeps in memory (file states, their ACLs and clocks, the
        // paths) counts with its blob: a record of a file with long ACLs,
        // deleted since, or of a directory of 10,000 files renamed, must
        // not keep them for free.
        let mut rec = rec;
        let paths = [Some(&rec.key), rec.to.as_ref()]
            .into_iter()
            .flatten()
            .map(|k| k.rel.len() as u64)
            .fold(std::mem::size_of::<Record>() as u64, u64::saturating_add);
        rec.blob_bytes = rec
            .blob_bytes
            .saturating_add(rec.undo.kept_bytes())
            .saturating_add(paths);
        self.log_bytes = self.log_bytes.saturating_add(rec.blob_bytes);
        self.log.push_back(rec);
        while self.log.len() > quotas.max_undo_records || self.log_bytes > quotas.max_total_bytes {
            // Never the record just added, however large: the change it
            // undoes is made (its ACLs may weigh more than the quota).
            if self.log.front().is_none_or(|r| r.id == id) {
                break;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::VfsPath;
    use ahv_core::AgentId;

    fn at(path: &str) -> AreaPath {
        let agent = AgentId::new("alice").unwrap();
        AreaPath::resolve(&agent, &VfsPath::parse_dir(path).unwrap())
    }

    /// A directory measured at count `since` is changed only by changes on
    /// its branch (at it, below it, or at a directory it is below), by
    /// changes anywhere, and by more changes than the log keeps.
    #[test]
    fn a_directory_is_reshaped_only_by_changes_on_its_branch() {
        let mut db = Db::default();
        let dir = at("a/b");
        let since = db.shape;
        assert!(!db.reshaped_since(since, &dir));
        for elsewhere in ["a/bc", "a/c/b", "b", "shared/a/b", "a"] {
            db.reshaped_at(Some(&at(elsewhere)));
            let on_branch = elsewhere == "a";
            assert_eq!(db.reshaped_since(since, &dir), on_branch, "{elsewhere}");
        }
        for on_branch in ["a/b", "a/b/c/d", "a", "."] {
            let since = db.shape;
            db.reshaped_at(Some(&at(on_branch)));
            assert!(db.reshaped_since(since, &dir), "{on_branch}");
        }
        let since = db.shape;
        db.reshaped();
        assert!(db.reshaped_since(since, &dir), "anywhere");
        let since = db.shape;
        for _ in 0..=MAX_RESHAPES {
            db.reshaped_at(Some(&at("elsewhere")));
        }
        assert!(db.reshaped_since(since, &dir), "more changes than are kept");
        let since = db.shape;
        for _ in 0..MAX_RESHAPES {
            db.reshaped_at(Some(&at("elsewhere")));
        }
        assert!(!db.reshaped_since(since, &dir), "as many as are kept");
    }
}
