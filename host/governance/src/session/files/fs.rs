//! Filesystem helpers: error mapping, entry checks that open nothing, and
//! moving and making directories inside the session.

use std::io;

use cap_std::fs::Dir;

use crate::open;
use crate::path::RESERVED_PREFIX;
use crate::vfs::{Vfs, VfsError};

use super::namespace::{AreaPath, in_guest_terms};

pub(super) fn symlink_denied(path: String) -> VfsError {
    VfsError::Denied {
        path,
        reason: "is a symbolic link; links are never modified".into(),
    }
}

/// Refuses a symlink or a FIFO, socket or device node at `key` (nothing
/// there is fine): what a rename, a link or an unlink may not touch.
pub(super) fn refuse_unservable(
    dir: &Dir,
    key: &AreaPath,
    op: &'static str,
) -> Result<(), VfsError> {
    open::refusal(dir, &key.rel)
        .map(drop)
        .map_err(|r| VfsError::refused(op, key.guest(), r))
}

pub(super) fn special_denied(path: String, kind: &str) -> VfsError {
    VfsError::Denied {
        path,
        reason: open::special_reason(kind),
    }
}

/// Why a non-directory entry that is not a file of the session is not one:
/// a FIFO, socket or device node is `Denied`, anything else is `NotFound`.
pub(super) fn not_a_file(path: String, m: &cap_std::fs::Metadata) -> VfsError {
    match open::special(m.file_type()) {
        Some(kind) => special_denied(path, kind),
        None => VfsError::NotFound { path },
    }
}

/// Whether anything (a symlink included) is at `rel`.
pub(super) fn entry_exists(dir: &Dir, rel: &str) -> io::Result<bool> {
    match dir.symlink_metadata(rel) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates (if needed) and opens directory `rel` below `parent`, refusing a
/// symlink in its place.
pub(super) fn open_area(parent: &Dir, rel: &str) -> io::Result<Dir> {
    parent.create_dir_all(rel)?;
    if parent.symlink_metadata(rel)?.file_type().is_symlink() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a symbolic link stands where a session directory belongs",
        ));
    }
    parent.open_dir(rel)
}

pub(super) fn remove_all_if_exists(dir: &Dir, rel: &str) -> io::Result<()> {
    match dir.symlink_metadata(rel) {
        Ok(m) if m.is_dir() => dir.remove_dir_all(rel),
        Ok(_) => dir.remove_file(rel),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The ancestors of `rel` that do not exist yet, deepest first (a write or
/// rename creates them; its undo removes them again).
pub(super) fn missing_ancestors(dir: &Dir, rel: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut cur = rel;
    while let Some((parent, _)) = cur.rsplit_once('/') {
        match dir.symlink_metadata(parent) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(parent.to_string());
                cur = parent;
            }
            _ => break,
        }
    }
    missing
}

/// After a failed change: removes whichever of the directories it was to make
/// (deepest first) it did make; returns how many of them are left (counted
/// then, as any directory is).
pub(super) fn unmake_dirs(dir: &Dir, made: &[String]) -> u64 {
    let existing: Vec<String> = made
        .iter()
        .filter(|d| entry_exists(dir, d).unwrap_or(false))
        .cloned()
        .collect();
    existing.len() as u64 - remove_dirs(dir, &existing)
}

/// Removes directories made by an undone change, deepest first, stopping at
/// the first that is not empty (something else lives there now); returns how
/// many it removed.
pub(super) fn remove_dirs(dir: &Dir, made: &[String]) -> u64 {
    let mut removed = 0;
    for d in made {
        if dir.remove_dir(d).is_err() {
            break;
        }
        removed += 1;
    }
    removed
}

pub(super) fn create_parent(vfs: &Vfs, key: &AreaPath) -> Result<(), VfsError> {
    match key.rel.rsplit_once('/') {
        Some((parent, _)) => vfs
            .create_dir(parent)
            .map_err(|e| in_guest_terms(e, &key.area)),
        None => Ok(()),
    }
}

/// How deep and how long the paths below a directory are.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Extent {
    /// Most components below it.
    pub(super) depth: usize,
    /// Most bytes below it, each component with its leading `/`.
    pub(super) bytes: usize,
}

