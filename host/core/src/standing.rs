//! A participant's standing: its effective ring *now*, elevation, quarantine
//! and kill, as one value shared by everything that decides about it.
//!
//! Rings change at run time (an elevation with a TTL, a demotion when trust
//! falls, a re-admission after a breach), so the ring a call is judged at
//! cannot be copied into an instance when it is built. One [`Standing`] per
//! (agent, session) is shared (`Arc`) by the runtime's gate, which reads it on
//! every governed host call, and by the hypervisor, which changes it. A
//! change is seen by the very next host call.
//!
//! The hot path is lock-free: one atomic load when nothing is pending, plus a
//! clock read while an elevation or a quarantine is in force (to notice its
//! expiry). Expiry takes effect at once — the first read after the deadline
//! sees the base ring — and is *claimed* exactly once ([`Transition`]), so the
//! `ring.elevation_expired` event is emitted once whoever notices it first.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use ahv_core::{FakeClock, Ring};
//! use ahv_core::standing::{Standing, Transition};
//!
//! let clock = FakeClock::new();
//! let s = Standing::new(Ring::Sandbox, Arc::new(clock.clone()));
//! s.elevate(Ring::Standard, Duration::from_secs(300))?;
//! assert_eq!(s.check().ring, Ring::Standard);
//! clock.advance(Duration::from_secs(300));
//! let seen = s.check();
//! assert_eq!(seen.ring, Ring::Sandbox, "expired: judged at the base ring at once");
//! assert_eq!(seen.transitions, [Transition::ElevationExpired { ring: Ring::Standard, back_to: Ring::Sandbox }]);
//! assert!(s.check().transitions.is_empty(), "claimed once");
//! # Ok::<(), ahv_core::standing::StandingError>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use thiserror::Error;

use crate::clock::Clock;
use crate::ring::Ring;

const RING_MASK: u32 = 0b11;
const ELEVATED_SHIFT: u32 = 2;
const ELEVATED: u32 = 1 << 4;
const QUARANTINED: u32 = 1 << 5;
const KILLED: u32 = 1 << 6;
/// Bits that send a read down the slow path (a clock read).
const TIMED: u32 = ELEVATED | QUARANTINED;
/// The low bits hold the state; the rest count writes, so that a reader's
/// compare-and-swap that claims an expiry fails if any writer came between
/// its loads and its swap (even one that left the state bits as they were).
const GENERATION_SHIFT: u32 = 8;
const STATE_MASK: u32 = (1 << GENERATION_SHIFT) - 1;

/// Why a change to a standing was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StandingError {
    /// An elevation is already in force.
    #[error("an elevation to {ring} is already in force")]
    AlreadyElevated {
        /// The ring it grants.
        ring: Ring,
    },
    /// The target ring is not more privileged than the base ring.
    #[error("cannot elevate from {base} to {target}: the target must be more privileged")]
    NotHigher {
        /// The base ring.
        base: Ring,
        /// The target.
        target: Ring,
    },
    /// The agent was killed; its standing no longer changes.
    #[error("the agent was killed")]
    Killed,
}

/// A change that became due and was claimed by the read that noticed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// An elevation's TTL ran out; calls are judged at `back_to` again.
    ElevationExpired {
        /// The ring the elevation granted.
        ring: Ring,
        /// The base ring now in force.
        back_to: Ring,
    },
    /// A quarantine's time ran out; the agent is released.
    QuarantineExpired,
}

/// What a read of the standing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The effective ring now.
    pub ring: Ring,
    /// Quarantined now (the gate refuses all but `context` and `log`).
    pub quarantined: bool,
    /// Killed (the gate refuses everything).
    pub killed: bool,
    /// Changes that became due and that this read claimed (at most two).
    pub transitions: Vec<Transition>,
}

/// One participant's effective ring, elevation, quarantine and kill state.
pub struct Standing {
    /// Base ring, elevated ring and flags, packed so that a read is one load.
    word: AtomicU32,
    /// When the elevation ends (clock time in ns).
    elevation_until: AtomicU64,
    /// When the quarantine ends (clock time in ns; `u64::MAX`: until released).
    quarantine_until: AtomicU64,
    /// Until when requests for an elevation are refused (clock time in ns):
    /// set after a demotion, a revoke or a breach, so the agent cannot take
    /// back at once what the host has just taken away.
    no_elevation_until: AtomicU64,
    clock: Arc<dyn Clock>,
    /// Serialises the (rare) writers, so that a deadline and its flag are
    /// published together; readers never take it.
    writer: Mutex<()>,
}

