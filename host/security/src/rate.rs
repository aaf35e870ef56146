//! Token buckets per (agent, session), sized by ring (SEMANTICS.md, "Security").
//!
//! Every governed call takes one token from the caller's bucket for its
//! [`CallClass`]; an empty bucket is a refusal with a retry-after
//! ([`RateDenied`]), never a trap. Each ring has its own rate and burst
//! ([`RateTable`]), and a ring change re-sizes the bucket but does not refill
//! it: an agent elevated from ring 3 to ring 2 keeps the level it had, and
//! only the refill rate and the cap change.
//!
//! We do not use `governor`: its GCRA quota is fixed per limiter, so a ring
//! change could not re-size a bucket while keeping its level. The bucket here
//! is a few lines of arithmetic on an `f64` level and a last-refill time from
//! an injected [`Clock`].
//!
//! The hot path is [`ParticipantBuckets::try_acquire`]: one uncontended mutex,
//! no allocation, no hashing. The gate should look a participant's buckets up
//! once ([`RateLimiter::buckets`]) and keep the `Arc`; holding it also keeps the
//! entry from being evicted.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ahv_core::{AgentId, Clock, Ring, SessionId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Levels this close below a whole token count as one: the refill and the
/// retry-after are computed in floating point, and a caller who waits exactly
/// the advertised retry-after must get its token.
const WHOLE_TOKEN_SLACK: f64 = 1e-9;

/// The rate and burst of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// Tokens added per second; 0 means the burst is all there ever is.
    pub rate_per_sec: f64,
    /// Capacity of the bucket, and its level when created.
    pub burst: u32,
}

impl BucketSpec {
    /// Checks that the rate is finite and ≥ 0 and the burst ≥ 1.
    ///
    /// # Errors
    /// [`RateError::InvalidSpec`] naming the field and its value.
    pub fn validate(&self) -> Result<(), RateError> {
        if !self.rate_per_sec.is_finite() || self.rate_per_sec < 0.0 {
            return Err(RateError::InvalidSpec {
                field: "rate_per_sec",
                value: self.rate_per_sec,
                reason: "must be a finite number ≥ 0",
            });
        }
        if self.burst == 0 {
            return Err(RateError::InvalidSpec {
                field: "burst",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}

/// Which bucket a governed call draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallClass {
    /// Calls that change something or reach out: writes, state writes,
    /// actions, effects, spawn, elevation requests, admin.
    Change,
    /// Calls that only read.
    Read,
}

impl CallClass {
    const fn index(self) -> usize {
        match self {
            CallClass::Change => 0,
            CallClass::Read => 1,
        }
    }
}

/// The bucket sizes of every ring, for both call classes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RateTableDef", into = "RateTableDef")]
pub struct RateTable {
    change: [BucketSpec; 4],
    read: [BucketSpec; 4],
}

/// The serialized form of a [`RateTable`]: validated on load.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateTableDef {
    change: [BucketSpec; 4],
    read: [BucketSpec; 4],
}

impl TryFrom<RateTableDef> for RateTable {
    type Error = RateError;

    fn try_from(def: RateTableDef) -> Result<Self, RateError> {
        for spec in def.change.iter().chain(def.read.iter()) {
            spec.validate()?;
        }
        Ok(RateTable {
            change: def.change,
            read: def.read,
        })
    }
}

impl From<RateTable> for RateTableDef {
    fn from(t: RateTable) -> Self {
        RateTableDef {
            change: t.change,
            read: t.read,
        }
    }
}

impl Default for RateTable {
    /// Changes: R0 100/s burst 200, R1 50/100, R2 20/40, R3 5/10; reads ten times that.
    fn default() -> Self {
        let change =
            [(100.0, 200), (50.0, 100), (20.0, 40), (5.0, 10)].map(|(rate, burst)| BucketSpec {
                rate_per_sec: rate,
                burst,
            });
        let read = change.map(|s| BucketSpec {
            rate_per_sec: s.rate_per_sec * 10.0,
            burst: s.burst * 10,
        });
        RateTable { change, read }
    }
}

impl RateTable {
    /// The bucket size for `class` at `ring`.
    #[inline]
    pub fn spec(&self, class: CallClass, ring: Ring) -> BucketSpec {
        let row = match class {
            CallClass::Change => &self.change,
            CallClass::Read => &self.read,
        };
        row[ring.number() as usize]
    }

    /// This table with the bucket size for `class` at `ring` replaced.
    ///
    /// # Errors
    /// [`RateError::InvalidSpec`] if `spec` does not validate.
    pub fn with_spec(
        mut self,
        class: CallClass,
        ring: Ring,
        spec: BucketSpec,
    ) -> Result<Self, RateError> {
        spec.validate()?;
        let row = match class {
            CallClass::Change => &mut self.change,
            CallClass::Read => &mut self.read,
        };
        row[ring.number() as usize] = spec;
        Ok(self)
    }
}

/// Why a token was refused: not yet, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDenied {
    /// One whole token will be available after this long.
    RetryAfter(Duration),
    /// The rate is 0 and the burst is spent: no token will ever come.
    Never,
}

impl RateDenied {
    /// The retry-after in whole milliseconds, rounded up, at least 1;
    /// `u64::MAX` for [`RateDenied::Never`] or a wait too long to express.
    pub fn retry_after_ms(&self) -> u64 {
        match self {
            RateDenied::RetryAfter(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000).max(1);
                u64::try_from(ms).unwrap_or(u64::MAX)
            }
            RateDenied::Never => u64::MAX,
        }
    }
}

