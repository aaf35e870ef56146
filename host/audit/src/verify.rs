//! Offline verification of an audit directory, and inclusion proofs that can
//! be checked with nothing but the proof and the hypervisor's public key.
//!
//! [`verify_dir`] re-derives everything from the files: each session log's
//! framing, sequence numbers and hash chain, its Merkle root, the commitment
//! log's Merkle roots and the signatures over its heads. It names every
//! problem — which record, what kind of tampering — instead of stopping at
//! the first.
//!
//! A session's log is its file, `sessions/<session>.log`, followed by its
//! chunks in the segment files, if any ([`crate::segments`]): both are read
//! and checked as one log, record by record, with memory for a compact tree
//! per session rather than its records. A round a writer retried after a
//! failed sync is read once; what a crash leaves at a segment's end is a
//! note, as a torn tail saved aside by recovery is.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::auditor::{commitments_path, dir_in_use, heads_path, session_log_path};
use crate::commitment::{Commitment, PRUNED_TAG, decode_pruned};
use crate::delta::Delta;
use crate::hash::Hash;
use crate::merkle::{
    CompactTree, InclusionProof, LeafIndex, MerkleLog, TreeSize, leaf_hash, verify_inclusion,
};
use crate::records::{LogKind, Recovered, read_log};
use crate::signing::{PublicKey, SignedTreeHead};

/// What kind of problem verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A file could not be read, or its header is wrong.
    Unreadable,
    /// A record's checksum fails (its bytes were changed).
    Damaged,
    /// The file ends inside a record (a crash or a cut).
    TornTail,
    /// A record's checksum holds but its contents do not decode.
    Undecodable,
    /// A delta is not where its sequence number says: deleted, inserted or reordered.
    Sequence,
    /// A delta names a parent that is not the previous delta's hash.
    Chain,
    /// A delta of another session.
    WrongSession,
    /// Fewer deltas than the commitment covers.
    Truncated,
    /// More deltas than the commitment covers.
    Extended,
    /// The deltas' Merkle root differs from the committed root.
    RootMismatch,
    /// A signed head whose signature does not verify.
    BadSignature,
    /// The commitment log does not match a signed head.
    HeadMismatch,
    /// A commitment no signed head covers.
    Unsigned,
    /// A session committed twice, or a commitment without its log.
    Commitment,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Unreadable => "unreadable",
            ProblemKind::Damaged => "damaged record",
            ProblemKind::TornTail => "torn tail",
            ProblemKind::Undecodable => "undecodable record",
            ProblemKind::Sequence => "sequence broken",
            ProblemKind::Chain => "hash chain broken",
            ProblemKind::WrongSession => "foreign delta",
            ProblemKind::Truncated => "truncated",
            ProblemKind::Extended => "extended after sealing",
            ProblemKind::RootMismatch => "root mismatch",
            ProblemKind::BadSignature => "bad signature",
            ProblemKind::HeadMismatch => "commitment log rewritten",
            ProblemKind::Unsigned => "unsigned commitment",
            ProblemKind::Commitment => "commitment problem",
        })
    }
}

/// One thing wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The record's position in its log (0-based), when it concerns one.
    pub record: Option<u64>,
    /// The record's byte offset in its file, when known.
    pub offset: Option<u64>,
    /// The details.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(r) = self.record {
            write!(f, " at record #{r}")?;
        }
        if let Some(o) = self.offset {
            write!(f, " (offset {o})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

fn problem(kind: ProblemKind, record: Option<u64>, offset: Option<u64>, detail: String) -> Problem {
    Problem {
        kind,
        record,
        offset,
        detail,
    }
}

/// Whether a session is sealed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum SessionStatus {
    /// Sealed by the commitment at this index of the commitment log.
    Committed {
        /// The commitment's index.
        index: u64,
        /// The committed size.
        tree_size: u64,
    },
    /// No commitment yet (the session is still running): only the chain was checked.
    Open,
}

/// The verdict on one session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionReport {
    /// The session.
    pub session: String,
    /// Records in its log.
    pub records: u64,
    /// How many of them are pruned (body removed by retention).
    pub pruned: u64,
    /// Sealed or open.
    pub status: SessionStatus,
    /// Everything wrong; empty means ok.
    pub problems: Vec<Problem>,
}

/// The verdict on an audit directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Where the public key came from.
    pub key_source: String,
    /// Commitments in the commitment log.
    pub commitments: u64,
    /// Size of the largest validly signed head.
    pub signed_size: u64,
    /// Problems with the commitment log and the signed heads.
    pub problems: Vec<Problem>,
    /// One report per session checked.
    pub sessions: Vec<SessionReport>,
    /// Remarks that are not failures (torn tails saved by an earlier recovery).
    pub notes: Vec<String>,
    /// A running auditor had the directory open while it was verified: the
    /// newest records may have been in flight (they are still judged as
    /// they were found; nothing is excused).
    pub in_use: bool,
}

