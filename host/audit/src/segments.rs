//! Segment files: the deltas of many sessions in a few append-only files.
//!
//! Auditors used to write every session's deltas to a file of their own
//! (`sessions/<session>.log`). On a real disk, creating that file was most
//! of what a session cost to make durable: on this project's ext4 VMs a
//! flush round spent 40–280 µs per session, most of it in `openat`, against
//! a few microseconds for the bytes themselves. A flush round now appends
//! the records of every session it writes to one *segment* and syncs that
//! one file.
//!
//! The [`Auditor`](crate::Auditor) writes every session's deltas here;
//! [`crate::verify`] reads them, and retention prunes them in place
//! ([`prune_segment`]). `FORMAT.md` beside this crate has the format.
//!
//! # Layout
//!
//! ```text
//! <audit>/segments/00000000000000000001.seg   record file, kind 5 (LogKind::SEGMENT)
//! <audit>/segments/00000000000000000002.seg   …numbered from 1, 20 digits
//! ```
//!
//! A segment is a record file (the framing of [`crate::records`]): a start
//! record, then *rounds*. A round is the records of one or more sessions'
//! *chunks*, back to back and in chunk order, then a footer record naming
//! them:
//!
//! ```text
//! segment = start ‖ round*
//! start   = 0xE1 ‖ version 0x02 ‖ oldest live segment: u64 ‖ previous segment: u64
//! round   = (chunk records* ‖ footer(last = 0))* ‖ chunk records* ‖ footer(last = 1)
//! footer  = 0xE0 ‖ version 0x01 ‖ last: u8 (0|1) ‖ entries: u32 ‖ entry*
//! entry   = session: str ‖ first seq: u64 ‖ count: u32 (≥ 1)
//! ```
//!
//! (Big-endian; `str` is a `u32` length and UTF-8, as everywhere in the
//! audit format.) A chunk's records are what a session log holds: a delta
//! (first byte `0x01`, its version) or a pruned delta (`0xF0`). The writer
//! refuses an empty record and one that starts with the footer's tag `0xE0`
//! or the start's `0xE1`, so a reader tells them apart by their first byte.
//! A footer too large for one record ([`MAX_RECORD`]) is split: a round
//! then has several footers, each naming the chunks since the one before,
//! and only the last has `last` set.
//!
//! The start record bounds recovery: every session that had not been
//! sealed when the segment was started has all its chunks in segments
//! numbered `oldest live segment` or later (the writer's caller says which,
//! [`SegmentWriter::append_round`]). After a crash, the sessions left
//! without a commitment are found by reading the segments from the last
//! segment's start on ([`recovery_start`]), not every segment ever written.
//!
//! It also names the segment created before it (`previous segment`: the
//! highest present when its writer was opened, then the one that writer
//! created last; 0 for none). Numbers can be skipped (a segment whose
//! creation failed is removed again), but the auditor never deletes a
//! segment, so one that is named and absent went missing: recovery does
//! not seal a session that may have had records in it, and `verify`
//! reports it. A version-1 start record (written before 2026-12-06) has
//! no `previous segment` and is still read.
//!
//! # Crash safety: the footer is the commit point
//!
//! [`SegmentWriter::append_round`] writes a round's records and footers
//! with one write and syncs the segment's data once (`fdatasync`). A crash
//! can only tear the end of the segment being written, so a reader keeps
//! every round whose last footer is whole ([`read_segment`]); the records
//! after it (those of a split round's earlier footers too) are a round that
//! was never acknowledged, reported as [`SegmentContents::uncommitted`] and
//! never attributed to a session; a torn record at the end is
//! [`SegmentContents::tail`], as for any record file.
//!
//! Recovery never cuts or rewrites a segment: a writer never appends to a
//! segment an earlier process (or an earlier writer) wrote. Each
//! [`SegmentWriter::open`] starts a new one, numbered after the highest
//! present, so what a crash left is kept as it is, as evidence.
//!
//! A round whose write fails is cut off again before the retry. A round
//! whose *sync* fails may or may not be on disk (the kernel may have dropped
//! the pages, or written them): the writer then starts a new segment, and
//! the retried round may exist twice. Readers accept a chunk that repeats,
//! identical, records read from an earlier segment
//! ([`SessionRecords::repeated`]; `verify` is stricter and accepts only a
//! repeat of the session's last chunk, which is what a retry writes); a
//! chunk that says something else about the same sequence numbers is a
//! [`AssemblyProblem::Conflict`].
//!
//! # Reading a session
//!
//! A session's records are its chunks in segment order, then round order.
//! [`SessionAssembler`] puts them together across segments, checking that
//! each chunk starts where the last one ended.
//!
//! ```
//! use ahv_audit::segments::{SegmentWriter, SessionAssembler, StagedChunk, read_segment, list_segments};
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir()?;
//! let mut writer = SegmentWriter::open(dir.path(), 64 << 20)?;
//! // The auditor's staging format: `len: u32 LE ‖ body`, per record.
//! let mut staged = Vec::new();
//! for body in [&b"\x01delta 0"[..], b"\x01delta 1"] {
//!     staged.extend_from_slice(&(body.len() as u32).to_le_bytes());
//!     staged.extend_from_slice(body);
//! }
//! let chunk = StagedChunk { session: "s-1", first_seq: 0, count: 2, staged: &staged };
//! let at = writer.append_round(&[chunk], 1, Duration::ZERO)?;
//! assert_eq!(at.segment, 1);
//!
//! let mut sessions = SessionAssembler::default();
//! for (number, path) in list_segments(dir.path())? {
//!     sessions.add_segment(&read_segment(number, &path)?);
//! }
//! let s = sessions.get("s-1").expect("the session was written");
//! assert_eq!(s.records.len(), 2);
//! assert_eq!(s.records[1].record.body, b"\x01delta 1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::records::{
    CorruptRecord, Durability, LogKind, MAX_RECORD, Record, RecordError, RecordWriter, TornTail,
    read_log,
};

/// The first byte of a footer record.
pub const FOOTER_TAG: u8 = 0xE0;
/// The footer encoding's version.
pub const FOOTER_VERSION: u8 = 1;
/// The first byte of a segment's start record.
pub const START_TAG: u8 = 0xE1;
/// The start record encoding's version: 2 names the segment written before
/// it too; version 1 (segments written before 2026-12-06) does not.
pub const START_VERSION: u8 = 2;
/// The start record's first version, still read: the oldest live segment
/// only.
pub const START_VERSION_1: u8 = 1;
/// The size after which a writer starts the next segment (64 MiB): the
/// round that reaches it is the segment's last.
pub const DEFAULT_MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// A footer's fixed part: tag, version, last flag, entry count.
const FOOTER_HEAD: usize = 1 + 1 + 1 + 4;
/// The longest session id a chunk may have: one entry must fit in a footer.
pub const MAX_SESSION_ID: usize = MAX_RECORD as usize - FOOTER_HEAD - ENTRY_FIXED;
/// An entry's fixed part: the session's length, first seq, count.
const ENTRY_FIXED: usize = 4 + 8 + 4;

/// Why segments could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A record file operation on a segment failed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The segment directory could not be made, listed or synced.
    #[error("cannot {op} segment directory {}", path.display())]
    Dir {
        /// What was being done.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A chunk handed to [`SegmentWriter::append_round`] is not what it
    /// claims (nothing was written).
    #[error("chunk {index} of the round (session {session:?}): {reason}")]
    BadChunk {
        /// Its position in the round.
        index: usize,
        /// Its session.
        session: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Every segment number is taken.
    #[error("segment directory {} has no segment number left", path.display())]
    Exhausted {
        /// The directory.
        path: PathBuf,
    },
    /// A segment being pruned changed while it was read.
    #[error("segment {} changed while it was pruned; nothing was replaced", path.display())]
    Changed {
        /// The segment.
        path: PathBuf,
    },
}

/// Why a footer's bytes are not a footer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FooterError {
    /// The first byte is not [`FOOTER_TAG`], the second not
    /// [`FOOTER_VERSION`], or the third (the last flag) neither 0 nor 1.
    #[error("not a version-{FOOTER_VERSION} footer: starts with {0:02x?}")]
    Tag(Vec<u8>),
    /// The bytes end inside a field.
    #[error("footer ends inside {what} of entry {entry}")]
    Short {
        /// The field.
        what: &'static str,
        /// The entry (0-based).
        entry: u32,
    },
    /// A session id that is empty or not UTF-8.
    #[error("entry {entry}: the session id is {why}")]
    Session {
        /// The entry.
        entry: u32,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An entry names no records.
    #[error("entry {entry} ({session:?}) names no records")]
    Empty {
        /// The entry.
        entry: u32,
        /// Its session.
        session: String,
    },
    /// A chunk's sequence numbers would pass `u64::MAX`.
    #[error("entry {entry} ({session:?}): seq {first_seq} + {count} records overflows")]
    SeqOverflow {
        /// The entry.
        entry: u32,
        /// Its session.
        session: String,
        /// Its first seq.
        first_seq: u64,
        /// Its record count.
        count: u32,
    },
    /// Bytes after the last entry.
    #[error("{0} bytes after the last entry")]
    Trailing(usize),
}

/// One chunk of a footer: `count` records of `session` from `first_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FooterEntry {
    /// The session whose records these are.
    pub session: String,
    /// The sequence number (position in the session's log) of the first.
    pub first_seq: u64,
    /// How many records, at least 1.
    pub count: u32,
}

/// A decoded footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Whether it closes its round (a round too large for one footer has
    /// several; only the last has this set).
    pub last: bool,
    /// The chunks it names, in order.
    pub entries: Vec<FooterEntry>,
}