impl fmt::Display for RateDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateDenied::RetryAfter(_) => write!(f, "retry after {} ms", self.retry_after_ms()),
            RateDenied::Never => write!(
                f,
                "no token will ever come (rate 0, burst spent; retry after {} ms)",
                self.retry_after_ms()
            ),
        }
    }
}

impl std::error::Error for RateDenied {}

/// One token bucket: a level in tokens and the time it was last refilled.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    level: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket of `spec`'s burst at time `now`.
    pub fn new(spec: &BucketSpec, now: Duration) -> TokenBucket {
        TokenBucket {
            level: f64::from(spec.burst),
            last: now,
        }
    }

    /// The tokens in the bucket as of its last refill.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// Adds what `rate_per_sec` earned since the last refill, capped at the burst.
    /// A clock that went backwards earns nothing and does not move `last` back,
    /// so the same interval is never paid twice.
    fn refill(&mut self, spec: &BucketSpec, now: Duration) {
        let Some(elapsed) = now.checked_sub(self.last) else {
            return;
        };
        self.last = now;
        let earned = elapsed.as_secs_f64() * spec.rate_per_sec;
        // `>` is false for NaN and negative rates: a bad spec never mints tokens.
        if earned > 0.0 {
            self.level = (self.level + earned).min(f64::from(spec.burst));
        }
    }

    /// Refills, then takes one token.
    ///
    /// # Errors
    /// [`RateDenied::RetryAfter`] with the exact wait until one whole token is
    /// available, or [`RateDenied::Never`] when the rate is 0.
    pub fn try_take(&mut self, spec: &BucketSpec, now: Duration) -> Result<(), RateDenied> {
        self.refill(spec, now);
        if self.level >= 1.0 - WHOLE_TOKEN_SLACK {
            self.level = (self.level - 1.0).max(0.0);
            return Ok(());
        }
        if spec.rate_per_sec.is_nan() || spec.rate_per_sec <= 0.0 {
            return Err(RateDenied::Never);
        }
        let nanos = ((1.0 - self.level) / spec.rate_per_sec * 1e9).ceil();
        let wait = if nanos < u64::MAX as f64 {
            Duration::from_nanos(nanos as u64)
        } else {
            Duration::MAX
        };
        Err(RateDenied::RetryAfter(wait))
    }

    /// Re-sizes the bucket for a new spec: refills at the `old` rate up to `now`,
    /// then clamps the level to the `new` burst. It never adds tokens beyond what
    /// the old rate earned.
    pub fn resize(&mut self, old: &BucketSpec, new: &BucketSpec, now: Duration) {
        self.refill(old, now);
        self.level = self.level.min(f64::from(new.burst));
    }
}

