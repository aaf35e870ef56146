//! Target `audit_records`: a corrupted audit directory gives a report, never
//! a panic or a hang.
//!
//! The input describes an audit directory (`<state>/audit`, see
//! `host/audit/FORMAT.md`):
//!
//! ```text
//! input = flags: u8 ‖ part (SEP part)*        SEP = "--8<--"
//! part 0 sessions/s-1.log    part 1 commitments.log    part 2 heads.log
//! part 3 sessions/s-2.log    part 4 public-key          part 5 a proof (JSON)
//! part 6 retention.mark      part 7 segments/00000000000000000001.seg
//! ```
//!
//! Parts 0 and 3 are the per-session files auditors wrote before segments
//! (format 1, still read); part 7 is a segment, where an auditor now
//! writes every session's deltas.
//!
//! A missing or empty part is a missing file. Flags:
//! - [`FRAME`]: each log part (0, 1, 2, 3, 6, 7) is a list of record bodies
//!   separated by [`RSEP`]; the check writes the file header and frames them
//!   (valid lengths and checksums) so that the fuzzer reaches the decoders.
//!   Without it the parts are written byte for byte (the framing is fuzzed);
//! - [`DIR_KEY`]: verify with the directory's own `public-key` (part 4)
//!   instead of the pinned fuzz key;
//! - [`ONE_SESSION`]: verify only `s-1`;
//! - [`SIGN`]: replace `heads.log` by one head over the whole commitment
//!   log, signed with the fuzz key, so that mutated commitments are judged
//!   past the signature;
//! - [`REPAIR`] (implies framing): make each session log a consistent chain
//!   (the seq, session and parent of every delta that decodes are set), write
//!   the commitments of both logs and sign them (parts 1, 2 and 7 are
//!   ignored).
//!   Then the directory must verify exactly when every record decodes;
//! - [`REOPEN`]: after verifying, open an [`Auditor`] on the directory (crash
//!   recovery), close it and verify again; without parts 1, 2 and 4 the
//!   open must succeed, as a damaged session log must not keep a hypervisor
//!   from starting.
//!
//! Checked every time: `read_log` and `scan_log` of every log, `Delta`,
//! `Commitment`, pruned-record and signed-head decoding of every record
//! (a decoded delta or commitment re-encodes to the same bytes, as FORMAT.md
//! says decoders are strict), a segment's footers and start record, its
//! rounds and the sessions assembled from them, and pruning it in place
//! (everything but the selected records kept byte for byte), `verify_dir` (its text and JSON forms too),
//! `prove` for the first deltas of `s-1` when it verifies (the proof must
//! check with the key), and the proof of part 5.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ahv_audit::commitment::{PRUNED_TAG, decode_pruned, encode_pruned};
use ahv_audit::records::{LogKind, Recovered, read_log, rewrite_log, scan_log};
use ahv_audit::segments;
use ahv_audit::signing::{FakeWallClock, HypervisorKey, SignedTreeHead, TreeHead};
use ahv_audit::{
    AuditConfig, AuditProof, Auditor, Commitment, Delta, Durability, Hash, MerkleLog, PublicKey,
    SessionStatus, VerifyReport, leaf_hash, prove, verify_dir,
};

/// Separates the parts of an input.
pub const SEP: &[u8] = b"--8<--";
/// Separates record bodies inside a part, in framed modes.
pub const RSEP: &[u8] = b"--rec--";
/// Flag: the check frames the records of each log part.
pub const FRAME: u8 = 1;
/// Flag: verify with the directory's `public-key` file.
pub const DIR_KEY: u8 = 1 << 1;
/// Flag: verify only session `s-1`.
pub const ONE_SESSION: u8 = 1 << 2;
/// Flag: sign the commitment log as found, with the fuzz key.
pub const SIGN: u8 = 1 << 3;
/// Flag: make the session logs consistent, commit and sign them.
pub const REPAIR: u8 = 1 << 4;
/// Flag: run crash recovery (`Auditor::open`) on the directory.
pub const REOPEN: u8 = 1 << 5;

