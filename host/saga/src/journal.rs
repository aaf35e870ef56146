//! Durable, crash-safe, append-only record logs of saga progress: one file per
//! saga, `<dir>/<saga>.journal`.
//!
//! An append returns only once its record is on stable storage (`write` +
//! `sync_data`; the first append to a new file also syncs the directory).
//! Loading never silently accepts damage: a crash can only tear the end of a
//! file, so a damaged region with a valid record after it is corruption (an
//! error), and a damaged end is a torn tail, reported apart from the records
//! and cut by [`FileJournal::repair`], which keeps the cut bytes as evidence.
//!
//! # On-disk format, version 1
//!
//! A journal file is frames back to back, with no file header:
//!
//! ```text
//! offset  size  field
//! +0      1     magic and version: 0xA1 (high nibble 0xA marks a journal frame, low nibble the version)
//! +1      4     len: u32 little-endian, payload length, at most MAX_RECORD (16 MiB)
//! +5      4     crc: u32 little-endian, CRC-32C (Castagnoli) of the 4 len bytes then the payload
//! +9      len   payload (opaque bytes)
//! ```
//!
//! The checksum covers the length so that a zero-filled block, which file
//! systems can leave behind after a crash, is not a valid empty record. A
//! reader treats a magic byte it does not know as damage; a later version gets
//! a new magic byte, and its readers keep reading version 1 frames.
//!
//! # Recovery rules
//!
//! Frames are read in order until one fails to parse (unknown magic, length
//! above [`MAX_RECORD`], payload past the end of the file, or a checksum
//! mismatch). If a valid frame starts anywhere after that point, the file is
//! [`JournalError::Corrupt`] at the failed frame; otherwise the rest of the
//! file is a [`TornTail`]. A torn record whose payload happens to contain a
//! whole encoded frame is therefore reported as corruption: the conservative
//! answer. Searching for a later frame is bounded (a fixed amount of checksum
//! work); a file that exhausts it is reported as corrupt too.
//!
//! One [`FileJournal`] per directory: two processes appending to the same
//! journal are not serialised. Saga ids become file names, so on a
//! case-insensitive file system ids differing only in case share a journal.
//!
//! ```
//! use ahv_saga::journal::FileJournal;
//!
//! let dir = tempfile::tempdir()?;
//! let journal = FileJournal::open(&dir.path().join("sagas"))?;
//! journal.append("saga-1", b"step a committed")?;
//! journal.append("saga-1", b"step b committed")?;
//!
//! // After a restart: every intact record, in order, and any torn tail apart.
//! let journal = FileJournal::open(&dir.path().join("sagas"))?;
//! assert_eq!(journal.list()?, ["saga-1"]);
//! let loaded = journal.load("saga-1")?;
//! assert_eq!(loaded.records, [b"step a committed".to_vec(), b"step b committed".to_vec()]);
//! if loaded.torn_tail.is_some() {
//!     journal.repair("saga-1")?; // later appends go after the last good record
//! }
//! journal.remove("saga-1")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The magic and version byte that starts every version 1 frame.
pub const FRAME_MAGIC: u8 = 0xA1;
/// Length of a frame header (magic, len, crc).
pub const FRAME_HEADER_LEN: usize = 9;
/// The largest record payload written or read (16 MiB); a larger length field is damage.
pub const MAX_RECORD: u32 = 16 << 20;
/// The longest saga id accepted.
pub const MAX_ID_LEN: usize = 128;
/// Handles kept open between appends; beyond this, idle ones are closed, least recently used first.
pub const HANDLE_CACHE: usize = 64;

const SUFFIX: &str = ".journal";
// Bounds the search for a valid frame after damage: a crafted file could make it quadratic.
const RESYNC_BUDGET: u64 = 256 << 20;
// Repeated repairs at one offset get numbered evidence files; past this, something is wrong.
const MAX_EVIDENCE_FILES: u32 = 1000;