/// What [`ParticipantBuckets`] guards with its mutex.
#[derive(Debug)]
struct Buckets {
    ring: Ring,
    buckets: [TokenBucket; 2],
}

/// The buckets of one (agent, session): one per [`CallClass`], sized for the
/// ring they were last used at.
#[derive(Debug)]
pub struct ParticipantBuckets {
    table: RateTable,
    inner: Mutex<Buckets>,
}

impl ParticipantBuckets {
    /// Full buckets sized for `ring` at time `now`.
    pub fn new(table: RateTable, ring: Ring, now: Duration) -> ParticipantBuckets {
        let buckets = [CallClass::Change, CallClass::Read]
            .map(|class| TokenBucket::new(&table.spec(class, ring), now));
        ParticipantBuckets {
            table,
            inner: Mutex::new(Buckets { ring, buckets }),
        }
    }

    /// The ring the buckets are currently sized for.
    pub fn ring(&self) -> Ring {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ring
    }

    /// Takes one token of `class` for a caller now at `ring`. If the ring
    /// changed since the last call, both buckets are re-sized first, keeping
    /// their levels (never refilled by the change).
    ///
    /// # Errors
    /// [`RateDenied`] when the bucket is empty.
    pub fn try_acquire(
        &self,
        class: CallClass,
        ring: Ring,
        now: Duration,
    ) -> Result<(), RateDenied> {
        // Every critical section below is panic-free arithmetic, so a poisoned
        // lock can only come from a panic elsewhere; the data is still sound.
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        if inner.ring != ring {
            for c in [CallClass::Change, CallClass::Read] {
                let old = self.table.spec(c, inner.ring);
                let new = self.table.spec(c, ring);
                inner.buckets[c.index()].resize(&old, &new, now);
            }
            inner.ring = ring;
        }
        let spec = self.table.spec(class, ring);
        inner.buckets[class.index()].try_take(&spec, now)
    }
}

/// Errors of the rate limiter.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RateError {
    /// A bucket spec field out of range.
    #[error("bucket spec {field} = {value}: {reason}")]
    InvalidSpec {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What it must be.
        reason: &'static str,
    },
    /// The registry is full and every entry is in use.
    #[error("rate limiter holds its maximum of {max} buckets and none is free to evict")]
    TooManyBuckets {
        /// The bound.
        max: usize,
    },
    /// The call was refused.
    #[error("rate limited: {0}")]
    Limited(RateDenied),
}

/// The registry of [`ParticipantBuckets`], keyed by the (agent, session) pair,
/// with a bounded number of entries.
#[derive(Debug)]
pub struct RateLimiter {
    table: RateTable,
    clock: Arc<dyn Clock>,
    max_buckets: usize,
    entries: Mutex<HashMap<(AgentId, SessionId), Arc<ParticipantBuckets>>>,
}

