//! Standings at run time: elevation, demotion, quarantine, administration,
//! and the runtime's [`Governor`] for the hypervisor's sessions.
//!
//! Every participant has one [`Standing`] (its effective ring now), shared
//! with its instance's gate, so a change made here counts at the agent's
//! very next host call. The rules are `ahv-security`'s (elevation) and the
//! session's (trust → ring); this module applies them, records each decision
//! as a typed event (and so an audit delta), and offers the same operations
//! to ring 0 agents through the `admin` capability.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use ahv_core::event::EventPayload;
use ahv_core::standing::{Standing, Transition};
use ahv_core::{AgentId, Capability, Ring, SessionId, TraceId};
use ahv_governance::session::SessionError;
use ahv_runtime::{
    AdminOp, ElevationAsk, ElevationGrant, Governor, GovernorFuture, ParticipantView, Refusal, Who,
};
use ahv_security::elevation::{
    Attestation, ElevationRequest, Sponsor, SponsorKeys, decide as decide_elevation,
};
use ed25519_dalek::VerifyingKey;

use crate::{Hypervisor, HypervisorError, Inner, SessionEntry, lock};

/// The runtime's governor: a weak handle back to the hypervisor (the
/// runtime is built before the hypervisor it serves).
#[derive(Default)]
pub(crate) struct HvGovernor {
    inner: OnceLock<Weak<Inner>>,
}

impl HvGovernor {
    pub(crate) fn attach(&self, inner: &Arc<Inner>) {
        let _ = self.inner.set(Arc::downgrade(inner));
    }

    fn hv(&self) -> Option<Hypervisor> {
        self.inner
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| Hypervisor { inner })
    }
}

/// Who may sponsor an elevation in one session: the operator (its key from
/// the builder) and participants with a registered key whose *effective*
/// ring is 1 or 0 now.
struct SessionSponsors<'a> {
    hv: &'a Hypervisor,
    entry: &'a SessionEntry,
}

impl SponsorKeys for SessionSponsors<'_> {
    fn key(&self, sponsor: &Sponsor) -> Option<VerifyingKey> {
        match sponsor {
            Sponsor::Operator => self.hv.inner.security.operator_key,
            Sponsor::Agent(a) => lock(&self.hv.inner.security.agent_keys).get(a).copied(),
        }
    }

    fn ring(&self, sponsor: &Sponsor) -> Option<Ring> {
        match sponsor {
            Sponsor::Operator => Some(Ring::Root),
            Sponsor::Agent(a) => lock(&self.entry.standings)
                .get(a)
                .filter(|s| !s.is_quarantined() && !s.is_killed())
                .map(|s| s.effective()),
        }
    }
}

/// Most sponsorship attestations remembered as used (until they expire).
const MAX_USED_ATTESTATIONS: usize = 65_536;

