//! A fake host for unit tests of an agent's logic on the build machine
//! (native targets only; the `wasm32` build never contains it).
//!
//! On a native target every wrapper of this crate ([`vfs`](crate::vfs),
//! [`state`](crate::state), [`log`](crate::log), …) calls the fake host of
//! the current thread instead of the WIT imports, so `Agent::run` runs under
//! plain `cargo test`. Each test thread has its own fake; [`FakeHost::install`]
//! replaces it, and a thread that installed none gets [`FakeHost::new`]'s
//! (ring 3, no files, no state).
//!
//! ```
//! use agent_sdk::{testing::{self, FakeHost}, vfs, log};
//!
//! FakeHost::new().ring(2).file("greeting.txt", "Hi").install();
//! let text = vfs::read_to_string("greeting.txt").unwrap();
//! vfs::write("copy.txt", &text).unwrap();
//! log::info!("copied");
//! assert_eq!(testing::file("copy.txt").as_deref(), Some(&b"Hi"[..]));
//! assert_eq!(testing::logs(), vec![(log::Level::Info, "copied".to_string())]);
//! ```
//!
//! What it models: the files (one tree; the `shared/` prefix is a plain
//! directory here, with an ACL owned by the agent), state with versions,
//! compare-and-set and a one-agent vector clock, locks held by the agent,
//! the log, the agent's context, actions and effects registered as closures,
//! and the ring check: a call to a capability outside the fake's ring is
//! recorded ([`breaches`]) and then **panics** with a message starting
//! `ring breach:`, as the host records a breach and traps the instance
//! (catch it with `#[should_panic(expected = "ring breach")]` or
//! [`std::panic::catch_unwind`]).
//!
//! What it does not model: other agents (no lock conflicts, `Conflict` only
//! for a stale version), quotas, rate limits, quarantine, ACL enforcement,
//! snapshot isolation, budgets and deadlines. `elevation::request` is always
//! `Denied` (set the ring with [`FakeHost::ring`] or [`set_ring`]); `spawn`,
//! `admin` and `http` are not provided and panic with a message saying so.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::Error;
use crate::bindings::agent_hypervisor::agent::context::AgentInfo;
use crate::bindings::agent_hypervisor::agent::locks::{LockMode, LockTarget};
use crate::bindings::agent_hypervisor::agent::log::Level;
use crate::bindings::agent_hypervisor::agent::state_read::{ClockEntry, Versioned};
use crate::bindings::agent_hypervisor::agent::types::{Access, Acl};
use crate::bindings::agent_hypervisor::agent::vfs_read::{EntryKind, EntryStat};

type Handler = Box<dyn FnMut(&str) -> Result<String, String>>;

/// The in-memory host the SDK's wrappers call on native targets. Build one,
/// then [`install`](FakeHost::install) it for the current thread.
pub struct FakeHost {
    agent_id: String,
    session_id: String,
    trace_id: String,
    ring: u8,
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    acls: BTreeMap<String, Acl>,
    state: BTreeMap<String, Versioned>,
    writes: u64,
    locks: Vec<(LockTarget, LockMode)>,
    logs: Vec<(Level, String)>,
    actions: BTreeMap<String, Option<Handler>>,
    effects: BTreeMap<String, Option<Handler>>,
    breaches: Vec<RingBreach>,
}

/// A call outside the fake's ring, as [`breaches`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingBreach {
    /// The capability called (`vfs-write`, `locks`, …).
    pub capability: &'static str,
    /// The fake's ring at the call.
    pub ring: u8,
}

impl Default for FakeHost {
    fn default() -> FakeHost {
        FakeHost::new()
    }
}

impl FakeHost {
    /// A host with agent `did:ahv:test-agent` in session `test-session` at
    /// ring 3 (sandbox), and no files, state, locks, actions or effects.
    pub fn new() -> FakeHost {
        FakeHost {
            agent_id: "did:ahv:test-agent".to_string(),
            session_id: "test-session".to_string(),
            trace_id: "0".repeat(32),
            ring: 3,
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            acls: BTreeMap::new(),
            state: BTreeMap::new(),
            writes: 0,
            locks: Vec::new(),
            logs: Vec::new(),
            actions: BTreeMap::new(),
            effects: BTreeMap::new(),
            breaches: Vec::new(),
        }
    }