impl RateLimiter {
    /// A limiter with `table`'s sizes, time from `clock`, and at most
    /// `max_buckets` (agent, session) entries (0 refuses every participant).
    pub fn new(table: RateTable, clock: Arc<dyn Clock>, max_buckets: usize) -> RateLimiter {
        RateLimiter {
            table,
            clock,
            max_buckets,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The buckets of (`agent`, `session`), created full for `ring` on first use.
    /// When the registry is full, every entry nobody else holds is evicted first.
    ///
    /// # Errors
    /// [`RateError::TooManyBuckets`] when full and every entry is held.
    pub fn buckets(
        &self,
        agent: &AgentId,
        session: &SessionId,
        ring: Ring,
    ) -> Result<Arc<ParticipantBuckets>, RateError> {
        let key = (agent.clone(), session.clone());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = entries.get(&key) {
            return Ok(Arc::clone(b));
        }
        if entries.len() >= self.max_buckets {
            // Evicting all idle entries at once keeps insertion amortised O(1).
            entries.retain(|_, b| Arc::strong_count(b) > 1);
            if entries.len() >= self.max_buckets {
                return Err(RateError::TooManyBuckets {
                    max: self.max_buckets,
                });
            }
        }
        let b = Arc::new(ParticipantBuckets::new(self.table, ring, self.clock.now()));
        entries.insert(key, Arc::clone(&b));
        Ok(b)
    }

    /// Forgets the buckets of (`agent`, `session`); holders keep their `Arc`.
    pub fn remove(&self, agent: &AgentId, session: &SessionId) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Nothing to hash the key for (no participant has run an instance).
        if !entries.is_empty() {
            entries.remove(&(agent.clone(), session.clone()));
        }
    }

    /// The number of (agent, session) entries.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket sizes.
    pub fn table(&self) -> &RateTable {
        &self.table
    }

    /// The clock buckets are refilled by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Looks up (`agent`, `session`) and takes one token of `class` at `ring`,
    /// now. This hashes the ids; the gate should keep [`RateLimiter::buckets`]'s
    /// `Arc` instead.
    ///
    /// # Errors
    /// [`RateError::Limited`] when refused, [`RateError::TooManyBuckets`] when
    /// no entry can be made.
    pub fn try_acquire(
        &self,
        agent: &AgentId,
        session: &SessionId,
        class: CallClass,
        ring: Ring,
    ) -> Result<(), RateError> {
        let b = self.buckets(agent, session, ring)?;
        b.try_acquire(class, ring, self.clock.now())
            .map_err(RateError::Limited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahv_core::FakeClock;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn ids(a: &str, s: &str) -> (AgentId, SessionId) {
        (AgentId::new(a).unwrap(), SessionId::new(s).unwrap())
    }

    fn limiter(max: usize) -> (FakeClock, RateLimiter) {
        let clock = FakeClock::new();
        let l = RateLimiter::new(RateTable::default(), Arc::new(clock.clone()), max);
        (clock, l)
    }

    fn spec(rate_per_sec: f64, burst: u32) -> BucketSpec {
        BucketSpec {
            rate_per_sec,
            burst,
        }
    }

    /// Takes until refused; returns how many passed.
    fn drain(b: &ParticipantBuckets, class: CallClass, ring: Ring, now: Duration) -> usize {
        (0..100_000)
            .take_while(|_| b.try_acquire(class, ring, now).is_ok())
            .count()
    }

    #[test]
    fn ring_3_allows_ten_changes_then_asks_to_retry_after_200_ms() {
        let (clock, l) = limiter(16);
        let (a, s) = ids("agent", "s1");
        for i in 0..10 {
            assert_eq!(
                l.try_acquire(&a, &s, CallClass::Change, Ring::Sandbox),
                Ok(()),
                "take {i}"
            );
        }
        let denied = l.try_acquire(&a, &s, CallClass::Change, Ring::Sandbox);
        assert_eq!(
            denied,
            Err(RateError::Limited(RateDenied::RetryAfter(200 * MS)))
        );
        assert!(denied.unwrap_err().to_string().contains("200 ms"));
        clock.advance(200 * MS);
        assert_eq!(
            l.try_acquire(&a, &s, CallClass::Change, Ring::Sandbox),
            Ok(())
        );
        assert!(
            l.try_acquire(&a, &s, CallClass::Change, Ring::Sandbox)
                .is_err()
        );
    }

    #[test]
    fn rate_zero_spent_bucket_is_never() {
        let mut b = TokenBucket::new(&spec(0.0, 1), Duration::ZERO);
        let s = spec(0.0, 1);
        assert_eq!(b.try_take(&s, Duration::ZERO), Ok(()));
        assert_eq!(
            b.try_take(&s, Duration::from_secs(1_000_000)),
            Err(RateDenied::Never)
        );
        assert_eq!(RateDenied::Never.retry_after_ms(), u64::MAX);
    }

    #[test]
    fn retry_after_ms_rounds_up_to_at_least_one_and_saturates() {
        assert_eq!(
            RateDenied::RetryAfter(Duration::from_nanos(1)).retry_after_ms(),
            1
        );
        assert_eq!(RateDenied::RetryAfter(Duration::ZERO).retry_after_ms(), 1);
        assert_eq!(
            RateDenied::RetryAfter(Duration::from_micros(1_500)).retry_after_ms(),
            2
        );
        assert_eq!(
            RateDenied::RetryAfter(Duration::MAX).retry_after_ms(),
            u64::MAX
        );
    }

    #[test]
    fn a_tiny_rate_gives_a_saturated_wait_not_a_panic() {
        let s = spec(1e-300, 1);
        let mut b = TokenBucket::new(&s, Duration::ZERO);
        b.try_take(&s, Duration::ZERO).unwrap();
        assert_eq!(
            b.try_take(&s, Duration::ZERO),
            Err(RateDenied::RetryAfter(Duration::MAX))
        );
    }

    #[test]
    fn time_going_backwards_neither_panics_nor_mints_tokens() {
        let s = spec(10.0, 2);
        let mut b = TokenBucket::new(&s, Duration::from_secs(10));
        b.try_take(&s, Duration::from_secs(10)).unwrap();
        b.try_take(&s, Duration::from_secs(10)).unwrap();
        assert!(b.try_take(&s, Duration::from_secs(1)).is_err());
        // Back at the original time, nothing has been earned either.
        assert!(b.try_take(&s, Duration::from_secs(10)).is_err());
        assert_eq!(b.try_take(&s, Duration::from_secs(10) + 100 * MS), Ok(()));
    }

    #[test]
    fn an_invalid_spec_never_mints_tokens() {
        for bad in [f64::NAN, -5.0] {
            let s = spec(bad, 1);
            let mut b = TokenBucket::new(&s, Duration::ZERO);
            b.try_take(&s, Duration::ZERO).unwrap();
            assert_eq!(
                b.try_take(&s, Duration::from_secs(100)),
                Err(RateDenied::Never)
            );
        }
    }

    #[test]
    fn ten_threads_share_exactly_the_burst() {
        let table = RateTable::default()
            .with_spec(CallClass::Change, Ring::Standard, spec(0.0, 100))
            .unwrap();
        let b = ParticipantBuckets::new(table, Ring::Standard, Duration::ZERO);
        let ok = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..10 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if b.try_acquire(CallClass::Change, Ring::Standard, Duration::ZERO)
                            .is_ok()
                        {
                            ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.into_inner(), 100);
    }

    #[test]
    fn the_key_is_the_pair_not_a_joined_string() {
        let (_c, l) = limiter(16);
        let (a1, s1) = ids("a:b", "c");
        let (a2, s2) = ids("a", "b:c");
        for _ in 0..10 {
            l.try_acquire(&a1, &s1, CallClass::Change, Ring::Sandbox)
                .unwrap();
        }
        assert!(
            l.try_acquire(&a1, &s1, CallClass::Change, Ring::Sandbox)
                .is_err()
        );
        assert_eq!(
            l.try_acquire(&a2, &s2, CallClass::Change, Ring::Sandbox),
            Ok(())
        );
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn ring_change_resizes_without_refilling() {
        let b = ParticipantBuckets::new(RateTable::default(), Ring::Standard, Duration::ZERO);
        // 25 of R2's 40 spent leaves 15; at R3 that is clamped to 10, not refilled.
        for _ in 0..25 {
            b.try_acquire(CallClass::Change, Ring::Standard, Duration::ZERO)
                .unwrap();
        }
        assert_eq!(
            drain(&b, CallClass::Change, Ring::Sandbox, Duration::ZERO),
            10
        );
        assert_eq!(b.ring(), Ring::Sandbox);
        // Back to R2 with an empty bucket: it does not jump to 40.
        assert_eq!(
            drain(&b, CallClass::Change, Ring::Standard, Duration::ZERO),
            0
        );
        // It refills at R2's rate from here: 100 ms earns 2 tokens.
        assert_eq!(drain(&b, CallClass::Change, Ring::Standard, 100 * MS), 2);
    }

    #[test]
    fn ring_change_refills_at_the_old_rate_up_to_now() {
        let b = ParticipantBuckets::new(RateTable::default(), Ring::Sandbox, Duration::ZERO);
        assert_eq!(
            drain(&b, CallClass::Change, Ring::Sandbox, Duration::ZERO),
            10
        );
        // One second at R3's 5/s earns 5, not R2's 20.
        assert_eq!(
            drain(
                &b,
                CallClass::Change,
                Ring::Standard,
                Duration::from_secs(1)
            ),
            5
        );
    }

    #[test]
    fn reads_and_changes_have_separate_buckets() {
        let b = ParticipantBuckets::new(RateTable::default(), Ring::Sandbox, Duration::ZERO);
        assert_eq!(
            drain(&b, CallClass::Change, Ring::Sandbox, Duration::ZERO),
            10
        );
        assert_eq!(
            drain(&b, CallClass::Read, Ring::Sandbox, Duration::ZERO),
            100
        );
    }

    #[test]
    fn idle_entries_are_evicted_when_full_and_held_ones_are_not() {
        let (_c, l) = limiter(2);
        let (a, s1) = ids("a", "s1");
        let (_, s2) = ids("a", "s2");
        let (_, s3) = ids("a", "s3");
        let held = l.buckets(&a, &s1, Ring::Sandbox).unwrap();
        l.buckets(&a, &s2, Ring::Sandbox).unwrap();
        assert_eq!(l.len(), 2);
        let third = l.buckets(&a, &s3, Ring::Sandbox).unwrap();
        assert_eq!(l.len(), 2, "the idle s2 entry made room");
        let (_, s4) = ids("a", "s4");
        assert_eq!(
            l.buckets(&a, &s4, Ring::Sandbox).unwrap_err(),
            RateError::TooManyBuckets { max: 2 }
        );
        drop(held);
        drop(third);
        assert!(l.buckets(&a, &s4, Ring::Sandbox).is_ok());
        assert_eq!(l.len(), 1, "both idle entries were evicted at once");
        l.remove(&a, &s4);
        assert!(l.is_empty());
    }

    #[test]
    fn an_existing_entry_is_found_even_when_full() {
        let (_c, l) = limiter(1);
        let (a, s) = ids("a", "s");
        let held = l.buckets(&a, &s, Ring::Sandbox).unwrap();
        let again = l.buckets(&a, &s, Ring::Sandbox).unwrap();
        assert!(Arc::ptr_eq(&held, &again));
    }

    #[test]
    fn a_poisoned_mutex_is_recovered() {
        let b = ParticipantBuckets::new(RateTable::default(), Ring::Sandbox, Duration::ZERO);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _g = b.inner.lock().unwrap();
                panic!("poison it");
            })
            .join()
        });
        assert!(b.inner.is_poisoned());
        assert_eq!(
            b.try_acquire(CallClass::Change, Ring::Sandbox, Duration::ZERO),
            Ok(())
        );
    }

