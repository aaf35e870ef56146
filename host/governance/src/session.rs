//! Shared sessions: configuration, lifecycle and join rules (`docs/governance.md`,
//! Sessions). Plain state with typed errors; the `Hypervisor` front door
//! drives it and adds the Wasm agents.
//!
//! Lifecycle: `Created → Handshaking → Active → Terminating → Archived`.
//! Joins only in `Handshaking` or `Active`; activation needs a participant;
//! termination from `Handshaking` or `Active`; snapshot/restore only while
//! `Active`. Everything else is a [`SessionError::InvalidTransition`].
//! The maximum duration is enforced: [`Session::enforce_deadline`] terminates
//! a session whose time has run out, and every operation refuses to act on an
//! expired session.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ahv_core::{
    ActionDescriptor, AgentId, Reversibility, Ring, ScoreError, SessionId, check_score,
    ring_for_score,
};
use thiserror::Error;

pub use crate::state::Isolation;

pub mod files;

/// How writes from different agents are reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Every write must have seen the latest one (vector clocks, strict).
    Strong,
    /// Concurrent writes are allowed and merged later.
    Eventual,
}

/// Session settings. [`SessionConfig::default`] is the documented default.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Consistency mode (default strong).
    pub consistency: Consistency,
    /// Most participants at once, 1..=1000 (default 10).
    pub max_participants: u32,
    /// Longest the session may live, 1 s..=7 days (default 3600 s).
    pub max_duration: Duration,
    /// Least effective score admitted above ring 3, in [0, 1] (default 0.60).
    pub min_eff_score: f64,
    /// Whether governed actions are audited (default true).
    pub audit: bool,
    /// Isolation level of the shared state and shared files (default
    /// read-committed; see `crate::session_core`).
    pub isolation: Isolation,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            consistency: Consistency::Strong,
            max_participants: 10,
            max_duration: Duration::from_secs(3600),
            min_eff_score: 0.60,
            audit: true,
            isolation: Isolation::ReadCommitted,
        }
    }
}

/// Longest allowed `max_duration`.
pub const MAX_SESSION_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

