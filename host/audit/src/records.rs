//! Crash-safe, append-only record files: the one on-disk framing shared by the
//! session delta logs, the commitment log and the signed-head log.
//!
//! This layer guarantees *crash safety*, not tamper evidence (the hash chain
//! and Merkle tree above it do that): a record is either fully present or
//! detectably absent, recovery keeps every complete record, and a torn or
//! damaged region is always reported, never silently accepted or dropped.
//!
//! # Format, version 1
//!
//! ```text
//! offset  size  field
//! 0       7     magic b"AHVLOG\0"
//! 7       1     format version (1)
//! 8       1     file kind (LogKind), chosen by the caller
//! 9       ...   records, back to back, each:
//!   +0    4     len: u32 little-endian, body length, at most MAX_RECORD
//!   +4    4     crc: u32 little-endian, CRC-32C (Castagnoli) of the 4 len bytes then the body
//!   +8    len   body (opaque bytes)
//! ```
//!
//! The checksum covers the length so that a zero-filled block, which many file
//! systems leave behind after a crash, is not a valid empty record
//! (CRC-32C of four zero bytes is `0x48674bc7`, not 0).
//!
//! # Recovery rules
//!
//! [`read_log`] reads records in order. A crash can only damage what was
//! written after the last sync, i.e. the end of the file, so:
//!
//! * a region that ends the file and does not form a valid record is a
//!   [`TornTail`]: fewer than 8 header bytes, a body running past the end, a
//!   length above [`MAX_RECORD`] (never allocated), or a checksum mismatch;
//! * a record whose checksum fails but which is *immediately followed by a
//!   valid record* cannot be a torn tail: it is listed in
//!   [`Recovered::corrupt`] by offset and reading continues after it.
//!
//! A damaged *length* field in the middle of the file cannot be told apart
//! from a torn tail (the next record cannot be found); it shows up as a torn
//! tail that is suspiciously long, and [`RecordWriter::open_append`] keeps its
//! bytes in a side file, so nothing is lost. Conversely, if a crash left
//! pages of the last unsynced batch on disk out of order, a hole followed by a
//! valid record would be reported as corruption: the conservative answer.
//!
//! # Example
//!
//! ```
//! use ahv_audit::records::{read_log, Durability, LogKind, RecordWriter};
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("session.log");
//! let mut w = RecordWriter::create(&path, LogKind::SESSION_DELTAS, Durability::default())?;
//! w.append(b"delta 0", Duration::ZERO)?;
//! w.close()?;
//! let log = read_log(&path, LogKind::SESSION_DELTAS)?;
//! assert_eq!(log.records[0].body, b"delta 0");
//! assert!(log.is_clean());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file magic, the first 7 bytes of every record file.
pub const MAGIC: [u8; 7] = *b"AHVLOG\0";
/// The format version this module writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the file header (magic, version, kind).
pub const HEADER_LEN: u64 = 9;
/// Length of a record header (len, crc).
pub const FRAME_HEADER_LEN: u64 = 8;
/// The largest record body accepted, written or read (16 MiB). Deltas are a
/// few hundred bytes; a larger length field is damage, not a record.
pub const MAX_RECORD: u32 = 16 << 20;

/// What a record file holds; stored in its header so that one kind of log can
/// never be read as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogKind(pub u8);

impl LogKind {
    /// A session's delta log.
    pub const SESSION_DELTAS: LogKind = LogKind(1);
    /// The commitment log (one commitment per terminated session).
    pub const COMMITMENTS: LogKind = LogKind(2);
    /// The signed-head log.
    pub const SIGNED_HEADS: LogKind = LogKind(3);
    /// The retention mark (one record: where retention resumes).
    pub const RETENTION_MARK: LogKind = LogKind(4);
    /// A segment: many sessions' deltas, in rounds each closed by a footer
    /// (see [`crate::segments`]).
    pub const SEGMENT: LogKind = LogKind(5);
}

impl fmt::Display for LogKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kind {}", self.0)
    }
}

/// One complete record, checksum verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// File offset of the record's header.
    pub offset: u64,
    /// The body as appended.
    pub body: Vec<u8>,
}

impl Record {
    /// File offset just past this record.
    pub fn end(&self) -> u64 {
        self.offset + FRAME_HEADER_LEN + self.body.len() as u64
    }
}

/// Why the bytes at the end of a file do not form a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailReason {
    /// Fewer than 8 bytes of a record header remain.
    PartialHeader {
        /// Bytes present.
        available: u64,
    },
    /// The body runs past the end of the file.
    PartialBody {
        /// Body length in the header.
        declared: u32,
        /// Body bytes present.
        available: u64,
    },
    /// The record is all there but its checksum fails (and no valid record follows).
    ChecksumMismatch {
        /// Body length in the header.
        declared: u32,
    },
    /// The length field exceeds [`MAX_RECORD`].
    LengthTooLarge {
        /// Body length in the header.
        declared: u32,
    },
}

/// The bytes after the last complete record, which are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the torn region starts (= [`Recovered::valid_len`]).
    pub offset: u64,
    /// How many bytes it has (to the end of the file).
    pub len: u64,
    /// Why it is not a record.
    pub reason: TailReason,
    /// Where [`RecordWriter::open_append`] saved the bytes; `None` from [`read_log`].
    pub saved_to: Option<PathBuf>,
}

/// A record in the middle of the file whose checksum fails although a valid
/// record follows it: damage, not a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptRecord {
    /// File offset of the damaged record's header.
    pub offset: u64,
    /// Body length in its header.
    pub declared: u32,
}

/// What [`read_log`] found in a record file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Every record that passed its checksum, in file order.
    pub records: Vec<Record>,
    /// Damaged records followed by valid ones, in file order.
    pub corrupt: Vec<CorruptRecord>,
    /// Offset just past the last valid record (the header length if none).
    pub valid_len: u64,
    /// The torn or damaged end of the file, if any.
    pub tail: Option<TornTail>,
}

impl Recovered {
    /// True when the file is exactly a header and valid records.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.tail.is_none()
    }
}

/// The file operation named in [`RecordError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Opening or creating the log.
    Open,
    /// Reading the log.
    Read,
    /// Writing or truncating the log; a writer keeps its pending records.
    Write,
    /// `fsync` of the log; a writer becomes poisoned (see [`RecordWriter`]).
    Sync,
    /// `fsync` of the directory (the path) holding a created or replaced file.
    SyncDir,
    /// Saving a torn tail to its side file (the path); the log is untouched.
    SaveTorn,
    /// Writing the replacement or renaming it over the log; the old log is untouched.
    Replace,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Open => "open record log",
            IoOp::Read => "read record log",
            IoOp::Write => "write record log",
            IoOp::Sync => "sync record log",
            IoOp::SyncDir => "sync directory",
            IoOp::SaveTorn => "save a torn tail to",
            IoOp::Replace => "replace record log",
        })
    }
}

