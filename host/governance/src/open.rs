//! Opening directory entries so that no VFS operation can wait in the kernel
//! or change an inode that is linked from somewhere else.
//!
//! A FIFO opened for reading waits for a writer (and for writing, for a
//! reader); a device's `open` runs its driver; a file with a lease waits for
//! the lease holder. Any of them, planted in an agent's directory by an
//! operator, an earlier process or another tool, would stop a synchronous
//! host call where neither the call's deadline nor the kill switch can reach
//! it. So every operation that opens an entry goes through [`open_file`]:
//!
//! 1. a type check by path (`stat`, which opens nothing), so that a special
//!    entry found at rest is refused without being opened at all;
//! 2. the open itself with `O_NONBLOCK | O_NOCTTY` (cap-std adds
//!    `O_CLOEXEC`), and `O_NOFOLLOW` for changes, so that an entry swapped in
//!    between the two steps cannot block the open either;
//! 3. the authoritative check, `fstat` on the opened handle: anything but a
//!    regular file is refused, and a file that will be changed in place must
//!    have exactly one link.
//!
//! `O_NONBLOCK` stays set on the handle: Linux ignores it for regular files,
//! which are the only handles that survive step 3.
//!
//! Entries that are never opened (a rename, a hard link, an unlink) are
//! checked with [`refusal`] on their `lstat` type; those calls do not wait on
//! the entry, whatever it is.

use std::io::{self, Read, Write};

use cap_std::fs::{
    Dir, File, FileType, FileTypeExt, Metadata, MetadataExt, OpenOptions, OpenOptionsExt,
};
use rustix::fs::OFlags;

/// What an entry is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// Reading. Symbolic links are followed as far as cap-std lets them
    /// (never out of the directory).
    Read,
    /// Appending, creating the file when nothing is at the path. Links are
    /// not followed and the file must have no other name.
    Append,
    /// Changing an existing file in place (its length). Links are not
    /// followed and the file must have no other name.
    Change,
}

/// Why an entry was not opened.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The OS refused (nothing there, an escape, …).
    Io(io::Error),
    /// A symbolic link where a change needs the file itself.
    Symlink,
    /// A directory.
    Directory,
    /// A FIFO, socket or device node: its description.
    Special(&'static str),
    /// A file to be changed in place has this many links: the change would
    /// reach every other name of it too.
    Linked(u64),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Refusal {
        Refusal::Io(e)
    }
}

impl Refusal {
    /// Why, for an error message (after the path).
    pub(crate) fn reason(&self) -> String {
        match self {
            Refusal::Io(e) => e.to_string(),
            Refusal::Symlink => "is a symbolic link; links are never modified".into(),
            Refusal::Directory => "is a directory".into(),
            Refusal::Special(kind) => special_reason(kind),
            Refusal::Linked(n) => format!(
                "has {n} hard links; a file with other names is never changed in place \
                 (the change would reach them too)"
            ),
        }
    }
}

/// The type of a listed entry, not following a link. Some filesystems'
/// listings do not say (`DT_UNKNOWN`: XFS without `ftype`, some FUSE and
/// network filesystems), and cap-std then gives an unknown type where std
/// would ask: those entries are asked with `lstat`, so that a directory is
/// never taken for something else.
///
/// # Errors
/// The listing's or `lstat`'s error (`NotFound` if the entry went meanwhile).
pub(crate) fn listed_type(entry: &cap_std::fs::DirEntry) -> io::Result<FileType> {
    let listed = entry.file_type()?;
    if listed != FileType::unknown() {
        return Ok(listed);
    }
    Ok(entry.metadata()?.file_type())
}

/// The reason given for refusing a FIFO, socket or device node.
pub(crate) fn special_reason(kind: &str) -> String {
    format!("is {kind}; only regular files and directories are served")
}

/// What a FIFO, socket or device node is, or `None` for a regular file, a
/// directory or a symbolic link.
pub(crate) fn special(t: FileType) -> Option<&'static str> {
    if t.is_file() || t.is_dir() || t.is_symlink() {
        None
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else {
        Some("not a regular file")
    }
}

