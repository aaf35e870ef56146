//! Guest path validation and normalisation.
//!
//! Guests name files with relative POSIX paths. Before any path reaches
//! cap-std it is checked here, so a bad path gets a precise `invalid-path`
//! error instead of an OS error, and so nothing that could be read as a way
//! out of the directory (`..`, an absolute path, a backslash, a NUL) is ever
//! passed on. cap-std then enforces the directory boundary once more,
//! including through symlinks.

use std::fmt;

use thiserror::Error;

/// Maximum length of a whole path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Maximum length of one path component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Maximum number of components.
pub const MAX_DEPTH: usize = 32;
/// Names starting with this prefix are the host's own (temporary files); guests may not use them.
pub const RESERVED_PREFIX: &str = ".ahv";

/// A validated, normalised relative path: components joined by `/`, no `.`,
/// no empty components. The empty path is the root directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VfsPath(String);

/// Why a guest path was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The path is empty (or only `.`) where a file is needed.
    #[error("path {path:?} names the root directory, not a file")]
    Empty {
        /// The path as given.
        path: String,
    },
    /// The path starts with `/`.
    #[error("path {path:?} is absolute; use a path relative to the agent's directory")]
    Absolute {
        /// The path as given (truncated).
        path: String,
    },
    /// The path has a `..` component.
    #[error("path {path:?} contains `..`; parent components are not allowed")]
    Parent {
        /// The path as given (truncated).
        path: String,
    },
    /// The path has a NUL byte.
    #[error("path {path:?} contains a NUL byte")]
    Nul {
        /// The path as given (truncated).
        path: String,
    },
    /// The path has a backslash (ambiguous across platforms).
    #[error("path {path:?} contains a backslash; use `/` to separate components")]
    Backslash {
        /// The path as given (truncated).
        path: String,
    },
    /// The path has a control character.
    #[error("path {path:?} contains control character U+{code:04X}")]
    Control {
        /// The path as given (truncated).
        path: String,
        /// The character's code point.
        code: u32,
    },
    /// The path is too long.
    #[error("path is {len} bytes long; the maximum is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// One component is too long.
    #[error("a component of path {path:?} is {len} bytes long; the maximum is {max}")]
    ComponentTooLong {
        /// The path as given (truncated).
        path: String,
        /// The component's length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Too many components.
    #[error("path {path:?} has {depth} components; the maximum is {max}")]
    TooDeep {
        /// The path as given (truncated).
        path: String,
        /// Its depth.
        depth: usize,
        /// The maximum.
        max: usize,
    },
    /// A component uses the host's reserved prefix.
    #[error("path {path:?} uses the reserved name prefix `{RESERVED_PREFIX}`")]
    Reserved {
        /// The path as given (truncated).
        path: String,
    },
}

/// The path as shown in messages: at most 64 characters.
fn shown(path: &str) -> String {
    let mut s: String = path.chars().take(64).collect();
    if s.len() < path.len() {
        s.push('…');
    }
    s
}

impl VfsPath {
    /// Validates and normalises a path that may name the root (`""`, `"."`).
    ///
    /// # Errors
    /// [`PathError`] naming the first thing wrong with `path`.
    pub fn parse_dir(path: &str) -> Result<VfsPath, PathError> {
        if path.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                len: path.len(),
                max: MAX_PATH_BYTES,
            });
        }
        if let Some(c) = path
            .chars()
            .find(|c| *c == '\0' || *c == '\\' || c.is_control())
        {
            let path = shown(path);
            return Err(match c {
                '\0' => PathError::Nul { path },
                '\\' => PathError::Backslash { path },
                c => PathError::Control {
                    path,
                    code: c as u32,
                },
            });
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute { path: shown(path) });
        }
        let mut parts = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(PathError::Parent { path: shown(path) }),
                p if p.len() > MAX_COMPONENT_BYTES => {
                    return Err(PathError::ComponentTooLong {
                        path: shown(path),
                        len: p.len(),
                        max: MAX_COMPONENT_BYTES,
                    });
                }
                p if p.starts_with(RESERVED_PREFIX) => {
                    return Err(PathError::Reserved { path: shown(path) });
                }
                p => parts.push(p),
            }
        }
        if parts.len() > MAX_DEPTH {
            return Err(PathError::TooDeep {
                path: shown(path),
                depth: parts.len(),
                max: MAX_DEPTH,
            });
        }
        Ok(VfsPath(parts.join("/")))
    }

    /// Validates and normalises a path that must name an entry (not the root).
    ///
    /// # Errors
    /// As [`VfsPath::parse_dir`], plus [`PathError::Empty`] for the root.
    pub fn parse(path: &str) -> Result<VfsPath, PathError> {
        let p = VfsPath::parse_dir(path)?;
        if p.is_root() {
            return Err(PathError::Empty { path: shown(path) });
        }
        Ok(p)
    }

    /// True for the root directory.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as given to cap-std (`.` for the root).
    pub fn as_str(&self) -> &str {
        if self.0.is_empty() { "." } else { &self.0 }
    }

    /// The parent directory, or `None` for a top-level entry or the root.
    pub fn parent(&self) -> Option<VfsPath> {
        self.0.rsplit_once('/').map(|(p, _)| VfsPath(p.to_string()))
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit_once('/').map_or(&self.0, |(_, n)| n)
    }
}