impl fmt::Debug for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.word.load(Ordering::Acquire);
        f.debug_struct("Standing")
            .field("base", &ring_of(w & RING_MASK))
            .field(
                "elevated",
                &(w & ELEVATED != 0).then(|| ring_of((w >> ELEVATED_SHIFT) & RING_MASK)),
            )
            .field("quarantined", &(w & QUARANTINED != 0))
            .field("killed", &(w & KILLED != 0))
            .finish()
    }
}

fn ring_of(bits: u32) -> Ring {
    match bits {
        0 => Ring::Root,
        1 => Ring::Privileged,
        2 => Ring::Standard,
        _ => Ring::Sandbox,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Standing {
    /// A standing in `base`, nothing pending, judged against `clock`.
    pub fn new(base: Ring, clock: Arc<dyn Clock>) -> Arc<Standing> {
        Arc::new(Standing {
            word: AtomicU32::new(u32::from(base.number())),
            elevation_until: AtomicU64::new(0),
            quarantine_until: AtomicU64::new(0),
            no_elevation_until: AtomicU64::new(0),
            clock,
            writer: Mutex::new(()),
        })
    }

    /// The base ring (what the agent holds without an elevation).
    pub fn base(&self) -> Ring {
        ring_of(self.word.load(Ordering::Acquire) & RING_MASK)
    }

    /// The effective ring now, without claiming an expiry (for display;
    /// the gate uses [`Standing::check`]).
    pub fn effective(&self) -> Ring {
        let w = self.word.load(Ordering::Acquire);
        if w & ELEVATED != 0
            && nanos(self.clock.now()) >= self.elevation_until.load(Ordering::Acquire)
        {
            return ring_of(w & RING_MASK);
        }
        effective(w)
    }

    /// Quarantined now (without claiming an expiry).
    pub fn is_quarantined(&self) -> bool {
        let w = self.word.load(Ordering::Acquire);
        w & QUARANTINED != 0
            && nanos(self.clock.now()) < self.quarantine_until.load(Ordering::Acquire)
    }

    /// Killed.
    pub fn is_killed(&self) -> bool {
        self.word.load(Ordering::Acquire) & KILLED != 0
    }

    /// The clock the standing is judged against.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Reads the standing now: the effective ring and flags, claiming any
    /// expiry that became due (each is claimed by exactly one read).
    #[inline]
    pub fn check(&self) -> Check {
        let w = self.word.load(Ordering::Acquire);
        if w & TIMED == 0 {
            return Check {
                ring: ring_of(w & RING_MASK),
                quarantined: false,
                killed: w & KILLED != 0,
                transitions: Vec::new(),
            };
        }
        self.check_timed()
    }

    #[cold]
    fn check_timed(&self) -> Check {
        let now = nanos(self.clock.now());
        let mut transitions = Vec::new();
        loop {
            let w = self.word.load(Ordering::Acquire);
            let mut next = w;
            let mut claimed = Vec::new();
            if w & ELEVATED != 0 && now >= self.elevation_until.load(Ordering::Acquire) {
                next &= !(ELEVATED | (RING_MASK << ELEVATED_SHIFT));
                claimed.push(Transition::ElevationExpired {
                    ring: ring_of((w >> ELEVATED_SHIFT) & RING_MASK),
                    back_to: ring_of(w & RING_MASK),
                });
            }
            if w & QUARANTINED != 0 && now >= self.quarantine_until.load(Ordering::Acquire) {
                next &= !QUARANTINED;
                claimed.push(Transition::QuarantineExpired);
            }
            if next == w
                || self
                    .word
                    .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                transitions.extend(claimed);
                return Check {
                    ring: effective(next),
                    quarantined: next & QUARANTINED != 0,
                    killed: next & KILLED != 0,
                    transitions,
                };
            }
        }
    }

    /// The writers' lock (a poisoned lock is still usable: the word is atomic).
    fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the word with `f` (retrying on races with readers that claim
    /// an expiry); returns the old word.
    fn update(&self, f: impl Fn(u32) -> Result<u32, StandingError>) -> Result<u32, StandingError> {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let generation = (w >> GENERATION_SHIFT).wrapping_add(1) << GENERATION_SHIFT;
            let next = (f(w)? & STATE_MASK) | generation;
            match self
                .word
                .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(old) => return Ok(old),
                Err(actual) => w = actual,
            }
        }
    }

    /// Grants an elevation to `ring` for `ttl`. The elevation rules (trust,
    /// sponsorship, TTL caps) are decided before this is called; this only
    /// refuses what would make the standing inconsistent.
    ///
    /// # Errors
    /// [`StandingError::AlreadyElevated`] while one is in force (an expired
    /// one is claimed first and does not count); [`StandingError::NotHigher`]
    /// unless `ring` is more privileged than the base; [`StandingError::Killed`].
    pub fn elevate(&self, ring: Ring, ttl: Duration) -> Result<Vec<Transition>, StandingError> {
        let _writer = self.write_lock();
        // Claim an expired elevation first, so it is reported and does not block.
        let claimed = self.check().transitions;
        let w = self.word.load(Ordering::Acquire);
        if w & ELEVATED != 0 {
            return Err(StandingError::AlreadyElevated {
                ring: ring_of((w >> ELEVATED_SHIFT) & RING_MASK),
            });
        }
        let until = nanos(self.clock.now()).saturating_add(nanos(ttl));
        // No elevation is in force and only writers set the flag, so no
        // reader looks at this deadline until the flag is published (Release
        // in the CAS); one that sees the flag sees this deadline.
        self.elevation_until.store(until, Ordering::Release);
        self.update(|w| {
            if w & KILLED != 0 {
                return Err(StandingError::Killed);
            }
            if w & ELEVATED != 0 {
                return Err(StandingError::AlreadyElevated {
                    ring: ring_of((w >> ELEVATED_SHIFT) & RING_MASK),
                });
            }
            let base = ring_of(w & RING_MASK);
            if ring.number() >= base.number() {
                return Err(StandingError::NotHigher { base, target: ring });
            }
            Ok(w | ELEVATED | (u32::from(ring.number()) << ELEVATED_SHIFT))
        })?;
        Ok(claimed)
    }

    /// The elevation in force, if any: the ring it grants and the time left
    /// (without claiming an expiry: one that ran out is simply not returned).
    pub fn elevation(&self) -> Option<(Ring, Duration)> {
        let w = self.word.load(Ordering::Acquire);
        if w & ELEVATED == 0 || w & KILLED != 0 {
            return None;
        }
        let until = self.elevation_until.load(Ordering::Acquire);
        let now = nanos(self.clock.now());
        if now >= until {
            return None;
        }
        let left = until - now;
        Some((
            ring_of((w >> ELEVATED_SHIFT) & RING_MASK),
            Duration::from_nanos(left),
        ))
    }

    /// Refuses elevation requests for `cooldown` from now (the later end wins).
    pub fn block_elevation(&self, cooldown: Duration) {
        let until = nanos(self.clock.now()).saturating_add(nanos(cooldown));
        self.no_elevation_until.fetch_max(until, Ordering::AcqRel);
    }

    /// How long elevation requests are still refused, if they are.
    pub fn elevation_blocked(&self) -> Option<Duration> {
        let until = self.no_elevation_until.load(Ordering::Acquire);
        let now = nanos(self.clock.now());
        (now < until).then(|| Duration::from_nanos(until - now))
    }

    /// Ends an elevation early. Returns the ring it granted, if one was in force.
    pub fn revoke_elevation(&self) -> Option<Ring> {
        let _writer = self.write_lock();
        self.update(|w| {
            if w & ELEVATED == 0 {
                Ok(w)
            } else {
                Ok(w & !(ELEVATED | (RING_MASK << ELEVATED_SHIFT)))
            }
        })
        .ok()
        .filter(|old| old & ELEVATED != 0)
        .map(|old| ring_of((old >> ELEVATED_SHIFT) & RING_MASK))
    }

    /// Sets the base ring (a demotion, a re-admission, or a promotion the
    /// host decided). A demotion ends any elevation at once (it was granted
    /// on the standing the agent has just lost), and so does a base that
    /// reaches the elevated ring. Returns the old base ring and the ring of
    /// the elevation it ended, if any.
    ///
    /// # Errors
    /// [`StandingError::Killed`].
    pub fn set_base(&self, ring: Ring) -> Result<(Ring, Option<Ring>), StandingError> {
        let _writer = self.write_lock();
        let old = self.update(|w| {
            if w & KILLED != 0 {
                return Err(StandingError::Killed);
            }
            let demotion = u32::from(ring.number()) > w & RING_MASK;
            let mut next = (w & !RING_MASK) | u32::from(ring.number());
            if next & ELEVATED != 0
                && (demotion || (next >> ELEVATED_SHIFT) & RING_MASK >= next & RING_MASK)
            {
                next &= !(ELEVATED | (RING_MASK << ELEVATED_SHIFT));
            }
            Ok(next)
        })?;
        let new = self.word.load(Ordering::Acquire);
        let ended = (old & ELEVATED != 0 && new & ELEVATED == 0)
            .then(|| ring_of((old >> ELEVATED_SHIFT) & RING_MASK));
        Ok((ring_of(old & RING_MASK), ended))
    }

    /// Quarantines the agent for `duration` (`None`: until released).
    /// Quarantining again extends it to the later of the two ends; an
    /// expired quarantine is claimed first (and returned), not extended.
    ///
    /// # Errors
    /// [`StandingError::Killed`].
    pub fn quarantine(&self, duration: Option<Duration>) -> Result<Vec<Transition>, StandingError> {
        let _writer = self.write_lock();
        let until = match duration {
            Some(d) => nanos(self.clock.now()).saturating_add(nanos(d)),
            None => u64::MAX,
        };
        // Claim an expired quarantine first: it is over, not extended.
        let claimed = self.check().transitions;
        let was = self.word.load(Ordering::Acquire) & QUARANTINED != 0;
        if was {
            self.quarantine_until.fetch_max(until, Ordering::AcqRel);
        } else {
            self.quarantine_until.store(until, Ordering::Release);
        }
        self.update(|w| {
            if w & KILLED != 0 {
                Err(StandingError::Killed)
            } else {
                Ok(w | QUARANTINED)
            }
        })?;
        Ok(claimed)
    }

    /// Releases a quarantine. Returns whether one was in force.
    pub fn release(&self) -> bool {
        let _writer = self.write_lock();
        self.update(|w| Ok(w & !QUARANTINED))
            .map(|old| old & QUARANTINED != 0)
            .unwrap_or(false)
    }

    /// Marks the agent killed: every later check says so. Final.
    pub fn kill(&self) {
        let _writer = self.write_lock();
        let _ = self.update(|w| Ok(w | KILLED));
    }
}