/// Why the entry at `rel` may not be renamed, replaced, linked or removed
/// (its `lstat` type: a symbolic link or a special entry), `Ok(None)` when
/// nothing is there, `Ok(Some(meta))` otherwise.
pub(crate) fn refusal(dir: &Dir, rel: &str) -> Result<Option<Metadata>, Refusal> {
    match dir.symlink_metadata(rel) {
        Ok(m) if m.file_type().is_symlink() => Err(Refusal::Symlink),
        Ok(m) => match special(m.file_type()) {
            Some(kind) => Err(Refusal::Special(kind)),
            None => Ok(Some(m)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Refusal::Io(e)),
    }
}

/// Opens the regular file at `rel` for `how`, never waiting on the entry
/// (see the module docs); returns the handle and its `fstat`.
pub(crate) fn open_file(dir: &Dir, rel: &str, how: How) -> Result<(File, Metadata), Refusal> {
    let flags = OFlags::NONBLOCK | OFlags::NOCTTY;
    let mut opts = OpenOptions::new();
    match how {
        How::Read => {
            let m = dir.metadata(rel)?;
            if m.is_dir() {
                return Err(Refusal::Directory);
            }
            if let Some(kind) = special(m.file_type()) {
                return Err(Refusal::Special(kind));
            }
            opts.read(true).custom_flags(flags.bits() as i32);
        }
        How::Append | How::Change => {
            match refusal(dir, rel)? {
                Some(m) if m.is_dir() => return Err(Refusal::Directory),
                None if how == How::Change => {
                    return Err(Refusal::Io(io::ErrorKind::NotFound.into()));
                }
                _ => {}
            }
            if how == How::Append {
                opts.append(true).create(true);
            } else {
                opts.write(true);
            }
            opts.custom_flags((flags | OFlags::NOFOLLOW).bits() as i32);
        }
    }
    let file = dir.open_with(rel, &opts).map_err(|e| {
        // O_NOFOLLOW's ELOOP, from a link swapped in after the check.
        match dir.symlink_metadata(rel) {
            Ok(m) if how != How::Read && m.file_type().is_symlink() => Refusal::Symlink,
            _ => Refusal::Io(e),
        }
    })?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(Refusal::Directory);
    }
    if let Some(kind) = special(meta.file_type()) {
        return Err(Refusal::Special(kind));
    }
    if how != How::Read && meta.nlink() > 1 {
        return Err(Refusal::Linked(meta.nlink()));
    }
    Ok((file, meta))
}

/// Reads the regular file at `rel`, at most `max` bytes; `Ok(None)` when it
/// holds more.
pub(crate) fn read_file(dir: &Dir, rel: &str, max: u64) -> Result<Option<Vec<u8>>, Refusal> {
    let (file, meta) = open_file(dir, rel, How::Read)?;
    if meta.len() > max {
        return Ok(None);
    }
    let buf = read_prefix(file, max.saturating_add(1), meta.len())?;
    if buf.len() as u64 > max {
        return Ok(None);
    }
    Ok(Some(buf))
}

/// The first `len` bytes of `file` (fewer if it ends sooner), into a buffer
/// made for `expected` bytes (what the file is thought to hold; it grows if
/// there are more); `take` bounds the read even if the file grows meanwhile.
pub(crate) fn read_prefix(file: File, len: u64, expected: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(usize::try_from(expected.min(len)).unwrap_or(0));
    file.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Creates `name` in `dir` with `bytes`, never through an entry already
/// there: one left at the name (a planted link or FIFO, a stale file) is
/// unlinked first, and the file is created with `O_EXCL`, which follows
/// nothing.
pub(crate) fn write_new(dir: &Dir, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut file = create_new(dir, name)?;
    file.write_all(bytes)
}

/// Creates `name` in `dir` as a new, empty regular file (see [`write_new`]).
pub(crate) fn create_new(dir: &Dir, name: &str) -> io::Result<File> {
    let opts = || {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        o
    };
    match dir.open_with(name, &opts()) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            dir.remove_file(name)?;
            dir.open_with(name, &opts())
        }
        r => r,
    }
}

