//! Target `path`: guest paths, from the parser to the file system.
//!
//! The input is a guest path (invalid UTF-8 is replaced, as a WIT string
//! cannot carry it). Checked:
//! - [`VfsPath::parse_dir`] / [`VfsPath::parse`]: an accepted path is normal
//!   (no `..`, `.`, empty components, NUL, backslash, control characters or
//!   leading `/`; within the length, depth and component limits; no reserved
//!   name), names the same components as the input, and parses to itself
//!   again; a refusal is justified by the input and its message stays short;
//! - [`Vfs`] (one directory) `read`, `stat`, `list` over a fixture directory
//!   with symlinks out of it (`up -> ..`, `abs -> /`), a symlink inside it,
//!   a self-loop and a host-reserved file: nothing outside the directory and
//!   nothing reserved is ever read or listed, a path the parser refuses is
//!   refused with the parser's error, and no message names a host path;
//! - [`SessionFiles`] (a shared session) `area_path`, `read`, `stat`, `list`
//!   for two agents: a path names the shared area for both or each one's own
//!   private area, never the other's, and agent A never reads what agent B
//!   keeps privately.

use std::sync::{Arc, OnceLock};

use ahv_core::{AgentId, Ring, SessionId};
use ahv_governance::files::{Caller, FileSpace};
use ahv_governance::path::{
    MAX_COMPONENT_BYTES, MAX_DEPTH, MAX_PATH_BYTES, PathError, RESERVED_PREFIX, VfsPath,
};
use ahv_governance::session_vfs::{FileQuotas, SessionFiles};
use ahv_governance::vclock::ClockTable;
use ahv_governance::vfs::{Vfs, VfsError, VfsLimits};
use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// The contents of the file outside the agent's directory.
const OUTSIDE: &[u8] = b"SECRET: outside the agent's directory";
/// The contents of the host's reserved file inside it.
const RESERVED: &[u8] = b"SECRET: the host's own temporary file";
/// What agent B keeps in its private area of the session.
const B_PRIVATE: &[u8] = b"SECRET: agent B's private notes";
/// Files inside the directory, with their contents: what a read may return.
const INSIDE: &[(&str, &[u8])] = &[("a.txt", b"fixture a"), ("d/b.txt", b"fixture d/b")];
/// Every name a listing of the fixture may show.
const LISTABLE: &[&str] = &["a.txt", "d", "b.txt", "e", "up", "abs", "in", "loop"];

/// The directories the file-system checks run against, made once per
/// process by the fuzz target and once per test by the seed tests.
pub struct Fixture {
    /// Where it lives; removed on drop when owned.
    base: Base,
    vfs: Vfs,
    session: SessionFiles,
    a: AgentId,
    b: AgentId,
}

impl Fixture {
    /// Builds the fixture in a fresh scratch directory:
    ///
    /// ```text
    /// outside.txt            OUTSIDE
    /// root/                  the agent's directory (a `Vfs`)
    ///   a.txt, d/b.txt, d/e/ ordinary entries
    ///   .ahv-tmp-1           a host-reserved file
    ///   up -> ..   abs -> /  symlinks out of the directory
    ///   in -> d    loop -> loop
    /// sessions/              a session's files: B's private `notes.txt`,
    ///                        the shared `shared/plan.md`
    /// ```
    ///
    /// # Panics
    /// When the scratch directory cannot be set up (the machine is at fault).
    pub fn new() -> Fixture {
        Fixture::in_dir(Base::Owned(super::scratch_dir()))
    }