/// Encodes a footer (see the module docs).
pub fn encode_footer(entries: &[FooterEntry], last: bool) -> Vec<u8> {
    let size = FOOTER_HEAD
        + entries
            .iter()
            .map(|e| ENTRY_FIXED + e.session.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(FOOTER_TAG);
    out.push(FOOTER_VERSION);
    out.push(u8::from(last));
    out.extend_from_slice(
        &u32::try_from(entries.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for e in entries {
        put_entry(&mut out, &e.session, e.first_seq, e.count);
    }
    out
}

fn put_entry(out: &mut Vec<u8>, session: &str, first_seq: u64, count: u32) {
    out.extend_from_slice(
        &u32::try_from(session.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(session.as_bytes());
    out.extend_from_slice(&first_seq.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
}

/// Decodes a footer strictly: every length checked against what is left
/// (nothing is allocated beyond the input), no trailing bytes.
///
/// # Errors
/// [`FooterError`] naming the entry and field.
pub fn decode_footer(body: &[u8]) -> Result<Footer, FooterError> {
    if body.len() < FOOTER_HEAD || body[0] != FOOTER_TAG || body[1] != FOOTER_VERSION || body[2] > 1
    {
        return Err(FooterError::Tag(body[..body.len().min(3)].to_vec()));
    }
    let last = body[2] == 1;
    let n = u32::from_be_bytes([body[3], body[4], body[5], body[6]]);
    let mut rest = &body[FOOTER_HEAD..];
    // Each entry takes at least ENTRY_FIXED + 1 bytes: a bound on the count
    // that a forged one cannot exceed.
    let mut entries = Vec::with_capacity((n as usize).min(rest.len() / (ENTRY_FIXED + 1)));
    for entry in 0..n {
        let short = |what| FooterError::Short { what, entry };
        let len = take::<4>(&mut rest).ok_or(short("the session's length"))?;
        let len = u32::from_be_bytes(len) as usize;
        if rest.len() < len {
            return Err(short("the session id"));
        }
        let (id, after) = rest.split_at(len);
        rest = after;
        if id.is_empty() {
            return Err(FooterError::Session {
                entry,
                why: "empty",
            });
        }
        let session = std::str::from_utf8(id)
            .map_err(|_| FooterError::Session {
                entry,
                why: "not UTF-8",
            })?
            .to_owned();
        let first_seq = u64::from_be_bytes(take::<8>(&mut rest).ok_or(short("the first seq"))?);
        let count = u32::from_be_bytes(take::<4>(&mut rest).ok_or(short("the count"))?);
        if count == 0 {
            return Err(FooterError::Empty { entry, session });
        }
        if first_seq.checked_add(u64::from(count)).is_none() {
            return Err(FooterError::SeqOverflow {
                entry,
                session,
                first_seq,
                count,
            });
        }
        entries.push(FooterEntry {
            session,
            first_seq,
            count,
        });
    }
    if !rest.is_empty() {
        return Err(FooterError::Trailing(rest.len()));
    }
    Ok(Footer { last, entries })
}

fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(*head)
}

/// The segment directory of an audit directory.
pub fn segments_dir(audit_dir: &Path) -> PathBuf {
    audit_dir.join("segments")
}

/// The path of segment `number` in `dir`: 20 digits, so that names sort as
/// numbers do.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

/// The number in a segment's file name; `None` for any other name (only
/// exactly 20 digits then `.seg` is a segment).
pub fn segment_number(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, by number; a missing directory has none. Other
/// files (evidence, an operator's notes) are not segments and are ignored.
///
/// # Errors
/// [`SegmentError::Dir`] if the directory cannot be listed.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SegmentError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SegmentError::Dir {
                op: "list",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SegmentError::Dir {
            op: "list",
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(n) = entry.file_name().to_str().and_then(segment_number)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// One session's records staged for a round, in the auditor's staging
/// format: `count` records, each `len: u32 LE ‖ body`, back to back.
#[derive(Debug, Clone, Copy)]
pub struct StagedChunk<'a> {
    /// The session whose records these are.
    pub session: &'a str,
    /// The sequence number of the first.
    pub first_seq: u64,
    /// How many records `staged` holds.
    pub count: u32,
    /// The records.
    pub staged: &'a [u8],
}

impl StagedChunk<'_> {
    /// The bodies, checked: exactly `count` of them filling `staged`, each
    /// non-empty, at most [`MAX_RECORD`] bytes and not starting with a
    /// segment's own tags; the session id non-empty and at most
    /// [`MAX_SESSION_ID`] bytes.
    fn bodies(&self, index: usize) -> Result<Vec<&[u8]>, SegmentError> {
        let bad = |reason: String| SegmentError::BadChunk {
            index,
            session: self.session.to_owned(),
            reason,
        };
        if self.session.is_empty() {
            return Err(bad("the session id is empty".into()));
        }
        if self.session.len() > MAX_SESSION_ID {
            return Err(bad(format!(
                "the session id has {} bytes, more than {MAX_SESSION_ID}",
                self.session.len()
            )));
        }
        if self.count == 0 {
            return Err(bad("it has no records".into()));
        }
        if self.first_seq.checked_add(u64::from(self.count)).is_none() {
            return Err(bad(format!(
                "seq {} + {} records overflows",
                self.first_seq, self.count
            )));
        }
        // Each record takes at least 5 staged bytes: a claimed count cannot
        // make this allocate more than the input.
        let mut bodies = Vec::with_capacity((self.count as usize).min(self.staged.len() / 5));
        let mut rest = self.staged;
        while !rest.is_empty() {
            let at = self.staged.len() - rest.len();
            let len = take::<4>(&mut rest)
                .ok_or_else(|| bad(format!("a partial length at byte {at}")))?;
            let len = u32::from_le_bytes(len);
            if len > MAX_RECORD || rest.len() < len as usize {
                return Err(bad(format!(
                    "record {} at byte {at} claims {len} bytes, {} remain (limit {MAX_RECORD})",
                    bodies.len(),
                    rest.len()
                )));
            }
            let (body, after) = rest.split_at(len as usize);
            match body.first() {
                None => return Err(bad(format!("record {} is empty", bodies.len()))),
                Some(&tag @ (FOOTER_TAG | START_TAG)) => {
                    return Err(bad(format!(
                        "record {} starts with {tag:#04x}, a segment's own tag",
                        bodies.len()
                    )));
                }
                Some(_) => {}
            }
            bodies.push(body);
            rest = after;
        }
        if bodies.len() != self.count as usize {
            return Err(bad(format!(
                "it holds {} records, not the {} it claims",
                bodies.len(),
                self.count
            )));
        }
        Ok(bodies)
    }
}

/// Where a round went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundLocation {
    /// The segment's number.
    pub segment: u64,
    /// The offset of the round's first record.
    pub offset: u64,
    /// The segment's length after the round (its last footer's end).
    pub end: u64,
}

/// Appends rounds to segments; see the module docs.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    max_bytes: u64,
    /// The number the next new segment gets.
    next: u64,
    /// The segment created last in `dir` as far as this writer knows: the
    /// highest present when it was opened, then each one it created (0 for
    /// none). The next segment's start record names it, so that a segment
    /// missing between two others is found ([`SegmentContents::previous`]).
    last_created: u64,
    /// The segment being appended to, if any.
    current: Option<(u64, RecordWriter)>,
}

impl SegmentWriter {
    /// A writer for `dir` (created if missing). Its first round starts a new
    /// segment, numbered after the highest present: it never appends to a
    /// segment it did not create. A segment is closed after the round that
    /// takes it to `max_bytes` or beyond.
    ///
    /// # Errors
    /// [`SegmentError::Dir`] if the directory cannot be made or listed.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<SegmentWriter, SegmentError> {
        fs::create_dir_all(dir).map_err(|source| SegmentError::Dir {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let last = list_segments(dir)?.last().map_or(0, |(n, _)| *n);
        // A prune's temporary copy a crash left before its rename: the
        // segment itself is whole, the copy is not needed.
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let leftover = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".tmp"))
                    .and_then(segment_number)
                    .is_some();
                if leftover && let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e,
                        "a pruned segment's leftover temporary copy could not be removed");
                }
            }
        }
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            max_bytes,
            next: last.checked_add(1).ok_or_else(|| SegmentError::Exhausted {
                path: dir.to_path_buf(),
            })?,
            last_created: last,
            current: None,
        })
    }

    /// The segment the next round goes to if it is still open.
    pub fn current_segment(&self) -> Option<u64> {
        self.current.as_ref().map(|(n, _)| *n)
    }

    /// The lowest segment the next round can go to: the open one, else the
    /// next new one. A round that fails is in that segment or a later one,
    /// if anywhere.
    pub fn next_round_floor(&self) -> u64 {
        self.current_segment().unwrap_or(self.next)
    }

    /// The highest segment number this writer has used (or, before its
    /// first round, the highest present when it was opened; 0 for none):
    /// no round written so far is in a later segment.
    pub fn highest_used(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Closes the open segment, if any: the next round starts a new one,
    /// and the closed one is never written by this writer again (so it may
    /// be rewritten, as [`prune_segment`] does).
    pub fn close_current(&mut self) {
        self.current = None;
    }

    /// Appends one round: every chunk's records in order, then the footer
    /// naming them, in one write, then syncs the segment's data. When this
    /// returns `Ok` the round is durable. `now` is the caller's clock
    /// reading (the record writer's group-commit clock; unused here, as
    /// every round is synced).
    ///
    /// `oldest_live` is the lowest segment number holding a chunk of a
    /// session that is not sealed yet (any number at or above the next
    /// segment's if none is): a segment this round starts records it in its
    /// start record, for [`recovery_start`]. A caller that does not track it
    /// passes 1, and recovery then reads every segment.
    ///
    /// A round with no chunks writes nothing (it creates no segment either)
    /// and returns where the next round would start: the open segment's
    /// end, or the next segment's number and offset 0 when none is open.
    ///
    /// # Errors
    /// [`SegmentError::BadChunk`] before anything is written;
    /// [`SegmentError::Record`] from creating, writing or syncing the
    /// segment. After a failed write the round's bytes are cut off again
    /// before the next round; after a failed sync the next round starts a
    /// new segment (the failed one may or may not hold this round: see the
    /// module docs on repeated chunks). Either way the caller retries with
    /// the same chunks.
    ///
    /// # Panics
    /// A panic while the round is appended (a bug) is handled as a failed
    /// write — the round's bytes dropped, the segment kept, the file cut
    /// back before the next write — and then resumed, for the caller to
    /// catch.
    pub fn append_round(
        &mut self,
        chunks: &[StagedChunk<'_>],
        oldest_live: u64,
        now: Duration,
    ) -> Result<RoundLocation, SegmentError> {
        let bodies = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| c.bodies(i))
            .collect::<Result<Vec<_>, _>>()?;
        if chunks.is_empty() {
            let (segment, end) = self
                .current
                .as_ref()
                .map_or((self.next, 0), |(n, w)| (*n, w.durable_len()));
            return Ok(RoundLocation {
                segment,
                offset: end,
                end,
            });
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(_, w)| w.durable_len() >= self.max_bytes)
        {
            self.current = None;
        }
        let (segment, mut w) = match self.current.take() {
            Some(open) => open,
            None => {
                let number = self.next;
                // Moved on whether or not the creation succeeds: a number
                // whose file could not be removed again (or that something
                // else took) is never tried twice.
                self.next = number
                    .checked_add(1)
                    .ok_or_else(|| SegmentError::Exhausted {
                        path: self.dir.clone(),
                    })?;
                let w = create_segment(
                    &self.dir,
                    number,
                    oldest_live.min(number),
                    self.last_created,
                    now,
                )?;
                self.last_created = number;
                (number, w)
            }
        };
        let offset = w.durable_len();
        let appended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut footer = footer_start();
            let mut entries = 0u32;
            for (c, bodies) in chunks.iter().zip(&bodies) {
                if footer.len() + ENTRY_FIXED + c.session.len() > MAX_RECORD as usize {
                    // Not the round's last footer: a reader keeps none of
                    // the round's chunks until the last one is there.
                    close_footer(&mut footer, entries, false);
                    w.append(&footer, now)?;
                    footer = footer_start();
                    entries = 0;
                }
                for body in bodies {
                    w.append(body, now)?;
                }
                put_entry(&mut footer, c.session, c.first_seq, c.count);
                entries += 1;
            }
            close_footer(&mut footer, entries, true);
            w.append(&footer, now)?;
            w.flush()
        }));
        let appended = match appended {
            Ok(appended) => appended,
            Err(panic) => {
                // A panic (a bug) is a failed write: the round's bytes are
                // dropped, and the writer, which counts a write it was
                // interrupted in as failed, cuts the file back before the
                // next one. The writer stays, so that the unwind does not
                // drop it with the half-built round pending. The caller
                // (`Auditor`) turns the panic into an error.
                w.discard_pending();
                self.current = Some((segment, w));
                std::panic::resume_unwind(panic);
            }
        };
        match appended {
            Ok(()) => {
                let end = w.durable_len();
                self.current = Some((segment, w));
                Ok(RoundLocation {
                    segment,
                    offset,
                    end,
                })
            }
            Err(e) => {
                if !matches!(
                    e,
                    RecordError::Io {
                        op: crate::records::IoOp::Sync,
                        ..
                    } | RecordError::Poisoned { .. }
                ) {
                    // Cut off again before the next write (the writer
                    // remembers the failed write); the caller retries.
                    w.discard_pending();
                    self.current = Some((segment, w));
                }
                // Otherwise what reached the disk is unknown: the writer is
                // dropped and the retry goes to a new segment rather than
                // after bytes of unknown state.
                Err(e.into())
            }
        }
    }
}