/// Copies the regular file `from` in `src` to a new file `to` in `dst`, at
/// most `max` bytes; refuses anything but a regular file and a file larger
/// than `max`. Returns the bytes copied.
pub(crate) fn copy_file(
    src: &Dir,
    from: &str,
    dst: &Dir,
    to: &str,
    max: u64,
) -> Result<u64, Refusal> {
    let (file, meta) = open_file(src, from, How::Read)?;
    let too_big = || {
        Refusal::Io(io::Error::other(format!(
            "the file is larger than the {max}-byte limit"
        )))
    };
    if meta.len() > max {
        return Err(too_big());
    }
    let mut out = create_new(dst, to)?;
    let copied = io::copy(&mut file.take(max.saturating_add(1)), &mut out)?;
    if copied > max {
        let _ = dst.remove_file(to);
        return Err(too_big());
    }
    Ok(copied)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Makes a FIFO at `at`.
    pub(crate) fn mkfifo(at: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            at,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
    }

    /// Makes a Unix socket at `at` (kept bound while the listener lives).
    pub(crate) fn socket(at: &Path) -> std::os::unix::net::UnixListener {
        std::os::unix::net::UnixListener::bind(at).unwrap()
    }

    /// Makes a character device node (1, 3: what `/dev/null` is) at `at`;
    /// `false`, with the reason printed, where the OS refuses `mknod`.
    pub(crate) fn mkdev(at: &Path) -> bool {
        match rustix::fs::mknodat(
            rustix::fs::CWD,
            at,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        ) {
            Ok(()) => true,
            Err(e) if e == rustix::io::Errno::PERM => {
                eprintln!("skipping the device-node case: mknod refused with EPERM (not root)");
                false
            }
            Err(e) => panic!("mknod {}: {e}", at.display()),
        }
    }

    /// Runs `f` on its own thread and fails, naming `what`, if it has not
    /// answered within five seconds: what an open that waits on a FIFO would
    /// do forever. (The stuck thread is left behind; the test has failed.)
    pub(crate) fn quickly<T: Send + 'static>(
        what: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let start = Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r,
            Err(_) => panic!(
                "{what} did not answer within {:?}: it waits on the entry",
                start.elapsed()
            ),
        }
    }

    fn dir(t: &tempfile::TempDir) -> Dir {
        Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap()
    }

    #[test]
    fn special_entries_are_refused_without_waiting() {
        let t = tempfile::tempdir().unwrap();
        mkfifo(&t.path().join("fifo"));
        let _l = socket(&t.path().join("sock"));
        let dev = mkdev(&t.path().join("dev"));
        let d = Arc::new(dir(&t));
        let mut names = vec!["fifo", "sock"];
        if dev {
            names.push("dev");
        }
        for name in names {
            for how in [How::Read, How::Append, How::Change] {
                let d = d.clone();
                let r = quickly(name, move || open_file(&d, name, how));
                assert!(
                    matches!(r, Err(Refusal::Special(_))),
                    "{name} {how:?}: {r:?}"
                );
            }
            assert!(matches!(refusal(&d, name), Err(Refusal::Special(_))));
            let d2 = d.clone();
            assert!(quickly(name, move || copy_file(&d2, name, &d2, "copy", 100)).is_err());
            assert!(!t.path().join("copy").exists());
        }
    }

    /// A read's buffer is made for the file it reads, not for the limit.
    #[test]
    fn a_small_read_takes_memory_for_its_size() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("small"), b"first").unwrap();
        let d = dir(&t);
        let bytes = read_file(&d, "small", 16 << 20).unwrap().unwrap();
        assert_eq!(bytes, b"first");
        assert!(bytes.capacity() < 1024, "{} bytes held", bytes.capacity());
        let (file, _) = open_file(&d, "small", How::Read).unwrap();
        let prefix = read_prefix(file, 3, 3).unwrap();
        assert_eq!((prefix.as_slice(), prefix.capacity()), (&b"fir"[..], 3));
    }

    #[test]
    fn a_fifo_swapped_in_after_the_type_check_is_refused_by_the_handle() {
        // The open itself must not wait: O_NONBLOCK on a FIFO with no writer.
        let t = tempfile::tempdir().unwrap();
        mkfifo(&t.path().join("fifo"));
        let d = dir(&t);
        let mut opts = OpenOptions::new();
        opts.read(true)
            .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32);
        let f = quickly("open", move || d.open_with("fifo", &opts)).unwrap();
        assert!(special(f.metadata().unwrap().file_type()).is_some());
    }

    #[test]
    fn files_with_other_links_are_never_changed_in_place() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"outside").unwrap();
        std::fs::hard_link(outside.path().join("victim"), t.path().join("link")).unwrap();
        let d = dir(&t);
        assert!(matches!(
            open_file(&d, "link", How::Append),
            Err(Refusal::Linked(2))
        ));
        assert!(matches!(
            open_file(&d, "link", How::Change),
            Err(Refusal::Linked(2))
        ));
        assert!(open_file(&d, "link", How::Read).is_ok(), "reading is fine");
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"outside"
        );
    }

    #[test]
    fn new_files_never_go_through_a_planted_entry() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"outside").unwrap();
        std::fs::hard_link(outside.path().join("victim"), t.path().join("a")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), t.path().join("b")).unwrap();
        mkfifo(&t.path().join("c"));
        let d = Arc::new(dir(&t));
        for name in ["a", "b", "c"] {
            let d = d.clone();
            quickly(name, move || write_new(&d, name, b"new")).unwrap();
            assert_eq!(std::fs::read(t.path().join(name)).unwrap(), b"new");
        }
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"outside"
        );
    }

    #[test]
    fn reads_and_copies_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"12345").unwrap();
        let d = dir(&t);
        assert_eq!(read_file(&d, "f", 5).unwrap().unwrap(), b"12345");
        assert!(read_file(&d, "f", 4).unwrap().is_none());
        assert!(copy_file(&d, "f", &d, "g", 4).is_err());
        assert!(!t.path().join("g").exists());
        assert_eq!(copy_file(&d, "f", &d, "g", 5).unwrap(), 5);
        assert!(matches!(
            open_file(&d, ".", How::Read),
            Err(Refusal::Directory)
        ));
        assert!(matches!(
            open_file(&d, "missing", How::Change),
            Err(Refusal::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
    }
}