fn shutting_down(what: &str) -> Refusal {
    Refusal::Denied(format!("{what}: the hypervisor is shutting down"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Governor for HvGovernor {
    fn transition(&self, who: Who<'_>, transition: Transition) {
        if let Some(hv) = self.hv() {
            hv.report_transition(who.session, who.agent, who.trace, transition);
        }
    }

    fn rate_limited(
        &self,
        who: Who<'_>,
        capability: Capability,
        function: &str,
        retry_after: Option<Duration>,
        refused: u64,
    ) {
        if let Some(hv) = self.hv() {
            hv.refusals_seen(who.session, who.agent, refused);
            hv.emit(
                &mut hv.op_in(who.trace),
                who.session,
                Some(who.agent),
                EventPayload::SecurityRateLimited {
                    capability: capability.to_string(),
                    function: function.to_string(),
                    class: format!("{:?}", capability.metering(function)).to_lowercase(),
                    retry_after: retry_after.unwrap_or(Duration::MAX),
                    refused,
                },
            );
        }
    }

    fn request_elevation(
        &self,
        who: Who<'_>,
        ask: ElevationAsk<'_>,
    ) -> Result<ElevationGrant, Refusal> {
        let hv = self.hv().ok_or_else(|| shutting_down("elevation"))?;
        hv.request_elevation(who, ask)
    }

    fn relinquish_elevation(&self, who: Who<'_>) -> Option<Ring> {
        let ring = who.standing.revoke_elevation()?;
        if let Some(hv) = self.hv() {
            hv.emit(
                &mut hv.op_in(who.trace),
                who.session,
                Some(who.agent),
                EventPayload::RingElevationRevoked {
                    ring,
                    back_to: who.standing.base(),
                    reason: "relinquished by the agent".into(),
                },
            );
            if let Ok(entry) = hv.entry(who.session) {
                hv.recap_children(&entry, who.agent);
            }
        }
        Some(ring)
    }

    fn participants(&self, who: Who<'_>) -> Result<Vec<ParticipantView>, Refusal> {
        let hv = self.hv().ok_or_else(|| shutting_down("admin"))?;
        let entry = hv
            .entry(who.session)
            .map_err(|e| Refusal::Denied(format!("admin: {e}")))?;
        let mut list: Vec<ParticipantView> = lock(&entry.standings)
            .iter()
            .map(|(agent, s)| ParticipantView {
                agent: agent.clone(),
                base_ring: s.base(),
                effective_ring: s.effective(),
                quarantined: s.is_quarantined(),
            })
            .collect();
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok(list)
    }

    fn spawn_child(
        &self,
        who: Who<'_>,
        component: &str,
    ) -> GovernorFuture<Result<AgentId, Refusal>> {
        match self.hv() {
            Some(hv) => hv.spawn_future(who, component),
            None => Box::pin(async { Err(shutting_down("spawn")) }),
        }
    }

    fn run_child(
        &self,
        session: SessionId,
        parent: AgentId,
        child: String,
        input: String,
    ) -> GovernorFuture<Result<Result<String, String>, Refusal>> {
        match self.hv() {
            Some(hv) => Box::pin(async move { hv.run_child(session, parent, child, input).await }),
            None => Box::pin(async { Err(shutting_down("spawn")) }),
        }
    }

    fn stop_child(&self, who: Who<'_>, child: &str) -> Result<(), Refusal> {
        self.hv()
            .ok_or_else(|| shutting_down("spawn"))?
            .stop_child(who, child)
    }

    fn children(&self, who: Who<'_>) -> Result<Vec<AgentId>, Refusal> {
        self.hv()
            .ok_or_else(|| shutting_down("spawn"))?
            .children(who.session, who.agent)
            .map_err(|e| Refusal::Denied(format!("spawn: {e}")))
    }

    fn admin(&self, who: Who<'_>, op: AdminOp<'_>) -> Result<bool, Refusal> {
        let hv = self.hv().ok_or_else(|| shutting_down("admin"))?;
        let name = match op {
            AdminOp::Kill { agent, .. }
            | AdminOp::Quarantine { agent, .. }
            | AdminOp::Release { agent } => agent,
        };
        let target =
            AgentId::new(name).map_err(|e| Refusal::Invalid(format!("admin: agent id: {e}")))?;
        if &target == who.agent {
            return Err(Refusal::Denied(
                "admin: an agent cannot administer itself".into(),
            ));
        }
        let refusal = |e: HypervisorError| match e {
            HypervisorError::Session(SessionError::NotAParticipant { .. }) => {
                Refusal::NotFound(format!("admin: {e}"))
            }
            e => Refusal::Denied(format!("admin: {e}")),
        };
        let by = format!("by {} (admin)", who.agent);
        match op {
            AdminOp::Kill { reason, .. } => hv
                .kill_agent(who.session, &target, &format!("{reason} ({by})"))
                .map(|_| true)
                .map_err(refusal),
            AdminOp::Quarantine {
                reason, duration, ..
            } => hv
                .quarantine(
                    who.session,
                    &target,
                    ahv_trust::QuarantineReason::Manual,
                    &format!("{reason} ({by})"),
                    duration,
                )
                .map(|_| true)
                .map_err(refusal),
            AdminOp::Release { .. } => hv.release(who.session, &target).map_err(refusal),
        }
    }
}

/// Why a standing change was refused.
fn not_a_participant(session: &SessionId, agent: &AgentId) -> HypervisorError {
    SessionError::NotAParticipant {
        session: session.clone(),
        agent: agent.clone(),
    }
    .into()
}

impl Hypervisor {
    /// The standing of a participant (its effective ring, elevation and
    /// quarantine), shared with its instance's gate.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`].
    pub fn standing(
        &self,
        session: &SessionId,
        agent: &AgentId,
    ) -> Result<Arc<Standing>, HypervisorError> {
        let entry = self.entry(session)?;
        let standing = lock(&entry.standings).get(agent).cloned();
        standing.ok_or_else(|| not_a_participant(session, agent))
    }

    /// Registers the public key `agent` signs sponsorship attestations with
    /// (it sponsors only while its effective ring is 1 or 0).
    pub fn register_sponsor_key(&self, agent: AgentId, key: VerifyingKey) {
        lock(&self.inner.security.agent_keys).insert(agent, key);
    }

    /// Reports a change the gate (or a host query) claimed.
    pub(crate) fn report_transition(
        &self,
        session: &SessionId,
        agent: &AgentId,
        trace: TraceId,
        transition: Transition,
    ) {
        let payload = match transition {
            Transition::ElevationExpired { ring, back_to } => {
                EventPayload::RingElevationExpired { ring, back_to }
            }
            Transition::QuarantineExpired => EventPayload::LiabilityQuarantineReleased {
                reason: "expired".into(),
            },
        };
        self.emit(&mut self.op_in(trace), session, Some(agent), payload);
        if transition == Transition::QuarantineExpired {
            self.quarantine_ended(session, agent, "expired");
        }
        if matches!(transition, Transition::ElevationExpired { .. })
            && let Ok(entry) = self.entry(session)
        {
            self.recap_children(&entry, agent);
        }
    }

    /// Claims and reports the changes of `standing` that became due.
    pub(crate) fn settle(&self, session: &SessionId, agent: &AgentId, standing: &Standing) {
        let transitions = standing.check().transitions;
        if !transitions.is_empty() {
            let trace = self.inner.runtime.new_trace_id();
            for t in transitions {
                self.report_transition(session, agent, trace, t);
            }
        }
    }

    /// Decides an agent's elevation request by the elevation rules and,
    /// if granted, applies it. Emits `ring.elevated` or `ring.elevation_denied`.
    fn request_elevation(
        &self,
        who: Who<'_>,
        ask: ElevationAsk<'_>,
    ) -> Result<ElevationGrant, Refusal> {
        let entry = self
            .entry(who.session)
            .map_err(|e| Refusal::Denied(format!("elevation: {e}")))?;
        let trust = lock(&entry.gov)
            .participant(who.agent)
            .map(|p| p.sigma)
            .ok_or_else(|| Refusal::Denied("elevation: not a participant".into()))?;
        let deny = |reason: String| {
            self.emit(
                &mut self.op_in(who.trace),
                who.session,
                Some(who.agent),
                EventPayload::RingElevationDenied {
                    target: ask.ring,
                    reason: reason.clone(),
                },
            );
            Refusal::Denied(format!("elevation to {}: {reason}", ask.ring))
        };
        let attestation = match ask.sponsorship {
            Some(text) => {
                Some(Attestation::from_text(text).map_err(|e| deny(format!("sponsorship: {e}")))?)
            }
            None => None,
        };
        for t in who.standing.check().transitions {
            self.report_transition(who.session, who.agent, who.trace, t);
        }
        if let Some(left) = who.standing.elevation_blocked() {
            return Err(deny(format!(
                "refused for another {} s: the host took privilege away (a demotion, a revoke or a breach)",
                left.as_secs().max(1)
            )));
        }
        if let Some(cap) = self.ceiling(&entry, who.agent)
            && ask.ring.number() < cap.number()
        {
            return Err(deny(format!(
                "the agent is capped at {cap} in this session (probation, a parent's ring, a breach or an operator's demotion)"
            )));
        }
        let now_unix = unix_now();
        if let Some(a) = &attestation {
            let longest = now_unix.saturating_add(self.inner.security.elevation.max_ttl_secs);
            if a.expires_unix > longest {
                return Err(deny(format!(
                    "sponsorship: it is valid until {}, longer than the longest elevation ({} s from now)",
                    a.expires_unix, self.inner.security.elevation.max_ttl_secs
                )));
            }
            if lock(&self.inner.security.used_attestations).contains_key(&a.signature) {
                return Err(deny(
                    "sponsorship: this attestation was already used".into(),
                ));
            }
        }
        let request = ElevationRequest {
            agent: who.agent,
            session: who.session,
            base_ring: who.standing.base(),
            target: ask.ring,
            ttl: ask.ttl,
            justification: ask.justification,
            sponsorship: attestation.as_ref(),
            trust,
            active: who.standing.elevation().is_some(),
        };
        let sponsors = SessionSponsors {
            hv: self,
            entry: &entry,
        };
        let grant = decide_elevation(
            &self.inner.security.elevation,
            &request,
            &sponsors,
            now_unix,
        )
        .map_err(|e| deny(e.to_string()))?;
        if let Some(a) = &attestation {
            // Single use: a revoke is not undone by sending the same attestation again.
            let mut used = lock(&self.inner.security.used_attestations);
            used.retain(|_, expires| *expires > now_unix);
            if used.len() >= MAX_USED_ATTESTATIONS {
                return Err(deny(
                    "sponsorship: too many attestations in use; retry later".into(),
                ));
            }
            used.insert(a.signature, a.expires_unix);
        }
        let from = who.standing.base();
        let claimed = who
            .standing
            .elevate(grant.ring, grant.ttl)
            .map_err(|e| deny(e.to_string()))?;
        for t in claimed {
            self.report_transition(who.session, who.agent, who.trace, t);
        }
        self.emit(
            &mut self.op_in(who.trace),
            who.session,
            Some(who.agent),
            EventPayload::RingElevated {
                from,
                to: grant.ring,
                ttl: grant.ttl,
                justification: ask.justification.to_string(),
                sponsor: grant.sponsor.map_or(String::new(), |s| s.to_string()),
            },
        );
        Ok(ElevationGrant {
            ring: grant.ring,
            remaining: grant.ttl,
        })
    }

    /// Grants `agent` an elevation to `ring` for `ttl` on the operator's
    /// authority (no trust or sponsorship check; the TTL is capped by the
    /// elevation rules, and ring 0 is never granted). Emits `ring.elevated`.
    ///
    /// # Errors
    /// [`HypervisorError::Standing`] (not more privileged than the base
    /// ring, ring 0, an elevation already in force, killed);
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`].
    pub fn grant_elevation(
        &self,
        session: &SessionId,
        agent: &AgentId,
        ring: Ring,
        ttl: Duration,
        justification: &str,
    ) -> Result<(), HypervisorError> {
        if ring == Ring::Root {
            return Err(HypervisorError::Standing {
                agent: agent.clone(),
                message: "ring 0 is never granted by elevation".into(),
            });
        }
        let standing = self.standing(session, agent)?;
        self.settle(session, agent, &standing);
        let ttl = ttl.clamp(
            Duration::from_secs(1),
            Duration::from_secs(self.inner.security.elevation.max_ttl_secs),
        );
        let from = standing.base();
        let claimed = standing
            .elevate(ring, ttl)
            .map_err(|e| HypervisorError::Standing {
                agent: agent.clone(),
                message: e.to_string(),
            })?;
        let trace = self.inner.runtime.new_trace_id();
        for t in claimed {
            self.report_transition(session, agent, trace, t);
        }
        self.emit(
            &mut self.op(),
            session,
            Some(agent),
            EventPayload::RingElevated {
                from,
                to: ring,
                ttl,
                justification: justification.to_string(),
                sponsor: Sponsor::Operator.to_string(),
            },
        );
        Ok(())
    }

    /// Ends `agent`'s elevation now. Emits `ring.elevation_revoked`; returns
    /// whether one was in force.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`].
    pub fn revoke_elevation(
        &self,
        session: &SessionId,
        agent: &AgentId,
        reason: &str,
    ) -> Result<bool, HypervisorError> {
        let standing = self.standing(session, agent)?;
        self.settle(session, agent, &standing);
        let Some(ring) = standing.revoke_elevation() else {
            return Ok(false);
        };
        standing.block_elevation(self.elevation_cooldown());
        self.emit(
            &mut self.op(),
            session,
            Some(agent),
            EventPayload::RingElevationRevoked {
                ring,
                back_to: standing.base(),
                reason: reason.to_string(),
            },
        );
        let entry = self.entry(session)?;
        self.recap_children(&entry, agent);
        Ok(true)
    }

    /// Sets `agent`'s base ring to the less privileged `ring` (a demotion;
    /// its very next host call is judged there). Emits `ring.demoted`;
    /// returns the ring it had. A `ring` that is not less privileged than
    /// the current base changes nothing.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`],
    /// [`HypervisorError::Standing`] if the agent was killed.
    pub fn demote(
        &self,
        session: &SessionId,
        agent: &AgentId,
        ring: Ring,
        reason: &str,
    ) -> Result<Ring, HypervisorError> {
        // Taken away by the host: a later vouch does not give it back.
        let entry = self.entry(session)?;
        self.lower_ceiling(&entry, agent, ring);
        self.demote_by_trust(session, agent, ring, reason)
    }

    /// [`Hypervisor::demote`] because the agent's (effective) trust fell:
    /// the agent may earn the ring back (a vouch), up to its ceiling.
    pub(crate) fn demote_by_trust(
        &self,
        session: &SessionId,
        agent: &AgentId,
        ring: Ring,
        reason: &str,
    ) -> Result<Ring, HypervisorError> {
        let entry = self.entry(session)?;
        let standing = lock(&entry.standings)
            .get(agent)
            .cloned()
            .ok_or_else(|| not_a_participant(session, agent))?;
        let from = standing.base();
        if ring.number() <= from.number() {
            return Ok(from);
        }
        let (_, ended) = standing
            .set_base(ring)
            .map_err(|e| HypervisorError::Standing {
                agent: agent.clone(),
                message: e.to_string(),
            })?;
        standing.block_elevation(self.elevation_cooldown());
        lock(&entry.gov).set_ring(agent, ring)?;
        let mut op = self.op();
        if let Some(elevated) = ended {
            self.emit(
                &mut op,
                session,
                Some(agent),
                EventPayload::RingElevationRevoked {
                    ring: elevated,
                    back_to: ring,
                    reason: format!("demoted: {reason}"),
                },
            );
        }
        self.emit(
            &mut op,
            session,
            Some(agent),
            EventPayload::RingDemoted {
                from,
                to: ring,
                reason: reason.to_string(),
            },
        );
        self.recap_children(&entry, agent);
        Ok(from)
    }

    /// How long an agent may not ask for an elevation after the host took
    /// privilege away (a demotion, a revoke, a breach): the rules' default TTL.
    pub(crate) fn elevation_cooldown(&self) -> Duration {
        Duration::from_secs(self.inner.security.elevation.default_ttl_secs)
    }

    /// Caps the children of `parent` at `min(parent's effective ring + 1,
    /// 3)` after the parent's ring fell (a child never outranks that).
    pub(crate) fn recap_children(&self, entry: &SessionEntry, parent: &AgentId) {
        let Some(parent_ring) = lock(&entry.standings).get(parent).map(|s| s.effective()) else {
            return;
        };
        let cap = Ring::from_number((parent_ring.number() + 1).min(3)).unwrap_or(Ring::Sandbox);
        for child in self.children_of(entry, parent) {
            let _ = self.demote(
                entry.core.id(),
                &child,
                cap,
                &format!("its parent {parent} is now in {parent_ring}"),
            );
        }
    }

    /// Records `agent`'s new trust score. When the ring it earns
    /// (`ring_for_score`, without consensus) is less privileged than its
    /// base ring, it is demoted at once (`ring.demoted`); a higher score
    /// never promotes by itself. Returns the base ring now.
    ///
    /// # Errors
    /// [`SessionError::Score`] for a score outside [0, 1]; as [`Hypervisor::demote`].
    pub fn set_trust(
        &self,
        session: &SessionId,
        agent: &AgentId,
        sigma: f64,
    ) -> Result<Ring, HypervisorError> {
        let entry = self.entry(session)?;
        lock(&entry.gov).set_sigma(agent, sigma)?;
        // Judged by the effective score (σ plus its vouchers' bonds).
        let (earned, _) = self.earned_ring(&entry, agent)?;
        // An elevation granted on a trust the agent no longer has ends now.
        let standing = self.standing(session, agent)?;
        if let Some((elevated, _)) = standing.elevation()
            && self
                .inner
                .security
                .elevation
                .min_trust(elevated)
                .is_none_or(|need| sigma < need)
        {
            self.revoke_elevation(
                session,
                agent,
                &format!("trust fell to {sigma:.2}, below what {elevated} needs"),
            )?;
        }
        self.demote_by_trust(session, agent, earned, &format!("trust fell to {sigma:.2}"))?;
        Ok(self.standing(session, agent)?.base())
    }

    /// Ends `agent`'s quarantine. Emits `liability.quarantine_released`;
    /// returns whether it was quarantined.
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`], [`SessionError::NotAParticipant`].
    pub fn release(&self, session: &SessionId, agent: &AgentId) -> Result<bool, HypervisorError> {
        let standing = self.standing(session, agent)?;
        self.settle(session, agent, &standing);
        if !standing.release() {
            return Ok(false);
        }
        self.quarantine_ended(session, agent, "released");
        self.emit(
            &mut self.op(),
            session,
            Some(agent),
            EventPayload::LiabilityQuarantineReleased {
                reason: "released".into(),
            },
        );
        Ok(true)
    }
}