    fn in_dir(dir: Base) -> Fixture {
        let base = dir.path();
        let setup = || -> std::io::Result<(Vfs, SessionFiles, AgentId, AgentId)> {
            std::fs::write(base.join("outside.txt"), OUTSIDE)?;
            let root = base.join("root");
            std::fs::create_dir_all(root.join("d/e"))?;
            for (name, contents) in INSIDE {
                std::fs::write(root.join(name), contents)?;
            }
            std::fs::write(root.join(format!("{RESERVED_PREFIX}-tmp-1")), RESERVED)?;
            std::os::unix::fs::symlink("..", root.join("up"))?;
            std::os::unix::fs::symlink("/", root.join("abs"))?;
            std::os::unix::fs::symlink("d", root.join("in"))?;
            std::os::unix::fs::symlink("loop", root.join("loop"))?;
            let vfs = Vfs::new(
                Dir::open_ambient_dir(&root, ambient_authority())?,
                VfsLimits::default(),
            );
            std::fs::create_dir_all(base.join("sessions"))?;
            let sessions = Arc::new(Dir::open_ambient_dir(
                base.join("sessions"),
                ambient_authority(),
            )?);
            let session = SessionFiles::new(
                sessions,
                SessionId::new("s-fuzz").map_err(std::io::Error::other)?,
                FileQuotas::default(),
                Arc::new(ClockTable::new()),
            );
            let agent = |s: &str| AgentId::new(s).map_err(std::io::Error::other);
            let (a, b) = (agent("did:ex:a")?, agent("did:ex:b")?);
            let vfs_err = |e: VfsError| std::io::Error::other(e.to_string());
            session
                .write(Caller::untraced(&b, Ring::Standard), "notes.txt", B_PRIVATE)
                .map_err(vfs_err)?;
            session
                .write(
                    Caller::untraced(&b, Ring::Standard),
                    "shared/plan.md",
                    b"plan",
                )
                .map_err(vfs_err)?;
            Ok((vfs, session, a, b))
        };
        match setup() {
            Ok((vfs, session, a, b)) => Fixture {
                base: dir,
                vfs,
                session,
                a,
                b,
            },
            Err(e) => panic!("cannot set up the path fixture: {e}"),
        }
    }

    /// The fixture shared by every run in this process (the fuzz target's),
    /// in a directory the next fuzz process removes (see
    /// [`super::process_scratch_dir`]).
    pub fn shared() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| Fixture::in_dir(Base::Kept(super::process_scratch_dir("path"))))
    }
}

/// The fixture's directory: removed with the fixture, or kept for the process.
enum Base {
    Owned(tempfile::TempDir),
    Kept(std::path::PathBuf),
}

