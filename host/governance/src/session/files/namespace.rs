//! The guest namespace: which area (shared, or the caller's private one) a
//! guest path names, and the place in the session it resolves to.

use std::fmt;
use std::ops::Deref;
use std::path::Path;

use ahv_core::AgentId;

use crate::files::Caller;
use crate::path::{PathError, VfsPath};
use crate::vfs::VfsError;

use super::{SHARED, SessionFiles};

/// Which area of a session a path is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// The shared area every participant sees (`shared/…` to guests).
    Shared,
    /// This agent's private area, which only it can name.
    Private(AgentId),
}

impl Area {
    /// The guest path of `rel` (a path inside this area).
    pub(super) fn guest(&self, rel: &str) -> String {
        let rel = if rel == "." { "" } else { rel };
        match (self, rel.is_empty()) {
            (Area::Shared, true) => SHARED.to_string(),
            (Area::Shared, false) => format!("{SHARED}/{rel}"),
            (Area::Private(_), true) => ".".to_string(),
            (Area::Private(_), false) => rel.to_string(),
        }
    }
}

/// A normalised path inside an area: components joined by `/`, none of them
/// empty, `.` or `..`; `""` is the area's root. It derefs to `str` so it can
/// be handed to cap-std as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// A path known to be normalised (from a [`VfsPath`], or a name met on
    /// disk below the area root).
    pub(super) fn new(rel: &str) -> RelPath {
        RelPath(rel.to_string())
    }

    /// The path as text (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the area's root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for RelPath {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<Path> for RelPath {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A place in a session: an area and a normalised path inside it. This is
/// what locks and isolation name, so two agents' private `notes.md` are two
/// places and `shared/notes.md` is one.
///
/// Shown as `shared[/<path>]` or `private/<agent>[/<path>]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AreaPath {
    /// The area.
    pub area: Area,
    /// The path inside it.
    pub rel: RelPath,
}

impl AreaPath {
    /// Where a validated guest path of `agent` is: `shared` and `shared/…`
    /// in the shared area, everything else in `agent`'s private area.
    pub fn resolve(agent: &AgentId, p: &VfsPath) -> AreaPath {
        let s = if p.is_root() { "" } else { p.as_str() };
        let (area, rel) = if s == SHARED {
            (Area::Shared, "")
        } else if let Some(rest) = s.strip_prefix("shared/") {
            (Area::Shared, rest)
        } else {
            (Area::Private(agent.clone()), s)
        };
        AreaPath {
            area,
            rel: RelPath::new(rel),
        }
    }

    /// The path as a guest in the area names it (`shared/…` for the shared
    /// area, the bare path, or `.` for the root, in a private one).
    pub fn guest(&self) -> String {
        self.area.guest(&self.rel)
    }

    /// True for an area's root.
    pub fn is_root(&self) -> bool {
        self.rel.is_root()
    }

    /// Whether one of `self` and `other` is the other or below it (in the
    /// same area, component by component): a change at one may change
    /// what is at or below the other.
    pub(super) fn on_branch_of(&self, other: &AreaPath) -> bool {
        let below = |a: &str, b: &str| {
            b.is_empty() || a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'))
        };
        self.area == other.area
            && (below(self.rel.as_str(), other.rel.as_str())
                || below(other.rel.as_str(), self.rel.as_str()))
    }

    /// This path with `suffix` (empty, or starting with `/`) appended.
    pub(super) fn with_suffix(&self, suffix: &str) -> AreaPath {
        AreaPath {
            area: self.area.clone(),
            rel: RelPath(format!("{}{suffix}", self.rel)),
        }
    }

    pub(super) fn child(&self, name: &str) -> AreaPath {
        AreaPath {
            area: self.area.clone(),
            rel: RelPath(if self.rel.is_root() {
                name.to_string()
            } else {
                format!("{}/{name}", self.rel)
            }),
        }
    }

    /// The path as given to cap-std inside the area's directory.
    pub(super) fn at(&self) -> &str {
        if self.rel.is_root() { "." } else { &self.rel }
    }
}

impl fmt::Display for AreaPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.area {
            Area::Shared => f.write_str(SHARED)?,
            Area::Private(a) => write!(f, "private/{a}")?,
        }
        if !self.rel.is_root() {
            write!(f, "/{}", self.rel)?;
        }
        Ok(())
    }
}

/// A path that may name a root (for listing, stat, create-dir).
pub(super) fn dir_key(agent: &AgentId, path: &str) -> Result<AreaPath, VfsError> {
    Ok(AreaPath::resolve(agent, &VfsPath::parse_dir(path)?))
}