impl fmt::Display for VfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_dots_and_slashes() {
        assert_eq!(
            VfsPath::parse("notes/today.md").unwrap().as_str(),
            "notes/today.md"
        );
        assert_eq!(
            VfsPath::parse("./notes//today.md/").unwrap().as_str(),
            "notes/today.md"
        );
        assert_eq!(VfsPath::parse("a/./b/./c").unwrap().as_str(), "a/b/c");
        assert_eq!(
            VfsPath::parse("...").unwrap().as_str(),
            "...",
            "three dots is an ordinary name"
        );
        assert!(VfsPath::parse_dir("").unwrap().is_root());
        assert!(VfsPath::parse_dir("./.").unwrap().is_root());
        assert_eq!(VfsPath::parse_dir(".").unwrap().as_str(), ".");
    }

    #[test]
    fn refuses_escapes_with_a_precise_reason() {
        assert!(matches!(
            VfsPath::parse(".."),
            Err(PathError::Parent { .. })
        ));
        assert!(matches!(
            VfsPath::parse("a/../../etc"),
            Err(PathError::Parent { .. })
        ));
        assert!(matches!(
            VfsPath::parse("a/b/.."),
            Err(PathError::Parent { .. })
        ));
        assert!(matches!(
            VfsPath::parse("/etc/passwd"),
            Err(PathError::Absolute { .. })
        ));
        assert!(matches!(
            VfsPath::parse("//x"),
            Err(PathError::Absolute { .. })
        ));
        assert!(matches!(VfsPath::parse("a\0b"), Err(PathError::Nul { .. })));
        assert!(matches!(
            VfsPath::parse("..\\x"),
            Err(PathError::Backslash { .. })
        ));
        assert!(matches!(
            VfsPath::parse("C:\\x"),
            Err(PathError::Backslash { .. })
        ));
        assert!(matches!(
            VfsPath::parse("a\nb"),
            Err(PathError::Control { code: 0x0a, .. })
        ));
        assert!(matches!(
            VfsPath::parse(".ahv-tmp-1"),
            Err(PathError::Reserved { .. })
        ));
        assert!(matches!(
            VfsPath::parse("d/.ahvx/y"),
            Err(PathError::Reserved { .. })
        ));
        assert!(matches!(VfsPath::parse(""), Err(PathError::Empty { .. })));
        assert!(matches!(VfsPath::parse("./"), Err(PathError::Empty { .. })));
    }

    #[test]
    fn refuses_over_long_paths() {
        assert_eq!(
            VfsPath::parse(&"x".repeat(2000)),
            Err(PathError::TooLong {
                len: 2000,
                max: MAX_PATH_BYTES
            })
        );
        assert!(matches!(
            VfsPath::parse(&"x".repeat(256)),
            Err(PathError::ComponentTooLong {
                len: 256,
                max: MAX_COMPONENT_BYTES,
                ..
            })
        ));
        assert!(VfsPath::parse(&"x".repeat(255)).is_ok());
        let deep = vec!["d"; 33].join("/");
        assert!(matches!(
            VfsPath::parse(&deep),
            Err(PathError::TooDeep { depth: 33, .. })
        ));
        let msg = VfsPath::parse(&format!("{}/..", "y".repeat(100)))
            .unwrap_err()
            .to_string();
        assert!(
            msg.len() < 200 && msg.contains("`..`"),
            "messages stay short: {msg}"
        );
    }

    #[test]
    fn parent_and_file_name() {
        let p = VfsPath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c.txt");
        assert_eq!(VfsPath::parse("top").unwrap().parent(), None);
    }

    proptest! {
        /// Whatever the input, a parsed path never has `..`, a leading `/`,
        /// empty or `.` components, NUL or backslash, and parsing is idempotent.
        #[test]
        fn parsed_paths_are_normal_and_stable(s in "[a-z./\\\\\0]{0,40}") {
            if let Ok(p) = VfsPath::parse_dir(&s) {
                let t = p.as_str();
                prop_assert!(!t.starts_with('/'));
                prop_assert!(!t.contains('\0') && !t.contains('\\'));
                if !p.is_root() {
                    for part in t.split('/') {
                        prop_assert!(!part.is_empty() && part != "." && part != "..");
                    }
                }
                prop_assert_eq!(VfsPath::parse_dir(t).unwrap(), p.clone());
            }
        }

        #[test]
        fn any_input_is_handled_without_panic(s in "\\PC{0,2000}") {
            let _ = VfsPath::parse(&s);
        }
    }
}