impl VerifyReport {
    /// The report as JSON (one object: `ok`, the commitment log's counts and
    /// problems, one entry per session, notes), for machines to read.
    pub fn to_json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            ok: bool,
            #[serde(flatten)]
            report: &'a VerifyReport,
        }
        serde_json::to_string_pretty(&Out {
            ok: self.ok(),
            report: self,
        })
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    }

    /// True when nothing is wrong anywhere.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.sessions.iter().all(|s| s.problems.is_empty())
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "public key: {}", self.key_source)?;
        let status = if self.problems.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        writeln!(
            f,
            "commitment log: {status} ({} commitment(s), {} covered by a signed head)",
            self.commitments, self.signed_size
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        for s in &self.sessions {
            let what = match s.status {
                SessionStatus::Committed { index, tree_size } => {
                    format!(
                        "{} delta(s), commitment #{index} covers {tree_size}",
                        s.records
                    )
                }
                SessionStatus::Open => format!("{} delta(s), open (not sealed yet)", s.records),
            };
            let pruned = if s.pruned > 0 {
                format!(", {} pruned", s.pruned)
            } else {
                String::new()
            };
            if s.problems.is_empty() {
                writeln!(f, "session {}: ok ({what}{pruned})", s.session)?;
            } else {
                writeln!(f, "session {}: FAILED ({what}{pruned})", s.session)?;
                for p in &s.problems {
                    writeln!(f, "  - {p}")?;
                }
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Errors that stop verification before it can judge anything.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No public key given and none in the directory.
    #[error("no public key: pass one, or keep {path} (read it: {reason})")]
    NoKey {
        /// Where it was looked for.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
    /// The directory has no audit logs.
    #[error("{0}: not an audit directory (no commitments.log and no sessions/)")]
    NotAuditDir(PathBuf),
    /// A session was asked for that has neither a log nor a commitment.
    #[error("session {0}: no audit log and no commitment")]
    UnknownSession(String),
    /// A session was asked for by a name that is not a session id (it could
    /// otherwise name a file outside the audit directory).
    #[error("{session:?} is not a session id: {reason}")]
    BadSessionId {
        /// The name given.
        session: String,
        /// What is wrong with it.
        reason: String,
    },
}

struct CommitIndex {
    by_session: HashMap<String, (u64, Commitment)>,
    tree: MerkleLog,
    signed: Option<SignedTreeHead>,
}

/// Verifies the audit directory `dir` (the `audit` folder of a state
/// directory): every session, or only `session`.
///
/// `key` pins the public key; without it the directory's own `public-key` is
/// used, which proves integrity only against someone who could not also
/// replace that file (the report says which was used).
///
/// # Errors
/// [`VerifyError`] when there is nothing to verify against; problems found in
/// the logs are in the report, not errors.
pub fn verify_dir(
    dir: &Path,
    session: Option<&str>,
    key: Option<&PublicKey>,
) -> Result<VerifyReport, VerifyError> {
    if let Some(s) = session
        && let Err(e) = ahv_core::SessionId::new(s)
    {
        return Err(VerifyError::BadSessionId {
            session: s.chars().take(300).collect(),
            reason: e.to_string(),
        });
    }
    if !commitments_path(dir).exists()
        && !dir.join("sessions").is_dir()
        && !crate::segments::segments_dir(dir).is_dir()
    {
        return Err(VerifyError::NotAuditDir(dir.to_path_buf()));
    }
    let (key, key_source) = match key {
        Some(k) => (*k, format!("{} (given)", k.to_hex())),
        None => {
            let path = dir.join("public-key");
            let k = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|s| PublicKey::from_hex(s.trim()).map_err(|e| e.to_string()))
                .map_err(|reason| VerifyError::NoKey {
                    path: path.clone(),
                    reason,
                })?;
            let src = format!(
                "{} (from {}; pass --public-key to pin it)",
                k.to_hex(),
                path.display()
            );
            (k, src)
        }
    };
    let mut report = VerifyReport {
        key_source,
        commitments: 0,
        signed_size: 0,
        problems: Vec::new(),
        sessions: Vec::new(),
        notes: Vec::new(),
        in_use: dir_in_use(dir),
    };
    let index = check_commitments(dir, &key, &mut report);

    // Each session's log: its own file (format 1) first, then its chunks in
    // the segments, in segment order.
    let mut names: std::collections::BTreeSet<String> = match session {
        Some(s) => std::iter::once(s.to_string()).collect(),
        None => {
            let mut v: std::collections::BTreeSet<String> = std::fs::read_dir(dir.join("sessions"))
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter_map(|n| n.strip_suffix(".log").map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            v.extend(index.by_session.keys().cloned());
            v
        }
    };
    let mut checks: std::collections::BTreeMap<String, SessionCheck> = names
        .iter()
        .map(|n| (n.clone(), SessionCheck::new(n, &index)))
        .collect();
    let mut with_file = std::collections::HashSet::new();
    for (name, check) in &mut checks {
        let path = session_log_path(dir, name);
        if std::fs::symlink_metadata(&path).is_ok() {
            with_file.insert(name.clone());
            check.read_file(dir);
        }
    }
    let segments = crate::segments::segments_dir(dir);
    let mut in_segments = std::collections::HashSet::new();
    check_segments(
        &segments,
        session,
        &index,
        &mut checks,
        &mut in_segments,
        &mut report,
    );
    names.extend(checks.keys().cloned());
    if let Some(s) = session
        && !with_file.contains(s)
        && !in_segments.contains(s)
        && !index.by_session.contains_key(s)
    {
        return Err(VerifyError::UnknownSession(s.to_string()));
    }
    for name in names {
        let Some(mut check) = checks.remove(&name) else {
            continue;
        };
        // A session sealed with no deltas has no records anywhere, rightly.
        let empty = index
            .by_session
            .get(&name)
            .is_some_and(|(_, c)| c.tree_size == 0);
        let nowhere = !with_file.contains(&name) && !in_segments.contains(&name) && !empty;
        if nowhere {
            check.unreadable = true;
        }
        let mut out = check.finish();
        if nowhere && let SessionStatus::Committed { .. } = out.status {
            let path = session_log_path(dir, &name);
            let detail = if segments.is_dir() {
                format!(
                    "the session is committed but its log {} is gone, and no segment holds its records",
                    path.display()
                )
            } else {
                format!(
                    "the session is committed but its log {} is gone",
                    path.display()
                )
            };
            out.problems
                .push(problem(ProblemKind::Unreadable, None, None, detail));
        }
        report.sessions.push(out);
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("sessions")) {
        let mut torn: Vec<String> = rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.contains(".torn-"))
            .collect();
        torn.sort();
        for t in torn {
            report.notes.push(format!(
                "sessions/{t}: a torn tail cut off by crash recovery (kept as evidence; its records were never complete)"
            ));
        }
    }
    if report.in_use {
        // A failure is never excused (holding the lock is no proof of
        // anything); the operator is told where a rerun may differ.
        report.notes.push(
            "a running hypervisor has this directory open: a torn tail at the end of an open session's log or of a log being appended, or an unsigned newest commitment (heads are signed within the signer's delay), may be a write in flight — verify again, or after it stops".into(),
        );
    }
    Ok(report)
}

/// Reads every segment in `segments` (if any) in number order: hands each
/// chunk to its session's check (only `only`'s, if given; a session first
/// seen here gets one), and reports what is wrong with the segments
/// themselves: damaged records and rounds, a missing start record, a
/// segment missing between two others, a chunk naming no valid session. What a crash leaves at a segment's end (a
/// round never acknowledged, a torn record, a segment cut short while it
/// was created) is a note: writers never append to an earlier segment, so
/// it stays as evidence, and a committed session that lost records to it
/// shows as truncated.
fn check_segments(
    segments: &Path,
    only: Option<&str>,
    index: &CommitIndex,
    checks: &mut std::collections::BTreeMap<String, SessionCheck>,
    seen: &mut std::collections::HashSet<String>,
    report: &mut VerifyReport,
) {
    use crate::segments::{list_segments, read_segment};
    let list = match list_segments(segments) {
        Ok(l) => l,
        Err(e) => {
            report
                .problems
                .push(problem(ProblemKind::Unreadable, None, None, e.to_string()));
            return;
        }
    };
    let present: std::collections::HashSet<u64> = list.iter().map(|(n, _)| *n).collect();
    for (number, path) in list {
        let file = format!(
            "segments/{}",
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        );
        let contents = match read_segment(number, &path) {
            Ok(c) => c,
            Err(e) => {
                report
                    .problems
                    .push(problem(ProblemKind::Unreadable, None, None, e.to_string()));
                continue;
            }
        };
        if let Some(len) = contents.unwritten {
            report.notes.push(format!(
                "{file}: {len} byte(s) and no header (shorter than one, or no more zero bytes than creating a segment writes): a crash while it was created (it holds nothing)"
            ));
            continue;
        }
        let has_records = !contents.chunks.is_empty()
            || !contents.damaged.is_empty()
            || !contents.uncommitted.is_empty()
            || !contents.corrupt.is_empty();
        if let Some(start) = contents.start
            && start > number
        {
            // Recovery would skip the segments before it: it could hide a
            // session left open from the next start.
            report.problems.push(problem(
                ProblemKind::Damaged,
                None,
                Some(crate::records::HEADER_LEN),
                format!(
                    "{file}: its start record names segment {start}, after its own number {number}"
                ),
            ));
        }
        if let Some(previous) = contents.previous
            && previous > 0
            && !present.contains(&previous)
        {
            // The auditor never deletes a segment (retention rewrites them
            // in place): whatever it held is gone.
            report.problems.push(problem(
                ProblemKind::Unreadable,
                None,
                None,
                format!(
                    "segments/{previous:020}.seg: missing; {file}'s start record names it as the segment created before it"
                ),
            ));
        }
        if contents.start.is_none() && has_records {
            report.problems.push(problem(
                ProblemKind::Damaged,
                None,
                Some(crate::records::HEADER_LEN),
                format!("{file}: its start record is missing or damaged"),
            ));
        }
        for c in &contents.corrupt {
            report.problems.push(problem(
                ProblemKind::Damaged,
                None,
                Some(c.offset),
                format!(
                    "{file}: checksum mismatch in a {}-byte record: its bytes were changed",
                    c.declared
                ),
            ));
        }
        for d in &contents.damaged {
            report.problems.push(problem(
                ProblemKind::Damaged,
                None,
                Some(d.offset),
                format!(
                    "{file}: the round closed by the footer at offset {} is unreadable ({}); its records belong to no session",
                    d.footer, d.reason
                ),
            ));
        }
        if !contents.uncommitted.is_empty() {
            report.notes.push(format!(
                "{file}: {} record(s) after its last whole round, from offset {}: a round being written when its writer stopped, never acknowledged (kept as evidence)",
                contents.uncommitted.len(),
                contents.uncommitted[0].offset
            ));
        }
        if let Some(t) = &contents.tail {
            report.notes.push(format!(
                "{file}: {} byte(s) at offset {} are not a whole record ({:?}): cut while being written",
                t.len, t.offset, t.reason
            ));
        }
        for chunk in &contents.chunks {
            if only.is_some_and(|s| s != chunk.session) {
                continue;
            }
            if let Err(e) = ahv_core::SessionId::new(chunk.session.as_str()) {
                report.problems.push(problem(
                    ProblemKind::Undecodable,
                    None,
                    chunk.records.first().map(|r| r.offset),
                    format!(
                        "{file}: a footer names {:?}, which is no session id ({e}); its records are not checked",
                        chunk.session.chars().take(100).collect::<String>()
                    ),
                ));
                continue;
            }
            seen.insert(chunk.session.clone());
            checks
                .entry(chunk.session.clone())
                .or_insert_with(|| SessionCheck::new(&chunk.session, index))
                .push_chunk(number, &file, chunk);
        }
    }
}

fn framing_problems(rec: &Recovered, out: &mut Vec<Problem>) {
    for c in &rec.corrupt {
        out.push(problem(
            ProblemKind::Damaged,
            None,
            Some(c.offset),
            format!(
                "checksum mismatch in a {}-byte record: its bytes were changed",
                c.declared
            ),
        ));
    }
    if let Some(t) = &rec.tail {
        out.push(problem(
            ProblemKind::TornTail,
            None,
            Some(t.offset),
            format!(
                "{} byte(s) after the last complete record ({:?}): cut mid-record or damaged at the end",
                t.len, t.reason
            ),
        ));
    }
}

fn check_commitments(dir: &Path, key: &PublicKey, report: &mut VerifyReport) -> CommitIndex {
    let mut index = CommitIndex {
        by_session: HashMap::new(),
        tree: MerkleLog::new(),
        signed: None,
    };
    let cpath = commitments_path(dir);
    match read_log(&cpath, LogKind::COMMITMENTS) {
        Err(e) => report
            .problems
            .push(problem(ProblemKind::Unreadable, None, None, e.to_string())),
        Ok(rec) => {
            framing_problems(&rec, &mut report.problems);
            for (i, r) in rec.records.iter().enumerate() {
                let i = i as u64;
                index.tree.append(&r.body);
                match Commitment::decode(&r.body) {
                    Err(e) => report.problems.push(problem(
                        ProblemKind::Undecodable,
                        Some(i),
                        Some(r.offset),
                        e.to_string(),
                    )),
                    Ok(c) => {
                        // The name becomes the path of the session's log: one
                        // that is not a session id (`../x`) must not be opened.
                        if let Err(e) = ahv_core::SessionId::new(c.session.as_str()) {
                            report.problems.push(problem(
                                ProblemKind::Undecodable,
                                Some(i),
                                Some(r.offset),
                                format!(
                                    "the commitment names no session ({e}); no log is read for it"
                                ),
                            ));
                        } else if let Some((first, _)) = index.by_session.get(&c.session) {
                            report.problems.push(problem(
                                ProblemKind::Commitment,
                                Some(i),
                                Some(r.offset),
                                format!(
                                    "session {} is committed again (first at #{first})",
                                    c.session
                                ),
                            ));
                        } else {
                            index.by_session.insert(c.session.clone(), (i, c));
                        }
                    }
                }
            }
        }
    }
    report.commitments = index.tree.len().0;

    let hpath = heads_path(dir);
    let heads = match read_log(&hpath, LogKind::SIGNED_HEADS) {
        Err(e) => {
            report
                .problems
                .push(problem(ProblemKind::Unreadable, None, None, e.to_string()));
            Vec::new()
        }
        Ok(rec) => {
            let mut p = Vec::new();
            framing_problems(&rec, &mut p);
            for x in &mut p {
                x.detail = format!("heads.log: {}", x.detail);
            }
            report.problems.extend(p);
            rec.records
        }
    };
    for (i, r) in heads.iter().enumerate() {
        let i = i as u64;
        let head = match SignedTreeHead::from_bytes(&r.body) {
            Ok(h) => h,
            Err(e) => {
                report.problems.push(problem(
                    ProblemKind::Undecodable,
                    Some(i),
                    Some(r.offset),
                    format!("signed head: {e}"),
                ));
                continue;
            }
        };
        if let Err(e) = head.verify(key) {
            report.problems.push(problem(
                ProblemKind::BadSignature,
                Some(i),
                Some(r.offset),
                format!(
                    "signed head #{i} (size {}) does not verify under the public key: {e}",
                    head.head.size
                ),
            ));
            continue;
        }
        let size = head.head.size;
        if size > index.tree.len().0 {
            report.problems.push(problem(
                ProblemKind::HeadMismatch,
                Some(i),
                Some(r.offset),
                format!(
                    "signed head #{i} covers {size} commitment(s) but the log holds {}: commitments were removed",
                    index.tree.len().0
                ),
            ));
        } else {
            let root = index.tree.root_at(TreeSize(size)).unwrap_or_default();
            if !root.ct_eq(&head.head.root) {
                report.problems.push(problem(
                    ProblemKind::HeadMismatch,
                    Some(i),
                    Some(r.offset),
                    format!(
                        "the first {size} commitment(s) hash to {root}, signed head #{i} says {}: a commitment was changed, replaced or reordered",
                        head.head.root
                    ),
                ));
            } else if index.signed.as_ref().is_none_or(|s| s.head.size <= size) {
                index.signed = Some(head);
            }
        }
    }
    let signed = index.signed.as_ref().map_or(0, |h| h.head.size);
    report.signed_size = signed;
    for (session, (i, _)) in &index.by_session {
        if *i >= signed {
            report.problems.push(problem(
                ProblemKind::Unsigned,
                Some(*i),
                None,
                format!(
                    "the commitment of session {session} is not covered by any valid signed head (largest: {signed})"
                ),
            ));
        }
    }
    report.problems.sort_by_key(|p| (p.record, p.offset));
    index
}

/// The checks of one session's log, record by record: its file's records
/// (format 1), then its chunks' in the segments. Memory is a compact tree,
/// not the records.
struct SessionCheck {
    out: SessionReport,
    committed: Option<(u64, Commitment)>,
    tree: CompactTree,
    /// The root over the committed size, once that many leaves are in.
    root_at_commit: Option<Hash>,
    prev: Option<Hash>,
    /// Where the records now pushed come from, for problems: `None` for
    /// the session's own file, else the segment's name.
    from: Option<String>,
    /// The session's last chunk read from a segment (segment, first seq,
    /// leaves): a retried round repeats it in a later segment.
    last_chunk: Option<(u64, u64, Vec<Hash>)>,
    /// Records read again, identical, from a retried round.
    repeated: u64,
    /// Its file could not be read: with no other records, nothing more is
    /// judged (a missing log is not also a truncated one).
    unreadable: bool,
}

impl SessionCheck {
    fn new(name: &str, index: &CommitIndex) -> SessionCheck {
        let committed = index.by_session.get(name).cloned();
        let status = match &committed {
            Some((i, c)) => SessionStatus::Committed {
                index: *i,
                tree_size: c.tree_size,
            },
            None => SessionStatus::Open,
        };
        SessionCheck {
            out: SessionReport {
                session: name.to_string(),
                records: 0,
                pruned: 0,
                status,
                problems: Vec::new(),
            },
            root_at_commit: committed
                .as_ref()
                .filter(|(_, c)| c.tree_size == 0)
                .map(|_| CompactTree::new().root()),
            committed,
            tree: CompactTree::new(),
            prev: None,
            from: None,
            last_chunk: None,
            repeated: 0,
            unreadable: false,
        }
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        record: Option<u64>,
        offset: Option<u64>,
        detail: String,
    ) {
        let detail = match &self.from {
            Some(file) => format!("{detail} (in {file})"),
            None => detail,
        };
        self.out
            .problems
            .push(problem(kind, record, offset, detail));
    }

    /// Checks the session's own log file.
    fn read_file(&mut self, dir: &Path) {
        let path = session_log_path(dir, &self.out.session);
        let rec = match read_log(&path, LogKind::SESSION_DELTAS) {
            Ok(r) => r,
            Err(e) => {
                self.problem(ProblemKind::Unreadable, None, None, e.to_string());
                self.unreadable = true;
                return;
            }
        };
        framing_problems(&rec, &mut self.out.problems);
        for r in &rec.records {
            self.push(&r.body, r.offset);
        }
    }

    /// Checks a chunk of the session read from segment `segment` (named
    /// `file`): its records continue the log where it stands, except a
    /// retried round's, which repeat the session's last chunk, identical,
    /// from an earlier segment.
    fn push_chunk(&mut self, segment: u64, file: &str, chunk: &crate::segments::Chunk) {
        self.from = Some(file.to_string());
        let next = self.out.records;
        let mut leaves = Vec::with_capacity(chunk.records.len());
        for (i, r) in chunk.records.iter().enumerate() {
            let seq = chunk.first_seq.saturating_add(i as u64);
            let leaf = self.leaf_of(&r.body);
            leaves.push(leaf);
            if seq >= next {
                if i == 0 && seq > next {
                    self.problem(
                        ProblemKind::Sequence,
                        Some(next),
                        Some(r.offset),
                        format!(
                            "the segment's footer puts this chunk at seq {seq}, the log holds {next} record(s): {} are missing",
                            seq - next
                        ),
                    );
                }
                self.push(&r.body, r.offset);
                continue;
            }
            let retried = self.last_chunk.as_ref().is_some_and(|(s, first, held)| {
                *s < segment
                    && seq >= *first
                    && held.get(usize::try_from(seq - first).unwrap_or(usize::MAX)) == Some(&leaf)
            });
            if retried {
                self.repeated += 1;
            } else {
                self.problem(
                    ProblemKind::Sequence,
                    Some(seq),
                    Some(r.offset),
                    format!(
                        "the segment's footer puts this record at seq {seq}, which the log already holds, and it is not a retried round's copy of it"
                    ),
                );
            }
        }
        self.last_chunk = Some((segment, chunk.first_seq, leaves));
        self.from = None;
    }

    /// A record's leaf hash: a pruned record carries it.
    fn leaf_of(&self, body: &[u8]) -> Hash {
        if body.first() == Some(&PRUNED_TAG) {
            decode_pruned(body).map_or_else(|_| leaf_hash(body), |(_, leaf)| leaf)
        } else {
            leaf_hash(body)
        }
    }

    fn push(&mut self, body: &[u8], offset: u64) {
        let pos = self.out.records;
        self.out.records += 1;
        let at = Some(offset);
        let name = self.out.session.clone();
        let leaf = if body.first() == Some(&PRUNED_TAG) {
            match decode_pruned(body) {
                Ok((seq, leaf)) => {
                    self.out.pruned += 1;
                    if seq != pos {
                        self.problem(
                            ProblemKind::Sequence,
                            Some(pos),
                            at,
                            format!("pruned record says seq {seq}"),
                        );
                    }
                    leaf
                }
                Err(e) => {
                    self.problem(ProblemKind::Undecodable, Some(pos), at, e.to_string());
                    leaf_hash(body)
                }
            }
        } else {
            match Delta::decode(body) {
                Err(e) => self.problem(ProblemKind::Undecodable, Some(pos), at, e.to_string()),
                Ok(d) => {
                    if d.session != name {
                        self.problem(
                            ProblemKind::WrongSession,
                            Some(pos),
                            at,
                            format!("the delta belongs to session {}", d.session),
                        );
                    }
                    if d.seq != pos {
                        let what = if d.seq > pos {
                            format!(
                                "found seq {} where seq {pos} belongs: {} delta(s) before it were removed, or it was moved",
                                d.seq,
                                d.seq - pos
                            )
                        } else {
                            format!(
                                "found seq {} where seq {pos} belongs: the delta was duplicated or moved",
                                d.seq
                            )
                        };
                        self.problem(ProblemKind::Sequence, Some(pos), at, what);
                    }
                    if d.parent != self.prev {
                        let detail = match (&d.parent, &self.prev) {
                            (None, _) => "the delta claims to be the first".to_string(),
                            (Some(_), None) => {
                                "the first delta names a parent: deltas before it were removed"
                                    .to_string()
                            }
                            (Some(p), Some(q)) => format!(
                                "it names parent {p} but the record before it hashes to {q}: that record was changed, removed or swapped"
                            ),
                        };
                        self.problem(ProblemKind::Chain, Some(pos), at, detail);
                    }
                }
            }
            leaf_hash(body)
        };
        self.tree.append_leaf_hash(leaf);
        self.prev = Some(leaf);
        if self
            .committed
            .as_ref()
            .is_some_and(|(_, c)| c.tree_size == self.out.records)
        {
            self.root_at_commit = Some(self.tree.root());
        }
    }

    fn finish(mut self) -> SessionReport {
        let n = self.out.records;
        if self.unreadable && n == 0 {
            return self.out;
        }
        if let Some((_, c)) = self.committed.take() {
            if n < c.tree_size {
                self.problem(
                    ProblemKind::Truncated,
                    None,
                    None,
                    format!(
                        "the log holds {n} delta(s) but the commitment covers {}: the tail was cut",
                        c.tree_size
                    ),
                );
            } else if n > c.tree_size {
                self.problem(
                    ProblemKind::Extended,
                    Some(c.tree_size),
                    None,
                    format!(
                        "the log holds {n} delta(s) but the commitment covers {}: deltas were appended after sealing",
                        c.tree_size
                    ),
                );
            }
            if let Some(root) = self.root_at_commit
                && !root.ct_eq(&c.root)
            {
                self.problem(
                    ProblemKind::RootMismatch,
                    None,
                    None,
                    format!(
                        "the deltas hash to root {root}, the commitment says {}: the log was rewritten",
                        c.root
                    ),
                );
            }
        }
        self.out
    }
}

/// An inclusion proof of one delta, checkable offline with only the public
/// key: the delta, its path to the committed session root, the commitment,
/// its path to a signed head of the commitment log, and that head.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditProof {
    /// Always `ahv-audit-proof-v1`.
    pub format: String,
    /// The session.
    pub session: String,
    /// The delta's sequence number (its leaf index).
    pub seq: u64,
    /// The delta's canonical bytes, hex.
    pub delta: String,
    /// The committed size of the session's log.
    pub tree_size: u64,
    /// The audit path from the delta to the session root (RFC 6962 §2.1.1), hex.
    pub path: Vec<String>,
    /// The commitment's bytes, hex.
    pub commitment: String,
    /// The commitment's index in the commitment log.
    pub commitment_index: u64,
    /// The signed head's bytes, hex.
    pub head: String,
    /// The audit path from the commitment to the head's root, hex.
    pub head_path: Vec<String>,
}

/// The proof format tag.
pub const PROOF_FORMAT: &str = "ahv-audit-proof-v1";

/// Why a proof could not be made or does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// Verification of the directory found problems; proofs are only made from
    /// a directory that verifies.
    #[error("the audit directory does not verify:\n{0}")]
    Unverified(Box<VerifyReport>),
    /// Verification could not run.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The session is not sealed or its commitment not signed yet.
    #[error("session {0}: not sealed by a signed commitment yet")]
    NotCommitted(String),
    /// No such delta.
    #[error("session {session}: no delta with seq {seq} (it has {len})")]
    NoSuchDelta {
        /// The session.
        session: String,
        /// The seq asked for.
        seq: u64,
        /// How many it has.
        len: u64,
    },
    /// The delta's body was pruned by retention.
    #[error("session {session}: delta {seq} was pruned; only its hash is kept")]
    Pruned {
        /// The session.
        session: String,
        /// The delta.
        seq: u64,
    },
    /// A proof element is malformed.
    #[error("malformed proof: {0}")]
    Malformed(String),
    /// The proof does not hold.
    #[error("the proof does not hold: {0}")]
    Invalid(String),
}

