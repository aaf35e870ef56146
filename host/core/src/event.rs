//! Typed events, one per state change, on a bus with bounded history.
//!
//! Every state change emits one [`Event`]: an id from a counter, the bus
//! clock's time, the session and agent it concerns, the causal trace id, an
//! optional parent event and a typed [`EventPayload`]. The [`EventBus`] keeps
//! the newest `capacity` events for [`EventBus::query`] and hands each event to
//! its subscribers ([`EventSink`]) synchronously, right after storing it.
//! Kinds use the dotted names listed in `docs/governance.md`, "Events" (`session.joined`).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use ahv_core::{
//!     AgentId, Event, EventBus, EventKind, EventPayload, EventQuery, FakeClock, Ring, SessionId,
//!     TraceId,
//! };
//!
//! let clock = FakeClock::new();
//! let bus = EventBus::new(1024, Arc::new(clock.clone()));
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&seen);
//! bus.subscribe(move |e: &Event| sink.lock().unwrap().push(e.kind()));
//!
//! let (s, a, trace) = (SessionId::new("s-1")?, AgentId::new("did:ex:a")?, TraceId(7));
//! clock.advance(Duration::from_micros(1234));
//! let id = bus.emit(Some(&s), Some(&a), trace, None,
//!     EventPayload::SessionJoined { ring: Ring::Standard, sigma: 0.8 });
//!
//! let joined = bus.query(&EventQuery::default().session(s).kind(EventKind::SessionJoined));
//! assert_eq!(joined.len(), 1);
//! assert_eq!(joined[0].id, id);
//! assert_eq!(joined[0].time, Duration::from_micros(1234));
//! assert!(joined[0].to_string().starts_with("#1 +1.234ms session.joined session=s-1 agent=did:ex:a ring=2 sigma=0.80"));
//! assert_eq!(*seen.lock().unwrap(), [EventKind::SessionJoined]);
//! # Ok::<(), ahv_core::IdError>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::clock::Clock;
use crate::id::{AgentId, SessionId, TraceId};
use crate::ring::Ring;

/// An event's id: assigned by its bus from a counter starting at 1, one per
/// emit, never reused. Later events have larger ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Defines [`EventKind`], its `ALL` table and both directions of its names
/// from one list, so a kind cannot be added without a name or left out of `ALL`.
macro_rules! event_kinds {
    ($count:literal; $( $(#[$doc:meta])* $variant:ident => $name:literal, )+) => {
        /// What changed: the type of an [`Event`], named as in `docs/governance.md` ("Events").
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum EventKind {
            $( $(#[$doc])* $variant, )+
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: [EventKind; $count] = [$(EventKind::$variant),+];

            /// The kind's dotted name (`session.joined`).
            pub const fn name(self) -> &'static str {
                match self {
                    $( EventKind::$variant => $name, )+
                }
            }

            /// The kind with this dotted name, or `None` for an unknown name.
            pub fn from_name(name: &str) -> Option<EventKind> {
                match name {
                    $( $name => Some(EventKind::$variant), )+
                    _ => None,
                }
            }
        }
    };
}

event_kinds! { 26;
    /// `session.created`: a session was created.
    SessionCreated => "session.created",
    /// `session.joined`: an agent joined a session.
    SessionJoined => "session.joined",
    /// `session.left`: an agent left a session.
    SessionLeft => "session.left",
    /// `session.activated`: a session started running.
    SessionActivated => "session.activated",
    /// `session.terminated`: a session ended.
    SessionTerminated => "session.terminated",
    /// `session.archived`: a terminated session was archived.
    SessionArchived => "session.archived",
    /// `ring.assigned`: an agent was placed in a ring.
    RingAssigned => "ring.assigned",
    /// `ring.breach_detected`: an agent called a capability outside its ring.
    RingBreachDetected => "ring.breach_detected",
    /// `vfs.write`: a file was written, appended to or truncated.
    VfsWrite => "vfs.write",
    /// `vfs.delete`: a file was deleted.
    VfsDelete => "vfs.delete",
    /// `vfs.rename`: a file was renamed.
    VfsRename => "vfs.rename",
    /// `vfs.acl_changed`: a file's access-control list changed.
    VfsAclChanged => "vfs.acl_changed",
    /// `vfs.dir_created`: a directory was created (with any missing parents).
    VfsDirCreated => "vfs.dir_created",
    /// `vfs.snapshot`: the file space was snapshotted.
    VfsSnapshot => "vfs.snapshot",
    /// `vfs.restore`: the file space was restored from a snapshot.
    VfsRestore => "vfs.restore",
    /// `vfs.conflict`: a file change was refused because of a conflict.
    VfsConflict => "vfs.conflict",
    /// `vfs.quota_exceeded`: a file change was refused because it would exceed a quota.
    VfsQuotaExceeded => "vfs.quota_exceeded",
    /// `state.write`: a shared-state key was written.
    StateWrite => "state.write",
    /// `state.delete`: a shared-state key was deleted.
    StateDelete => "state.delete",
    /// `state.conflict`: a shared-state change was refused because of a conflict.
    StateConflict => "state.conflict",
    /// `lock.acquired`: an intent lock was granted.
    LockAcquired => "lock.acquired",
    /// `lock.released`: an intent lock was released.
    LockReleased => "lock.released",
    /// `lock.deadlock`: a lock request would have closed a wait cycle.
    LockDeadlock => "lock.deadlock",
    /// `security.agent_killed`: an agent was killed.
    SecurityAgentKilled => "security.agent_killed",
    /// `audit.delta_captured`: a governed event was recorded in its session's audit log.
    AuditDeltaCaptured => "audit.delta_captured",
    /// `audit.committed`: a session's audit log was sealed by a commitment.
    AuditCommitted => "audit.committed",
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a session terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminationReason {
    /// Someone asked for it.
    Requested,
    /// Its maximum duration passed.
    Expired,
}

impl fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TerminationReason::Requested => "requested",
            TerminationReason::Expired => "expired",
        })
    }
}

