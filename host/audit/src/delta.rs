//! Deltas: the canonical, versioned byte encoding of one governed action.
//!
//! A delta is what the audit log stores for every governed event of a
//! session. Its bytes are specified in `host/audit/FORMAT.md` ("Delta, version
//! 1") and pinned by golden vectors (`testdata/delta-v1.golden`). The delta's
//! *hash* is its RFC 6962 leaf hash, SHA-256(0x00 ‖ bytes): the Merkle tree
//! uses it as the leaf, and the next delta names it as its parent, so one hash
//! per delta serves both the chain and the tree.
//!
//! Encoding is done straight from an [`ahv_core::Event`] into a reused buffer
//! ([`encode_event`]) on the hot path; decoding ([`Delta::decode`]) is strict —
//! every length is checked against what is left, text must be UTF-8, unknown
//! tags and trailing bytes are errors — because it reads files an attacker may
//! have edited.

use std::fmt;
use std::time::Duration;

use ahv_core::{Event, Field};

use crate::hash::Hash;

/// The first byte of every version-1 delta.
pub const DELTA_VERSION: u8 = 1;

/// Most fields a delta may carry (a bound for decoding hostile input).
const MAX_FIELDS: u16 = 256;

/// Field value tags (FORMAT.md, "Field values").
mod tag {
    pub const TEXT: u8 = 1;
    pub const UINT: u8 = 2;
    pub const REAL: u8 = 3;
    pub const RING: u8 = 4;
    pub const DURATION: u8 = 5;
    pub const NO_HASH: u8 = 6;
    pub const HASH: u8 = 7;
    pub const AGENTS: u8 = 8;
}

/// A decoded field value (the owned form of [`ahv_core::Field`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Text(String),
    /// An unsigned integer.
    Uint(u64),
    /// A real number.
    Real(f64),
    /// A ring number (0–3).
    Ring(u8),
    /// A duration in nanoseconds.
    Duration(u64),
    /// A SHA-256 digest, or none.
    Hash(Option<Hash>),
    /// A list of agent ids.
    Agents(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(t) => write!(f, "{t:?}"),
            Value::Uint(n) => write!(f, "{n}"),
            Value::Real(x) => write!(f, "{x}"),
            Value::Ring(r) => write!(f, "{r}"),
            Value::Duration(ns) => write!(f, "{:?}", Duration::from_nanos(*ns)),
            Value::Hash(Some(h)) => write!(f, "{h}"),
            Value::Hash(None) => f.write_str("-"),
            Value::Agents(a) => write!(f, "[{}]", a.join(", ")),
        }
    }
}

/// One decoded delta.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// Position in its session's log, from 0.
    pub seq: u64,
    /// The session.
    pub session: String,
    /// The agent the action concerns, if any.
    pub agent: Option<String>,
    /// The causal trace id.
    pub trace: u128,
    /// Wall time of the event, in nanoseconds since the Unix epoch (its
    /// bus-clock time moved to the wall clock, see `Auditor::attach`).
    pub time_unix_ns: u64,
    /// The id of the event on the hypervisor's bus (for cross-reference).
    pub event: u64,
    /// The event kind's dotted name (`vfs.write`).
    pub kind: String,
    /// The previous delta's hash; `None` only for the first delta.
    pub parent: Option<Hash>,
    /// The payload fields, in the order the event defines.
    pub fields: Vec<(String, Value)>,
}

/// Why bytes are not a valid version-1 delta.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The first byte is not a known version.
    #[error("unknown delta version {0} (this build reads version {DELTA_VERSION})")]
    Version(u8),
    /// The bytes end inside a value.
    #[error("truncated delta: {what} needs {needed} byte(s) at offset {offset}, {left} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        left: usize,
    },
    /// Text that is not UTF-8.
    #[error("{what} at offset {offset} is not UTF-8")]
    Utf8 {
        /// Which text.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A flag byte other than 0 or 1, or an unknown value tag.
    #[error("bad {what} byte {byte:#04x} at offset {offset}")]
    BadTag {
        /// Which flag or tag.
        what: &'static str,
        /// The byte found.
        byte: u8,
        /// Where.
        offset: usize,
    },
    /// More fields than any delta has.
    #[error("{count} fields (at most {MAX_FIELDS})")]
    TooManyFields {
        /// The count found.
        count: u16,
    },
    /// Bytes after the last field.
    #[error("{0} trailing byte(s) after the delta")]
    Trailing(usize),
}