/// Creates segment `number` with its start record, and syncs both it and
/// its directory entry: a round's sync then covers only data. A segment
/// whose creation failed is removed again (as far as the file system lets
/// it).
fn create_segment(
    dir: &Path,
    number: u64,
    oldest_live: u64,
    previous: u64,
    now: Duration,
) -> Result<RecordWriter, RecordError> {
    let path = segment_path(dir, number);
    let mut w = RecordWriter::create_unsynced(&path, LogKind::SEGMENT, Durability::OnClose)?;
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.append(&encode_start(oldest_live, previous), now)?;
        w.flush()?;
        crate::records::sync_parent(&path)
    }));
    let made = match made {
        Ok(made) => made,
        Err(panic) => {
            // As a failure: the file goes.
            w.abandon();
            let _ = fs::remove_file(&path);
            std::panic::resume_unwind(panic);
        }
    };
    if let Err(e) = made {
        // The file goes; dropping the writer would write it again first.
        w.abandon();
        if let Err(rm) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %rm,
                "a segment whose creation failed could not be removed");
        }
        return Err(e);
    }
    Ok(w)
}

/// What a segment's start record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The lowest segment holding a chunk of a session that was not sealed
    /// when this one was started (see [`recovery_start`]).
    pub oldest_live: u64,
    /// The segment its writer created last before it (0 for none); `None`
    /// in a version-1 start record, which does not say.
    pub previous: Option<u64>,
}

/// Encodes a start record (the current version).
pub fn encode_start(oldest_live: u64, previous: u64) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[0] = START_TAG;
    out[1] = START_VERSION;
    out[2..10].copy_from_slice(&oldest_live.to_be_bytes());
    out[10..].copy_from_slice(&previous.to_be_bytes());
    out
}

/// Decodes a start record of either version: `None` unless `body` is
/// exactly one.
pub fn decode_start(body: &[u8]) -> Option<Start> {
    let u64_at = |b: &[u8]| b.try_into().ok().map(u64::from_be_bytes);
    match body {
        [START_TAG, START_VERSION_1, rest @ ..] => Some(Start {
            oldest_live: u64_at(rest)?,
            previous: None,
        }),
        [START_TAG, START_VERSION, rest @ ..] if rest.len() == 16 => Some(Start {
            oldest_live: u64_at(&rest[..8])?,
            previous: Some(u64_at(&rest[8..])?),
        }),
        _ => None,
    }
}

/// Where recovery starts reading: the oldest live segment named by the
/// last segment that has a readable start record. A segment without one (a
/// crash cut its creation short, or its first record is damaged, or it is
/// not a segment at all) is passed over and the one before it asked: an
/// earlier segment's start is a safe bound too, only a lower one (a session
/// unsealed at the crash either was live when that segment was started, or
/// began after, in it or a later one). 1 when no segment has one: then
/// every segment is read.
///
/// # Errors
/// As [`list_segments`]; [`SegmentError::Record`] if a segment cannot be
/// opened or read (an I/O error, not its contents).
pub fn recovery_start(dir: &Path) -> Result<u64, SegmentError> {
    for (_, path) in list_segments(dir)?.iter().rev() {
        let mut start = None;
        match crate::records::scan_log(path, LogKind::SEGMENT, 0, |r| {
            start = decode_start(&r.body).map(|s| s.oldest_live);
            false
        }) {
            Ok(()) => {}
            Err(e @ RecordError::Io { .. }) => return Err(e.into()),
            // What the file holds, not whether it can be read: no start.
            Err(_) => start = None,
        }
        if let Some(oldest) = start {
            return Ok(oldest.max(1));
        }
    }
    Ok(1)
}

fn footer_start() -> Vec<u8> {
    let mut f = Vec::with_capacity(256);
    f.extend_from_slice(&[FOOTER_TAG, FOOTER_VERSION, 0, 0, 0, 0, 0]);
    f
}

fn close_footer(footer: &mut [u8], entries: u32, last: bool) {
    footer[2] = u8::from(last);
    footer[3..FOOTER_HEAD].copy_from_slice(&entries.to_be_bytes());
}

/// One session's records in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The session the footer names.
    pub session: String,
    /// The sequence number the footer gives the first record.
    pub first_seq: u64,
    /// The records, in order.
    pub records: Vec<Record>,
}

/// A round that cannot be attributed: its records are read but not handed
/// to any session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRound {
    /// The offset of the round's first byte.
    pub offset: u64,
    /// The offset of the footer that closes it.
    pub footer: u64,
    /// Why.
    pub reason: String,
    /// The sessions its footers name, as far as they decode: their records
    /// in it are lost to them.
    pub sessions: Vec<String>,
    /// Whether every footer of the round decoded, so that `sessions` is all
    /// of them; if not, any session may have had records in it.
    pub named: bool,
}

/// What [`read_segment`] found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentContents {
    /// The segment's number.
    pub number: u64,
    /// Its path.
    pub path: PathBuf,
    /// The oldest live segment its start record names; `None` if it has no
    /// start record.
    pub start: Option<u64>,
    /// The segment its start record says was created before it (0 for
    /// none); `None` if it has no start record or one of version 1. A
    /// number named here that is not in the directory is a segment that
    /// went missing: the auditor never deletes one.
    pub previous: Option<u64>,
    /// The file's length when a crash while it was created explains it
    /// (see [`unwritten`]): it holds nothing.
    pub unwritten: Option<u64>,
    /// Every chunk of every whole round, in file order.
    pub chunks: Vec<Chunk>,
    /// Rounds whose footer does not match their records: a damaged
    /// footer, a count that differs from the records before it, or a
    /// damaged record inside. Damage, not a crash (a crash only tears the
    /// end), unless a failed sync let the kernel write pages out of order.
    pub damaged: Vec<DamagedRound>,
    /// The offset just past the last footer read (of a whole or a damaged
    /// round); the start record's end, or the header's, if there is none.
    /// Everything after it belongs to no round.
    pub rounds_end: u64,
    /// Whole records after the last round's closing footer (those of its
    /// earlier footers too, when a round has several): a round that was
    /// being written when the writer stopped, never acknowledged.
    pub uncommitted: Vec<Record>,
    /// Damaged records followed by valid ones (also counted in `damaged`
    /// when inside a round).
    pub corrupt: Vec<CorruptRecord>,
    /// The torn end of the segment, if any.
    pub tail: Option<TornTail>,
}

