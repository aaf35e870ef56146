//! Typed events, one per state change, on a bus with bounded history.
//!
//! Every state change emits one [`Event`]: an id from a counter, the bus
//! clock's time (an event that follows from another while it is delivered
//! may take its cause's, [`EventBus::emit_following`]), the session and
//! agent it concerns, the causal trace id, an optional parent event and a
//! typed [`EventPayload`]. The [`EventBus`] keeps the newest `capacity`
//! events for [`EventBus::query`] and hands each event to the subscribers
//! that want its kind ([`EventSink`]) synchronously, right after storing it.
//! Kinds use the dotted names listed in `docs/governance.md`, "Events" (`session.joined`).
//!
//! Adding a kind is one declaration in the `events!` list below: its doc,
//! variant, dotted name and typed fields. [`EventKind`], [`EventPayload`],
//! [`EventPayload::kind`], [`EventKind::field_names`] and
//! [`EventPayload::for_each_field`] are generated from it, and the log line
//! and the audit log's canonical encoding are both derived from
//! `for_each_field`, so no other code has to learn about the new kind.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// Defines every event kind from one list: [`EventKind`] (with `ALL`, both
/// directions of its names and its field names), [`EventPayload`],
/// [`EventPayload::kind`] and [`EventPayload::for_each_field`].
///
/// Each entry is one kind: its doc, variant, dotted name and, unless it has
/// none, its fields in braces. The fields are handed out in the order they
/// are declared here, and that order is part of the audit log's canonical
/// encoding (`host/audit/FORMAT.md`): never reorder or retype the fields of
/// an existing kind. A field's type must implement [`AsField`].
macro_rules! events {
    ($(
        $(#[$doc:meta])*
        $variant:ident => $name:literal $({
            $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)?
        })?,
    )+) => {
        /// What changed: the type of an [`Event`], named as in `docs/governance.md` ("Events").
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum EventKind {
            $( $(#[$doc])* $variant, )+
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: [EventKind; [$($name),+].len()] = [$(EventKind::$variant),+];

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

            /// The names of the kind's payload fields, in the order
            /// [`EventPayload::for_each_field`] hands them out.
            pub const fn field_names(self) -> &'static [&'static str] {
                match self {
                    $( EventKind::$variant => &[$($(stringify!($field)),*)?], )+
                }
            }
        }

        /// The typed data of an event; each variant belongs to the [`EventKind`]
        /// of the same name ([`EventPayload::kind`]).
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventPayload {
            $(
                $(#[$doc])*
                $variant $({ $( $(#[$fdoc])* $field: $ty, )* })?,
            )+
        }

        impl EventPayload {
            /// The kind of event this payload belongs to.
            pub const fn kind(&self) -> EventKind {
                match self {
                    $( EventPayload::$variant { .. } => EventKind::$variant, )+
                }
            }

            /// Calls `f` with each field's name and value, in declaration order.
            ///
            /// This is the one list of a payload's fields: the log form
            /// ([`EventPayload::fields`]) and the audit log's canonical encoding
            /// are both derived from it, so they cannot drift apart.
            pub fn for_each_field(&self, mut f: impl FnMut(&'static str, Field<'_>)) {
                match self {
                    $(
                        EventPayload::$variant { $($($field),*)? } => {
                            $($( f(stringify!($field), AsField::as_field($field)); )*)?
                        }
                    )+
                }
            }
        }
    };
}

events! {
    /// `session.created`: a session was created.
    SessionCreated => "session.created" {
        /// The agent that created it.
        creator: AgentId,
        /// Its participant limit.
        max_participants: u32,
        /// Its maximum duration.
        max_duration: Duration,
    },
    /// `session.joined`: the event's agent joined the event's session.
    SessionJoined => "session.joined" {
        /// The ring it joined in.
        ring: Ring,
        /// Its trust score σ at join time.
        sigma: f64,
    },
    /// `session.left`: the event's agent left the event's session.
    SessionLeft => "session.left" {
        /// Why.
        reason: String,
    },
    /// `session.activated`: the session started running.
    SessionActivated => "session.activated" {
        /// How many participants it started with.
        participants: u32,
    },
    /// `session.terminated`: the session ended.
    SessionTerminated => "session.terminated" {
        /// Why.
        reason: TerminationReason,
    },
    /// `session.archived`: the terminated session was archived.
    SessionArchived => "session.archived",
    /// `ring.assigned`: the event's agent was placed in a ring.
    RingAssigned => "ring.assigned" {
        /// The ring.
        ring: Ring,
        /// Why this ring.
        reason: String,
    },
    /// `ring.breach_detected`: the event's agent called a function its ring
    /// does not grant.
    RingBreachDetected => "ring.breach_detected" {
        /// The agent's ring.
        ring: Ring,
        /// The capability (WIT interface) it lacked.
        capability: String,
        /// The function it called.
        function: String,
    },
    /// `vfs.write`: a file was written, appended to or truncated.
    VfsWrite => "vfs.write" {
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
    /// `vfs.delete`: a file was deleted.
    VfsDelete => "vfs.delete" {
        /// The file.
        path: String,
        /// Its content hash before deletion.
        before: Option<[u8; 32]>,
    },
    /// `vfs.rename`: a file was renamed.
    VfsRename => "vfs.rename" {
        /// The old path.
        from: String,
        /// The new path.
        to: String,
        /// The content hash of the file (unchanged by the rename), if known.
        hash: Option<[u8; 32]>,
    },
    /// `vfs.acl_changed`: a file's access-control list changed.
    VfsAclChanged => "vfs.acl_changed" {
        /// The file.
        path: String,
        /// The new list, as `owner=… read=… write=…`.
        acl: String,
    },
    /// `vfs.dir_created`: a directory was created, with the parents it lacked.
    VfsDirCreated => "vfs.dir_created" {
        /// The directory.
        path: String,
        /// How many directories were created (it and its missing parents).
        created: u64,
    },
    /// `vfs.snapshot`: the file space was snapshotted.
    VfsSnapshot => "vfs.snapshot" {
        /// The snapshot's number.
        snapshot: u64,
        /// Files in it.
        files: u64,
        /// Bytes in it.
        bytes: u64,
    },
    /// `vfs.restore`: the file space was restored from a snapshot. The
    /// participants are not restored: the other fields say how they differ
    /// from the ones the snapshot recorded.
    VfsRestore => "vfs.restore" {
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
    /// `vfs.conflict`: a file change was refused because of a conflict.
    VfsConflict => "vfs.conflict" {
        /// The file.
        path: String,
        /// What conflicted.
        reason: String,
    },
    /// `vfs.quota_exceeded`: a file change was refused because it would
    /// exceed a quota.
    VfsQuotaExceeded => "vfs.quota_exceeded" {
        /// The file.
        path: String,
        /// Which quota, and by how much.
        reason: String,
    },
    /// `state.write`: a shared-state key was written.
    StateWrite => "state.write" {
        /// The key.
        key: String,
        /// Its new version.
        version: u64,
    },
    /// `state.delete`: a shared-state key was deleted.
    StateDelete => "state.delete" {
        /// The key.
        key: String,
        /// The version the deletion created.
        version: u64,
    },
    /// `state.conflict`: a shared-state change was refused because of a conflict.
    StateConflict => "state.conflict" {
        /// The key.
        key: String,
        /// What conflicted.
        reason: String,
    },
    /// `lock.acquired`: an intent lock was granted.
    LockAcquired => "lock.acquired" {
        /// The locked path or key.
        resource: String,
        /// The lock mode.
        mode: String,
    },
    /// `lock.released`: an intent lock was released.
    LockReleased => "lock.released" {
        /// The locked path or key.
        resource: String,
    },
    /// `lock.deadlock`: a lock request was refused because it would have
    /// closed a wait cycle.
    LockDeadlock => "lock.deadlock" {
        /// The requested path or key.
        resource: String,
        /// The agents in the cycle, in wait order.
        cycle: Vec<AgentId>,
    },
    /// `security.agent_killed`: the event's agent was killed.
    SecurityAgentKilled => "security.agent_killed" {
        /// Why.
        reason: String,
    },
    /// `security.saga_handoff`: a saga step of the event's agent (killed, or
    /// gone) is run by its registered substitute instead.
    SecuritySagaHandoff => "security.saga_handoff" {
        /// The saga.
        saga: String,
        /// The step.
        step: String,
        /// The agent that runs it now.
        substitute: AgentId,
    },
    /// `audit.delta_captured`: the event named as this event's parent was
    /// recorded in its session's audit log.
    AuditDeltaCaptured => "audit.delta_captured" {
        /// The delta's sequence number in its session's log (0 for the first).
        seq: u64,
        /// The delta's hash (its Merkle leaf hash, which the next delta names as parent).
        hash: [u8; 32],
    },
    /// `audit.committed`: the session's audit log was sealed by a commitment.
    AuditCommitted => "audit.committed" {
        /// How many deltas the commitment covers.
        tree_size: u64,
        /// The Merkle root over them.
        root: [u8; 32],
        /// The commitment's index in the commitment log.
        index: u64,
    },
    /// `ring.elevated`: the event's agent was granted a more privileged ring
    /// for a limited time.
    RingElevated => "ring.elevated" {
        /// The ring it held before.
        from: Ring,
        /// The ring granted.
        to: Ring,
        /// How long the grant lasts.
        ttl: Duration,
        /// The agent's stated reason for asking.
        justification: String,
        /// Who vouched for it: empty when nobody, `operator`, or the
        /// sponsoring agent's id.
        sponsor: String,
    },
    /// `ring.elevation_denied`: the event's agent asked for a more privileged
    /// ring and was refused.
    RingElevationDenied => "ring.elevation_denied" {
        /// The ring it asked for.
        target: Ring,
        /// Why it was refused.
        reason: String,
    },
    /// `ring.elevation_expired`: the event's agent's elevation reached its
    /// TTL and ended.
    RingElevationExpired => "ring.elevation_expired" {
        /// The elevated ring it held.
        ring: Ring,
        /// The ring it went back to.
        back_to: Ring,
    },
    /// `ring.elevation_revoked`: the event's agent's elevation was ended
    /// before its TTL.
    RingElevationRevoked => "ring.elevation_revoked" {
        /// The elevated ring it held.
        ring: Ring,
        /// The ring it went back to.
        back_to: Ring,
        /// Why it was revoked.
        reason: String,
    },
    /// `ring.demoted`: the event's agent was moved to a less privileged ring.
    RingDemoted => "ring.demoted" {
        /// The ring it held.
        from: Ring,
        /// The ring it holds now.
        to: Ring,
        /// Why.
        reason: String,
    },
    /// `security.rate_limited`: a call by the event's agent was refused by its
    /// rate limit.
    SecurityRateLimited => "security.rate_limited" {
        /// The capability (WIT interface) called.
        capability: String,
        /// The function called.
        function: String,
        /// The call's rate class (`change` or `read`).
        class: String,
        /// How long until a call of this class can pass again.
        retry_after: Duration,
        /// How many calls the limit has refused, this one included.
        refused: u64,
    },
    /// `security.breaker_tripped`: the breach detector's circuit breaker
    /// opened for the event's agent.
    SecurityBreakerTripped => "security.breaker_tripped" {
        /// The breach severity that tripped it (`low`, `medium`, `high`, `critical`).
        severity: String,
        /// Out-of-ring calls in the detector's window, the tripping one included.
        calls: u64,
        /// What the breach policy did about it.
        action: String,
    },
    /// `liability.quarantine_entered`: the event's agent was quarantined.
    LiabilityQuarantineEntered => "liability.quarantine_entered" {
        /// Why.
        reason: String,
        /// How long the quarantine lasts.
        duration: Duration,
    },
    /// `liability.quarantine_released`: the event's agent left quarantine.
    LiabilityQuarantineReleased => "liability.quarantine_released" {
        /// Why (its time ran out, or it was released early).
        reason: String,
    },
    /// `liability.vouch_created`: the event's agent (the voucher) bonded part
    /// of its trust for another participant.
    LiabilityVouchCreated => "liability.vouch_created" {
        /// The agent vouched for.
        vouchee: AgentId,
        /// The vouch's id in its session.
        vouch: u64,
        /// The bonded amount (the voucher's σ × pct).
        bond: f64,
        /// The vouchee's effective score after the vouch.
        effective: f64,
    },
    /// `liability.vouch_released`: a vouch by the event's agent (the voucher)
    /// ended; its bond no longer counts.
    LiabilityVouchReleased => "liability.vouch_released" {
        /// The agent it backed.
        vouchee: AgentId,
        /// The vouch's id in its session.
        vouch: u64,
        /// Why (`released`, `slashed`, `left`).
        reason: String,
    },
    /// `liability.slash_executed`: the event's agent's σ was cut by a slash
    /// (it was slashed, or it vouched for an agent that was).
    LiabilitySlashExecuted => "liability.slash_executed" {
        /// `slashed` (σ → 0) or `voucher_penalty` (σ × (1 − ω), floored).
        cause: String,
        /// σ before.
        before: f64,
        /// σ after.
        after: f64,
        /// Hops from the agent the slash started at (0: that agent).
        hop: u32,
        /// Why the slash was executed.
        reason: String,
    },
    /// `liability.fault_attributed`: the event's agent was given a share of
    /// the blame for a failed or escalated saga.
    LiabilityFaultAttributed => "liability.fault_attributed" {
        /// The saga.
        saga: String,
        /// Its share of the blame, in (0, 1].
        share: f64,
        /// `exact`, `sampled` or `heuristic`.
        method: String,
    },
    /// `agent.spawned`: the event's agent started a child agent.
    AgentSpawned => "agent.spawned" {
        /// The child's id.
        child: AgentId,
        /// The ring the child runs in.
        ring: Ring,
        /// The child's component, as the spawner named it.
        component: String,
        /// How deep the child is in its spawn tree (its parent's depth plus one).
        depth: u64,
    },
    /// `action.invoked`: the event's agent ran a host-registered reversible
    /// action; its undo data is kept in the call's change journal.
    ActionInvoked => "action.invoked" {
        /// The action's registered name.
        action: String,
        /// How completely it can be undone (`full` or `partial`).
        reversibility: String,
        /// How long after the invocation it can still be undone, in
        /// milliseconds; 0 when there is no limit (a window is never 0).
        undo_window_ms: u64,
    },
    /// `effect.invoked`: the event's agent ran a host-registered effect,
    /// which cannot be undone.
    EffectInvoked => "effect.invoked" {
        /// The effect's registered name.
        effect: String,
    },
    /// `net.request`: the event's agent sent an outbound HTTP request through
    /// the `net` capability, or had one refused by the allow-list or a limit.
    /// Secrets the host injected are never part of it.
    NetRequest => "net.request" {
        /// The request method (`GET`).
        method: String,
        /// The URL as the guest gave it (scheme, authority, path and query).
        url: String,
        /// The response status; 0 when there was no response.
        status: u64,
        /// `ok`, or why the request failed or was refused.
        outcome: String,
        /// Bytes of the request body sent.
        request_bytes: u64,
        /// Bytes of the response body received.
        response_bytes: u64,
        /// SHA-256 of the request body, hex.
        request_hash: String,
        /// SHA-256 of the response body, hex (of nothing when there was none).
        response_hash: String,
        /// The address connected to (`127.0.0.1:8080`); empty before a connection.
        address: String,
        /// How long it took, in milliseconds.
        elapsed_ms: u64,
    },
    /// `operator.request`: an operator of the HTTP API (`ahv serve`) asked
    /// for an operation on the event's session; recorded before it runs, so
    /// the audit log names who asked even when the operation is refused.
    OperatorRequest => "operator.request" {
        /// The caller's name in the server's tokens file.
        caller: String,
        /// The caller's role (admin, operator).
        role: String,
        /// The operation, as `METHOD route` with the target (agent, vouch).
        operation: String,
    },
    /// `saga.created`: a saga was defined and is about to run.
    SagaCreated => "saga.created" {
        /// The saga's id.
        saga: String,
        /// Its definition's name.
        name: String,
        /// How many steps it has.
        steps: u64,
    },
    /// `saga.step_started`: a step began an attempt.
    SagaStepStarted => "saga.step_started" {
        /// The saga's id.
        saga: String,
        /// The step's id.
        step: String,
        /// The attempt, from 1.
        attempt: u64,
    },
    /// `saga.step_committed`: a step's attempt succeeded.
    SagaStepCommitted => "saga.step_committed" {
        /// The saga's id.
        saga: String,
        /// The step's id.
        step: String,
        /// The attempt that succeeded.
        attempt: u64,
        /// How many governed changes the step made (its journal's length).
        changes: u64,
    },
    /// `saga.step_failed`: a step's attempt failed.
    SagaStepFailed => "saga.step_failed" {
        /// The saga's id.
        saga: String,
        /// The step's id.
        step: String,
        /// The attempt that failed.
        attempt: u64,
        /// Why.
        error: String,
        /// When the next attempt starts (zero when there is none).
        retry_in: Duration,
    },
    /// `saga.compensating`: the saga began undoing its committed steps.
    SagaCompensating => "saga.compensating" {
        /// The saga's id.
        saga: String,
        /// Why.
        reason: String,
    },
    /// `saga.step_compensated`: a committed step's changes were undone.
    SagaStepCompensated => "saga.step_compensated" {
        /// The saga's id.
        saga: String,
        /// The step's id.
        step: String,
    },
    /// `saga.compensation_failed`: a step's changes could not all be undone.
    SagaCompensationFailed => "saga.compensation_failed" {
        /// The saga's id.
        saga: String,
        /// The step's id.
        step: String,
        /// Why.
        error: String,
    },
    /// `saga.completed`: every step committed.
    SagaCompleted => "saga.completed" {
        /// The saga's id.
        saga: String,
        /// How many steps ran.
        steps: u64,
    },
    /// `saga.failed`: the saga ended without completing (compensated, or
    /// failed before anything needed compensation).
    SagaFailed => "saga.failed" {
        /// The saga's id.
        saga: String,
        /// Why.
        reason: String,
    },
    /// `saga.escalated`: compensation failed and liability takes over.
    SagaEscalated => "saga.escalated" {
        /// The saga's id.
        saga: String,
        /// How many compensations failed.
        failures: u64,
    },
    /// `saga.fanout_started`: a fan-out group started its branches.
    SagaFanoutStarted => "saga.fanout_started" {
        /// The saga's id.
        saga: String,
        /// The group's id.
        group: String,
        /// Its policy (`all`, `majority`, `any`).
        policy: String,
        /// How many branches it runs.
        branches: u64,
    },
    /// `saga.fanout_resolved`: a fan-out group's policy was decided.
    SagaFanoutResolved => "saga.fanout_resolved" {
        /// The saga's id.
        saga: String,
        /// The group's id.
        group: String,
        /// Its policy.
        policy: String,
        /// Branches that succeeded.
        succeeded: u64,
        /// Branches that failed.
        failed: u64,
        /// Branches cancelled once the outcome was known.
        cancelled: u64,
    },
    /// `saga.checkpoint_saved`: a step's checkpoint was recorded.
    SagaCheckpointSaved => "saga.checkpoint_saved" {
        /// The saga's id.
        saga: String,
        /// The step's id.
        step: String,
        /// `sha256(goal:step_id)`.
        hash: [u8; 32],
    },
    /// `saga.step_skipped`: a step did not run: its checkpoint from the
    /// saga's previous run is still valid (its output and undo data are kept).
    SagaStepSkipped => "saga.step_skipped" {
        /// The saga's id.
        saga: String,
        /// The step's id.
        step: String,
        /// Its checkpoint, `sha256(goal:step_id)`.
        hash: [u8; 32],
    },
    /// `vfs.undone`: a file change was undone from its undo record (a saga
    /// compensating, or a cancelled step's changes taken back).
    VfsUndone => "vfs.undone" {
        /// The file (the source, for a rename).
        path: String,
        /// The operation undone: `write`, `append`, `delete`, `rename`, …
        op: String,
        /// The undo record it used.
        record: u64,
    },
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

/// A type that can be a payload field: how [`EventPayload::for_each_field`]
/// hands its value out. A new field type needs one impl here, which fixes its
/// log form and its canonical encoding.
trait AsField {
    /// The value as a [`Field`], borrowing from `self`.
    fn as_field(&self) -> Field<'_>;
}

impl AsField for AgentId {
    fn as_field(&self) -> Field<'_> {
        Field::Text(self.as_str())
    }
}

impl AsField for String {
    fn as_field(&self) -> Field<'_> {
        Field::Text(self)
    }
}

impl AsField for u32 {
    fn as_field(&self) -> Field<'_> {
        Field::Uint(u64::from(*self))
    }
}

impl AsField for u64 {
    fn as_field(&self) -> Field<'_> {
        Field::Uint(*self)
    }
}

impl AsField for f64 {
    fn as_field(&self) -> Field<'_> {
        Field::Real(*self)
    }
}

impl AsField for Ring {
    fn as_field(&self) -> Field<'_> {
        Field::Ring(*self)
    }
}

impl AsField for Duration {
    fn as_field(&self) -> Field<'_> {
        Field::Duration(*self)
    }
}

impl AsField for Option<[u8; 32]> {
    fn as_field(&self) -> Field<'_> {
        Field::Hash(self.as_ref())
    }
}

impl AsField for [u8; 32] {
    fn as_field(&self) -> Field<'_> {
        Field::Hash(Some(self))
    }
}

