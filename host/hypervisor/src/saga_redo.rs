//! Redo data: what a committed step left in its session, kept so that a
//! restarted host can put it back.
//!
//! A session lives in memory: its file metadata, ACLs, undo records and
//! state die with the process. A saga's progress does not (its journal is
//! durable), so after a crash the records say which steps committed, but the
//! session those steps changed is gone, and with it the undo records their
//! undo data names. When the saga store survives restarts, each commit
//! therefore also keeps the step's *redo*: for every file path and state key
//! the step changed (its own changes, and the files its actions and effects
//! changed), what was there when it committed — the bytes as a
//! content-addressed blob ([`BlobStore`]), the ACL, a directory, or nothing.
//! Blobs are durable before the commit record that names them.
//!
//! Resuming in a new process, the host replays the redo of every step that
//! committed and was not compensated, in commit order, into a new session,
//! as governed changes in the step agent's name (file and state events
//! follow). Those replayed changes are the step's undo data from then on: a
//! compensation undoes them (leaving the new session as it was before the
//! replay), and runs the step's actions' own compensations, whose effects a
//! replay never repeats. A step a crash interrupted is not replayed: its
//! partial changes stayed in the old session, so the resumed attempt starts
//! from exactly what the committed steps left.

use std::collections::HashSet;

use ahv_core::{AgentId, Ring, TraceId};
use ahv_governance::files::{Access, Acl, Caller, FileSpace};
use ahv_governance::journal::Change;
use ahv_governance::session_core::SessionCore;
use ahv_governance::vfs::{EntryKind, VfsError};
use ahv_saga::BlobStore;
use serde::{Deserialize, Serialize};

/// What one committed step left behind, path by path and key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Redo {
    /// Each file path the step changed, first change first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<FileRedo>,
    /// Each state key the step changed, first change first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    state: Vec<StateRedo>,
}

/// What was at one path when the step committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FileRedo {
    /// A file: its content's blob and, in the shared area, its ACL.
    File {
        path: String,
        blob: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acl: Option<AclRedo>,
    },
    /// A directory.
    Dir { path: String },
    /// Nothing.
    Absent { path: String },
}

/// An ACL in its text form (`owner`, `everyone`, `agents:a,b`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AclRedo {
    owner: String,
    read: String,
    write: String,
}

/// A state key's value when the step committed (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StateRedo {
    key: String,
    blob: Option<String>,
}

fn is_shared(path: &str) -> bool {
    path == "shared" || path.starts_with("shared/")
}

fn access_text(a: &Access) -> String {
    a.to_string()
}