    /// Runs the agent at `ring` (0 root … 3 sandbox).
    ///
    /// # Panics
    /// If `ring` is over 3.
    pub fn ring(mut self, ring: u8) -> FakeHost {
        assert!(ring <= 3, "rings are 0 to 3, not {ring}");
        self.ring = ring;
        self
    }

    /// The agent's id, as `context::whoami` reports it.
    pub fn agent_id(mut self, id: &str) -> FakeHost {
        self.agent_id = id.to_string();
        self
    }

    /// The session id, as `context::whoami` reports it.
    pub fn session_id(mut self, id: &str) -> FakeHost {
        self.session_id = id.to_string();
        self
    }

    /// A file the agent finds (parent directories exist implicitly).
    ///
    /// # Panics
    /// If `path` is not a valid relative path.
    pub fn file(mut self, path: &str, contents: impl AsRef<[u8]>) -> FakeHost {
        let p = normalize(path).unwrap_or_else(|e| panic!("{}", crate::describe(&e)));
        self.files.insert(p, contents.as_ref().to_vec());
        self
    }

    /// A state key the agent finds, at version 1, written by `did:ahv:seed`.
    pub fn state(mut self, key: &str, value: impl AsRef<[u8]>) -> FakeHost {
        self.state.insert(
            key.to_string(),
            Versioned {
                value: value.as_ref().to_vec(),
                version: 1,
                clock: Vec::new(),
                writer: "did:ahv:seed".to_string(),
            },
        );
        self
    }

    /// A reversible action `actions::invoke(name, args)` runs: `Ok` is its
    /// answer, `Err` its failure (`ActionFailed`).
    pub fn action(
        mut self,
        name: &str,
        f: impl FnMut(&str) -> Result<String, String> + 'static,
    ) -> FakeHost {
        self.actions.insert(name.to_string(), Some(Box::new(f)));
        self
    }

    /// A non-reversible effect, like [`action`](FakeHost::action).
    pub fn effect(
        mut self,
        name: &str,
        f: impl FnMut(&str) -> Result<String, String> + 'static,
    ) -> FakeHost {
        self.effects.insert(name.to_string(), Some(Box::new(f)));
        self
    }

    /// Makes this the current thread's host, replacing the previous one.
    pub fn install(self) {
        HOST.with(|h| *h.borrow_mut() = self);
    }
}

thread_local! {
    static HOST: RefCell<FakeHost> = RefCell::new(FakeHost::new());
}

fn with<T>(f: impl FnOnce(&mut FakeHost) -> T) -> T {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// The content of a file now, if it exists.
pub fn file(path: &str) -> Option<Vec<u8>> {
    let p = normalize(path).ok()?;
    with(|h| h.files.get(&p).cloned())
}

/// Every file path, sorted.
pub fn files() -> Vec<String> {
    with(|h| h.files.keys().cloned().collect())
}

/// A state key now, if it exists.
pub fn state(key: &str) -> Option<Versioned> {
    with(|h| h.state.get(key).cloned())
}

/// The log lines so far, in order (the `log` capability only; `println!`
/// goes to the test's own output).
pub fn logs() -> Vec<(Level, String)> {
    with(|h| h.logs.clone())
}

/// The locks the agent holds now.
pub fn held_locks() -> Vec<(LockTarget, LockMode)> {
    with(|h| h.locks.clone())
}

/// The ring breaches so far (each one also panicked).
pub fn breaches() -> Vec<RingBreach> {
    with(|h| h.breaches.clone())
}

/// Moves the agent to `ring` from now on (a demotion or an elevation).
///
/// # Panics
/// If `ring` is over 3.
pub fn set_ring(ring: u8) {
    assert!(ring <= 3, "rings are 0 to 3, not {ring}");
    with(|h| h.ring = ring);
}

/// The host's default ring table: each capability and the least privileged
/// ring that has it (`host/cli/src/rings.rs` checks it against the host's).
const RING_TABLE: [(&str, u8); 13] = [
    ("context", 3),
    ("log", 3),
    ("vfs-read", 3),
    ("state-read", 3),
    ("elevation", 3),
    ("vfs-write", 2),
    ("state-write", 2),
    ("locks", 2),
    ("actions", 2),
    ("effects", 1),
    ("spawn", 1),
    ("net", 1),
    ("admin", 0),
];

fn lowest_ring(capability: &str) -> u8 {
    RING_TABLE
        .iter()
        .find(|(c, _)| *c == capability)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("{capability} is not in the ring table"))
}

