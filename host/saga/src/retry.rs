//! Exponential backoff with "equal jitter". Retry `n` (1-based) has the
//! ceiling `min(cap, base · 2^(n-1))` (saturating) and waits
//! `ceiling/2 + r · ceiling/2` for a draw `r` in [0, 1] from an injected
//! [`Jitter`]: never less than half the ceiling, so retries back off even
//! with unlucky draws, and spread out so competing sagas do not retry in
//! lockstep. No global random number generator is involved.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::definition::Backoff;

/// A source of draws in [0, 1] for jitter.
pub trait Jitter: Send + Sync {
    /// The next draw, in [0, 1].
    fn sample(&self) -> f64;
}

/// A deterministic jitter: SplitMix64 over a counter from a seed. Two
/// instances with the same seed give the same draws.
#[derive(Debug)]
pub struct SeededJitter {
    seed: u64,
    counter: AtomicU64,
}

impl SeededJitter {
    /// A sequence determined by `seed`.
    pub fn new(seed: u64) -> SeededJitter {
        SeededJitter {
            seed,
            counter: AtomicU64::new(0),
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps 53 random bits onto [0, 1].
fn unit(bits: u64) -> f64 {
    const MAX53: u64 = (1 << 53) - 1;
    (bits >> 11) as f64 / MAX53 as f64
}

impl Jitter for SeededJitter {
    fn sample(&self) -> f64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        unit(splitmix64(
            self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ))
    }
}

/// The default jitter: a counter hashed with std's per-process random hasher
/// keys, so different processes spread differently, without a global RNG.
#[derive(Debug, Default)]
pub struct HashJitter {
    keys: RandomState,
    counter: AtomicU64,
}

impl Jitter for HashJitter {
    fn sample(&self) -> f64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        unit(self.keys.hash_one(n))
    }
}

/// A jitter that always draws the same value (clamped to [0, 1]); for tests
/// and for callers who want no randomness.
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn sample(&self) -> f64 {
        self.0
    }
}

impl Backoff {
    /// The ceiling of retry `attempt` (1-based; 0 counts as 1) in milliseconds:
    /// `min(cap, base · 2^(attempt-1))`, saturating.
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let exp = attempt.max(1) - 1;
        let factor = 1u64.checked_shl(exp).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.cap_ms)
    }

    /// The delay of retry `attempt` for draw `r`: `floor(ceiling/2 + r · ceiling/2)`
    /// milliseconds. `r` is clamped to [0, 1]
    /// (NaN counts as 0), so the delay is always within [ceiling/2, ceiling].
    pub fn delay_ms(&self, attempt: u32, r: f64) -> u64 {
        let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        let c = self.ceiling_ms(attempt);
        let half = c as f64 / 2.0;
        let d = (half + r * half).floor();
        // f64 loses precision above 2^53; never exceed the ceiling because of it.
        (d as u64).min(c)
    }

    /// The delay of retry `attempt` with a draw from `jitter`.
    pub fn delay(&self, attempt: u32, jitter: &dyn Jitter) -> Duration {
        Duration::from_millis(self.delay_ms(attempt, jitter.sample()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff { base_ms, cap_ms }
    }

    #[test]
    fn ceilings_double_until_the_cap() {
        let d = Backoff::default();
        let c: Vec<u64> = (1..=10).map(|n| d.ceiling_ms(n)).collect();
        assert_eq!(
            c,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(d.ceiling_ms(0), 200);
    }

    #[test]
    fn huge_attempts_saturate_instead_of_overflowing() {
        let d = b(u64::MAX / 2, u64::MAX);
        assert_eq!(d.ceiling_ms(3), u64::MAX);
        assert_eq!(d.ceiling_ms(200), u64::MAX);
        assert_eq!(b(1, 1000).ceiling_ms(u32::MAX), 1000);
    }

    #[test]
    fn equal_jitter_spans_half_to_whole_ceiling() {
        let d = Backoff::default();
        assert_eq!(d.delay_ms(1, 0.0), 100);
        assert_eq!(d.delay_ms(1, 1.0), 200);
        assert_eq!(d.delay_ms(1, 0.5), 150);
        assert_eq!(d.delay_ms(3, 0.25), 500);
        assert_eq!(d.delay_ms(20, 1.0), 30_000);
        assert_eq!(d.delay_ms(1, f64::NAN), 100);
        assert_eq!(d.delay_ms(1, 7.0), 200);
        assert_eq!(d.delay_ms(1, -1.0), 100);
        assert_eq!(b(u64::MAX, u64::MAX).delay_ms(1, 1.0), u64::MAX);
    }

    #[test]
    fn seeded_jitter_is_deterministic_and_in_range() {
        let a = SeededJitter::new(7);
        let b = SeededJitter::new(7);
        let c = SeededJitter::new(8);
        let xs: Vec<f64> = (0..100).map(|_| a.sample()).collect();
        let ys: Vec<f64> = (0..100).map(|_| b.sample()).collect();
        let zs: Vec<f64> = (0..100).map(|_| c.sample()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn hash_jitter_is_in_range_and_varies() {
        let j = HashJitter::default();
        let xs: Vec<f64> = (0..100).map(|_| j.sample()).collect();
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }

    proptest! {
        #[test]
        fn delay_is_the_formula_and_within_bounds(
            base in 1u64..100_000,
            extra in 0u64..1_000_000,
            attempt in 1u32..80,
            r in 0.0f64..=1.0,
        ) {
            let d = b(base, base + extra);
            let c = d.ceiling_ms(attempt);
            let expected_c = if attempt > 64 {
                base + extra
            } else {
                base.saturating_mul(1u64 << (attempt - 1)).min(base + extra)
            };
            prop_assert_eq!(c, expected_c);
            let delay = d.delay_ms(attempt, r);
            prop_assert_eq!(delay, (c as f64 / 2.0 + r * c as f64 / 2.0).floor() as u64);
            prop_assert!(delay >= c / 2 && delay <= c);
        }
    }
}