/// What went wrong in a journal operation, naming the saga and the path or offset.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The saga id is not `[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?`, ≤ 128 chars, without `..`.
    #[error(
        "invalid saga id {id:?}: want 1..=128 of [a-zA-Z0-9._-], alphanumeric at both ends, no \"..\""
    )]
    BadId {
        /// The rejected id.
        id: String,
    },
    /// The record is larger than [`MAX_RECORD`].
    #[error("record of {len} bytes for saga {saga} exceeds the {MAX_RECORD}-byte limit")]
    TooLarge {
        /// The saga appended to.
        saga: String,
        /// The record's length.
        len: usize,
    },
    /// A damaged frame is followed by valid data: not a crash, so nothing is cut.
    #[error("journal of saga {saga} is corrupt at offset {offset}")]
    Corrupt {
        /// The saga whose journal is damaged.
        saga: String,
        /// Where the first damaged frame starts.
        offset: u64,
    },
    /// The journal ends in a torn tail; [`FileJournal::repair`] must cut it before appending.
    #[error(
        "journal of saga {saga} has a torn tail at offset {offset}; repair it before appending"
    )]
    TornTail {
        /// The saga whose journal is torn.
        saga: String,
        /// Where the torn tail starts.
        offset: u64,
    },
    /// The saga has no journal.
    #[error("no journal for saga {saga} at {path}")]
    NotFound {
        /// The saga looked up.
        saga: String,
        /// Where its journal would be.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("could not {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// The file system operation behind a [`JournalError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Creating the journal directory.
    CreateDir,
    /// Listing the journal directory.
    ListDir,
    /// Opening or creating a journal file.
    Open,
    /// Reading a journal file.
    Read,
    /// Writing a record.
    Write,
    /// Syncing a file or directory to stable storage.
    Sync,
    /// Cutting a torn tail off a journal.
    Truncate,
    /// Saving a torn tail to its evidence file.
    SaveTorn,
    /// Deleting a journal.
    Remove,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::CreateDir => "create directory",
            IoOp::ListDir => "list directory",
            IoOp::Open => "open",
            IoOp::Read => "read",
            IoOp::Write => "append to",
            IoOp::Sync => "sync",
            IoOp::Truncate => "cut the torn tail of",
            IoOp::SaveTorn => "save a torn tail to",
            IoOp::Remove => "remove",
        })
    }
}

fn io_err(op: IoOp, path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The bytes after the last intact record of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Where the torn region starts: the end of the last intact record.
    pub offset: u64,
    /// How many bytes it spans, to the end of the file.
    pub len: u64,
}

/// A journal as read back: its intact records and what follows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Every intact record, in append order.
    pub records: Vec<Vec<u8>>,
    /// The torn end of the file, if any.
    pub torn_tail: Option<TornTail>,
}

/// What [`FileJournal::repair`] cut and where it kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The torn tail that was cut.
    pub torn_tail: TornTail,
    /// The evidence file holding the cut bytes (`<saga>.journal.torn-<offset>`).
    pub evidence: PathBuf,
}

/// A directory of saga journals; share it across threads (it is `Send + Sync`).
#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    by_saga: HashMap<String, (Arc<Mutex<Slot>>, u64)>,
    tick: u64,
}

// One per saga: its lock serialises every operation on that saga's file.
#[derive(Debug, Default)]
struct Slot {
    handle: Option<File>,
}

