//! # ahv-security: rate limits, breaches and elevation, as plain Rust
//!
//! The rules the runtime's gate applies on governed host calls, with no
//! wasmtime and no I/O (SEMANTICS.md, "Security" and "Rings"):
//!
//! - [`rate`]: token buckets per (agent, session), sized by ring and call
//!   class; a ring change re-sizes a bucket without refilling it, and a refusal
//!   is a value with a retry-after. The hot path is one uncontended mutex.
//! - [`breach`]: the breach detector (sliding window, severity amplified by
//!   ring distance, circuit breaker with cooldown) and the breach policy, the
//!   one place that decides what a breach costs.
//! - [`elevation`]: the rules for temporary elevation (sudo with a TTL) and
//!   sponsorships that are ed25519-signed attestations, not free strings.
//! - [`net`]: the outbound HTTP allow-list (hosts, ports, schemes,
//!   methods, injected credentials), strict authority parsing and the
//!   address classes a resolved name may not reach, with the size and time
//!   limits.
//! - [`policy`]: the TOML policy file that sets all of the above, the ring
//!   table (narrowing only) and per-agent grants of host actions.
//!
//! Time is injected ([`ahv_core::Clock`]); policies are data loaded with
//! `serde` and validated on load.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use ahv_core::{AgentId, Clock, FakeClock, Ring, SessionId};
//! use ahv_security::{
//!     Attestation, BreachAction, BreachDetector, BreachPolicy, BreachRule, BreachTrigger,
//!     CallClass, Consequence, ElevationRequest, ElevationRules, RateDenied, RateError,
//!     RateLimiter, RateTable, Sponsor, SponsorRegistry, decide_elevation,
//! };
//! use ed25519_dalek::SigningKey;
//!
//! let clock = FakeClock::new();
//! let agent = AgentId::new("did:example:alice")?;
//! let session = SessionId::new("s-1")?;
//!
//! // Rate limits: ring 3 may make 10 changing calls at once, then 5 per second.
//! let limiter = RateLimiter::new(RateTable::default(), Arc::new(clock.clone()), 1024);
//! let buckets = limiter.buckets(&agent, &session, Ring::Sandbox)?; // the gate keeps this
//! for _ in 0..10 {
//!     buckets.try_acquire(CallClass::Change, Ring::Sandbox, clock.now())?;
//! }
//! assert_eq!(
//!     limiter.try_acquire(&agent, &session, CallClass::Change, Ring::Sandbox),
//!     Err(RateError::Limited(RateDenied::RetryAfter(Duration::from_millis(200))))
//! );
//! clock.advance(Duration::from_millis(200));
//! assert!(limiter.try_acquire(&agent, &session, CallClass::Change, Ring::Sandbox).is_ok());
//!
//! // Breaches: ring 2 agents are demoted to ring 3 only when the breaker trips.
//! let policy = BreachPolicy::default().with_rule(
//!     Ring::Standard,
//!     BreachRule {
//!         action: BreachAction::Readmit { ring: Ring::Sandbox },
//!         trigger: BreachTrigger::BreakerTrip,
//!     },
//! )?;
//! let detector = BreachDetector::new(policy.detector().clone(), Arc::new(clock.clone()))?;
//! let first = detector.record(&agent, &session, Ring::Standard, Ring::Privileged);
//! assert_eq!(policy.decide(Ring::Standard, &first), Consequence::Restart);
//! let flood = (0..10)
//!     .map(|_| detector.record(&agent, &session, Ring::Standard, Ring::Privileged))
//!     .find(|a| a.tripped)
//!     .ok_or("the breaker should trip")?;
//! assert_eq!(
//!     policy.decide(Ring::Standard, &flood),
//!     Consequence::Apply(BreachAction::Readmit { ring: Ring::Sandbox })
//! );
//!
//! // Elevation to ring 1 needs trust ≥ 0.85 and a signed sponsorship.
//! let operator = SigningKey::from_bytes(&[7; 32]);
//! let sponsors = SponsorRegistry::new(Some(operator.verifying_key()));
//! let now_unix = 1_700_000_000;
//! let att = Attestation::sign(
//!     Sponsor::Operator, agent.clone(), session.clone(), Ring::Privileged, now_unix + 600, &operator,
//! );
//! // A guest hands the attestation over as text.
//! let att = Attestation::from_text(&att.to_text())?;
//! let request = ElevationRequest {
//!     agent: &agent,
//!     session: &session,
//!     base_ring: Ring::Standard,
//!     target: Ring::Privileged,
//!     ttl: Some(Duration::from_secs(7200)),
//!     justification: "rotate the deploy key",
//!     sponsorship: Some(&att),
//!     trust: 0.9,
//!     active: false,
//! };
//! let grant = decide_elevation(&ElevationRules::default(), &request, &sponsors, now_unix)?;
//! assert_eq!(grant.ring, Ring::Privileged);
//! assert_eq!(grant.ttl, Duration::from_secs(3600)); // clamped to the cap
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// A guest must never be able to make the host panic: no unwrap, expect or
// panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod breach;
pub mod elevation;
pub mod net;
pub mod policy;
pub mod rate;

pub use breach::{
    Assessment, BreachAction, BreachDetector, BreachPolicy, BreachPolicyError, BreachRule,
    BreachTrigger, Consequence, DetectorConfig, Severity,
};
pub use elevation::{
    Attestation, AttestationParseError, ElevationDenied, ElevationRequest, ElevationRules,
    ElevationRulesError, Grant, Sponsor, SponsorKeys, SponsorRegistry, SponsorshipError,
    decide as decide_elevation,
};
pub use policy::{Grants, Policy, PolicyError, PolicyFile};
pub use rate::{
    BucketSpec, CallClass, ParticipantBuckets, RateDenied, RateError, RateLimiter, RateTable,
    TokenBucket,
};

/// Rings in policy files: a number `0`..`3` or a name (`sandbox`); written as a number.
pub(crate) mod ring_serde {
    use std::fmt;

    use ahv_core::Ring;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(ring: &Ring, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(ring.number())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ring, D::Error> {
        d.deserialize_any(RingVisitor)
    }

    struct RingVisitor;

    impl Visitor<'_> for RingVisitor {
        type Value = Ring;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a ring: 0..=3 or root, privileged, standard, sandbox")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ring, E> {
            u8::try_from(v)
                .ok()
                .and_then(|n| Ring::from_number(n).ok())
                .ok_or_else(|| E::custom(format!("ring {v} does not exist (rings are 0..=3)")))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ring, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("ring {v} does not exist (rings are 0..=3)")))
                .and_then(|v| self.visit_u64(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Ring, E> {
            v.parse().map_err(E::custom)
        }
    }
}