/// Why a record file could not be read, written or replaced.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is shorter than the 9-byte header.
    #[error("record log {} has only {len} bytes, less than a header", path.display())]
    ShortHeader {
        /// The log.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The file does not start with [`MAGIC`].
    #[error("{} is not a record log (bad magic)", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// The header names a format version this code does not know.
    #[error("record log {} has format version {version}, expected {FORMAT_VERSION}", path.display())]
    UnsupportedVersion {
        /// The log.
        path: PathBuf,
        /// The version in its header.
        version: u8,
    },
    /// The header names another kind of log.
    #[error("record log {} is {found}, expected {expected}", path.display())]
    WrongKind {
        /// The log.
        path: PathBuf,
        /// The kind asked for.
        expected: LogKind,
        /// The kind in the header.
        found: LogKind,
    },
    /// A body longer than [`MAX_RECORD`] was given to append or rewrite.
    #[error("record of {len} bytes for {} exceeds the {MAX_RECORD}-byte limit", path.display())]
    RecordTooLarge {
        /// The log.
        path: PathBuf,
        /// The body length.
        len: usize,
    },
    /// The log has damaged records in the middle; appending would bury them.
    #[error("record log {} has {count} damaged record(s), the first at offset {offset}; refusing to append", path.display())]
    Corrupt {
        /// The log.
        path: PathBuf,
        /// Offset of the first damaged record.
        offset: u64,
        /// How many damaged records.
        count: usize,
    },
    /// A parked log's length changed while no writer had it open: something
    /// else wrote to it or cut it, and appending would build on bytes this
    /// writer never wrote.
    #[error("record log {} changed while parked: {expected} bytes written, {found} on disk; refusing to append", path.display())]
    ChangedWhileParked {
        /// The log.
        path: PathBuf,
        /// Its length when it was parked.
        expected: u64,
        /// Its length now.
        found: u64,
    },
    /// An earlier `fsync` failed, so the writer no longer knows what is on disk.
    #[error("record log {} writer is unusable after a failed sync; reopen the log", path.display())]
    Poisoned {
        /// The log.
        path: PathBuf,
    },
}

/// Maps an I/O error of `op` on `path` into a [`RecordError::Io`].
pub(crate) fn io(op: IoOp, path: &Path) -> impl FnOnce(io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        op,
        path: path.into(),
        source,
    }
}

/// The body length as a header field, if it is within [`MAX_RECORD`].
fn checked_len(path: &Path, body: &[u8]) -> Result<u32, RecordError> {
    u32::try_from(body.len())
        .ok()
        .filter(|&len| len <= MAX_RECORD)
        .ok_or_else(|| RecordError::RecordTooLarge {
            path: path.into(),
            len: body.len(),
        })
}

/// When appended records reach the disk, and so what a crash can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every `append` writes and syncs before returning. A crash loses nothing
    /// that `append` acknowledged.
    EveryRecord,
    /// `append` buffers and writes a group once `max_records` are pending; a
    /// background flusher calls [`RecordWriter::flush_if_due`] so no record
    /// waits longer than `max_delay`. A crash loses at most the last
    /// `max_records - 1` records, appended within the last `max_delay` (plus
    /// the flusher's tick). `max_records` of 0 or 1 syncs every record.
    GroupCommit {
        /// Pending records that force a write.
        max_records: usize,
        /// Longest a record may stay pending.
        max_delay: Duration,
    },
    /// Only [`RecordWriter::flush`] and [`RecordWriter::close`] write. A crash
    /// loses everything since the last explicit flush.
    OnClose,
}

impl Default for Durability {
    /// Group commit of 64 records or 10 ms.
    fn default() -> Self {
        Durability::GroupCommit {
            max_records: 64,
            max_delay: Duration::from_millis(10),
        }
    }
}

/// Appends records to one record file under a [`Durability`] policy.
///
/// Times (`now`) are readings of an injected monotonic clock such as
/// `ahv_core::clock::Clock::now`; the writer never reads a clock itself.
///
/// Failures: a failed *write* keeps the pending records (except the one whose
/// `append` failed, which is forgotten) and the next flush first cuts the file
/// back to [`durable_len`](Self::durable_len), then retries, so partial bytes
/// never precede a retried record. A failed *sync* is sticky: the kernel may
/// have dropped the dirty pages, so the writer refuses everything with
/// [`RecordError::Poisoned`]; reopen with [`open_append`](Self::open_append)
/// to learn what survived. Dropping the writer flushes on a best-effort basis;
/// call [`close`](Self::close) to see errors.
#[derive(Debug)]
pub struct RecordWriter {
    path: PathBuf,
    file: File,
    durability: Durability,
    /// Framed records not yet written; reused so steady-state appends do not allocate.
    buf: Vec<u8>,
    pending_records: usize,
    first_pending_since: Option<Duration>,
    durable_len: u64,
    /// A write failed part-way, so bytes past `durable_len` may be junk.
    dirty: bool,
    poisoned: bool,
}

impl RecordWriter {
    /// Creates a new, empty log (failing if `path` exists) and syncs it and its
    /// directory. The parent directory must exist.
    ///
    /// # Errors
    /// [`RecordError::Io`] naming the path: `Open` (also when the file
    /// exists), `Write`, `Sync`, `SyncDir`; after a failure past `Open` the
    /// new file is removed again (as far as the file system lets it).
    pub fn create(
        path: impl AsRef<Path>,
        kind: LogKind,
        durability: Durability,
    ) -> Result<RecordWriter, RecordError> {
        let mut w = RecordWriter::create_unsynced(path, kind, durability)?;
        let synced = (|| {
            w.write_unsynced()?;
            w.file.sync_all().map_err(io(IoOp::Sync, &w.path))?;
            sync_parent(&w.path)
        })();
        if let Err(e) = synced {
            // Not left behind half made: a retry must be able to create it
            // (an existing file means "sealed earlier" to a session log's
            // writer), and it holds nothing but its header. Poisoned first,
            // so that dropping it writes nothing more.
            w.poisoned = true;
            if let Err(rm) = std::fs::remove_file(&w.path) {
                tracing::warn!(path = %w.path.display(), error = %rm,
                    "a log whose creation failed could not be removed");
            }
            return Err(e);
        }
        Ok(w)
    }