impl FileJournal {
    /// Opens the journal directory, creating it (mode 0700 on unix) if needed.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] if the directory cannot be created or synced.
    pub fn open(dir: &Path) -> Result<FileJournal, JournalError> {
        if !dir.is_dir() {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(io_err(IoOp::CreateDir, dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(io_err(IoOp::Sync, parent))?;
            }
        }
        Ok(FileJournal {
            dir: dir.to_path_buf(),
            slots: Mutex::default(),
        })
    }

    /// Appends one record to the saga's journal and makes it durable.
    ///
    /// # Errors
    ///
    /// [`JournalError::BadId`], [`JournalError::TooLarge`]; [`JournalError::TornTail`] or
    /// [`JournalError::Corrupt`] if the existing file is damaged (checked when it is first
    /// opened); [`JournalError::Io`] if writing or syncing fails, after which the record is
    /// not in the journal (a partial write is cut back, or found as a torn tail later).
    pub fn append(&self, saga: &str, record: &[u8]) -> Result<(), JournalError> {
        validate_id(saga)?;
        if record.len() > MAX_RECORD as usize {
            return Err(JournalError::TooLarge {
                saga: saga.to_owned(),
                len: record.len(),
            });
        }
        let path = self.path_of(saga);
        let slot = self.slot(saga);
        let mut slot = lock(&slot);
        let created = match slot.handle {
            Some(_) => false,
            None => {
                let (file, created) = self.open_for_append(saga, &path)?;
                slot.handle = Some(file);
                created
            }
        };
        let Some(file) = slot.handle.as_mut() else {
            return Err(io_err(IoOp::Open, &path)(io::ErrorKind::NotFound.into()));
        };
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + record.len());
        encode_frame(&mut frame, record);
        let before = file.metadata().map_err(io_err(IoOp::Read, &path))?.len();
        let mut written = file.write_all(&frame).and_then(|()| file.sync_data());
        if written.is_ok() && created {
            written = sync_dir(&self.dir);
        }
        if let Err(source) = written {
            // A half-written frame must not stay before the next append; if cutting it fails
            // too, the dropped handle makes the next append rescan and find the torn tail.
            if created {
                let _ = fs::remove_file(&path); // best effort: a leftover empty file is harmless
            } else if let Err(cut) = file.set_len(before).and_then(|()| file.sync_data()) {
                tracing::warn!(saga, path = %path.display(), error = %cut, "could not cut a failed append");
            }
            slot.handle = None;
            return Err(io_err(IoOp::Write, &path)(source));
        }
        Ok(())
    }

    /// Reads every intact record of the saga's journal and reports any torn tail.
    ///
    /// # Errors
    ///
    /// [`JournalError::BadId`], [`JournalError::NotFound`], [`JournalError::Corrupt`] if a
    /// damaged frame has valid data after it, [`JournalError::Io`] if reading fails.
    pub fn load(&self, saga: &str) -> Result<Loaded, JournalError> {
        validate_id(saga)?;
        let slot = self.slot(saga);
        let _guard = lock(&slot);
        let bytes = self.read(saga)?;
        let (records, torn_tail) = scan_checked(saga, &bytes)?;
        let records = records
            .into_iter()
            .map(|r| bytes.get(r).unwrap_or_default().to_vec())
            .collect();
        Ok(Loaded { records, torn_tail })
    }

    /// Cuts a torn tail off the saga's journal, first saving the cut bytes to
    /// `<saga>.journal.torn-<offset>` (numbered `.1`, `.2`, … if that exists); `None` if clean.
    ///
    /// # Errors
    ///
    /// [`JournalError::BadId`], [`JournalError::NotFound`], [`JournalError::Corrupt`] (never
    /// cut: that needs a person), [`JournalError::Io`] if saving or cutting fails.
    pub fn repair(&self, saga: &str) -> Result<Option<Repaired>, JournalError> {
        validate_id(saga)?;
        let slot = self.slot(saga);
        let mut slot = lock(&slot);
        slot.handle = None;
        let bytes = self.read(saga)?;
        let Some(torn_tail) = scan_checked(saga, &bytes)?.1 else {
            return Ok(None);
        };
        let path = self.path_of(saga);
        let cut = bytes
            .get(usize::try_from(torn_tail.offset).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        // Evidence first: the torn bytes are durable elsewhere before the journal loses them.
        let evidence = self.save_evidence(&path, torn_tail.offset, cut)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(IoOp::Open, &path))?;
        file.set_len(torn_tail.offset)
            .and_then(|()| file.sync_all())
            .map_err(io_err(IoOp::Truncate, &path))?;
        tracing::warn!(saga, offset = torn_tail.offset, len = torn_tail.len,
            evidence = %evidence.display(), "cut the torn tail of a saga journal");
        Ok(Some(Repaired {
            torn_tail,
            evidence,
        }))
    }