impl AsField for Vec<AgentId> {
    fn as_field(&self) -> Field<'_> {
        Field::Agents(self)
    }
}

impl AsField for TerminationReason {
    fn as_field(&self) -> Field<'_> {
        Field::Text(match self {
            TerminationReason::Requested => "requested",
            TerminationReason::Expired => "expired",
        })
    }
}

impl EventPayload {
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

/// A subscriber: called with every event emitted after it subscribed, of
/// the kinds it wants ([`EventSink::wants`]: all, by default).
///
/// Sinks run synchronously on the emitting thread, after the event is stored
/// and with no bus lock held, so they may query the bus, emit, subscribe or
/// unsubscribe. Keep them short: they are on the emitter's hot path.
pub trait EventSink: Send + Sync {
    /// Receives one event.
    fn on_event(&self, event: &Event);

    /// Receives one event from `bus`, the bus that emitted it: what the bus
    /// calls. By default [`EventSink::on_event`]; a sink that emits in answer
    /// can use `bus` instead of upgrading a handle of its own per event.
    fn on_event_from(&self, bus: &EventBus, event: &Event) {
        let _ = bus;
        self.on_event(event);
    }

    /// Whether the sink is handed events of `kind`: asked for every kind
    /// once, when it subscribes (with no bus lock held; a panic here comes
    /// out of [`EventBus::subscribe`], and nothing is subscribed). By default
    /// every kind. An event no subscriber wants is stored without touching
    /// the subscriber list. A sink that wraps another must forward this
    /// method, or it is handed every kind.
    fn wants(&self, kind: EventKind) -> bool {
        let _ = kind;
        true
    }
}

/// A set of event kinds, one bit per kind in [`EventKind::ALL`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kinds(u128);

const _: () = assert!(EventKind::ALL.len() <= 128, "Kinds holds at most 128 kinds");

impl Kinds {
    /// The kinds `sink` wants.
    fn wanted_by(sink: &dyn EventSink) -> Kinds {
        Kinds(
            EventKind::ALL
                .iter()
                .filter(|k| sink.wants(**k))
                .fold(0, |bits, k| bits | Kinds::bit(*k)),
        )
    }