    /// Like [`create`](Self::create) but without syncing the new file or its
    /// directory, and with the header pending like a record: it is written
    /// with the first records, in the same `pwrite` (the file stays empty
    /// until then). For a caller that syncs the whole file system afterwards
    /// (group commit over many logs: a write per new log saved). Until then
    /// the file may vanish in a crash, or be left empty (which readers
    /// report as a log without a header).
    ///
    /// # Errors
    /// [`RecordError::Io`] (`Open`, also when the file exists).
    pub fn create_unsynced(
        path: impl AsRef<Path>,
        kind: LogKind,
        durability: Durability,
    ) -> Result<RecordWriter, RecordError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io(IoOp::Open, path))?;
        let mut w = RecordWriter::new(path, file, durability, 0);
        w.buf.extend_from_slice(&file_header(kind));
        Ok(w)
    }

    /// Opens an existing log for appending after recovering it: a torn tail is
    /// saved to `<path>.torn-<offset>` (or `.torn-<offset>.N` if that exists),
    /// the log is cut back to [`Recovered::valid_len`] and synced. Returns the
    /// recovery report, with [`TornTail::saved_to`] set, for the caller to log.
    ///
    /// # Errors
    /// Header errors as [`read_log`]; [`RecordError::Corrupt`] if records in
    /// the middle are damaged (nothing is changed); [`RecordError::Io`].
    pub fn open_append(
        path: impl AsRef<Path>,
        kind: LogKind,
        durability: Durability,
    ) -> Result<(RecordWriter, Recovered), RecordError> {
        let mut records = Vec::new();
        let (writer, mut recovered) =
            Self::open_append_each(path, kind, durability, |r| records.push(r))?;
        recovered.records = records;
        Ok((writer, recovered))
    }

    /// [`RecordWriter::open_append`] for a log too long to hold in memory:
    /// each complete record is handed to `each`, in file order, as recovery
    /// reads it, and [`Recovered::records`] comes back empty. Memory is one
    /// record at a time. On an error `each` may have seen some records; they
    /// are still in the file, unchanged.
    ///
    /// # Errors
    /// As [`RecordWriter::open_append`].
    pub fn open_append_each(
        path: impl AsRef<Path>,
        kind: LogKind,
        durability: Durability,
        each: impl FnMut(Record),
    ) -> Result<(RecordWriter, Recovered), RecordError> {
        let path = path.as_ref();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(IoOp::Open, path))?;
        let mut recovered = recover(&file, path, kind, each)?;
        if let Some(first) = recovered.corrupt.first() {
            return Err(RecordError::Corrupt {
                path: path.into(),
                offset: first.offset,
                count: recovered.corrupt.len(),
            });
        }
        if let Some(tail) = &mut recovered.tail {
            // Evidence first: the torn bytes are durable elsewhere before the log loses them.
            tail.saved_to = Some(save_torn_tail(&mut file, path, tail)?);
            file.set_len(tail.offset).map_err(io(IoOp::Write, path))?;
            file.sync_all().map_err(io(IoOp::Sync, path))?;
        }
        let writer = RecordWriter::new(path, file, durability, recovered.valid_len);
        Ok((writer, recovered))
    }

    fn new(path: &Path, file: File, durability: Durability, durable_len: u64) -> RecordWriter {
        RecordWriter {
            path: path.into(),
            file,
            durability,
            buf: Vec::new(),
            pending_records: 0,
            first_pending_since: None,
            durable_len,
            dirty: false,
            poisoned: false,
        }
    }

    /// Appends one record and returns its file offset; writes and syncs when
    /// the durability policy says so. `now` starts the group-commit delay.
    ///
    /// # Errors
    /// [`RecordError::RecordTooLarge`] (nothing changes); `Io` from a
    /// policy-triggered flush, after which this record is not pending (an
    /// `Err` means "not appended"); `Poisoned` after an earlier sync failure.
    pub fn append(&mut self, body: &[u8], now: Duration) -> Result<u64, RecordError> {
        self.check_poisoned()?;
        let len = checked_len(&self.path, body)?;
        let mark = self.buf.len();
        let offset = self.durable_len + mark as u64;
        encode_frame(&mut self.buf, len, body);
        self.pending_records += 1;
        self.first_pending_since.get_or_insert(now);
        let due = match self.durability {
            Durability::EveryRecord => true,
            Durability::GroupCommit { max_records, .. } => self.pending_records >= max_records,
            Durability::OnClose => false,
        };
        if due && let Err(e) = self.flush() {
            // A later retry must not write a record whose append reported failure.
            self.buf.truncate(mark);
            self.pending_records -= 1;
            if self.pending_records == 0 {
                self.first_pending_since = None;
            }
            return Err(e);
        }
        Ok(offset)
    }

    /// Writes all pending records with one `write_all` and syncs the data.
    ///
    /// # Errors
    /// [`RecordError::Io`] with [`IoOp::Write`] (records stay pending, a later
    /// flush retries) or [`IoOp::Sync`] (the writer becomes poisoned);
    /// `Poisoned`.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.write_out(true)
    }

    /// Writes the pending records without syncing them; for a caller that
    /// syncs many logs at once (`syncfs`) and treats nothing as durable until
    /// it has. [`durable_len`](Self::durable_len) then counts written bytes.
    ///
    /// # Errors
    /// [`RecordError::Io`] (`Write`); `Poisoned` after an earlier sync failure.
    pub fn write_unsynced(&mut self) -> Result<(), RecordError> {
        self.write_out(false)
    }

    fn write_out(&mut self, sync: bool) -> Result<(), RecordError> {
        self.check_poisoned()?;
        // A failed write with nothing pending since (its records discarded)
        // still cuts the file back to what is durable.
        if self.buf.is_empty() && !self.dirty {
            return Ok(());
        }
        // A failed write may have left part of the buffer on disk. Set
        // before writing and cleared after, so that a write a panic
        // interrupts counts as failed too.
        let cut = std::mem::replace(&mut self.dirty, true);
        let written = (|| {
            if cut {
                self.file.set_len(self.durable_len)?;
            }
            write_at(&mut self.file, &self.buf, self.durable_len)
        })();
        self.dirty = written.is_err();
        written.map_err(io(IoOp::Write, &self.path))?;
        #[cfg(test)]
        let injected = sync && test_faults::take_sync_failure();
        #[cfg(not(test))]
        let injected = false;
        if injected {
            self.poisoned = true;
            return Err(io(IoOp::Sync, &self.path)(io::Error::other(
                "injected sync failure (test)",
            )));
        }
        if sync && let Err(source) = self.file.sync_data() {
            self.poisoned = true;
            return Err(io(IoOp::Sync, &self.path)(source));
        }
        self.durable_len += self.buf.len() as u64;
        self.buf.clear();
        self.pending_records = 0;
        self.first_pending_since = None;
        Ok(())
    }

    /// Flushes if the policy's deadline has passed at `now` (group commit: the
    /// oldest pending record waited `max_delay`; every record: a failed write
    /// is pending). Never under [`Durability::OnClose`]. Returns whether it
    /// flushed.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn flush_if_due(&mut self, now: Duration) -> Result<bool, RecordError> {
        let due = self.next_due().is_some_and(|at| now >= at);
        if due {
            self.flush()?;
        }
        Ok(due)
    }

    /// When [`flush_if_due`](Self::flush_if_due) will next have work, for a
    /// flusher that sleeps until then; `None` if nothing is pending or the
    /// policy has no deadline.
    pub fn next_due(&self) -> Option<Duration> {
        let since = self.first_pending_since?;
        match self.durability {
            Durability::EveryRecord => Some(since),
            Durability::GroupCommit { max_records, .. } if self.pending_records >= max_records => {
                Some(since)
            }
            Durability::GroupCommit { max_delay, .. } => Some(since.saturating_add(max_delay)),
            Durability::OnClose => None,
        }
    }

    /// Flushes and closes the log, returning its durable length.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub fn close(mut self) -> Result<u64, RecordError> {
        self.flush()?;
        Ok(self.durable_len)
    }

    /// Bytes appended but not yet durable (a new log's header too, until
    /// the first write: see [`create_unsynced`](Self::create_unsynced)).
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Drops the records appended since the last successful write, for a
    /// caller that keeps them elsewhere and appends them again after a
    /// failed write (so that they are not written twice). A new log's
    /// pending header stays.
    pub fn discard_pending(&mut self) {
        let header = if self.durable_len == 0 {
            usize::try_from(HEADER_LEN).unwrap_or(usize::MAX)
        } else {
            0
        };
        self.buf.truncate(header);
        self.pending_records = 0;
        self.first_pending_since = None;
    }

    /// Records appended but not yet durable.
    pub fn pending_records(&self) -> usize {
        self.pending_records
    }

    /// Length of the file known to be synced.
    pub fn durable_len(&self) -> u64 {
        self.durable_len
    }

    /// Closes the file but keeps what is needed to append to it later
    /// ([`ParkedWriter::resume`]): for a caller with more open logs than it
    /// wants file descriptors. Only a writer with nothing pending and no
    /// failure behind it can be parked; any other is handed back unchanged.
    ///
    /// # Errors
    /// The writer itself, when it has pending records, a failed write to
    /// retry, or is poisoned.
    pub fn park(self) -> Result<ParkedWriter, RecordWriter> {
        if !self.buf.is_empty() || self.dirty || self.poisoned {
            return Err(self);
        }
        Ok(ParkedWriter {
            path: self.path.clone(),
            durability: self.durability,
            len: self.durable_len,
        })
    }

    /// Drops the writer without writing anything more (dropping it
    /// otherwise writes what is pending): for a caller that removes the
    /// file next.
    pub(crate) fn abandon(mut self) {
        self.poisoned = true;
    }

    fn check_poisoned(&self) -> Result<(), RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}