fn effective(w: u32) -> Ring {
    if w & ELEVATED != 0 {
        ring_of((w >> ELEVATED_SHIFT) & RING_MASK)
    } else {
        ring_of(w & RING_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeClock;

    fn standing(base: Ring) -> (Arc<Standing>, FakeClock) {
        let clock = FakeClock::new();
        (Standing::new(base, Arc::new(clock.clone())), clock)
    }

    #[test]
    fn elevation_counts_until_its_ttl_and_expiry_is_claimed_once() {
        let (s, clock) = standing(Ring::Sandbox);
        s.elevate(Ring::Standard, Duration::from_secs(10)).unwrap();
        clock.advance(Duration::from_millis(9_999));
        assert_eq!(s.check().ring, Ring::Standard);
        clock.advance(Duration::from_millis(1));
        let c = s.check();
        assert_eq!(c.ring, Ring::Sandbox, "the deadline itself is past");
        assert_eq!(c.transitions.len(), 1);
        for _ in 0..3 {
            assert!(s.check().transitions.is_empty());
        }
    }

    #[test]
    fn one_elevation_at_a_time_and_never_downwards() {
        let (s, clock) = standing(Ring::Standard);
        assert_eq!(
            s.elevate(Ring::Sandbox, Duration::from_secs(1)),
            Err(StandingError::NotHigher {
                base: Ring::Standard,
                target: Ring::Sandbox
            })
        );
        assert_eq!(
            s.elevate(Ring::Standard, Duration::from_secs(1)),
            Err(StandingError::NotHigher {
                base: Ring::Standard,
                target: Ring::Standard
            })
        );
        s.elevate(Ring::Privileged, Duration::from_secs(5)).unwrap();
        assert_eq!(
            s.elevate(Ring::Privileged, Duration::from_secs(500)),
            Err(StandingError::AlreadyElevated {
                ring: Ring::Privileged
            })
        );
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            s.check().ring,
            Ring::Privileged,
            "a refused request left the first deadline alone"
        );
        clock.advance(Duration::from_secs(1));
        // An expired elevation does not block a new one, and is reported by it.
        let claimed = s.elevate(Ring::Privileged, Duration::from_secs(5)).unwrap();
        assert_eq!(
            claimed,
            [Transition::ElevationExpired {
                ring: Ring::Privileged,
                back_to: Ring::Standard
            }]
        );
        assert_eq!(s.revoke_elevation(), Some(Ring::Privileged));
        assert_eq!(s.revoke_elevation(), None);
        assert_eq!(s.check().ring, Ring::Standard);
    }

    #[test]
    fn a_demotion_is_seen_by_the_next_read_and_ends_any_elevation() {
        let (s, _) = standing(Ring::Standard);
        s.elevate(Ring::Privileged, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            s.set_base(Ring::Sandbox).unwrap(),
            (Ring::Standard, Some(Ring::Privileged))
        );
        assert_eq!(
            s.check().ring,
            Ring::Sandbox,
            "demoted at once, elevation gone"
        );
        assert_eq!(s.revoke_elevation(), None);
        s.elevate(Ring::Standard, Duration::from_secs(60)).unwrap();
        assert_eq!(
            s.set_base(Ring::Standard).unwrap(),
            (Ring::Sandbox, Some(Ring::Standard)),
            "a base that reaches the elevated ring ends it too"
        );
        assert_eq!(s.check().ring, Ring::Standard);
    }

    #[test]
    fn a_writer_between_a_readers_loads_and_its_swap_makes_the_reader_retry() {
        // The ABA case: an expired quarantine, re-imposed by a writer that
        // leaves the state bits as they were. Simulated by hand: a reader's
        // stale word must no longer match after any write.
        let (s, clock) = standing(Ring::Standard);
        s.quarantine(Some(Duration::from_secs(1))).unwrap();
        clock.advance(Duration::from_secs(2));
        let stale = s.word.load(Ordering::Acquire);
        // A writer claims the expiry and quarantines again, indefinitely.
        let claimed = s.quarantine(None).unwrap();
        assert_eq!(claimed, [Transition::QuarantineExpired]);
        let now = s.word.load(Ordering::Acquire);
        assert_eq!(stale & STATE_MASK, now & STATE_MASK, "same state bits");
        assert_ne!(stale, now, "but another generation: the stale swap fails");
        assert!(s.check().quarantined && s.check().transitions.is_empty());
    }

    #[test]
    fn quarantine_extends_releases_and_expires() {
        let (s, clock) = standing(Ring::Standard);
        s.quarantine(Some(Duration::from_secs(10))).unwrap();
        s.quarantine(Some(Duration::from_secs(5))).unwrap();
        clock.advance(Duration::from_secs(9));
        assert!(s.check().quarantined, "the later end counts");
        clock.advance(Duration::from_secs(1));
        let c = s.check();
        assert!(!c.quarantined);
        assert_eq!(c.transitions, [Transition::QuarantineExpired]);
        s.quarantine(None).unwrap();
        clock.advance(Duration::from_secs(1_000_000));
        assert!(s.check().quarantined, "until released");
        assert!(s.release());
        assert!(!s.release());
        assert!(!s.check().quarantined);
    }

    #[test]
    fn quarantining_after_an_unclaimed_expiry_reports_it_and_starts_afresh() {
        let (s, clock) = standing(Ring::Standard);
        s.quarantine(Some(Duration::from_secs(10))).unwrap();
        clock.advance(Duration::from_secs(20));
        let claimed = s.quarantine(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(claimed, [Transition::QuarantineExpired]);
        clock.advance(Duration::from_secs(4));
        assert!(s.check().quarantined);
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.check().transitions, [Transition::QuarantineExpired]);
    }

    #[test]
    fn killed_is_final() {
        let (s, _) = standing(Ring::Standard);
        s.kill();
        assert!(s.check().killed);
        assert_eq!(s.set_base(Ring::Sandbox), Err(StandingError::Killed));
        assert_eq!(
            s.elevate(Ring::Privileged, Duration::from_secs(1)),
            Err(StandingError::Killed)
        );
        assert!(s.quarantine(None).is_err());
    }

    #[test]
    fn expiry_is_claimed_by_exactly_one_of_many_racing_readers() {
        let (s, clock) = standing(Ring::Sandbox);
        for _ in 0..200 {
            s.elevate(Ring::Standard, Duration::from_secs(1)).unwrap();
            clock.advance(Duration::from_secs(1));
            let claims: usize = std::thread::scope(|t| {
                let handles: Vec<_> = (0..4)
                    .map(|_| t.spawn(|| s.check().transitions.len()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(claims, 1);
        }
    }
}