/// The typed data of an event; each variant belongs to the [`EventKind`] of
/// the same name ([`EventPayload::kind`]).
#[derive(Debug, Clone, PartialEq)]
pub enum EventPayload {
    /// A session was created.
    SessionCreated {
        /// The agent that created it.
        creator: AgentId,
        /// Its participant limit.
        max_participants: u32,
        /// Its maximum duration.
        max_duration: Duration,
    },
    /// The event's agent joined the event's session.
    SessionJoined {
        /// The ring it joined in.
        ring: Ring,
        /// Its trust score σ at join time.
        sigma: f64,
    },
    /// The event's agent left the event's session.
    SessionLeft {
        /// Why.
        reason: String,
    },
    /// The session started running.
    SessionActivated {
        /// How many participants it started with.
        participants: u32,
    },
    /// The session ended.
    SessionTerminated {
        /// Why.
        reason: TerminationReason,
    },
    /// The session was archived.
    SessionArchived,
    /// The event's agent was placed in a ring.
    RingAssigned {
        /// The ring.
        ring: Ring,
        /// Why this ring.
        reason: String,
    },
    /// The event's agent called a function its ring does not grant.
    RingBreachDetected {
        /// The agent's ring.
        ring: Ring,
        /// The capability (WIT interface) it lacked.
        capability: String,
        /// The function it called.
        function: String,
    },
    /// A file was written.
    VfsWrite {
        /// The file.
        path: String,
        /// `write`, `append` or `truncate`.
        op: String,
        /// The file's size afterwards, in bytes.
        size: u64,
        /// Content hash before, `None` if the file did not exist.
        before: Option<[u8; 32]>,
        /// Content hash after.
        after: Option<[u8; 32]>,
    },
    /// A file was deleted.
    VfsDelete {
        /// The file.
        path: String,
        /// Its content hash before deletion.
        before: Option<[u8; 32]>,
    },
    /// A file was renamed.
    VfsRename {
        /// The old path.
        from: String,
        /// The new path.
        to: String,
        /// The content hash of the file (unchanged by the rename), if known.
        hash: Option<[u8; 32]>,
    },
    /// A file's access-control list changed.
    VfsAclChanged {
        /// The file.
        path: String,
        /// The new list, as `owner=… read=… write=…`.
        acl: String,
    },
    /// A directory was created, with the parents it lacked.
    VfsDirCreated {
        /// The directory.
        path: String,
        /// How many directories were created (it and its missing parents).
        created: u64,
    },
    /// The file space was snapshotted.
    VfsSnapshot {
        /// The snapshot's number.
        snapshot: u64,
        /// Files in it.
        files: u64,
        /// Bytes in it.
        bytes: u64,
    },
    /// The file space was restored from a snapshot. The participants are
    /// not restored: the other fields say how they differ from the ones the
    /// snapshot recorded.
    VfsRestore {
        /// The snapshot's number.
        snapshot: u64,
        /// Participants that joined since the snapshot.
        joined: Vec<AgentId>,
        /// Participants that left since the snapshot.
        left: Vec<AgentId>,
        /// Ring changes since, `<agent> <then>-><now>` joined by `, `.
        rings: String,
        /// Trust-score changes since, `<agent> <then>-><now>` joined by `, `.
        scores: String,
    },
    /// A file change was refused because of a conflict.
    VfsConflict {
        /// The file.
        path: String,
        /// What conflicted.
        reason: String,
    },
    /// A file change was refused because it would exceed a quota.
    VfsQuotaExceeded {
        /// The file.
        path: String,
        /// Which quota, and by how much.
        reason: String,
    },
    /// A shared-state key was written.
    StateWrite {
        /// The key.
        key: String,
        /// Its new version.
        version: u64,
    },
    /// A shared-state key was deleted.
    StateDelete {
        /// The key.
        key: String,
        /// The version the deletion created.
        version: u64,
    },
    /// A shared-state change was refused because of a conflict.
    StateConflict {
        /// The key.
        key: String,
        /// What conflicted.
        reason: String,
    },
    /// An intent lock was granted.
    LockAcquired {
        /// The locked path or key.
        resource: String,
        /// The lock mode.
        mode: String,
    },
    /// An intent lock was released.
    LockReleased {
        /// The locked path or key.
        resource: String,
    },
    /// A lock request was refused because it would have closed a wait cycle.
    LockDeadlock {
        /// The requested path or key.
        resource: String,
        /// The agents in the cycle, in wait order.
        cycle: Vec<AgentId>,
    },
    /// The event's agent was killed.
    SecurityAgentKilled {
        /// Why.
        reason: String,
    },
    /// The event named as this event's parent was recorded in the audit log.
    AuditDeltaCaptured {
        /// The delta's sequence number in its session's log (0 for the first).
        seq: u64,
        /// The delta's hash (its Merkle leaf hash, which the next delta names as parent).
        hash: [u8; 32],
    },
    /// The session's audit log was sealed by a commitment.
    AuditCommitted {
        /// How many deltas the commitment covers.
        tree_size: u64,
        /// The Merkle root over them.
        root: [u8; 32],
        /// The commitment's index in the commitment log.
        index: u64,
    },
}