/// Writes `buf` at `offset`: one `pwrite` where there is one (a group-commit
/// round writes many logs; a `seek` per log is a syscall saved).
fn write_at(file: &mut File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(test)]
    if test_faults::take_write_failure() {
        return Err(io::Error::other("injected write failure (test)"));
    }
    #[cfg(test)]
    test_faults::maybe_panic(file, buf, offset);
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(buf)
    }
}

/// A [`RecordWriter`] without an open file (see [`RecordWriter::park`]).
#[derive(Debug, Clone)]
pub struct ParkedWriter {
    path: PathBuf,
    durability: Durability,
    /// Bytes in the file when it was parked (everything written).
    len: u64,
}

impl ParkedWriter {
    /// The log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reopens the log to append where the writer left off. Cheap: one
    /// `open` and one `fstat`, no recovery scan — the writer knows what it
    /// wrote, and refuses a file whose length has changed since.
    ///
    /// # Errors
    /// [`RecordError::Io`] (`Open`, `Read`);
    /// [`RecordError::ChangedWhileParked`].
    pub fn resume(&self) -> Result<RecordWriter, RecordError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io(IoOp::Open, &self.path))?;
        let found = file.metadata().map_err(io(IoOp::Read, &self.path))?.len();
        if found != self.len {
            return Err(RecordError::ChangedWhileParked {
                path: self.path.clone(),
                expected: self.len,
                found,
            });
        }
        Ok(RecordWriter::new(
            &self.path,
            file,
            self.durability,
            self.len,
        ))
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        // Best effort so a forgotten `close` does not lose records; errors
        // cannot be reported here, and recovery reports any partial write.
        // Not while unwinding: what is pending may be half a batch, and a
        // second panic in the write would abort the process.
        if !self.poisoned && !std::thread::panicking() && (!self.buf.is_empty() || self.dirty) {
            let _ = self.flush();
        }
    }
}

/// Reads the complete records of a log from byte offset `from` (a record
/// boundary; `from` below the header starts at the first record), in order,
/// handing each to `each` until it returns false. Streams: memory is one
/// record at a time, for logs too long to load whole. Stops quietly at the
/// end of the file or at a torn tail (a record still being appended).
///
/// # Errors
/// Header errors as [`read_log`]; [`RecordError::Io`];
/// [`RecordError::Corrupt`] for a damaged record followed by more bytes.
pub fn scan_log(
    path: impl AsRef<Path>,
    kind: LogKind,
    from: u64,
    mut each: impl FnMut(&Record) -> bool,
) -> Result<(), RecordError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(io(IoOp::Open, path))?;
    let (mut reader, file_len) = checked_reader(&file, path, kind)?;
    let mut pos = from.max(HEADER_LEN);
    reader
        .seek(SeekFrom::Start(pos))
        .map_err(io(IoOp::Read, path))?;
    loop {
        match next_frame(&mut reader, &mut pos, file_len).map_err(io(IoOp::Read, path))? {
            None => return Ok(()),
            Some(Ok(record)) => {
                if !each(&record) {
                    return Ok(());
                }
            }
            Some(Err((offset, reason))) => {
                let at_end = match reason {
                    TailReason::ChecksumMismatch { declared } => {
                        offset + FRAME_HEADER_LEN + u64::from(declared) >= file_len
                    }
                    _ => true,
                };
                if at_end {
                    return Ok(());
                }
                return Err(RecordError::Corrupt {
                    path: path.into(),
                    offset,
                    count: 1,
                });
            }
        }
    }
}

/// Reads and recovers a whole log (see the module docs for the rules). Never
/// allocates more than the file holds; never modifies the file.
///
/// # Errors
/// [`RecordError::Io`] (`Open`, `Read`) naming the path; `ShortHeader`,
/// `BadMagic`, `UnsupportedVersion`, `WrongKind` for a header that is not a
/// version-1 header of `expected_kind`.
pub fn read_log(path: impl AsRef<Path>, expected_kind: LogKind) -> Result<Recovered, RecordError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(io(IoOp::Open, path))?;
    let mut records = Vec::new();
    let mut recovered = recover(&file, path, expected_kind, |r| records.push(r))?;
    recovered.records = records;
    Ok(recovered)
}

/// Atomically replaces the log at `path` with one holding `records` (for
/// retention): writes `<path>.tmp`, syncs it, renames it over `path`, syncs
/// the directory. Returns the new length. Do not use on a log that has an
/// open [`RecordWriter`]: it would keep appending to the old file.
///
/// # Errors
/// [`RecordError::RecordTooLarge`] for a body over [`MAX_RECORD`],
/// [`RecordError::Io`] (`Replace`, `SyncDir`). On an error before the rename
/// the old log is untouched and the temporary file removed.
pub fn rewrite_log<I, B>(
    path: impl AsRef<Path>,
    kind: LogKind,
    records: I,
) -> Result<u64, RecordError>
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let path = path.as_ref();
    replace_with(path, |file| {
        let mut out = BufWriter::new(file);
        let header = file_header(kind);
        out.write_all(&header).map_err(io(IoOp::Replace, path))?;
        let (mut len, mut frame) = (HEADER_LEN, Vec::new());
        for body in records {
            let body = body.as_ref();
            frame.clear();
            encode_frame(&mut frame, checked_len(path, body)?, body);
            out.write_all(&frame).map_err(io(IoOp::Replace, path))?;
            len += frame.len() as u64;
        }
        out.flush().map_err(io(IoOp::Replace, path))?;
        Ok(len)
    })
}

/// Replaces the file at `path` atomically by what `write` writes to a new
/// `<path>.tmp`: that file synced, renamed over `path`, the directory
/// synced. On a failure before the rename the old file is untouched and the
/// temporary file removed (best effort: a leftover one is truncated by the
/// next replacement).
fn replace_with<T>(
    path: &Path,
    write: impl FnOnce(&File) -> Result<T, RecordError>,
) -> Result<T, RecordError> {
    let tmp = with_suffix(path, ".tmp");
    let written = File::create(&tmp)
        .map_err(io(IoOp::Replace, path))
        .and_then(|file| {
            let out = write(&file)?;
            file.sync_all().map_err(io(IoOp::Replace, path))?;
            Ok(out)
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let out = written?;
    fs::rename(&tmp, path).map_err(io(IoOp::Replace, path))?;
    sync_parent(path)?;
    Ok(out)
}

/// Appends one framed record holding `body` to `buf` (a body over
/// [`MAX_RECORD`] is framed with a length the readers refuse; callers pass
/// bodies they built).
pub(crate) fn encode_frame_into(buf: &mut Vec<u8>, body: &[u8]) {
    encode_frame(buf, u32::try_from(body.len()).unwrap_or(u32::MAX), body);
}

/// Replaces the file at `path` by `bytes` atomically: `<path>.tmp` written
/// and synced, renamed over it, the directory synced.
///
/// # Errors
/// [`RecordError::Io`] (`Replace`, `SyncDir`); before the rename the old
/// file is untouched and the temporary file removed.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    replace_with(path, |mut file| {
        file.write_all(bytes).map_err(io(IoOp::Replace, path))
    })
}

fn file_header(kind: LogKind) -> [u8; HEADER_LEN as usize] {
    let [m0, m1, m2, m3, m4, m5, m6] = MAGIC;
    [m0, m1, m2, m3, m4, m5, m6, FORMAT_VERSION, kind.0]
}

fn frame_crc(len_bytes: [u8; 4], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body)
}