const RING_NAMES: [&str; 4] = ["root", "privileged", "standard", "sandbox"];

/// Records a breach and panics when `capability` is outside the fake's ring.
fn gate(capability: &'static str) {
    let ring = with(|h| h.ring);
    if ring > lowest_ring(capability) {
        with(|h| h.breaches.push(RingBreach { capability, ring }));
        panic!(
            "ring breach: `{capability}` is outside ring {ring} ({}); the host would trap the agent",
            RING_NAMES[usize::from(ring)]
        );
    }
}

/// A relative POSIX path without `.` or `..` components, as the host wants it.
fn normalize(path: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::InvalidPath(format!("{path:?}: {why}"));
    if path.starts_with('/') {
        return Err(bad("absolute"));
    }
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad("`..` is not allowed")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn is_dir(h: &FakeHost, p: &str) -> bool {
    p.is_empty()
        || h.dirs.contains(p)
        || h.files
            .keys()
            .chain(h.dirs.iter())
            .any(|f| f.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

fn file_path(path: &str) -> Result<String, Error> {
    let p = normalize(path)?;
    if p.is_empty() {
        return Err(Error::InvalidPath(format!("{path:?}: names no file")));
    }
    Ok(p)
}

fn run_handler(
    which: fn(&mut FakeHost) -> &mut BTreeMap<String, Option<Handler>>,
    name: &str,
    args: &str,
) -> Result<String, Error> {
    // Taken out while it runs, so that it may call the SDK itself.
    let taken = with(|h| which(h).get_mut(name).map(Option::take));
    let mut f = match taken {
        None => return Err(Error::UnknownAction(name.to_string())),
        Some(None) => return Err(Error::ActionFailed(format!("{name} is already running"))),
        Some(Some(f)) => f,
    };
    let out = f(args);
    with(|h| which(h).insert(name.to_string(), Some(f)));
    out.map_err(Error::ActionFailed)
}

/// The WIT imports, in the shapes `wit-bindgen` gives them, backed by the
/// current thread's [`FakeHost`]. The wrappers call these on native targets.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod imports {
    pub mod context {
        use super::super::*;

        pub fn whoami() -> AgentInfo {
            gate("context");
            with(|h| AgentInfo {
                agent_id: h.agent_id.clone(),
                session_id: h.session_id.clone(),
                ring: h.ring,
                trace_id: h.trace_id.clone(),
            })
        }

        pub fn current_ring() -> u8 {
            gate("context");
            with(|h| h.ring)
        }
    }

    pub mod log {
        use super::super::*;

        pub fn log(level: Level, message: &str) {
            gate("log");
            with(|h| h.logs.push((level, message.to_string())));
        }
    }

    pub mod vfs_read {
        use super::super::*;
        use sha2::{Digest, Sha256};

        pub fn read(path: &str) -> Result<Vec<u8>, Error> {
            gate("vfs-read");
            let p = file_path(path)?;
            with(|h| h.files.get(&p).cloned()).ok_or_else(|| Error::NotFound(path.to_string()))
        }

        pub fn list_dir(path: &str) -> Result<Vec<String>, Error> {
            gate("vfs-read");
            let p = normalize(path)?;
            with(|h| {
                if h.files.contains_key(&p) {
                    return Err(Error::Io(format!("{path}: not a directory")));
                }
                if !is_dir(h, &p) {
                    return Err(Error::NotFound(path.to_string()));
                }
                let prefix = if p.is_empty() {
                    String::new()
                } else {
                    format!("{p}/")
                };
                let names: BTreeSet<String> = h
                    .files
                    .keys()
                    .chain(h.dirs.iter())
                    .filter_map(|f| f.strip_prefix(&prefix))
                    .filter_map(|rest| rest.split('/').next())
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect();
                Ok(names.into_iter().collect())
            })
        }

        pub fn stat(path: &str) -> Result<EntryStat, Error> {
            gate("vfs-read");
            let p = normalize(path)?;
            with(|h| match h.files.get(&p) {
                Some(f) => Ok(EntryStat {
                    kind: EntryKind::File,
                    size: f.len() as u64,
                }),
                None if is_dir(h, &p) => Ok(EntryStat {
                    kind: EntryKind::Directory,
                    size: 0,
                }),
                None => Err(Error::NotFound(path.to_string())),
            })
        }

        pub fn hash(path: &str) -> Result<String, Error> {
            let bytes = read(path)?;
            Ok(Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect())
        }

        pub fn get_acl(path: &str) -> Result<Acl, Error> {
            gate("vfs-read");
            let p = file_path(path)?;
            with(|h| {
                if !h.files.contains_key(&p) {
                    return Err(Error::NotFound(path.to_string()));
                }
                Ok(h.acls.get(&p).cloned().unwrap_or_else(|| Acl {
                    owner: h.agent_id.clone(),
                    read: Access::Everyone,
                    write: Access::Owner,
                }))
            })
        }
    }

    pub mod vfs_write {
        use super::super::*;

        pub fn write(path: &str, contents: &[u8]) -> Result<(), Error> {
            gate("vfs-write");
            let p = file_path(path)?;
            with(|h| {
                if is_dir(h, &p) {
                    return Err(Error::Io(format!("{path}: is a directory")));
                }
                h.files.insert(p, contents.to_vec());
                Ok(())
            })
        }

        pub fn append(path: &str, contents: &[u8]) -> Result<(), Error> {
            gate("vfs-write");
            let p = file_path(path)?;
            with(|h| {
                if is_dir(h, &p) {
                    return Err(Error::Io(format!("{path}: is a directory")));
                }
                h.files.entry(p).or_default().extend_from_slice(contents);
                Ok(())
            })
        }

        pub fn delete(path: &str) -> Result<(), Error> {
            gate("vfs-write");
            let p = file_path(path)?;
            with(|h| {
                if h.files.remove(&p).is_some() {
                    h.acls.remove(&p);
                    return Ok(());
                }
                if !is_dir(h, &p) {
                    return Err(Error::NotFound(path.to_string()));
                }
                let prefix = format!("{p}/");
                if h.files
                    .keys()
                    .chain(h.dirs.iter())
                    .any(|f| f.starts_with(&prefix))
                {
                    return Err(Error::Io(format!("{path}: directory not empty")));
                }
                h.dirs.remove(&p);
                Ok(())
            })
        }

        pub fn rename(src: &str, dst: &str) -> Result<(), Error> {
            gate("vfs-write");
            let (s, d) = (file_path(src)?, file_path(dst)?);
            with(|h| {
                if h.files.contains_key(&d) || is_dir(h, &d) {
                    return Err(Error::AlreadyExists(dst.to_string()));
                }
                let bytes = h
                    .files
                    .remove(&s)
                    .ok_or_else(|| Error::NotFound(src.to_string()))?;
                h.files.insert(d.clone(), bytes);
                if let Some(acl) = h.acls.remove(&s) {
                    h.acls.insert(d, acl);
                }
                Ok(())
            })
        }

        pub fn create_dir(path: &str) -> Result<(), Error> {
            gate("vfs-write");
            let p = file_path(path)?;
            with(|h| {
                if h.files.contains_key(&p) {
                    return Err(Error::AlreadyExists(path.to_string()));
                }
                h.dirs.insert(p);
                Ok(())
            })
        }

        pub fn set_acl(path: &str, acl: &Acl) -> Result<(), Error> {
            gate("vfs-write");
            let p = file_path(path)?;
            with(|h| {
                if !h.files.contains_key(&p) {
                    return Err(Error::NotFound(path.to_string()));
                }
                h.acls.insert(p, acl.clone());
                Ok(())
            })
        }
    }

    pub mod state_read {
        use super::super::*;

        pub fn get(key: &str) -> Result<Option<Versioned>, Error> {
            gate("state-read");
            check_key(key)?;
            Ok(with(|h| h.state.get(key).cloned()))
        }

        pub fn keys(prefix: &str) -> Result<Vec<String>, Error> {
            gate("state-read");
            Ok(with(|h| {
                h.state
                    .keys()
                    .filter(|k| k.starts_with(prefix))
                    .cloned()
                    .collect()
            }))
        }

        pub(in crate::testing) fn check_key(key: &str) -> Result<(), Error> {
            if key.is_empty() || key.chars().any(char::is_control) {
                return Err(Error::InvalidKey(format!(
                    "{key:?}: empty or control characters"
                )));
            }
            Ok(())
        }
    }

    pub mod state_write {
        use super::super::*;
        use super::state_read::check_key;

        fn stale(key: &str, expected: u64, current: u64) -> Error {
            Error::Conflict(format!("{key:?} is at version {current}, not {expected}"))
        }

        pub fn put(key: &str, value: &[u8], expected_version: u64) -> Result<u64, Error> {
            gate("state-write");
            check_key(key)?;
            with(|h| {
                let current = h.state.get(key).map_or(0, |v| v.version);
                if current != expected_version {
                    return Err(stale(key, expected_version, current));
                }
                h.writes += 1;
                let version = current + 1;
                h.state.insert(
                    key.to_string(),
                    Versioned {
                        value: value.to_vec(),
                        version,
                        clock: vec![ClockEntry {
                            agent: h.agent_id.clone(),
                            counter: h.writes,
                        }],
                        writer: h.agent_id.clone(),
                    },
                );
                Ok(version)
            })
        }

        pub fn delete(key: &str, expected_version: u64) -> Result<(), Error> {
            gate("state-write");
            check_key(key)?;
            with(|h| {
                let Some(current) = h.state.get(key).map(|v| v.version) else {
                    return Err(Error::NotFound(key.to_string()));
                };
                if current != expected_version {
                    return Err(stale(key, expected_version, current));
                }
                h.state.remove(key);
                Ok(())
            })
        }
    }

    pub mod locks {
        use super::super::*;

        fn same(a: &LockTarget, b: &LockTarget) -> bool {
            match (a, b) {
                (LockTarget::Path(x), LockTarget::Path(y))
                | (LockTarget::Key(x), LockTarget::Key(y)) => x == y,
                _ => false,
            }
        }

        fn strength(m: LockMode) -> u8 {
            match m {
                LockMode::Read => 0,
                LockMode::Write => 1,
                LockMode::Exclusive => 2,
            }
        }

        pub fn acquire(target: &LockTarget, mode: LockMode, _wait_ms: u32) -> Result<(), Error> {
            gate("locks");
            with(|h| {
                match h.locks.iter_mut().find(|(t, _)| same(t, target)) {
                    // One lock per target: taking it again keeps it, a stronger mode upgrades it.
                    Some((_, m)) if strength(mode) > strength(*m) => *m = mode,
                    Some(_) => {}
                    None => h.locks.push((target.clone(), mode)),
                }
                Ok(())
            })
        }

        pub fn release(target: &LockTarget) -> Result<(), Error> {
            gate("locks");
            with(|h| {
                let before = h.locks.len();
                h.locks.retain(|(t, _)| !same(t, target));
                if h.locks.len() == before {
                    return Err(Error::NotFound(format!("{target:?} is not held")));
                }
                Ok(())
            })
        }

        pub fn held() -> Result<Vec<(LockTarget, LockMode)>, Error> {
            gate("locks");
            Ok(with(|h| h.locks.clone()))
        }
    }

    pub mod actions {
        use super::super::*;

        pub fn invoke(name: &str, args: &str) -> Result<String, Error> {
            gate("actions");
            run_handler(|h| &mut h.actions, name, args)
        }

        pub fn available() -> Result<Vec<String>, Error> {
            gate("actions");
            Ok(with(|h| h.actions.keys().cloned().collect()))
        }
    }

    pub mod effects {
        use super::super::*;

        pub fn invoke(name: &str, args: &str) -> Result<String, Error> {
            gate("effects");
            run_handler(|h| &mut h.effects, name, args)
        }

        pub fn available() -> Result<Vec<String>, Error> {
            gate("effects");
            Ok(with(|h| h.effects.keys().cloned().collect()))
        }
    }

    pub mod elevation {
        use super::super::*;
        use crate::bindings::agent_hypervisor::agent::elevation::Grant;

        pub fn request(
            ring: u8,
            _ttl_secs: u32,
            _justification: &str,
            _sponsorship: Option<&str>,
        ) -> Result<Grant, Error> {
            gate("elevation");
            Err(Error::Denied(format!(
                "the test double grants no elevation (to ring {ring}); \
                 set its ring with FakeHost::ring or testing::set_ring"
            )))
        }

        pub fn relinquish() -> Result<bool, Error> {
            gate("elevation");
            Ok(false)
        }

        pub fn current() -> Result<Option<Grant>, Error> {
            gate("elevation");
            Ok(None)
        }
    }

    pub mod spawn {
        use super::super::*;

        fn missing() -> ! {
            panic!("agent_sdk::testing does not provide `spawn`: test the child agent on its own")
        }

        pub fn start(_component: &str) -> Result<String, Error> {
            gate("spawn");
            missing()
        }

        pub fn run(_child: &str, _input: &str) -> Result<Result<String, String>, Error> {
            gate("spawn");
            missing()
        }

        pub fn stop(_child: &str) -> Result<(), Error> {
            gate("spawn");
            missing()
        }

        pub fn children() -> Result<Vec<String>, Error> {
            gate("spawn");
            missing()
        }
    }

    pub mod admin {
        use super::super::*;
        use crate::bindings::agent_hypervisor::agent::admin::Participant;

        fn missing() -> ! {
            panic!("agent_sdk::testing does not provide `admin`: it has no other agents")
        }

        pub fn participants() -> Result<Vec<Participant>, Error> {
            gate("admin");
            missing()
        }

        pub fn inspect(_agent: &str) -> Result<Participant, Error> {
            gate("admin");
            missing()
        }

        pub fn kill(_agent: &str, _reason: &str) -> Result<(), Error> {
            gate("admin");
            missing()
        }

        pub fn quarantine(_agent: &str, _reason: &str, _secs: u32) -> Result<(), Error> {
            gate("admin");
            missing()
        }

        pub fn release(_agent: &str) -> Result<bool, Error> {
            gate("admin");
            missing()
        }
    }
}

// They call every capability the double models, so they need a build that
// has them all (the default features do).
#[cfg(all(test, feature = "ring-privileged"))]
mod tests {
    use super::{FakeHost, RingBreach, breaches, file, held_locks, logs, set_ring, state};
    use crate::{Error, context, elevation, log, vfs};

    fn breach_of(f: impl FnOnce()) -> String {
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
        err.downcast_ref::<String>().cloned().unwrap()
    }

    #[test]
    fn files_round_trip_and_list_as_a_tree() {
        FakeHost::new().ring(2).file("notes/a.md", "A").install();
        vfs::write("./notes/b.md", "B").unwrap();
        vfs::append("notes/b.md", "b").unwrap();
        vfs::create_dir("empty").unwrap();
        assert_eq!(vfs::read_to_string("notes/b.md").unwrap(), "Bb");
        assert_eq!(vfs::list(".").unwrap(), ["empty", "notes"]);
        assert_eq!(vfs::list("notes").unwrap(), ["a.md", "b.md"]);
        assert_eq!(vfs::stat("notes/a.md").unwrap().size, 1);
        assert_eq!(vfs::stat("notes").unwrap().kind, vfs::EntryKind::Directory);
        vfs::rename("notes/a.md", "notes/c.md").unwrap();
        assert!(matches!(
            vfs::rename("notes/b.md", "notes/c.md"),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(vfs::delete("notes"), Err(Error::Io(_))));
        vfs::delete("notes/b.md").unwrap();
        assert_eq!(super::files(), ["notes/c.md"]);
        assert_eq!(file("notes/c.md").as_deref(), Some(&b"A"[..]));
    }

    #[test]
    fn bad_paths_and_missing_files_are_values() {
        FakeHost::new().ring(2).install();
        assert!(matches!(
            vfs::read("/etc/passwd"),
            Err(Error::InvalidPath(_))
        ));
        assert!(matches!(
            vfs::write("a/../../b", "x"),
            Err(Error::InvalidPath(_))
        ));
        assert!(matches!(vfs::read("nope.txt"), Err(Error::NotFound(_))));
        assert!(matches!(vfs::list("nope"), Err(Error::NotFound(_))));
    }

    #[test]
    fn hash_is_the_sha256_of_the_content() {
        FakeHost::new().file("abc.txt", "abc").install();
        assert_eq!(
            vfs::hash("abc.txt").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn state_writes_compare_and_set_on_versions() {
        FakeHost::new()
            .ring(2)
            .agent_id("did:ahv:w")
            .state("seeded", "1")
            .install();
        assert_eq!(crate::state::get("seeded").unwrap().unwrap().version, 1);
        assert_eq!(crate::state::put("k", "a", 0).unwrap(), 1);
        assert!(matches!(
            crate::state::put("k", "b", 0),
            Err(Error::Conflict(_))
        ));
        assert_eq!(crate::state::put("k", "b", 1).unwrap(), 2);
        let v = state("k").unwrap();
        assert_eq!(
            (v.value.as_slice(), v.version, v.writer.as_str()),
            (&b"b"[..], 2, "did:ahv:w")
        );
        assert_eq!(crate::state::keys("").unwrap(), ["k", "seeded"]);
        assert!(matches!(
            crate::state::delete("k", 1),
            Err(Error::Conflict(_))
        ));
        crate::state::delete("k", 2).unwrap();
        assert!(crate::state::get("k").unwrap().is_none());
        assert!(matches!(crate::state::get(""), Err(Error::InvalidKey(_))));
    }

    #[test]
    fn update_runs_the_compare_and_set_loop() {
        FakeHost::new().ring(2).install();
        for _ in 0..3 {
            crate::state::update("n", |old| {
                let n: u64 = old.map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                (n + 1).to_string().into_bytes()
            })
            .unwrap();
        }
        assert_eq!(state("n").unwrap().value, b"3");
    }

    #[test]
    fn a_lock_guard_releases_only_what_it_took() {
        use crate::locks::{self, Mode, Target};
        FakeHost::new().ring(2).install();
        let t = Target::Key("k".into());
        {
            let _g = locks::lock(&t, Mode::Write, 0).unwrap();
            assert_eq!(held_locks().len(), 1);
        }
        assert!(held_locks().is_empty());
        locks::acquire(&t, Mode::Read, 0).unwrap();
        drop(locks::lock(&t, Mode::Exclusive, 0).unwrap());
        let held = locks::held().unwrap();
        assert!(matches!(held.as_slice(), [(Target::Key(k), Mode::Exclusive)] if k == "k"));
        locks::release(&t).unwrap();
        assert!(matches!(locks::release(&t), Err(Error::NotFound(_))));
    }

    #[test]
    fn log_and_context_are_captured() {
        FakeHost::new()
            .agent_id("did:ahv:me")
            .session_id("s-1")
            .ring(1)
            .install();
        let me = context::whoami();
        assert_eq!(
            (me.agent_id.as_str(), me.session_id.as_str(), me.ring),
            ("did:ahv:me", "s-1", 1)
        );
        crate::log::warn!("careful: {}", 42);
        assert_eq!(logs(), [(log::Level::Warn, "careful: 42".to_string())]);
    }

    #[test]
    fn actions_and_effects_run_their_handlers() {
        FakeHost::new()
            .ring(1)
            .action("note.append", |args| Ok(format!("appended {args}")))
            .effect("mail.send", |_| Err("smtp down".to_string()))
            .install();
        assert_eq!(crate::actions::available().unwrap(), ["note.append"]);
        assert_eq!(
            crate::actions::invoke("note.append", "x").unwrap(),
            "appended x"
        );
        assert!(matches!(
            crate::actions::invoke("nope", ""),
            Err(Error::UnknownAction(_))
        ));
        assert!(matches!(
            crate::effects::invoke("mail.send", ""),
            Err(Error::ActionFailed(m)) if m == "smtp down"
        ));
    }

    #[test]
    fn an_out_of_ring_call_is_recorded_then_panics() {
        FakeHost::new().install();
        let msg = breach_of(|| {
            let _ = vfs::write("x", "y");
        });
        assert_eq!(
            msg,
            "ring breach: `vfs-write` is outside ring 3 (sandbox); the host would trap the agent"
        );
        assert_eq!(
            breaches(),
            [RingBreach {
                capability: "vfs-write",
                ring: 3
            }]
        );
        assert_eq!(file("x"), None);
        // The ring is judged per call: after a move to ring 2 the call works.
        set_ring(2);
        vfs::write("x", "y").unwrap();
        let msg = breach_of(|| {
            let _ = crate::effects::available();
        });
        assert!(
            msg.contains("`effects` is outside ring 2 (standard)"),
            "{msg}"
        );
    }

    #[test]
    fn elevation_is_refused_as_a_value() {
        FakeHost::new().install();
        assert!(matches!(
            elevation::request(2, 60, "why", None),
            Err(Error::Denied(_))
        ));
        assert!(elevation::current().unwrap().is_none());
    }

    #[test]
    fn each_thread_has_its_own_host() {
        FakeHost::new().file("mine.txt", "1").install();
        std::thread::spawn(|| assert_eq!(file("mine.txt"), None))
            .join()
            .unwrap();
        assert!(file("mine.txt").is_some());
    }
}