    #[test]
    fn specs_are_validated_naming_the_field() {
        let t = RateTable::default();
        let e = t
            .with_spec(CallClass::Read, Ring::Root, spec(f64::INFINITY, 1))
            .unwrap_err();
        assert!(matches!(
            e,
            RateError::InvalidSpec {
                field: "rate_per_sec",
                ..
            }
        ));
        let e = t
            .with_spec(CallClass::Read, Ring::Root, spec(1.0, 0))
            .unwrap_err();
        assert!(matches!(e, RateError::InvalidSpec { field: "burst", .. }));
        assert!(spec(0.0, 1).validate().is_ok());
        assert!(spec(-0.5, 1).validate().is_err());
    }

    #[test]
    fn default_table_matches_the_semantics() {
        let t = RateTable::default();
        assert_eq!(t.spec(CallClass::Change, Ring::Root), spec(100.0, 200));
        assert_eq!(t.spec(CallClass::Change, Ring::Privileged), spec(50.0, 100));
        assert_eq!(t.spec(CallClass::Change, Ring::Standard), spec(20.0, 40));
        assert_eq!(t.spec(CallClass::Change, Ring::Sandbox), spec(5.0, 10));
        assert_eq!(t.spec(CallClass::Read, Ring::Root), spec(1000.0, 2000));
        assert_eq!(t.spec(CallClass::Read, Ring::Sandbox), spec(50.0, 100));
    }

