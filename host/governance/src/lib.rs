//! # ahv-governance: the rules, as plain Rust
//!
//! Everything here is domain logic with typed errors and no wasmtime: the
//! runtime's host functions are thin adapters over these types.
//!
//! - [`path`]: guest path validation and normalisation;
//! - [`vfs`]: an agent's files over a `cap_std::fs::Dir`;
//! - [`session::files`] (also [`session_vfs`]): a shared session's files: shared and private areas,
//!   ACLs, quotas, hashes, vector clocks, undo records and snapshots;
//! - [`actions`]: host-registered reversible actions and effects;
//! - [`session`]: shared-session configuration, lifecycle and join rules;
//! - [`locks`]: intent locks with a wait-for graph and deadlock detection;
//! - [`state`]: the session's versioned key-value state and isolation levels;
//! - [`vclock`]: vector clocks and what each agent has seen;
//! - [`files`]: the file capability as a trait (standalone or session VFS);
//! - [`session_core`]: one session's files, state, locks and clocks, with events;
//! - [`journal`]: the changes a step made, and undoing them newest first.
//!
//! ```
//! use ahv_governance::vfs::{Vfs, VfsError, VfsLimits};
//! use ahv_governance::path::PathError;
//! use cap_std::{ambient_authority, fs::Dir};
//!
//! let tmp = tempfile::tempdir()?;
//! let vfs = Vfs::new(Dir::open_ambient_dir(tmp.path(), ambient_authority())?, VfsLimits::default());
//! vfs.write("notes/today.md", b"- buy milk\n")?;
//! assert_eq!(vfs.read("notes/today.md")?, b"- buy milk\n");
//! // Nothing outside the directory is reachable.
//! assert!(matches!(vfs.read("../etc/passwd"), Err(VfsError::InvalidPath(PathError::Parent { .. }))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod actions;
pub mod files;
pub mod journal;
pub mod locks;
mod open;
pub mod path;
pub mod session;
pub mod session_core;
/// The session VFS under its first name (now [`session::files`]).
pub use session::files as session_vfs;
pub mod state;
pub mod vclock;
pub mod vfs;