/// One field of an [`EventPayload`], as [`EventPayload::for_each_field`] hands
/// it out: the typed value without any formatting, so that a log line and a
/// canonical audit encoding are both derived from the same list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    /// Text (paths, reasons, keys, ids, modes).
    Text(&'a str),
    /// An unsigned count, size, version or index.
    Uint(u64),
    /// A real number (trust scores).
    Real(f64),
    /// A ring.
    Ring(Ring),
    /// A duration.
    Duration(Duration),
    /// A SHA-256 digest, or none.
    Hash(Option<&'a [u8; 32]>),
    /// A list of agents.
    Agents(&'a [AgentId]),
}

impl EventPayload {
    /// The kind of event this payload belongs to.
    pub const fn kind(&self) -> EventKind {
        match self {
            EventPayload::SessionCreated { .. } => EventKind::SessionCreated,
            EventPayload::SessionJoined { .. } => EventKind::SessionJoined,
            EventPayload::SessionLeft { .. } => EventKind::SessionLeft,
            EventPayload::SessionActivated { .. } => EventKind::SessionActivated,
            EventPayload::SessionTerminated { .. } => EventKind::SessionTerminated,
            EventPayload::SessionArchived => EventKind::SessionArchived,
            EventPayload::RingAssigned { .. } => EventKind::RingAssigned,
            EventPayload::RingBreachDetected { .. } => EventKind::RingBreachDetected,
            EventPayload::VfsWrite { .. } => EventKind::VfsWrite,
            EventPayload::VfsDelete { .. } => EventKind::VfsDelete,
            EventPayload::VfsRename { .. } => EventKind::VfsRename,
            EventPayload::VfsAclChanged { .. } => EventKind::VfsAclChanged,
            EventPayload::VfsDirCreated { .. } => EventKind::VfsDirCreated,
            EventPayload::VfsSnapshot { .. } => EventKind::VfsSnapshot,
            EventPayload::VfsRestore { .. } => EventKind::VfsRestore,
            EventPayload::VfsConflict { .. } => EventKind::VfsConflict,
            EventPayload::VfsQuotaExceeded { .. } => EventKind::VfsQuotaExceeded,
            EventPayload::StateWrite { .. } => EventKind::StateWrite,
            EventPayload::StateDelete { .. } => EventKind::StateDelete,
            EventPayload::StateConflict { .. } => EventKind::StateConflict,
            EventPayload::LockAcquired { .. } => EventKind::LockAcquired,
            EventPayload::LockReleased { .. } => EventKind::LockReleased,
            EventPayload::LockDeadlock { .. } => EventKind::LockDeadlock,
            EventPayload::SecurityAgentKilled { .. } => EventKind::SecurityAgentKilled,
            EventPayload::AuditDeltaCaptured { .. } => EventKind::AuditDeltaCaptured,
            EventPayload::AuditCommitted { .. } => EventKind::AuditCommitted,
        }
    }

    /// The payload's fields as ` key=value` pairs, each with a leading space
    /// (the form [`Event`]'s display uses); empty for payloads without fields.
    pub fn fields(&self) -> impl fmt::Display + '_ {
        struct Fields<'a>(&'a EventPayload);
        impl fmt::Display for Fields<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write_fields(f)
            }
        }
        Fields(self)
    }

    /// Calls `f` with each field's name and value, in a fixed order per kind.
    ///
    /// This is the one list of a payload's fields: the log form
    /// ([`EventPayload::fields`]) and the audit log's canonical encoding are
    /// both derived from it, so they cannot drift apart.
    pub fn for_each_field(&self, mut f: impl FnMut(&'static str, Field<'_>)) {
        use Field::{Agents, Hash, Real, Text, Uint};
        match self {
            EventPayload::SessionCreated {
                creator,
                max_participants,
                max_duration,
            } => {
                f("creator", Text(creator.as_str()));
                f("max_participants", Uint(u64::from(*max_participants)));
                f("max_duration", Field::Duration(*max_duration));
            }
            EventPayload::SessionJoined { ring, sigma } => {
                f("ring", Field::Ring(*ring));
                f("sigma", Real(*sigma));
            }
            EventPayload::SessionLeft { reason } | EventPayload::SecurityAgentKilled { reason } => {
                f("reason", Text(reason));
            }
            EventPayload::SessionActivated { participants } => {
                f("participants", Uint(u64::from(*participants)));
            }
            EventPayload::SessionTerminated { reason } => f(
                "reason",
                Text(match reason {
                    TerminationReason::Requested => "requested",
                    TerminationReason::Expired => "expired",
                }),
            ),
            EventPayload::SessionArchived => {}
            EventPayload::RingAssigned { ring, reason } => {
                f("ring", Field::Ring(*ring));
                f("reason", Text(reason));
            }
            EventPayload::RingBreachDetected {
                ring,
                capability,
                function,
            } => {
                f("ring", Field::Ring(*ring));
                f("capability", Text(capability));
                f("function", Text(function));
            }
            EventPayload::VfsWrite {
                path,
                op,
                size,
                before,
                after,
            } => {
                f("path", Text(path));
                f("op", Text(op));
                f("size", Uint(*size));
                f("before", Hash(before.as_ref()));
                f("after", Hash(after.as_ref()));
            }
            EventPayload::VfsDelete { path, before } => {
                f("path", Text(path));
                f("before", Hash(before.as_ref()));
            }
            EventPayload::VfsRename { from, to, hash } => {
                f("from", Text(from));
                f("to", Text(to));
                f("hash", Hash(hash.as_ref()));
            }
            EventPayload::VfsAclChanged { path, acl } => {
                f("path", Text(path));
                f("acl", Text(acl));
            }
            EventPayload::VfsDirCreated { path, created } => {
                f("path", Text(path));
                f("created", Uint(*created));
            }
            EventPayload::VfsSnapshot {
                snapshot,
                files,
                bytes,
            } => {
                f("snapshot", Uint(*snapshot));
                f("files", Uint(*files));
                f("bytes", Uint(*bytes));
            }
            EventPayload::VfsRestore {
                snapshot,
                joined,
                left,
                rings,
                scores,
            } => {
                f("snapshot", Uint(*snapshot));
                f("joined", Agents(joined));
                f("left", Agents(left));
                f("rings", Text(rings));
                f("scores", Text(scores));
            }
            EventPayload::VfsConflict { path, reason }
            | EventPayload::VfsQuotaExceeded { path, reason } => {
                f("path", Text(path));
                f("reason", Text(reason));
            }
            EventPayload::StateWrite { key, version }
            | EventPayload::StateDelete { key, version } => {
                f("key", Text(key));
                f("version", Uint(*version));
            }
            EventPayload::StateConflict { key, reason } => {
                f("key", Text(key));
                f("reason", Text(reason));
            }
            EventPayload::LockAcquired { resource, mode } => {
                f("resource", Text(resource));
                f("mode", Text(mode));
            }
            EventPayload::LockReleased { resource } => f("resource", Text(resource)),
            EventPayload::LockDeadlock { resource, cycle } => {
                f("resource", Text(resource));
                f("cycle", Agents(cycle));
            }
            EventPayload::AuditDeltaCaptured { seq, hash } => {
                f("seq", Uint(*seq));
                f("hash", Hash(Some(hash)));
            }
            EventPayload::AuditCommitted {
                tree_size,
                root,
                index,
            } => {
                f("tree_size", Uint(*tree_size));
                f("root", Hash(Some(root)));
                f("index", Uint(*index));
            }
        }
    }

    /// Writes the payload as ` key=value` pairs, each with a leading space.
    fn write_fields(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut result = Ok(());
        self.for_each_field(|name, value| {
            if result.is_err() {
                return;
            }
            result = (|| {
                write!(out, " {name}=")?;
                match value {
                    Field::Text(t) => write!(out, "{}", Text(t)),
                    Field::Uint(n) => write!(out, "{n}"),
                    Field::Real(x) => write!(out, "{x:.2}"),
                    Field::Ring(r) => write!(out, "{}", r.number()),
                    Field::Duration(d) => write!(out, "{d:?}"),
                    Field::Hash(h) => write!(out, "{}", ShortHash(h)),
                    // Agent ids cannot contain commas, so the list stays unambiguous.
                    Field::Agents(agents) => agents.iter().enumerate().try_for_each(|(i, a)| {
                        if i > 0 {
                            out.write_str(",")?;
                        }
                        write!(out, "{a}")
                    }),
                }
            })();
        });
        result
    }
}