    /// The ids of the sagas that have a journal, sorted.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] if the directory cannot be listed.
    pub fn list(&self) -> Result<Vec<String>, JournalError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(IoOp::ListDir, &self.dir))? {
            let entry = entry.map_err(io_err(IoOp::ListDir, &self.dir))?;
            let name = entry.file_name();
            let id = name.to_str().and_then(|n| n.strip_suffix(SUFFIX));
            if let Some(id) = id.filter(|id| validate_id(id).is_ok()) {
                ids.push(id.to_owned());
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Deletes the saga's journal (its torn-tail evidence files stay).
    ///
    /// # Errors
    ///
    /// [`JournalError::BadId`], [`JournalError::NotFound`], [`JournalError::Io`] if the file
    /// cannot be removed or the directory synced.
    pub fn remove(&self, saga: &str) -> Result<(), JournalError> {
        validate_id(saga)?;
        let path = self.path_of(saga);
        let slot = self.slot(saga);
        let mut slot = lock(&slot);
        slot.handle = None;
        fs::remove_file(&path).map_err(|e| not_found_or(saga, &path, IoOp::Remove, e))?;
        sync_dir(&self.dir).map_err(io_err(IoOp::Sync, &self.dir))
    }

    fn path_of(&self, saga: &str) -> PathBuf {
        self.dir.join(format!("{saga}{SUFFIX}"))
    }

    fn read(&self, saga: &str) -> Result<Vec<u8>, JournalError> {
        let path = self.path_of(saga);
        fs::read(&path).map_err(|e| not_found_or(saga, &path, IoOp::Read, e))
    }

    // The saga's slot, created if needed; idle slots beyond HANDLE_CACHE are dropped. A slot
    // is idle when only the map holds it, and clones are made only under the map's lock, so
    // an evicted slot can never be in use: two live slots for one saga cannot exist.
    fn slot(&self, saga: &str) -> Arc<Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.tick += 1;
        let tick = slots.tick;
        let slot = match slots.by_saga.get_mut(saga) {
            Some((slot, used)) => {
                *used = tick;
                Arc::clone(slot)
            }
            None => {
                let slot = Arc::new(Mutex::new(Slot::default()));
                slots
                    .by_saga
                    .insert(saga.to_owned(), (Arc::clone(&slot), tick));
                slot
            }
        };
        while slots.by_saga.len() > HANDLE_CACHE {
            let idle = slots
                .by_saga
                .iter()
                .filter(|(_, (s, _))| Arc::strong_count(s) == 1);
            let Some(oldest) = idle
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break; // every slot is in use: the map shrinks again once they finish
            };
            slots.by_saga.remove(&oldest);
        }
        slot
    }

    // Opens for appending; an existing file is scanned once so nothing is appended after damage.
    fn open_for_append(&self, saga: &str, path: &Path) -> Result<(File, bool), JournalError> {
        let mut options = OpenOptions::new();
        options.read(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.clone().create_new(true).open(path) {
            Ok(file) => return Ok((file, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(IoOp::Open, path)(e)),
        }
        let mut file = options.open(path).map_err(io_err(IoOp::Open, path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err(IoOp::Read, path))?;
        if let Some(torn) = scan_checked(saga, &bytes)?.1 {
            return Err(JournalError::TornTail {
                saga: saga.to_owned(),
                offset: torn.offset,
            });
        }
        Ok((file, false))
    }

    fn save_evidence(
        &self,
        path: &Path,
        offset: u64,
        bytes: &[u8],
    ) -> Result<PathBuf, JournalError> {
        let base = format!("{}.torn-{offset}", path.display());
        for n in 0..MAX_EVIDENCE_FILES {
            let evidence = PathBuf::from(if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            });
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = match options.open(&evidence) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(IoOp::SaveTorn, &evidence)(e)),
            };
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .and_then(|()| sync_dir(&self.dir))
                .map_err(io_err(IoOp::SaveTorn, &evidence))?;
            return Ok(evidence);
        }
        Err(io_err(IoOp::SaveTorn, Path::new(&base))(
            io::ErrorKind::AlreadyExists.into(),
        ))
    }
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| {
        // Whoever panicked may have been mid-append: reopen (and rescan) rather than trust the handle.
        let mut guard = poisoned.into_inner();
        guard.handle = None;
        guard
    })
}

