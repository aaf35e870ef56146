//! The gate: the one checkpoint every governed host call passes before its
//! adapter runs.
//!
//! It decides, in this order, from the caller's standing *now* (not from the
//! ring its instance was built in):
//! 1. killed? — the call traps with [`Killed`](crate::trap::Killed);
//! 2. quarantined? — every capability but `context` and `log` refuses with
//!    the WIT error `quarantined` (a value the guest can handle);
//! 3. is the capability inside the *effective* ring (an elevation counts, a
//!    demotion counts at once)? — if not, a ring breach: recorded first
//!    (the [`BreachRecorder`]), then the trap;
//! 4. does the rate limiter admit the call? — if not, the WIT error
//!    `rate-limited` with the time to wait;
//! 5. the adapter runs.
//!
//! Changes that became due (an elevation or a quarantine that ran out) are
//! claimed by the read that notices them and reported once to the
//! [`Governor`]. Breach stubs — the functions linked for capabilities an
//! agent can never be granted in its session — go through the gate as well.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::standing::{Standing, Transition};
use ahv_core::{AgentId, Capability, CapabilitySet, Metering, Ring, SessionId, TraceId};
use ahv_governance::files::Caller;

use crate::adapters::HostError;
use crate::bindings::WitError;
use crate::state::KillHandle;
use crate::trap::{BreachRecorder, RingBreach};

/// A rate budget for one (agent, session): the gate asks it before every
/// metered call (see `crate::rate` for the token buckets behind it).
pub trait RateBudget: Send + Sync {
    /// Takes one token of `metering`'s class at `ring`'s rates, now (by the
    /// budget's own clock). `Err(Some(d))`: retry after `d`; `Err(None)`:
    /// never (the budget does not refill).
    ///
    /// # Errors
    /// When the budget is used up.
    fn try_acquire(&self, metering: Metering, ring: Ring) -> Result<(), Option<Duration>>;
}

/// Who a gate decision or a governor request is about.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// The calling agent.
    pub agent: &'a AgentId,
    /// Its session.
    pub session: &'a SessionId,
    /// Its effective ring at the time of the call.
    pub ring: Ring,
    /// The call's trace id.
    pub trace: TraceId,
    /// Its standing (base ring, elevation, quarantine).
    pub standing: &'a Arc<Standing>,
}

/// A refusal a [`Governor`] returns: the guest sees it as a WIT error value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A rule refused the request; the message names the rule.
    #[error("denied: {0}")]
    Denied(String),
    /// The named agent (or thing) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An argument is malformed (an agent id, a ring number).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The work ran and failed (a child agent trapped).
    #[error("failed: {0}")]
    Failed(String),
}

impl From<Refusal> for HostError {
    fn from(r: Refusal) -> Self {
        HostError::Refused(match r {
            Refusal::Denied(m) => WitError::Denied(m),
            Refusal::NotFound(m) => WitError::NotFound(m),
            Refusal::Invalid(m) => WitError::InvalidKey(m),
            Refusal::Failed(m) => WitError::ActionFailed(m),
        })
    }
}

/// An elevation a guest asks for (the `elevation.request` arguments).
#[derive(Debug, Clone, Copy)]
pub struct ElevationAsk<'a> {
    /// The ring asked for.
    pub ring: Ring,
    /// The time to live asked for (`None`: the host's default).
    pub ttl: Option<Duration>,
    /// Why (kept in the audit log).
    pub justification: &'a str,
    /// The text form of a sponsor's attestation, if any.
    pub sponsorship: Option<&'a str>,
}

/// An elevation in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElevationGrant {
    /// The ring it grants.
    pub ring: Ring,
    /// Time left.
    pub remaining: Duration,
}

/// What the host knows about one participant (the `admin` capability's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantView {
    /// Its id.
    pub agent: AgentId,
    /// Its base ring.
    pub base_ring: Ring,
    /// The ring its calls are judged at now.
    pub effective_ring: Ring,
    /// Quarantined now.
    pub quarantined: bool,
}

/// One administrative operation on another agent of the caller's session.
#[derive(Debug, Clone, Copy)]
pub enum AdminOp<'a> {
    /// Kill it, for this reason.
    Kill {
        /// The agent.
        agent: &'a str,
        /// Why.
        reason: &'a str,
    },
    /// Quarantine it (`None`: until released).
    Quarantine {
        /// The agent.
        agent: &'a str,
        /// Why.
        reason: &'a str,
        /// For how long.
        duration: Option<Duration>,
    },
    /// End its quarantine.
    Release {
        /// The agent.
        agent: &'a str,
    },
}