/// Agent-controlled text in a log line: bare when it is one plain word,
/// otherwise quoted and escaped so that a path or reason cannot forge a line
/// break or a `key=value` pair.
struct Text<'a>(&'a str);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b));
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// A content hash as its first four bytes in hex, or `-` when absent.
struct ShortHash<'a>(Option<&'a [u8; 32]>);

impl fmt::Display for ShortHash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(h) => h[..4].iter().try_for_each(|b| write!(f, "{b:02x}")),
            None => f.write_str("-"),
        }
    }
}

/// One state change.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its id (bus order).
    pub id: EventId,
    /// When it was emitted, on the bus clock.
    pub time: Duration,
    /// The session it concerns, if any.
    pub session: Option<SessionId>,
    /// The agent it concerns, if any.
    pub agent: Option<AgentId>,
    /// The causal trace it belongs to.
    pub trace: TraceId,
    /// The event that caused it, if any.
    pub parent: Option<EventId>,
    /// What changed.
    pub payload: EventPayload,
}

impl Event {
    /// The event's kind (that of its payload).
    pub const fn kind(&self) -> EventKind {
        self.payload.kind()
    }
}

impl fmt::Display for Event {
    /// One line: `#12 +1.234ms session.joined session=s-1 agent=did:ex:a
    /// ring=2 sigma=0.80 parent=#11 trace=<32 hex digits>`. Absent session,
    /// agent and parent are left out; hashes are shortened to 8 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sub-millisecond precision matters below a second (a whole session
        // lifecycle takes microseconds); above it, milliseconds are enough.
        let t = self.time;
        if t < Duration::from_secs(1) {
            let us = t.as_micros();
            write!(
                f,
                "{} +{}.{:03}ms {}",
                self.id,
                us / 1000,
                us % 1000,
                self.kind()
            )?;
        } else {
            let ms = t.as_millis();
            write!(
                f,
                "{} +{}.{:03}s {}",
                self.id,
                ms / 1000,
                ms % 1000,
                self.kind()
            )?;
        }
        if let Some(s) = &self.session {
            write!(f, " session={s}")?;
        }
        if let Some(a) = &self.agent {
            write!(f, " agent={a}")?;
        }
        self.payload.write_fields(f)?;
        if let Some(p) = self.parent {
            write!(f, " parent={p}")?;
        }
        write!(f, " trace={}", self.trace)
    }
}

/// Which events [`EventBus::query`] returns. The default matches every event;
/// each builder method adds one condition, and all conditions must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Only events of this kind.
    pub kind: Option<EventKind>,
    /// Only events of this session.
    pub session: Option<SessionId>,
    /// Only events of this agent.
    pub agent: Option<AgentId>,
    /// Only events of this trace.
    pub trace: Option<TraceId>,
    /// Only events with a larger id than this (for paging: pass the last id seen).
    pub after: Option<EventId>,
    /// At most this many events: the oldest matching ones.
    pub limit: Option<usize>,
}