fn not_found_or(saga: &str, path: &Path, op: IoOp, e: io::Error) -> JournalError {
    if e.kind() == io::ErrorKind::NotFound {
        JournalError::NotFound {
            saga: saga.to_owned(),
            path: path.to_path_buf(),
        }
    } else {
        io_err(op, path)(e)
    }
}

/// Checks a saga id: 1..=128 of `[a-zA-Z0-9._-]`, alphanumeric at both ends, no `..`.
///
/// # Errors
///
/// [`JournalError::BadId`] naming the id.
pub fn validate_id(id: &str) -> Result<(), JournalError> {
    let bytes = id.as_bytes();
    let inner_ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    let ok = id.len() <= MAX_ID_LEN
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(inner_ok)
        && !id.contains("..");
    if ok {
        Ok(())
    } else {
        Err(JournalError::BadId { id: id.to_owned() })
    }
}

/// Flushes a directory's entries (a rename or a new file in it).
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

// Directories cannot be opened as files elsewhere; their entries are durable with the file.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

// Callers check `payload.len() <= MAX_RECORD` first.
fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len_bytes = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    out.push(FRAME_MAGIC);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame_crc(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

// The payload range of a valid frame at `pos`, without checking its checksum.
fn frame_bounds(bytes: &[u8], pos: usize) -> Option<(std::ops::Range<usize>, [u8; 4], u32)> {
    let header = bytes.get(pos..pos.checked_add(FRAME_HEADER_LEN)?)?;
    let (&magic, rest) = header.split_first()?;
    let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let crc = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(len_bytes);
    if magic != FRAME_MAGIC || len > MAX_RECORD {
        return None;
    }
    let start = pos + FRAME_HEADER_LEN;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= bytes.len()).then_some((start..end, len_bytes, crc))
}

fn frame_at(bytes: &[u8], pos: usize) -> Option<std::ops::Range<usize>> {
    let (body, len_bytes, crc) = frame_bounds(bytes, pos)?;
    (frame_crc(len_bytes, bytes.get(body.clone())?) == crc).then_some(body)
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Clean {
        records: Vec<std::ops::Range<usize>>,
        torn_at: Option<usize>,
    },
    Corrupt {
        offset: usize,
    },
}

fn scan(bytes: &[u8], budget: u64) -> Scan {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match frame_at(bytes, pos) {
            Some(body) => {
                pos = body.end;
                records.push(body);
            }
            None if valid_frame_after(bytes, pos, budget) => return Scan::Corrupt { offset: pos },
            None => {
                return Scan::Clean {
                    records,
                    torn_at: Some(pos),
                };
            }
        }
    }
    Scan::Clean {
        records,
        torn_at: None,
    }
}

// True if a valid frame starts after `pos`, or if the search ran out of budget: not
// finding one within it does not prove the damage is only a torn tail.
fn valid_frame_after(bytes: &[u8], pos: usize, mut budget: u64) -> bool {
    for q in pos + 1..bytes.len() {
        let Some((body, len_bytes, crc)) = frame_bounds(bytes, q) else {
            continue;
        };
        let cost = body.len() as u64 + 4;
        if cost > budget {
            return true;
        }
        budget -= cost;
        if bytes
            .get(body)
            .is_some_and(|b| frame_crc(len_bytes, b) == crc)
        {
            return true;
        }
    }
    false
}