/// Encodes `event` as delta number `seq` of its session, appended to `out`. `session` must be the event's session (the caller has looked it up).
pub fn encode_event(
    out: &mut Vec<u8>,
    seq: u64,
    session: &str,
    time_unix_ns: u64,
    parent: Option<&Hash>,
    event: &Event,
) {
    write_header(
        out,
        &Header {
            seq,
            session,
            agent: event.agent.as_ref().map(|a| a.as_str()),
            trace: event.trace.0,
            time_unix_ns,
            event: event.id.0,
            kind: event.kind().name(),
            parent,
        },
    );
    let count_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let mut count: u16 = 0;
    event.payload.for_each_field(|name, value| {
        count += 1;
        let raw = match value {
            Field::Text(t) => Raw::Text(t),
            Field::Uint(n) => Raw::Word(tag::UINT, n),
            Field::Real(x) => Raw::Word(tag::REAL, x.to_bits()),
            Field::Ring(r) => Raw::Ring(r.number()),
            Field::Duration(d) => Raw::Word(
                tag::DURATION,
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            ),
            Field::Hash(h) => Raw::Hash(h),
            Field::Agents(list) => Raw::Agents(list.iter().map(|a| a.as_str()).collect()),
        };
        put_field(out, name, &raw);
    });
    out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
}

struct Header<'a> {
    seq: u64,
    session: &'a str,
    agent: Option<&'a str>,
    trace: u128,
    time_unix_ns: u64,
    event: u64,
    kind: &'a str,
    parent: Option<&'a Hash>,
}