impl EventQuery {
    /// Only events of kind `kind`.
    #[must_use]
    pub fn kind(mut self, kind: EventKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Only events of session `session`.
    #[must_use]
    pub fn session(mut self, session: SessionId) -> Self {
        self.session = Some(session);
        self
    }

    /// Only events of agent `agent`.
    #[must_use]
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Only events of trace `trace`.
    #[must_use]
    pub fn trace(mut self, trace: TraceId) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Only events emitted after event `id`.
    #[must_use]
    pub fn after(mut self, id: EventId) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `n` events (the oldest that match).
    #[must_use]
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// True when `event` meets every condition except `limit`.
    pub fn matches(&self, event: &Event) -> bool {
        self.kind.is_none_or(|k| event.kind() == k)
            && self
                .session
                .as_ref()
                .is_none_or(|s| event.session.as_ref() == Some(s))
            && self
                .agent
                .as_ref()
                .is_none_or(|a| event.agent.as_ref() == Some(a))
            && self.trace.is_none_or(|t| event.trace == t)
            && self.after.is_none_or(|id| event.id > id)
    }
}

/// A subscriber: called with every event emitted after it subscribed.
///
/// Sinks run synchronously on the emitting thread, after the event is stored
/// and with no bus lock held, so they may query the bus, emit, subscribe or
/// unsubscribe. Keep them short: they are on the emitter's hot path.
pub trait EventSink: Send + Sync {
    /// Receives one event.
    fn on_event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync> EventSink for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

/// A subscription's handle, for [`EventBus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

type Sinks = Arc<[(SubscriptionId, Arc<dyn EventSink>)]>;

#[derive(Debug)]
struct History {
    // Shared with the sinks of the emit that stored it: no deep copy per emit.
    events: VecDeque<Arc<Event>>,
    next_id: u64,
    evicted: u64,
}

/// The event bus: stores the newest `capacity` events and calls subscribers.
///
/// Emitting takes one mutex (the history); with subscribers it also takes a
/// read lock to copy the subscriber list (one reference-count increment).
/// Locks are recovered if poisoned, and a panicking sink is caught, so one
/// bad sink cannot break the bus for others.
pub struct EventBus {
    capacity: usize,
    clock: Arc<dyn Clock>,
    history: Mutex<History>,
    // Copy-on-write so emit can call sinks without holding this lock.
    sinks: RwLock<Sinks>,
    sink_count: AtomicUsize,
    next_subscription: AtomicU64,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("evicted", &self.evicted())
            .field("subscribers", &self.sink_count.load(Ordering::Acquire))
            .field("clock", &self.clock)
            .finish()
    }
}

/// Most history to allocate up front; a larger bus grows as events arrive.
const PREALLOCATE: usize = 1024;

impl EventBus {
    /// A bus that keeps the newest `capacity` events, timed by `clock`.
    /// A capacity of 0 is treated as 1, so [`EventBus::last`] always works.
    pub fn new(capacity: usize, clock: Arc<dyn Clock>) -> EventBus {
        let capacity = capacity.max(1);
        EventBus {
            capacity,
            clock,
            history: Mutex::new(History {
                events: VecDeque::with_capacity(capacity.min(PREALLOCATE)),
                next_id: 1,
                evicted: 0,
            }),
            sinks: RwLock::new(Arc::new([])),
            sink_count: AtomicUsize::new(0),
            next_subscription: AtomicU64::new(0),
        }
    }

    /// Records one event and calls the subscribers with it; returns its id.
    ///
    /// The time is read from the bus clock while the id is assigned, so ids
    /// and times increase together. When the history is full, the oldest
    /// event is dropped and counted in [`EventBus::evicted`].
    ///
    /// Subscribers see one emitter's events in emit order; events emitted
    /// concurrently on different threads may reach them out of id order.
    pub fn emit(
        &self,
        session: Option<&SessionId>,
        agent: Option<&AgentId>,
        trace: TraceId,
        parent: Option<EventId>,
        payload: EventPayload,
    ) -> EventId {
        let session = session.cloned();
        let agent = agent.cloned();
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let time = self.clock.now();
        let id = EventId(history.next_id);
        history.next_id += 1;
        let stored = Arc::new(Event {
            id,
            time,
            session,
            agent,
            trace,
            parent,
            payload,
        });
        let listened = self.sink_count.load(Ordering::Acquire) != 0;
        let event = listened.then(|| Arc::clone(&stored));
        let evicted = if history.events.len() >= self.capacity {
            history.evicted += 1;
            history.events.pop_front()
        } else {
            None
        };
        history.events.push_back(stored);
        drop(history);
        // The evicted event is freed outside the lock.
        drop(evicted);
        if let Some(event) = event {
            // Sinks run unlocked.
            let sinks = Arc::clone(&self.sinks.read().unwrap_or_else(|p| p.into_inner()));
            for (_, sink) in sinks.iter() {
                // A panicking sink must not stop the others or the emitter;
                // the panic hook has already reported it.
                let _ = panic::catch_unwind(AssertUnwindSafe(|| sink.on_event(&event)));
            }
        }
        id
    }

    /// Adds a subscriber; it receives every event emitted from now on.
    pub fn subscribe(&self, sink: impl EventSink + 'static) -> SubscriptionId {
        let id = SubscriptionId(self.next_subscription.fetch_add(1, Ordering::Relaxed));
        let mut sinks = self.sinks.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<_> = sinks.iter().cloned().collect();
        next.push((id, Arc::new(sink)));
        self.sink_count.store(next.len(), Ordering::Release);
        *sinks = next.into();
        id
    }

    /// Removes a subscriber; returns false if it was not subscribed. An emit
    /// already running on another thread may still deliver one event to it.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut sinks = self.sinks.write().unwrap_or_else(|p| p.into_inner());
        if !sinks.iter().any(|(s, _)| *s == id) {
            return false;
        }
        let next: Vec<_> = sinks.iter().filter(|(s, _)| *s != id).cloned().collect();
        self.sink_count.store(next.len(), Ordering::Release);
        *sinks = next.into();
        true
    }