fn encode_frame(buf: &mut Vec<u8>, len: u32, body: &[u8]) {
    let len_bytes = len.to_le_bytes();
    buf.extend_from_slice(&len_bytes);
    buf.extend_from_slice(&frame_crc(len_bytes, body).to_le_bytes());
    buf.extend_from_slice(body);
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// Syncs the directory holding `path`, so a created or renamed entry survives a crash.
pub(crate) fn sync_parent(path: &Path) -> Result<(), RecordError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(IoOp::SyncDir, dir))
}

/// Write failures injected by tests, on the thread that asks for them.
#[cfg(test)]
pub(crate) mod test_faults {
    use std::cell::Cell;

    thread_local! {
        static FAIL_WRITES: Cell<u32> = const { Cell::new(0) };
        static FAIL_SYNCS: Cell<u32> = const { Cell::new(0) };
        static PANIC_AFTER: Cell<Option<u32>> = const { Cell::new(None) };
        static PANIC_EVERY: Cell<u32> = const { Cell::new(0) };
    }

    /// The next `n` data syncs on this thread fail, after their write went
    /// through (so what reached the disk is unknown to the writer).
    pub(crate) fn fail_next_syncs(n: u32) {
        FAIL_SYNCS.with(|f| f.set(n));
    }

    /// Whether this sync is one of them.
    pub(super) fn take_sync_failure() -> bool {
        take(&FAIL_SYNCS)
    }

    /// The next `n` record writes on this thread fail (nothing is written).
    pub(crate) fn fail_next_writes(n: u32) {
        FAIL_WRITES.with(|f| f.set(n));
    }

    /// Whether this write is one of them.
    pub(super) fn take_write_failure() -> bool {
        take(&FAIL_WRITES)
    }

    /// Each of the next `n` record writes on this thread writes the first
    /// half of its bytes and panics (a bug that repeats).
    pub(crate) fn panic_next_writes(n: u32) {
        PANIC_EVERY.with(|p| p.set(n));
    }

    /// After `n` more record writes on this thread, the next one writes
    /// the first half of its bytes and panics (a bug in the middle of a
    /// write).
    pub(crate) fn panic_after_writes(n: u32) {
        PANIC_AFTER.with(|p| p.set(Some(n)));
    }

    /// Panics, after writing half of `buf` at `offset`, if this write is
    /// the one [`panic_after_writes`] named or one of the
    /// [`panic_next_writes`].
    pub(super) fn maybe_panic(file: &std::fs::File, buf: &[u8], offset: u64) {
        let now = PANIC_AFTER.with(|p| match p.get() {
            Some(0) => {
                p.set(None);
                true
            }
            Some(n) => {
                p.set(Some(n - 1));
                false
            }
            None => false,
        }) || take(&PANIC_EVERY);
        if now {
            #[cfg(unix)]
            std::os::unix::fs::FileExt::write_all_at(file, &buf[..buf.len() / 2], offset).unwrap();
            #[cfg(not(unix))]
            let _ = (file, buf, offset);
            panic!("injected panic in a record write (test)");
        }
    }

    /// Counts one failure off `counter`; whether there was one left.
    fn take(counter: &'static std::thread::LocalKey<Cell<u32>>) -> bool {
        counter.with(|f| {
            let n = f.get();
            f.set(n.saturating_sub(1));
            n > 0
        })
    }
}

/// A buffered reader of a just-opened log (positioned at 0), past its
/// header once that is checked, and the file's length.
fn checked_reader<'f>(
    file: &'f File,
    path: &Path,
    kind: LogKind,
) -> Result<(BufReader<&'f File>, u64), RecordError> {
    let file_len = file.metadata().map_err(io(IoOp::Read, path))?.len();
    if file_len < HEADER_LEN {
        return Err(RecordError::ShortHeader {
            path: path.into(),
            len: file_len,
        });
    }
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut header = [0u8; HEADER_LEN as usize];
    reader
        .read_exact(&mut header)
        .map_err(io(IoOp::Read, path))?;
    check_header(header, path.to_path_buf(), kind)?;
    Ok((reader, file_len))
}

/// Recovery proper: hands each complete record to `each` in file order and
/// returns the rest of the findings ([`Recovered::records`] left empty).
fn recover(
    file: &File,
    path: &Path,
    kind: LogKind,
    mut each: impl FnMut(Record),
) -> Result<Recovered, RecordError> {
    // Both callers have just opened `file`.
    let (mut reader, file_len) = checked_reader(file, path, kind)?;

    let mut out = Recovered {
        records: Vec::new(),
        corrupt: Vec::new(),
        valid_len: HEADER_LEN,
        tail: None,
    };
    let mut pos = HEADER_LEN;
    // A checksum failure is corruption if a valid record follows, else the torn tail.
    let mut suspect: Option<CorruptRecord> = None;
    loop {
        let frame = next_frame(&mut reader, &mut pos, file_len).map_err(io(IoOp::Read, path))?;
        let (offset, reason) = match (frame, suspect) {
            (None, None) => break,
            (Some(Ok(record)), _) => {
                out.corrupt.extend(suspect.take());
                out.valid_len = record.end();
                each(record);
                continue;
            }
            (Some(Err((offset, TailReason::ChecksumMismatch { declared }))), None) => {
                suspect = Some(CorruptRecord { offset, declared });
                continue;
            }
            (Some(Err(bad)), None) => bad,
            (_, Some(CorruptRecord { offset, declared })) => {
                (offset, TailReason::ChecksumMismatch { declared })
            }
        };
        out.tail = Some(TornTail {
            offset,
            len: file_len - offset,
            reason,
            saved_to: None,
        });
        break;
    }
    Ok(out)
}

fn check_header(header: [u8; 9], path: PathBuf, kind: LogKind) -> Result<(), RecordError> {
    let [.., version, found] = header;
    if header[..7] != MAGIC {
        Err(RecordError::BadMagic { path })
    } else if version != FORMAT_VERSION {
        Err(RecordError::UnsupportedVersion { path, version })
    } else if found != kind.0 {
        let (expected, found) = (kind, LogKind(found));
        Err(RecordError::WrongKind {
            path,
            expected,
            found,
        })
    } else {
        Ok(())
    }
}

/// The frame at `*pos`: a record, or where and why there is none. Advances
/// `*pos` only past frames whose length fits in the file.
type Frame = Result<Record, (u64, TailReason)>;

fn next_frame(reader: &mut impl Read, pos: &mut u64, file_len: u64) -> io::Result<Option<Frame>> {
    let offset = *pos;
    let remaining = file_len.saturating_sub(offset);
    if remaining == 0 {
        return Ok(None);
    }
    let bad = |reason| Ok(Some(Err((offset, reason))));
    if remaining < FRAME_HEADER_LEN {
        return bad(TailReason::PartialHeader {
            available: remaining,
        });
    }
    let mut head = [0u8; FRAME_HEADER_LEN as usize];
    reader.read_exact(&mut head)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
    let declared = u32::from_le_bytes([l0, l1, l2, l3]);
    let available = remaining - FRAME_HEADER_LEN;
    if declared > MAX_RECORD {
        return bad(TailReason::LengthTooLarge { declared });
    }
    if u64::from(declared) > available {
        return bad(TailReason::PartialBody {
            declared,
            available,
        });
    }
    // Bounded by MAX_RECORD and by the bytes actually in the file.
    let mut body = vec![0u8; declared as usize];
    reader.read_exact(&mut body)?;
    *pos = offset + FRAME_HEADER_LEN + u64::from(declared);
    if frame_crc([l0, l1, l2, l3], &body) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return bad(TailReason::ChecksumMismatch { declared });
    }
    Ok(Some(Ok(Record { offset, body })))
}