impl SegmentContents {
    /// True when every record belongs to a whole, matching round.
    pub fn is_clean(&self) -> bool {
        self.start.is_some()
            && self.unwritten.is_none()
            && self.damaged.is_empty()
            && self.uncommitted.is_empty()
            && self.corrupt.is_empty()
            && self.tail.is_none()
    }
}

/// The most bytes a crash while a segment was created can leave: its
/// header and its start record, written with one `pwrite` and synced before
/// any round goes in.
const CREATED_LEN: u64 = crate::records::HEADER_LEN + crate::records::FRAME_HEADER_LEN + 18;

/// The length of the segment file at `path` if a crash while it was created
/// explains it: shorter than a header, or no longer than what creation
/// writes ([`CREATED_LEN`]) and zero bytes only (a file system may show
/// blocks a crash left unwritten as zeros). Nothing in such a file was ever
/// synced, so it holds nothing. A longer file of zeros was synced once and
/// zeroed since: damage, not this.
///
/// # Errors
/// [`SegmentError::Record`] with [`RecordError::Io`]: it cannot be read.
pub fn unwritten(path: &Path) -> Result<Option<u64>, SegmentError> {
    let len = file_len(path)?;
    if len < crate::records::HEADER_LEN {
        return Ok(Some(len));
    }
    if len > CREATED_LEN {
        return Ok(None);
    }
    // Read again rather than trusted (it may have grown since), and no
    // more than one byte past what creation writes.
    use std::io::Read as _;
    let mut bytes = Vec::with_capacity(CREATED_LEN as usize + 1);
    fs::File::open(path)
        .and_then(|f| f.take(CREATED_LEN + 1).read_to_end(&mut bytes))
        .map_err(crate::records::io(crate::records::IoOp::Read, path))?;
    let small = bytes.len() as u64 <= CREATED_LEN;
    Ok((small && bytes.iter().all(|b| *b == 0)).then_some(bytes.len() as u64))
}

/// Whether the segment file at `path` is too short to hold a round: no
/// longer than what creating it writes ([`CREATED_LEN`]). A process that
/// stops between creating a segment and writing its first round leaves
/// one, whole or cut short.
///
/// # Errors
/// [`SegmentError::Record`] with [`RecordError::Io`]: it cannot be read.
pub fn holds_no_round(path: &Path) -> Result<bool, SegmentError> {
    Ok(file_len(path)? <= CREATED_LEN)
}

/// The length of the file at `path`.
fn file_len(path: &Path) -> Result<u64, RecordError> {
    let meta = fs::metadata(path).map_err(crate::records::io(crate::records::IoOp::Read, path))?;
    Ok(meta.len())
}

/// Reads segment `number` at `path` (see the module docs for what is kept).
/// Never modifies the file; holds the segment in memory while splitting it.
///
/// # Errors
/// [`SegmentError::Record`]: the file cannot be read, or its header is not a
/// segment's.
pub fn read_segment(number: u64, path: &Path) -> Result<SegmentContents, SegmentError> {
    let mut out = SegmentContents {
        number,
        path: path.to_path_buf(),
        start: None,
        previous: None,
        unwritten: None,
        chunks: Vec::new(),
        damaged: Vec::new(),
        rounds_end: 0,
        uncommitted: Vec::new(),
        corrupt: Vec::new(),
        tail: None,
    };
    let recovered = match read_log(path, LogKind::SEGMENT) {
        Ok(r) => r,
        Err(RecordError::ShortHeader { len, .. }) => {
            out.unwritten = Some(len);
            return Ok(out);
        }
        Err(e @ RecordError::BadMagic { .. }) => match unwritten(path)? {
            Some(len) => {
                out.unwritten = Some(len);
                return Ok(out);
            }
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    out.corrupt = recovered.corrupt;
    out.tail = recovered.tail;
    let mut records = recovered.records.into_iter().peekable();
    let mut round_start = crate::records::HEADER_LEN;
    if let Some(first) = records.peek()
        && let Some(start) = decode_start(&first.body)
    {
        out.start = Some(start.oldest_live);
        out.previous = start.previous;
        round_start = first.end();
        records.next();
    }
    // Records since the last footer, and the chunks of the round's earlier
    // footers (a round too large for one footer): kept only once the
    // round's last footer is read.
    let mut pending: Vec<Record> = Vec::new();
    let mut partial: Vec<Chunk> = Vec::new();
    let mut part_start = round_start;
    // Both lists are in offset order: one pass over the damaged records.
    let mut corrupt = 0;
    for record in records {
        if record.body.first() != Some(&FOOTER_TAG) {
            pending.push(record);
            continue;
        }
        let footer_at = record.offset;
        while out
            .corrupt
            .get(corrupt)
            .is_some_and(|c| c.offset < part_start)
        {
            corrupt += 1;
        }
        let damage_inside = out
            .corrupt
            .get(corrupt)
            .filter(|c| c.offset < footer_at)
            .map(|c| c.offset);
        let damaged_count = out.corrupt[corrupt..]
            .iter()
            .take_while(|c| c.offset < footer_at)
            .count() as u64;
        let verdict = match decode_footer(&record.body) {
            Err(e) => Err(format!("the footer is damaged: {e}")),
            Ok(_) if damage_inside.is_some() => Err(format!(
                "a damaged record at offset {} lies inside it",
                damage_inside.unwrap_or(0)
            )),
            Ok(footer) => {
                let named: u64 = footer.entries.iter().map(|e| u64::from(e.count)).sum();
                if named == pending.len() as u64 {
                    Ok(footer)
                } else {
                    Err(format!(
                        "the footer names {named} records, the round holds {}",
                        pending.len()
                    ))
                }
            }
        };
        let end = record.end();
        let names = |partial: &[Chunk]| {
            // Only a footer that decodes says whose records the round held,
            // and only if its damaged records are exactly the ones it is
            // missing: a damaged record may otherwise be an earlier round's
            // footer, whose chunks this round then swallowed (which would
            // make it hold more than it names, not fewer).
            let footer = decode_footer(&record.body).ok().filter(|f| {
                let named: u64 = f.entries.iter().map(|e| u64::from(e.count)).sum();
                named == pending.len() as u64 + damaged_count
            });
            let mut names: Vec<String> = partial.iter().map(|c| c.session.clone()).collect();
            names.extend(
                footer
                    .iter()
                    .flat_map(|f| f.entries.iter().map(|e| e.session.clone())),
            );
            names.sort();
            names.dedup();
            (names, footer.is_some())
        };
        match verdict {
            Ok(footer) => {
                let mut records = std::mem::take(&mut pending).into_iter();
                for e in footer.entries {
                    partial.push(Chunk {
                        records: records.by_ref().take(e.count as usize).collect(),
                        session: e.session,
                        first_seq: e.first_seq,
                    });
                }
                if footer.last {
                    out.chunks.append(&mut partial);
                    round_start = end;
                }
            }
            Err(reason) => {
                let (sessions, named) = names(&partial);
                pending.clear();
                partial.clear();
                out.damaged.push(DamagedRound {
                    offset: round_start,
                    footer: footer_at,
                    reason,
                    sessions,
                    named,
                });
                round_start = end;
            }
        }
        part_start = end;
    }
    out.rounds_end = round_start;
    out.uncommitted = partial
        .into_iter()
        .flat_map(|c| c.records)
        .chain(pending)
        .collect();
    Ok(out)
}

/// What [`prune_segment`] did to a segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The sessions that had records pruned, with how many.
    pub sessions: BTreeMap<String, u64>,
    /// Whether every record of every whole round in the segment is now a
    /// pruned one (nothing in it can be pruned any more).
    pub fully_pruned: bool,
}

/// Replaces, in segment `number` at `path`, the body of every record of a
/// whole round whose session `prune` selects by its pruned form
/// (`0xF0 ‖ seq ‖ leaf hash`, see [`crate::commitment::encode_pruned`]),
/// and writes the result in place of the segment atomically (a temporary
/// file, synced, renamed over it, the directory synced). Every other byte
/// is kept as it was: other sessions' records, footers, the start record,
/// and what a crash left at the end (records never acknowledged, a torn
/// record), which stay evidence. Records already pruned are left as they
/// are. The segment must be closed: no writer may append to it while this
/// runs ([`SegmentWriter::close_current`]).
///
/// # Errors
/// As [`read_segment`]; [`SegmentError::Record`] if the new segment cannot
/// be written (the old one is then untouched).
pub fn prune_segment(
    number: u64,
    path: &Path,
    mut prune: impl FnMut(&str) -> bool,
) -> Result<Pruned, SegmentError> {
    use crate::commitment::{PRUNED_TAG, decode_pruned, encode_pruned};
    let contents = read_segment(number, path)?;
    let mut out = Pruned {
        sessions: BTreeMap::new(),
        fully_pruned: true,
    };
    // (offset, end, new body) of each record replaced, in file order.
    let mut replace: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    for chunk in &contents.chunks {
        let selected = prune(&chunk.session);
        for (i, r) in chunk.records.iter().enumerate() {
            let already = r.body.first() == Some(&PRUNED_TAG) && decode_pruned(&r.body).is_ok();
            if already {
                continue;
            }
            if !selected {
                out.fully_pruned = false;
                continue;
            }
            let seq = chunk.first_seq.saturating_add(i as u64);
            let leaf = crate::merkle::leaf_hash(&r.body);
            replace.push((r.offset, r.end(), encode_pruned(seq, &leaf).to_vec()));
            *out.sessions.entry(chunk.session.clone()).or_default() += 1;
        }
    }
    if replace.is_empty() {
        return Ok(out);
    }
    replace.sort_unstable_by_key(|(offset, _, _)| *offset);
    let old = fs::read(path).map_err(|source| RecordError::Io {
        op: crate::records::IoOp::Read,
        path: path.to_path_buf(),
        source,
    })?;
    let mut new = Vec::with_capacity(old.len());
    let mut at = 0usize;
    for (offset, end, body) in &replace {
        let (offset, end) = (
            usize::try_from(*offset).unwrap_or(usize::MAX),
            usize::try_from(*end).unwrap_or(usize::MAX),
        );
        if offset < at || end > old.len() {
            // The file changed under us (it was to be closed): touch nothing.
            return Err(SegmentError::Changed {
                path: path.to_path_buf(),
            });
        }
        new.extend_from_slice(&old[at..offset]);
        crate::records::encode_frame_into(&mut new, body);
        at = end;
    }
    new.extend_from_slice(&old[at..]);
    crate::records::replace_file(path, &new)?;
    Ok(out)
}

/// A record of a session and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The segment it is in.
    pub segment: u64,
    /// The sequence number its footer gives it.
    pub seq: u64,
    /// The record (its offset is in that segment).
    pub record: Record,
}