/// A path that must name an entry, not a root.
pub(super) fn file_key(agent: &AgentId, path: &str) -> Result<AreaPath, VfsError> {
    let p = VfsPath::parse(path)?;
    let key = AreaPath::resolve(agent, &p);
    if key.is_root() {
        return Err(PathError::Empty {
            path: p.to_string(),
        }
        .into());
    }
    Ok(key)
}

/// The key of a path relative to `files/` (as met while copying trees).
pub(super) fn files_key(rel: &str) -> Option<AreaPath> {
    if let Some(rest) = rel.strip_prefix("shared/") {
        return Some(AreaPath {
            area: Area::Shared,
            rel: RelPath::new(rest),
        });
    }
    let (agent, rest) = rel.strip_prefix("agents/")?.split_once('/')?;
    Some(AreaPath {
        area: Area::Private(AgentId::new(agent).ok()?),
        rel: RelPath::new(rest),
    })
}

/// Rewrites the area-relative path in an error from an area's [`Vfs`] as the
/// guest path.
pub(super) fn in_guest_terms(e: VfsError, area: &Area) -> VfsError {
    match e {
        VfsError::NotFound { path } => VfsError::NotFound {
            path: area.guest(&path),
        },
        VfsError::AlreadyExists { path } => VfsError::AlreadyExists {
            path: area.guest(&path),
        },
        VfsError::Denied { path, reason } => VfsError::Denied {
            path: area.guest(&path),
            reason,
        },
        VfsError::Quota { path, reason } => VfsError::Quota {
            path: area.guest(&path),
            reason,
        },
        VfsError::Conflict { path, reason } => VfsError::Conflict {
            path: area.guest(&path),
            reason,
        },
        VfsError::Io { op, path, message } => VfsError::Io {
            op,
            path: area.guest(&path),
            message,
        },
        e @ VfsError::InvalidPath(_) => e,
    }
}

