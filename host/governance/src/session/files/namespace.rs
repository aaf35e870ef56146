//! The guest namespace: which area (shared, or the caller's private one) a
//! guest path names, and the place in the session it resolves to.

use ahv_core::AgentId;

use crate::files::Caller;
use crate::path::{PathError, VfsPath};
use crate::vfs::VfsError;

use super::{SHARED, SessionFiles};

/// Which area a guest path names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Area {
    Shared,
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

/// A place in the session: an area and a normalised path inside it (`""` is
/// the area's root).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) area: Area,
    pub(super) rel: String,
}

impl Key {
    pub(super) fn guest(&self) -> String {
        self.area.guest(&self.rel)
    }

    pub(super) fn is_root(&self) -> bool {
        self.rel.is_empty()
    }

    /// This key with `suffix` (empty, or starting with `/`) appended.
    pub(super) fn with_suffix(&self, suffix: &str) -> Key {
        Key {
            area: self.area.clone(),
            rel: format!("{}{suffix}", self.rel),
        }
    }

    pub(super) fn child(&self, name: &str) -> Key {
        Key {
            area: self.area.clone(),
            rel: if self.rel.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", self.rel)
            },
        }
    }

    /// The path as given to cap-std inside the area's directory.
    pub(super) fn at(&self) -> &str {
        if self.rel.is_empty() { "." } else { &self.rel }
    }
}

/// Maps a validated guest path to its area.
pub(super) fn resolve(agent: &AgentId, p: &VfsPath) -> Key {
    let s = if p.is_root() { "" } else { p.as_str() };
    let (area, rel) = if s == SHARED {
        (Area::Shared, "")
    } else if let Some(rest) = s.strip_prefix("shared/") {
        (Area::Shared, rest)
    } else {
        (Area::Private(agent.clone()), s)
    };
    Key {
        area,
        rel: rel.to_string(),
    }
}

/// A path that may name a root (for listing, stat, create-dir).
pub(super) fn dir_key(agent: &AgentId, path: &str) -> Result<Key, VfsError> {
    Ok(resolve(agent, &VfsPath::parse_dir(path)?))
}

/// A path that must name an entry, not a root.
pub(super) fn file_key(agent: &AgentId, path: &str) -> Result<Key, VfsError> {
    let p = VfsPath::parse(path)?;
    let key = resolve(agent, &p);
    if key.is_root() {
        return Err(PathError::Empty {
            path: p.to_string(),
        }
        .into());
    }
    Ok(key)
}

/// The key of a path relative to `files/` (as met while copying trees).
pub(super) fn files_key(rel: &str) -> Option<Key> {
    if let Some(rest) = rel.strip_prefix("shared/") {
        return Some(Key {
            area: Area::Shared,
            rel: rest.to_string(),
        });
    }
    let (agent, rest) = rel.strip_prefix("agents/")?.split_once('/')?;
    Some(Key {
        area: Area::Private(AgentId::new(agent).ok()?),
        rel: rest.to_string(),
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
    /// The canonical lock resource of a guest path: `shared/<p>` for the
    /// shared area (`shared` for its root), `private/<agent>/<p>` for the
    /// caller's private area (`private/<agent>` for its root). Touches no
    /// files.
    ///
    /// # Errors
    /// `InvalidPath` when the path is not valid.
    pub fn lock_path(&self, who: Caller<'_>, path: &str) -> Result<String, VfsError> {
        let key = dir_key(who.agent, path)?;
        Ok(match (&key.area, key.is_root()) {
            (Area::Shared, true) => SHARED.to_string(),
            (Area::Shared, false) => format!("{SHARED}/{}", key.rel),
            (Area::Private(a), true) => format!("private/{a}"),
            (Area::Private(a), false) => format!("private/{a}/{}", key.rel),
        })
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
            e.files.lock_path(ring2(&a), "shared/x").unwrap(),
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
                e.files.lock_path(who, bad),
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
        assert_eq!(e.files.lock_path(who, "shared").unwrap(), "shared");
        assert_eq!(
            e.files.lock_path(who, "./shared//a/b").unwrap(),
            "shared/a/b"
        );
        assert_eq!(e.files.lock_path(who, "a//b").unwrap(), "private/alice/a/b");
        assert_eq!(e.files.lock_path(who, "").unwrap(), "private/alice");
    }
}