/// Something wrong with how a session's chunks fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssemblyProblem {
    /// A chunk starts after the next expected sequence number: records are
    /// missing between it and the one before.
    Gap {
        /// The segment of the chunk.
        segment: u64,
        /// The offset of its first record.
        offset: u64,
        /// The sequence number expected next.
        expected: u64,
        /// The one the chunk starts at.
        found: u64,
    },
    /// A chunk names a sequence number already passed, with a different
    /// record than the one read for it, or one that was never read (it
    /// falls in an earlier gap). The chunk's record is not kept.
    Conflict {
        /// The segment of the chunk.
        segment: u64,
        /// The offset of the differing record.
        offset: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// A chunk repeats records, identical, that were read from the same
    /// segment. A retried round is written to a new segment (only a failed
    /// sync leaves a round that may be on disk), so this is not a retry.
    /// The repeat is not kept.
    RepeatedInSegment {
        /// The segment.
        segment: u64,
        /// The offset of the repeated record.
        offset: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// A chunk's sequence numbers would pass `u64::MAX` (a footer never
    /// says so; a chunk made by hand could). The chunk is not kept.
    SeqOverflow {
        /// The segment of the chunk.
        segment: u64,
        /// The first seq it claims.
        first_seq: u64,
        /// How many records it has.
        count: usize,
    },
}

/// A session's records gathered from segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRecords {
    /// The records, in order (a gap shows as a jump of [`Located::seq`]).
    pub records: Vec<Located>,
    /// Records read again, identical, from a chunk a retried round wrote
    /// twice (not kept twice).
    pub repeated: u64,
    /// Chunks that do not fit.
    pub problems: Vec<AssemblyProblem>,
    /// The sequence number the next chunk should start at.
    pub next_seq: u64,
    /// The segment of its first chunk read, whether or not its records
    /// were kept.
    pub first_segment: Option<u64>,
}

/// Gathers sessions' records from segments read in number order.
#[derive(Debug, Clone, Default)]
pub struct SessionAssembler {
    only: Option<String>,
    sessions: BTreeMap<String, SessionRecords>,
    unclean: Vec<u64>,
}

impl SessionAssembler {
    /// An assembler that keeps only `session`'s records (to read one session
    /// without holding every other one in memory).
    pub fn only(session: &str) -> SessionAssembler {
        SessionAssembler {
            only: Some(session.to_owned()),
            sessions: BTreeMap::new(),
            unclean: Vec::new(),
        }
    }

    /// Adds a segment's chunks; segments must be added in number order. A
    /// segment that is not clean ([`SegmentContents::is_clean`]) is
    /// remembered ([`SessionAssembler::unclean`]): what it lost is in no
    /// session's records.
    pub fn add_segment(&mut self, segment: &SegmentContents) {
        if !segment.is_clean() {
            self.unclean.push(segment.number);
        }
        for chunk in &segment.chunks {
            self.add_chunk(segment.number, chunk);
        }
    }

    /// Adds one chunk read from `segment`.
    pub fn add_chunk(&mut self, segment: u64, chunk: &Chunk) {
        if self.only.as_ref().is_some_and(|s| *s != chunk.session) {
            return;
        }
        let s = self.sessions.entry(chunk.session.clone()).or_default();
        s.first_segment.get_or_insert(segment);
        let first = chunk.first_seq;
        if first.checked_add(chunk.records.len() as u64).is_none() {
            s.problems.push(AssemblyProblem::SeqOverflow {
                segment,
                first_seq: first,
                count: chunk.records.len(),
            });
            return;
        }
        if first > s.next_seq {
            s.problems.push(AssemblyProblem::Gap {
                segment,
                offset: chunk.records.first().map_or(0, |r| r.offset),
                expected: s.next_seq,
                found: first,
            });
        }
        for (i, record) in chunk.records.iter().enumerate() {
            let seq = first + i as u64;
            if seq < s.next_seq {
                // Already read: the same bytes again (a retried round), or
                // a conflict. Kept records are in increasing seq order (a
                // record is kept only at or past `next_seq`), so found by
                // binary search: no crafted run of repeats makes this
                // quadratic. A seq skipped by a gap is not held: a conflict.
                let held = s
                    .records
                    .binary_search_by_key(&seq, |r| r.seq)
                    .ok()
                    .map(|i| &s.records[i])
                    .filter(|r| r.record.body == record.body);
                if let Some(held) = held {
                    if held.segment == segment {
                        s.problems.push(AssemblyProblem::RepeatedInSegment {
                            segment,
                            offset: record.offset,
                            seq,
                        });
                    } else {
                        s.repeated += 1;
                    }
                } else {
                    s.problems.push(AssemblyProblem::Conflict {
                        segment,
                        offset: record.offset,
                        seq,
                    });
                }
                continue;
            }
            s.records.push(Located {
                segment,
                seq,
                record: record.clone(),
            });
            s.next_seq = seq + 1;
        }
    }

    /// The segments added that were not clean, in the order added.
    pub fn unclean(&self) -> &[u64] {
        &self.unclean
    }

    /// A session's records, if any chunk named it.
    pub fn get(&self, session: &str) -> Option<&SessionRecords> {
        self.sessions.get(session)
    }

    /// Every session read, by id.
    pub fn sessions(&self) -> &BTreeMap<String, SessionRecords> {
        &self.sessions
    }

    /// The sessions, by id, for a caller that takes them over.
    pub fn into_sessions(self) -> BTreeMap<String, SessionRecords> {
        self.sessions
    }
}

/// One session read from every segment: [`session_records`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OneSession {
    /// Its records (empty if no chunk names it).
    pub records: SessionRecords,
    /// Segments that are not clean: a damaged or unfinished round in one
    /// of them may have held records of this session too.
    pub unclean_segments: Vec<u64>,
}