/// The secret seed of the key that signs the seeds' heads (and the check's).
pub const FUZZ_KEY_SEED: [u8; 32] = [7; 32];

/// The file each part becomes, with its record kind (`None`: not a log).
const PARTS: [(&str, Option<LogKind>); 8] = [
    ("sessions/s-1.log", Some(LogKind::SESSION_DELTAS)),
    ("commitments.log", Some(LogKind::COMMITMENTS)),
    ("heads.log", Some(LogKind::SIGNED_HEADS)),
    ("sessions/s-2.log", Some(LogKind::SESSION_DELTAS)),
    ("public-key", None),
    ("proof.json", None),
    ("retention.mark", Some(LogKind::RETENTION_MARK)),
    ("segments/00000000000000000001.seg", Some(LogKind::SEGMENT)),
];
const SESSIONS: [(&str, usize); 2] = [("s-1", 0), ("s-2", 3)];

/// What one run found, for the seed tests' expectations.
#[derive(Debug)]
pub struct Outcome {
    /// The first verification's report, unless verification refused to run.
    pub report: Option<VerifyReport>,
}

/// Splits `data` on `sep`.
fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}

/// Joins the parts of an input: the inverse of how [`check`] reads it (for
/// writing seeds).
pub fn encode_input(flags: u8, parts: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = vec![flags];
    let last = parts.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
    for (i, p) in parts.iter().take(last).enumerate() {
        if i > 0 {
            out.extend_from_slice(SEP);
        }
        // A missing part in the middle is written empty, which means the same.
        out.extend_from_slice(p.as_deref().unwrap_or_default());
    }
    out
}

/// The fuzz target's entry point.
///
/// # Panics
/// When an invariant fails (or the code under test panics).
pub fn check(data: &[u8]) {
    run(data);
}

/// Builds the directory `data` describes, runs every check on it and returns
/// what the first verification found.
///
/// # Panics
/// When an invariant fails (or the code under test panics).
pub fn run(data: &[u8]) -> Outcome {
    let Some((&flags, rest)) = data.split_first() else {
        return Outcome { report: None };
    };
    let parts = split(rest, SEP);
    let part = |i: usize| parts.get(i).copied().filter(|p| !p.is_empty());
    let tmp = super::scratch_dir();
    let dir = tmp.path().join("audit");
    let io = |what: &str, e: &dyn std::fmt::Display| -> ! {
        panic!("setting up the audit directory ({what}): {e}")
    };
    std::fs::create_dir_all(dir.join("sessions")).unwrap_or_else(|e| io("mkdir", &e));
    std::fs::create_dir_all(dir.join("segments")).unwrap_or_else(|e| io("mkdir", &e));
    let key = HypervisorKey::from_seed(FUZZ_KEY_SEED);
    let pinned = key.public_key();
    let framed = flags & (FRAME | REPAIR) != 0;

    // The session logs, made consistent first under REPAIR.
    let mut all_decode = true;
    let mut commitments = Vec::new();
    for (name, index) in SESSIONS {
        let Some(bytes) = part(index) else { continue };
        let path = dir.join(PARTS[index].0);
        if flags & REPAIR != 0 {
            let (bodies, decoded, root) = repair(name, &split(bytes, RSEP));
            all_decode &= decoded;
            commitments.push(Commitment {
                session: name.to_string(),
                tree_size: bodies.len() as u64,
                root,
                time_unix_ns: 0,
            });
            write_framed(&path, LogKind::SESSION_DELTAS, &bodies);
        } else if framed {
            write_framed(&path, LogKind::SESSION_DELTAS, &split(bytes, RSEP));
        } else {
            std::fs::write(&path, bytes).unwrap_or_else(|e| io("write", &e));
        }
    }
    for (i, (file, kind)) in PARTS.iter().enumerate() {
        if SESSIONS.iter().any(|(_, s)| *s == i) {
            continue;
        }
        let Some(bytes) = part(i) else { continue };
        // Repair makes the session files and the commitments consistent; a
        // segment beside them would hold records it does not account for.
        if flags & REPAIR != 0 && (i == 1 || i == 2 || i == 7) {
            continue;
        }
        let path = dir.join(file);
        match kind {
            Some(kind) if framed => write_framed(&path, *kind, &split(bytes, RSEP)),
            _ => std::fs::write(&path, bytes).unwrap_or_else(|e| io("write", &e)),
        }
    }
    if flags & REPAIR != 0 {
        let bodies: Vec<Vec<u8>> = commitments.iter().map(Commitment::encode).collect();
        write_framed(&dir.join("commitments.log"), LogKind::COMMITMENTS, &bodies);
    }
    if flags & (SIGN | REPAIR) != 0 {
        sign_commitment_log(&dir, &key);
    }

    // Every log, record by record.
    for (file, kind) in PARTS.iter() {
        if let Some(kind) = kind {
            check_log(&dir.join(file), *kind, framed);
        }
    }
    check_segment(&dir.join(PARTS[7].0));

    let session = (flags & ONE_SESSION != 0).then_some("s-1");
    let key = (flags & DIR_KEY == 0).then_some(&pinned);
    let report = verify(&dir, session, key);
    if let Some(r) = &report {
        commitments_name_sessions(&dir, r);
    }
    if flags & REPAIR != 0
        && session.is_none()
        && key.is_some()
        && let Some(r) = &report
    {
        assert_eq!(
            r.ok(),
            all_decode,
            "a consistent, committed and signed directory (every record decodes: {all_decode}) verifies as:\n{r}"
        );
    }
    if let Some(r) = &report
        && r.ok()
    {
        proofs_hold(&dir, r, key, &pinned);
    }
    if let Some(json) = part(5) {
        foreign_proof(json, &pinned);
    }
    if flags & REOPEN != 0 {
        reopen(&dir, [1, 2, 4].iter().all(|i| part(*i).is_none()));
        let _ = verify(&dir, session, Some(&pinned));
    }
    Outcome { report }
}