impl SessionConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`SessionError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), SessionError> {
        let bad = |field: &'static str, reason: String| {
            Err(SessionError::InvalidConfig { field, reason })
        };
        if !(1..=1000).contains(&self.max_participants) {
            return bad(
                "max_participants",
                format!("must be in 1..=1000, got {}", self.max_participants),
            );
        }
        if self.max_duration < Duration::from_secs(1) || self.max_duration > MAX_SESSION_DURATION {
            return bad(
                "max_duration",
                format!(
                    "must be between 1 s and 7 days, got {:?}",
                    self.max_duration
                ),
            );
        }
        check_score("min_eff_score", self.min_eff_score).map_err(|e| {
            SessionError::InvalidConfig {
                field: "min_eff_score",
                reason: e.to_string(),
            }
        })?;
        Ok(())
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Created; nobody can join yet.
    Created,
    /// Accepting participants.
    Handshaking,
    /// Running; still accepting participants.
    Active,
    /// Shutting down.
    Terminating,
    /// Finished; read-only history.
    Archived,
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionState::Created => "created",
            SessionState::Handshaking => "handshaking",
            SessionState::Active => "active",
            SessionState::Terminating => "terminating",
            SessionState::Archived => "archived",
        })
    }
}

/// Agent ids starting with this are the hypervisor's own (such as the
/// vector-clock entry restores tick, [`crate::session::files::RESTORE_CLOCK`]):
/// no agent joins under one.
pub const RESERVED_AGENT_PREFIX: &str = "ahv:";

/// Why a session operation was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SessionError {
    /// A configuration field is out of range.
    #[error("session config: {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The operation is not allowed in the session's state.
    #[error("session {session}: cannot {operation} while {state}")]
    InvalidTransition {
        /// The session.
        session: SessionId,
        /// What was attempted.
        operation: &'static str,
        /// The state it was in.
        state: SessionState,
    },
    /// The agent already participates.
    #[error("session {session}: agent {agent} has already joined")]
    AlreadyJoined {
        /// The session.
        session: SessionId,
        /// The agent.
        agent: AgentId,
    },
    /// The agent does not participate.
    #[error("session {session}: agent {agent} is not a participant")]
    NotAParticipant {
        /// The session.
        session: SessionId,
        /// The agent.
        agent: AgentId,
    },
    /// The agent id is in the hypervisor's reserved namespace
    /// ([`RESERVED_AGENT_PREFIX`]).
    #[error(
        "session {session}: agent id {agent} is reserved for the hypervisor (ids starting with {RESERVED_AGENT_PREFIX:?})"
    )]
    ReservedAgentId {
        /// The session.
        session: SessionId,
        /// The agent.
        agent: AgentId,
    },
    /// The session is full.
    #[error("session {session} is full ({max} participants)")]
    Full {
        /// The session.
        session: SessionId,
        /// Its capacity.
        max: u32,
    },
    /// A score is not a number in [0, 1].
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// The session ran past its maximum duration.
    #[error("session {session} expired: it may live {max:?}")]
    Expired {
        /// The session.
        session: SessionId,
        /// Its maximum duration.
        max: Duration,
    },
}

/// One participant.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// The agent.
    pub agent: AgentId,
    /// Its trust score when it joined.
    pub sigma: f64,
    /// The ring it was assigned.
    pub ring: Ring,
    /// When it joined (session clock).
    pub joined_at: Duration,
}

/// A participant whose ring differs between a snapshot and now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingChange {
    /// The agent.
    pub agent: AgentId,
    /// Its ring when the snapshot was taken.
    pub then: Ring,
    /// Its ring now.
    pub now: Ring,
}

/// A participant whose trust score differs between a snapshot and now.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreChange {
    /// The agent.
    pub agent: AgentId,
    /// Its score when the snapshot was taken.
    pub then: f64,
    /// Its score now.
    pub now: f64,
}

/// How a session's participants differ from the ones a snapshot recorded:
/// a restore gives the files back, not the participants, so it reports
/// what it could not restore. Every list is sorted by agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParticipantsDiff {
    /// In the session now, not when the snapshot was taken.
    pub joined: Vec<AgentId>,
    /// In the snapshot, not in the session now.
    pub left: Vec<AgentId>,
    /// In both, in another ring now.
    pub rings: Vec<RingChange>,
    /// In both, with another trust score now.
    pub scores: Vec<ScoreChange>,
}

impl ParticipantsDiff {
    /// What changed from `then` (the snapshot's participants) to `now`.
    pub fn between(then: &[Participant], now: &[Participant]) -> ParticipantsDiff {
        let then: BTreeMap<&AgentId, &Participant> = then.iter().map(|p| (&p.agent, p)).collect();
        let now: BTreeMap<&AgentId, &Participant> = now.iter().map(|p| (&p.agent, p)).collect();
        let mut diff = ParticipantsDiff::default();
        for (agent, n) in &now {
            let Some(t) = then.get(agent) else {
                diff.joined.push((*agent).clone());
                continue;
            };
            if t.ring != n.ring {
                diff.rings.push(RingChange {
                    agent: (*agent).clone(),
                    then: t.ring,
                    now: n.ring,
                });
            }
            // Exact comparison: a score is data, not a measurement.
            if t.sigma.to_bits() != n.sigma.to_bits() {
                diff.scores.push(ScoreChange {
                    agent: (*agent).clone(),
                    then: t.sigma,
                    now: n.sigma,
                });
            }
        }
        diff.left = then
            .keys()
            .filter(|a| !now.contains_key(*a))
            .map(|a| (*a).clone())
            .collect();
        diff
    }

    /// True when the participants are as the snapshot recorded them.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty()
            && self.left.is_empty()
            && self.rings.is_empty()
            && self.scores.is_empty()
    }

    /// The ring changes as text, `<agent> <then>-><now>` joined by `, `
    /// (agent ids hold neither spaces nor commas): the form events carry.
    pub fn rings_text(&self) -> String {
        let parts: Vec<String> = self
            .rings
            .iter()
            .map(|c| format!("{} {}->{}", c.agent, c.then.number(), c.now.number()))
            .collect();
        parts.join(", ")
    }

    /// The score changes as text, `<agent> <then>-><now>` joined by `, `,
    /// each score written exactly (shortest round-trip form).
    pub fn scores_text(&self) -> String {
        let parts: Vec<String> = self
            .scores
            .iter()
            .map(|c| format!("{} {}->{}", c.agent, c.then, c.now))
            .collect();
        parts.join(", ")
    }
}

/// A shared session's governance state.
#[derive(Debug, Clone)]
pub struct Session {
    id: SessionId,
    config: SessionConfig,
    creator: AgentId,
    state: SessionState,
    created_at: Duration,
    participants: BTreeMap<AgentId, Participant>,
}

impl Session {
    /// A new session in `Created`, created at `now` (the hypervisor's clock).
    ///
    /// # Errors
    /// [`SessionError::InvalidConfig`].
    pub fn new(
        id: SessionId,
        config: SessionConfig,
        creator: AgentId,
        now: Duration,
    ) -> Result<Session, SessionError> {
        config.validate()?;
        Ok(Session {
            id,
            config,
            creator,
            state: SessionState::Created,
            created_at: now,
            participants: BTreeMap::new(),
        })
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Its configuration (consistency may have been forced to strong by a join).
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The agent that created it.
    pub fn creator(&self) -> &AgentId {
        &self.creator
    }

    /// Its state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Its participants, by agent id.
    pub fn participants(&self) -> impl Iterator<Item = &Participant> {
        self.participants.values()
    }

    /// One participant.
    pub fn participant(&self, agent: &AgentId) -> Option<&Participant> {
        self.participants.get(agent)
    }

    /// The participant named `agent`, looked up by its text: no id is
    /// made (nor validated) to ask.
    pub fn participant_named(&self, agent: &str) -> Option<&Participant> {
        self.participants.get(agent)
    }

    /// Records a participant's new base ring (a demotion or re-admission the
    /// host decided; the runtime enforces it through the participant's
    /// standing, this keeps the record that snapshots compare).
    ///
    /// # Errors
    /// [`SessionError::NotAParticipant`].
    pub fn set_ring(&mut self, agent: &AgentId, ring: Ring) -> Result<(), SessionError> {
        self.participant_mut(agent)?.ring = ring;
        Ok(())
    }

    /// Records a participant's new trust score.
    ///
    /// # Errors
    /// [`SessionError::Score`] for a score outside [0, 1];
    /// [`SessionError::NotAParticipant`].
    pub fn set_sigma(&mut self, agent: &AgentId, sigma: f64) -> Result<(), SessionError> {
        let sigma = check_score("sigma", sigma)?;
        self.participant_mut(agent)?.sigma = sigma;
        Ok(())
    }

    fn participant_mut(&mut self, agent: &AgentId) -> Result<&mut Participant, SessionError> {
        let session = &self.id;
        self.participants
            .get_mut(agent)
            .ok_or_else(|| SessionError::NotAParticipant {
                session: session.clone(),
                agent: agent.clone(),
            })
    }

    /// When the session runs out of time (session clock).
    pub fn expires_at(&self) -> Duration {
        self.created_at + self.config.max_duration
    }

    fn invalid(&self, operation: &'static str) -> SessionError {
        SessionError::InvalidTransition {
            session: self.id.clone(),
            operation,
            state: self.state,
        }
    }

    fn require(
        &self,
        operation: &'static str,
        allowed: &[SessionState],
        now: Duration,
    ) -> Result<(), SessionError> {
        if !allowed.contains(&self.state) {
            return Err(self.invalid(operation));
        }
        if now >= self.expires_at() {
            return Err(SessionError::Expired {
                session: self.id.clone(),
                max: self.config.max_duration,
            });
        }
        Ok(())
    }

    /// `Created → Handshaking`.
    ///
    /// # Errors
    /// `InvalidTransition` from any other state; `Expired`.
    pub fn begin_handshake(&mut self, now: Duration) -> Result<(), SessionError> {
        self.require("begin the handshake", &[SessionState::Created], now)?;
        self.state = SessionState::Handshaking;
        Ok(())
    }

    /// Adds `agent` with trust score `sigma` and its declared actions, and
    /// returns the ring it is assigned: ring 3 below `min_eff_score`,
    /// otherwise the ring its score earns (ring 1 needs consensus, which a
    /// plain join does not have, so at most ring 2). Declaring a
    /// non-reversible action forces the session to strong consistency.
    ///
    /// # Errors
    /// `InvalidTransition` unless handshaking or active; `Expired`; `Score`;
    /// `AlreadyJoined`; `Full`.
    pub fn join(
        &mut self,
        agent: AgentId,
        sigma: f64,
        actions: &[ActionDescriptor],
        now: Duration,
    ) -> Result<Ring, SessionError> {
        self.require(
            "join",
            &[SessionState::Handshaking, SessionState::Active],
            now,
        )?;
        let sigma = check_score("sigma", sigma)?;
        if agent.as_str().starts_with(RESERVED_AGENT_PREFIX) {
            return Err(SessionError::ReservedAgentId {
                session: self.id.clone(),
                agent,
            });
        }
        if self.participants.contains_key(&agent) {
            return Err(SessionError::AlreadyJoined {
                session: self.id.clone(),
                agent,
            });
        }
        if self.participants.len() >= self.config.max_participants as usize {
            return Err(SessionError::Full {
                session: self.id.clone(),
                max: self.config.max_participants,
            });
        }
        let ring = if sigma < self.config.min_eff_score {
            Ring::Sandbox
        } else {
            ring_for_score(sigma, false)?
        };
        if actions
            .iter()
            .any(|a| a.reversibility == Reversibility::None)
        {
            self.config.consistency = Consistency::Strong;
        }
        self.participants.insert(
            agent.clone(),
            Participant {
                agent,
                sigma,
                ring,
                joined_at: now,
            },
        );
        Ok(ring)
    }

    /// `Handshaking → Active`; needs at least one participant.
    ///
    /// # Errors
    /// `InvalidTransition` from any other state or with no participants; `Expired`.
    pub fn activate(&mut self, now: Duration) -> Result<(), SessionError> {
        self.require("activate", &[SessionState::Handshaking], now)?;
        if self.participants.is_empty() {
            return Err(self.invalid("activate without participants"));
        }
        self.state = SessionState::Active;
        Ok(())
    }

    /// Removes a participant.
    ///
    /// # Errors
    /// `InvalidTransition` unless handshaking or active; `NotAParticipant`.
    pub fn leave(&mut self, agent: &AgentId) -> Result<Participant, SessionError> {
        if !matches!(self.state, SessionState::Handshaking | SessionState::Active) {
            return Err(self.invalid("leave"));
        }
        self.participants
            .remove(agent)
            .ok_or_else(|| SessionError::NotAParticipant {
                session: self.id.clone(),
                agent: agent.clone(),
            })
    }

    /// `Handshaking | Active → Terminating`. Allowed after expiry (that is how
    /// an expired session ends).
    ///
    /// # Errors
    /// `InvalidTransition` from any other state.
    pub fn terminate(&mut self) -> Result<(), SessionError> {
        if !matches!(self.state, SessionState::Handshaking | SessionState::Active) {
            return Err(self.invalid("terminate"));
        }
        self.state = SessionState::Terminating;
        Ok(())
    }

    /// `Terminating → Archived`.
    ///
    /// # Errors
    /// `InvalidTransition` from any other state.
    pub fn archive(&mut self) -> Result<(), SessionError> {
        if self.state != SessionState::Terminating {
            return Err(self.invalid("archive"));
        }
        self.state = SessionState::Archived;
        Ok(())
    }

    /// Checks that a snapshot or restore may happen now (only while active).
    ///
    /// # Errors
    /// `InvalidTransition` unless active; `Expired`.
    pub fn check_snapshot_allowed(&self, now: Duration) -> Result<(), SessionError> {
        self.require("snapshot or restore", &[SessionState::Active], now)
    }

    /// Terminates the session if its time has run out; returns whether it did.
    pub fn enforce_deadline(&mut self, now: Duration) -> bool {
        let live = matches!(self.state, SessionState::Handshaking | SessionState::Active);
        if live && now >= self.expires_at() {
            self.state = SessionState::Terminating;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahv_core::{Clock, FakeClock};

    fn agent(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn session(config: SessionConfig) -> Session {
        Session::new(
            SessionId::new("s1").unwrap(),
            config,
            agent("creator"),
            Duration::ZERO,
        )
        .unwrap()
    }

    fn effect() -> ActionDescriptor {
        ActionDescriptor {
            id: "deploy".into(),
            reversibility: Reversibility::None,
            read_only: false,
            admin: false,
        }
    }

    #[test]
    fn participants_diff_names_who_joined_left_and_changed() {
        let p = |a: &str, sigma: f64, ring: Ring| Participant {
            agent: agent(a),
            sigma,
            ring,
            joined_at: Duration::ZERO,
        };
        let then = [
            p("a", 0.8, Ring::Standard),
            p("b", 0.9, Ring::Standard),
            p("d", 0.7, Ring::Standard),
        ];
        let now = [
            p("d", 0.7, Ring::Standard),
            p("c", 0.3, Ring::Sandbox),
            p("a", 0.5, Ring::Sandbox),
        ];
        let diff = ParticipantsDiff::between(&then, &now);
        assert_eq!(diff.joined, [agent("c")]);
        assert_eq!(diff.left, [agent("b")]);
        assert_eq!(
            diff.rings,
            [RingChange {
                agent: agent("a"),
                then: Ring::Standard,
                now: Ring::Sandbox
            }]
        );
        assert_eq!(
            diff.scores,
            [ScoreChange {
                agent: agent("a"),
                then: 0.8,
                now: 0.5
            }]
        );
        assert_eq!(diff.rings_text(), "a 2->3");
        assert_eq!(diff.scores_text(), "a 0.8->0.5");
        assert!(!diff.is_empty());
        assert!(ParticipantsDiff::between(&then, &then).is_empty());
        let all_new = ParticipantsDiff::between(&[], &then);
        assert_eq!(all_new.joined, [agent("a"), agent("b"), agent("d")]);
    }

    #[test]
    fn config_errors_name_the_field() {
        let field = |c: SessionConfig| match c.validate() {
            Err(SessionError::InvalidConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert!(SessionConfig::default().validate().is_ok());
        assert_eq!(
            field(SessionConfig {
                max_participants: 0,
                ..Default::default()
            }),
            "max_participants"
        );
        assert_eq!(
            field(SessionConfig {
                max_participants: 1001,
                ..Default::default()
            }),
            "max_participants"
        );
        assert_eq!(
            field(SessionConfig {
                max_duration: Duration::from_millis(999),
                ..Default::default()
            }),
            "max_duration"
        );
        assert_eq!(
            field(SessionConfig {
                max_duration: MAX_SESSION_DURATION + Duration::from_secs(1),
                ..Default::default()
            }),
            "max_duration"
        );
        assert_eq!(
            field(SessionConfig {
                min_eff_score: f64::NAN,
                ..Default::default()
            }),
            "min_eff_score"
        );
        assert_eq!(
            field(SessionConfig {
                min_eff_score: 1.5,
                ..Default::default()
            }),
            "min_eff_score"
        );
    }

    /// Every (state, operation) pair: allowed ones work, all others are errors.
    #[test]
    fn lifecycle_table() {
        let t = Duration::ZERO;
        type Op = fn(&mut Session) -> Result<(), SessionError>;
        let ops: [(&str, Op); 6] = [
            ("handshake", |s| s.begin_handshake(Duration::ZERO)),
            ("join", |s| {
                s.join(agent("new"), 0.8, &[], Duration::ZERO).map(drop)
            }),
            ("activate", |s| s.activate(Duration::ZERO)),
            ("terminate", |s| s.terminate()),
            ("archive", |s| s.archive()),
            ("snapshot", |s| s.check_snapshot_allowed(Duration::ZERO)),
        ];
        let allowed = |state: SessionState, op: &str| {
            matches!(
                (state, op),
                (SessionState::Created, "handshake")
                    | (SessionState::Handshaking, "join" | "activate" | "terminate")
                    | (SessionState::Active, "join" | "terminate" | "snapshot")
                    | (SessionState::Terminating, "archive")
            )
        };
        let reach = |target: SessionState| {
            let mut s = session(SessionConfig::default());
            let path: &[SessionState] = match target {
                SessionState::Created => &[],
                SessionState::Handshaking => &[SessionState::Handshaking],
                SessionState::Active => &[SessionState::Handshaking, SessionState::Active],
                SessionState::Terminating => &[
                    SessionState::Handshaking,
                    SessionState::Active,
                    SessionState::Terminating,
                ],
                SessionState::Archived => &[
                    SessionState::Handshaking,
                    SessionState::Active,
                    SessionState::Terminating,
                    SessionState::Archived,
                ],
            };
            for step in path {
                match step {
                    SessionState::Handshaking => {
                        s.begin_handshake(t).unwrap();
                        s.join(agent("first"), 0.7, &[], t).unwrap();
                    }
                    SessionState::Active => s.activate(t).unwrap(),
                    SessionState::Terminating => s.terminate().unwrap(),
                    SessionState::Archived => s.archive().unwrap(),
                    SessionState::Created => {}
                }
            }
            assert_eq!(s.state(), target);
            s
        };
        for state in [
            SessionState::Created,
            SessionState::Handshaking,
            SessionState::Active,
            SessionState::Terminating,
            SessionState::Archived,
        ] {
            for (name, op) in ops {
                let mut s = reach(state);
                let r = op(&mut s);
                if allowed(state, name) {
                    assert!(r.is_ok(), "{name} in {state} must work: {r:?}");
                } else {
                    assert!(
                        matches!(r, Err(SessionError::InvalidTransition { .. })),
                        "{name} in {state} must be refused, got {r:?}"
                    );
                    assert_eq!(s.state(), state, "a refused {name} changes nothing");
                }
            }
        }
    }

    #[test]
    fn activation_needs_a_participant() {
        let mut s = session(SessionConfig::default());
        s.begin_handshake(Duration::ZERO).unwrap();
        assert!(matches!(
            s.activate(Duration::ZERO),
            Err(SessionError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn join_assigns_rings_by_score_and_minimum() {
        let mut s = session(SessionConfig::default());
        let t = Duration::ZERO;
        s.begin_handshake(t).unwrap();
        assert_eq!(s.join(agent("a"), 0.8, &[], t), Ok(Ring::Standard));
        assert_eq!(
            s.join(agent("b"), 0.99, &[], t),
            Ok(Ring::Standard),
            "no consensus, no ring 1"
        );
        assert_eq!(s.join(agent("c"), 0.60, &[], t), Ok(Ring::Sandbox));
        assert_eq!(s.join(agent("d"), 0.2, &[], t), Ok(Ring::Sandbox));
        let mut strict = session(SessionConfig {
            min_eff_score: 0.9,
            ..Default::default()
        });
        strict.begin_handshake(t).unwrap();
        assert_eq!(
            strict.join(agent("a"), 0.8, &[], t),
            Ok(Ring::Sandbox),
            "below the minimum: sandbox only"
        );
        assert!(matches!(
            s.join(agent("e"), f64::NAN, &[], t),
            Err(SessionError::Score(_))
        ));
        assert!(matches!(
            s.join(agent("a"), 0.8, &[], t),
            Err(SessionError::AlreadyJoined { .. })
        ));
        let reserved = s.join(agent("ahv:restore"), 0.8, &[], t).unwrap_err();
        assert!(matches!(reserved, SessionError::ReservedAgentId { .. }));
        assert!(reserved.to_string().contains("reserved"), "{reserved}");
        assert_eq!(s.participant(&agent("a")).unwrap().sigma, 0.8);
        assert_eq!(s.leave(&agent("a")).unwrap().ring, Ring::Standard);
        assert!(matches!(
            s.leave(&agent("a")),
            Err(SessionError::NotAParticipant { .. })
        ));
    }

    #[test]
    fn a_participant_is_found_by_its_name_exactly_as_by_its_id() {
        let mut s = session(SessionConfig::default());
        let t = Duration::ZERO;
        s.begin_handshake(t).unwrap();
        for a in ["did:ex:b", "did:ex:a", "did:ex:c"] {
            s.join(agent(a), 0.8, &[], t).unwrap();
        }
        let found = s.participant_named("did:ex:a").unwrap();
        assert_eq!(found.agent, agent("did:ex:a"));
        assert!(std::ptr::eq(
            found,
            s.participant(&agent("did:ex:a")).unwrap()
        ));
        // No normalisation: a near miss, a prefix, an invalid id, nothing.
        for miss in ["did:ex:A", "did:ex:", "did:ex:a ", "", "not an id!"] {
            assert!(s.participant_named(miss).is_none(), "{miss:?}");
        }
        s.leave(&agent("did:ex:a")).unwrap();
        assert!(s.participant_named("did:ex:a").is_none());
    }

    #[test]
    fn capacity_is_enforced() {
        let mut s = session(SessionConfig {
            max_participants: 2,
            ..Default::default()
        });
        let t = Duration::ZERO;
        s.begin_handshake(t).unwrap();
        s.join(agent("a"), 0.7, &[], t).unwrap();
        s.join(agent("b"), 0.7, &[], t).unwrap();
        assert_eq!(
            s.join(agent("c"), 0.7, &[], t),
            Err(SessionError::Full {
                session: s.id().clone(),
                max: 2
            })
        );
        s.leave(&agent("a")).unwrap();
        assert!(s.join(agent("c"), 0.7, &[], t).is_ok());
    }

    #[test]
    fn a_non_reversible_action_forces_strong_consistency() {
        let mut s = session(SessionConfig {
            consistency: Consistency::Eventual,
            ..Default::default()
        });
        s.begin_handshake(Duration::ZERO).unwrap();
        s.join(agent("a"), 0.7, &[], Duration::ZERO).unwrap();
        assert_eq!(s.config().consistency, Consistency::Eventual);
        s.join(agent("b"), 0.7, &[effect()], Duration::ZERO)
            .unwrap();
        assert_eq!(s.config().consistency, Consistency::Strong);
    }

    #[test]
    fn max_duration_is_enforced_with_a_fake_clock() {
        let clock = FakeClock::new();
        let config = SessionConfig {
            max_duration: Duration::from_secs(60),
            ..Default::default()
        };
        let mut s = Session::new(
            SessionId::new("s2").unwrap(),
            config,
            agent("c"),
            clock.now(),
        )
        .unwrap();
        s.begin_handshake(clock.now()).unwrap();
        s.join(agent("a"), 0.7, &[], clock.now()).unwrap();
        s.activate(clock.now()).unwrap();
        clock.advance(Duration::from_secs(59));
        assert!(!s.enforce_deadline(clock.now()));
        assert!(s.join(agent("b"), 0.7, &[], clock.now()).is_ok());
        clock.advance(Duration::from_secs(1));
        assert!(matches!(
            s.join(agent("x"), 0.7, &[], clock.now()),
            Err(SessionError::Expired { .. })
        ));
        assert!(matches!(
            s.check_snapshot_allowed(clock.now()),
            Err(SessionError::Expired { .. })
        ));
        assert!(s.enforce_deadline(clock.now()));
        assert_eq!(s.state(), SessionState::Terminating);
        assert!(!s.enforce_deadline(clock.now()), "only once");
        s.archive().unwrap();
    }
}
