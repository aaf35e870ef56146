//! Injected time. Everything with deadlines, TTLs or durations takes a
//! [`Clock`]; tests drive a [`FakeClock`] instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic clock: time elapsed since the clock's own origin.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic time since this clock's origin.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A coarse monotonic clock that reads one atomic: a ticker thread (the
/// runtime's epoch ticker, see `RuntimeBuilder::tick_clock` in
/// `ahv-runtime`) stores the time of its [`SystemClock`] at every tick.
/// Reading it costs about a nanosecond instead of a `clock_gettime` (about
/// 40 ns in a VM), at the price of the tick's resolution (1 ms by default):
/// right for token buckets, which count milliseconds, not for timestamps.
/// Time never goes backwards; if the ticker stalls, the clock stops (a rate
/// budget then refills late, never early). Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct TickClock {
    nanos: Arc<AtomicU64>,
    source: SystemClock,
}

impl TickClock {
    /// A clock at the current time of its own [`SystemClock`].
    pub fn new() -> TickClock {
        let c = TickClock::default();
        c.tick();
        c
    }

    /// Stores the source clock's time now (called by the ticker).
    pub fn tick(&self) {
        let now = u64::try_from(self.source.now().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_max(now, Ordering::Relaxed);
    }
}

impl Clock for TickClock {
    #[inline]
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock at time zero.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_advanced_and_clones_share_time() {
        let c = FakeClock::new();
        let d = c.clone();
        assert_eq!(c.now(), Duration::ZERO);
        d.advance(Duration::from_secs(3));
        assert_eq!(c.now(), Duration::from_secs(3));
    }

    #[test]
    fn a_tick_clock_moves_only_at_ticks_and_never_back() {
        let c = TickClock::new();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.now(), a, "no tick, no time");
        c.tick();
        let b = c.now();
        assert!(b >= a + Duration::from_millis(2), "{a:?} -> {b:?}");
        c.clone().tick();
        assert!(c.now() >= b, "clones share the time");
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::default();
        let a = c.now();
        assert!(c.now() >= a);
    }
}