impl SessionFiles {
    /// Where a guest path of the caller is: the place locks and isolation
    /// name (shown as `shared/<p>`, `private/<agent>/<p>`, or the area alone
    /// for its root). Touches no files.
    ///
    /// # Errors
    /// `InvalidPath` when the path is not valid.
    pub fn area_path(&self, who: Caller<'_>, path: &str) -> Result<AreaPath, VfsError> {
        dir_key(who.agent, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::files::test_support::*;

    #[test]
    fn session_files_are_send_sync_debug_and_a_file_space() {
        fn check<T: Send + Sync + fmt::Debug>() {}
        check::<SessionFiles>();
        let e = env();
        let space: Box<dyn FileSpace> = Box::new(e.files);
        assert!(format!("{space:?}").contains("s1"));
    }

    #[test]
    fn session_directory_is_created_lazily() {
        let e = env();
        let a = id("alice");
        e.files.set_strict(false);
        e.files.set_strict(true);
        assert_eq!(e.files.usage(), Usage::default());
        assert!(e.files.undo_records().is_empty());
        e.files.forget(&a);
        assert_eq!(
            e.files
                .area_path(ring2(&a), "shared/x")
                .unwrap()
                .to_string(),
            "shared/x"
        );
        assert!(
            std::fs::read_dir(e.sessions()).unwrap().next().is_none(),
            "nothing on disk before the first file operation"
        );
        e.files.write(ring2(&a), "x.txt", b"1").unwrap();
        assert!(e.files_dir().join("agents/alice/x.txt").is_file());
        assert!(e.files_dir().join("shared").is_dir());
    }

    #[test]
    fn agents_have_private_namespaces_and_share_one_area() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        e.files.write(ring2(&a), "notes.txt", b"A").unwrap();
        e.files.write(ring2(&b), "notes.txt", b"B").unwrap();
        assert_eq!(e.files.read(ring2(&a), "notes.txt").unwrap(), b"A");
        assert_eq!(e.files.read(ring2(&b), "notes.txt").unwrap(), b"B");
        assert_eq!(
            std::fs::read(e.files_dir().join("agents/alice/notes.txt")).unwrap(),
            b"A"
        );
        assert_eq!(
            std::fs::read(e.files_dir().join("agents/bob/notes.txt")).unwrap(),
            b"B"
        );

        e.files.write(ring2(&a), "shared/x", b"S").unwrap();
        assert_eq!(e.files.read(ring2(&b), "shared/x").unwrap(), b"S");
        e.files.write(ring2(&b), "shared/x", b"S2").unwrap();
        assert_eq!(e.files.read(ring2(&a), "./shared//x").unwrap(), b"S2");
        assert_eq!(
            std::fs::read(e.files_dir().join("shared/x")).unwrap(),
            b"S2"
        );

        assert_eq!(
            e.files.list(ring2(&a), "").unwrap(),
            ["notes.txt", "shared"]
        );
        assert_eq!(
            e.files.list(ring2(&b), ".").unwrap(),
            ["notes.txt", "shared"]
        );
        assert_eq!(e.files.list(ring2(&b), "shared").unwrap(), ["x"]);
        assert_eq!(e.files.list(ring2(&a), "./shared/").unwrap(), ["x"]);
        // No agent can name another's private area: this is bob's own `agents/…`.
        assert!(matches!(
            e.files.read(ring2(&b), "agents/alice/notes.txt"),
            Err(VfsError::NotFound { path }) if path == "agents/alice/notes.txt"
        ));
        assert_eq!(
            e.files.usage(),
            Usage {
                files: 3,
                bytes: 4,
                dirs: 0
            }
        );
        assert_eq!(
            e.files.stat(ring2(&a), "notes.txt").unwrap(),
            Stat {
                kind: EntryKind::File,
                size: 1
            }
        );
        assert_eq!(
            e.files.stat(ring2(&a), "shared").unwrap().kind,
            EntryKind::Directory
        );
        assert_eq!(
            e.files.stat(ring2(&a), "").unwrap().kind,
            EntryKind::Directory
        );
        assert!(matches!(
            e.files.stat(ring2(&a), "nope"),
            Err(VfsError::NotFound { path }) if path == "nope"
        ));
        assert!(matches!(
            e.files.read(ring2(&a), "shared/nope"),
            Err(VfsError::NotFound { path }) if path == "shared/nope"
        ));
    }

    #[test]
    fn paths_are_validated_and_normalised() {
        let e = env();
        let a = id("alice");
        let who = ring2(&a);
        let long = "x".repeat(2000);
        let deep = vec!["d"; 40].join("/");
        for bad in [
            "../x",
            "/etc/passwd",
            "shared/../agents/bob/secret",
            "shared/../../s2/files",
            "a\0b",
            "a\\b",
            "a\nb",
            ".ahv-tmp-1",
            "shared/.ahv",
            long.as_str(),
            deep.as_str(),
        ] {
            assert!(
                matches!(e.files.read(who, bad), Err(VfsError::InvalidPath(_))),
                "read {bad:?}"
            );
            assert!(
                matches!(e.files.write(who, bad, b"x"), Err(VfsError::InvalidPath(_))),
                "write {bad:?}"
            );
            assert!(matches!(
                e.files.list(who, bad),
                Err(VfsError::InvalidPath(_))
            ));
            assert!(matches!(
                e.files.area_path(who, bad),
                Err(VfsError::InvalidPath(_))
            ));
        }
        for root in ["", ".", "shared", "./shared/", "shared/."] {
            assert!(
                matches!(
                    e.files.write(who, root, b"x"),
                    Err(VfsError::InvalidPath(PathError::Empty { .. }))
                ),
                "write {root:?}"
            );
            assert!(matches!(
                e.files.delete(who, root),
                Err(VfsError::InvalidPath(PathError::Empty { .. }))
            ));
        }
        let c = e.files.write(who, "./shared//y.txt", b"y").unwrap();
        assert_eq!(c.path, "shared/y.txt");
        assert_eq!(e.files.read(who, "shared/y.txt").unwrap(), b"y");
        let c = e.files.write(who, "shared/ünï/ß 文件.txt", b"u").unwrap();
        assert_eq!(c.path, "shared/ünï/ß 文件.txt");
        assert_eq!(e.files.list(who, "shared/ünï").unwrap(), ["ß 文件.txt"]);
        // `Shared` is not `shared`: an ordinary private name.
        e.files.write(who, "Shared/z", b"z").unwrap();
        assert!(e.files_dir().join("agents/alice/Shared/z").is_file());
        assert_eq!(
            e.files.area_path(who, "shared").unwrap().to_string(),
            "shared"
        );
        assert_eq!(
            e.files.area_path(who, "./shared//a/b").unwrap().to_string(),
            "shared/a/b"
        );
        assert_eq!(
            e.files.area_path(who, "a//b").unwrap().to_string(),
            "private/alice/a/b"
        );
        assert_eq!(
            e.files.area_path(who, "").unwrap().to_string(),
            "private/alice"
        );
        let at = e.files.area_path(who, "notes/a.txt").unwrap();
        assert_eq!(
            (at.area, at.rel.as_str()),
            (Area::Private(id("alice")), "notes/a.txt")
        );
        let at = e.files.area_path(who, "shared/notes/a.txt").unwrap();
        assert_eq!(
            (&at.area, at.guest()),
            (&Area::Shared, "shared/notes/a.txt".into())
        );
    }
}
