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

use std::collections::{HashMap, HashSet};

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

/// Whom the host reads a path as while capturing: a shared path as a
/// host identity that is no participant (reading observes vector clocks,
/// and no agent's view should change because a step committed); a private
/// path as its agent, the only one who can name it.
fn reader<'a>(host: &'a AgentId, agent: &'a AgentId, path: &str) -> Caller<'a> {
    Caller::untraced(if is_shared(path) { host } else { agent }, Ring::Root)
}

/// The identity the host captures shared files as.
fn capture_identity() -> AgentId {
    AgentId::new("did:ahv:saga-redo").unwrap_or_else(|_| unreachable!("a valid literal id"))
}

/// Deepest nesting a capture or a replay walks (paths are bounded far below).
const MAX_WALK_DEPTH: usize = 64;

/// Every path below directory `dir` as `who` sees it, parents before
/// children, with whether each is a directory.
fn walk(
    files: &dyn FileSpace,
    who: Caller<'_>,
    dir: &str,
    depth: usize,
    out: &mut Vec<(String, bool)>,
) -> Result<(), String> {
    if depth > MAX_WALK_DEPTH {
        return Err(format!("{dir}: nested deeper than {MAX_WALK_DEPTH} levels"));
    }
    for name in files.list(who, dir).map_err(|e| vfs_err("list", dir, &e))? {
        let path = format!("{dir}/{name}");
        let is_dir = files
            .stat(who, &path)
            .map_err(|e| vfs_err("stat", &path, &e))?
            .kind
            == EntryKind::Directory;
        out.push((path.clone(), is_dir));
        if is_dir {
            walk(files, who, &path, depth + 1, out)?;
        }
    }
    Ok(())
}

impl Redo {
    /// What `changes` (a step of `agent`) left in `core`, with every file's
    /// and value's bytes stored in `blobs` (durably, their names with one
    /// directory sync at the end) first. It reads and hashes what the step
    /// left (up to the session's file quota, for a step that moved a large
    /// directory) synchronously, inside the step's commit: an await there
    /// would let a cancelled attempt drop changes nobody records. A directory the
    /// step touched (made, or moved into place) is kept with everything
    /// below it. A file whose content is no longer what the step's last
    /// change of it left (another agent wrote it since) is an error: the
    /// step's redo would carry someone else's bytes.
    pub(crate) fn capture(
        core: &SessionCore,
        blobs: &BlobStore,
        agent: &AgentId,
        changes: &[Change],
    ) -> Result<Redo, String> {
        let (paths, keys) = touched(changes);
        let host = capture_identity();
        let files = core.files();
        let mut last_after: HashMap<&str, Option<&str>> = HashMap::new();
        for c in changes {
            if let Change::File {
                path, to, after, ..
            } = c
            {
                match to {
                    // A rename moves the content: the source is gone.
                    Some(to) => {
                        last_after.insert(to.as_str(), after.as_deref());
                        last_after.insert(path.as_str(), None);
                    }
                    None => {
                        last_after.insert(path.as_str(), after.as_deref());
                    }
                }
            }
        }
        let mut redo = Redo::default();
        let mut seen = HashSet::new();
        for path in paths {
            if !seen.insert(path.clone()) {
                continue;
            }
            let who = reader(&host, agent, &path);
            match files.stat(who, &path) {
                Ok(s) if s.kind == EntryKind::Directory => {
                    redo.files.push(FileRedo::Dir { path: path.clone() });
                    let mut below = Vec::new();
                    walk(files, who, &path, 0, &mut below)?;
                    for (p, is_dir) in below {
                        if !seen.insert(p.clone()) {
                            continue;
                        }
                        redo.files.push(if is_dir {
                            FileRedo::Dir { path: p }
                        } else {
                            capture_file(files, blobs, who, p, None)?
                        });
                    }
                }
                Ok(_) => {
                    let expected = last_after.get(path.as_str()).copied().flatten();
                    redo.files
                        .push(capture_file(files, blobs, who, path, expected)?);
                }
                Err(VfsError::NotFound { .. }) => redo.files.push(FileRedo::Absent { path }),
                Err(e) => return Err(vfs_err("stat", &path, &e)),
            }
        }
        for key in keys {
            let blob = match core.state().peek(&key) {
                Some(v) => Some(blobs.put_unsynced(&v.value).map_err(|e| e.to_string())?),
                None => None,
            };
            redo.state.push(StateRedo { key, blob });
        }
        // Every blob's name durable at once, before the commit names them.
        blobs.sync().map_err(|e| e.to_string())?;
        Ok(redo)
    }