/// A boxed future a [`Governor`] returns for work that waits (a child's run).
pub type GovernorFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The host's side of the decisions the runtime cannot make alone: who may
/// be elevated, what administration does, and where the gate's
/// observations go. The hypervisor implements it; every method has a
/// default that refuses or only logs, so a bare runtime grants nothing.
pub trait Governor: Send + Sync {
    /// A change that became due was noticed by a call of `who` (an
    /// elevation or quarantine ran out). Called once per change.
    fn transition(&self, who: Who<'_>, transition: Transition) {
        tracing::info!(agent = %who.agent, session = %who.session, ?transition, "standing changed");
    }

    /// `who` was refused a call by its rate limit. Called for the first
    /// refusal after an admitted call (then every 100th), with the number of
    /// refusals so far, so that a guest spinning on a refusal cannot flood
    /// the audit log.
    fn rate_limited(
        &self,
        who: Who<'_>,
        capability: Capability,
        function: &str,
        retry_after: Option<Duration>,
        refused: u64,
    ) {
        tracing::info!(agent = %who.agent, %capability, function, ?retry_after, refused, "rate limited");
    }

    /// `who` asks for an elevation.
    ///
    /// # Errors
    /// A [`Refusal`] naming the rule that refused; by default every request.
    fn request_elevation(
        &self,
        who: Who<'_>,
        ask: ElevationAsk<'_>,
    ) -> Result<ElevationGrant, Refusal> {
        let _ = (who, ask);
        Err(Refusal::Denied(
            "elevation: this host grants no elevations (no governor configured)".into(),
        ))
    }

    /// `who` gives up its elevation; returns the ring it granted, if any.
    fn relinquish_elevation(&self, who: Who<'_>) -> Option<Ring> {
        who.standing.revoke_elevation()
    }

    /// The participants of `who`'s session.
    ///
    /// # Errors
    /// A [`Refusal`]; by default there is no session to administer.
    fn participants(&self, who: Who<'_>) -> Result<Vec<ParticipantView>, Refusal> {
        let _ = who;
        Err(Refusal::Denied(
            "admin: this agent runs outside a governed session".into(),
        ))
    }

    /// Starts a child of `who` from the component named `component` (a
    /// registered name or a SHA-256 digest); returns the child's id.
    ///
    /// # Errors
    /// A [`Refusal`]; by default there is no session to spawn into.
    fn spawn_child(
        &self,
        who: Who<'_>,
        component: &str,
    ) -> GovernorFuture<Result<AgentId, Refusal>> {
        let _ = (who, component);
        Box::pin(async {
            Err(Refusal::Denied(
                "spawn: this agent runs outside a governed session".into(),
            ))
        })
    }

    /// Runs `child` (a child of `parent`) with `input`; resolves to its
    /// answer or its own failure message.
    fn run_child(
        &self,
        session: SessionId,
        parent: AgentId,
        child: String,
        input: String,
    ) -> GovernorFuture<Result<Result<String, String>, Refusal>> {
        let _ = (session, parent, child, input);
        Box::pin(async {
            Err(Refusal::Denied(
                "spawn: this agent runs outside a governed session".into(),
            ))
        })
    }

    /// Stops `child`, a child of `who`, and its children.
    ///
    /// # Errors
    /// A [`Refusal`]; by default there is no session.
    fn stop_child(&self, who: Who<'_>, child: &str) -> Result<(), Refusal> {
        let _ = (who, child);
        Err(Refusal::Denied(
            "spawn: this agent runs outside a governed session".into(),
        ))
    }

    /// The live children of `who`.
    ///
    /// # Errors
    /// A [`Refusal`]; by default there is no session.
    fn children(&self, who: Who<'_>) -> Result<Vec<AgentId>, Refusal> {
        let _ = who;
        Err(Refusal::Denied(
            "spawn: this agent runs outside a governed session".into(),
        ))
    }