/// Reads one session's records from every segment in `dir`. A segment that
/// cannot be read for what it holds (its header is not a segment's) is
/// listed in [`OneSession::unclean_segments`], not an error.
///
/// # Errors
/// As [`list_segments`]; [`SegmentError::Record`] for an I/O failure.
pub fn session_records(dir: &Path, session: &str) -> Result<OneSession, SegmentError> {
    let mut assembler = SessionAssembler::only(session);
    let mut unreadable = Vec::new();
    for (number, path) in list_segments(dir)? {
        match read_segment(number, &path) {
            Ok(c) => assembler.add_segment(&c),
            Err(e @ SegmentError::Record(RecordError::Io { .. })) => return Err(e),
            // Not a segment at all (its header): as unclean as can be.
            Err(_) => unreadable.push(number),
        }
    }
    let mut unclean_segments = assembler.unclean().to_vec();
    unclean_segments.extend(unreadable);
    unclean_segments.sort_unstable();
    Ok(OneSession {
        records: assembler
            .into_sessions()
            .remove(session)
            .unwrap_or_default(),
        unclean_segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{FRAME_HEADER_LEN, HEADER_LEN, test_faults};
    use proptest::prelude::*;

    /// A delta-like body (first byte 0x01) naming its session and seq.
    fn body(session: &str, seq: u64) -> Vec<u8> {
        format!("\x01{session}#{seq}").into_bytes()
    }

    /// The auditor's staging format for `bodies`.
    fn staged(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    /// A round's chunks, owned: (session, first seq, bodies).
    type Round = Vec<(String, u64, Vec<Vec<u8>>)>;

    fn round(spec: &[(&str, std::ops::Range<u64>)]) -> Round {
        spec.iter()
            .map(|(s, seqs)| {
                (
                    s.to_string(),
                    seqs.start,
                    seqs.clone().map(|q| body(s, q)).collect(),
                )
            })
            .collect()
    }

    fn write(w: &mut SegmentWriter, r: &Round) -> Result<RoundLocation, SegmentError> {
        let bytes: Vec<Vec<u8>> = r.iter().map(|(_, _, b)| staged(b)).collect();
        let chunks: Vec<StagedChunk<'_>> = r
            .iter()
            .zip(&bytes)
            .map(|((s, first, b), bytes)| StagedChunk {
                session: s,
                first_seq: *first,
                count: b.len() as u32,
                staged: bytes,
            })
            .collect();
        w.append_round(&chunks, 1, Duration::ZERO)
    }

    fn read_all(dir: &Path) -> (Vec<SegmentContents>, SessionAssembler) {
        let mut a = SessionAssembler::default();
        let mut all = Vec::new();
        for (n, p) in list_segments(dir).unwrap() {
            let c = read_segment(n, &p).unwrap();
            a.add_segment(&c);
            all.push(c);
        }
        (all, a)
    }

    /// Where a segment's first round starts: after the header and the
    /// start record.
    const FIRST_ROUND: u64 = HEADER_LEN + FRAME_HEADER_LEN + 18;

    fn bodies_of(s: &SessionRecords) -> Vec<Vec<u8>> {
        s.records.iter().map(|r| r.record.body.clone()).collect()
    }

    #[test]
    fn rounds_come_back_as_the_chunks_they_were_written_as() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        let first = write(&mut w, &round(&[("s-1", 0..3), ("s-2", 0..2)])).unwrap();
        let second = write(&mut w, &round(&[("s-1", 3..5)])).unwrap();
        assert_eq!((first.segment, first.offset), (1, FIRST_ROUND));
        assert_eq!((second.segment, second.offset), (1, first.end));
        let (segs, a) = read_all(dir.path());
        assert_eq!(segs.len(), 1);
        assert!(segs[0].is_clean(), "{:?}", segs[0]);
        let chunks: Vec<_> = segs[0]
            .chunks
            .iter()
            .map(|c| (c.session.as_str(), c.first_seq, c.records.len()))
            .collect();
        assert_eq!(chunks, [("s-1", 0, 3), ("s-2", 0, 2), ("s-1", 3, 2)]);
        let s1 = a.get("s-1").unwrap();
        assert_eq!(
            bodies_of(s1),
            (0..5).map(|q| body("s-1", q)).collect::<Vec<_>>()
        );
        assert_eq!(
            s1.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!((s1.repeated, s1.next_seq), (0, 5));
        assert!(s1.problems.is_empty());
        assert_eq!(a.get("s-2").unwrap().records.len(), 2);
        assert_eq!(
            session_records(dir.path(), "s-2").unwrap().records.next_seq,
            2
        );
        assert_eq!(
            session_records(dir.path(), "s-3").unwrap(),
            OneSession::default()
        );
        // An empty round writes nothing.
        let empty = w.append_round(&[], 1, Duration::ZERO).unwrap();
        assert_eq!(
            (empty.segment, empty.offset, empty.end),
            (1, second.end, second.end)
        );
    }

    #[test]
    fn a_segment_is_closed_after_the_round_that_fills_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 60).unwrap();
        for i in 0..4 {
            let at = write(&mut w, &round(&[("long", i * 2..i * 2 + 2)])).unwrap();
            assert_eq!(
                at.segment,
                i + 1,
                "each round fills its segment past 60 bytes"
            );
        }
        let (segs, a) = read_all(dir.path());
        assert_eq!(
            segs.iter().map(|s| s.number).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let s = a.get("long").unwrap();
        assert_eq!(
            bodies_of(s),
            (0..8).map(|q| body("long", q)).collect::<Vec<_>>()
        );
        assert_eq!(
            s.records.iter().map(|r| r.segment).collect::<Vec<_>>(),
            [1, 1, 2, 2, 3, 3, 4, 4]
        );
    }

    #[test]
    fn a_writer_never_appends_to_a_segment_it_did_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        let at = write(&mut w, &round(&[("s", 0..2)])).unwrap();
        drop(w);
        let len = fs::metadata(segment_path(dir.path(), 1)).unwrap().len();
        assert_eq!(len, at.end);
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        assert_eq!(w.current_segment(), None);
        let again = write(&mut w, &round(&[("s", 2..3)])).unwrap();
        assert_eq!(again.segment, 2);
        // It names the segment an earlier writer left as the one before it.
        let c = read_segment(2, &segment_path(dir.path(), 2)).unwrap();
        assert_eq!((c.start, c.previous), (Some(1), Some(1)));
        let first = read_segment(1, &segment_path(dir.path(), 1)).unwrap();
        assert_eq!(first.previous, Some(0));
        assert_eq!(
            fs::metadata(segment_path(dir.path(), 1)).unwrap().len(),
            len
        );
        let (_, a) = read_all(dir.path());
        assert_eq!(a.get("s").unwrap().next_seq, 3);
    }

    #[test]
    fn a_crash_at_any_byte_keeps_every_whole_round_and_attributes_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(&dir.path().join("w"), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        let rounds = [
            round(&[("a", 0..2), ("b", 0..1)]),
            round(&[("b", 1..3)]),
            round(&[("a", 2..3), ("c", 0..2)]),
        ];
        let ends: Vec<u64> = rounds
            .iter()
            .map(|r| write(&mut w, r).unwrap().end)
            .collect();
        let whole = fs::read(segment_path(&dir.path().join("w"), 1)).unwrap();
        let cut_dir = dir.path().join("cut");
        fs::create_dir(&cut_dir).unwrap();
        let cut_path = segment_path(&cut_dir, 1);
        for cut in HEADER_LEN..=whole.len() as u64 {
            fs::write(&cut_path, &whole[..cut as usize]).unwrap();
            let c = read_segment(1, &cut_path).unwrap();
            let kept = ends.iter().filter(|&&e| e <= cut).count();
            let expected: usize = rounds[..kept].iter().map(Vec::len).sum();
            assert_eq!(c.chunks.len(), expected, "cut at {cut}");
            assert!(
                c.damaged.is_empty() && c.corrupt.is_empty(),
                "cut at {cut}: {c:?}"
            );
            // Everything past the last whole round is unattributed: whole
            // records as uncommitted, the rest as a torn tail.
            let last_end = match kept {
                0 if cut >= FIRST_ROUND => FIRST_ROUND,
                0 => HEADER_LEN,
                n => ends[n - 1],
            };
            assert_eq!(c.start, (cut >= FIRST_ROUND).then_some(1), "cut at {cut}");
            let accounted = c
                .uncommitted
                .iter()
                .map(|r| r.end() - r.offset)
                .sum::<u64>()
                + c.tail.as_ref().map_or(0, |t| t.len);
            assert_eq!(last_end + accounted, cut, "cut at {cut}: {c:?}");
            assert_eq!(
                c.is_clean(),
                ends.contains(&cut) || cut == FIRST_ROUND,
                "cut at {cut}"
            );
        }
    }

    /// A segment written record by record, as a writer that crashed or a
    /// forger would leave it.
    fn raw_segment(path: &Path, bodies: &[Vec<u8>]) {
        let mut w = RecordWriter::create(path, LogKind::SEGMENT, Durability::OnClose).unwrap();
        for b in bodies {
            w.append(b, Duration::ZERO).unwrap();
        }
        w.close().unwrap();
    }

    fn footer(entries: &[(&str, u64, u32)]) -> Vec<u8> {
        encode_footer(
            &entries
                .iter()
                .map(|(s, f, c)| FooterEntry {
                    session: s.to_string(),
                    first_seq: *f,
                    count: *c,
                })
                .collect::<Vec<_>>(),
            true,
        )
    }

    #[test]
    fn recovery_starts_at_the_oldest_live_segment_the_last_start_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            recovery_start(dir.path()).unwrap(),
            1,
            "no segment: read from the first"
        );
        let mut w = SegmentWriter::open(dir.path(), 1).unwrap();
        let r = round(&[("s", 0..1)]);
        let bytes = staged(&r[0].2);
        let chunk = StagedChunk {
            session: "s",
            first_seq: 0,
            count: 1,
            staged: &bytes,
        };
        // Each round fills its segment: round i starts segment i.
        for (oldest, expect) in [(1, 1), (1, 1), (3, 3), (100, 4), (2, 2)] {
            let at = w.append_round(&[chunk], oldest, Duration::ZERO).unwrap();
            let c = read_segment(at.segment, &segment_path(dir.path(), at.segment)).unwrap();
            assert_eq!(c.start, Some(expect), "segment {}", at.segment);
            assert!(c.is_clean());
        }
        assert_eq!(recovery_start(dir.path()).unwrap(), 2);
        // Segments a crash cut short while they were created: none, or a
        // header only. Recovery asks the one before.
        fs::write(segment_path(dir.path(), 6), b"").unwrap();
        raw_segment(&segment_path(dir.path(), 7), &[]);
        assert_eq!(recovery_start(dir.path()).unwrap(), 2);
        let empty = read_segment(6, &segment_path(dir.path(), 6)).unwrap();
        assert_eq!((empty.unwritten, empty.start), (Some(0), None));
        assert!(!empty.is_clean());
        let header_only = read_segment(7, &segment_path(dir.path(), 7)).unwrap();
        assert_eq!(header_only.start, None);
        assert!(header_only.chunks.is_empty() && !header_only.is_clean());
        // Or zeros only, as long as what creation writes; a byte that is
        // not zero, or one zero more, makes it no segment (damage).
        let created = CREATED_LEN as usize;
        assert_eq!(created, encode_start(1, 0).len() + 17);
        let mut zeros = vec![0u8; created];
        fs::write(segment_path(dir.path(), 8), &zeros).unwrap();
        assert_eq!(recovery_start(dir.path()).unwrap(), 2);
        let zeroed = read_segment(8, &segment_path(dir.path(), 8)).unwrap();
        assert_eq!((zeroed.unwritten, zeroed.start), (Some(CREATED_LEN), None));
        assert!(zeroed.chunks.is_empty() && !zeroed.is_clean());
        zeros[created - 1] = 7;
        fs::write(segment_path(dir.path(), 8), &zeros).unwrap();
        assert!(matches!(
            read_segment(8, &segment_path(dir.path(), 8)),
            Err(SegmentError::Record(RecordError::BadMagic { .. }))
        ));
        fs::write(segment_path(dir.path(), 8), vec![0u8; created + 1]).unwrap();
        assert!(matches!(
            read_segment(8, &segment_path(dir.path(), 8)),
            Err(SegmentError::Record(RecordError::BadMagic { .. }))
        ));
        let start = |oldest_live, previous| {
            Some(Start {
                oldest_live,
                previous,
            })
        };
        assert_eq!(decode_start(&encode_start(9, 4)), start(9, Some(4)));
        assert_eq!(decode_start(&encode_start(9, 4)[..17]), None);
        let mut longer = encode_start(9, 4).to_vec();
        longer.push(0);
        assert_eq!(decode_start(&longer), None);
        // Version 1 (no previous segment) is still read, and only as long
        // as it was.
        let v1 = [START_TAG, START_VERSION_1, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(decode_start(&v1), start(9, None));
        assert_eq!(decode_start(&v1[..9]), None);
        assert_eq!(decode_start(&[START_TAG, 3, 0, 0, 0, 0, 0, 0, 0, 9]), None);
    }

    #[test]
    fn records_after_the_last_footer_are_uncommitted_not_attributed() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 7);
        raw_segment(
            &path,
            &[
                body("s", 0),
                footer(&[("s", 0, 1)]),
                body("s", 1),
                body("s", 2),
            ],
        );
        let c = read_segment(7, &path).unwrap();
        assert_eq!(c.chunks.len(), 1);
        assert_eq!(c.uncommitted.len(), 2);
        assert_eq!(c.uncommitted[0].body, body("s", 1));
        assert!(!c.is_clean());
        let mut a = SessionAssembler::default();
        a.add_segment(&c);
        assert_eq!(a.get("s").unwrap().next_seq, 1);
    }

    #[test]
    fn a_footer_that_does_not_match_its_round_is_damage_and_later_rounds_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        raw_segment(
            &path,
            &[
                body("s", 0),
                footer(&[("s", 0, 2)]), // names 2, the round holds 1
                body("t", 0),
                vec![FOOTER_TAG, FOOTER_VERSION, 1, 0, 0, 0, 1], // names an entry it lacks
                body("u", 0),
                footer(&[("u", 0, 1)]),
            ],
        );
        let c = read_segment(1, &path).unwrap();
        assert_eq!(c.damaged.len(), 2, "{c:?}");
        assert!(
            c.damaged[0]
                .reason
                .contains("names 2 records, the round holds 1"),
            "{}",
            c.damaged[0].reason
        );
        assert_eq!(c.damaged[0].offset, HEADER_LEN);
        assert!(
            c.damaged[1].reason.contains("footer is damaged"),
            "{}",
            c.damaged[1].reason
        );
        assert_eq!(c.chunks.len(), 1);
        assert_eq!(c.chunks[0].session, "u");
        assert!(c.uncommitted.is_empty());
    }

    #[test]
    fn a_damaged_record_inside_a_round_condemns_that_round_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        write(&mut w, &round(&[("a", 0..2)])).unwrap();
        write(&mut w, &round(&[("b", 0..2)])).unwrap();
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        // The last byte of the first record's body.
        let at = (FIRST_ROUND + FRAME_HEADER_LEN) as usize + body("a", 0).len() - 1;
        bytes[at] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();
        let c = read_segment(1, &path).unwrap();
        assert_eq!(c.corrupt.len(), 1);
        assert_eq!(c.damaged.len(), 1, "{c:?}");
        assert!(
            c.damaged[0].reason.contains("damaged record at offset 35"),
            "{}",
            c.damaged[0].reason
        );
        assert_eq!(c.chunks.len(), 1);
        assert_eq!(c.chunks[0].session, "b");
    }

    #[test]
    fn a_failed_write_is_cut_off_before_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        write(&mut w, &round(&[("s", 0..1)])).unwrap();
        let r = round(&[("s", 1..4), ("t", 0..2)]);
        test_faults::fail_next_writes(1);
        let err = write(&mut w, &r).unwrap_err();
        assert!(
            err.to_string().contains("00000000000000000001.seg"),
            "{err}"
        );
        // What a write that failed part-way leaves: bytes past the end.
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0xAB; 37]);
        fs::write(&path, &bytes).unwrap();
        let at = write(&mut w, &r).unwrap();
        assert_eq!(at.segment, 1, "a failed write keeps the segment");
        let (segs, a) = read_all(dir.path());
        assert!(segs[0].is_clean(), "{:?}", segs[0]);
        let s = a.get("s").unwrap();
        assert_eq!((s.records.len(), s.repeated), (4, 0));
        assert_eq!(a.get("t").unwrap().records.len(), 2);
    }

    #[test]
    fn after_a_failed_sync_the_round_is_retried_in_a_new_segment_and_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        write(&mut w, &round(&[("s", 0..1)])).unwrap();
        let r = round(&[("s", 1..3), ("t", 0..1)]);
        test_faults::fail_next_syncs(1);
        let err = write(&mut w, &r).unwrap_err();
        assert!(err.to_string().contains("sync"), "{err}");
        assert_eq!(w.current_segment(), None, "the segment is given up");
        let at = write(&mut w, &r).unwrap();
        assert_eq!(at.segment, 2);
        // The injected failure came after the write: the round is in both.
        let (segs, a) = read_all(dir.path());
        assert!(segs.iter().all(SegmentContents::is_clean));
        let s = a.get("s").unwrap();
        assert_eq!((s.records.len(), s.repeated, s.next_seq), (3, 2, 3));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(a.get("t").unwrap().repeated, 1);
    }

    #[test]
    fn a_segment_whose_creation_fails_is_removed_and_its_number_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        let r = round(&[("s", 0..1)]);
        // Two failures: if dropping the failed writer wrote again, it would
        // take the second, and the next round would succeed.
        test_faults::fail_next_writes(2);
        assert!(write(&mut w, &r).is_err());
        assert!(
            list_segments(dir.path()).unwrap().is_empty(),
            "removed again"
        );
        assert!(
            write(&mut w, &r).is_err(),
            "the second failure was left for this round"
        );
        // A file in the way of the next number is skipped, not retried.
        fs::write(segment_path(dir.path(), 3), b"someone else's").unwrap();
        assert!(write(&mut w, &r).is_err());
        let at = write(&mut w, &r).unwrap();
        assert_eq!(at.segment, 4);
        // Numbers it skipped are not named as created before it: only a
        // segment it created would be.
        let c = read_segment(4, &segment_path(dir.path(), 4)).unwrap();
        assert_eq!(c.previous, Some(0));
        write(&mut w, &r).unwrap();
        assert_eq!(w.current_segment(), Some(4), "a round on");
        w.close_current();
        let at = write(&mut w, &r).unwrap();
        let c = read_segment(at.segment, &segment_path(dir.path(), at.segment)).unwrap();
        assert_eq!((at.segment, c.previous), (5, Some(4)));
        assert_eq!(
            list_segments(dir.path())
                .unwrap()
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>(),
            [3, 4, 5]
        );
    }

    #[test]
    fn an_empty_round_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 1).unwrap();
        for _ in 0..3 {
            let at = w.append_round(&[], 1, Duration::ZERO).unwrap();
            assert_eq!((at.segment, at.offset, at.end), (1, 0, 0));
        }
        assert!(list_segments(dir.path()).unwrap().is_empty());
        let at = write(&mut w, &round(&[("s", 0..1)])).unwrap();
        assert_eq!(at.segment, 1);
        // Full (max 1 byte): the next round starts segment 2.
        let empty = w.append_round(&[], 1, Duration::ZERO).unwrap();
        assert_eq!((empty.segment, empty.end), (1, at.end));
    }

    #[test]
    fn a_repeat_within_one_segment_is_a_problem_not_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        let r = round(&[("s", 0..2)]);
        write(&mut w, &r).unwrap();
        write(&mut w, &r).unwrap();
        let (_, a) = read_all(dir.path());
        let s = a.get("s").unwrap();
        assert_eq!((s.records.len(), s.repeated), (2, 0));
        assert_eq!(s.problems.len(), 2);
        assert!(matches!(
            s.problems[0],
            AssemblyProblem::RepeatedInSegment {
                segment: 1,
                seq: 0,
                ..
            }
        ));
        // A chunk made by hand whose seqs pass u64::MAX is refused.
        let mut a = SessionAssembler::default();
        let chunk = Chunk {
            session: "h".into(),
            first_seq: u64::MAX,
            records: vec![
                Record {
                    offset: 9,
                    body: body("h", 0),
                },
                Record {
                    offset: 30,
                    body: body("h", 1),
                },
            ],
        };
        a.add_chunk(3, &chunk);
        let h = a.get("h").unwrap();
        assert!(h.records.is_empty());
        assert!(matches!(
            h.problems[..],
            [AssemblyProblem::SeqOverflow { count: 2, .. }]
        ));
        // Where it was seen, though nothing was kept (recovery keeps that
        // segment in range and blames damage from there on).
        assert_eq!(h.first_segment, Some(3));
        a.add_chunk(5, &chunk);
        assert_eq!(a.get("h").unwrap().first_segment, Some(3));
    }

    #[test]
    fn recovery_passes_over_a_segment_whose_start_record_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), 1).unwrap();
        let bytes = staged(&[body("s", 0)]);
        let chunk = StagedChunk {
            session: "s",
            first_seq: 0,
            count: 1,
            staged: &bytes,
        };
        w.append_round(&[chunk], 1, Duration::ZERO).unwrap();
        w.append_round(&[chunk], 2, Duration::ZERO).unwrap();
        let path = segment_path(dir.path(), 2);
        let mut raw = fs::read(&path).unwrap();
        // The last byte of the start record's body; valid records follow.
        raw[(FIRST_ROUND - 1) as usize] ^= 0xFF;
        fs::write(&path, &raw).unwrap();
        assert_eq!(recovery_start(dir.path()).unwrap(), 1, "segment 1's start");
        let c = read_segment(2, &path).unwrap();
        assert_eq!(c.start, None);
        assert_eq!(c.corrupt.len(), 1);
        let mut a = SessionAssembler::default();
        a.add_segment(&read_segment(1, &segment_path(dir.path(), 1)).unwrap());
        a.add_segment(&c);
        assert_eq!(a.unclean(), [2]);
        assert_eq!(
            session_records(dir.path(), "s").unwrap().unclean_segments,
            [2]
        );
    }

    #[test]
    fn a_repeated_round_is_read_once_and_a_differing_one_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let r = round(&[("s", 0..3)]);
        // A round whose sync failed, written again to the next segment.
        write(&mut SegmentWriter::open(dir.path(), 1 << 20).unwrap(), &r).unwrap();
        let mut w = SegmentWriter::open(dir.path(), 1 << 20).unwrap();
        write(&mut w, &r).unwrap();
        let (_, a) = read_all(dir.path());
        let s = a.get("s").unwrap();
        assert_eq!((s.records.len(), s.repeated, s.next_seq), (3, 3, 3));
        assert!(s.problems.is_empty());
        assert_eq!(
            s.records.iter().map(|r| r.segment).collect::<Vec<_>>(),
            [1, 1, 1]
        );

        // The same seq with other bytes, and a chunk that skips seqs.
        let mut other = round(&[("s", 2..3)]);
        other[0].2[0].push(b'!');
        write(&mut w, &other).unwrap();
        write(&mut w, &round(&[("s", 5..6)])).unwrap();
        let (_, a) = read_all(dir.path());
        let s = a.get("s").unwrap();
        assert_eq!(
            s.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [0, 1, 2, 5]
        );
        assert!(
            matches!(
                s.problems[0],
                AssemblyProblem::Conflict {
                    segment: 2,
                    seq: 2,
                    ..
                }
            ),
            "{:?}",
            s.problems
        );
        assert!(
            matches!(
                s.problems[1],
                AssemblyProblem::Gap {
                    segment: 2,
                    expected: 3,
                    found: 5,
                    ..
                }
            ),
            "{:?}",
            s.problems
        );
        assert_eq!(s.problems.len(), 2);
    }

    #[test]
    fn chunks_that_are_not_what_they_claim_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        let good = staged(&[body("s", 0), body("s", 1)]);
        let mut partial = good.clone();
        partial.truncate(good.len() - 1);
        let tagged = staged(&[vec![FOOTER_TAG, 1, 1, 0, 0, 0, 0]]);
        let started = staged(&[encode_start(1, 0).to_vec()]);
        let empty = staged(&[Vec::new()]);
        let long_id = "x".repeat(MAX_SESSION_ID + 1);
        let huge = (MAX_RECORD + 1).to_le_bytes().to_vec();
        let cases: [(&str, u64, u32, &[u8], &str); 11] = [
            ("s", 0, 3, &good, "holds 2 records, not the 3"),
            ("s", 0, 2, &partial, "claims"),
            ("s", 0, 2, &good[..good.len() - 12], "claims"),
            ("", 0, 2, &good, "session id is empty"),
            ("s", 0, 0, &[], "no records"),
            ("s", u64::MAX, 2, &good, "overflows"),
            ("s", 0, 1, &tagged, "0xe0, a segment's own tag"),
            ("s", 0, 1, &started, "0xe1, a segment's own tag"),
            ("s", 0, 1, &empty, "record 0 is empty"),
            (&long_id, 0, 2, &good, "more than"),
            // A count far beyond the input: refused, not allocated for.
            (
                "s",
                0,
                u32::MAX,
                &good,
                "holds 2 records, not the 4294967295",
            ),
        ];
        for (session, first_seq, count, staged, why) in cases {
            let ok = StagedChunk {
                session: "ok",
                first_seq: 0,
                count: 2,
                staged: &good,
            };
            let bad = StagedChunk {
                session,
                first_seq,
                count,
                staged,
            };
            let err = w.append_round(&[ok, bad], 1, Duration::ZERO).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, SegmentError::BadChunk { index: 1, .. }),
                "{text}"
            );
            assert!(text.contains(why), "{text} lacks {why:?}");
        }
        let bad = StagedChunk {
            session: "s",
            first_seq: 0,
            count: 1,
            staged: &huge,
        };
        assert!(w.append_round(&[bad], 1, Duration::ZERO).is_err());
        assert!(
            list_segments(dir.path()).unwrap().is_empty(),
            "nothing was written"
        );
    }

    #[test]
    fn a_footer_too_large_for_one_record_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        // 17 sessions with 1 MiB ids: more than one footer's 16 MiB.
        let ids: Vec<String> = (0..17)
            .map(|i| format!("{i}{}", "x".repeat(1 << 20)))
            .collect();
        let bodies = staged(&[body("x", 0)]);
        let chunks: Vec<_> = ids
            .iter()
            .map(|id| StagedChunk {
                session: id,
                first_seq: 0,
                count: 1,
                staged: &bodies,
            })
            .collect();
        w.append_round(&chunks, 1, Duration::ZERO).unwrap();
        let c = read_segment(1, &segment_path(dir.path(), 1)).unwrap();
        assert!(c.is_clean());
        assert_eq!(c.chunks.len(), 17);
        let footers = read_log(segment_path(dir.path(), 1), LogKind::SEGMENT)
            .unwrap()
            .records
            .iter()
            .filter(|r| r.body[0] == FOOTER_TAG)
            .count();
        assert_eq!(footers, 2);
        assert!(c.chunks.iter().zip(&ids).all(|(c, id)| c.session == *id));

        // Cut one byte short of its end, the round was never acknowledged:
        // none of its chunks is kept, not even those its first footer names.
        let whole = fs::read(segment_path(dir.path(), 1)).unwrap();
        let cut = segment_path(dir.path(), 2);
        fs::write(&cut, &whole[..whole.len() - 1]).unwrap();
        let c = read_segment(2, &cut).unwrap();
        assert!(c.chunks.is_empty(), "{} chunks kept", c.chunks.len());
        assert_eq!(c.uncommitted.len(), 17);
        assert!(c.tail.is_some() && c.damaged.is_empty());
    }

    #[test]
    fn footer_decoding_is_strict_and_bounded() {
        let entries = vec![
            FooterEntry {
                session: "s-1".into(),
                first_seq: 4,
                count: 2,
            },
            FooterEntry {
                session: "é".into(),
                first_seq: 0,
                count: 1,
            },
        ];
        let bytes = encode_footer(&entries, true);
        assert_eq!(
            decode_footer(&bytes).unwrap(),
            Footer {
                last: true,
                entries: entries.clone()
            }
        );
        let part = encode_footer(&entries, false);
        assert!(!decode_footer(&part).unwrap().last);
        let mut bad_flag = bytes.clone();
        bad_flag[2] = 2;
        assert!(matches!(decode_footer(&bad_flag), Err(FooterError::Tag(_))));
        for cut in 0..bytes.len() {
            assert!(decode_footer(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode_footer(&trailing), Err(FooterError::Trailing(1)));
        // A count of 2^32 - 1 entries in 7 bytes: refused, not allocated.
        assert_eq!(
            decode_footer(&[FOOTER_TAG, FOOTER_VERSION, 1, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(FooterError::Short {
                what: "the session's length",
                entry: 0
            })
        );
        assert!(matches!(
            decode_footer(&[FOOTER_TAG, 2, 1, 0, 0, 0, 0]),
            Err(FooterError::Tag(_))
        ));
        assert!(matches!(
            decode_footer(&footer(&[("s", 0, 0)])),
            Err(FooterError::Empty { .. })
        ));
        assert!(matches!(
            decode_footer(&footer(&[("", 0, 1)])),
            Err(FooterError::Session { why: "empty", .. })
        ));
        assert!(matches!(
            decode_footer(&footer(&[("s", u64::MAX, 1)])),
            Err(FooterError::SeqOverflow { .. })
        ));
        let mut latin1 = footer(&[("é", 0, 1)]);
        latin1[11] = 0xFF;
        assert!(matches!(
            decode_footer(&latin1),
            Err(FooterError::Session {
                why: "not UTF-8",
                ..
            })
        ));
    }

    #[test]
    fn only_segment_names_are_segments() {
        assert_eq!(segment_number("00000000000000000042.seg"), Some(42));
        for name in [
            "42.seg",
            "00000000000000000042.log",
            "0000000000000000004x.seg",
            "+0000000000000000042.seg",
            "00000000000000000042.seg.torn-9",
            "99999999999999999999.seg",
        ] {
            assert_eq!(segment_number(name), None, "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(
            list_segments(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
        for n in [10, 2, 1] {
            raw_segment(&segment_path(dir.path(), n), &[]);
        }
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        fs::create_dir(dir.path().join("00000000000000000003.seg")).unwrap();
        let numbers: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(numbers, [1, 2, 10]);
        let mut w = SegmentWriter::open(dir.path(), DEFAULT_MAX_SEGMENT_BYTES).unwrap();
        assert_eq!(write(&mut w, &round(&[("s", 0..1)])).unwrap().segment, 11);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever the rounds and the segment size, every session reads back
        /// as the records written for it, in order, nothing repeated.
        #[test]
        fn sessions_read_back_as_written(
            rounds in prop::collection::vec(
                prop::collection::vec((0usize..5, 1u32..4, 0usize..300), 1..5), 1..8),
            max_bytes in 64u64..4096,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut w = SegmentWriter::open(dir.path(), max_bytes).unwrap();
            let mut model: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
            for spec in &rounds {
                let mut r: Round = Vec::new();
                for &(s, count, pad) in spec {
                    let id = format!("s-{s}");
                    let held = model.entry(id.clone()).or_default();
                    let first = held.len() as u64;
                    let bodies: Vec<Vec<u8>> = (first..first + u64::from(count))
                        .map(|q| { let mut b = body(&id, q); b.resize(b.len() + pad, b'.'); b })
                        .collect();
                    held.extend(bodies.iter().cloned());
                    r.push((id, first, bodies));
                }
                write(&mut w, &r).unwrap();
            }
            let (segs, a) = read_all(dir.path());
            prop_assert!(segs.iter().all(SegmentContents::is_clean));
            prop_assert_eq!(a.sessions().len(), model.len());
            for (id, bodies) in &model {
                let s = a.get(id).unwrap();
                prop_assert_eq!(&bodies_of(s), bodies);
                prop_assert_eq!((s.repeated, s.problems.len()), (0, 0));
            }
        }
    }
}