fn write_header(out: &mut Vec<u8>, h: &Header<'_>) {
    out.push(DELTA_VERSION);
    out.extend_from_slice(&h.seq.to_be_bytes());
    put_str(out, h.session);
    match h.agent {
        Some(a) => {
            out.push(1);
            put_str(out, a);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&h.trace.to_be_bytes());
    out.extend_from_slice(&h.time_unix_ns.to_be_bytes());
    out.extend_from_slice(&h.event.to_be_bytes());
    put_str(out, h.kind);
    match h.parent {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(p.as_bytes());
        }
        None => out.push(0),
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Every length we write comes from a bounded in-memory value; saturating
    // keeps a >4 GiB string from wrapping into a valid-looking short one.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A field value on its way into the encoding: the one place where both the
/// borrowed [`Field`] of a live event and a decoded [`Value`] are written.
enum Raw<'a> {
    Text(&'a str),
    /// A tag whose value is one big-endian `u64`.
    Word(u8, u64),
    Ring(u8),
    Hash(Option<&'a [u8; 32]>),
    Agents(Vec<&'a str>),
}

fn put_field(out: &mut Vec<u8>, name: &str, value: &Raw<'_>) {
    put_str(out, name);
    match value {
        Raw::Text(t) => {
            out.push(tag::TEXT);
            put_str(out, t);
        }
        Raw::Word(t, n) => {
            out.push(*t);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Raw::Ring(r) => out.extend_from_slice(&[tag::RING, *r]),
        Raw::Hash(None) => out.push(tag::NO_HASH),
        Raw::Hash(Some(h)) => {
            out.push(tag::HASH);
            out.extend_from_slice(*h);
        }
        Raw::Agents(list) => {
            out.push(tag::AGENTS);
            put_u32(out, list.len());
            for a in list {
                put_str(out, a);
            }
        }
    }
}

impl Delta {
    /// The canonical bytes of this delta.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        write_header(
            &mut out,
            &Header {
                seq: self.seq,
                session: &self.session,
                agent: self.agent.as_deref(),
                trace: self.trace,
                time_unix_ns: self.time_unix_ns,
                event: self.event,
                kind: &self.kind,
                parent: self.parent.as_ref(),
            },
        );
        let count = u16::try_from(self.fields.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (name, value) in self.fields.iter().take(usize::from(count)) {
            let raw = match value {
                Value::Text(t) => Raw::Text(t),
                Value::Uint(n) => Raw::Word(tag::UINT, *n),
                Value::Real(x) => Raw::Word(tag::REAL, x.to_bits()),
                Value::Ring(r) => Raw::Ring(*r),
                Value::Duration(ns) => Raw::Word(tag::DURATION, *ns),
                Value::Hash(h) => Raw::Hash(h.as_ref().map(Hash::as_bytes)),
                Value::Agents(list) => Raw::Agents(list.iter().map(String::as_str).collect()),
            };
            put_field(&mut out, name, &raw);
        }
        out
    }

    /// Decodes canonical bytes.
    ///
    /// # Errors
    /// [`DeltaError`] naming the first thing wrong and its offset.
    pub fn decode(bytes: &[u8]) -> Result<Delta, DeltaError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8("version")?;
        if version != DELTA_VERSION {
            return Err(DeltaError::Version(version));
        }
        let seq = r.u64("seq")?;
        let session = r.str("session")?;
        let agent = if r.flag("agent flag")? {
            Some(r.str("agent")?)
        } else {
            None
        };
        let trace = u128::from_be_bytes(r.array::<16>("trace")?);
        let time_unix_ns = r.u64("time")?;
        let event = r.u64("event id")?;
        let kind = r.str("kind")?;
        let parent = if r.flag("parent flag")? {
            Some(Hash(r.array::<32>("parent")?))
        } else {
            None
        };
        let count = u16::from_be_bytes(r.array::<2>("field count")?);
        if count > MAX_FIELDS {
            return Err(DeltaError::TooManyFields { count });
        }
        let mut fields = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name = r.str("field name")?;
            let at = r.at;
            let value = match r.u8("field tag")? {
                tag::TEXT => Value::Text(r.str("text value")?),
                tag::UINT => Value::Uint(r.u64("integer value")?),
                tag::REAL => Value::Real(f64::from_bits(r.u64("real value")?)),
                tag::RING => Value::Ring(r.u8("ring value")?),
                tag::DURATION => Value::Duration(r.u64("duration value")?),
                tag::NO_HASH => Value::Hash(None),
                tag::HASH => Value::Hash(Some(Hash(r.array::<32>("hash value")?))),
                tag::AGENTS => {
                    let n = u32::from_be_bytes(r.array::<4>("agent count")?);
                    let mut list = Vec::new();
                    for _ in 0..n {
                        // Each entry needs at least its 4-byte length, so a
                        // hostile count fails on the bytes, not on memory.
                        list.push(r.str("agent in list")?);
                    }
                    Value::Agents(list)
                }
                byte => {
                    return Err(DeltaError::BadTag {
                        what: "field tag",
                        byte,
                        offset: at,
                    });
                }
            };
            fields.push((name, value));
        }
        if r.at != bytes.len() {
            return Err(DeltaError::Trailing(bytes.len() - r.at));
        }
        Ok(Delta {
            seq,
            session,
            agent,
            trace,
            time_unix_ns,
            event,
            kind,
            parent,
            fields,
        })
    }

    /// The value of field `name`, if present.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl fmt::Display for Delta {
    /// `#seq kind agent=… trace=… key=value…` on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.seq, self.kind)?;
        if let Some(a) = &self.agent {
            write!(f, " agent={a}")?;
        }
        for (name, value) in &self.fields {
            write!(f, " {name}={value}")?;
        }
        write!(f, " trace={:032x} event=#{}", self.trace, self.event)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, what: &'static str, n: usize) -> Result<&[u8], DeltaError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(DeltaError::Truncated {
                what,
                offset: self.at,
                needed: n,
                left,
            });
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DeltaError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(what, N)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DeltaError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DeltaError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, DeltaError> {
        let at = self.at;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(DeltaError::BadTag {
                what,
                byte,
                offset: at,
            }),
        }
    }

    fn str(&mut self, what: &'static str) -> Result<String, DeltaError> {
        let len = u32::from_be_bytes(self.array::<4>(what)?);
        let at = self.at;
        let raw = self.take(what, usize::try_from(len).unwrap_or(usize::MAX))?;
        String::from_utf8(raw.to_vec()).map_err(|_| DeltaError::Utf8 { what, offset: at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahv_core::{AgentId, EventId, EventKind, EventPayload, Ring, SessionId, TraceId};
    use proptest::prelude::*;

    fn event(payload: EventPayload) -> Event {
        Event {
            id: EventId(42),
            time: Duration::from_millis(5),
            session: Some(SessionId::new("s-1").unwrap()),
            agent: Some(AgentId::new("did:ex:a").unwrap()),
            trace: TraceId(0xabc),
            parent: None,
            payload,
        }
    }

    fn encoded(e: &Event, seq: u64, parent: Option<&Hash>) -> Vec<u8> {
        // Encoding appends: whatever the buffer held stays in front.
        let mut out = vec![0xEE; 3];
        encode_event(&mut out, seq, "s-1", 1_700_000_000_000_000_000, parent, e);
        assert_eq!(out[..3], [0xEE; 3]);
        out.split_off(3)
    }

    /// The golden vectors: the bytes of a few deltas, hex, one per line, with
    /// their leaf hashes. Re-bless with `AHV_BLESS=1 cargo test -p ahv-audit`.
    #[test]
    fn golden_vectors_v1() {
        let write = event(EventPayload::VfsWrite {
            path: "shared/report.md".into(),
            op: "write".into(),
            size: 280,
            before: None,
            after: Some([0x2e; 32]),
        });
        let joined = event(EventPayload::SessionJoined {
            ring: Ring::Standard,
            sigma: 0.8,
        });
        let deadlock = event(EventPayload::LockDeadlock {
            resource: "key:k".into(),
            cycle: vec![
                AgentId::new("did:ex:a").unwrap(),
                AgentId::new("did:ex:b").unwrap(),
            ],
        });
        let first = encoded(&joined, 0, None);
        let first_hash = crate::merkle::leaf_hash(&first);
        let second = encoded(&write, 1, Some(&first_hash));
        let third = encoded(&deadlock, 2, Some(&crate::merkle::leaf_hash(&second)));
        let mut text = String::new();
        for (name, bytes) in [
            ("session.joined", &first),
            ("vfs.write", &second),
            ("lock.deadlock", &third),
        ] {
            text += &format!(
                "{name}\n{}\nleaf {}\n",
                hex::encode(bytes),
                crate::merkle::leaf_hash(bytes)
            );
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/delta-v1.golden");
        if std::env::var_os("AHV_BLESS").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let golden = std::fs::read_to_string(path).expect("golden file (bless with AHV_BLESS=1)");
        assert_eq!(text, golden, "delta encoding changed: bump DELTA_VERSION");
    }

    #[test]
    fn the_header_layout_is_as_specified() {
        let e = event(EventPayload::SessionArchived);
        let b = encoded(&e, 7, None);
        let mut expect = vec![1];
        expect.extend_from_slice(&7u64.to_be_bytes());
        expect.extend_from_slice(&[0, 0, 0, 3]);
        expect.extend_from_slice(b"s-1");
        expect.extend_from_slice(&[1, 0, 0, 0, 8]);
        expect.extend_from_slice(b"did:ex:a");
        expect.extend_from_slice(&0xabcu128.to_be_bytes());
        expect.extend_from_slice(&1_700_000_000_000_000_000u64.to_be_bytes());
        expect.extend_from_slice(&42u64.to_be_bytes());
        expect.extend_from_slice(&[0, 0, 0, 16]);
        expect.extend_from_slice(b"session.archived");
        expect.push(0); // no parent
        expect.extend_from_slice(&[0, 0]); // no fields
        assert_eq!(b, expect);
    }

    #[test]
    fn every_event_kind_round_trips_through_decode_and_encode() {
        for kind in EventKind::ALL {
            let e = event(crate::delta::tests::sample(kind));
            let bytes = encoded(&e, 3, Some(&Hash([5; 32])));
            let d = Delta::decode(&bytes).unwrap_or_else(|err| panic!("{kind}: {err}"));
            assert_eq!(d.kind, kind.name());
            assert_eq!(d.seq, 3);
            assert_eq!(d.parent, Some(Hash([5; 32])));
            assert_eq!(d.agent.as_deref(), Some("did:ex:a"));
            assert_eq!(d.encode(), bytes, "{kind}");
            let mut names = Vec::new();
            e.payload.for_each_field(|n, _| names.push(n));
            let decoded: Vec<_> = d.fields.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(decoded, names, "{kind}");
        }
    }

    pub(super) fn sample(kind: EventKind) -> EventPayload {
        let s = |x: &str| x.to_string();
        match kind {
            EventKind::SessionCreated => EventPayload::SessionCreated {
                creator: AgentId::new("did:ex:c").unwrap(),
                max_participants: 10,
                max_duration: Duration::from_secs(3600),
            },
            EventKind::SessionJoined => EventPayload::SessionJoined {
                ring: Ring::Sandbox,
                sigma: 0.3,
            },
            EventKind::SessionLeft => EventPayload::SessionLeft { reason: s("bye") },
            EventKind::SessionActivated => EventPayload::SessionActivated { participants: 2 },
            EventKind::SessionTerminated => EventPayload::SessionTerminated {
                reason: ahv_core::TerminationReason::Expired,
            },
            EventKind::SessionArchived => EventPayload::SessionArchived,
            EventKind::RingAssigned => EventPayload::RingAssigned {
                ring: Ring::Root,
                reason: s("r"),
            },
            EventKind::RingBreachDetected => EventPayload::RingBreachDetected {
                ring: Ring::Sandbox,
                capability: s("vfs-write"),
                function: s("write"),
            },
            EventKind::VfsWrite => EventPayload::VfsWrite {
                path: s("p"),
                op: s("append"),
                size: 3,
                before: Some([1; 32]),
                after: None,
            },
            EventKind::VfsDelete => EventPayload::VfsDelete {
                path: s("p"),
                before: None,
            },
            EventKind::VfsRename => EventPayload::VfsRename {
                from: s("a"),
                to: s("b"),
                hash: Some([2; 32]),
            },
            EventKind::VfsAclChanged => EventPayload::VfsAclChanged {
                path: s("p"),
                acl: s("owner=x read=everyone write=owner"),
            },
            EventKind::VfsDirCreated => EventPayload::VfsDirCreated {
                path: s("d/e"),
                created: 2,
            },
            EventKind::VfsSnapshot => EventPayload::VfsSnapshot {
                snapshot: 1,
                files: 2,
                bytes: 3,
            },
            EventKind::VfsRestore => EventPayload::VfsRestore {
                snapshot: 1,
                joined: Vec::new(),
                left: vec![AgentId::new("did:ex:b").unwrap()],
                rings: String::new(),
                scores: s("did:ex:a 0.8->0.6"),
            },
            EventKind::VfsConflict => EventPayload::VfsConflict {
                path: s("p"),
                reason: s("stale"),
            },
            EventKind::VfsQuotaExceeded => EventPayload::VfsQuotaExceeded {
                path: s("p"),
                reason: s("total"),
            },
            EventKind::StateWrite => EventPayload::StateWrite {
                key: s("k"),
                version: 1,
            },
            EventKind::StateDelete => EventPayload::StateDelete {
                key: s("k"),
                version: 2,
            },
            EventKind::StateConflict => EventPayload::StateConflict {
                key: s("k"),
                reason: s("stale"),
            },
            EventKind::LockAcquired => EventPayload::LockAcquired {
                resource: s("key:k"),
                mode: s("write"),
            },
            EventKind::LockReleased => EventPayload::LockReleased {
                resource: s("key:k"),
            },
            EventKind::LockDeadlock => EventPayload::LockDeadlock {
                resource: s("key:k"),
                cycle: vec![AgentId::new("did:ex:b").unwrap()],
            },
            EventKind::SecurityAgentKilled => EventPayload::SecurityAgentKilled {
                reason: s("manual"),
            },
            EventKind::AuditDeltaCaptured => EventPayload::AuditDeltaCaptured {
                seq: 1,
                hash: [3; 32],
            },
            EventKind::AuditCommitted => EventPayload::AuditCommitted {
                tree_size: 4,
                root: [4; 32],
                index: 0,
            },
            EventKind::RingElevated => EventPayload::RingElevated {
                from: Ring::Standard,
                to: Ring::Privileged,
                ttl: Duration::from_secs(300),
                justification: s("hotfix"),
                sponsor: s("did:ex:s"),
            },
            EventKind::RingElevationDenied => EventPayload::RingElevationDenied {
                target: Ring::Privileged,
                reason: s("no_sponsorship"),
            },
            EventKind::RingElevationExpired => EventPayload::RingElevationExpired {
                ring: Ring::Privileged,
                back_to: Ring::Standard,
            },
            EventKind::RingElevationRevoked => EventPayload::RingElevationRevoked {
                ring: Ring::Standard,
                back_to: Ring::Sandbox,
                reason: s("breach"),
            },
            EventKind::RingDemoted => EventPayload::RingDemoted {
                from: Ring::Standard,
                to: Ring::Sandbox,
                reason: s("readmit"),
            },
            EventKind::SecurityRateLimited => EventPayload::SecurityRateLimited {
                capability: s("vfs-write"),
                function: s("write"),
                class: s("change"),
                retry_after: Duration::from_millis(200),
                refused: 1,
            },
            EventKind::SecurityBreakerTripped => EventPayload::SecurityBreakerTripped {
                severity: s("critical"),
                calls: 12,
                action: s("quarantine"),
            },
            EventKind::LiabilityQuarantineEntered => EventPayload::LiabilityQuarantineEntered {
                reason: s("breaker"),
                duration: Duration::from_secs(600),
            },
            EventKind::LiabilityVouchCreated => EventPayload::LiabilityVouchCreated {
                vouchee: AgentId::new("did:ex:b").unwrap(),
                vouch: 3,
                bond: 0.18,
                effective: 0.64,
            },
            EventKind::LiabilityVouchReleased => EventPayload::LiabilityVouchReleased {
                vouchee: AgentId::new("did:ex:b").unwrap(),
                vouch: 3,
                reason: s("slashed"),
            },
            EventKind::LiabilitySlashExecuted => EventPayload::LiabilitySlashExecuted {
                cause: s("voucher_penalty"),
                before: 0.9,
                after: 0.45,
                hop: 1,
                reason: s("r"),
            },
            EventKind::LiabilityFaultAttributed => EventPayload::LiabilityFaultAttributed {
                saga: s("saga-2"),
                share: 0.25,
                method: s("sampled"),
            },
            EventKind::SecuritySagaHandoff => EventPayload::SecuritySagaHandoff {
                saga: s("saga-2"),
                step: s("pay"),
                substitute: AgentId::new("did:ex:sub").unwrap(),
            },
            EventKind::LiabilityQuarantineReleased => EventPayload::LiabilityQuarantineReleased {
                reason: s("expired"),
            },
            EventKind::AgentSpawned => EventPayload::AgentSpawned {
                child: AgentId::new("did:ex:a.1").unwrap(),
                ring: Ring::Sandbox,
                component: s("helper"),
                depth: 2,
            },
            EventKind::ActionInvoked => EventPayload::ActionInvoked {
                action: s("note.append"),
                reversibility: s("full"),
                undo_window_ms: 60_000,
            },
            EventKind::NetRequest => EventPayload::NetRequest {
                method: s("GET"),
                url: s("https://api.example.com/v1"),
                status: 200,
                outcome: s("ok"),
                request_bytes: 0,
                response_bytes: 5,
                request_hash: s("e3b0"),
                response_hash: s("2cf2"),
                address: s("93.184.216.34:443"),
                elapsed_ms: 12,
            },
            EventKind::EffectInvoked => EventPayload::EffectInvoked {
                effect: s("notify.send"),
            },
            EventKind::OperatorRequest => EventPayload::OperatorRequest {
                caller: s("ops"),
                role: s("operator"),
                operation: s("POST /v1/sessions/{session}/agents"),
            },
            EventKind::SagaCreated => EventPayload::SagaCreated {
                saga: s("saga-1"),
                name: s("deploy"),
                steps: 3,
            },
            EventKind::SagaStepStarted => EventPayload::SagaStepStarted {
                saga: s("saga-1"),
                step: s("build"),
                attempt: 1,
            },
            EventKind::SagaStepCommitted => EventPayload::SagaStepCommitted {
                saga: s("saga-1"),
                step: s("build"),
                attempt: 2,
                changes: 4,
            },
            EventKind::SagaStepFailed => EventPayload::SagaStepFailed {
                saga: s("saga-1"),
                step: s("build"),
                attempt: 1,
                error: s("out of fuel"),
                retry_in: Duration::from_millis(250),
            },
            EventKind::SagaCompensating => EventPayload::SagaCompensating {
                saga: s("saga-1"),
                reason: s("step test failed"),
            },
            EventKind::SagaStepCompensated => EventPayload::SagaStepCompensated {
                saga: s("saga-1"),
                step: s("build"),
            },
            EventKind::SagaCompensationFailed => EventPayload::SagaCompensationFailed {
                saga: s("saga-1"),
                step: s("build"),
                error: s("conflict"),
            },
            EventKind::SagaCompleted => EventPayload::SagaCompleted {
                saga: s("saga-1"),
                steps: 3,
            },
            EventKind::SagaFailed => EventPayload::SagaFailed {
                saga: s("saga-1"),
                reason: s("compensated"),
            },
            EventKind::SagaEscalated => EventPayload::SagaEscalated {
                saga: s("saga-1"),
                failures: 1,
            },
            EventKind::SagaFanoutStarted => EventPayload::SagaFanoutStarted {
                saga: s("saga-1"),
                group: s("probes"),
                policy: s("majority"),
                branches: 3,
            },
            EventKind::SagaFanoutResolved => EventPayload::SagaFanoutResolved {
                saga: s("saga-1"),
                group: s("probes"),
                policy: s("majority"),
                succeeded: 2,
                failed: 1,
                cancelled: 0,
            },
            EventKind::SagaCheckpointSaved => EventPayload::SagaCheckpointSaved {
                saga: s("saga-1"),
                step: s("build"),
                hash: [9; 32],
            },
            EventKind::SagaStepSkipped => EventPayload::SagaStepSkipped {
                saga: s("saga-1"),
                step: s("build"),
                hash: [9; 32],
            },
            EventKind::VfsUndone => EventPayload::VfsUndone {
                path: s("shared/a.txt"),
                op: s("write"),
                record: 7,
            },
        }
    }

    #[test]
    fn every_cut_of_a_delta_is_a_truncation_error() {
        let e = event(sample(EventKind::LockDeadlock));
        let bytes = encoded(&e, 1, Some(&Hash([9; 32])));
        for cut in 0..bytes.len() {
            let err = Delta::decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, DeltaError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Delta::decode(&longer), Err(DeltaError::Trailing(1)));
    }

    #[test]
    fn bad_version_flag_tag_and_utf8_are_named() {
        let e = event(sample(EventKind::VfsWrite));
        let good = encoded(&e, 0, None);
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(Delta::decode(&v), Err(DeltaError::Version(2)));
        // The agent flag sits right after version, seq and the session string.
        let flag_at = 1 + 8 + 4 + 3;
        let mut f = good.clone();
        f[flag_at] = 7;
        assert!(matches!(
            Delta::decode(&f),
            Err(DeltaError::BadTag {
                what: "agent flag",
                byte: 7,
                ..
            })
        ));
        let mut u = good.clone();
        u[1 + 8 + 4] = 0xff; // first byte of the session id
        assert!(matches!(
            Delta::decode(&u),
            Err(DeltaError::Utf8 {
                what: "session",
                ..
            })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Hostile bytes never panic the decoder, and whatever decodes
        /// re-encodes to the same bytes (the encoding is canonical).
        #[test]
        fn arbitrary_bytes_never_panic_and_decoding_is_canonical(
            bytes in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            if let Ok(d) = Delta::decode(&bytes) {
                prop_assert_eq!(d.encode(), bytes);
            }
        }

        /// Flipping any bit of a valid delta changes its hash and never
        /// decodes to the same delta.
        #[test]
        fn any_flipped_bit_changes_the_delta(bit in 0usize..2000) {
            let e = event(sample(EventKind::VfsWrite));
            let bytes = encoded(&e, 5, Some(&Hash([1; 32])));
            let bit = bit % (bytes.len() * 8);
            let mut m = bytes.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            prop_assert_ne!(crate::merkle::leaf_hash(&m), crate::merkle::leaf_hash(&bytes));
            if let Ok(d) = Delta::decode(&m) {
                prop_assert_ne!(d, Delta::decode(&bytes).unwrap());
            }
        }
    }
}