    /// Runs an administrative operation for `who`.
    ///
    /// # Errors
    /// A [`Refusal`]; by default there is no session to administer.
    fn admin(&self, who: Who<'_>, op: AdminOp<'_>) -> Result<bool, Refusal> {
        let _ = (who, op);
        Err(Refusal::Denied(
            "admin: this agent runs outside a governed session".into(),
        ))
    }
}

/// The governor of a bare runtime: grants nothing, logs observations.
#[derive(Debug, Default)]
pub struct NoGovernor;

impl Governor for NoGovernor {}

/// How often a run of rate-limit refusals is reported after the first.
const RATE_REPORT_EVERY: u64 = 100;

/// The per-instance state of the gate.
pub(crate) struct Gate {
    pub(crate) agent: AgentId,
    pub(crate) session: SessionId,
    pub(crate) standing: Arc<Standing>,
    /// The capabilities of each ring, by ring number.
    pub(crate) rings: [CapabilitySet; 4],
    pub(crate) rate: Option<Arc<dyn RateBudget>>,
    pub(crate) recorder: Arc<dyn BreachRecorder>,
    pub(crate) governor: Arc<dyn Governor>,
    pub(crate) kill: KillHandle,
    /// The runtime's counters (host calls, breaches, refusals).
    pub(crate) metrics: Arc<crate::metrics::RuntimeMetrics>,
    /// Host calls admitted since the last [`Gate::publish_metrics`], by
    /// capability and ring.
    pending_calls: [[u64; 4]; Capability::ALL.len()],
    /// Whether `pending_calls` holds any: a call that made no host call
    /// (most of a short agent's) skips the 52 cells.
    calls_pending: bool,
    /// The current call's trace id.
    pub(crate) trace: TraceId,
    /// The current call's deadline budget (its effective ring's).
    pub(crate) deadline: Duration,
    /// When the current call must end. Set by `AgentState::arm` before any
    /// guest code runs (an instantiation's start functions included), and
    /// read by the epoch callback, `locks` (no lock wait outlives it) and
    /// `spawn`; until the first `arm` it is the gate's creation time, so a
    /// wait bounded by it would not wait at all.
    pub(crate) call_deadline: Instant,
    /// Refusals since the last admitted metered call.
    rate_refused: u64,
}

/// What [`Gate::new`] needs.
pub(crate) struct GateInit {
    pub agent: AgentId,
    pub session: SessionId,
    pub standing: Arc<Standing>,
    pub rings: [CapabilitySet; 4],
    pub rate: Option<Arc<dyn RateBudget>>,
    pub recorder: Arc<dyn BreachRecorder>,
    pub governor: Arc<dyn Governor>,
    pub kill: KillHandle,
    pub metrics: Arc<crate::metrics::RuntimeMetrics>,
}

impl Gate {
    /// `now`: the instantiation's start (the call deadline until the first call arms one).
    pub(crate) fn new(init: GateInit, now: Instant) -> Gate {
        Gate {
            agent: init.agent,
            session: init.session,
            standing: init.standing,
            rings: init.rings,
            rate: init.rate,
            recorder: init.recorder,
            governor: init.governor,
            kill: init.kill,
            metrics: init.metrics,
            pending_calls: [[0; 4]; Capability::ALL.len()],
            calls_pending: false,
            trace: TraceId(0),
            deadline: Duration::ZERO,
            call_deadline: now,
            rate_refused: 0,
        }
    }

    /// The checkpoint: returns the effective ring the call is judged at, a
    /// refusal, or the trap (a breach, recorded first, or a kill).
    #[inline]
    pub(crate) fn admit(
        &mut self,
        capability: Capability,
        function: &'static str,
    ) -> Result<Ring, HostError> {
        let check = self.standing.check();
        if !check.transitions.is_empty() {
            self.report(check.ring, &check.transitions);
        }
        if check.killed {
            return Err(HostError::Trap(self.killed()));
        }
        if check.quarantined && !matches!(capability, Capability::Context | Capability::Log) {
            return Err(HostError::Refused(WitError::Quarantined(format!(
                "{capability}/{function}: agent {} is quarantined; only context and log answer until it is released",
                self.agent
            ))));
        }
        let ring = check.ring;
        if !self.rings[ring.number() as usize].contains(capability) {
            return Err(HostError::Trap(self.breach(ring, capability, function)));
        }
        if let Some(rate) = &self.rate {
            let metering = capability.metering(function);
            if metering != Metering::Free {
                if let Err(retry) = rate.try_acquire(metering, ring) {
                    return Err(self.rate_limited(ring, capability, function, retry));
                }
                self.rate_refused = 0;
            }
        }
        // Counted here, published at the end of the call: a plain add
        // instead of an atomic one on a counter every instance shares.
        self.pending_calls[capability as usize][ring.number() as usize] += 1;
        self.calls_pending = true;
        Ok(ring)
    }

