//! Helpers the session-files tests share.

pub(super) use std::collections::BTreeMap;
pub(super) use std::fmt;
pub(super) use std::path::{Path, PathBuf};
pub(super) use std::sync::Arc;

pub(super) use ahv_core::{AgentId, Ring, SessionId};
pub(super) use cap_std::fs::Dir;
pub(super) use proptest::prelude::*;

pub(super) use crate::files::{Access, Acl, Caller, FileChange, FileOp, FileSpace, sha256};
pub(super) use crate::vclock::ClockTable;
pub(super) use crate::vfs::{EntryKind, Stat, VfsError};

pub(super) use super::{FileQuotas, SessionFiles, Usage};

pub(super) fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

pub(super) fn ring2(agent: &AgentId) -> Caller<'_> {
    Caller::untraced(agent, Ring::Standard)
}

pub(super) fn ring1(agent: &AgentId) -> Caller<'_> {
    Caller::untraced(agent, Ring::Privileged)
}

pub(super) struct Env {
    pub(super) tmp: tempfile::TempDir,
    pub(super) files: SessionFiles,
}

impl Env {
    pub(super) fn sessions(&self) -> PathBuf {
        self.tmp.path().join("sessions")
    }
    pub(super) fn session_dir(&self) -> PathBuf {
        self.sessions().join("s1")
    }
    pub(super) fn files_dir(&self) -> PathBuf {
        self.session_dir().join("files")
    }
    pub(super) fn undo_dir(&self) -> PathBuf {
        self.session_dir().join("undo")
    }
    /// The files tree and the metadata, for exact comparisons. An
    /// agent's empty private root is left out: it is created on the
    /// agent's first use and no guest can see it.
    pub(super) fn state(&self) -> (Tree, (Usage, Vec<String>)) {
        let mut files = tree(&self.files_dir());
        let roots: Vec<String> = files
            .keys()
            .filter(|k| k.starts_with("agents/") && k.matches('/').count() == 1)
            .filter(|k| !files.keys().any(|c| c.starts_with(&format!("{k}/"))))
            .cloned()
            .collect();
        for r in roots {
            files.remove(&r);
        }
        let dump = self.files.dump();
        // The directory count is exact: every directory below the roots.
        let on_disk = files
            .iter()
            .filter(|(k, v)| {
                *v == "dir"
                    && *k != "shared"
                    && *k != "agents"
                    && !(k.starts_with("agents/") && k.matches('/').count() == 1)
            })
            .count() as u64;
        assert_eq!(
            dump.0.dirs, on_disk,
            "directories counted vs on disk: {files:?}"
        );
        (files, dump)
    }
}

pub(super) fn env_with(quotas: FileQuotas) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let sessions = tmp.path().join("sessions");
    std::fs::create_dir(&sessions).unwrap();
    let dir = Dir::open_ambient_dir(&sessions, cap_std::ambient_authority()).unwrap();
    let files = SessionFiles::new(
        Arc::new(dir),
        SessionId::new("s1").unwrap(),
        quotas,
        Arc::new(ClockTable::new()),
    );
    Env { tmp, files }
}

pub(super) fn env() -> Env {
    env_with(FileQuotas::default())
}

pub(super) type Tree = BTreeMap<String, String>;

/// Every entry under `dir` by relative path: `dir`, `file:<bytes>` or `link:<target>`.
pub(super) fn tree(dir: &Path) -> Tree {
    pub(super) fn walk(dir: &Path, rel: &str, out: &mut Tree) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ty = e.file_type().unwrap();
            if ty.is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                out.insert(child, format!("link:{}", target.display()));
            } else if ty.is_dir() {
                out.insert(child.clone(), "dir".into());
                walk(&e.path(), &child, out);
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                out.insert(child, format!("file:{}", String::from_utf8_lossy(&bytes)));
            }
        }
    }
    let mut out = Tree::new();
    if dir.exists() {
        walk(dir, "", &mut out);
    }
    out
}

pub(super) fn acl(owner: &AgentId, read: Access, write: Access) -> Acl {
    Acl {
        owner: owner.clone(),
        read,
        write,
    }
}

pub(super) fn is_denied<T: fmt::Debug>(r: Result<T, VfsError>) -> bool {
    matches!(r, Err(VfsError::Denied { .. }))
}