/// Writes a log of `kind` holding `bodies`, framed as the auditor frames them.
fn write_framed<B: AsRef<[u8]>>(path: &Path, kind: LogKind, bodies: &[B]) {
    if let Err(e) = rewrite_log(path, kind, bodies.iter().map(AsRef::as_ref)) {
        panic!("writing {}: {e}", path.display());
    }
    let back =
        read_log(path, kind).unwrap_or_else(|e| panic!("reading back {}: {e}", path.display()));
    assert!(
        back.is_clean(),
        "a freshly framed log is not clean: {back:?}"
    );
    assert_eq!(back.records.len(), bodies.len(), "framed records lost");
    for (r, b) in back.records.iter().zip(bodies) {
        assert_eq!(r.body, b.as_ref(), "a framed record reads back differently");
    }
}

/// The session log `bodies` made into a chain: returns the new bodies,
/// whether every record decoded, and the Merkle root of their leaves.
fn repair(session: &str, bodies: &[&[u8]]) -> (Vec<Vec<u8>>, bool, Hash) {
    let mut out = Vec::with_capacity(bodies.len());
    let mut leaves = Vec::with_capacity(bodies.len());
    let mut all = true;
    let mut prev: Option<Hash> = None;
    for (pos, body) in bodies.iter().enumerate() {
        let pos = pos as u64;
        let (bytes, leaf) = if body.first() == Some(&PRUNED_TAG) {
            match decode_pruned(body) {
                Ok((_, leaf)) => (encode_pruned(pos, &leaf).to_vec(), leaf),
                Err(_) => {
                    all = false;
                    (body.to_vec(), leaf_hash(body))
                }
            }
        } else {
            match Delta::decode(body) {
                Ok(mut d) => {
                    d.seq = pos;
                    d.session = session.to_string();
                    d.parent = prev;
                    let bytes = d.encode();
                    let leaf = leaf_hash(&bytes);
                    (bytes, leaf)
                }
                Err(_) => {
                    all = false;
                    (body.to_vec(), leaf_hash(body))
                }
            }
        };
        prev = Some(leaf);
        leaves.push(leaf);
        out.push(bytes);
    }
    (out, all, MerkleLog::from_leaf_hashes(leaves).root())
}