    /// The kinds any of `subscribers` wants.
    fn union(subscribers: &[Subscriber]) -> Kinds {
        Kinds(subscribers.iter().fold(0, |bits, (_, k, _)| bits | k.0))
    }

    const fn bit(kind: EventKind) -> u128 {
        1 << kind as u32
    }

    const fn has(self, kind: EventKind) -> bool {
        self.0 & Kinds::bit(kind) != 0
    }
}

/// One subscriber: its handle, the kinds it wants, the sink.
type Subscriber = (SubscriptionId, Kinds, Arc<dyn EventSink>);

impl<F: Fn(&Event) + Send + Sync> EventSink for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

/// A subscription's handle, for [`EventBus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

type Sinks = Arc<[Subscriber]>;

struct History {
    // Shared with the sinks of the emit that stored it: no deep copy per emit.
    events: VecDeque<Arc<Event>>,
    next_id: u64,
    evicted: u64,
    /// The newest event's time (zero before the first).
    last_time: Duration,
    /// The subscribers, copied on write so that emit calls them unlocked.
    /// Kept under this lock, which every emit takes anyway, rather than a
    /// lock of their own: two atomic operations fewer per emit, and a
    /// subscription is ordered with the events (every event stored after
    /// `subscribe` returns reaches it).
    sinks: Sinks,
    /// The kinds any subscriber wants.
    wanted: Kinds,
}

impl History {
    /// Makes `next` the subscriber list (and its kinds the wanted ones);
    /// returns the old list, for the caller to drop unlocked.
    fn replace_sinks(&mut self, next: Vec<Subscriber>) -> Sinks {
        self.wanted = Kinds::union(&next);
        std::mem::replace(&mut self.sinks, next.into())
    }
}

/// Where an event's time comes from (either way, never before the newest
/// stored event's).
#[derive(Clone, Copy)]
enum Timing {
    /// The bus clock, read under the history lock.
    Now,
    /// A cause's time: no clock read.
    NotBefore(Duration),
}

/// The event bus: stores the newest `capacity` events and calls subscribers.
///
/// Emitting takes one mutex (the history, which also holds the subscriber
/// list: when a subscriber wants the event's kind, [`EventSink::wants`], an
/// emit takes one reference to the list). Locks are
/// recovered if poisoned, and a panicking sink is caught, so one
/// bad sink cannot break the bus for others.
pub struct EventBus {
    capacity: usize,
    clock: Arc<dyn Clock>,
    history: Mutex<History>,
    next_subscription: AtomicU64,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (len, evicted, subscribers) = {
            let h = self.locked();
            (h.events.len(), h.evicted, h.sinks.len())
        };
        f.debug_struct("EventBus")
            .field("capacity", &self.capacity)
            .field("len", &len)
            .field("evicted", &evicted)
            .field("subscribers", &subscribers)
            .field("clock", &self.clock)
            .finish()
    }
}