impl Base {
    fn path(&self) -> &std::path::Path {
        match self {
            Base::Owned(t) => t.path(),
            Base::Kept(p) => p,
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// The fuzz target's entry point: [`check_with`] on the process's fixture.
pub fn check(data: &[u8]) {
    check_with(Fixture::shared(), data);
}

/// Runs every check of this module on the guest path `data`.
///
/// # Panics
/// When an invariant fails (or the code under test panics).
pub fn check_with(fx: &Fixture, data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let s: &str = &input;
    let dir = fx.base.path().to_string_lossy().into_owned();

    let parsed_dir = VfsPath::parse_dir(s);
    let parsed = VfsPath::parse(s);
    match &parsed_dir {
        Ok(p) => accepted(s, p, &parsed),
        Err(e) => {
            refused(s, e);
            assert_eq!(
                parsed.as_ref().err(),
                Some(e),
                "parse and parse_dir refuse {s:?} differently"
            );
        }
    }

    // The agent's own directory.
    let read = fx.vfs.read(s);
    same_refusal(s, "Vfs::read", &parsed, read.as_ref().err());
    if let Ok(bytes) = &read {
        assert!(
            INSIDE.iter().any(|(_, c)| c == bytes),
            "Vfs::read({s:?}) returned bytes that are not a file of the directory: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let stat = fx.vfs.stat(s);
    same_refusal(s, "Vfs::stat", &parsed_dir, stat.as_ref().err());
    let list = fx.vfs.list(s);
    same_refusal(s, "Vfs::list", &parsed_dir, list.as_ref().err());
    if let Ok(names) = &list {
        listed_only_fixture_names(s, names);
    }
    if let Ok(p) = &parsed_dir {
        let first = p.as_str().split('/').next().unwrap_or_default();
        if first == "up" || first == "abs" {
            // Through a symlink out of the directory: refused, whatever follows.
            assert!(
                read.is_err() && stat.is_err() && list.is_err(),
                "{s:?} leads out of the directory through {first:?} but was served: read {:?}, stat {:?}, list {:?}",
                read.as_ref().map(|b| b.len()),
                stat,
                list
            );
        }
    }
    for e in [read.err(), stat.err(), list.err()].into_iter().flatten() {
        no_host_path(s, &dir, &e.to_string());
    }

    // A shared session, as agent A.
    let caller = Caller::untraced(&fx.a, Ring::Standard);
    let other = Caller::untraced(&fx.b, Ring::Standard);
    let lock_a = fx.session.area_path(caller, s).map(|p| p.to_string());
    let lock_b = fx.session.area_path(other, s).map(|p| p.to_string());
    same_refusal(
        s,
        "SessionFiles::area_path",
        &parsed_dir,
        lock_a.as_ref().err(),
    );
    if let (Ok(la), Ok(lb)) = (&lock_a, &lock_b) {
        areas_do_not_mix(s, &fx.a, &fx.b, la, lb);
    }
    let read = fx.session.read(caller, s);
    let shared_root = parsed.as_ref().is_ok_and(|p| p.as_str() == "shared");
    match read.as_ref().err() {
        // The shared area's root is a directory, not a file to read.
        Some(VfsError::InvalidPath(PathError::Empty { .. })) if shared_root => {}
        e => same_refusal(s, "SessionFiles::read", &parsed, e),
    }
    if let Ok(bytes) = &read {
        assert!(
            bytes.as_slice() != B_PRIVATE,
            "agent A read agent B's private file through {s:?}"
        );
    }
    let stat = fx.session.stat(caller, s);
    same_refusal(s, "SessionFiles::stat", &parsed_dir, stat.as_ref().err());
    let list = fx.session.list(caller, s);
    same_refusal(s, "SessionFiles::list", &parsed_dir, list.as_ref().err());
    if let Ok(names) = &list {
        assert!(
            !names.iter().any(|n| n == "notes.txt"),
            "agent A's listing of {s:?} shows agent B's private file: {names:?}"
        );
    }
    for e in [read.err(), stat.err(), list.err()].into_iter().flatten() {
        no_host_path(s, &dir, &e.to_string());
    }
}

/// The invariants of an accepted path.
fn accepted(s: &str, p: &VfsPath, parsed: &Result<VfsPath, PathError>) {
    let t = p.as_str();
    assert!(!t.is_empty(), "{s:?}: as_str is empty (the root is \".\")");
    assert_eq!(p.is_root(), t == ".", "{s:?}: is_root disagrees with {t:?}");
    assert!(
        t.len() <= MAX_PATH_BYTES,
        "{s:?}: normalised {t:?} too long"
    );
    assert!(
        !t.starts_with('/') && !t.chars().any(|c| c == '\\' || c.is_control()),
        "{s:?} normalised to {t:?}, which is absolute or has a backslash, NUL or control character"
    );
    let expected: Vec<&str> = s
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if p.is_root() {
        assert!(
            expected.is_empty(),
            "{s:?} names {expected:?}, not the root"
        );
        assert!(
            matches!(parsed, Err(PathError::Empty { .. })),
            "{s:?}: parse accepts the root: {parsed:?}"
        );
    } else {
        let parts: Vec<&str> = t.split('/').collect();
        assert_eq!(parts, expected, "{s:?} normalised to other components");
        assert!(
            parts.len() <= MAX_DEPTH,
            "{s:?}: {} components",
            parts.len()
        );
        for c in &parts {
            assert!(
                *c != ".." && c.len() <= MAX_COMPONENT_BYTES && !c.starts_with(RESERVED_PREFIX),
                "{s:?}: component {c:?} should have been refused"
            );
        }
        assert_eq!(
            parsed.as_ref().ok(),
            Some(p),
            "{s:?}: parse and parse_dir differ"
        );
        let name = p.file_name();
        assert!(
            !name.is_empty() && !name.contains('/') && parts.last() == Some(&name),
            "{s:?}: file_name {name:?}"
        );
        match p.parent() {
            None => assert_eq!(parts.len(), 1, "{s:?}: no parent but {} parts", parts.len()),
            Some(parent) => {
                assert_eq!(
                    format!("{}/{name}", parent.as_str()),
                    t,
                    "{s:?}: parent and file name do not make the path"
                );
                assert_eq!(
                    VfsPath::parse(parent.as_str()).as_ref(),
                    Ok(&parent),
                    "{s:?}: the parent {parent:?} does not parse to itself"
                );
            }
        }
    }
    // Idempotent, through the display form too.
    assert_eq!(
        VfsPath::parse_dir(t).as_ref(),
        Ok(p),
        "{s:?}: {t:?} re-parses differently"
    );
    assert_eq!(
        VfsPath::parse_dir(&p.to_string()).as_ref(),
        Ok(p),
        "{s:?}: its display form re-parses differently"
    );
}

/// A refusal must be justified by the input, and short.
fn refused(s: &str, e: &PathError) {
    let components = || s.split('/').filter(|c| !c.is_empty() && *c != ".");
    let why = match e {
        PathError::Empty { .. } => false,
        PathError::TooLong { len, .. } => *len == s.len() && s.len() > MAX_PATH_BYTES,
        PathError::Nul { .. } => s.contains('\0'),
        PathError::Backslash { .. } => s.contains('\\'),
        PathError::Control { code, .. } => {
            char::from_u32(*code).is_some_and(|c| c.is_control() && c != '\0' && s.contains(c))
        }
        PathError::Absolute { .. } => s.starts_with('/'),
        PathError::Parent { .. } => components().any(|c| c == ".."),
        PathError::ComponentTooLong { len, .. } => {
            *len > MAX_COMPONENT_BYTES && components().any(|c| c.len() == *len)
        }
        PathError::Reserved { .. } => components().any(|c| c.starts_with(RESERVED_PREFIX)),
        PathError::TooDeep { depth, .. } => *depth > MAX_DEPTH && components().count() == *depth,
    };
    assert!(why, "{s:?} refused without reason: {e:?}");
    let msg = e.to_string();
    // At most 64 characters of the input, each at most 10 bytes once
    // escaped (`\u{10ffff}`), plus the sentence: bounded whatever the input.
    assert!(
        msg.len() <= 64 * 10 + 160,
        "the refusal of a {}-byte path is a {}-byte message: {msg}",
        s.len(),
        msg.len()
    );
}

/// An operation refuses exactly the paths the parser refuses, with its error.
fn same_refusal<T: std::fmt::Debug>(
    s: &str,
    op: &str,
    parsed: &Result<T, PathError>,
    got: Option<&VfsError>,
) {
    match (parsed, got) {
        (Err(want), Some(VfsError::InvalidPath(e))) => {
            assert_eq!(e, want, "{op}({s:?}) refuses the path for another reason");
        }
        (Err(want), other) => {
            panic!("{op}({s:?}): the parser refuses it ({want:?}), got {other:?}")
        }
        (Ok(_), Some(VfsError::InvalidPath(e))) => {
            panic!("{op}({s:?}): the parser accepts it, the operation says {e:?}")
        }
        (Ok(_), _) => {}
    }
}

fn listed_only_fixture_names(s: &str, names: &[String]) {
    for n in names {
        assert!(
            LISTABLE.contains(&n.as_str()),
            "Vfs::list({s:?}) shows {n:?}, which is not in the directory (or is reserved)"
        );
    }
}

/// The lock resources of the same guest path for two agents: the same shared
/// resource, or each agent's own private one.
fn areas_do_not_mix(s: &str, a: &AgentId, b: &AgentId, la: &str, lb: &str) {
    let shared = la == "shared" || la.starts_with("shared/");
    if shared {
        assert_eq!(la, lb, "{s:?} names different shared resources for A and B");
        return;
    }
    let own = |lock: &str, agent: &AgentId| {
        let prefix = format!("private/{agent}");
        lock == prefix || lock.starts_with(&format!("{prefix}/"))
    };
    assert!(
        own(la, a) && own(lb, b),
        "{s:?} does not name each agent's own private area: A {la:?}, B {lb:?}"
    );
}

/// Messages never name host paths; unless the guest's path spelled it out
/// itself, as given or once normalised (libFuzzer finds the directory's name
/// by watching comparisons).
fn no_host_path(s: &str, dir: &str, msg: &str) {
    let spelled = s.contains(dir)
        || VfsPath::parse_dir(s).is_ok_and(|p| p.as_str().contains(dir.trim_start_matches('/')));
    assert!(
        spelled || !msg.contains(dir),
        "the message for {s:?} names the host directory: {msg}"
    );
}