/// Makes an inclusion proof for delta `seq` of `session` from the audit
/// directory `dir`, after verifying the directory with `key` (or its own key).
///
/// # Errors
/// [`ProofError`]: the directory does not verify, the session is not sealed
/// and signed, the delta does not exist or was pruned.
pub fn prove(
    dir: &Path,
    session: &str,
    seq: u64,
    key: Option<&PublicKey>,
) -> Result<AuditProof, ProofError> {
    let report = verify_dir(dir, Some(session), key)?;
    if !report.ok() {
        return Err(ProofError::Unverified(Box::new(report)));
    }
    let key = match key {
        Some(k) => *k,
        None => {
            let s = std::fs::read_to_string(dir.join("public-key"))
                .map_err(|e| ProofError::Malformed(e.to_string()))?;
            PublicKey::from_hex(s.trim()).map_err(|e| ProofError::Malformed(e.to_string()))?
        }
    };
    let mut scratch = VerifyReport {
        in_use: false,
        key_source: String::new(),
        commitments: 0,
        signed_size: 0,
        problems: Vec::new(),
        sessions: Vec::new(),
        notes: Vec::new(),
    };
    let index = check_commitments(dir, &key, &mut scratch);
    let (ci, c) = index
        .by_session
        .get(session)
        .cloned()
        .ok_or_else(|| ProofError::NotCommitted(session.to_string()))?;
    let head = index
        .signed
        .clone()
        .filter(|h| h.head.size > ci)
        .ok_or_else(|| ProofError::NotCommitted(session.to_string()))?;
    // The session's log: its file's records, then its chunks' in the
    // segments (the directory verified, so they fit together).
    let path = session_log_path(dir, session);
    let mut records: Vec<Vec<u8>> = if std::fs::symlink_metadata(&path).is_ok() {
        read_log(&path, LogKind::SESSION_DELTAS)
            .map_err(|e| ProofError::Malformed(e.to_string()))?
            .records
            .into_iter()
            .map(|r| r.body)
            .collect()
    } else {
        Vec::new()
    };
    let segments = crate::segments::segments_dir(dir);
    if segments.is_dir() {
        let one = crate::segments::session_records(&segments, session)
            .map_err(|e| ProofError::Malformed(e.to_string()))?;
        records.extend(one.records.records.into_iter().map(|l| l.record.body));
    }
    let body = records
        .get(usize::try_from(seq).unwrap_or(usize::MAX))
        .filter(|_| seq < c.tree_size)
        .ok_or(ProofError::NoSuchDelta {
            session: session.to_string(),
            seq,
            len: c.tree_size,
        })?
        .clone();
    if body.first() == Some(&PRUNED_TAG) {
        return Err(ProofError::Pruned {
            session: session.to_string(),
            seq,
        });
    }
    let leaves: Vec<Hash> = records
        .iter()
        .take(usize::try_from(c.tree_size).unwrap_or(usize::MAX))
        .map(|body| {
            if body.first() == Some(&PRUNED_TAG) {
                decode_pruned(body).map_or_else(|_| leaf_hash(body), |(_, h)| h)
            } else {
                leaf_hash(body)
            }
        })
        .collect();
    let tree = MerkleLog::from_leaf_hashes(leaves);
    let path = tree
        .inclusion_proof(LeafIndex(seq), TreeSize(c.tree_size))
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    let head_path = index
        .tree
        .inclusion_proof(LeafIndex(ci), TreeSize(head.head.size))
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    Ok(AuditProof {
        format: PROOF_FORMAT.to_string(),
        session: session.to_string(),
        seq,
        delta: hex::encode(&body),
        tree_size: c.tree_size,
        path: path.path.iter().map(Hash::to_hex).collect(),
        commitment: hex::encode(c.encode()),
        commitment_index: ci,
        head: hex::encode(head.to_bytes()),
        head_path: head_path.path.iter().map(Hash::to_hex).collect(),
    })
}

impl AuditProof {
    /// Checks the proof with nothing but `key`: the delta is leaf `seq` of a
    /// tree of `tree_size` whose root the commitment states; the commitment is
    /// leaf `commitment_index` of the commitment log whose head `key` signed.
    /// Returns the proven delta.
    ///
    /// # Errors
    /// [`ProofError::Malformed`] or [`ProofError::Invalid`] naming the step
    /// that fails.
    pub fn verify(&self, key: &PublicKey) -> Result<Delta, ProofError> {
        let bad = |what: &str, e: &dyn fmt::Display| ProofError::Malformed(format!("{what}: {e}"));
        if self.format != PROOF_FORMAT {
            return Err(ProofError::Malformed(format!(
                "format {:?}, expected {PROOF_FORMAT}",
                self.format
            )));
        }
        let delta_bytes = hex::decode(&self.delta).map_err(|e| bad("delta", &e))?;
        let delta = Delta::decode(&delta_bytes).map_err(|e| bad("delta", &e))?;
        if delta.session != self.session || delta.seq != self.seq {
            return Err(ProofError::Invalid(format!(
                "the delta is #{} of session {}, the proof claims #{} of {}",
                delta.seq, delta.session, self.seq, self.session
            )));
        }
        let c_bytes = hex::decode(&self.commitment).map_err(|e| bad("commitment", &e))?;
        let c = Commitment::decode(&c_bytes).map_err(|e| bad("commitment", &e))?;
        if c.session != self.session || c.tree_size != self.tree_size {
            return Err(ProofError::Invalid(format!(
                "the commitment is for session {} with {} deltas, the proof claims {} with {}",
                c.session, c.tree_size, self.session, self.tree_size
            )));
        }
        let hashes = |v: &[String], what: &str| -> Result<Vec<Hash>, ProofError> {
            v.iter()
                .map(|h| Hash::from_hex(h).map_err(|e| bad(what, &e)))
                .collect()
        };
        let path = InclusionProof {
            index: LeafIndex(self.seq),
            size: TreeSize(self.tree_size),
            path: hashes(&self.path, "path")?,
        };
        verify_inclusion(&leaf_hash(&delta_bytes), &path, &c.root).map_err(|e| {
            ProofError::Invalid(format!("the delta is not in the committed tree: {e}"))
        })?;
        let head_bytes = hex::decode(&self.head).map_err(|e| bad("head", &e))?;
        let head = SignedTreeHead::from_bytes(&head_bytes).map_err(|e| bad("head", &e))?;
        head.verify(key)
            .map_err(|e| ProofError::Invalid(format!("the head's signature: {e}")))?;
        let head_path = InclusionProof {
            index: LeafIndex(self.commitment_index),
            size: TreeSize(head.head.size),
            path: hashes(&self.head_path, "head_path")?,
        };
        verify_inclusion(&leaf_hash(&c_bytes), &head_path, &head.head.root).map_err(|e| {
            ProofError::Invalid(format!(
                "the commitment is not in the signed commitment log: {e}"
            ))
        })?;
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ahv_core::{AgentId, EventBus, EventPayload, FakeClock, SessionId, TraceId};

    use super::*;
    use crate::auditor::tests::{open, open_with};
    use crate::auditor::{AuditConfig, Auditor};
    use crate::records::{Durability, rewrite_log};
    use crate::signing::{FakeWallClock, HypervisorKey, TreeHead};

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        key: PublicKey,
    }

    /// An auditor on a bus, both on fake clocks the test drives; the wall
    /// clock starts at 1 000 000 ms.
    fn open_clocked(
        dir: &Path,
        config: AuditConfig,
    ) -> (Auditor, Arc<EventBus>, FakeWallClock, Arc<FakeClock>) {
        let wall = FakeWallClock::new(1_000_000);
        let clock = Arc::new(FakeClock::new());
        let (auditor, _) =
            Auditor::open(dir, config, clock.clone(), Arc::new(wall.clone())).unwrap();
        let bus = Arc::new(EventBus::new(100, clock.clone()));
        auditor.attach(&bus);
        (auditor, bus, wall, clock)
    }

    /// Every event written at once, each round in a segment of its own.
    fn one_round_per_segment() -> AuditConfig {
        AuditConfig {
            durability: Durability::EveryRecord,
            max_segment_bytes: 1,
            ..AuditConfig::default()
        }
    }

    fn write(bus: &EventBus, s: &SessionId, i: u64) {
        bus.emit(
            Some(s),
            Some(&AgentId::new("did:ex:writer").unwrap()),
            TraceId(u128::from(i) + 1),
            None,
            EventPayload::VfsWrite {
                path: format!("shared/f{i}.txt"),
                op: "write".into(),
                size: i,
                before: None,
                after: Some([i as u8; 32]),
            },
        );
    }