    /// The stored events that match `q`, oldest first.
    pub fn query(&self, q: &EventQuery) -> Vec<Event> {
        let limit = q.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Vec::new();
        }
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        // Ids are consecutive, so `after` is an index, not a scan.
        let first_id = history.next_id - history.events.len() as u64;
        let start = q.after.map_or(0, |EventId(after)| {
            usize::try_from(after.saturating_add(1).saturating_sub(first_id)).unwrap_or(usize::MAX)
        });
        history
            .events
            .iter()
            .skip(start)
            .filter(|e| q.matches(e))
            .take(limit)
            .map(|e| Event::clone(e))
            .collect()
    }

    /// The newest stored event.
    pub fn last(&self) -> Option<Event> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.events.back().map(|e| Event::clone(e))
    }

    /// How many events are stored (at most [`EventBus::capacity`]).
    pub fn len(&self) -> usize {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .len()
    }

    /// True when no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many events were dropped from the history to respect the capacity.
    pub fn evicted(&self) -> u64 {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .evicted
    }

    /// The most events the history keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;
    use crate::clock::FakeClock;

    fn agent(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn session(s: &str) -> SessionId {
        SessionId::new(s).unwrap()
    }

    fn bus(capacity: usize) -> (EventBus, FakeClock) {
        let clock = FakeClock::new();
        (EventBus::new(capacity, Arc::new(clock.clone())), clock)
    }

    /// One payload of each kind; the match is exhaustive, so a new kind must add one.
    fn sample(kind: EventKind) -> EventPayload {
        let s = String::from;
        match kind {
            EventKind::SessionCreated => EventPayload::SessionCreated {
                creator: agent("did:ex:c"),
                max_participants: 10,
                max_duration: Duration::from_secs(300),
            },
            EventKind::SessionJoined => EventPayload::SessionJoined {
                ring: Ring::Standard,
                sigma: 0.8,
            },
            EventKind::SessionLeft => EventPayload::SessionLeft { reason: s("done") },
            EventKind::SessionActivated => EventPayload::SessionActivated { participants: 2 },
            EventKind::SessionTerminated => EventPayload::SessionTerminated {
                reason: TerminationReason::Expired,
            },
            EventKind::SessionArchived => EventPayload::SessionArchived,
            EventKind::RingAssigned => EventPayload::RingAssigned {
                ring: Ring::Sandbox,
                reason: s("score"),
            },
            EventKind::RingBreachDetected => EventPayload::RingBreachDetected {
                ring: Ring::Sandbox,
                capability: s("vfs-write"),
                function: s("write"),
            },
            EventKind::VfsWrite => EventPayload::VfsWrite {
                path: s("/a.txt"),
                op: s("append"),
                size: 12,
                before: None,
                after: Some([0xab; 32]),
            },
            EventKind::VfsDelete => EventPayload::VfsDelete {
                path: s("/a.txt"),
                before: Some([1; 32]),
            },
            EventKind::VfsRename => EventPayload::VfsRename {
                from: s("/a"),
                to: s("/b"),
                hash: Some([7; 32]),
            },
            EventKind::VfsAclChanged => EventPayload::VfsAclChanged {
                path: s("/a"),
                acl: s("owner=did:ex:a read=all write=owner"),
            },
            EventKind::VfsDirCreated => EventPayload::VfsDirCreated {
                path: s("/reports/2026"),
                created: 2,
            },
            EventKind::VfsSnapshot => EventPayload::VfsSnapshot {
                snapshot: 3,
                files: 4,
                bytes: 5,
            },
            EventKind::VfsRestore => EventPayload::VfsRestore {
                snapshot: 3,
                joined: vec![AgentId::new("did:ex:c").unwrap()],
                left: Vec::new(),
                rings: s("did:ex:a 2->1"),
                scores: s("did:ex:a 0.7->0.9"),
            },
            EventKind::VfsConflict => EventPayload::VfsConflict {
                path: s("/a"),
                reason: s("stale"),
            },
            EventKind::StateWrite => EventPayload::StateWrite {
                key: s("k"),
                version: 7,
            },
            EventKind::StateDelete => EventPayload::StateDelete {
                key: s("k"),
                version: 8,
            },
            EventKind::StateConflict => EventPayload::StateConflict {
                key: s("k"),
                reason: s("stale"),
            },
            EventKind::LockAcquired => EventPayload::LockAcquired {
                resource: s("/a"),
                mode: s("exclusive"),
            },
            EventKind::LockReleased => EventPayload::LockReleased { resource: s("/a") },
            EventKind::LockDeadlock => EventPayload::LockDeadlock {
                resource: s("/a"),
                cycle: vec![agent("did:ex:a"), agent("did:ex:b")],
            },
            EventKind::SecurityAgentKilled => EventPayload::SecurityAgentKilled {
                reason: s("ring_breach"),
            },
            EventKind::VfsQuotaExceeded => EventPayload::VfsQuotaExceeded {
                path: s("/a"),
                reason: s("total bytes"),
            },
            EventKind::AuditDeltaCaptured => EventPayload::AuditDeltaCaptured {
                seq: 4,
                hash: [9; 32],
            },
            EventKind::AuditCommitted => EventPayload::AuditCommitted {
                tree_size: 5,
                root: [8; 32],
                index: 0,
            },
        }
    }

    fn simple(bus: &EventBus, trace: u128) -> EventId {
        bus.emit(
            None,
            None,
            TraceId(trace),
            None,
            sample(EventKind::SessionArchived),
        )
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.id.0).collect()
    }

    #[test]
    fn every_kind_has_a_unique_name_that_round_trips() {
        let names: HashSet<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        let kinds: HashSet<_> = EventKind::ALL.into_iter().collect();
        assert_eq!(kinds.len(), EventKind::ALL.len(), "ALL lists no kind twice");
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_name(k.name()), Some(k), "{k:?}");
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(
            EventKind::from_name("session.joined"),
            Some(EventKind::SessionJoined)
        );
        assert_eq!(EventKind::from_name("Session.Joined"), None);
        assert_eq!(EventKind::from_name("session"), None);
        assert_eq!(EventKind::from_name(""), None);
    }

    #[test]
    fn names_follow_the_semantics_taxonomy() {
        for k in EventKind::ALL {
            let (family, what) = k.name().split_once('.').unwrap();
            assert!(
                [
                    "session", "ring", "vfs", "state", "lock", "security", "audit"
                ]
                .contains(&family),
                "{k:?}"
            );
            assert!(
                what.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{k:?}"
            );
        }
        assert_eq!(EventKind::RingBreachDetected.name(), "ring.breach_detected");
        assert_eq!(
            EventKind::SecurityAgentKilled.name(),
            "security.agent_killed"
        );
        assert_eq!(EventKind::VfsAclChanged.name(), "vfs.acl_changed");
    }

    #[test]
    fn payload_kind_matches_for_every_variant() {
        for k in EventKind::ALL {
            assert_eq!(sample(k).kind(), k);
        }
    }

    #[test]
    fn fields_show_the_payload_without_the_kind() {
        assert_eq!(EventPayload::SessionArchived.fields().to_string(), "");
        let joined = EventPayload::SessionJoined {
            ring: Ring::Standard,
            sigma: 0.75,
        };
        assert_eq!(joined.fields().to_string(), " ring=2 sigma=0.75");
    }

    #[test]
    fn ids_start_at_one_and_increase() {
        let (bus, _) = bus(8);
        assert!(bus.is_empty() && bus.last().is_none());
        assert_eq!(simple(&bus, 1), EventId(1));
        assert_eq!(simple(&bus, 1), EventId(2));
        assert_eq!(bus.last().map(|e| e.id), Some(EventId(2)));
        assert_eq!(bus.len(), 2);
        assert_eq!(EventId(12).to_string(), "#12");
    }

    #[test]
    fn bounded_history_evicts_the_oldest_and_counts_evictions() {
        let (bus, _) = bus(3);
        for _ in 0..5 {
            simple(&bus, 1);
        }
        assert_eq!(bus.len(), 3);
        assert_eq!(bus.capacity(), 3);
        assert_eq!(bus.evicted(), 2);
        assert_eq!(ids(&bus.query(&EventQuery::default())), [3, 4, 5]);
        assert_eq!(bus.last().map(|e| e.id), Some(EventId(5)));
    }

    #[test]
    fn zero_capacity_is_clamped_to_one() {
        let (bus, _) = bus(0);
        assert_eq!(bus.capacity(), 1);
        simple(&bus, 1);
        simple(&bus, 1);
        assert_eq!(bus.len(), 1);
        assert_eq!(bus.evicted(), 1);
        assert_eq!(bus.last().map(|e| e.id), Some(EventId(2)));
    }

    #[test]
    fn time_comes_from_the_injected_clock() {
        let (bus, clock) = bus(8);
        simple(&bus, 1);
        clock.advance(Duration::from_millis(5));
        simple(&bus, 1);
        clock.advance(Duration::from_secs(2));
        simple(&bus, 1);
        let times: Vec<_> = bus
            .query(&EventQuery::default())
            .iter()
            .map(|e| e.time)
            .collect();
        assert_eq!(
            times,
            [
                Duration::ZERO,
                Duration::from_millis(5),
                Duration::from_millis(2005)
            ]
        );
    }

    /// Events over two sessions, two agents and two traces; returns the bus.
    fn populated() -> EventBus {
        let (bus, _) = bus(100);
        let (s1, s2) = (session("s-1"), session("s-2"));
        let (a, b) = (agent("did:ex:a"), agent("did:ex:b"));
        let rows: [(&SessionId, Option<&AgentId>, u128, EventKind); 6] = [
            (&s1, None, 1, EventKind::SessionCreated),        // 1
            (&s1, Some(&a), 1, EventKind::SessionJoined),     // 2
            (&s2, Some(&b), 2, EventKind::SessionJoined),     // 3
            (&s1, Some(&a), 1, EventKind::VfsWrite),          // 4
            (&s2, Some(&a), 2, EventKind::SessionJoined),     // 5
            (&s1, Some(&a), 3, EventKind::SessionTerminated), // 6
        ];
        for (s, ag, t, k) in rows {
            bus.emit(Some(s), ag, TraceId(t), None, sample(k));
        }
        bus
    }

    #[test]
    fn query_by_each_condition() {
        let bus = populated();
        let q = EventQuery::default;
        assert_eq!(ids(&bus.query(&q())), [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            ids(&bus.query(&q().kind(EventKind::SessionJoined))),
            [2, 3, 5]
        );
        assert_eq!(ids(&bus.query(&q().session(session("s-2")))), [3, 5]);
        assert_eq!(ids(&bus.query(&q().agent(agent("did:ex:a")))), [2, 4, 5, 6]);
        assert_eq!(ids(&bus.query(&q().trace(TraceId(1)))), [1, 2, 4]);
        assert_eq!(ids(&bus.query(&q().after(EventId(4)))), [5, 6]);
        assert_eq!(ids(&bus.query(&q().after(EventId(6)))), Vec::<u64>::new());
        assert_eq!(
            ids(&bus.query(&q().after(EventId(u64::MAX)))),
            Vec::<u64>::new()
        );
        assert_eq!(ids(&bus.query(&q().limit(2))), [1, 2]);
        assert_eq!(ids(&bus.query(&q().limit(0))), Vec::<u64>::new());
        assert_eq!(
            ids(&bus.query(&q().kind(EventKind::LockDeadlock))),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn query_conditions_combine() {
        let bus = populated();
        let q = EventQuery::default;
        let joined_by_a = q().kind(EventKind::SessionJoined).agent(agent("did:ex:a"));
        assert_eq!(ids(&bus.query(&joined_by_a)), [2, 5]);
        assert_eq!(
            ids(&bus.query(&joined_by_a.clone().session(session("s-1")))),
            [2]
        );
        assert_eq!(ids(&bus.query(&joined_by_a.after(EventId(2)))), [5]);
        assert_eq!(
            ids(&bus.query(
                &q().session(session("s-1"))
                    .trace(TraceId(1))
                    .after(EventId(1))
                    .limit(1)
            )),
            [2]
        );
        // Paging: `after` the last id seen, `limit` per page.
        let page =
            |after| ids(&bus.query(&q().agent(agent("did:ex:a")).after(EventId(after)).limit(2)));
        assert_eq!(page(0), [2, 4]);
        assert_eq!(page(4), [5, 6]);
        assert_eq!(page(6), Vec::<u64>::new());
    }

    #[test]
    fn after_an_evicted_id_starts_at_the_oldest_stored() {
        let (bus, _) = bus(3);
        for _ in 0..6 {
            simple(&bus, 1);
        }
        assert_eq!(
            ids(&bus.query(&EventQuery::default().after(EventId(1)))),
            [4, 5, 6]
        );
        assert_eq!(
            ids(&bus.query(&EventQuery::default().after(EventId(4)))),
            [5, 6]
        );
    }

    fn recorder() -> (Arc<Mutex<Vec<u64>>>, impl EventSink + 'static) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        (seen, move |e: &Event| sink.lock().unwrap().push(e.id.0))
    }

    #[test]
    fn sinks_receive_events_in_order_and_unsubscribe_stops_them() {
        let (bus, _) = bus(2);
        let (first, sink) = recorder();
        let first_id = bus.subscribe(sink);
        simple(&bus, 1);
        let (second, sink) = recorder();
        let second_id = bus.subscribe(sink);
        for _ in 0..3 {
            simple(&bus, 1);
        }
        assert!(bus.unsubscribe(first_id));
        assert!(!bus.unsubscribe(first_id), "already gone");
        simple(&bus, 1);
        assert_eq!(*first.lock().unwrap(), [1, 2, 3, 4]);
        assert_eq!(
            *second.lock().unwrap(),
            [2, 3, 4, 5],
            "sinks see evicted events too"
        );
        assert!(bus.unsubscribe(second_id));
        simple(&bus, 1);
        assert_eq!(second.lock().unwrap().len(), 4);
    }

    #[test]
    fn sinks_run_after_storing_and_outside_the_locks() {
        let (bus, _) = bus(8);
        let bus = Arc::new(bus);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (b, s) = (Arc::downgrade(&bus), Arc::clone(&seen));
        // Querying, emitting and unsubscribing from inside a sink would deadlock
        // if emit held a bus lock while calling it.
        let id = bus.subscribe(move |e: &Event| {
            let Some(bus) = b.upgrade() else { return };
            s.lock().unwrap().push((e.id, bus.last().map(|l| l.id)));
            if e.kind() == EventKind::SessionArchived {
                bus.emit(
                    None,
                    None,
                    e.trace,
                    Some(e.id),
                    sample(EventKind::SessionLeft),
                );
            }
        });
        simple(&bus, 9);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (EventId(1), Some(EventId(1))),
                (EventId(2), Some(EventId(2)))
            ]
        );
        assert_eq!(bus.last().and_then(|e| e.parent), Some(EventId(1)));
        let b = Arc::downgrade(&bus);
        let self_id = Arc::new(Mutex::new(None));
        let sid = Arc::clone(&self_id);
        let own = bus.subscribe(move |_: &Event| {
            if let (Some(bus), Some(id)) = (b.upgrade(), *sid.lock().unwrap()) {
                bus.unsubscribe(id);
            }
        });
        *self_id.lock().unwrap() = Some(own);
        assert!(bus.unsubscribe(id));
        bus.emit(None, None, TraceId(1), None, sample(EventKind::SessionLeft));
        assert!(!bus.unsubscribe(own), "the sink unsubscribed itself");
    }

    #[test]
    fn a_panicking_sink_does_not_break_the_bus_or_other_sinks() {
        let (bus, _) = bus(8);
        bus.subscribe(|e: &Event| {
            if e.id.0 == 1 {
                panic!("sink failure (expected in this test)");
            }
        });
        let (seen, sink) = recorder();
        bus.subscribe(sink);
        simple(&bus, 1);
        simple(&bus, 1);
        assert_eq!(*seen.lock().unwrap(), [1, 2]);
        assert_eq!(bus.len(), 2);
    }

    #[test]
    fn emits_from_many_threads_get_unique_ids() {
        let (bus, _) = bus(10_000);
        let (seen, sink) = recorder();
        bus.subscribe(sink);
        std::thread::scope(|s| {
            for t in 0..4 {
                let bus = &bus;
                s.spawn(move || {
                    let mine: Vec<_> = (0..250).map(|_| simple(bus, t).0).collect();
                    assert!(mine.windows(2).all(|w| w[0] < w[1]));
                });
            }
        });
        assert_eq!(
            ids(&bus.query(&EventQuery::default())),
            (1..=1000).collect::<Vec<_>>()
        );
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
    }

    #[test]
    fn display_is_one_line_with_name_and_fields() {
        let (bus, clock) = bus(8);
        let (s, a) = (session("s-1"), agent("did:ex:a"));
        clock.advance(Duration::from_micros(1234));
        let trace = TraceId(0xabc);
        let id = bus.emit(
            Some(&s),
            Some(&a),
            trace,
            None,
            sample(EventKind::SessionJoined),
        );
        let line = bus.last().unwrap().to_string();
        assert_eq!(
            line,
            format!(
                "#1 +1.234ms session.joined session=s-1 agent=did:ex:a ring=2 sigma=0.80 trace={trace}"
            )
        );
        clock.advance(Duration::from_millis(2500));
        bus.emit(
            Some(&s),
            Some(&a),
            trace,
            Some(id),
            sample(EventKind::VfsWrite),
        );
        let line = bus.last().unwrap().to_string();
        assert_eq!(
            line,
            format!(
                "#2 +2.501s vfs.write session=s-1 agent=did:ex:a path=/a.txt op=append size=12 \
                 before=- after=abababab parent=#1 trace={trace}"
            )
        );
    }

    #[test]
    fn display_covers_every_kind_and_escapes_agent_text() {
        let (bus, _) = bus(64);
        for k in EventKind::ALL {
            bus.emit(None, None, TraceId(1), None, sample(k));
            let line = bus.last().unwrap().to_string();
            assert!(line.contains(&format!(" {} ", k.name())), "{line}");
            assert!(
                !line.contains("session=") && !line.contains("agent="),
                "{line}"
            );
        }
        let lines: Vec<_> = bus
            .query(&EventQuery::default())
            .iter()
            .map(|e| e.to_string())
            .collect();
        let joined = lines.join("\n");
        for needle in [
            "creator=did:ex:c max_participants=10 max_duration=300s",
            "reason=expired",
            "capability=vfs-write function=write",
            "path=/a.txt before=01010101",
            "from=/a to=/b",
            "snapshot=3 files=4 bytes=5",
            "key=k version=8",
            "resource=/a mode=exclusive",
            "cycle=did:ex:a,did:ex:b",
            "reason=ring_breach",
        ] {
            assert!(joined.contains(needle), "{needle} missing from\n{joined}");
        }
        let forged = EventPayload::VfsConflict {
            path: String::from("/a b\n#9 +0.000ms security.agent_killed"),
            reason: String::new(),
        };
        bus.emit(None, None, TraceId(1), None, forged);
        let line = bus.last().unwrap().to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(r#"path="/a b\n#9 +0.000ms security.agent_killed" reason="""#),
            "{line}"
        );
    }

    #[test]
    fn bus_is_send_sync_and_debug() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EventBus>();
        let (bus, _) = bus(4);
        simple(&bus, 1);
        let dbg = format!("{bus:?}");
        assert!(
            dbg.contains("capacity: 4") && dbg.contains("len: 1"),
            "{dbg}"
        );
    }
}