    /// Adds the host calls counted since the last time to the runtime's
    /// metrics (at the end of every call into the agent).
    pub(crate) fn publish_metrics(&mut self) {
        if !std::mem::take(&mut self.calls_pending) {
            return;
        }
        for (cap, row) in self.pending_calls.iter_mut().enumerate() {
            for (ring, n) in row.iter_mut().enumerate() {
                if *n > 0 {
                    self.metrics.add_calls(cap, ring, *n);
                    *n = 0;
                }
            }
        }
    }

    /// The effective ring now, reporting any change that became due (used
    /// when a call starts, to pick its budgets).
    pub(crate) fn current_ring(&self) -> Ring {
        let check = self.standing.check();
        if !check.transitions.is_empty() {
            self.report(check.ring, &check.transitions);
        }
        check.ring
    }

    /// The gate for functions that cannot return an error value (`context`,
    /// `log`): only a kill or a breach stops them, both traps.
    #[inline]
    pub(crate) fn admit_free(
        &mut self,
        capability: Capability,
        function: &'static str,
    ) -> wasmtime::Result<Ring> {
        match self.admit(capability, function) {
            Ok(ring) => Ok(ring),
            Err(HostError::Trap(e)) => Err(e),
            // Unreachable by the order of checks (free capabilities are
            // neither quarantined nor metered); a trap rather than a lie.
            Err(HostError::Refused(e)) => Err(wasmtime::format_err!(
                "{capability}/{function} was refused ({e:?}) but cannot return an error"
            )),
        }
    }

    /// The gate of a breach stub: the capability can never be granted to
    /// this instance, so after the kill check every call is a breach.
    pub(crate) fn stub(&mut self, capability: Capability, function: &str) -> wasmtime::Error {
        let check = self.standing.check();
        if !check.transitions.is_empty() {
            self.report(check.ring, &check.transitions);
        }
        if check.killed {
            return self.killed();
        }
        self.breach(check.ring, capability, function)
    }

    fn killed(&self) -> wasmtime::Error {
        wasmtime::Error::new(self.kill.stop())
    }

    /// Records a breach, then returns the trap that carries it.
    fn breach(&mut self, ring: Ring, capability: Capability, function: &str) -> wasmtime::Error {
        let breach = RingBreach {
            agent: self.agent.clone(),
            session: self.session.clone(),
            ring,
            capability,
            function: function.to_string(),
            trace: self.trace,
        };
        self.recorder.record(&breach);
        self.metrics.breach(capability, ring);
        wasmtime::Error::new(breach)
    }

    #[cold]
    fn rate_limited(
        &mut self,
        ring: Ring,
        capability: Capability,
        function: &'static str,
        retry: Option<Duration>,
    ) -> HostError {
        self.rate_refused = self.rate_refused.saturating_add(1);
        if self.rate_refused == 1 || self.rate_refused.is_multiple_of(RATE_REPORT_EVERY) {
            self.governor.rate_limited(
                self.who(ring),
                capability,
                function,
                retry,
                self.rate_refused,
            );
        }
        let ms = retry.map_or(u64::MAX, |d| {
            // Round up: retrying after the given time must succeed.
            u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
        });
        HostError::Refused(WitError::RateLimited(ms))
    }

    #[cold]
    fn report(&self, ring: Ring, transitions: &[Transition]) {
        for t in transitions {
            self.governor.transition(self.who(ring), *t);
        }
    }

    /// The caller as the governor sees it.
    pub(crate) fn who(&self, ring: Ring) -> Who<'_> {
        Who {
            agent: &self.agent,
            session: &self.session,
            ring,
            trace: self.trace,
            standing: &self.standing,
        }
    }

    /// The caller as the domain types name it, at the ring the gate admitted.
    pub(crate) fn caller(&self, ring: Ring) -> Caller<'_> {
        Caller {
            agent: &self.agent,
            ring,
            trace: self.trace,
        }
    }
}