    /// Two sealed sessions of 6 and 3 deltas, all signed.
    fn fixture(durability: Durability) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, durability);
        let a = SessionId::new("s-a").unwrap();
        let b = SessionId::new("s-b").unwrap();
        for i in 0..6 {
            write(&bus, &a, i);
        }
        for i in 0..3 {
            write(&bus, &b, i);
        }
        auditor.seal(&a).unwrap();
        auditor.seal(&b).unwrap();
        let head = auditor.close().unwrap().expect("a signed head");
        assert_eq!(head.head.size, 2);
        let key = *auditor.public_key();
        into_files(&dir);
        Fixture {
            _tmp: tmp,
            dir,
            key,
        }
    }

    /// Moves every session's records out of the segments into a file of its
    /// own, `sessions/<id>.log`, as auditors before segments wrote them, and
    /// removes the segments: the tampering tests edit those files (the
    /// format-1 layout, which verify, recovery and retention still read).
    /// [`into_segments`] moves them back, as rounds a test chooses.
    fn into_files(dir: &Path) {
        let segments = crate::segments::segments_dir(dir);
        let mut all = crate::segments::SessionAssembler::default();
        for (n, p) in crate::segments::list_segments(&segments).unwrap() {
            all.add_segment(&crate::segments::read_segment(n, &p).unwrap());
        }
        std::fs::create_dir_all(dir.join("sessions")).unwrap();
        for (session, s) in all.into_sessions() {
            assert!(s.problems.is_empty(), "{session}: {:?}", s.problems);
            let mut w = crate::records::RecordWriter::create(
                session_log_path(dir, &session),
                LogKind::SESSION_DELTAS,
                Durability::OnClose,
            )
            .unwrap();
            for l in s.records {
                w.append(&l.record.body, Duration::ZERO).unwrap();
            }
            w.close().unwrap();
        }
        std::fs::remove_dir_all(&segments).unwrap();
    }

    fn log_a(f: &Fixture) -> PathBuf {
        session_log_path(&f.dir, "s-a")
    }

    fn bodies(path: &Path, kind: LogKind) -> Vec<Vec<u8>> {
        read_log(path, kind)
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.body)
            .collect()
    }

    /// Opens an auditor on `dir` under `config`, both clocks fake, as a
    /// restarted process would (its recovery report too).
    fn reopen_with(dir: &Path, config: AuditConfig) -> (Auditor, crate::auditor::RecoveryReport) {
        Auditor::open(
            dir,
            config,
            Arc::new(FakeClock::new()),
            Arc::new(FakeWallClock::new(1)),
        )
        .unwrap()
    }

    fn kinds(r: &VerifyReport, session: &str) -> Vec<ProblemKind> {
        r.sessions
            .iter()
            .find(|s| s.session == session)
            .unwrap()
            .problems
            .iter()
            .map(|p| p.kind)
            .collect()
    }

    fn verify(f: &Fixture) -> VerifyReport {
        verify_dir(&f.dir, None, Some(&f.key)).unwrap()
    }

    /// Backpressure (the capturing thread flushing) on a session already
    /// waiting for the flusher used to lock that session's state twice and
    /// hang; now every capture past the bound writes, and nothing is lost.
    #[test]
    fn backpressure_on_a_dirty_session_writes_without_hanging() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker_dir = dir.clone();
        std::thread::spawn(move || {
            let (auditor, bus) = open_with(
                &worker_dir,
                AuditConfig {
                    durability: Durability::GroupCommit {
                        max_records: usize::MAX,
                        max_delay: std::time::Duration::from_secs(3600),
                    },
                    max_staged_bytes: 1,
                    ..AuditConfig::default()
                },
            );
            let s = SessionId::new("s-pressed").unwrap();
            for i in 0..20 {
                write(&bus, &s, i);
            }
            // Written by the capturing thread itself: the flusher sleeps an hour.
            let on_disk = crate::auditor::read_session_log(&worker_dir, "s-pressed")
                .unwrap()
                .len();
            auditor.seal(&s).unwrap();
            auditor.close().unwrap();
            let _ = done_tx.send(on_disk);
        });
        let on_disk = done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("capture under backpressure hung");
        assert_eq!(on_disk, 20);
        let report = verify_dir(&dir, None, None).unwrap();
        assert!(report.ok(), "{report:?}");
    }

    #[test]
    fn a_clean_directory_verifies_under_every_durability_policy() {
        for d in [
            Durability::EveryRecord,
            Durability::OnClose,
            Durability::default(),
        ] {
            let f = fixture(d);
            let r = verify(&f);
            assert!(r.ok(), "{d:?}:\n{r}");
            assert_eq!(r.commitments, 2);
            assert_eq!(r.signed_size, 2);
            // Each session: its writes plus an audit of nothing else.
            let a = r.sessions.iter().find(|s| s.session == "s-a").unwrap();
            assert_eq!(a.records, 6);
            assert_eq!(
                a.status,
                SessionStatus::Committed {
                    index: 0,
                    tree_size: 6
                }
            );
            assert!(r.to_string().contains("session s-a: ok"), "{r}");
        }
    }

    #[test]
    fn the_chain_links_each_delta_to_the_previous_one() {
        let f = fixture(Durability::EveryRecord);
        let b = bodies(&log_a(&f), LogKind::SESSION_DELTAS);
        let d: Vec<Delta> = b.iter().map(|x| Delta::decode(x).unwrap()).collect();
        assert_eq!(d[0].parent, None);
        for i in 1..d.len() {
            assert_eq!(d[i].parent, Some(leaf_hash(&b[i - 1])));
            assert_eq!(d[i].seq, i as u64);
        }
        assert_eq!(d[2].kind, "vfs.write");
        assert_eq!(
            d[2].field("path"),
            Some(&crate::delta::Value::Text("shared/f2.txt".into()))
        );
    }

    #[test]
    fn a_changed_byte_is_caught_by_its_checksum_at_its_offset() {
        let f = fixture(Durability::EveryRecord);
        let path = log_a(&f);
        let rec = read_log(&path, LogKind::SESSION_DELTAS).unwrap();
        let target = &rec.records[2];
        let mut raw = std::fs::read(&path).unwrap();
        raw[usize::try_from(target.offset).unwrap() + 8 + 20] ^= 0x01;
        std::fs::write(&path, raw).unwrap();
        let r = verify(&f);
        assert!(!r.ok());
        let a = r.sessions.iter().find(|s| s.session == "s-a").unwrap();
        assert!(
            a.problems
                .iter()
                .any(|p| p.kind == ProblemKind::Damaged && p.offset == Some(target.offset)),
            "{r}"
        );
        assert!(
            kinds(&r, "s-b").is_empty(),
            "the other session is untouched"
        );
    }

    #[test]
    fn a_changed_delta_with_a_fixed_checksum_breaks_the_chain_after_it() {
        let f = fixture(Durability::EveryRecord);
        let path = log_a(&f);
        let mut b = bodies(&path, LogKind::SESSION_DELTAS);
        let last = b[2].len() - 1;
        b[2][last] ^= 0x01; // inside the `after` hash of delta 2
        rewrite_log(&path, LogKind::SESSION_DELTAS, &b).unwrap();
        let r = verify(&f);
        let a = r.sessions.iter().find(|s| s.session == "s-a").unwrap();
        assert!(
            a.problems
                .iter()
                .any(|p| p.kind == ProblemKind::Chain && p.record == Some(3)),
            "{r}"
        );
        assert!(kinds(&r, "s-a").contains(&ProblemKind::RootMismatch));
    }

    #[test]
    fn a_changed_last_delta_is_caught_by_the_root() {
        let f = fixture(Durability::EveryRecord);
        let path = log_a(&f);
        let mut b = bodies(&path, LogKind::SESSION_DELTAS);
        let last = b[5].len() - 1;
        b[5][last] ^= 0x01;
        rewrite_log(&path, LogKind::SESSION_DELTAS, &b).unwrap();
        assert_eq!(kinds(&verify(&f), "s-a"), vec![ProblemKind::RootMismatch]);
    }

    #[test]
    fn a_deleted_delta_is_named() {
        let f = fixture(Durability::EveryRecord);
        let path = log_a(&f);
        let mut b = bodies(&path, LogKind::SESSION_DELTAS);
        b.remove(3);
        rewrite_log(&path, LogKind::SESSION_DELTAS, &b).unwrap();
        let r = verify(&f);
        let k = kinds(&r, "s-a");
        assert!(k.contains(&ProblemKind::Sequence), "{r}");
        assert!(k.contains(&ProblemKind::Chain), "{r}");
        assert!(k.contains(&ProblemKind::Truncated), "{r}");
        assert!(
            r.to_string().contains("found seq 4 where seq 3 belongs"),
            "{r}"
        );
    }

    #[test]
    fn swapped_deltas_are_named() {
        let f = fixture(Durability::EveryRecord);
        let path = log_a(&f);
        let mut b = bodies(&path, LogKind::SESSION_DELTAS);
        b.swap(1, 4);
        rewrite_log(&path, LogKind::SESSION_DELTAS, &b).unwrap();
        let r = verify(&f);
        let a = r.sessions.iter().find(|s| s.session == "s-a").unwrap();
        let seq: Vec<_> = a
            .problems
            .iter()
            .filter(|p| p.kind == ProblemKind::Sequence)
            .map(|p| p.record)
            .collect();
        assert_eq!(seq, vec![Some(1), Some(4)], "{r}");
        assert!(kinds(&r, "s-a").contains(&ProblemKind::RootMismatch));
    }

    #[test]
    fn a_truncated_tail_is_caught_by_the_committed_size() {
        let f = fixture(Durability::EveryRecord);
        let path = log_a(&f);
        let b = bodies(&path, LogKind::SESSION_DELTAS);
        rewrite_log(&path, LogKind::SESSION_DELTAS, &b[..4]).unwrap();
        assert_eq!(kinds(&verify(&f), "s-a"), vec![ProblemKind::Truncated]);
        // Cutting inside the last record is a torn tail, plus the truncation.
        let f = fixture(Durability::EveryRecord);
        let path = log_a(&f);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 5).unwrap();
        let k = kinds(&verify(&f), "s-a");
        assert_eq!(k, vec![ProblemKind::TornTail, ProblemKind::Truncated]);
    }

    /// An attacker rewrites a session's whole chain consistently (every
    /// checksum, seq and parent right): only the commitment catches it.
    fn rewrite_chain(f: &Fixture) -> Vec<Vec<u8>> {
        let path = log_a(f);
        let b = bodies(&path, LogKind::SESSION_DELTAS);
        let mut out: Vec<Vec<u8>> = Vec::new();
        for body in &b {
            let mut d = Delta::decode(body).unwrap();
            d.agent = Some("did:ex:someone-else".into());
            d.parent = out.last().map(|p| leaf_hash(p));
            out.push(d.encode());
        }
        rewrite_log(&path, LogKind::SESSION_DELTAS, &out).unwrap();
        out
    }

    #[test]
    fn a_consistent_rewrite_of_the_whole_chain_is_caught_by_the_commitment() {
        let f = fixture(Durability::EveryRecord);
        rewrite_chain(&f);
        let r = verify(&f);
        assert_eq!(kinds(&r, "s-a"), vec![ProblemKind::RootMismatch], "{r}");
    }

    #[test]
    fn a_replaced_commitment_is_caught_by_the_signed_head() {
        let f = fixture(Durability::EveryRecord);
        let forged = rewrite_chain(&f);
        let cpath = commitments_path(&f.dir);
        let mut cs = bodies(&cpath, LogKind::COMMITMENTS);
        let mut c = Commitment::decode(&cs[0]).unwrap();
        c.root = MerkleLog::from_leaf_hashes(forged.iter().map(|d| leaf_hash(d)).collect()).root();
        cs[0] = c.encode();
        rewrite_log(&cpath, LogKind::COMMITMENTS, &cs).unwrap();
        let r = verify(&f);
        assert!(
            kinds(&r, "s-a").is_empty(),
            "the session now matches its commitment"
        );
        assert!(
            r.problems
                .iter()
                .any(|p| p.kind == ProblemKind::HeadMismatch),
            "{r}"
        );
        assert!(!r.ok());
    }

    #[test]
    fn a_removed_commitment_is_caught_by_the_signed_size() {
        let f = fixture(Durability::EveryRecord);
        let cpath = commitments_path(&f.dir);
        let cs = bodies(&cpath, LogKind::COMMITMENTS);
        rewrite_log(&cpath, LogKind::COMMITMENTS, &cs[..1]).unwrap();
        let r = verify(&f);
        assert!(
            r.problems
                .iter()
                .any(|p| p.kind == ProblemKind::HeadMismatch
                    && p.detail
                        .contains("covers 2 commitment(s) but the log holds 1")),
            "{r}"
        );
    }

    #[test]
    fn a_head_signed_by_another_key_is_caught_and_so_is_a_pinned_key_mismatch() {
        let f = fixture(Durability::EveryRecord);
        let hpath = heads_path(&f.dir);
        let hs = bodies(&hpath, LogKind::SIGNED_HEADS);
        let real = SignedTreeHead::from_bytes(hs.last().unwrap()).unwrap();
        let other = HypervisorKey::from_seed([9; 32]);
        let forged = other.sign_head(&TreeHead { ..real.head });
        rewrite_log(&hpath, LogKind::SIGNED_HEADS, [forged.to_bytes()]).unwrap();
        let r = verify(&f);
        let k: Vec<_> = r.problems.iter().map(|p| p.kind).collect();
        assert!(k.contains(&ProblemKind::BadSignature), "{r}");
        assert!(k.contains(&ProblemKind::Unsigned), "{r}");
        // Verifying with the forger's key accepts the forged head: which is
        // why the key should be pinned, not read from the directory.
        let r = verify_dir(&f.dir, None, Some(&other.public_key())).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn verifying_one_session_and_naming_an_unknown_one() {
        let f = fixture(Durability::EveryRecord);
        let r = verify_dir(&f.dir, Some("s-b"), Some(&f.key)).unwrap();
        assert_eq!(r.sessions.len(), 1);
        assert!(r.ok());
        assert!(matches!(
            verify_dir(&f.dir, Some("s-zz"), Some(&f.key)),
            Err(VerifyError::UnknownSession(s)) if s == "s-zz"
        ));
        // Without a pinned key the directory's own key is used, and said so.
        let r = verify_dir(&f.dir, None, None).unwrap();
        assert!(r.ok());
        assert!(r.key_source.contains("pass --public-key"));
    }

    #[test]
    fn an_inclusion_proof_verifies_offline_and_any_change_breaks_it() {
        let f = fixture(Durability::EveryRecord);
        let p = prove(&f.dir, "s-a", 4, Some(&f.key)).unwrap();
        let d = p.verify(&f.key).unwrap();
        assert_eq!((d.seq, d.session.as_str()), (4, "s-a"));
        let json = serde_json::to_string(&p).unwrap();
        let back: AuditProof = serde_json::from_str(&json).unwrap();
        assert_eq!(back.verify(&f.key).unwrap(), d);
        let other = HypervisorKey::from_seed([9; 32]).public_key();
        assert!(matches!(p.verify(&other), Err(ProofError::Invalid(_))));
        for field in 0..5 {
            let mut m = p.clone();
            let flip = |s: &mut String| {
                let c = if s.ends_with('0') { '1' } else { '0' };
                s.pop();
                s.push(c);
            };
            match field {
                0 => flip(&mut m.delta),
                1 => flip(&mut m.path[0]),
                2 => flip(&mut m.commitment),
                3 => flip(&mut m.head),
                _ => m.seq = 3,
            }
            assert!(m.verify(&f.key).is_err(), "field {field}");
        }
        assert!(matches!(
            prove(&f.dir, "s-a", 6, Some(&f.key)),
            Err(ProofError::NoSuchDelta { len: 6, .. })
        ));
        rewrite_chain(&f);
        assert!(matches!(
            prove(&f.dir, "s-a", 1, Some(&f.key)),
            Err(ProofError::Unverified(_))
        ));
    }

    #[test]
    fn pruned_bodies_keep_the_commitment_verifiable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, Durability::EveryRecord);
        let s = SessionId::new("s-p").unwrap();
        for i in 0..5 {
            write(&bus, &s, i);
        }
        assert!(matches!(
            auditor.prune("s-p"),
            Err(AuditError::NotSealed(_))
        ));
        auditor.seal(&s).unwrap();
        assert_eq!(auditor.prune("s-p").unwrap(), 5);
        assert_eq!(auditor.prune("s-p").unwrap(), 0, "already pruned");
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, Some(auditor.public_key())).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.sessions[0].pruned, 5);
        assert!(matches!(
            prove(&dir, "s-p", 2, None),
            Err(ProofError::Pruned { seq: 2, .. })
        ));
        // A changed leaf hash in a pruned record (its checksum fixed) is
        // still caught.
        edit_segment_records(&dir, |body| {
            let last = body.first() == Some(&PRUNED_TAG)
                && decode_pruned(body).is_ok_and(|(seq, _)| seq == 4);
            if last {
                body[40] ^= 1;
            }
            last
        });
        let r = verify_dir(&dir, None, Some(auditor.public_key())).unwrap();
        assert_eq!(kinds(&r, "s-p"), vec![ProblemKind::RootMismatch]);
    }

    /// Rewrites every segment of `dir` with each record's body passed to
    /// `edit` (which returns whether it changed it), checksums recomputed:
    /// tampering that framing cannot see. Panics unless exactly one record
    /// was changed.
    fn edit_segment_records(dir: &Path, mut edit: impl FnMut(&mut Vec<u8>) -> bool) {
        let mut changed = 0;
        for (_, path) in
            crate::segments::list_segments(&crate::segments::segments_dir(dir)).unwrap()
        {
            let mut b = bodies(&path, LogKind::SEGMENT);
            let before = changed;
            for body in &mut b {
                changed += usize::from(edit(body));
            }
            if changed > before {
                rewrite_log(&path, LogKind::SEGMENT, &b).unwrap();
            }
        }
        assert_eq!(changed, 1, "records edited");
    }

    use crate::auditor::AuditError;

    #[test]
    fn retention_prunes_only_sessions_sealed_longer_ago_than_kept_and_only_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus, wall, _) = open_clocked(
            &dir,
            AuditConfig {
                durability: Durability::EveryRecord,
                ..AuditConfig::default()
            },
        );
        let old = SessionId::new("s-old").unwrap();
        let new = SessionId::new("s-new").unwrap();
        write(&bus, &old, 0);
        auditor.seal(&old).unwrap();
        wall.set(1_000_000 + 3_600_000); // an hour later
        write(&bus, &new, 0);
        write(&bus, &new, 1);
        auditor.seal(&new).unwrap();
        let keep = Duration::from_secs(600);
        assert_eq!(auditor.apply_retention(keep).unwrap(), 1);
        assert_eq!(auditor.apply_retention(keep).unwrap(), 0, "once each");
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, Some(auditor.public_key())).unwrap();
        assert!(r.ok(), "{r}");
        let pruned: Vec<_> = r
            .sessions
            .iter()
            .map(|s| (s.session.as_str(), s.pruned))
            .collect();
        assert_eq!(pruned, vec![("s-new", 0), ("s-old", 1)]);
    }

    #[test]
    fn events_after_sealing_are_late_and_sealing_twice_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, Durability::default());
        let s = SessionId::new("s-l").unwrap();
        write(&bus, &s, 0);
        let receipt = auditor.seal(&s).unwrap();
        assert_eq!(receipt.commitment.tree_size, 1);
        write(&bus, &s, 1);
        assert_eq!(auditor.stats().late, 1);
        assert!(matches!(
            auditor.seal(&s),
            Err(AuditError::AlreadySealed(_))
        ));
        // Events without a session and the auditor's own are not captured.
        bus.emit(None, None, TraceId(0), None, EventPayload::SessionArchived);
        assert_eq!(auditor.stats().captured, 1);
        // The bus saw audit.delta_captured for the write and audit.committed.
        let q = ahv_core::EventQuery::default();
        let names: Vec<_> = bus.query(&q).iter().map(|e| e.kind().name()).collect();
        assert!(names.contains(&"audit.delta_captured"), "{names:?}");
        assert!(names.contains(&"audit.committed"), "{names:?}");
        auditor.close().unwrap();
        assert!(verify_dir(&dir, None, None).unwrap().ok());
    }

    #[test]
    fn an_unsealed_session_left_by_a_crash_is_sealed_on_reopen_and_a_torn_tail_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        {
            let (auditor, bus) = open(&dir, Durability::EveryRecord);
            let s = SessionId::new("s-c").unwrap();
            for i in 0..4 {
                write(&bus, &s, i);
            }
            auditor.close().unwrap();
        }
        // As an auditor before segments left it: a file per session.
        into_files(&dir);
        // The crash tore the last record.
        let path = session_log_path(&dir, "s-c");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert_eq!(kinds(&r, "s-c"), vec![ProblemKind::TornTail]);
        assert_eq!(r.sessions[0].status, SessionStatus::Open);

        let clock = Arc::new(FakeClock::new());
        let (auditor, report) = Auditor::open(
            &dir,
            AuditConfig::default(),
            clock,
            Arc::new(FakeWallClock::new(1)),
        )
        .unwrap();
        assert_eq!(report.torn.len(), 1);
        assert_eq!(report.torn[0].0, path);
        assert!(report.torn[0].1.saved_to.as_ref().unwrap().exists());
        assert_eq!(report.sealed_on_recovery, vec![("s-c".to_string(), 3)]);
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        assert!(r.notes.iter().any(|n| n.contains(".torn-")), "{r}");
    }

    /// Recovery seals a session from its own file (format 1) before it
    /// reads the segments; chunks of the same session there do not make it
    /// an orphan again (its log is still in memory, sealed, not yet among
    /// the sessions whose logs have left it).
    #[test]
    fn a_session_recovery_sealed_from_its_file_is_not_sealed_again_from_the_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        {
            let (auditor, bus) = open(&dir, Durability::EveryRecord);
            let s = SessionId::new("s-c").unwrap();
            write(&bus, &s, 0);
            write(&bus, &s, 1);
            auditor.close().unwrap();
        }
        let segments = crate::segments::segments_dir(&dir);
        let kept = tmp.path().join("segments-kept");
        std::fs::create_dir_all(&kept).unwrap();
        for (_, p) in crate::segments::list_segments(&segments).unwrap() {
            std::fs::copy(&p, kept.join(p.file_name().unwrap())).unwrap();
        }
        into_files(&dir);
        std::fs::rename(&kept, &segments).unwrap();
        let (auditor, report) = Auditor::open(
            &dir,
            AuditConfig::default(),
            Arc::new(FakeClock::new()),
            Arc::new(FakeWallClock::new(1)),
        )
        .unwrap();
        assert_eq!(report.sealed_on_recovery, vec![("s-c".to_string(), 2)]);
        assert!(report.damaged.is_empty(), "{:?}", report.damaged);
        auditor.close().unwrap();
    }

    #[test]
    fn sessions_left_unsealed_in_segments_are_sealed_on_reopen_and_a_crashs_leftovers_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        {
            let (auditor, bus) = open(&dir, Durability::EveryRecord);
            let a = SessionId::new("s-a").unwrap();
            let b = SessionId::new("s-b").unwrap();
            for i in 0..3 {
                write(&bus, &a, i);
            }
            for i in 0..2 {
                write(&bus, &b, i);
            }
            auditor.seal(&b).unwrap();
            auditor.close().unwrap();
        }
        // What a crash inside a round leaves: records with no footer, then
        // half a record.
        let segs = crate::segments::segments_dir(&dir);
        let seg1 = crate::segments::segment_path(&segs, 1);
        let (mut w, _) =
            crate::records::RecordWriter::open_append(&seg1, LogKind::SEGMENT, Durability::OnClose)
                .unwrap();
        let unacknowledged = b"\x01never acknowledged";
        w.append(unacknowledged, Duration::ZERO).unwrap();
        w.close().unwrap();
        let len = std::fs::metadata(&seg1).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&seg1)
            .unwrap()
            .write_all(&[9, 0, 0, 0])
            .unwrap();

        let (auditor, bus) = open(&dir, Durability::EveryRecord);
        let report = {
            // The report of the open above is not kept by `open`: reopen.
            auditor.close().unwrap();
            drop(auditor);
            drop(bus);
            let (auditor, report) = reopen_with(&dir, AuditConfig::default());
            auditor.close().unwrap();
            report
        };
        // s-a was sealed by the first reopen; the second finds nothing to do
        // but the crash's leftovers, which stay where they are.
        assert!(report.sealed_on_recovery.is_empty(), "{report:?}");
        let at = len - 8 - unacknowledged.len() as u64;
        assert_eq!(report.uncommitted, vec![(seg1.clone(), at, 1)]);
        assert_eq!(report.torn.len(), 1, "{report:?}");
        assert_eq!(
            (report.torn[0].0.clone(), report.torn[0].1.saved_to.clone()),
            (seg1.clone(), None)
        );
        assert_eq!(
            std::fs::metadata(&seg1).unwrap().len(),
            len + 4,
            "never cut"
        );
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        let a = r.sessions.iter().find(|s| s.session == "s-a").unwrap();
        assert_eq!(a.records, 3);
        assert!(matches!(
            a.status,
            SessionStatus::Committed { tree_size: 3, .. }
        ));
        assert_eq!(r.notes.len(), 2, "{r}");
    }

    #[test]
    fn an_orphan_is_sealed_once_by_the_first_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        {
            let (auditor, bus) = open(&dir, Durability::EveryRecord);
            let a = SessionId::new("s-a").unwrap();
            for i in 0..3 {
                write(&bus, &a, i);
            }
            auditor.close().unwrap();
        }
        let reopen = || {
            let (auditor, report) = reopen_with(&dir, AuditConfig::default());
            auditor.close().unwrap();
            report
        };
        assert_eq!(reopen().sealed_on_recovery, vec![("s-a".to_string(), 3)]);
        assert!(reopen().sealed_on_recovery.is_empty());
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn recovery_reads_no_segment_older_than_the_last_ones_start_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        {
            let (auditor, bus) = open_with(&dir, one_round_per_segment());
            let old = SessionId::new("s-old").unwrap();
            let live = SessionId::new("s-live").unwrap();
            write(&bus, &old, 0);
            write(&bus, &old, 1);
            auditor.seal(&old).unwrap();
            for i in 0..3 {
                write(&bus, &live, i);
            }
            auditor.close().unwrap();
        }
        let segs = crate::segments::segments_dir(&dir);
        let numbers: Vec<u64> = crate::segments::list_segments(&segs)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5]);
        assert_eq!(crate::segments::recovery_start(&segs).unwrap(), 3);
        // Segments 1 and 2 hold only a session sealed for good: recovery
        // must not need them (here they cannot be read at all).
        let kept: Vec<Vec<u8>> = [1, 2]
            .iter()
            .map(|&n| std::fs::read(crate::segments::segment_path(&segs, n)).unwrap())
            .collect();
        for n in [1, 2] {
            std::fs::write(crate::segments::segment_path(&segs, n), b"not a segment").unwrap();
        }
        let (auditor, report) = reopen_with(&dir, one_round_per_segment());
        auditor.close().unwrap();
        assert!(report.damaged.is_empty(), "{report:?}");
        assert_eq!(report.sealed_on_recovery, vec![("s-live".to_string(), 3)]);
        for (n, bytes) in [1, 2].iter().zip(kept) {
            std::fs::write(crate::segments::segment_path(&segs, *n), bytes).unwrap();
        }
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn pruning_a_session_in_the_open_segment_closes_it_and_spares_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, Durability::EveryRecord);
        let done = SessionId::new("s-done").unwrap();
        let live = SessionId::new("s-live").unwrap();
        for i in 0..3 {
            write(&bus, &done, i);
            write(&bus, &live, i);
        }
        auditor.seal(&done).unwrap();
        assert_eq!(auditor.prune("s-done").unwrap(), 3);
        // The next delta goes to a new segment: the pruned one was rewritten.
        write(&bus, &live, 3);
        let segs = crate::segments::segments_dir(&dir);
        assert_eq!(crate::segments::list_segments(&segs).unwrap().len(), 2);
        auditor.seal(&live).unwrap();
        assert!(matches!(
            auditor.prune("s-nowhere"),
            Err(AuditError::NotSealed(_))
        ));
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        let counts: Vec<(&str, u64, u64)> = r
            .sessions
            .iter()
            .map(|s| (s.session.as_str(), s.records, s.pruned))
            .collect();
        assert_eq!(counts, [("s-done", 3, 3), ("s-live", 4, 0)]);
    }

    #[test]
    fn a_failed_write_is_retried_in_order_by_the_next_event_and_before_the_seal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, Durability::EveryRecord);
        let s = SessionId::new("s-f").unwrap();
        let t = SessionId::new("s-t").unwrap();
        write(&bus, &s, 0);
        crate::records::test_faults::fail_next_writes(1);
        write(&bus, &s, 1);
        assert_eq!(auditor.stats().write_failures, 1);
        // Another session's event writes s-f's staged delta too, first.
        write(&bus, &t, 0);
        assert_eq!(
            crate::auditor::read_session_log(&dir, "s-f").unwrap().len(),
            2
        );
        write(&bus, &s, 2);
        let receipt = auditor.seal(&s).unwrap();
        assert!(receipt.is_durable());
        auditor.seal(&t).unwrap();
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.sessions[0].records, 3);
    }

    #[test]
    fn an_event_too_large_for_a_record_is_refused_loudly_and_the_log_stays_consistent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, Durability::EveryRecord);
        let s = SessionId::new("s-big").unwrap();
        write(&bus, &s, 0);
        bus.emit(
            Some(&s),
            None,
            TraceId(1),
            None,
            EventPayload::StateWrite {
                key: "k".repeat(17 << 20),
                version: 1,
            },
        );
        assert_eq!(auditor.stats().write_failures, 1);
        let err = auditor.last_error().unwrap();
        assert!(
            err.contains("s-big") && err.contains("more than a record holds"),
            "{err}"
        );
        write(&bus, &s, 1);
        let receipt = auditor.seal(&s).unwrap();
        assert_eq!(receipt.commitment.tree_size, 2);
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn recovery_does_not_seal_a_session_whose_records_were_in_a_damaged_round() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        {
            let (auditor, bus) = open(&dir, Durability::EveryRecord);
            let x = SessionId::new("s-x").unwrap();
            let y = SessionId::new("s-y").unwrap();
            for i in 0..3 {
                write(&bus, &x, i);
            }
            write(&bus, &y, 0);
            auditor.close().unwrap();
        }
        // A changed byte in s-x's last delta: its round is unreadable, and
        // nothing after it says s-x had a third delta.
        let located = crate::segments::session_records(&crate::segments::segments_dir(&dir), "s-x")
            .unwrap()
            .records
            .records[2]
            .clone();
        let path =
            crate::segments::segment_path(&crate::segments::segments_dir(&dir), located.segment);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[located.record.offset as usize + 12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (auditor, report) = reopen_with(&dir, AuditConfig::default());
        // s-y is sealed; s-x is left as evidence, not sealed over two deltas.
        assert_eq!(report.sealed_on_recovery, vec![("s-y".to_string(), 1)]);
        let named: Vec<String> = report.damaged.iter().map(|(_, e)| e.to_string()).collect();
        assert!(
            named
                .iter()
                .any(|e| e.contains("s-x") && e.contains("damaged round")),
            "{named:?}"
        );
        // Its later events are late, not a new log.
        let bus = Arc::new(EventBus::new(64, Arc::new(FakeClock::new())));
        auditor.attach(&bus);
        write(&bus, &SessionId::new("s-x").unwrap(), 9);
        assert_eq!(auditor.stats().late, 1);
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(!r.ok());
        let x = r.sessions.iter().find(|s| s.session == "s-x").unwrap();
        assert_eq!(x.status, SessionStatus::Open);
    }

    #[test]
    fn a_start_record_naming_a_later_segment_is_caught() {
        // It would let recovery skip segments holding sessions left open.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(&dir, Durability::EveryRecord);
        write(&bus, &SessionId::new("s-a").unwrap(), 0);
        auditor.close().unwrap();
        edit_segment_records(&dir, |body| {
            let start = crate::segments::decode_start(body).is_some_and(|s| s.oldest_live == 1);
            if start {
                *body = crate::segments::encode_start(5, 0).to_vec();
            }
            start
        });
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.detail.contains("names segment 5, after its own number 1")),
            "{r}"
        );
    }

    #[test]
    fn a_restarted_process_does_not_read_the_segments_retention_pruned_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let hour = 3_600_000;
        let (auditor, bus, wall, _) = open_clocked(&dir, one_round_per_segment());
        for n in 0..3 {
            let s = SessionId::new(format!("s-{n}")).unwrap();
            write(&bus, &s, 0);
            auditor.seal(&s).unwrap();
        }
        wall.set(1_000_000 + 2 * hour);
        assert_eq!(
            auditor.apply_retention(Duration::from_secs(3600)).unwrap(),
            3
        );
        auditor.close().unwrap();
        drop(auditor);
        let segs = crate::segments::segments_dir(&dir);
        // Segments 1-3 are pruned whole; a later process need not read them
        // (here it could not: the first is no segment any more).
        let seg1 = crate::segments::segment_path(&segs, 1);
        let kept = std::fs::read(&seg1).unwrap();
        std::fs::write(&seg1, b"not a segment").unwrap();
        let wall = FakeWallClock::new(1_000_000 + 2 * hour);
        let (again, report) = Auditor::open(
            &dir,
            one_round_per_segment(),
            Arc::new(FakeClock::new()),
            Arc::new(wall.clone()),
        )
        .unwrap();
        assert_eq!(report.retention_segments_from, 4, "{report:?}");
        let bus = Arc::new(EventBus::new(64, Arc::new(FakeClock::new())));
        again.attach(&bus);
        let late = SessionId::new("s-later").unwrap();
        write(&bus, &late, 0);
        again.seal(&late).unwrap();
        wall.set(1_000_000 + 4 * hour);
        assert_eq!(again.apply_retention(Duration::from_secs(3600)).unwrap(), 1);
        again.close().unwrap();
        std::fs::write(&seg1, kept).unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        assert!(r.sessions.iter().all(|s| s.pruned == 1), "{r}");
    }

    #[test]
    fn a_retention_pass_reads_only_the_segments_its_sessions_were_written_to() {
        // A session left open keeps its first segment from being pruned
        // whole; later passes must not read it (nor everything after it)
        // again. Here they could not: it is broken before they run.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let hour = 3_600_000;
        let (auditor, bus, wall, _) = open_clocked(&dir, one_round_per_segment());
        let open = SessionId::new("s-open").unwrap();
        write(&bus, &open, 0);
        for n in 0..3 {
            let s = SessionId::new(format!("s-{n}")).unwrap();
            write(&bus, &s, 0);
            auditor.seal(&s).unwrap();
        }
        wall.set(1_000_000 + 2 * hour);
        assert_eq!(
            auditor.apply_retention(Duration::from_secs(3600)).unwrap(),
            3
        );
        let segs = crate::segments::segments_dir(&dir);
        let seg1 = crate::segments::segment_path(&segs, 1);
        let kept = std::fs::read(&seg1).unwrap();
        std::fs::write(&seg1, b"not a segment").unwrap();
        let late = SessionId::new("s-later").unwrap();
        write(&bus, &late, 0);
        auditor.seal(&late).unwrap();
        wall.set(1_000_000 + 4 * hour);
        assert_eq!(
            auditor.apply_retention(Duration::from_secs(3600)).unwrap(),
            1
        );
        // Once the open session is sealed and due, its pass reads from its
        // first segment on.
        std::fs::write(&seg1, kept).unwrap();
        write(&bus, &open, 1);
        auditor.seal(&open).unwrap();
        wall.set(1_000_000 + 6 * hour);
        assert_eq!(
            auditor.apply_retention(Duration::from_secs(3600)).unwrap(),
            1
        );
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        let pruned: Vec<(&str, u64)> = r
            .sessions
            .iter()
            .map(|s| (s.session.as_str(), s.pruned))
            .collect();
        assert!(
            pruned
                .iter()
                .all(|(s, n)| *n == if *s == "s-open" { 2 } else { 1 }),
            "{pruned:?}"
        );
    }

    #[test]
    fn under_every_record_a_delta_is_in_a_segment_when_its_emit_returns() {
        // Concurrent captures share rounds (one takes every delta staged
        // while the one before it synced); none may return before a round
        // that took its delta has written it.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open_with(
            &dir,
            AuditConfig {
                durability: Durability::EveryRecord,
                ..AuditConfig::default()
            },
        );
        let segs = crate::segments::segments_dir(&dir);
        std::thread::scope(|scope| {
            // Two threads per session: a capture may find its session
            // listed by the other's.
            for t in 0..6u64 {
                let (bus, segs) = (&bus, &segs);
                scope.spawn(move || {
                    let s = SessionId::new(format!("s-{}", t % 3)).unwrap();
                    for i in t * 1000..t * 1000 + 20 {
                        write(bus, &s, i);
                        let path = format!("shared/f{i}.txt");
                        let records = crate::segments::session_records(segs, s.as_str())
                            .unwrap()
                            .records
                            .records;
                        assert!(
                            records.iter().any(|r| r
                                .record
                                .body
                                .windows(path.len())
                                .any(|w| w == path.as_bytes())),
                            "{s}: {path} not on disk when its emit returned"
                        );
                    }
                });
            }
        });
        assert_eq!(auditor.stats().write_failures, 0);
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn pruning_one_session_reads_only_the_segments_it_was_written_to() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open_with(
            &dir,
            AuditConfig {
                max_segment_bytes: 1,
                ..AuditConfig::default()
            },
        );
        let first = SessionId::new("s-first").unwrap();
        write(&bus, &first, 0);
        auditor.seal(&first).unwrap();
        auditor.flush().unwrap();
        // A block of commitments without records: the next session's
        // commitment is in a block of its own, whose records are only in
        // the next segment.
        for n in 0..crate::spans::BLOCK {
            auditor
                .seal(&SessionId::new(format!("s-empty-{n}")).unwrap())
                .unwrap();
        }
        let last = SessionId::new("s-last").unwrap();
        write(&bus, &last, 0);
        auditor.seal(&last).unwrap();
        auditor.flush().unwrap();
        let seg1 = crate::segments::segment_path(&crate::segments::segments_dir(&dir), 1);
        let kept = std::fs::read(&seg1).unwrap();
        std::fs::write(&seg1, b"not a segment").unwrap();
        assert_eq!(auditor.prune("s-last").unwrap(), 1);
        std::fs::write(&seg1, kept).unwrap();
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        let pruned = |name: &str| {
            r.sessions
                .iter()
                .find(|s| s.session == name)
                .unwrap()
                .pruned
        };
        assert_eq!((pruned("s-first"), pruned("s-last")), (0, 1), "{r}");
    }

    #[test]
    fn retention_prunes_the_copy_a_failed_first_round_left_in_an_earlier_segment() {
        // The sync of a session's first round fails after its write: the
        // round is on disk in a segment its retried copy is not in.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let hour = 3_600_000;
        let (auditor, bus, wall, _) = open_clocked(
            &dir,
            AuditConfig {
                durability: Durability::EveryRecord,
                ..AuditConfig::default()
            },
        );
        // Segment 1 made by another session's round (its creation syncs).
        write(&bus, &SessionId::new("s-first").unwrap(), 0);
        let s = SessionId::new("s-retried").unwrap();
        crate::records::test_faults::fail_next_syncs(1);
        write(&bus, &s, 0);
        assert_eq!(auditor.stats().write_failures, 1);
        write(&bus, &s, 1);
        auditor.seal(&s).unwrap();
        let segs = crate::segments::segments_dir(&dir);
        let copies = |n: u64| {
            crate::segments::read_segment(n, &crate::segments::segment_path(&segs, n))
                .unwrap()
                .chunks
                .iter()
                .filter(|c| c.session == "s-retried")
                .flat_map(|c| c.records.iter())
                .filter(|r| r.body.first() != Some(&PRUNED_TAG))
                .count()
        };
        assert_eq!(
            (copies(1), copies(2)),
            (1, 2),
            "the failed round is on disk"
        );
        wall.set(1_000_000 + 2 * hour);
        assert_eq!(
            auditor.apply_retention(Duration::from_secs(3600)).unwrap(),
            1
        );
        assert_eq!((copies(1), copies(2)), (0, 0), "both copies pruned");
        auditor.close().unwrap();
    }

    /// Three deltas of s-x, then one of s-y, one round each, one segment
    /// each; the auditor closed without sealing (as a crash leaves them).
    fn unsealed_in_segments(dir: &Path) {
        let (auditor, bus) = open_with(dir, one_round_per_segment());
        for i in 0..3 {
            write(&bus, &SessionId::new("s-x").unwrap(), i);
        }
        write(&bus, &SessionId::new("s-y").unwrap(), 0);
        auditor.close().unwrap();
    }

    /// [`unsealed_in_segments`], then a changed byte in s-x's second delta
    /// (segment 2): its round is damaged, so recovery must not seal s-x
    /// over what is left.
    fn x_damaged_in_segment_2(dir: &Path) {
        unsealed_in_segments(dir);
        let segs = crate::segments::segments_dir(dir);
        let located = crate::segments::session_records(&segs, "s-x")
            .unwrap()
            .records
            .records[1]
            .clone();
        assert_eq!(located.segment, 2);
        let path = crate::segments::segment_path(&segs, 2);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[located.record.offset as usize + 12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
    }

    /// Whether `report` refused to seal `session`, naming it.
    fn refused(report: &crate::RecoveryReport, session: &str) -> bool {
        report
            .damaged
            .iter()
            .any(|(_, e)| matches!(e, AuditError::BadChunks { session: s, .. } if s == session))
    }

    /// Whether `report` sealed `session` over its records.
    fn sealed_on_recovery(report: &crate::RecoveryReport, session: &str) -> bool {
        report.sealed_on_recovery.iter().any(|(s, _)| s == session)
    }

    /// Reopens `dir` as a new process would, attached to a bus of its own.
    fn restart(dir: &Path) -> (Auditor, Arc<EventBus>, crate::RecoveryReport) {
        let (auditor, report) = reopen_with(dir, one_round_per_segment());
        let bus = Arc::new(EventBus::new(64, Arc::new(FakeClock::new())));
        auditor.attach(&bus);
        (auditor, bus, report)
    }

    /// Reopens `dir` three times, as three processes one after another:
    /// `check` judges each one's recovery report, then the process writes a
    /// session of two deltas (new segments, each naming the oldest live
    /// one in its start record), seals it and closes.
    fn reopened_thrice(dir: &Path, check: impl Fn(&crate::RecoveryReport)) {
        for reopen in 1..=3 {
            let (auditor, bus, report) = restart(dir);
            eprintln!("reopen {reopen}");
            check(&report);
            let s = SessionId::new(format!("s-later-{reopen}")).unwrap();
            write(&bus, &s, 0);
            write(&bus, &s, 1);
            auditor.seal(&s).unwrap();
            auditor.close().unwrap();
        }
    }

    /// A session recovery could not seal, in a segment older than the ones
    /// later processes write, is reported by every reopen, not only the
    /// first: its first segment stays live, so each new segment's start
    /// record still names it.
    #[test]
    fn every_reopen_reports_an_orphan_recovery_could_not_seal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        x_damaged_in_segment_2(&dir);
        reopened_thrice(&dir, |report| assert!(refused(report, "s-x"), "{report:?}"));
    }

    /// A segment recovery cannot read is reported by every reopen, not only
    /// the first, though no refused session keeps it in range: it is kept
    /// live itself.
    #[test]
    fn every_reopen_reports_an_unreadable_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let segs = crate::segments::segments_dir(&dir);
        {
            let (auditor, bus, _) = restart(&dir);
            let a = SessionId::new("s-a").unwrap();
            write(&bus, &a, 0);
            auditor.seal(&a).unwrap();
            let b = SessionId::new("s-b").unwrap();
            write(&bus, &b, 0);
            auditor.close().unwrap();
        }
        let seg_b = crate::segments::session_records(&segs, "s-b")
            .unwrap()
            .records
            .records[0]
            .segment;
        let path = crate::segments::segment_path(&segs, seg_b);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        reopened_thrice(&dir, |report| {
            assert!(report.damaged.iter().any(|(p, _)| *p == path), "{report:?}");
        });
    }

    /// A session refused for a gap (its first delta lost to a torn tail in
    /// a segment that is no longer the last) is reported by every reopen:
    /// the segment of its first kept record stays live.
    #[test]
    fn every_reopen_reports_an_orphan_refused_for_a_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let segs = crate::segments::segments_dir(&dir);
        {
            let (auditor, bus, _) = restart(&dir);
            let g = SessionId::new("s-g").unwrap();
            write(&bus, &g, 0);
            write(&bus, &g, 1);
            auditor.close().unwrap();
        }
        let located = crate::segments::session_records(&segs, "s-g")
            .unwrap()
            .records
            .records;
        let (first, last) = (located[0].segment, located[1].segment);
        assert!(first < last);
        cut(&crate::segments::segment_path(&segs, first), 3);
        reopened_thrice(&dir, |report| assert!(refused(report, "s-g"), "{report:?}"));
    }

    /// Damage an earlier reopen found stays in the range every later one
    /// reads (the refused session keeps its segment live), but it is blamed
    /// only on sessions live where it is: a session a later process began
    /// after it is sealed on recovery as usual. Two kinds of such damage: a
    /// segment that cannot be read, and a crash's leftovers at the end of a
    /// segment that is no longer the last.
    #[test]
    fn old_damage_is_not_blamed_on_sessions_begun_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let segs = crate::segments::segments_dir(&dir);
        x_damaged_in_segment_2(&dir);
        // A second process: s-p2 in two segments, left open; then the first
        // of them made unreadable, and a crash's half record after the last.
        let (auditor, bus, report) = restart(&dir);
        assert!(refused(&report, "s-x"), "{report:?}");
        let p2 = SessionId::new("s-p2").unwrap();
        write(&bus, &p2, 0);
        write(&bus, &p2, 1);
        auditor.close().unwrap();
        let located = crate::segments::session_records(&segs, "s-p2")
            .unwrap()
            .records
            .records;
        let (first, last) = (located[0].segment, located[1].segment);
        assert!(first < last, "{located:?}");
        let path = crate::segments::segment_path(&segs, first);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let crash_leftovers = |segment: u64| {
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .append(true)
                .open(crate::segments::segment_path(&segs, segment))
                .unwrap()
                .write_all(&[9, 0, 0, 0])
                .unwrap();
        };
        crash_leftovers(last);
        // A third process: s-p2 lost its first delta, so it is refused; s-x
        // still is. s-p3, in segments after both kinds of damage, is left
        // open; so is s-p4, which the fourth process then begins.
        let (auditor, bus, report) = restart(&dir);
        assert!(refused(&report, "s-x"), "{report:?}");
        assert!(refused(&report, "s-p2"), "{report:?}");
        let p3 = SessionId::new("s-p3").unwrap();
        write(&bus, &p3, 0);
        write(&bus, &p3, 1);
        auditor.close().unwrap();
        for (process, next) in [(4, "s-p4"), (5, "s-p5")] {
            let (auditor, bus, report) = restart(&dir);
            let unreadable = crate::segments::segment_path(&segs, first);
            assert!(
                report.damaged.iter().any(|(p, _)| *p == unreadable),
                "process {process}: {report:?}"
            );
            for old in ["s-x", "s-p2"] {
                assert!(
                    refused(&report, old),
                    "process {process}: {old}: {report:?}"
                );
            }
            let begun_after = format!("s-p{}", process - 1);
            assert!(
                sealed_on_recovery(&report, &begun_after) && !refused(&report, &begun_after),
                "process {process}: {begun_after}: {report:?}"
            );
            let s = SessionId::new(next).unwrap();
            write(&bus, &s, 0);
            write(&bus, &s, 1);
            auditor.close().unwrap();
        }
    }

    #[test]
    fn recovery_seals_no_session_whose_records_damage_may_hide() {
        // A damaged footer: the record after it could be the next round's,
        // s-y's first among them.
        let report = recovered_after(|segs| {
            // Segment 3 holds s-x's last delta; its footer is its last record.
            let seg3 = crate::segments::segment_path(segs, 3);
            let mut bytes = std::fs::read(&seg3).unwrap();
            let n = bytes.len();
            bytes[n - 2] ^= 1;
            // And a round after it, so the damage is in the middle.
            let seg4 = std::fs::read(crate::segments::segment_path(segs, 4)).unwrap();
            let start_end = (crate::records::HEADER_LEN + 8) as usize
                + crate::segments::encode_start(1, 0).len();
            bytes.extend_from_slice(&seg4[start_end..]);
            std::fs::write(&seg3, &bytes).unwrap();
            std::fs::remove_file(crate::segments::segment_path(segs, 4)).unwrap();
        });
        assert!(report.sealed_on_recovery.is_empty(), "{report:?}");

        // A segment that is not one, in the range recovery reads.
        let report = recovered_after(|segs| {
            let seg3 = crate::segments::segment_path(segs, 3);
            let mut bytes = std::fs::read(&seg3).unwrap();
            bytes[0] ^= 0xFF;
            std::fs::write(&seg3, &bytes).unwrap();
        });
        // It may have held more of s-x (begun in segment 1), but none of
        // s-y, whose first delta is in segment 4.
        let only_y_sealed = |report: &crate::RecoveryReport| {
            assert!(refused(report, "s-x"), "{report:?}");
            assert_eq!(report.sealed_on_recovery, vec![("s-y".to_string(), 1)]);
        };
        only_y_sealed(&report);

        // A torn tail in a segment that is not the last: no crash explains
        // it, so it is damage too.
        let report = recovered_after(|segs| cut(&crate::segments::segment_path(segs, 3), 3));
        only_y_sealed(&report);

        // The same tail at the end of the last segment is a crash's: s-x is
        // sealed over its acknowledged deltas, s-y (whose round was torn)
        // over none... it has no whole round, so it is not an orphan.
        let report = recovered_after(|segs| cut(&crate::segments::segment_path(segs, 4), 3));
        assert_eq!(report.sealed_on_recovery, vec![("s-x".to_string(), 3)]);
    }

    /// A segment missing between two others (the auditor never deletes
    /// one) may have held records of every session live then: recovery
    /// seals none of those over what is left, and `verify` reports the
    /// segment. Before start records named the segment before them, s-x
    /// was sealed over its first two deltas, and the log verified.
    #[test]
    fn a_missing_segment_is_damage_that_no_orphan_is_sealed_over() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        unsealed_in_segments(&dir);
        let segs = crate::segments::segments_dir(&dir);
        // Segment 3 holds s-x's last delta only; s-y begins in segment 4.
        let x = crate::segments::session_records(&segs, "s-x").unwrap();
        let in_segments: Vec<u64> = x.records.records.iter().map(|l| l.segment).collect();
        assert_eq!(in_segments, [1, 2, 3]);
        std::fs::remove_file(crate::segments::segment_path(&segs, 3)).unwrap();
        let (auditor, report) = reopen_with(&dir, AuditConfig::default());
        auditor.close().unwrap();
        assert!(refused(&report, "s-x"), "{report:?}");
        assert_eq!(report.sealed_on_recovery, vec![("s-y".to_string(), 1)]);
        assert!(
            report.damaged.iter().any(|(path, e)| matches!(
                e,
                AuditError::MissingSegment { named_by, .. }
                    if path.ends_with("00000000000000000003.seg")
                        && named_by.ends_with("00000000000000000004.seg")
            )),
            "{report:?}"
        );
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(!r.ok(), "{r}");
        assert!(
            r.problems
                .iter()
                .any(|p| p.detail.contains("00003.seg: missing")
                    && p.detail.contains("00004.seg's start record")),
            "{r}"
        );

        // Every later reopen reads it again (the segment stays live), and
        // still seals nothing over it.
        let (auditor, report) = reopen_with(&dir, AuditConfig::default());
        auditor.close().unwrap();
        assert!(refused(&report, "s-x"), "{report:?}");
        assert!(report.sealed_on_recovery.is_empty(), "{report:?}");
    }

    /// A newest segment of zero bytes only, no longer than what creating a
    /// segment writes, is what a crash while it was created can leave on a
    /// file system that shows unwritten blocks as zeros: nothing in it was
    /// synced, so it holds nothing, and recovery seals the sessions left
    /// open as it would without it. A crash's leftovers at the end of the
    /// segment before it are still a crash's. A longer file of zeros was
    /// synced once: damage, as is one byte that is not zero.
    #[test]
    fn a_segment_of_zeros_only_is_a_crash_while_it_was_created() {
        let created = crate::records::HEADER_LEN as usize
            + crate::records::FRAME_HEADER_LEN as usize
            + crate::segments::encode_start(1, 0).len();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        unsealed_in_segments(&dir);
        let segs = crate::segments::segments_dir(&dir);
        let zeros = crate::segments::segment_path(&segs, 5);
        std::fs::write(&zeros, vec![0u8; created]).unwrap();
        let (auditor, report) = reopen_with(&dir, AuditConfig::default());
        auditor.close().unwrap();
        assert!(report.damaged.is_empty(), "{report:?}");
        assert_eq!(
            report.sealed_on_recovery,
            vec![("s-x".to_string(), 3), ("s-y".to_string(), 1)]
        );
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("00005.seg") && n.contains("zero bytes")),
            "{r}"
        );

        // The torn round at segment 4's end (s-y's) is a crash's, as it is
        // without segment 5, whatever a process that stopped before writing
        // a round in 5 left there: zeros, the whole start, or part of it.
        // s-x is sealed.
        let whole = {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("created");
            let mut w =
                crate::records::RecordWriter::create(&path, LogKind::SEGMENT, Durability::OnClose)
                    .unwrap();
            w.append(&crate::segments::encode_start(1, 0), Duration::ZERO)
                .unwrap();
            w.close().unwrap();
            std::fs::read(&path).unwrap()
        };
        assert_eq!(whole.len(), created);
        for left in [vec![0u8; created], whole.clone(), whole[..20].to_vec()] {
            let report = recovered_after(|segs| {
                cut(&crate::segments::segment_path(segs, 4), 3);
                std::fs::write(crate::segments::segment_path(segs, 5), &left).unwrap();
            });
            assert_eq!(
                report.sealed_on_recovery,
                vec![("s-x".to_string(), 3)],
                "{left:?}: {report:?}"
            );
            assert!(report.damaged.is_empty(), "{left:?}: {report:?}");
        }

        for bytes in [
            {
                let mut b = vec![0u8; created];
                b[created - 1] = 1;
                b
            },
            vec![0u8; created + 1],
            vec![0u8; 100_000],
        ] {
            let len = bytes.len();
            let report = recovered_after(|segs| {
                std::fs::write(crate::segments::segment_path(segs, 5), bytes).unwrap();
            });
            assert!(report.sealed_on_recovery.is_empty(), "{len}: {report:?}");
            assert!(
                refused(&report, "s-x") && refused(&report, "s-y"),
                "{len}: {report:?}"
            );
        }

        // A segment that held rounds, zeroed since: damage that may hide
        // s-x's records (it began in segment 1), not s-y's (segment 4).
        let report = recovered_after(|segs| {
            let seg3 = crate::segments::segment_path(segs, 3);
            let len = std::fs::metadata(&seg3).unwrap().len() as usize;
            std::fs::write(&seg3, vec![0u8; len]).unwrap();
        });
        assert!(refused(&report, "s-x"), "{report:?}");
        assert_eq!(report.sealed_on_recovery, vec![("s-y".to_string(), 1)]);
    }

    /// What recovery reports after `damage` is done to the segments
    /// directory of [`unsealed_in_segments`].
    fn recovered_after(damage: impl FnOnce(&Path)) -> crate::RecoveryReport {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        unsealed_in_segments(&dir);
        damage(&crate::segments::segments_dir(&dir));
        let (auditor, report) = reopen_with(&dir, AuditConfig::default());
        auditor.close().unwrap();
        report
    }

    /// Cuts `n` bytes off the end of the file at `path`.
    fn cut(path: &Path, n: u64) {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len - n)
            .unwrap();
    }

    #[test]
    fn sessions_a_skipped_segment_held_are_pruned_once_it_is_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus, wall, _) = open_clocked(&dir, one_round_per_segment());
        let s = SessionId::new("s-1").unwrap();
        write(&bus, &s, 0);
        write(&bus, &s, 1);
        auditor.seal(&s).unwrap();
        let seg1 = crate::segments::segment_path(&crate::segments::segments_dir(&dir), 1);
        let kept = std::fs::read(&seg1).unwrap();
        let mut broken = kept.clone();
        broken[0] ^= 0xFF;
        std::fs::write(&seg1, &broken).unwrap();
        wall.set(1_000_000 + 7_200_000);
        assert!(auditor.apply_retention(Duration::from_secs(3600)).is_err());
        std::fs::write(&seg1, &kept).unwrap();
        auditor.apply_retention(Duration::from_secs(3600)).unwrap();
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!((r.sessions[0].records, r.sessions[0].pruned), (2, 2), "{r}");
    }

    #[test]
    fn a_segment_that_is_not_one_does_not_stop_pruning_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open_with(&dir, one_round_per_segment());
        let a = SessionId::new("s-a").unwrap();
        let b = SessionId::new("s-b").unwrap();
        write(&bus, &a, 0);
        write(&bus, &b, 0);
        auditor.seal(&a).unwrap();
        auditor.seal(&b).unwrap();
        let segs = crate::segments::segments_dir(&dir);
        let seg1 = crate::segments::segment_path(&segs, 1);
        let mut bytes = std::fs::read(&seg1).unwrap();
        bytes[0] ^= 0xFF;
        std::fs::write(&seg1, &bytes).unwrap();
        // s-b's record in segment 2 is pruned; segment 1 is named.
        let err = auditor.prune("s-b").unwrap_err().to_string();
        assert!(err.contains("00000000000000000001.seg"), "{err}");
        let b_records = crate::segments::session_records(&segs, "s-b").unwrap();
        assert_eq!(b_records.unclean_segments, [1]);
        assert_eq!(b_records.records.records[0].record.body[0], PRUNED_TAG);
        assert!(crate::auditor::read_session_log(&dir, "s-b").is_ok());
        auditor.close().unwrap();
    }

    #[test]
    fn damaged_logs_left_open_by_a_crash_are_reported_kept_and_do_not_stop_the_auditor() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let names = ["s-ok", "s-corrupt", "s-undecodable"];
        {
            let (auditor, bus) = open(&dir, Durability::EveryRecord);
            for n in names {
                let s = SessionId::new(n).unwrap();
                for i in 0..3 {
                    write(&bus, &s, i);
                }
            }
            auditor.close().unwrap();
        }
        // As an auditor before segments left them: a file per session.
        into_files(&dir);
        // A flipped byte inside the middle record.
        let corrupt = session_log_path(&dir, "s-corrupt");
        let offsets: Vec<u64> = read_log(&corrupt, LogKind::SESSION_DELTAS)
            .unwrap()
            .records
            .iter()
            .map(|r| r.offset)
            .collect();
        let mut bytes = std::fs::read(&corrupt).unwrap();
        bytes[offsets[1] as usize + 20] ^= 0x40;
        std::fs::write(&corrupt, &bytes).unwrap();
        // Framing intact, body not a delta.
        let undecodable = session_log_path(&dir, "s-undecodable");
        let mut b = bodies(&undecodable, LogKind::SESSION_DELTAS);
        b[2] = b"not a delta".to_vec();
        rewrite_log(&undecodable, LogKind::SESSION_DELTAS, b).unwrap();
        let bad_at = read_log(&undecodable, LogKind::SESSION_DELTAS)
            .unwrap()
            .records[2]
            .offset;
        // Created, but the crash came before its header reached the disk.
        let empty = session_log_path(&dir, "s-empty");
        std::fs::write(&empty, b"").unwrap();
        let before: Vec<Vec<u8>> = [&corrupt, &undecodable, &empty]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();

        for _ in 0..2 {
            let (auditor, report) = reopen_with(&dir, AuditConfig::default());
            let damaged: Vec<(PathBuf, String)> = report
                .damaged
                .iter()
                .map(|(p, e)| (p.clone(), e.to_string()))
                .collect();
            assert_eq!(damaged.len(), 3, "{damaged:?}");
            assert_eq!(damaged[0].0, corrupt);
            assert!(damaged[0].1.contains("1 damaged record(s)"), "{damaged:?}");
            assert_eq!(damaged[1].0, empty);
            assert!(damaged[1].1.contains("less than a header"), "{damaged:?}");
            assert_eq!(damaged[2].0, undecodable);
            assert!(
                damaged[2].1.contains(&format!("offset {bad_at}")),
                "{damaged:?}"
            );
            assert!(
                damaged[2].1.contains("unknown delta version"),
                "{damaged:?}"
            );
            // Sealed at most once: by the first open.
            assert!(report.sealed_on_recovery.len() <= 1);
            // The auditor works on.
            let (bus, s) = (
                Arc::new(EventBus::new(64, Arc::new(FakeClock::new()))),
                SessionId::new("s-after").unwrap(),
            );
            auditor.attach(&bus);
            write(&bus, &s, 0);
            if auditor.commitment_index("s-after").unwrap().is_none() {
                auditor.seal(&s).unwrap();
            }
            auditor.close().unwrap();
        }
        let after: Vec<Vec<u8>> = [&corrupt, &undecodable, &empty]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert_eq!(before, after, "damaged logs must be left as they were");

        let r = verify_dir(&dir, None, None).unwrap();
        assert!(!r.ok());
        assert_eq!(kinds(&r, "s-ok"), vec![]);
        assert_eq!(kinds(&r, "s-after"), vec![]);
        // The damaged record is skipped, so the next one is out of place too.
        assert_eq!(
            kinds(&r, "s-corrupt"),
            vec![
                ProblemKind::Damaged,
                ProblemKind::Sequence,
                ProblemKind::Chain
            ]
        );
        assert_eq!(kinds(&r, "s-undecodable"), vec![ProblemKind::Undecodable]);
        assert_eq!(kinds(&r, "s-empty"), vec![ProblemKind::Unreadable]);
    }

    #[test]
    fn the_json_report_names_each_problem_by_kind_record_and_offset() {
        let f = fixture(Durability::EveryRecord);
        let mut b = bodies(&log_a(&f), LogKind::SESSION_DELTAS);
        b.swap(2, 3);
        rewrite_log(log_a(&f), LogKind::SESSION_DELTAS, &b).unwrap();
        let r = verify(&f);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["commitments"], 2);
        assert_eq!(v["in_use"], false);
        let a = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session"] == "s-a")
            .unwrap();
        assert_eq!(a["status"]["status"], "committed");
        assert_eq!(a["status"]["tree_size"], 6);
        let kinds: Vec<&str> = a["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"sequence"), "{kinds:?}");
        assert!(a["problems"][0]["record"].is_u64(), "{a}");
        let b = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session"] == "s-b")
            .unwrap();
        assert_eq!(b["problems"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn a_session_name_that_is_not_a_session_id_is_refused_before_any_file_is_read() {
        let f = fixture(Durability::EveryRecord);
        // A log outside the audit directory that would verify as a session.
        let outside = f.dir.parent().unwrap().join("x.log");
        std::fs::copy(log_a(&f), &outside).unwrap();
        for bad in ["../../x", "../x", "/etc/passwd", "", "s-a/../s-b"] {
            match verify_dir(&f.dir, Some(bad), Some(&f.key)) {
                Err(VerifyError::BadSessionId { session, .. }) => assert_eq!(session, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
            assert!(matches!(
                prove(&f.dir, bad, 0, Some(&f.key)),
                Err(ProofError::Verify(VerifyError::BadSessionId { .. }))
            ));
        }
        assert!(verify_dir(&f.dir, Some("s-a"), Some(&f.key)).unwrap().ok());
    }

    #[test]
    fn a_second_auditor_on_the_same_directory_is_refused_until_the_first_closes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (first, bus) = open(&dir, Durability::EveryRecord);
        let s = SessionId::new("s-live").unwrap();
        write(&bus, &s, 0);
        let second = || {
            Auditor::open(
                &dir,
                AuditConfig::default(),
                Arc::new(FakeClock::new()),
                Arc::new(FakeWallClock::new(1)),
            )
        };
        // Were it allowed, it would seal the first one's live session as an
        // orphan and append to the same commitment log.
        match second() {
            Err(crate::auditor::AuditError::Locked { path }) => {
                assert_eq!(path, crate::auditor::lock_path(&dir));
            }
            other => panic!("{:?}", other.map(|(_, r)| r)),
        }
        write(&bus, &s, 1);
        first.seal(&s).unwrap();
        // Verification reads alongside, and says the directory is live.
        let live = verify_dir(&dir, None, None).unwrap();
        assert!(live.in_use);
        assert!(
            live.notes.iter().any(|n| n.contains("running hypervisor")),
            "{live}"
        );
        first.close().unwrap();
        assert!(!verify_dir(&dir, None, None).unwrap().in_use);
        let (again, report) = second().unwrap();
        assert!(report.sealed_on_recovery.is_empty());
        assert_eq!(again.commitment_index("s-live").unwrap(), Some(0));
        drop(again);
        drop(first);
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.sessions[0].records, 2);
    }

    /// The configured policy, applied by the background thread: fake clocks
    /// decide what is due; the thread's real ticks (2 ms) only bound how long
    /// the test polls.
    #[test]
    fn configured_retention_is_applied_in_the_background_when_due() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus, wall, clock) = open_clocked(
            &dir,
            AuditConfig {
                durability: Durability::GroupCommit {
                    max_records: usize::MAX,
                    max_delay: Duration::from_millis(2),
                },
                retention: Some(crate::auditor::Retention {
                    keep: Duration::from_secs(3600),
                    check_every: Duration::from_secs(60),
                }),
                ..AuditConfig::default()
            },
        );
        let (old, new) = (
            SessionId::new("s-old").unwrap(),
            SessionId::new("s-new").unwrap(),
        );
        for i in 0..3 {
            write(&bus, &old, i);
        }
        auditor.seal(&old).unwrap();
        wall.set(1_000_000 + 1_800_000); // half an hour later
        write(&bus, &new, 0);
        auditor.seal(&new).unwrap();
        let pruned = |name: &str| {
            crate::auditor::read_session_log(&dir, name)
                .map(|r| {
                    r.iter()
                        .filter(|r| r.body.first() == Some(&PRUNED_TAG))
                        .count()
                })
                .unwrap_or(0)
        };
        // An hour and a minute after the first seal, and a check is due.
        wall.set(1_000_000 + 3_660_000);
        clock.advance(Duration::from_secs(61));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pruned("s-old") < 3 {
            assert!(std::time::Instant::now() < deadline, "not pruned in 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        // The same pass left the younger session alone.
        assert_eq!(pruned("s-new"), 0);
        assert_eq!(auditor.stats().write_failures, 0);
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, Some(auditor.public_key())).unwrap();
        assert!(r.ok(), "{r}");
    }

    /// Whatever single byte of whatever log is changed, to whatever value,
    /// verification with the pinned key fails — and never panics.
    #[test]
    fn any_changed_byte_in_any_log_fails_verification() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let f = fixture(Durability::EveryRecord);
        let files: Vec<PathBuf> = vec![
            log_a(&f),
            session_log_path(&f.dir, "s-b"),
            commitments_path(&f.dir),
            heads_path(&f.dir),
        ];
        let originals: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert!(verify(&f).ok());
        let mut runner = TestRunner::new(Config {
            cases: 400,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(
                &(0..files.len(), any::<prop::sample::Index>(), 1u8..=255),
                |(file, at, mask)| {
                    let mut bytes = originals[file].clone();
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                    std::fs::write(&files[file], &bytes).unwrap();
                    let r = verify(&f);
                    std::fs::write(&files[file], &originals[file]).unwrap();
                    prop_assert!(
                        !r.ok(),
                        "byte {i} of {} ^= {mask:#04x} went unnoticed:\n{r}",
                        files[file].display()
                    );
                    Ok(())
                },
            )
            .unwrap();
        assert!(verify(&f).ok());
    }

    /// Cutting a session log or the commitment log anywhere — inside a
    /// record or cleanly between two — fails verification. (The head log is
    /// left out: cutting a signed head that a later one supersedes loses
    /// nothing the later one does not vouch for.)
    #[test]
    fn any_cut_of_a_session_or_commitment_log_fails_verification() {
        let f = fixture(Durability::EveryRecord);
        for path in [
            log_a(&f),
            session_log_path(&f.dir, "s-b"),
            commitments_path(&f.dir),
        ] {
            let original = std::fs::read(&path).unwrap();
            let kind = if path == commitments_path(&f.dir) {
                LogKind::COMMITMENTS
            } else {
                LogKind::SESSION_DELTAS
            };
            // Every clean cut between records, a byte either side of each,
            // and every 13th byte elsewhere (all of them take ~20 s in a
            // debug build).
            let mut cuts: Vec<usize> = (0..original.len()).step_by(13).collect();
            for r in read_log(&path, kind).unwrap().records {
                let at = r.offset as usize;
                cuts.extend([at - 1, at, at + 1]);
            }
            cuts.retain(|&c| c < original.len());
            cuts.push(original.len() - 1);
            for len in cuts {
                std::fs::write(&path, &original[..len]).unwrap();
                let r = verify(&f);
                assert!(
                    !r.ok(),
                    "{} cut to {len} bytes went unnoticed:\n{r}",
                    path.display()
                );
            }
            std::fs::write(&path, &original).unwrap();
        }
        assert!(verify(&f).ok());
    }

    /// Decoders of what an attacker controls (record bodies, proofs) return
    /// errors on garbage and never panic; a proof with any field changed
    /// never verifies.
    #[test]
    fn hostile_records_and_proofs_are_errors_never_panics_or_passes() {
        use crate::merkle::ConsistencyProof;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let config = || Config {
            cases: 512,
            failure_persistence: None,
            ..Config::default()
        };
        TestRunner::new(config())
            .run(&prop::collection::vec(any::<u8>(), 0..300), |bytes| {
                let _ = Commitment::decode(&bytes);
                let _ = decode_pruned(&bytes);
                let _ = SignedTreeHead::from_bytes(&bytes);
                let _ = InclusionProof::from_bytes(&bytes);
                let _ = ConsistencyProof::from_bytes(&bytes);
                let _ = Delta::decode(&bytes);
                Ok(())
            })
            .unwrap();

        let f = fixture(Durability::EveryRecord);
        let good = prove(&f.dir, "s-a", 4, Some(&f.key)).unwrap();
        assert!(good.verify(&f.key).is_ok());
        let hex = prop::collection::vec(any::<u8>(), 0..80)
            .prop_map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>());
        let edit = prop_oneof![
            any::<u64>().prop_map(|v| (0usize, v, String::new())),
            any::<u64>().prop_map(|v| (1, v, String::new())),
            any::<u64>().prop_map(|v| (2, v, String::new())),
            hex.clone().prop_map(|h| (3, 0, h)),
            hex.clone().prop_map(|h| (4, 0, h)),
            hex.clone().prop_map(|h| (5, 0, h)),
            (any::<u64>(), hex.clone()).prop_map(|(i, h)| (6, i, h)),
            (any::<u64>(), hex).prop_map(|(i, h)| (7, i, h)),
            "[a-z0-9-]{1,12}".prop_map(|s| (8, 0, s)),
        ];
        TestRunner::new(config())
            .run(&edit, |(field, n, text)| {
                let mut p = good.clone();
                match field {
                    0 => p.seq = n,
                    1 => p.tree_size = n,
                    2 => p.commitment_index = n,
                    3 => p.delta = text,
                    4 => p.commitment = text,
                    5 => p.head = text,
                    6 => {
                        let at = (n as usize) % (p.path.len() + 1);
                        p.path.insert(at, text);
                    }
                    7 => {
                        let at = (n as usize) % (p.head_path.len() + 1);
                        p.head_path.insert(at, text);
                    }
                    _ => p.session = text,
                }
                if p != good {
                    prop_assert!(p.verify(&f.key).is_err(), "{p:?} verified");
                }
                // Through JSON too (what `ahv audit verify --proof` reads).
                let json = serde_json::to_string(&p).unwrap();
                let back: AuditProof = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(back.verify(&f.key).is_ok(), p == good);
                Ok(())
            })
            .unwrap();
    }

    /// Only the newest sealed sessions keep their index in memory; older ones
    /// are still refused a second sealing and late events, found by name,
    /// pruned, and walked by retention — also by a later process.
    #[test]
    fn sessions_sealed_beyond_the_remembered_ones_are_still_refused_found_and_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let config = || AuditConfig {
            durability: Durability::EveryRecord,
            recent_sealed: 2,
            ..AuditConfig::default()
        };
        // A damaged log an earlier crash left: reported, never appended to.
        std::fs::create_dir_all(dir.join("sessions")).unwrap();
        std::fs::write(session_log_path(&dir, "s-d"), b"").unwrap();
        let (auditor, bus, wall, _) = open_clocked(&dir, config());
        let ids: Vec<SessionId> = (0..5)
            .map(|n| SessionId::new(format!("s-{n}")).unwrap())
            .collect();
        for s in &ids {
            write(&bus, s, 0);
            write(&bus, s, 1);
            auditor.seal(s).unwrap();
        }
        assert_eq!(
            auditor.commitment_index("s-0").unwrap(),
            Some(0),
            "by a scan"
        );
        assert_eq!(
            auditor.commitment_index("s-4").unwrap(),
            Some(4),
            "remembered"
        );
        assert_eq!(auditor.commitment_index("s-9").unwrap(), None);
        // Forgotten by index, not as sealed.
        write(&bus, &ids[0], 2);
        assert_eq!(auditor.stats().late, 1);
        assert!(matches!(
            auditor.seal(&ids[0]),
            Err(crate::auditor::AuditError::AlreadySealed(_))
        ));
        assert_eq!(auditor.prune("s-1").unwrap(), 2);
        // Events for the damaged log's session are late, not a second log.
        write(&bus, &SessionId::new("s-d").unwrap(), 0);
        auditor.flush().unwrap();
        assert_eq!(auditor.stats().late, 2);
        assert_eq!(auditor.stats().write_failures, 0);
        assert_eq!(std::fs::read(session_log_path(&dir, "s-d")).unwrap(), b"");
        auditor.close().unwrap();
        drop(auditor);

        // A later process, an hour on: retention walks every commitment.
        wall.set(1_000_000 + 3_600_000);
        let (again, report) = Auditor::open(
            &dir,
            config(),
            Arc::new(FakeClock::new()),
            Arc::new(wall.clone()),
        )
        .unwrap();
        assert_eq!(report.damaged.len(), 1);
        assert!(report.sealed_on_recovery.is_empty());
        // s-1 was pruned already.
        assert_eq!(again.apply_retention(Duration::from_secs(60)).unwrap(), 4);
        assert_eq!(again.apply_retention(Duration::from_secs(60)).unwrap(), 0);
        again.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        for s in &r.sessions {
            if s.session == "s-d" {
                assert_eq!(s.problems[0].kind, ProblemKind::Unreadable);
            } else {
                assert!(s.problems.is_empty(), "{r}");
                assert_eq!((s.records, s.pruned), (2, 2), "{}", s.session);
            }
        }
    }

    /// A retention pass saves where it stopped — at the first session it
    /// failed to prune, if any — and a later process resumes there instead of
    /// reading every old log again; a mark that does not name a commitment of
    /// the log is ignored (the walk starts over, losing only time).
    #[test]
    fn a_later_process_resumes_retention_where_the_last_pass_stopped() {
        use crate::auditor::retention_mark_path;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let config = || AuditConfig {
            durability: Durability::EveryRecord,
            ..AuditConfig::default()
        };
        let hour = 3_600_000;
        let ids: Vec<SessionId> = (0..6)
            .map(|n| SessionId::new(format!("s-{n}")).unwrap())
            .collect();
        let (auditor, bus, wall, _) = open_clocked(&dir, config());
        for (n, s) in ids.iter().enumerate() {
            if n == 4 {
                wall.set(1_000_000 + 2 * hour);
            }
            write(&bus, s, 0);
            write(&bus, s, 1);
            auditor.seal(s).unwrap();
        }
        auditor.close().unwrap();
        drop(auditor);
        let reopen = |at: u64| {
            let wall = FakeWallClock::new(at);
            Auditor::open(&dir, config(), Arc::new(FakeClock::new()), Arc::new(wall)).unwrap()
        };
        // The commitment log's walk is the same whatever holds the deltas:
        // shown on files (format 1), whose pruning can be blocked one
        // session at a time.
        into_files(&dir);
        let (auditor, _) = reopen(1_000_000 + 2 * hour);
        // s-1 cannot be pruned for now: its replacement cannot be created.
        let blocker = dir.join("sessions").join("s-1.log.tmp");
        std::fs::create_dir(&blocker).unwrap();
        assert!(auditor.apply_retention(Duration::from_secs(3600)).is_err());
        auditor.close().unwrap();
        drop(auditor);

        // Resumes at s-1, the one that failed; s-0 is never read again
        // (damaging it would fail a pass that did read it).
        let (again, report) = reopen(1_000_000 + 4 * hour);
        assert_eq!(report.retention_resumes_at, 1);
        assert_eq!(report.retention_mark_ignored, None);
        let s0 = session_log_path(&dir, "s-0");
        let s0_bytes = std::fs::read(&s0).unwrap();
        std::fs::write(&s0, b"not a log").unwrap();
        std::fs::remove_dir(&blocker).unwrap();
        // s-1, s-4 and s-5 (s-2 and s-3 are read, found pruned, not counted).
        assert_eq!(again.apply_retention(Duration::from_secs(3600)).unwrap(), 3);
        again.close().unwrap();
        drop(again);
        std::fs::write(&s0, s0_bytes).unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        for s in &r.sessions {
            assert_eq!((s.records, s.pruned), (2, 2), "{}", s.session);
        }
        let (again, report) = reopen(1_000_000 + 4 * hour);
        assert_eq!(report.retention_resumes_at, 6, "at the end");
        drop(again);

        // A mark naming no commitment boundary, or no mark at all: ignored.
        let mark = retention_mark_path(&dir);
        let mut forged = vec![1u8];
        forged.extend_from_slice(&2u64.to_be_bytes());
        forged.extend_from_slice(&9999u64.to_be_bytes());
        rewrite_log(&mark, crate::records::LogKind::RETENTION_MARK, [forged]).unwrap();
        let (again, report) = reopen(1_000_000 + 4 * hour);
        assert_eq!(report.retention_resumes_at, 0);
        let why = report.retention_mark_ignored.unwrap();
        assert!(
            why.contains("commitment 2 does not start at byte 9999"),
            "{why}"
        );
        assert!(!mark.exists(), "an ignored mark is removed");
        // The walk starts over, finds everything pruned, saves the end again.
        assert_eq!(again.apply_retention(Duration::from_secs(3600)).unwrap(), 0);
        drop(again);
        let (again, report) = reopen(1_000_000 + 4 * hour);
        assert_eq!(
            (report.retention_resumes_at, report.retention_mark_ignored),
            (6, None)
        );
        drop(again);
        std::fs::write(&mark, b"garbage").unwrap();
        let (_again, report) = reopen(1_000_000 + 4 * hour);
        assert_eq!(report.retention_resumes_at, 0);
        assert!(report.retention_mark_ignored.is_some());
    }

    /// Descriptors this process holds on files under `dir`.
    #[cfg(target_os = "linux")]
    fn open_files_under(dir: &Path) -> usize {
        let dir = dir.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p.starts_with(&dir))
            .count()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn live_sessions_share_one_open_segment_whatever_their_number() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(
            &dir,
            Durability::GroupCommit {
                max_records: usize::MAX,
                max_delay: Duration::from_secs(3600),
            },
        );
        let sessions: Vec<SessionId> = (0..50)
            .map(|n| SessionId::new(format!("s-{n}")).unwrap())
            .collect();
        let segments = crate::segments::segments_dir(&dir);
        for round in 0..3 {
            for s in &sessions {
                write(&bus, s, round);
            }
            auditor.flush().unwrap();
            // Fifty live sessions, all written, one file open for them.
            assert_eq!(open_files_under(&segments), 1, "round {round}");
        }
        assert!(!dir.join("sessions").exists(), "no file per session");
        for s in &sessions {
            auditor.seal(s).unwrap();
        }
        auditor.close().unwrap();
        let r = verify_dir(&dir, None, None).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.sessions.len(), 50);
        for s in &r.sessions {
            assert_eq!(s.records, 3, "{}", s.session);
            assert!(matches!(s.status, SessionStatus::Committed { .. }));
        }
    }

    #[test]
    fn group_commit_reaches_the_disk_within_the_delay_without_a_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (auditor, bus) = open(
            &dir,
            Durability::GroupCommit {
                max_records: 1000,
                max_delay: Duration::from_millis(5),
            },
        );
        let s = SessionId::new("s-g").unwrap();
        for i in 0..3 {
            write(&bus, &s, i);
        }
        // Generous bound: the flusher ticks every 5 ms.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while crate::auditor::read_session_log(&dir, "s-g").map_or(0, |r| r.len()) < 3 {
            assert!(std::time::Instant::now() < deadline, "not flushed in 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(auditor);
    }

    use std::io::Write;
    use std::time::Duration;

    /// A chunk for [`into_segments`]: a session, the seq its footer gives
    /// the first record, and which of the session's file records it holds.
    type Part<'a> = (&'a str, u64, Vec<usize>);

    fn part(session: &str, seqs: std::ops::Range<usize>) -> Part<'_> {
        (session, seqs.start as u64, seqs.collect())
    }

    /// Moves the fixture's session logs into segments, as `rounds` say,
    /// with segments closed past `max_bytes`, then removes the files.
    fn into_segments(f: &Fixture, rounds: &[Vec<Part<'_>>], max_bytes: u64) {
        use crate::segments::{SegmentWriter, StagedChunk, segments_dir};
        let mut logs: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for round in rounds {
            for (s, _, _) in round {
                logs.entry(s.to_string()).or_insert_with(|| {
                    bodies(&session_log_path(&f.dir, s), LogKind::SESSION_DELTAS)
                });
            }
        }
        let mut w = SegmentWriter::open(&segments_dir(&f.dir), max_bytes).unwrap();
        for round in rounds {
            let staged: Vec<Vec<u8>> = round
                .iter()
                .map(|(s, _, which)| {
                    let mut out = Vec::new();
                    for &i in which {
                        let b = &logs[*s][i];
                        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                        out.extend_from_slice(b);
                    }
                    out
                })
                .collect();
            let chunks: Vec<StagedChunk<'_>> = round
                .iter()
                .zip(&staged)
                .map(|((s, first, which), staged)| StagedChunk {
                    session: s,
                    first_seq: *first,
                    count: which.len() as u32,
                    staged,
                })
                .collect();
            w.append_round(&chunks, 1, Duration::ZERO).unwrap();
        }
        for s in logs.keys() {
            std::fs::remove_file(session_log_path(&f.dir, s)).unwrap();
        }
    }

    /// The fixture's two sessions over three rounds, one segment each.
    fn interleaved() -> Vec<Vec<Part<'static>>> {
        vec![
            vec![part("s-a", 0..2), part("s-b", 0..1)],
            vec![part("s-a", 2..5)],
            vec![part("s-b", 1..3), part("s-a", 5..6)],
        ]
    }

    #[test]
    fn logs_kept_in_segments_verify_and_prove_as_files_do() {
        let f = fixture(Durability::EveryRecord);
        let before = prove(&f.dir, "s-a", 4, Some(&f.key)).unwrap();
        into_segments(&f, &interleaved(), 1);
        assert!(!log_a(&f).exists());
        assert_eq!(
            crate::segments::list_segments(&crate::segments::segments_dir(&f.dir))
                .unwrap()
                .len(),
            3
        );
        let r = verify_dir(&f.dir, None, Some(&f.key)).unwrap();
        assert!(r.ok(), "{r}");
        assert!(r.notes.is_empty(), "{r}");
        let counts: Vec<(&str, u64)> = r
            .sessions
            .iter()
            .map(|s| (s.session.as_str(), s.records))
            .collect();
        assert_eq!(counts, [("s-a", 6), ("s-b", 3)]);
        let one = verify_dir(&f.dir, Some("s-b"), Some(&f.key)).unwrap();
        assert!(one.ok() && one.sessions.len() == 1, "{one}");
        // The same proof as from the files, and it checks.
        let after = prove(&f.dir, "s-a", 4, Some(&f.key)).unwrap();
        assert_eq!(after, before);
        assert_eq!(after.verify(&f.key).unwrap().seq, 4);
        assert!(matches!(
            verify_dir(&f.dir, Some("s-zzz"), Some(&f.key)),
            Err(VerifyError::UnknownSession(_))
        ));
    }

    #[test]
    fn a_round_retried_in_the_next_segment_is_read_once() {
        let f = fixture(Durability::EveryRecord);
        let mut rounds = interleaved();
        // After a failed sync the writer repeats the round, with what was
        // staged since, in a new segment.
        rounds.insert(2, vec![part("s-a", 2..6)]);
        rounds.remove(3);
        rounds.push(vec![part("s-b", 1..3)]);
        into_segments(&f, &rounds, 1);
        let r = verify_dir(&f.dir, None, Some(&f.key)).unwrap();
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn tampering_with_segments_is_caught_and_named() {
        // A record's bytes changed: its checksum, the round it was in, and
        // the session that lost it.
        let f = fixture(Durability::EveryRecord);
        into_segments(&f, &interleaved(), 1);
        let seg2 = crate::segments::segment_path(&crate::segments::segments_dir(&f.dir), 2);
        let mut bytes = std::fs::read(&seg2).unwrap();
        let at = 9 + 8 + 10 + 8 + 20;
        bytes[at] ^= 1;
        std::fs::write(&seg2, &bytes).unwrap();
        let r = verify_dir(&f.dir, None, Some(&f.key)).unwrap();
        assert!(!r.ok());
        let damaged: Vec<&Problem> = r
            .problems
            .iter()
            .filter(|p| p.kind == ProblemKind::Damaged)
            .collect();
        assert_eq!(damaged.len(), 2, "{r}");
        assert!(
            damaged
                .iter()
                .all(|p| p.detail.contains("segments/00000000000000000002.seg")),
            "{r}"
        );
        let a = kinds(&r, "s-a");
        assert!(
            a.contains(&ProblemKind::Sequence) && a.contains(&ProblemKind::Chain),
            "{r}"
        );
        assert!(a.contains(&ProblemKind::Truncated), "{r}");
        let problem = &r.sessions[0].problems[0];
        assert!(
            problem.detail.contains("3 are missing")
                && problem
                    .detail
                    .contains("(in segments/00000000000000000003.seg)"),
            "{problem}"
        );
        assert!(kinds(&r, "s-b").is_empty());

        // Records swapped inside a chunk.
        let f = fixture(Durability::EveryRecord);
        let mut rounds = interleaved();
        rounds[1] = vec![("s-a", 2, vec![3, 2, 4])];
        into_segments(&f, &rounds, 1);
        let r = verify_dir(&f.dir, None, Some(&f.key)).unwrap();
        let a = kinds(&r, "s-a");
        assert!(
            a.contains(&ProblemKind::Sequence) && a.contains(&ProblemKind::RootMismatch),
            "{r}"
        );

        // A round removed, and a chunk repeated in its own segment.
        let f = fixture(Durability::EveryRecord);
        let mut rounds = interleaved();
        rounds.remove(1);
        rounds[0].push(part("s-a", 0..2));
        into_segments(&f, &rounds, 1 << 20);
        let r = verify_dir(&f.dir, None, Some(&f.key)).unwrap();
        let a = kinds(&r, "s-a");
        assert!(a.contains(&ProblemKind::Truncated), "{r}");
        let repeats = r.sessions[0]
            .problems
            .iter()
            .filter(|p| p.detail.contains("not a retried round's copy"))
            .count();
        assert_eq!(repeats, 2, "{r}");

        // A committed session whose records are nowhere.
        let f = fixture(Durability::EveryRecord);
        into_segments(&f, &[vec![part("s-a", 0..6)]], 1);
        std::fs::remove_file(session_log_path(&f.dir, "s-b")).unwrap();
        let r = verify_dir(&f.dir, None, Some(&f.key)).unwrap();
        let b = &r
            .sessions
            .iter()
            .find(|s| s.session == "s-b")
            .unwrap()
            .problems;
        assert_eq!(b.len(), 1, "{r}");
        assert!(b[0].detail.contains("no segment holds its records"), "{r}");
        assert!(kinds(&r, "s-a").is_empty());
    }

    #[test]
    fn what_a_crash_leaves_at_a_segments_end_is_a_note_not_a_failure() {
        let f = fixture(Durability::EveryRecord);
        into_segments(&f, &interleaved(), 1 << 20);
        let segs = crate::segments::segments_dir(&f.dir);
        let seg1 = crate::segments::segment_path(&segs, 1);
        // A round's records without their footer, then half a record.
        let (mut w, _) =
            crate::records::RecordWriter::open_append(&seg1, LogKind::SEGMENT, Durability::OnClose)
                .unwrap();
        w.append(b"\x01 a delta never acknowledged", Duration::ZERO)
            .unwrap();
        w.close().unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&seg1)
            .unwrap()
            .write_all(&[7, 0, 0, 0, 1])
            .unwrap();
        // A segment a crash cut short as it was created.
        std::fs::write(crate::segments::segment_path(&segs, 2), b"AHV").unwrap();
        let r = verify_dir(&f.dir, None, Some(&f.key)).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.notes.len(), 3, "{r}");
        assert!(
            r.notes.iter().any(|n| n.contains("never acknowledged")),
            "{r}"
        );
        assert!(
            r.notes.iter().any(|n| n.contains("not a whole record")),
            "{r}"
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("no header (shorter than one")),
            "{r}"
        );
    }

    #[test]
    fn a_footer_naming_no_session_id_is_reported_and_its_records_not_read() {
        let f = fixture(Durability::EveryRecord);
        into_segments(&f, &interleaved(), 1 << 20);
        let segs = crate::segments::segments_dir(&f.dir);
        let mut w = crate::segments::SegmentWriter::open(&segs, 1 << 20).unwrap();
        let body = b"\x01x".to_vec();
        let mut staged = (body.len() as u32).to_le_bytes().to_vec();
        staged.extend_from_slice(&body);
        let chunk = crate::segments::StagedChunk {
            session: "../../etc/passwd",
            first_seq: 0,
            count: 1,
            staged: &staged,
        };
        w.append_round(&[chunk], 1, Duration::ZERO).unwrap();
        let r = verify_dir(&f.dir, None, Some(&f.key)).unwrap();
        assert!(!r.ok());
        assert!(
            r.problems
                .iter()
                .any(|p| p.kind == ProblemKind::Undecodable && p.detail.contains("no session id")),
            "{r}"
        );
        assert_eq!(r.sessions.len(), 2, "{r}");
    }
}