    #[test]
    fn table_loads_from_toml_and_refuses_bad_or_unknown_fields() {
        let row = |r: &str| {
            format!(
                "{r} = [{{ rate_per_sec = 1.0, burst = 2 }}, {{ rate_per_sec = 1.0, burst = 2 }}, {{ rate_per_sec = 1.0, burst = 2 }}, {{ rate_per_sec = 0.0, burst = 3 }}]\n"
            )
        };
        let ok = format!("{}{}", row("change"), row("read"));
        let t: RateTable = toml::from_str(&ok).unwrap();
        assert_eq!(t.spec(CallClass::Read, Ring::Sandbox), spec(0.0, 3));
        let back: RateTable = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        let bad = ok.replace("burst = 3", "burst = 0");
        assert!(toml::from_str::<RateTable>(&bad).is_err());
        let unknown = format!("{ok}extra = 1\n");
        assert!(toml::from_str::<RateTable>(&unknown).is_err());
        let unknown_in_spec = ok.replace("burst = 3", "burst = 3, jitter = 1");
        assert!(toml::from_str::<RateTable>(&unknown_in_spec).is_err());
    }

    #[test]
    fn participant_buckets_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ParticipantBuckets>();
        check::<RateLimiter>();
    }

    proptest! {
        #[test]
        fn successes_never_exceed_burst_plus_rate_times_elapsed(
            rate in 0.0f64..200.0,
            burst in 1u32..50,
            steps in proptest::collection::vec((0u64..500, 1usize..20), 1..60),
        ) {
            let s = spec(rate, burst);
            let mut b = TokenBucket::new(&s, Duration::ZERO);
            let mut now = Duration::ZERO;
            let mut ok = 0u64;
            for (advance_ms, takes) in steps {
                now += Duration::from_millis(advance_ms);
                for _ in 0..takes {
                    if b.try_take(&s, now).is_ok() {
                        ok += 1;
                    }
                }
                let bound = f64::from(burst) + rate * now.as_secs_f64();
                prop_assert!(ok as f64 <= bound + 1e-6, "{ok} > {bound}");
            }
        }

        #[test]
        fn waiting_the_advertised_retry_after_always_yields_a_token(
            rate in 0.001f64..1000.0,
            burst in 1u32..20,
            offset_ms in 0u64..10_000,
        ) {
            let s = spec(rate, burst);
            let start = Duration::from_millis(offset_ms);
            let mut b = TokenBucket::new(&s, start);
            for _ in 0..burst {
                b.try_take(&s, start).unwrap();
            }
            let Err(RateDenied::RetryAfter(wait)) = b.try_take(&s, start) else {
                return Err(TestCaseError::fail("expected a retry-after"));
            };
            prop_assert_eq!(b.try_take(&s, start + wait), Ok(()));
        }
    }
}