/// Replaces `heads.log` by one head over every complete commitment record.
fn sign_commitment_log(dir: &Path, key: &HypervisorKey) {
    let leaves: Vec<Hash> = read_log(dir.join("commitments.log"), LogKind::COMMITMENTS)
        .map(|r| r.records.iter().map(|r| leaf_hash(&r.body)).collect())
        .unwrap_or_default();
    let size = leaves.len() as u64;
    let root = MerkleLog::from_leaf_hashes(leaves).root();
    let head = key.sign_head(&TreeHead {
        size,
        root,
        time_ms: 0,
    });
    write_framed(
        &dir.join("heads.log"),
        LogKind::SIGNED_HEADS,
        &[head.to_bytes()],
    );
}

/// Reads one log with every reader and decodes every record.
fn check_log(path: &Path, kind: LogKind, framed: bool) {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(_) => return,
    };
    let rec = match read_log(path, kind) {
        Ok(r) => r,
        Err(e) => {
            assert!(!framed, "a log the check framed is refused: {e}");
            let _ = e.to_string();
            return;
        }
    };
    framing_is_consistent(path, &rec, len);
    // Streaming sees the same records: all of them in a clean log, else a
    // prefix (it stops at damage that `read_log` reads past or calls a tail).
    let mut scanned = Vec::new();
    let result = scan_log(path, kind, 0, |r| {
        scanned.push(r.offset);
        true
    });
    let offsets: Vec<u64> = rec.records.iter().map(|r| r.offset).collect();
    assert!(
        offsets.starts_with(&scanned),
        "{}: scan_log sees records at {scanned:?}, read_log at {offsets:?}",
        path.display()
    );
    if rec.is_clean() {
        assert!(
            result.is_ok() && scanned == offsets,
            "{}: scan_log ({result:?}, {scanned:?}) differs from read_log on a clean log",
            path.display()
        );
    }
    if let Some(r) = rec.records.get(rec.records.len() / 2) {
        let _ = scan_log(path, kind, r.offset, |_| true);
    }
    for r in &rec.records {
        decode_record(kind, &r.body);
    }
}

fn framing_is_consistent(path: &Path, rec: &Recovered, len: u64) {
    let p = path.display();
    let mut at = 9u64;
    for r in &rec.records {
        assert!(
            r.offset >= at,
            "{p}: record at {} overlaps the one before (ends {at})",
            r.offset
        );
        at = r.end();
        assert!(
            at <= len,
            "{p}: record at {} ends at {at}, past the file's {len} bytes",
            r.offset
        );
    }
    assert_eq!(
        rec.valid_len, at,
        "{p}: valid_len is not the end of the last record"
    );
    if let Some(t) = &rec.tail {
        assert!(
            t.offset >= rec.valid_len && t.offset + t.len == len,
            "{p}: torn tail {t:?} in a {len}-byte file"
        );
    }
    for c in &rec.corrupt {
        assert!(
            c.offset < rec.valid_len,
            "{p}: damage at {} after the last valid record",
            c.offset
        );
    }
}