    /// Puts what the step left back into `core` as governed changes in
    /// `agent`'s name (a shared file is written by its owner, who then owns
    /// it); a path that exists is observed before it is changed, and a key
    /// is written over its current version, so the session's consistency
    /// checks pass. The changes made, oldest first (their undo puts `core`
    /// back as it was before), or the error with the changes made up to it.
    pub(crate) fn replay(
        &self,
        core: &SessionCore,
        blobs: &BlobStore,
        agent: &AgentId,
        trace: TraceId,
    ) -> Result<Vec<Change>, (String, Vec<Change>)> {
        let mut out = Vec::new();
        match self.replay_into(core, blobs, agent, trace, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => Err((e, out)),
        }
    }

    fn replay_into(
        &self,
        core: &SessionCore,
        blobs: &BlobStore,
        agent: &AgentId,
        trace: TraceId,
        out: &mut Vec<Change>,
    ) -> Result<(), String> {
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
                FileRedo::Absent { path } => remove(core, who, path, out)?,
                FileRedo::File { path, blob, acl } => {
                    let bytes = blobs.get(blob).map_err(|e| format!("{path}: {e}"))?;
                    let acl = acl.as_ref().map(AclRedo::acl).transpose()?;
                    let writer = acl
                        .as_ref()
                        .map_or_else(|| agent.clone(), |a| a.owner.clone());
                    let as_writer = host_caller(&writer, trace);
                    // Observing the path's latest write lets a strict session take this one.
                    let _ = core.stat(as_writer, path);
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
            let current = core
                .state_get(who, &s.key)
                .map_err(|e| format!("state {}: {e}", s.key))?;
            let version = current.as_ref().map_or(0, |v| v.version);
            let c = match &s.blob {
                Some(blob) => {
                    let bytes = blobs
                        .get(blob)
                        .map_err(|e| format!("state {}: {e}", s.key))?;
                    core.state_put(who, &s.key, &bytes, version)
                }
                None if current.is_some() => core.state_delete(who, &s.key, version),
                None => continue,
            }
            .map_err(|e| format!("state {}: {e}", s.key))?;
            out.push(Change::State(c));
        }
        Ok(())
    }
}

/// Captures one file: its bytes as a blob (checked against `expected`, the
/// digest the step's last change of it left, when known) and its ACL.
fn capture_file(
    files: &dyn FileSpace,
    blobs: &BlobStore,
    who: Caller<'_>,
    path: String,
    expected: Option<&str>,
) -> Result<FileRedo, String> {
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
        // Shut out by the file's ACL: read as its owner.
        Err(VfsError::Denied { .. }) if acl.is_some() => {
            let owner = acl.as_ref().map_or(who.agent, |a| &a.owner);
            files
                .read(Caller::untraced(owner, Ring::Root), &path)
                .map_err(|e| vfs_err("read", &path, &e))?
        }
        Err(e) => return Err(vfs_err("read", &path, &e)),
    };
    let blob = blobs.put_unsynced(&bytes).map_err(|e| e.to_string())?;
    if let Some(expected) = expected
        && expected != blob
    {
        return Err(format!(
            "{path} changed after this step last wrote it (another agent wrote it since): \
             its redo would carry someone else's bytes"
        ));
    }
    Ok(FileRedo::File {
        acl: acl.as_ref().map(AclRedo::of),
        path,
        blob,
    })
}