/// The extent of the entries below directory `rel` (symbolic links not
/// followed, the host's reserved names left out), looking at most `max`
/// levels down. A directory removed, or replaced by a file, while it is
/// walked counts as gone: it was empty when it went, and whatever moves
/// in meanwhile is the caller's to notice ([`super::meta::Db::reshaped_since`]).
///
/// # Errors
/// Any other failure to read a directory below (too many open files, no
/// permission): a part it could not see might nest deeper than it may, so
/// it is not taken as empty.
pub(super) fn extent_below(dir: &Dir, rel: &str, max: usize) -> io::Result<Extent> {
    fn gone(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
        )
    }
    fn walk(dir: Dir, depth: usize, bytes: usize, max: usize, out: &mut Extent) -> io::Result<()> {
        let entries = match dir.entries() {
            Ok(entries) => entries,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        // The listing holds descriptors of its own: `dir`'s is not kept
        // open beside them down the walk.
        drop(dir);
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                // Linux reads a directory removed after it was opened as ENOENT.
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            let (d, b) = (depth + 1, bytes + 1 + name.len());
            out.depth = out.depth.max(d);
            out.bytes = out.bytes.max(b);
            if d >= max {
                continue;
            }
            let sub = open::listed_type(&entry)
                .map(|t| t.is_dir())
                .and_then(|dir| dir.then(|| open_below(&entry)).transpose());
            match sub {
                Ok(Some(sub)) => walk(sub, d, b, max, out)?,
                Ok(None) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    let mut out = Extent::default();
    match dir.open_dir(if rel.is_empty() { "." } else { rel }) {
        Ok(top) => walk(top, 0, 0, max, &mut out)?,
        Err(e) if gone(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// Opens the directory `entry` names, for [`extent_below`].
fn open_below(entry: &cap_std::fs::DirEntry) -> io::Result<Dir> {
    #[cfg(test)]
    if let Some(kind) = tests::FAIL_OPEN_BELOW.with(std::cell::Cell::take) {
        return Err(io::Error::new(kind, "injected by a test"));
    }
    entry.open_dir()
}

/// Moves an entry from one area to another (both under the session directory).
pub(super) fn move_across(
    from: &Vfs,
    src: &AreaPath,
    to: &Vfs,
    dst: &AreaPath,
) -> Result<(), VfsError> {
    refuse_unservable(from.dir(), src, "rename")?;
    create_parent(to, dst)?;
    from.dir()
        .rename(&src.rel, to.dir(), &dst.rel)
        .map_err(|e| VfsError::io("rename", dst.guest(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::files::test_support::*;

    thread_local! {
        /// Makes this thread's next [`open_below`] fail with this kind.
        pub(super) static FAIL_OPEN_BELOW: std::cell::Cell<Option<io::ErrorKind>> =
            const { std::cell::Cell::new(None) };
    }

    /// A directory the walk cannot open might nest deeper than a guest may
    /// name: the rename is refused, not made as if it were empty. One
    /// removed while it is walked was empty when it went: the rename goes
    /// through.
    #[test]
    fn a_rename_whose_measure_cannot_read_a_subdirectory_is_refused() {
        let e = env();
        let a = id("alice");
        e.files.create_dir(ring2(&a), "top/sub/deeper").unwrap();
        FAIL_OPEN_BELOW.set(Some(io::ErrorKind::QuotaExceeded));
        let refused = e.files.rename(ring2(&a), "top", "moved");
        assert!(
            matches!(&refused, Err(VfsError::Io { op: "rename", path, message })
                if path == "top" && message.contains("injected by a test")),
            "{refused:?}"
        );
        assert!(
            FAIL_OPEN_BELOW.get().is_none(),
            "the walk did not open a subdirectory"
        );
        assert!(e.files.stat(ring2(&a), "top/sub/deeper").is_ok());
        // Gone meanwhile: measured as empty, and the rename is made.
        FAIL_OPEN_BELOW.set(Some(io::ErrorKind::NotFound));
        e.files.rename(ring2(&a), "top", "moved").unwrap();
        assert!(FAIL_OPEN_BELOW.get().is_none());
        assert!(e.files.stat(ring2(&a), "moved/sub/deeper").is_ok());
    }

    #[test]
    fn planted_symlinks_reach_nothing_outside_their_area() {
        let e = env();
        let (a, b) = (id("alice"), id("bob"));
        e.files.set_strict(false);
        let root = e.tmp.path();
        std::fs::write(root.join("outside.txt"), b"outside").unwrap();
        let other = e.sessions().join("s2/files/shared");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("secret.txt"), b"other session").unwrap();
        e.files.write(ring2(&b), "secret", b"bob's secret").unwrap();
        e.files.write(ring2(&a), "mine", b"alice").unwrap();
        e.files.write(ring2(&a), "shared/doc", b"doc").unwrap();
        e.files.write(ring2(&a), "shared/doc2", b"doc2").unwrap();
        e.files.write(ring2(&a), "shared/doc3", b"doc3").unwrap();
        e.files.write(ring2(&a), "known", b"known").unwrap();

        let shared = e.files_dir().join("shared");
        let private = e.files_dir().join("agents/alice");
        let link = |target: &Path, at: &Path| std::os::unix::fs::symlink(target, at).unwrap();
        link(Path::new("../agents/bob/secret"), &shared.join("to-bob"));
        link(Path::new("../agents/bob"), &shared.join("to-bob-dir"));
        link(
            Path::new("../../../s2/files/shared/secret.txt"),
            &shared.join("to-other"),
        );
        link(&root.join("outside.txt"), &shared.join("to-outside"));
        link(root, &shared.join("to-outside-dir"));
        link(Path::new("../bob/secret"), &private.join("to-bob"));
        link(Path::new("../../shared"), &private.join("to-shared-dir"));
        // Known files replaced behind the session's back: reads go to disk
        // and must be stopped by cap-std.
        for (at, target) in [
            (shared.join("doc"), PathBuf::from("../agents/bob/secret")),
            (
                shared.join("doc2"),
                PathBuf::from("../../../s2/files/shared/secret.txt"),
            ),
            (shared.join("doc3"), root.join("outside.txt")),
            (private.join("known"), PathBuf::from("../bob/secret")),
        ] {
            std::fs::remove_file(&at).unwrap();
            link(&target, &at);
        }
        let before_outside = tree(root.join("sessions/s2").as_path());
        let bob_before = tree(&e.files_dir().join("agents/bob"));

        let who = ring2(&a);
        let secrets: [&[u8]; 3] = [b"bob's secret", b"other session", b"outside"];
        for path in [
            "shared/to-bob",
            "shared/to-other",
            "shared/to-outside",
            "shared/doc",
            "shared/doc2",
            "shared/doc3",
            "to-bob",
            "known",
            "shared/to-bob-dir/secret",
            "shared/to-outside-dir/outside.txt",
            "to-shared-dir/doc",
        ] {
            match e.files.read(who, path) {
                Err(VfsError::Denied { .. } | VfsError::NotFound { .. }) => {}
                Ok(bytes) => panic!(
                    "read {path} returned {:?} (a secret: {})",
                    String::from_utf8_lossy(&bytes),
                    secrets.contains(&bytes.as_slice())
                ),
                Err(other) => panic!("read {path}: unexpected {other:?}"),
            }
            // A known file's hash comes from the session's metadata: the
            // content the session wrote, never a planted target's.
            if let Ok(h) = e.files.hash(who, path) {
                assert!(!secrets.iter().any(|s| sha256(s) == h), "hash {path}");
            }
            assert!(e.files.write(who, path, b"pwned").is_err(), "write {path}");
            assert!(
                e.files.append(who, path, b"pwned").is_err(),
                "append {path}"
            );
            assert!(e.files.truncate(who, path, 0).is_err(), "truncate {path}");
            assert!(e.files.delete(who, path).is_err(), "delete {path}");
            assert!(
                e.files.rename(who, path, "stolen").is_err(),
                "rename {path}"
            );
            // An ACL lives in the metadata: for a known file it may change
            // (touching nothing on disk); for anything else there is none.
            let known = ["shared/doc", "shared/doc2", "shared/doc3", "known"];
            assert!(
                known.contains(&path)
                    || e.files
                        .set_acl(who, path, acl(&a, Access::Everyone, Access::Everyone))
                        .is_err(),
                "set_acl {path}"
            );
        }
        for dir in [
            "shared/to-bob-dir",
            "shared/to-outside-dir",
            "to-shared-dir",
        ] {
            assert!(is_denied(e.files.list(who, dir)), "list {dir}");
            assert!(
                is_denied(e.files.write(who, &format!("{dir}/new.txt"), b"x")),
                "write into {dir}"
            );
            assert!(
                is_denied(e.files.create_dir(who, &format!("{dir}/sub"))),
                "mkdir in {dir}"
            );
            assert!(
                is_denied(e.files.rename(who, "mine", &format!("{dir}/mine"))),
                "move into {dir}"
            );
        }
        // Links are not shown, not even where a known file was.
        assert!(e.files.list(who, "shared").unwrap().is_empty());
        assert_eq!(e.files.list(who, "").unwrap(), ["mine", "shared"]);

        assert_eq!(std::fs::read(root.join("outside.txt")).unwrap(), b"outside");
        assert_eq!(tree(root.join("sessions/s2").as_path()), before_outside);
        assert_eq!(tree(&e.files_dir().join("agents/bob")), bob_before);
        assert_eq!(e.files.read(ring2(&b), "secret").unwrap(), b"bob's secret");
        let outside: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            outside.len(),
            2,
            "only sessions/ and outside.txt: {outside:?}"
        );
    }

    /// Every operation on a FIFO, socket or device node (at an unknown path,
    /// or where a file of the session was) answers `Denied` at once;
    /// listings hide them; snapshots skip the unknown ones and refuse a
    /// file of the session that became one; nothing waits on them.
    #[test]
    fn special_entries_are_refused_without_waiting() {
        use crate::open::tests::{mkdev, mkfifo, quickly, socket};
        let Env { tmp, files } = env();
        let files = Arc::new(files);
        let a = id("alice");
        files.set_strict(false);
        files.write(ring2(&a), "shared/known", b"known").unwrap();
        files.write(ring2(&a), "mine", b"mine").unwrap();
        files.write(ring2(&a), "shared/keep", b"keep").unwrap();
        let base = tmp.path().join("sessions/s1/files");
        let (shared, private) = (base.join("shared"), base.join("agents/alice"));
        mkfifo(&shared.join("fifo"));
        mkfifo(&private.join("pfifo"));
        let _listener = socket(&shared.join("sock"));
        let mut unknown = vec!["shared/fifo", "pfifo", "shared/sock"];
        if mkdev(&shared.join("dev")) {
            unknown.push("shared/dev");
        }
        // A snapshot skips entries that are not files of the session.
        let snap = {
            let f = files.clone();
            quickly("snapshot", move || f.snapshot()).unwrap()
        };
        assert_eq!(snap.files, 3);
        // Files of the session replaced behind its back.
        std::fs::remove_file(shared.join("known")).unwrap();
        mkfifo(&shared.join("known"));
        std::fs::remove_file(private.join("mine")).unwrap();
        mkfifo(&private.join("mine"));

        type Op = fn(&SessionFiles, Caller<'_>, &str) -> Result<(), VfsError>;
        let ops: [(&str, Op); 8] = [
            ("read", |f, w, p| f.read(w, p).map(drop)),
            ("append", |f, w, p| f.append(w, p, b"x").map(drop)),
            ("truncate", |f, w, p| f.truncate(w, p, 0).map(drop)),
            ("write", |f, w, p| f.write(w, p, b"x").map(drop)),
            ("delete", |f, w, p| f.delete(w, p).map(drop)),
            ("rename", |f, w, p| f.rename(w, p, "moved").map(drop)),
            ("stat", |f, w, p| f.stat(w, p).map(drop)),
            ("hash", |f, w, p| f.hash(w, p).map(drop)),
        ];
        for path in unknown.iter().copied().chain(["shared/known", "mine"]) {
            for (what, op) in ops {
                let known = path == "shared/known" || path == "mine";
                // A file of the session is described from its metadata,
                // which touches nothing on disk; truncate of an unknown
                // path is NotFound before anything is looked at.
                if known && matches!(what, "stat" | "hash") {
                    continue;
                }
                let (f, agent) = (files.clone(), a.clone());
                let r = quickly(&format!("{what} {path}"), move || {
                    op(&f, ring2(&agent), path)
                });
                let ok = match (&r, what) {
                    (Err(VfsError::Denied { path: p, reason }), _) => {
                        p == path
                            && (reason.contains("FIFO")
                                || reason.contains("socket")
                                || reason.contains("device"))
                    }
                    (Err(VfsError::NotFound { .. }), "truncate") => !known,
                    _ => false,
                };
                assert!(ok, "{what} {path}: {r:?}");
            }
        }
        // Listings show neither the planted entries nor the replaced files.
        assert_eq!(files.list(ring2(&a), "shared").unwrap(), ["keep"]);
        assert_eq!(files.list(ring2(&a), "").unwrap(), ["shared"]);
        // A file of the session that is now a FIFO: the snapshot cannot be
        // exact, so it fails (naming it) and keeps nothing.
        let f = files.clone();
        match quickly("snapshot", move || f.snapshot()) {
            Err(VfsError::Denied { path, .. }) => {
                assert!(path == "shared/known" || path == "mine", "{path}")
            }
            other => panic!("snapshot over a FIFO: {other:?}"),
        }
        assert!(!base.join("../snapshots/2").exists());
        // A restore never opens what was planted in the snapshot's copy.
        let copy = tmp
            .path()
            .join("sessions/s1/snapshots")
            .join(snap.id.to_string());
        std::fs::remove_file(copy.join("shared/keep")).unwrap();
        mkfifo(&copy.join("shared/keep"));
        let f = files.clone();
        assert!(matches!(
            quickly("restore", move || f.restore(snap.id)),
            Err(VfsError::Denied { path, .. }) if path == "shared/keep"
        ));
        assert!(
            std::fs::symlink_metadata(shared.join("keep"))
                .unwrap()
                .is_file(),
            "a failed restore leaves the session as it was"
        );
        assert_eq!(files.read(ring2(&a), "shared/keep").unwrap(), b"keep");
    }

    /// A hard link planted where a file of the session was (or made to one
    /// of its files from outside) is never changed in place; the file
    /// outside keeps its bytes through every operation and every undo.
    #[test]
    fn planted_hard_links_are_never_changed_in_place() {
        let e = env();
        let a = id("alice");
        let w = ring2(&a);
        e.files.set_strict(false);
        let outside = e.tmp.path().join("outside.txt");
        std::fs::write(&outside, b"outside").unwrap();
        let shared = e.files_dir().join("shared");
        e.files.write(w, "shared/doc", b"outside").unwrap();
        let appended = e.files.append(w, "shared/grow", b"abc").unwrap();
        let appended = e
            .files
            .append(w, "shared/grow", b"def")
            .unwrap()
            .undo
            .or(appended.undo)
            .unwrap();
        let truncated = e.files.truncate(w, "shared/grow", 2).unwrap().undo.unwrap();
        // Replace the session's files with links to the outside file.
        std::fs::remove_file(shared.join("doc")).unwrap();
        std::fs::hard_link(&outside, shared.join("doc")).unwrap();
        fn linked<T>(r: Result<T, VfsError>) -> bool {
            matches!(&r, Err(VfsError::Denied { reason, .. }) if reason.contains("hard links"))
        }
        assert!(linked(e.files.append(w, "shared/doc", b" pwned")));
        assert!(linked(e.files.truncate(w, "shared/doc", 1)));
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        // An undo that would truncate or append in place is refused too.
        let link = e.tmp.path().join("grow-link");
        std::fs::hard_link(shared.join("grow"), &link).unwrap();
        assert!(linked(e.files.undo(truncated)));
        assert_eq!(std::fs::read(&link).unwrap(), b"ab");
        std::fs::remove_file(&link).unwrap();
        e.files.undo(truncated).unwrap();
        assert_eq!(e.files.read(w, "shared/grow").unwrap(), b"abcdef");
        std::fs::hard_link(shared.join("grow"), &link).unwrap();
        assert!(linked(e.files.undo(appended)));
        assert_eq!(std::fs::read(&link).unwrap(), b"abcdef");
        // A write puts a new inode at the path; the outside file keeps its bytes.
        let c = e.files.write(w, "shared/doc", b"new").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        assert_eq!(e.files.read(w, "shared/doc").unwrap(), b"new");
        e.files.append(w, "shared/doc", b"!").unwrap();
        assert_eq!(e.files.read(w, "shared/doc").unwrap(), b"new!");
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        // Its undo puts the old entry back (the link), changing no bytes.
        e.files.undo(c.undo.unwrap()).unwrap_err();
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
    }
}