/// Decodes a record body as its log's kind says; what decodes must
/// re-encode to the same bytes.
fn decode_record(kind: LogKind, body: &[u8]) {
    match kind {
        LogKind::SESSION_DELTAS => {
            if body.first() == Some(&PRUNED_TAG) {
                if let Ok((seq, leaf)) = decode_pruned(body) {
                    assert_eq!(
                        encode_pruned(seq, &leaf).as_slice(),
                        body,
                        "a pruned record re-encodes differently"
                    );
                }
            } else if let Ok(d) = Delta::decode(body) {
                assert_eq!(d.encode(), body, "a delta re-encodes differently: {d:?}");
                let _ = d.to_string();
            }
        }
        LogKind::COMMITMENTS => {
            if let Ok(c) = Commitment::decode(body) {
                assert_eq!(
                    c.encode(),
                    body,
                    "a commitment re-encodes differently: {c:?}"
                );
            }
        }
        LogKind::SEGMENT => {
            if let Ok(f) = segments::decode_footer(body) {
                assert_eq!(
                    segments::encode_footer(&f.entries, f.last),
                    body,
                    "a footer re-encodes differently: {f:?}"
                );
            }
            if let Some(start) = segments::decode_start(body) {
                // Version 1 (no previous segment) is read, never written.
                if let Some(previous) = start.previous {
                    assert_eq!(
                        segments::encode_start(start.oldest_live, previous).as_slice(),
                        body,
                        "a start record re-encodes differently"
                    );
                }
            }
            decode_record(LogKind::SESSION_DELTAS, body);
        }
        LogKind::SIGNED_HEADS => {
            if let Ok(h) = SignedTreeHead::from_bytes(body) {
                assert_eq!(
                    h.to_bytes().as_slice(),
                    body,
                    "a signed head re-encodes differently"
                );
            }
        }
        _ => {}
    }
}

/// A segment read as rounds: every record is a start record, in a whole
/// round, damaged, or after the last round; the sessions assembled from
/// it hold no more records than its rounds. Pruning a copy of it keeps
/// every byte but the selected records', which become pruned ones.
fn check_segment(path: &Path) {
    let Ok(contents) = segments::read_segment(1, path) else {
        return;
    };
    let _ = contents.is_clean();
    let in_chunks: usize = contents.chunks.iter().map(|c| c.records.len()).sum();
    let mut all = segments::SessionAssembler::default();
    all.add_segment(&contents);
    let assembled: usize = all.sessions().values().map(|s| s.records.len()).sum();
    assert!(
        assembled <= in_chunks,
        "{assembled} records assembled from {in_chunks} in chunks"
    );
    for (name, s) in all.sessions() {
        assert!(
            s.records.windows(2).all(|w| w[0].seq < w[1].seq),
            "{name}: assembled records out of order"
        );
    }
    if !contents.chunks.iter().any(|c| c.session == "s-1") {
        return;
    }
    let copy_dir = super::scratch_dir();
    let copy = copy_dir.path().join("00000000000000000001.seg");
    if std::fs::copy(path, &copy).is_err() {
        return;
    }
    let before = std::fs::read(&copy).unwrap_or_default();
    let Ok(pruned) = segments::prune_segment(1, &copy, |s| s == "s-1") else {
        return;
    };
    let after = segments::read_segment(1, &copy)
        .unwrap_or_else(|e| panic!("a pruned segment cannot be read: {e}"));
    assert_eq!(
        after.chunks.len(),
        contents.chunks.len(),
        "pruning changed the rounds"
    );
    for (a, b) in after.chunks.iter().zip(&contents.chunks) {
        assert_eq!(
            (&a.session, a.first_seq, a.records.len()),
            (&b.session, b.first_seq, b.records.len())
        );
        for (ra, rb) in a.records.iter().zip(&b.records) {
            if a.session == "s-1" {
                assert_eq!(ra.body.first(), Some(&PRUNED_TAG), "s-1 not pruned");
            } else {
                assert_eq!(ra.body, rb.body, "another session's record changed");
            }
        }
    }
    assert_eq!(after.uncommitted.len(), contents.uncommitted.len());
    if pruned.sessions.is_empty() {
        assert_eq!(
            std::fs::read(&copy).unwrap_or_default(),
            before,
            "nothing to prune, yet the file changed"
        );
    }
}