/// Copies the torn tail into a new side file (never overwriting an earlier one) and syncs it.
fn save_torn_tail(file: &mut File, path: &Path, tail: &TornTail) -> Result<PathBuf, RecordError> {
    let base = with_suffix(path, &format!(".torn-{}", tail.offset));
    let mut attempt = 0u32;
    let (mut out, torn) = loop {
        let torn = match attempt {
            0 => base.clone(),
            n => with_suffix(&base, &format!(".{n}")),
        };
        match OpenOptions::new().write(true).create_new(true).open(&torn) {
            Ok(f) => break (f, torn),
            // An earlier tear at the same offset left its evidence there: keep it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
            Err(e) => return Err(io(IoOp::SaveTorn, &torn)(e)),
        }
    };
    let copied = (|| {
        file.seek(SeekFrom::Start(tail.offset))?;
        let n = io::copy(&mut Read::by_ref(file).take(tail.len), &mut out)?;
        if n != tail.len {
            let msg = "the log shrank while its torn tail was being saved";
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
        }
        out.sync_all()
    })();
    copied.map_err(io(IoOp::SaveTorn, &torn))?;
    sync_parent(&torn)?;
    Ok(torn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: LogKind = LogKind::SESSION_DELTAS;
    const T0: Duration = Duration::ZERO;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bodies(sizes: &[usize]) -> Vec<Vec<u8>> {
        let body = |(i, &n)| (0..n).map(|j: usize| (j * 31 + i) as u8).collect();
        sizes.iter().enumerate().map(body).collect()
    }

    fn tail(offset: u64, len: u64, reason: TailReason) -> Option<TornTail> {
        Some(TornTail {
            offset,
            len,
            reason,
            saved_to: None,
        })
    }

    fn got(r: &Recovered) -> Vec<&[u8]> {
        r.records.iter().map(|r| r.body.as_slice()).collect()
    }

    /// Writes `bodies` to a new log at `dir/log`; returns its path, bytes and record ends.
    fn write_log(dir: &Path, bodies: &[Vec<u8>]) -> (PathBuf, Vec<u8>, Vec<u64>) {
        let path = dir.join("log");
        let mut w = RecordWriter::create(&path, K, Durability::OnClose).unwrap();
        let offsets: Vec<u64> = bodies.iter().map(|b| w.append(b, T0).unwrap()).collect();
        let len = w.close().unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, len);
        let ends = offsets
            .iter()
            .zip(bodies)
            .map(|(o, b)| o + 8 + b.len() as u64);
        (path, bytes, ends.collect())
    }

    /// Records on disk, as a fresh reader sees them.
    fn on_disk(path: &Path) -> usize {
        let r = read_log(path, K).unwrap();
        assert!(r.is_clean(), "{r:?}");
        r.records.len()
    }

    #[test]
    fn frame_bytes_match_an_independent_crc32c() {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes, _) = write_log(dir.path(), &[b"abc".to_vec()]);
        // CRC-32C of 03 00 00 00 61 62 63 from a bitwise reference implementation.
        let frame = [3, 0, 0, 0, 0xf8, 0x83, 0x14, 0x55, b'a', b'b', b'c'];
        assert_eq!(bytes, [&b"AHVLOG\0\x01\x01"[..], &frame].concat());
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // A zero-filled block is not a valid empty record.
        assert_eq!(frame_crc([0; 4], &[]), 0x4867_4bc7);
    }

    #[test]
    fn unsynced_create_and_write_are_readable_and_refuse_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.log");
        let mut w = RecordWriter::create_unsynced(&path, K, Durability::OnClose).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "the header waits for the first records"
        );
        let first = w.append(b"one", Duration::ZERO).unwrap();
        assert_eq!(first, HEADER_LEN, "offsets count the pending header");
        w.append(b"two", Duration::ZERO).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "appends only buffer"
        );
        w.write_unsynced().unwrap();
        assert_eq!(on_disk(&path), 2);
        assert_eq!(w.pending_records(), 0);
        assert_eq!(w.durable_len(), std::fs::metadata(&path).unwrap().len());
        assert!(matches!(
            RecordWriter::create_unsynced(&path, K, Durability::OnClose),
            Err(RecordError::Io { op: IoOp::Open, .. })
        ));
    }

    #[test]
    fn discarded_records_are_not_written_and_a_new_logs_header_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut w = RecordWriter::create_unsynced(&path, K, Durability::OnClose).unwrap();
        w.append(b"dropped", Duration::ZERO).unwrap();
        w.discard_pending();
        assert_eq!(
            w.pending_bytes() as u64,
            HEADER_LEN,
            "the header stays pending"
        );
        assert_eq!(w.pending_records(), 0);
        w.append(b"one", Duration::ZERO).unwrap();
        w.write_unsynced().unwrap();
        w.append(b"dropped too", Duration::ZERO).unwrap();
        w.discard_pending();
        assert_eq!(
            w.pending_bytes(),
            0,
            "nothing of a written log's is pending"
        );
        w.append(b"two", Duration::ZERO).unwrap();
        w.write_unsynced().unwrap();
        let r = read_log(&path, K).unwrap();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(got(&r), [&b"one"[..], b"two"]);
    }

    #[test]
    fn a_failed_write_is_cut_back_even_when_its_records_were_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.log");
        let mut w = RecordWriter::create_unsynced(&path, K, Durability::OnClose).unwrap();
        w.append(b"one", Duration::ZERO).unwrap();
        w.write_unsynced().unwrap();
        w.append(b"two", Duration::ZERO).unwrap();
        test_faults::fail_next_writes(1);
        assert!(w.write_unsynced().is_err());
        // What a real partial write leaves behind.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"\x07\0\0\0junk").unwrap();
        w.discard_pending();
        w.close().unwrap();
        let r = read_log(&path, K).unwrap();
        assert!(r.is_clean(), "cut back to the durable length: {r:?}");
        assert_eq!(got(&r), [&b"one"[..]]);
    }

    /// A write a panic interrupts (after part of its bytes reached the
    /// file) is cut back like a failed one: what the next write puts after
    /// the durable records is all that follows them.
    #[test]
    fn a_write_a_panic_interrupts_is_cut_back_like_a_failed_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.log");
        let mut w = RecordWriter::create_unsynced(&path, K, Durability::OnClose).unwrap();
        w.append(b"one", Duration::ZERO).unwrap();
        w.write_unsynced().unwrap();
        w.append(&[b'x'; 4096], Duration::ZERO).unwrap();
        test_faults::panic_after_writes(0);
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.write_unsynced()));
        assert!(panicked.is_err(), "the injected panic");
        w.discard_pending();
        w.append(b"two", Duration::ZERO).unwrap();
        w.close().unwrap();
        let r = read_log(&path, K).unwrap();
        assert!(r.is_clean(), "the half-written record is gone: {r:?}");
        assert_eq!(got(&r), [&b"one"[..], b"two"]);
    }

    #[test]
    fn a_synced_create_that_fails_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        test_faults::fail_next_writes(1);
        assert!(matches!(
            RecordWriter::create(&path, K, Durability::OnClose),
            Err(RecordError::Io {
                op: IoOp::Write,
                ..
            })
        ));
        assert!(!path.exists(), "the half-made log is removed");
        RecordWriter::create(&path, K, Durability::OnClose).unwrap();
        assert_eq!(on_disk(&path), 0);
    }

    #[test]
    fn round_trip_of_varied_sizes_keeps_bodies_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let want = bodies(&[0, 1, 1000, 70_000, 0, 3, 500]);
        let (path, bytes, ends) = write_log(dir.path(), &want);
        let r = read_log(&path, K).unwrap();
        assert!(r.is_clean());
        assert_eq!(got(&r), want.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert_eq!(r.records.iter().map(Record::end).collect::<Vec<_>>(), ends);
        assert_eq!(
            (r.records[0].offset, r.valid_len),
            (HEADER_LEN, bytes.len() as u64)
        );
    }

    #[test]
    fn cut_at_every_byte_of_the_last_three_records_keeps_exactly_the_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let want = bodies(&[3, 1000, 0, 300, 1]);
        let (_, bytes, ends) = write_log(dir.path(), &want);
        let cut_path = dir.path().join("cut");
        for cut in ends[1]..=bytes.len() as u64 {
            fs::write(&cut_path, &bytes[..cut as usize]).unwrap();
            let r = read_log(&cut_path, K).unwrap();
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            let valid_len = ends[complete - 1];
            assert_eq!(
                got(&r),
                want[..complete]
                    .iter()
                    .map(Vec::as_slice)
                    .collect::<Vec<_>>()
            );
            assert_eq!((r.valid_len, r.corrupt.len()), (valid_len, 0), "cut {cut}");
            let torn = cut - valid_len;
            let reason = match torn {
                0..8 => TailReason::PartialHeader { available: torn },
                _ => {
                    let declared = want[complete].len() as u32;
                    TailReason::PartialBody {
                        declared,
                        available: torn - 8,
                    }
                }
            };
            let expected = if torn == 0 {
                None
            } else {
                tail(valid_len, torn, reason)
            };
            assert_eq!(r.tail, expected, "cut {cut}");
        }
    }

    #[test]
    fn open_append_saves_torn_bytes_truncates_and_appends_after_valid_len() {
        let dir = tempfile::tempdir().unwrap();
        let want = bodies(&[10, 200, 50]);
        let (path, bytes, ends) = write_log(dir.path(), &want);
        let (valid, cut) = (ends[1] as usize, ends[1] as usize + 20);
        fs::write(&path, &bytes[..cut]).unwrap();

        let (mut w, rec) = RecordWriter::open_append(&path, K, Durability::EveryRecord).unwrap();
        let torn = rec.tail.as_ref().and_then(|t| t.saved_to.clone()).unwrap();
        assert_eq!(torn, dir.path().join(format!("log.torn-{valid}")));
        assert_eq!(fs::read(&torn).unwrap(), &bytes[valid..cut]);
        assert_eq!(rec.tail.map(|t| (t.offset, t.len)), Some((ends[1], 20)));
        assert_eq!(fs::metadata(&path).unwrap().len(), ends[1]);
        assert_eq!(w.durable_len(), ends[1]);
        assert_eq!(w.append(b"after", T0).unwrap(), ends[1]);
        drop(w);
        let r = read_log(&path, K).unwrap();
        assert!(r.is_clean());
        assert_eq!(got(&r), [&want[0][..], &want[1], b"after"]);

        // A second tear at the same offset keeps the first evidence file.
        let now = fs::read(&path).unwrap();
        fs::write(&path, &now[..now.len() - 1]).unwrap();
        let (_w, rec) = RecordWriter::open_append(&path, K, Durability::OnClose).unwrap();
        assert_eq!(rec.tail.unwrap().saved_to, Some(with_suffix(&torn, ".1")));
        assert_eq!(fs::read(&torn).unwrap(), &bytes[valid..cut]);
    }

    #[test]
    fn open_append_each_streams_the_complete_records_and_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let want = bodies(&[10, 200, 50]);
        let (path, bytes, ends) = write_log(dir.path(), &want);
        fs::write(&path, &bytes[..ends[2] as usize - 1]).unwrap();
        let mut seen = Vec::new();
        let (w, rec) =
            RecordWriter::open_append_each(&path, K, Durability::OnClose, |r| seen.push(r))
                .unwrap();
        assert!(rec.records.is_empty(), "handed over, not kept");
        let offsets: Vec<u64> = seen.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [HEADER_LEN, ends[0]]);
        assert_eq!(seen[1].body, want[1]);
        assert_eq!((rec.valid_len, w.durable_len()), (ends[1], ends[1]));
        assert_eq!(rec.tail.map(|t| t.offset), Some(ends[1]));
    }

    #[test]
    fn flipped_byte_in_a_middle_record_is_corruption_and_blocks_append() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes, ends) = write_log(dir.path(), &bodies(&[40, 40, 40]));
        bytes[ends[0] as usize + 8 + 5] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let r = read_log(&path, K).unwrap();
        assert_eq!(
            r.corrupt,
            [CorruptRecord {
                offset: ends[0],
                declared: 40
            }]
        );
        let offsets: Vec<u64> = r.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [HEADER_LEN, ends[1]]);
        assert_eq!((r.valid_len, r.tail), (ends[2], None));
        let err = RecordWriter::open_append(&path, K, Durability::OnClose).unwrap_err();
        let refused =
            matches!(err, RecordError::Corrupt { offset, count: 1, .. } if offset == ends[0]);
        assert!(refused, "{err}");
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "a refused open changes nothing"
        );
    }

    #[test]
    fn flipped_byte_in_the_last_record_is_a_checksum_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes, ends) = write_log(dir.path(), &bodies(&[40, 40]));
        bytes[ends[1] as usize - 1] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let r = read_log(&path, K).unwrap();
        assert_eq!((r.records.len(), r.valid_len), (1, ends[0]));
        let reason = TailReason::ChecksumMismatch { declared: 40 };
        assert_eq!(r.tail, tail(ends[0], 48, reason));
    }

    #[test]
    fn zero_filled_block_after_a_crash_is_a_torn_tail_not_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes, ends) = write_log(dir.path(), &bodies(&[40]));
        bytes.extend_from_slice(&[0; 4096]);
        fs::write(&path, &bytes).unwrap();
        let r = read_log(&path, K).unwrap();
        assert_eq!((r.records.len(), r.corrupt.len()), (1, 0));
        let reason = TailReason::ChecksumMismatch { declared: 0 };
        assert_eq!(r.tail, tail(ends[0], 4096, reason));
    }

    #[test]
    fn huge_or_overrunning_length_fields_are_reported_not_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, ends) = write_log(dir.path(), &bodies(&[5, 5]));
        let at = ends[0] as usize;
        for (declared, reason) in [
            (u32::MAX, TailReason::LengthTooLarge { declared: u32::MAX }),
            (
                MAX_RECORD + 1,
                TailReason::LengthTooLarge {
                    declared: MAX_RECORD + 1,
                },
            ),
            (
                MAX_RECORD,
                TailReason::PartialBody {
                    declared: MAX_RECORD,
                    available: 5,
                },
            ),
        ] {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&declared.to_le_bytes());
            fs::write(&path, &b).unwrap();
            let r = read_log(&path, K).unwrap();
            assert_eq!((r.records.len(), r.tail), (1, tail(ends[0], 13, reason)));
        }
    }

    #[test]
    fn bad_headers_are_typed_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (path, good, _) = write_log(dir.path(), &[]);
        let err = read_log(&path, LogKind::COMMITMENTS).unwrap_err();
        let expected = LogKind::COMMITMENTS;
        assert!(
            matches!(&err, RecordError::WrongKind { found: K, expected: e, .. } if *e == expected)
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let bad = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            fs::write(&path, &b).unwrap();
            read_log(&path, K).unwrap_err()
        };
        assert!(matches!(bad(0, b'X'), RecordError::BadMagic { .. }));
        assert!(matches!(
            bad(7, 2),
            RecordError::UnsupportedVersion { version: 2, .. }
        ));
        fs::write(&path, &good[..5]).unwrap();
        assert!(matches!(
            read_log(&path, K),
            Err(RecordError::ShortHeader { len: 5, .. })
        ));
        let reopened = RecordWriter::open_append(&path, K, Durability::OnClose);
        assert!(matches!(reopened, Err(RecordError::ShortHeader { .. })));
        let missing = dir.path().join("missing");
        let err = read_log(&missing, K).unwrap_err();
        assert!(matches!(err, RecordError::Io { op: IoOp::Open, path, .. } if path == missing));
        let exists = RecordWriter::create(&path, K, Durability::OnClose).unwrap_err();
        assert!(matches!(exists, RecordError::Io { op: IoOp::Open, .. }));
    }

    #[test]
    fn group_commit_flushes_at_max_records_and_at_max_delay_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let policy = Durability::GroupCommit {
            max_records: 3,
            max_delay: ms(10),
        };
        let mut w = RecordWriter::create(&path, K, policy).unwrap();
        w.append(b"a", ms(0)).unwrap();
        w.append(b"b", ms(1)).unwrap();
        assert_eq!(
            (on_disk(&path), w.pending_records(), w.next_due()),
            (0, 2, Some(ms(10)))
        );
        assert!(!w.flush_if_due(ms(9)).unwrap());
        assert_eq!(on_disk(&path), 0);
        assert!(w.flush_if_due(ms(10)).unwrap());
        assert_eq!(
            (on_disk(&path), w.pending_bytes(), w.next_due()),
            (2, 0, None)
        );
        w.append(b"c", ms(20)).unwrap();
        w.append(b"d", ms(21)).unwrap();
        assert_eq!(on_disk(&path), 2);
        w.append(b"e", ms(22)).unwrap();
        assert_eq!((on_disk(&path), w.pending_records()), (5, 0));
        assert!(!w.flush_if_due(ms(100)).unwrap(), "nothing pending");
        w.append(b"f", ms(100)).unwrap();
        assert!(!w.flush_if_due(ms(109)).unwrap());
        assert_eq!(on_disk(&path), 5);
        assert!(w.flush_if_due(ms(110)).unwrap());
        assert_eq!(on_disk(&path), 6);
        assert_eq!(w.durable_len(), fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn every_record_is_durable_after_each_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut w = RecordWriter::create(&path, K, Durability::EveryRecord).unwrap();
        for i in 1..=3u8 {
            w.append(&[i], T0).unwrap();
            assert_eq!((on_disk(&path), w.pending_bytes()), (usize::from(i), 0));
        }
    }

    #[test]
    fn only_a_writer_with_nothing_pending_parks_and_a_resumed_one_appends_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut w = RecordWriter::create(&path, K, Durability::OnClose).unwrap();
        w.append(b"a", T0).unwrap();
        // Pending records: handed back, nothing lost.
        let mut w = w.park().unwrap_err();
        assert_eq!(w.pending_records(), 1);
        w.flush().unwrap();
        let parked = w.park().unwrap();
        assert_eq!(parked.path(), path);
        let mut w = parked.resume().unwrap();
        w.append(b"b", T0).unwrap();
        let len = w.close().unwrap();
        assert_eq!(len, fs::metadata(&path).unwrap().len());
        let log = read_log(&path, K).unwrap();
        assert!(log.is_clean());
        assert_eq!(got(&log), vec![&b"a"[..], b"b"]);
        // The parked length no longer matches the file: refused.
        match parked.resume() {
            Err(RecordError::ChangedWhileParked {
                expected, found, ..
            }) => assert_eq!((expected, found), (HEADER_LEN + 9, len)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn on_close_writes_only_on_flush_or_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut w = RecordWriter::create(&path, K, Durability::OnClose).unwrap();
        w.append(b"a", T0).unwrap();
        w.append(b"b", T0).unwrap();
        assert!(!w.flush_if_due(Duration::MAX).unwrap());
        assert_eq!((on_disk(&path), w.pending_bytes()), (0, 18));
        w.flush().unwrap();
        assert_eq!(on_disk(&path), 2);
        w.append(b"c", T0).unwrap();
        assert_eq!(on_disk(&path), 2);
        assert_eq!(w.close().unwrap(), fs::metadata(&path).unwrap().len());
        assert_eq!(on_disk(&path), 3);
    }

    #[test]
    fn failed_write_keeps_records_pending_and_the_retry_writes_them_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut w = RecordWriter::create(&path, K, Durability::OnClose).unwrap();
        w.file = File::open(&path).unwrap(); // read-only: every write fails
        w.append(b"one", T0).unwrap();
        w.append(b"two", T0).unwrap();
        let err = w.flush().unwrap_err();
        assert!(matches!(&err, RecordError::Io { op: IoOp::Write, path: p, .. } if *p == path));
        assert_eq!((w.pending_records(), w.durable_len()), (2, HEADER_LEN));
        // As if the failed write had got part-way.
        let mut other = OpenOptions::new().append(true).open(&path).unwrap();
        other.write_all(b"junk").unwrap();
        w.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        w.flush().unwrap();
        let r = read_log(&path, K).unwrap();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(got(&r), [b"one", b"two"]);

        // Under EveryRecord a failed append is forgotten, not retried later.
        let path = dir.path().join("log2");
        let mut w = RecordWriter::create(&path, K, Durability::EveryRecord).unwrap();
        w.file = File::open(&path).unwrap();
        let err = w.append(b"lost", T0).unwrap_err();
        assert!(matches!(
            err,
            RecordError::Io {
                op: IoOp::Write,
                ..
            }
        ));
        assert_eq!((w.pending_bytes(), w.next_due()), (0, None));
    }

    #[test]
    fn oversized_bodies_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = write_log(dir.path(), &bodies(&[100, 100]));
        let before = read_log(&path, K).unwrap();
        let big = vec![0u8; MAX_RECORD as usize + 1];
        let (mut w, _) = RecordWriter::open_append(&path, K, Durability::OnClose).unwrap();
        let err = w.append(&big, T0).unwrap_err();
        assert!(matches!(err, RecordError::RecordTooLarge { len, .. } if len == big.len()));
        assert_eq!(w.pending_bytes(), 0);
        drop(w);
        let err = rewrite_log(&path, K, [big]).unwrap_err();
        assert!(matches!(err, RecordError::RecordTooLarge { .. }));
        assert_eq!(read_log(&path, K).unwrap(), before);
        assert!(!with_suffix(&path, ".tmp").exists());
    }

    #[test]
    fn rewrite_log_replaces_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = write_log(dir.path(), &bodies(&[100, 100, 100]));
        let kept: [&[u8]; 2] = [b"leaf-0", b""];
        let len = rewrite_log(&path, K, kept).unwrap();
        let r = read_log(&path, K).unwrap();
        assert!(r.is_clean());
        assert_eq!((got(&r), r.valid_len), (kept.to_vec(), len));
        assert!(!with_suffix(&path, ".tmp").exists());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn recovery_after_any_cut_is_the_prefix_of_complete_records(
            want in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..12),
            cut in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (path, bytes, ends) = write_log(dir.path(), &want);
            let cut = HEADER_LEN as usize + cut.index(bytes.len() - HEADER_LEN as usize + 1);
            fs::write(&path, &bytes[..cut]).unwrap();
            let r = read_log(&path, K).unwrap();
            let complete = ends.iter().filter(|&&e| e <= cut as u64).count();
            prop_assert_eq!(got(&r), want[..complete].iter().map(Vec::as_slice).collect::<Vec<_>>());
            prop_assert!(r.corrupt.is_empty());
            let valid_len = complete.checked_sub(1).map_or(HEADER_LEN, |i| ends[i]);
            prop_assert_eq!(r.valid_len, valid_len);
            prop_assert_eq!(r.tail.map_or(r.valid_len, |t| t.offset + t.len), cut as u64);
        }
    }
}
