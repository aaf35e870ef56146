//! The file capability as one trait: what the `vfs-read` / `vfs-write`
//! adapters call, implemented by the standalone [`Vfs`] (one directory, no
//! sharing) and by the session VFS (shared and private areas, ACLs, quotas,
//! hashes, clocks, undo).

use ahv_core::{AgentId, Ring, TraceId};
use sha2::{Digest, Sha256};

use crate::vfs::{EntryKind, Stat, Vfs, VfsError};

/// Who is asking: the calling agent, its *current* ring and the causal
/// trace id of the call (carried into events and audit records).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The calling agent.
    pub agent: &'a AgentId,
    /// Its current effective ring.
    pub ring: Ring,
    /// The trace id of the call being served.
    pub trace: TraceId,
}

impl<'a> Caller<'a> {
    /// A caller outside any traced call (trace id 0): host-side use and tests.
    pub fn untraced(agent: &'a AgentId, ring: Ring) -> Caller<'a> {
        Caller {
            agent,
            ring,
            trace: TraceId(0),
        }
    }
}

/// Who may do something to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every participant of the session.
    Everyone,
    /// Only the file's owner.
    Owner,
    /// The owner and these agents.
    Agents(Vec<AgentId>),
}

impl std::fmt::Display for Access {
    /// `everyone`, `owner`, or `agents:` followed by the comma-separated ids.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Everyone => f.write_str("everyone"),
            Access::Owner => f.write_str("owner"),
            Access::Agents(list) => {
                f.write_str("agents:")?;
                for (i, a) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{a}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for Acl {
    /// `owner=<id> read=<access> write=<access>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "owner={} read={} write={}",
            self.owner, self.read, self.write
        )
    }
}

impl Access {
    /// True when `agent` has this access to a file owned by `owner`.
    pub fn allows(&self, owner: &AgentId, agent: &AgentId) -> bool {
        agent == owner
            || match self {
                Access::Everyone => true,
                Access::Owner => false,
                Access::Agents(list) => list.contains(agent),
            }
    }
}

/// A file's access control list. Only its owner or an agent in ring ≤ 1 may change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// The agent that created the file.
    pub owner: AgentId,
    /// Who may read it.
    pub read: Access,
    /// Who may change, rename or delete it.
    pub write: Access,
}

/// What kind of change a mutating file operation made. Serialized by its
/// [`FileOp::name`] (it is part of persisted change journals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileOp {
    /// Whole-file write.
    Write,
    /// Append.
    Append,
    /// Truncation (host use: undoing an append).
    Truncate,
    /// Deletion.
    Delete,
    /// Rename.
    Rename,
    /// ACL change.
    SetAcl,
    /// Directory creation (with its missing parents).
    CreateDir,
}

impl FileOp {
    /// Lower-case name (`write`, `append`, …).
    pub const fn name(self) -> &'static str {
        match self {
            FileOp::Write => "write",
            FileOp::Append => "append",
            FileOp::Truncate => "truncate",
            FileOp::Delete => "delete",
            FileOp::Rename => "rename",
            FileOp::SetAcl => "set-acl",
            FileOp::CreateDir => "create-dir",
        }
    }
}

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

/// What a mutating operation did: enough for an audit delta and an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The operation.
    pub op: FileOp,
    /// The normalised guest path (the source, for a rename).
    pub path: String,
    /// The destination of a rename.
    pub to: Option<String>,
    /// Content hash before (None: there was no file, or it is not known).
    pub before: Option<Sha256Digest>,
    /// Content hash after (None: there is no file any more, or it is not known).
    pub after: Option<Sha256Digest>,
    /// Size after, in bytes (0 when deleted); for `create-dir`, the number
    /// of directories made (it and its missing parents).
    pub size: u64,
    /// The undo record kept for this change, if the file space keeps undo records.
    pub undo: Option<u64>,
}