fn verify(dir: &Path, session: Option<&str>, key: Option<&PublicKey>) -> Option<VerifyReport> {
    match verify_dir(dir, session, key) {
        Ok(r) => {
            let text = r.to_string();
            let ok = r.ok();
            assert_eq!(
                text.contains("FAILED"),
                !ok,
                "the text and ok() disagree:\n{text}"
            );
            let json = r.to_json();
            assert!(
                json.contains(&format!("\"ok\": {ok}")),
                "the JSON report does not say ok: {ok}:\n{json}"
            );
            Some(r)
        }
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}

/// A commitment names its session by an id, which verification turns into
/// the path of the session's log: a name that is not a session id (`../x`,
/// `/etc/x`) is a problem of the commitment log, and no log is read for it.
fn commitments_name_sessions(dir: &Path, report: &VerifyReport) {
    let Ok(rec) = read_log(dir.join("commitments.log"), LogKind::COMMITMENTS) else {
        return;
    };
    for (i, r) in rec.records.iter().enumerate() {
        let Ok(c) = Commitment::decode(&r.body) else {
            continue;
        };
        if ahv_core::SessionId::new(c.session.as_str()).is_ok() {
            continue;
        }
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.record == Some(i as u64) && p.offset == Some(r.offset)),
            "commitment #{i} names {:?}, not a session id, and the report does not say so:\n{report}",
            c.session
        );
        assert!(
            report.sessions.iter().all(|s| s.session != c.session),
            "verification read a log for {:?}, which is not a session id:\n{report}",
            c.session
        );
    }
}

/// Proofs made from a directory that verifies hold with its key.
fn proofs_hold(dir: &Path, report: &VerifyReport, key: Option<&PublicKey>, pinned: &PublicKey) {
    let Some(s) = report.sessions.iter().find(|s| s.session == "s-1") else {
        return;
    };
    let SessionStatus::Committed { tree_size, .. } = s.status else {
        return;
    };
    for seq in 0..tree_size.min(3) {
        let Ok(proof) = prove(dir, "s-1", seq, key) else {
            continue;
        };
        let k = key.copied().or_else(|| {
            std::fs::read_to_string(dir.join("public-key"))
                .ok()
                .and_then(|t| PublicKey::from_hex(t.trim()).ok())
        });
        let Some(k) = k else { continue };
        match proof.verify(&k) {
            Ok(d) => assert!(
                d.seq == seq && d.session == "s-1",
                "the proof of #{seq} proves #{} of {}",
                d.seq,
                d.session
            ),
            Err(e) => {
                panic!("a proof made from a verified directory does not hold: {e}\n{proof:?}")
            }
        }
        if k != *pinned {
            // Made under the directory's own key: the pinned one must not accept it
            // unless the directory's key is the pinned one.
            assert!(
                proof.verify(pinned).is_err(),
                "a proof signed by another key verifies under the pinned key"
            );
        }
    }
}

/// A proof from outside (`ahv audit verify --proof`): parsed and checked,
/// never a panic; one that holds proves a delta that decodes.
fn foreign_proof(json: &[u8], pinned: &PublicKey) {
    let Ok(proof) = serde_json::from_slice::<AuditProof>(json) else {
        return;
    };
    if let Ok(d) = proof.verify(pinned) {
        assert!(
            d.seq == proof.seq && d.session == proof.session,
            "the proof of #{} of {} proves #{} of {}",
            proof.seq,
            proof.session,
            d.seq,
            d.session
        );
    }
}

/// Crash recovery over the directory, then a clean shutdown.
fn reopen(dir: &Path, must_open: bool) {
    if write_signing_key(dir).is_err() {
        return;
    }
    let config = AuditConfig {
        durability: Durability::EveryRecord,
        sign_delay: Duration::from_millis(1),
        ..AuditConfig::default()
    };
    let opened = Auditor::open(
        dir,
        config,
        Arc::new(ahv_core::FakeClock::new()),
        Arc::new(FakeWallClock::new(1_700_000_000_000)),
    );
    match opened {
        Ok((auditor, report)) => {
            let _ = format!("{report:?}");
            let _ = auditor.close();
        }
        Err(e) => {
            assert!(
                !must_open,
                "a damaged session log keeps the auditor from opening: {e}"
            );
        }
    }
}

/// Writes [`FUZZ_KEY_SEED`] as the directory's signing key (private, as the
/// auditor insists), so that an auditor opened on it signs with the fuzz key.
///
/// # Errors
/// When the file cannot be written.
pub fn write_signing_key(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("signing-key"))?;
    writeln!(f, "{}", hex(&FUZZ_KEY_SEED))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