fn parse_access(text: &str) -> Result<Access, String> {
    match text {
        "everyone" => Ok(Access::Everyone),
        "owner" => Ok(Access::Owner),
        _ => {
            let list = text
                .strip_prefix("agents:")
                .ok_or_else(|| format!("ACL access {text:?} is not everyone, owner or agents:…"))?;
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(|a| AgentId::new(a).map_err(|e| format!("ACL agent {a:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Access::Agents)
        }
    }
}

impl AclRedo {
    fn of(acl: &Acl) -> AclRedo {
        AclRedo {
            owner: acl.owner.to_string(),
            read: access_text(&acl.read),
            write: access_text(&acl.write),
        }
    }

    fn acl(&self) -> Result<Acl, String> {
        Ok(Acl {
            owner: AgentId::new(self.owner.as_str())
                .map_err(|e| format!("ACL owner {:?}: {e}", self.owner))?,
            read: parse_access(&self.read)?,
            write: parse_access(&self.write)?,
        })
    }
}

/// The paths and keys `changes` touched, each once, first change first.
fn touched(changes: &[Change]) -> (Vec<String>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut paths = Vec::new();
    let mut keys = Vec::new();
    for c in changes {
        for p in c.paths() {
            if seen.insert(("f", p.to_owned())) {
                paths.push(p.to_owned());
            }
        }
        if let Change::State(s) = c
            && seen.insert(("k", s.key.clone()))
        {
            keys.push(s.key.clone());
        }
    }
    (paths, keys)
}

/// The host's view of the session's files as `agent` (no ACL is bypassed:
/// a file the agent cannot read is read as its owner).
fn host_caller(agent: &AgentId, trace: TraceId) -> Caller<'_> {
    Caller {
        agent,
        ring: Ring::Root,
        trace,
    }
}

fn vfs_err(what: &str, path: &str, e: &VfsError) -> String {
    format!("{what} {path}: {e}")
}

impl Redo {
    /// What `changes` (a step of `agent`) left in `core`, with every file's
    /// and value's bytes stored in `blobs` (durably) first.
    pub(crate) fn capture(
        core: &SessionCore,
        blobs: &BlobStore,
        agent: &AgentId,
        changes: &[Change],
    ) -> Result<Redo, String> {
        let (paths, keys) = touched(changes);
        let files = core.files();
        let who = Caller::untraced(agent, Ring::Root);
        let mut redo = Redo::default();
        for path in paths {
            let entry = match files.stat(who, &path) {
                Ok(s) if s.kind == EntryKind::Directory => FileRedo::Dir { path },
                Ok(_) => {
                    let acl = if is_shared(&path) {
                        Some(
                            files
                                .get_acl(who, &path)
                                .map_err(|e| vfs_err("ACL of", &path, &e))?,
                        )
                    } else {
                        None
                    };
                    let bytes = match files.read(who, &path) {
                        Ok(b) => b,
                        // Shut out by the ACL the step left: read as its owner.
                        Err(VfsError::Denied { .. }) if acl.is_some() => {
                            let owner = acl.as_ref().map(|a| &a.owner).unwrap_or(agent);
                            files
                                .read(Caller::untraced(owner, Ring::Root), &path)
                                .map_err(|e| vfs_err("read", &path, &e))?
                        }
                        Err(e) => return Err(vfs_err("read", &path, &e)),
                    };
                    let blob = blobs.put(&bytes).map_err(|e| e.to_string())?;
                    FileRedo::File {
                        acl: acl.as_ref().map(AclRedo::of),
                        path,
                        blob,
                    }
                }
                Err(VfsError::NotFound { .. }) => FileRedo::Absent { path },
                Err(e) => return Err(vfs_err("stat", &path, &e)),
            };
            redo.files.push(entry);
        }
        for key in keys {
            let blob = match core.state().peek(&key) {
                Some(v) => Some(blobs.put(&v.value).map_err(|e| e.to_string())?),
                None => None,
            };
            redo.state.push(StateRedo { key, blob });
        }
        Ok(redo)
    }

    /// Puts what the step left back into `core` as governed changes in
    /// `agent`'s name; the changes made, oldest first (their undo puts
    /// `core` back as it was before).
    pub(crate) fn replay(
        &self,
        core: &SessionCore,
        blobs: &BlobStore,
        agent: &AgentId,
        trace: TraceId,
    ) -> Result<Vec<Change>, String> {
        let mut out = Vec::new();
        let who = host_caller(agent, trace);
        for f in &self.files {
            match f {
                FileRedo::Dir { path } => {
                    if let Some(c) = core
                        .create_dir(who, path)
                        .map_err(|e| vfs_err("create directory", path, &e))?
                    {
                        out.push(Change::file(&c));
                    }
                }
                FileRedo::Absent { path } => match core.files().stat(who, path) {
                    Ok(_) => {
                        let c = core
                            .delete(who, path)
                            .map_err(|e| vfs_err("delete", path, &e))?;
                        out.push(Change::file(&c));
                    }
                    Err(VfsError::NotFound { .. }) => {}
                    Err(e) => return Err(vfs_err("stat", path, &e)),
                },
                FileRedo::File { path, blob, acl } => {
                    let bytes = blobs.get(blob).map_err(|e| format!("{path}: {e}"))?;
                    let acl = acl.as_ref().map(AclRedo::acl).transpose()?;
                    // A shared file is written by its owner (who then owns it).
                    let writer = acl
                        .as_ref()
                        .map_or_else(|| agent.clone(), |a| a.owner.clone());
                    let as_writer = host_caller(&writer, trace);
                    let c = core
                        .write(as_writer, path, &bytes)
                        .map_err(|e| vfs_err("write", path, &e))?;
                    out.push(Change::file(&c));
                    if let Some(acl) = acl
                        && core.files().get_acl(as_writer, path).ok().as_ref() != Some(&acl)
                    {
                        let c = core
                            .set_acl(as_writer, path, acl)
                            .map_err(|e| vfs_err("set the ACL of", path, &e))?;
                        out.push(Change::file(&c));
                    }
                }
            }
        }
        for s in &self.state {
            let c = match &s.blob {
                Some(blob) => {
                    let bytes = blobs
                        .get(blob)
                        .map_err(|e| format!("state {}: {e}", s.key))?;
                    core.state_put(who, &s.key, &bytes, 0)
                }
                None if core.state().peek(&s.key).is_some() => core.state_delete(who, &s.key, 0),
                None => continue,
            }
            .map_err(|e| format!("state {}: {e}", s.key))?;
            out.push(Change::State(c));
        }
        Ok(out)
    }
}

/// The undo data of a replayed step: the replay's own changes, except on
/// paths the step's actions and effects changed (their own compensation
/// undoes those), then the step's actions and effects as recorded (undone
/// first, newest first).
pub(crate) fn replayed_undo(original: &[Change], replay: Vec<Change>) -> Vec<Change> {
    let by_actions: HashSet<&str> = original
        .iter()
        .filter(|c| matches!(c, Change::Action { .. } | Change::Effect { .. }))
        .flat_map(Change::paths)
        .collect();
    let mut out: Vec<Change> = replay
        .into_iter()
        .filter(|c| !c.paths().iter().any(|p| by_actions.contains(p)))
        .collect();
    out.extend(
        original
            .iter()
            .filter(|c| matches!(c, Change::Action { .. } | Change::Effect { .. }))
            .cloned(),
    );
    out
}