/// Removes whatever is at `path` (a directory with everything below it,
/// deepest first); nothing there is fine.
fn remove(
    core: &SessionCore,
    who: Caller<'_>,
    path: &str,
    out: &mut Vec<Change>,
) -> Result<(), String> {
    let kind = match core.stat(who, path) {
        Ok(s) => s.kind,
        Err(VfsError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(vfs_err("stat", path, &e)),
    };
    let mut victims = Vec::new();
    if kind == EntryKind::Directory {
        walk(core, who, path, 0, &mut victims)?;
    }
    victims.insert(0, (path.to_owned(), kind == EntryKind::Directory));
    for (p, _) in victims.iter().rev() {
        let _ = core.stat(who, p);
        let c = core.delete(who, p).map_err(|e| vfs_err("delete", p, &e))?;
        out.push(Change::file(&c));
    }
    Ok(())
}

/// A step replayed into a session after a restart: what its compensation
/// undoes there.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replayed {
    /// The replay's changes, except on paths the step's actions and
    /// effects changed (their own compensation undoes those), then the
    /// step's actions and effects as recorded (so undone first).
    pub(crate) changes: Vec<Change>,
    /// Each path an action or effect of the step changed, with its content
    /// digest before the replay (`None`: nothing was there): after the
    /// compensation, the path must be so again.
    pub(crate) action_paths: Vec<(String, Option<[u8; 32]>)>,
}

impl Replayed {
    /// The undo data of a step whose `original` changes were replayed as
    /// `replay`; `before` is each action path's digest before the replay.
    pub(crate) fn new(
        original: &[Change],
        replay: Vec<Change>,
        before: Vec<(String, Option<[u8; 32]>)>,
    ) -> Replayed {
        let is_action = |c: &&Change| matches!(c, Change::Action { .. } | Change::Effect { .. });
        let by_actions: HashSet<&str> = original
            .iter()
            .filter(is_action)
            .flat_map(Change::paths)
            .collect();
        let mut changes: Vec<Change> = replay
            .into_iter()
            .filter(|c| !c.paths().iter().any(|p| by_actions.contains(p)))
            .collect();
        changes.extend(original.iter().filter(is_action).cloned());
        Replayed {
            changes,
            action_paths: before,
        }
    }

    /// The paths `original`'s actions and effects changed, with what is at
    /// each in `core` now (as `agent`, who named them).
    pub(crate) fn action_paths_now(
        core: &SessionCore,
        agent: &AgentId,
        original: &[Change],
    ) -> Vec<(String, Option<[u8; 32]>)> {
        let who = Caller::untraced(agent, Ring::Root);
        let mut out: Vec<(String, Option<[u8; 32]>)> = Vec::new();
        for c in original {
            if matches!(c, Change::Action { .. } | Change::Effect { .. }) {
                for p in c.paths() {
                    if !out.iter().any(|(q, _)| q == p) {
                        out.push((p.to_owned(), core.files().hash(who, p).ok()));
                    }
                }
            }
        }
        out
    }

    /// After its compensation: puts each action path back as it was before
    /// the replay where the action's own undo left bytes of the old session
    /// (a file that was not there is deleted); a path that holds other bytes
    /// than before is reported, not overwritten.
    pub(crate) fn settle(
        &self,
        core: &SessionCore,
        agent: &AgentId,
        trace: TraceId,
    ) -> Vec<String> {
        let who = host_caller(agent, trace);
        let mut problems = Vec::new();
        for (path, before) in &self.action_paths {
            let now = core.files().hash(who, path).ok();
            match (before, now) {
                (None, Some(_)) => {
                    let _ = core.stat(who, path);
                    if let Err(e) = core.delete(who, path) {
                        problems.push(vfs_err("delete (left by the old session)", path, &e));
                    }
                }
                (Some(b), Some(n)) if *b == n => {}
                (Some(_), _) => problems.push(format!(
                    "{path} does not hold what it held before the replay after its action's undo"
                )),
                (None, None) => {}
            }
        }
        problems
    }
}