/// The operations behind the `vfs-read` and `vfs-write` capabilities.
/// Every method validates its guest path and names it in its errors.
pub trait FileSpace: Send + Sync + std::fmt::Debug {
    /// The largest file a write or append may leave, in bytes (its quota).
    /// The runtime sizes its per-call host budget above it, so that writing a
    /// file one byte too large is a `quota` refusal, never a trap.
    fn max_file_bytes(&self) -> u64;

    /// Reads a whole file.
    ///
    /// # Errors
    /// [`VfsError`] naming the path and what was refused.
    fn read(&self, who: Caller<'_>, path: &str) -> Result<Vec<u8>, VfsError>;
    /// Lists a directory (`""` or `"."` is the root); sorted names.
    ///
    /// # Errors
    /// [`VfsError`].
    fn list(&self, who: Caller<'_>, path: &str) -> Result<Vec<String>, VfsError>;
    /// Describes one entry.
    ///
    /// # Errors
    /// [`VfsError`].
    fn stat(&self, who: Caller<'_>, path: &str) -> Result<Stat, VfsError>;
    /// SHA-256 of a file's content.
    ///
    /// # Errors
    /// [`VfsError`].
    fn hash(&self, who: Caller<'_>, path: &str) -> Result<Sha256Digest, VfsError>;
    /// Replaces or creates a file atomically.
    ///
    /// # Errors
    /// [`VfsError`].
    fn write(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError>;
    /// Appends to a file, creating it if needed.
    ///
    /// # Errors
    /// [`VfsError`].
    fn append(&self, who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError>;
    /// Shortens a file (host use: undoing an append).
    ///
    /// # Errors
    /// [`VfsError`].
    fn truncate(&self, who: Caller<'_>, path: &str, len: u64) -> Result<FileChange, VfsError>;
    /// Deletes a file or an empty directory.
    ///
    /// # Errors
    /// [`VfsError`].
    fn delete(&self, who: Caller<'_>, path: &str) -> Result<FileChange, VfsError>;
    /// Renames; the destination must not exist.
    ///
    /// # Errors
    /// [`VfsError`].
    fn rename(&self, who: Caller<'_>, src: &str, dst: &str) -> Result<FileChange, VfsError>;
    /// Creates a directory and its parents; `None` when it exists already
    /// (nothing changed).
    ///
    /// # Errors
    /// [`VfsError`].
    fn create_dir(&self, who: Caller<'_>, path: &str) -> Result<Option<FileChange>, VfsError>;
    /// A file's ACL.
    ///
    /// # Errors
    /// [`VfsError`].
    fn get_acl(&self, who: Caller<'_>, path: &str) -> Result<Acl, VfsError>;
    /// Replaces a file's ACL (owner or ring ≤ 1 only).
    ///
    /// # Errors
    /// [`VfsError`].
    fn set_acl(&self, who: Caller<'_>, path: &str, acl: Acl) -> Result<FileChange, VfsError>;
}

fn change(op: FileOp, path: &str, after: Option<Sha256Digest>, size: u64) -> FileChange {
    FileChange {
        op,
        path: crate::path::VfsPath::parse_dir(path)
            .map(|p| p.to_string())
            .unwrap_or_else(|_| path.to_string()),
        to: None,
        before: None,
        after,
        size,
        undo: None,
    }
}

fn no_acls(path: &str) -> VfsError {
    VfsError::Denied {
        path: path.chars().take(64).collect(),
        reason: "this agent runs outside a shared session; its files have no ACLs".into(),
    }
}

/// The standalone VFS: one directory owned by one agent. It keeps no undo
/// records and no ACLs; hashes are computed on demand.
impl FileSpace for Vfs {
    fn max_file_bytes(&self) -> u64 {
        self.limits().max_file_bytes
    }

    fn read(&self, _who: Caller<'_>, path: &str) -> Result<Vec<u8>, VfsError> {
        Vfs::read(self, path)
    }

    fn list(&self, _who: Caller<'_>, path: &str) -> Result<Vec<String>, VfsError> {
        Vfs::list(self, path)
    }

    fn stat(&self, _who: Caller<'_>, path: &str) -> Result<Stat, VfsError> {
        Vfs::stat(self, path)
    }

    fn hash(&self, _who: Caller<'_>, path: &str) -> Result<Sha256Digest, VfsError> {
        Ok(sha256(&Vfs::read(self, path)?))
    }

    fn write(&self, _who: Caller<'_>, path: &str, contents: &[u8]) -> Result<FileChange, VfsError> {
        Vfs::write(self, path, contents)?;
        Ok(change(
            FileOp::Write,
            path,
            Some(sha256(contents)),
            contents.len() as u64,
        ))
    }

    fn append(
        &self,
        _who: Caller<'_>,
        path: &str,
        contents: &[u8],
    ) -> Result<FileChange, VfsError> {
        Vfs::append(self, path, contents)?;
        let size = match Vfs::stat(self, path)? {
            Stat {
                kind: EntryKind::File,
                size,
            } => size,
            _ => 0,
        };
        Ok(change(FileOp::Append, path, None, size))
    }

    fn truncate(&self, _who: Caller<'_>, path: &str, len: u64) -> Result<FileChange, VfsError> {
        Vfs::truncate(self, path, len)?;
        Ok(change(FileOp::Truncate, path, None, len))
    }

    fn delete(&self, _who: Caller<'_>, path: &str) -> Result<FileChange, VfsError> {
        Vfs::delete(self, path)?;
        Ok(change(FileOp::Delete, path, None, 0))
    }

    fn rename(&self, _who: Caller<'_>, src: &str, dst: &str) -> Result<FileChange, VfsError> {
        Vfs::rename(self, src, dst)?;
        let mut c = change(FileOp::Rename, src, None, 0);
        c.to = Some(dst.to_string());
        Ok(c)
    }

    fn create_dir(&self, _who: Caller<'_>, path: &str) -> Result<Option<FileChange>, VfsError> {
        Vfs::create_dir(self, path)?;
        Ok(Some(change(FileOp::CreateDir, path, None, 0)))
    }

    fn get_acl(&self, _who: Caller<'_>, path: &str) -> Result<Acl, VfsError> {
        Err(no_acls(path))
    }

    fn set_acl(&self, _who: Caller<'_>, path: &str, _acl: Acl) -> Result<FileChange, VfsError> {
        Err(no_acls(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_always_allows_the_owner() {
        let (o, a, b) = (
            AgentId::new("owner").unwrap(),
            AgentId::new("a").unwrap(),
            AgentId::new("b").unwrap(),
        );
        assert!(Access::Owner.allows(&o, &o));
        assert!(!Access::Owner.allows(&o, &a));
        assert!(Access::Everyone.allows(&o, &b));
        let some = Access::Agents(vec![a.clone()]);
        assert!(some.allows(&o, &a) && some.allows(&o, &o) && !some.allows(&o, &b));
    }

    #[test]
    fn standalone_vfs_reports_hashes_and_refuses_acls() {
        let t = tempfile::tempdir().unwrap();
        let dir =
            cap_std::fs::Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let vfs = Vfs::new(dir, crate::vfs::VfsLimits::default());
        let me = AgentId::new("me").unwrap();
        let who = Caller::untraced(&me, Ring::Standard);
        let c = FileSpace::write(&vfs, who, "./a//b.txt", b"abc").unwrap();
        assert_eq!(c.path, "a/b.txt");
        assert_eq!(c.after, Some(sha256(b"abc")));
        assert_eq!(
            FileSpace::hash(&vfs, who, "a/b.txt").unwrap(),
            sha256(b"abc")
        );
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(matches!(
            FileSpace::get_acl(&vfs, who, "a/b.txt"),
            Err(VfsError::Denied { .. })
        ));
    }
}