fn scan_checked(
    saga: &str,
    bytes: &[u8],
) -> Result<(Vec<std::ops::Range<usize>>, Option<TornTail>), JournalError> {
    match scan(bytes, RESYNC_BUDGET) {
        Scan::Corrupt { offset } => Err(JournalError::Corrupt {
            saga: saga.to_owned(),
            offset: offset as u64,
        }),
        Scan::Clean { records, torn_at } => {
            let torn = torn_at.map(|at| TornTail {
                offset: at as u64,
                len: (bytes.len() - at) as u64,
            });
            Ok((records, torn))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn journal() -> (tempfile::TempDir, FileJournal) {
        let dir = tempfile::tempdir().unwrap();
        let journal = FileJournal::open(&dir.path().join("j")).unwrap();
        (dir, journal)
    }

    fn encode_all(records: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for r in records {
            encode_frame(&mut bytes, r);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    fn write_raw(j: &FileJournal, saga: &str, bytes: &[u8]) {
        fs::write(j.path_of(saga), bytes).unwrap();
    }

    #[test]
    fn frame_bytes_match_the_documented_format() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut frame = Vec::new();
        encode_frame(&mut frame, b"abc");
        let crc = crc32c::crc32c(&[3, 0, 0, 0, b'a', b'b', b'c']).to_le_bytes();
        let expected = [&[0xA1, 3, 0, 0, 0][..], &crc, b"abc"].concat();
        assert_eq!(frame, expected);
        let (dir, j) = journal();
        j.append("s", b"abc").unwrap();
        assert_eq!(fs::read(dir.path().join("j/s.journal")).unwrap(), expected);
    }

    #[test]
    fn appended_records_load_in_order() {
        let (_dir, j) = journal();
        for r in [&b"one"[..], b"", b"three"] {
            j.append("saga-1", r).unwrap();
        }
        let loaded = j.load("saga-1").unwrap();
        assert_eq!(loaded.records, [b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(loaded.torn_tail, None);
    }

    #[test]
    fn a_record_survives_dropping_the_handle_without_a_flush() {
        // Within one process this shows only that nothing sits in a user-space buffer;
        // surviving power loss rests on the sync_data every append does.
        let dir = tempfile::tempdir().unwrap();
        let first = FileJournal::open(dir.path()).unwrap();
        first.append("s", b"kept").unwrap();
        drop(first);
        let loaded = FileJournal::open(dir.path()).unwrap().load("s").unwrap();
        assert_eq!(loaded.records, [b"kept".to_vec()]);
    }

    #[test]
    fn bad_ids_are_refused_and_good_ones_accepted() {
        let long_ok = "a".repeat(MAX_ID_LEN);
        for good in ["a", "9", "saga-1", "a.b_c-d", long_ok.as_str()] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(MAX_ID_LEN + 1);
        let (_dir, j) = journal();
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            "a:b",
            ".a",
            "a.",
            "-a",
            "a/b",
            "a\\b",
            "a b",
            "é",
            too_long.as_str(),
        ] {
            assert!(
                matches!(j.append(bad, b"x"), Err(JournalError::BadId { id }) if id == bad),
                "{bad:?}"
            );
            assert!(matches!(j.load(bad), Err(JournalError::BadId { .. })));
        }
    }

    #[test]
    fn an_oversized_record_is_refused_before_touching_the_file() {
        let (_dir, j) = journal();
        let big = vec![0u8; MAX_RECORD as usize + 1];
        let err = j.append("s", &big).unwrap_err();
        assert!(
            matches!(err, JournalError::TooLarge { ref saga, len } if saga == "s" && len == big.len())
        );
        assert!(matches!(j.load("s"), Err(JournalError::NotFound { .. })));
    }

    #[test]
    fn a_zero_filled_end_is_a_torn_tail_that_repair_cuts_and_keeps() {
        let (dir, j) = journal();
        j.append("s", b"good").unwrap();
        let good_len = fs::metadata(j.path_of("s")).unwrap().len();
        let mut bytes = fs::read(j.path_of("s")).unwrap();
        bytes.extend_from_slice(&[0; 20]);
        write_raw(&j, "s", &bytes);
        let j = FileJournal::open(&dir.path().join("j")).unwrap();
        let torn = TornTail {
            offset: good_len,
            len: 20,
        };
        assert_eq!(
            j.load("s").unwrap(),
            Loaded {
                records: vec![b"good".to_vec()],
                torn_tail: Some(torn)
            }
        );
        assert!(
            matches!(j.append("s", b"x"), Err(JournalError::TornTail { offset, .. }) if offset == good_len)
        );

        let repaired = j.repair("s").unwrap().unwrap();
        assert_eq!(repaired.torn_tail, torn);
        assert_eq!(
            repaired.evidence,
            dir.path().join(format!("j/s.journal.torn-{good_len}"))
        );
        assert_eq!(fs::read(&repaired.evidence).unwrap(), [0; 20]);
        j.append("s", b"next").unwrap();
        assert_eq!(
            j.load("s").unwrap().records,
            [b"good".to_vec(), b"next".to_vec()]
        );
        assert_eq!(j.repair("s").unwrap(), None);
        assert_eq!(j.list().unwrap(), ["s"]);
    }

    #[test]
    fn a_second_repair_at_the_same_offset_keeps_both_evidence_files() {
        let (_dir, j) = journal();
        for tail in [&b"\xA1\x05"[..], b"\xA1\x06"] {
            write_raw(&j, "s", tail);
            j.repair("s").unwrap();
        }
        assert_eq!(
            fs::read(j.dir.join("s.journal.torn-0")).unwrap(),
            b"\xA1\x05"
        );
        assert_eq!(
            fs::read(j.dir.join("s.journal.torn-0.1")).unwrap(),
            b"\xA1\x06"
        );
    }

    #[test]
    fn damage_before_a_valid_record_is_corrupt_everywhere() {
        let (_dir, j) = journal();
        let (mut bytes, ends) =
            encode_all(&[b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]);
        bytes[ends[0] + FRAME_HEADER_LEN] ^= 0x40; // a payload byte of the second record
        write_raw(&j, "s", &bytes);
        let offset = ends[0] as u64;
        assert!(
            matches!(j.load("s"), Err(JournalError::Corrupt { ref saga, offset: o }) if saga == "s" && o == offset)
        );
        assert!(matches!(j.repair("s"), Err(JournalError::Corrupt { .. })));
        assert!(matches!(
            j.append("s", b"x"),
            Err(JournalError::Corrupt { .. })
        ));
        assert_eq!(
            fs::read(j.path_of("s")).unwrap(),
            bytes,
            "nothing is cut on corruption"
        );
    }

    #[test]
    fn a_search_that_runs_out_of_budget_reports_corruption() {
        let (mut bytes, _) = encode_all(&[b"ok".to_vec()]);
        bytes.push(0); // a bad frame, then one whose checksum would need more work than allowed
        encode_frame(&mut bytes, b"payload");
        assert_eq!(scan(&bytes, 0), Scan::Corrupt { offset: 11 });
        bytes.truncate(bytes.len() - 1); // the later frame is now torn, so no valid frame follows
        assert!(matches!(
            scan(&bytes, RESYNC_BUDGET),
            Scan::Clean {
                torn_at: Some(11),
                ..
            }
        ));
    }

    #[test]
    fn list_names_only_journals_and_remove_deletes_one() {
        let (_dir, j) = journal();
        j.append("b", b"1").unwrap();
        j.append("a.journal", b"1").unwrap();
        fs::write(j.dir.join("b.journal.torn-9"), b"x").unwrap();
        fs::write(j.dir.join("notes.txt"), b"x").unwrap();
        fs::write(j.dir.join("-bad.journal"), b"x").unwrap();
        assert_eq!(j.list().unwrap(), ["a.journal", "b"]);
        j.remove("b").unwrap();
        assert_eq!(j.list().unwrap(), ["a.journal"]);
        assert!(matches!(j.load("b"), Err(JournalError::NotFound { ref saga, .. }) if saga == "b"));
        assert!(matches!(j.remove("b"), Err(JournalError::NotFound { .. })));
        j.append("b", b"again").unwrap();
        assert_eq!(j.load("b").unwrap().records, [b"again".to_vec()]);
    }

    #[cfg(unix)]
    #[test]
    fn the_directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        FileJournal::open(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn idle_handles_beyond_the_cache_size_are_closed() {
        let (_dir, j) = journal();
        for i in 0..HANDLE_CACHE + 10 {
            j.append(&format!("s{i}"), b"x").unwrap();
        }
        assert_eq!(j.slots.lock().unwrap().by_saga.len(), HANDLE_CACHE);
        assert!(
            j.slots
                .lock()
                .unwrap()
                .by_saga
                .contains_key(&format!("s{}", HANDLE_CACHE + 9))
        );
        assert!(
            !j.slots.lock().unwrap().by_saga.contains_key("s0"),
            "least recently used goes first"
        );
        j.append("s0", b"y").unwrap();
        assert_eq!(
            j.load("s0").unwrap().records,
            [b"x".to_vec(), b"y".to_vec()]
        );
    }

    #[test]
    fn concurrent_appends_are_serialised_per_saga() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FileJournal>();
        let (_dir, j) = journal();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let j = &j;
                s.spawn(move || {
                    for i in 0..20u8 {
                        j.append("shared", &[t, i]).unwrap();
                        j.append(&format!("own-{t}"), &[i]).unwrap();
                    }
                });
            }
        });
        let shared = j.load("shared").unwrap().records;
        assert_eq!(shared.len(), 80);
        for t in 0..4u8 {
            let mine: Vec<u8> = shared.iter().filter(|r| r[0] == t).map(|r| r[1]).collect();
            assert_eq!(mine, (0..20).collect::<Vec<_>>());
            assert_eq!(j.load(&format!("own-{t}")).unwrap().records.len(), 20);
        }
    }

    fn records() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_account_for_every_byte(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (_dir, j) = journal();
            write_raw(&j, "s", &bytes);
            match j.load("s") {
                Ok(loaded) => {
                    let (encoded, _) = encode_all(&loaded.records);
                    let torn = loaded.torn_tail.map_or(0, |t| t.len as usize);
                    prop_assert_eq!(encoded.len() + torn, bytes.len());
                    prop_assert_eq!(&bytes[..encoded.len()], &encoded[..]);
                }
                Err(JournalError::Corrupt { offset, .. }) => prop_assert!((offset as usize) < bytes.len()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        #[test]
        fn a_truncated_journal_loads_a_prefix(records in records(), cut in any::<prop::sample::Index>()) {
            let (_dir, j) = journal();
            let (bytes, ends) = encode_all(&records);
            let cut = cut.index(bytes.len() + 1);
            write_raw(&j, "s", &bytes[..cut]);
            let loaded = j.load("s").unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(&loaded.records[..], &records[..whole]);
            let last_end = if whole == 0 { 0 } else { ends[whole - 1] };
            let torn = (cut > last_end).then(|| TornTail { offset: last_end as u64, len: (cut - last_end) as u64 });
            prop_assert_eq!(loaded.torn_tail, torn);
        }

        #[test]
        fn a_flipped_byte_in_a_middle_record_is_corrupt(
            mut records in records(), extra in proptest::collection::vec(any::<u8>(), 0..64),
            which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), mask in 1..=255u8,
        ) {
            records.push(extra); // at least two records, so there is a middle one
            let (_dir, j) = journal();
            let (mut bytes, ends) = encode_all(&records);
            let i = which.index(records.len() - 1);
            let start = if i == 0 { 0 } else { ends[i - 1] };
            bytes[start + at.index(ends[i] - start)] ^= mask;
            write_raw(&j, "s", &bytes);
            let err = j.load("s").unwrap_err();
            prop_assert!(matches!(err, JournalError::Corrupt { offset, .. } if offset == start as u64), "{err}");
        }
    }
}