/// Most history to allocate up front; a larger bus grows as events arrive.
const PREALLOCATE: usize = 1024;

/// How many emits ahead of its eviction an event's memory is prefetched.
const PREFETCH_AHEAD: usize = 4;

/// Asks the CPU to bring into cache what evicting the oldest stored events
/// will touch first: the allocation of the event [`PREFETCH_AHEAD`] places
/// from the front (its reference counts and fields), and the reference
/// counts of the shared ids of the event behind the front (reading that
/// event's fields to find them hits the lines an earlier emit prefetched).
/// The payload's own heap text, which freeing the event also touches, is
/// not covered. A full history evicts one event per emit, written
/// `capacity` emits earlier and long out of cache: without this, the
/// reference-count decrement of each eviction stalls on a cache miss: on
/// this project's machines, ~3 µs of the ~19 µs an audited session of the
/// benches' pipeline took (`lifecycle_probe default pipeline`, where
/// `EVCAP=64` showed what a history in cache costs).
///
/// The addresses assume std's `Arc` layout, two counts and then the value
/// (as `Event` and `str` are aligned to at most 16 bytes, the value starts
/// right after the counts); a wrong address would only waste a hint:
/// nothing is read through these addresses.
#[inline]
fn prefetch_eviction(events: &VecDeque<Arc<Event>>) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    {
        const COUNTS: usize = 2 * size_of::<usize>();
        /// The allocation behind an `Arc`: its counts, then `value_len`
        /// bytes of its value.
        fn arc_lines<T: ?Sized>(a: &Arc<T>, value_len: usize) {
            let start = Arc::as_ptr(a).cast::<u8>().wrapping_sub(COUNTS);
            crate::prefetch::lines(start, COUNTS + value_len);
        }
        if let Some(ahead) = events.get(PREFETCH_AHEAD) {
            arc_lines(ahead, size_of::<Event>());
        }
        if let Some(next) = events.get(1) {
            if let Some(s) = &next.session {
                arc_lines(s.shared(), 0);
            }
            if let Some(a) = &next.agent {
                arc_lines(a.shared(), 0);
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = events;
}

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
                last_time: Duration::ZERO,
                sinks: Arc::new([]),
                wanted: Kinds::default(),
            }),
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
        self.store(
            session.cloned(),
            agent.cloned(),
            trace,
            parent,
            payload,
            Timing::Now,
        )
    }

    /// Records an event that `cause` gave rise to while it was being
    /// delivered (a sink's answer to it, such as the auditor's
    /// `audit.delta_captured`): the cause's session, agent and trace, the
    /// cause as parent, and the cause's time, or the newest stored event's
    /// if that is later, so that ids and times still increase together.
    /// The bus clock is not read: what follows from an event is timed by
    /// it. `cause` should be an event of this bus (an event from elsewhere
    /// only lends its ids, and its time if that is later). Returns the new
    /// event's id.
    pub fn emit_following(&self, cause: &Event, payload: EventPayload) -> EventId {
        self.store(
            cause.session.clone(),
            cause.agent.clone(),
            cause.trace,
            Some(cause.id),
            payload,
            Timing::NotBefore(cause.time),
        )
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store(
        &self,
        session: Option<SessionId>,
        agent: Option<AgentId>,
        trace: TraceId,
        parent: Option<EventId>,
        payload: EventPayload,
        timing: Timing,
    ) -> EventId {
        let mut history = self.locked();
        // Never before the newest stored event, whatever a caller's cause
        // or an injected clock says: ids and times increase together.
        let time = match timing {
            Timing::Now => self.clock.now(),
            Timing::NotBefore(t) => t,
        }
        .max(history.last_time);
        history.last_time = time;
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
        let kind = stored.kind();
        let listened = history
            .wanted
            .has(kind)
            .then(|| (Arc::clone(&stored), Arc::clone(&history.sinks)));
        let evicted = if history.events.len() >= self.capacity {
            history.evicted += 1;
            prefetch_eviction(&history.events);
            history.events.pop_front()
        } else {
            None
        };
        history.events.push_back(stored);
        drop(history);
        // The evicted event is freed outside the lock.
        drop(evicted);
        if let Some((event, sinks)) = listened {
            // Sinks run unlocked.
            for (_, _, sink) in sinks.iter().filter(|(_, k, _)| k.has(kind)) {
                // A panicking sink must not stop the others or the emitter;
                // the panic hook has already reported it.
                let _ = panic::catch_unwind(AssertUnwindSafe(|| sink.on_event_from(self, &event)));
            }
        }
        id
    }

    /// Adds a subscriber; it receives every event stored from now on, of the
    /// kinds it wants ([`EventSink::wants`], asked here for each kind).
    pub fn subscribe(&self, sink: impl EventSink + 'static) -> SubscriptionId {
        let id = SubscriptionId(self.next_subscription.fetch_add(1, Ordering::Relaxed));
        let sink: Arc<dyn EventSink> = Arc::new(sink);
        let kinds = Kinds::wanted_by(&*sink);
        let mut history = self.locked();
        let mut next: Vec<_> = history.sinks.iter().cloned().collect();
        next.push((id, kinds, sink));
        // The old list only shares sinks the new one holds: dropping it
        // here drops no sink.
        history.replace_sinks(next);
        id
    }

    /// Removes a subscriber; returns false if it was not subscribed. Emits
    /// already under way on other threads may still deliver one event each to it.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let removed = {
            let mut history = self.locked();
            if !history.sinks.iter().any(|(s, _, _)| *s == id) {
                return false;
            }
            let next: Vec<_> = history
                .sinks
                .iter()
                .filter(|(s, _, _)| *s != id)
                .cloned()
                .collect();
            history.replace_sinks(next)
        };
        // The old list (and with it, perhaps, the sink) is dropped unlocked:
        // a sink's drop may emit or subscribe.
        drop(removed);
        true
    }

    /// The stored events that match `q`, oldest first.
    pub fn query(&self, q: &EventQuery) -> Vec<Event> {
        let limit = q.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Vec::new();
        }
        let history = self.locked();
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

    /// How many stored events there are of each kind, and the newest
    /// one's id: counted in place, under the history's lock, without
    /// copying an event (a [`EventBus::query`] of everything copies the
    /// whole history, which a stats request must not do).
    pub fn kind_counts(
        &self,
    ) -> (
        std::collections::BTreeMap<&'static str, usize>,
        Option<EventId>,
    ) {
        let history = self.locked();
        let mut by_kind = std::collections::BTreeMap::new();
        for e in &history.events {
            *by_kind.entry(e.kind().name()).or_insert(0) += 1;
        }
        (by_kind, history.events.back().map(|e| e.id))
    }

    /// The newest stored event.
    pub fn last(&self) -> Option<Event> {
        let history = self.locked();
        history.events.back().map(|e| Event::clone(e))
    }

    /// How many events are stored (at most [`EventBus::capacity`]).
    pub fn len(&self) -> usize {
        self.locked().events.len()
    }

    /// True when no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many events were dropped from the history to respect the capacity.
    pub fn evicted(&self) -> u64 {
        self.locked().evicted
    }

    /// The most events the history keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The clock that times this bus's events.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
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
            EventKind::RingElevated => EventPayload::RingElevated {
                from: Ring::Standard,
                to: Ring::Privileged,
                ttl: Duration::from_secs(300),
                justification: s("deploy the fix"),
                sponsor: s("operator"),
            },
            EventKind::RingElevationDenied => EventPayload::RingElevationDenied {
                target: Ring::Root,
                reason: s("ring0_forbidden"),
            },
            EventKind::RingElevationExpired => EventPayload::RingElevationExpired {
                ring: Ring::Privileged,
                back_to: Ring::Standard,
            },
            EventKind::RingElevationRevoked => EventPayload::RingElevationRevoked {
                ring: Ring::Privileged,
                back_to: Ring::Standard,
                reason: s("operator"),
            },
            EventKind::RingDemoted => EventPayload::RingDemoted {
                from: Ring::Standard,
                to: Ring::Sandbox,
                reason: s("breach"),
            },
            EventKind::SecurityRateLimited => EventPayload::SecurityRateLimited {
                capability: s("state"),
                function: s("set"),
                class: s("change"),
                retry_after: Duration::from_millis(200),
                refused: 3,
            },
            EventKind::SecurityBreakerTripped => EventPayload::SecurityBreakerTripped {
                severity: s("high"),
                calls: 10,
                action: s("expel"),
            },
            EventKind::LiabilityQuarantineEntered => EventPayload::LiabilityQuarantineEntered {
                reason: s("ring_breach"),
                duration: Duration::from_secs(60),
            },
            EventKind::SecuritySagaHandoff => EventPayload::SecuritySagaHandoff {
                saga: s("saga-1"),
                step: s("pay"),
                substitute: agent("did:ex:sub"),
            },
            EventKind::LiabilityVouchCreated => EventPayload::LiabilityVouchCreated {
                vouchee: agent("did:ex:b"),
                vouch: 1,
                bond: 0.18,
                effective: 0.64,
            },
            EventKind::LiabilityVouchReleased => EventPayload::LiabilityVouchReleased {
                vouchee: agent("did:ex:b"),
                vouch: 1,
                reason: s("released"),
            },
            EventKind::LiabilitySlashExecuted => EventPayload::LiabilitySlashExecuted {
                cause: s("slashed"),
                before: 0.7,
                after: 0.0,
                hop: 0,
                reason: s("manual"),
            },
            EventKind::LiabilityFaultAttributed => EventPayload::LiabilityFaultAttributed {
                saga: s("saga-1"),
                share: 0.5,
                method: s("exact"),
            },
            EventKind::LiabilityQuarantineReleased => EventPayload::LiabilityQuarantineReleased {
                reason: s("expired"),
            },
            EventKind::AgentSpawned => EventPayload::AgentSpawned {
                child: agent("did:ex:child"),
                ring: Ring::Sandbox,
                component: s("worker"),
                depth: 1,
            },
            EventKind::ActionInvoked => EventPayload::ActionInvoked {
                action: s("note.append"),
                reversibility: s("full"),
                undo_window_ms: 60_000,
            },
            EventKind::EffectInvoked => EventPayload::EffectInvoked {
                effect: s("notify.send"),
            },
            EventKind::NetRequest => EventPayload::NetRequest {
                method: s("POST"),
                url: s("http://127.0.0.1:8080/v1/chat"),
                status: 200,
                outcome: s("ok"),
                request_bytes: 12,
                response_bytes: 40,
                request_hash: s("ab"),
                response_hash: s("cd"),
                address: s("127.0.0.1:8080"),
                elapsed_ms: 3,
            },
            EventKind::OperatorRequest => EventPayload::OperatorRequest {
                caller: s("ops"),
                role: s("admin"),
                operation: s("POST /v1/sessions/{session}/activate"),
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
                    "session",
                    "ring",
                    "vfs",
                    "state",
                    "lock",
                    "security",
                    "audit",
                    "liability",
                    "saga",
                    // Ours, beside the design's taxonomy.
                    "agent",
                    "action",
                    "effect",
                    "operator",
                    "net",
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
        assert_eq!(
            EventKind::RingElevationExpired.name(),
            "ring.elevation_expired"
        );
        assert_eq!(
            EventKind::LiabilityQuarantineEntered.name(),
            "liability.quarantine_entered"
        );
        assert_eq!(EventKind::AgentSpawned.name(), "agent.spawned");
    }

    #[test]
    fn every_declared_field_is_handed_out_in_declaration_order() {
        for k in EventKind::ALL {
            let mut names = Vec::new();
            sample(k).for_each_field(|name, _| names.push(name));
            assert_eq!(names, k.field_names(), "{k:?}");
        }
        // Spot checks against the declarations, whose order the audit encoding fixes.
        assert_eq!(
            EventKind::VfsWrite.field_names(),
            ["path", "op", "size", "before", "after"]
        );
        assert_eq!(EventKind::AuditDeltaCaptured.field_names(), ["seq", "hash"]);
        assert_eq!(
            EventKind::RingElevated.field_names(),
            ["from", "to", "ttl", "justification", "sponsor"]
        );
        assert!(EventKind::SessionArchived.field_names().is_empty());
    }

    #[test]
    fn field_names_are_unique_snake_case_words_per_kind() {
        for k in EventKind::ALL {
            let names = k.field_names();
            let unique: HashSet<_> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{k:?} repeats a field");
            for n in names {
                assert!(
                    !n.is_empty()
                        && !n.starts_with('_')
                        && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{k:?}: {n}"
                );
            }
        }
    }

    /// A payload's fields as (name, typed value in `Debug` form): a `Field`
    /// borrows from the payload only for the duration of the callback.
    fn typed_fields(p: &EventPayload) -> Vec<(&'static str, String)> {
        let mut seen = Vec::new();
        p.for_each_field(|n, v| seen.push((n, format!("{v:?}"))));
        seen
    }

    #[test]
    fn fields_are_handed_out_with_their_typed_values() {
        let expect = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            pairs.iter().map(|(n, v)| (*n, v.to_string())).collect()
        };
        assert_eq!(
            typed_fields(&sample(EventKind::SecurityRateLimited)),
            expect(&[
                ("capability", r#"Text("state")"#),
                ("function", r#"Text("set")"#),
                ("class", r#"Text("change")"#),
                ("retry_after", "Duration(200ms)"),
                ("refused", "Uint(3)"),
            ])
        );
        assert_eq!(
            typed_fields(&sample(EventKind::SessionCreated)),
            expect(&[
                ("creator", r#"Text("did:ex:c")"#),
                ("max_participants", "Uint(10)"),
                ("max_duration", "Duration(300s)"),
            ])
        );
        assert_eq!(
            typed_fields(&sample(EventKind::AuditDeltaCaptured)),
            expect(&[
                ("seq", "Uint(4)"),
                ("hash", &format!("Hash(Some({:?}))", [9u8; 32])),
            ])
        );
        assert_eq!(
            typed_fields(&sample(EventKind::AgentSpawned)),
            expect(&[
                ("child", r#"Text("did:ex:child")"#),
                ("ring", "Ring(Sandbox)"),
                ("component", r#"Text("worker")"#),
                ("depth", "Uint(1)"),
            ])
        );
        let requested = EventPayload::SessionTerminated {
            reason: TerminationReason::Requested,
        };
        assert_eq!(
            typed_fields(&requested),
            expect(&[("reason", r#"Text("requested")"#)])
        );
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

    /// The stats the API serves are counted in place and agree with a
    /// query of everything, evictions included.
    #[test]
    fn kind_counts_agree_with_the_history() {
        let (bus, _) = bus(4);
        assert_eq!(bus.kind_counts(), (std::collections::BTreeMap::new(), None));
        for k in [
            EventKind::SessionLeft,
            EventKind::SessionJoined,
            EventKind::SessionLeft,
            EventKind::SessionLeft,
            EventKind::SessionJoined,
        ] {
            bus.emit(None, None, TraceId(1), None, sample(k));
        }
        let (counts, last) = bus.kind_counts();
        let mut expected = std::collections::BTreeMap::new();
        for e in bus.query(&EventQuery::default()) {
            *expected.entry(e.kind().name()).or_insert(0) += 1;
        }
        assert_eq!(counts, expected);
        assert_eq!(counts.values().sum::<usize>(), 4, "the oldest was evicted");
        assert_eq!(last, bus.last().map(|e| e.id));
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
    fn the_bus_hands_each_sink_itself_and_plain_sinks_still_get_on_event() {
        /// Records the address of the bus each event came from.
        struct FromBus(Arc<Mutex<Vec<(usize, u64)>>>);
        impl EventSink for FromBus {
            fn on_event(&self, _: &Event) {
                panic!("the bus calls on_event_from");
            }
            fn on_event_from(&self, bus: &EventBus, event: &Event) {
                let at = std::ptr::from_ref(bus).addr();
                self.0.lock().unwrap().push((at, event.id.0));
            }
        }
        let (first, _) = bus(8);
        let (second, _) = bus(8);
        let seen = Arc::new(Mutex::new(Vec::new()));
        first.subscribe(FromBus(Arc::clone(&seen)));
        second.subscribe(FromBus(Arc::clone(&seen)));
        let plain = Arc::new(Mutex::new(0));
        let count = Arc::clone(&plain);
        first.subscribe(move |_: &Event| *count.lock().unwrap() += 1);
        first.emit(None, None, TraceId(1), None, sample(EventKind::SessionLeft));
        second.emit(None, None, TraceId(2), None, sample(EventKind::SessionLeft));
        let addr = |b: &EventBus| std::ptr::from_ref(b).addr();
        assert_eq!(
            *seen.lock().unwrap(),
            [(addr(&first), 1), (addr(&second), 1)],
            "each sink is handed the bus that emitted"
        );
        assert_eq!(*plain.lock().unwrap(), 1, "a closure sink gets on_event");
    }

    #[test]
    fn a_following_event_takes_its_causes_ids_and_time_without_reading_the_clock() {
        /// A clock that counts its reads.
        #[derive(Debug)]
        struct Counting(FakeClock, AtomicU64);
        impl Clock for Counting {
            fn now(&self) -> Duration {
                self.1.fetch_add(1, Ordering::Relaxed);
                self.0.now()
            }
        }
        let fake = FakeClock::new();
        let clock = Arc::new(Counting(fake.clone(), AtomicU64::new(0)));
        let bus = EventBus::new(8, clock.clone());
        let s = SessionId::new("s-follow").unwrap();
        let a = AgentId::new("did:ex:a").unwrap();
        fake.advance(Duration::from_millis(5));
        let cause_id = bus.emit(
            Some(&s),
            Some(&a),
            TraceId(7),
            None,
            sample(EventKind::StateWrite),
        );
        let cause = bus.last().unwrap();
        let reads = clock.1.load(Ordering::Relaxed);
        fake.advance(Duration::from_millis(5));
        let id = bus.emit_following(&cause, sample(EventKind::AuditDeltaCaptured));
        assert_eq!(clock.1.load(Ordering::Relaxed), reads, "no clock read");
        let e = bus.last().unwrap();
        assert_eq!((e.id, e.parent), (id, Some(cause_id)));
        assert_eq!(
            (e.session, e.agent, e.trace),
            (Some(s), Some(a), TraceId(7))
        );
        assert_eq!(e.time, Duration::from_millis(5), "the cause's time");
        // A later event stored in between: the following one is not timed
        // before it, so times still grow with ids.
        bus.emit(None, None, TraceId(8), None, sample(EventKind::SessionLeft));
        bus.emit_following(&cause, sample(EventKind::AuditDeltaCaptured));
        let times: Vec<_> = bus
            .query(&EventQuery::default())
            .iter()
            .map(|e| e.time.as_millis())
            .collect();
        assert_eq!(times, [5, 5, 10, 10]);
        // A cause from elsewhere, timed later than the bus clock: the bus
        // clock's next event is still not timed before it.
        let mut foreign = cause.clone();
        foreign.time = Duration::from_millis(50);
        bus.emit_following(&foreign, sample(EventKind::AuditDeltaCaptured));
        bus.emit(None, None, TraceId(9), None, sample(EventKind::SessionLeft));
        assert_eq!(bus.last().unwrap().time, Duration::from_millis(50));
    }

    #[test]
    fn a_sink_is_handed_only_the_kinds_it_wants_asked_once_when_it_subscribes() {
        /// Records the kinds it is handed; wants only `only` (or all but it).
        struct Picky {
            only: EventKind,
            invert: bool,
            asked: AtomicU64,
            seen: Mutex<Vec<EventKind>>,
        }
        impl EventSink for Picky {
            fn on_event(&self, e: &Event) {
                self.seen.lock().unwrap().push(e.kind());
            }
            fn wants(&self, kind: EventKind) -> bool {
                self.asked.fetch_add(1, Ordering::Relaxed);
                (kind == self.only) != self.invert
            }
        }
        let picky = |only, invert| {
            Arc::new(Picky {
                only,
                invert,
                asked: AtomicU64::new(0),
                seen: Mutex::new(Vec::new()),
            })
        };
        /// Shares one `Picky` between the bus and the test.
        struct Shared(Arc<Picky>);
        impl EventSink for Shared {
            fn on_event(&self, e: &Event) {
                self.0.on_event(e);
            }
            fn wants(&self, kind: EventKind) -> bool {
                self.0.wants(kind)
            }
        }
        let (bus, _) = bus(8);
        let only_left = picky(EventKind::SessionLeft, false);
        let all_but_audit = picky(EventKind::AuditDeltaCaptured, true);
        // The wider one first: the union must keep its kinds, not only the
        // newest subscriber's.
        let id = bus.subscribe(Shared(Arc::clone(&all_but_audit)));
        bus.subscribe(Shared(Arc::clone(&only_left)));
        for kind in [
            EventKind::SessionLeft,
            EventKind::AuditDeltaCaptured,
            EventKind::StateWrite,
        ] {
            bus.emit(None, None, TraceId(1), None, sample(kind));
        }
        assert_eq!(*only_left.seen.lock().unwrap(), [EventKind::SessionLeft]);
        assert_eq!(
            *all_but_audit.seen.lock().unwrap(),
            [EventKind::SessionLeft, EventKind::StateWrite]
        );
        let kinds = EventKind::ALL.len() as u64;
        assert_eq!(
            only_left.asked.load(Ordering::Relaxed),
            kinds,
            "asked once per kind"
        );
        // Unsubscribed, its kinds are no longer wanted (the bus skips them
        // without touching the list); the other's still are.
        assert!(bus.unsubscribe(id));
        let wanted = bus.locked().wanted;
        assert!(!wanted.has(EventKind::StateWrite) && wanted.has(EventKind::SessionLeft));
        bus.emit(None, None, TraceId(2), None, sample(EventKind::StateWrite));
        bus.emit(None, None, TraceId(3), None, sample(EventKind::SessionLeft));
        assert_eq!(all_but_audit.seen.lock().unwrap().len(), 2);
        assert_eq!(
            *only_left.seen.lock().unwrap(),
            [EventKind::SessionLeft, EventKind::SessionLeft]
        );
    }

    #[test]
    fn an_unsubscribed_sink_is_dropped_outside_the_bus_lock() {
        /// Emits on its bus when dropped: under the bus lock, that would
        /// deadlock.
        struct EmitsOnDrop(Arc<EventBus>);
        impl EventSink for EmitsOnDrop {
            fn on_event(&self, _: &Event) {}
        }
        impl Drop for EmitsOnDrop {
            fn drop(&mut self) {
                self.0
                    .emit(None, None, TraceId(9), None, sample(EventKind::SessionLeft));
            }
        }
        let bus = Arc::new(bus(8).0);
        let id = bus.subscribe(EmitsOnDrop(Arc::clone(&bus)));
        let (tx, rx) = std::sync::mpsc::channel();
        let unsubscriber = Arc::clone(&bus);
        std::thread::spawn(move || {
            let removed = unsubscriber.unsubscribe(id);
            let _ = tx.send(removed);
        });
        let removed = rx.recv_timeout(Duration::from_secs(10)).expect(
            "unsubscribe did not return within 10 s (the sink's drop deadlocked on the bus lock)",
        );
        assert!(removed);
        assert_eq!(bus.last().unwrap().trace, TraceId(9), "the drop emitted");
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
            "from=2 to=1 ttl=300s justification=\"deploy the fix\" sponsor=operator",
            "target=0 reason=ring0_forbidden",
            "ring=1 back_to=2",
            "ring=1 back_to=2 reason=operator",
            "from=2 to=3 reason=breach",
            "capability=state function=set class=change retry_after=200ms refused=3",
            "severity=high calls=10 action=expel",
            "reason=ring_breach duration=60s",
            "reason=expired",
            "child=did:ex:child ring=3 component=worker depth=1",
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
