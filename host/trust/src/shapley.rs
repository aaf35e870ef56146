//! Shapley values of cooperative games: exact by subset enumeration for up
//! to [`MAX_EXACT_PLAYERS`] players, estimated by permutation sampling with a
//! stated error bound above that (or on request).
//!
//! A game has `n` players (at most [`MAX_PLAYERS`]); a coalition is a bitmask
//! (bit `i` set = player `i` is in it). Player `i`'s Shapley value is
//!
//! ```text
//! φ_i = Σ_{S ⊆ N∖{i}} |S|! (n−|S|−1)! / n! · (v(S ∪ {i}) − v(S))
//! ```
//!
//! **Exact** ([`exact`]): every coalition's value is computed once (`2^n`
//! calls), then every marginal contribution is weighted. The weight is
//! computed as `1 / (n · C(n−1, |S|))`, which equals `|S|!(n−|S|−1)!/n!` but
//! never forms a factorial (16! already exceeds `f64`'s exact integer range).
//!
//! **Sampled** ([`sampled`]): `m` uniformly random orders of the players (a
//! Fisher–Yates shuffle driven by [`SplitMix64`] from the caller's seed), each
//! giving every player one marginal contribution (`v` of its predecessors with
//! it, minus without it); the estimate is the mean. Each such contribution is
//! an unbiased sample of `φ_i` and lies in the game's [`Game::bounds`]
//! `[lo, hi]`, so Hoeffding's inequality bounds one player's error by
//! `P(|φ̂_i − φ_i| ≥ ε) ≤ 2·exp(−2mε² / (hi−lo)²)`, and a union bound over the
//! `n` players gives all of them within `ε` with probability at least `1 − δ`
//! once
//!
//! ```text
//! m = ⌈(hi − lo)² · ln(2n/δ) / (2ε²)⌉      (and at least 1)
//! ```
//!
//! ([`permutations_needed`]). Within one order the contributions add up to
//! `v(N) − v(∅)`, so sampled values keep efficiency exactly (up to rounding)
//! and give a null player exactly 0; only symmetry is approximate.
//!
//! ```
//! use ahv_trust::shapley::{exact, Game};
//!
//! /// The glove game: player 0 holds a left glove, players 1 and 2 a right one;
//! /// a coalition is worth the number of pairs it can make.
//! struct Gloves;
//! impl Game for Gloves {
//!     fn players(&self) -> usize { 3 }
//!     fn value(&self, s: u64) -> f64 {
//!         let left = s & 1;
//!         let right = ((s >> 1) & 1) + ((s >> 2) & 1);
//!         left.min(right) as f64
//!     }
//!     fn bounds(&self) -> (f64, f64) { (0.0, 1.0) }
//! }
//!
//! let phi = exact(&Gloves)?;
//! assert!((phi[0] - 2.0 / 3.0).abs() < 1e-12);
//! assert!((phi[1] - 1.0 / 6.0).abs() < 1e-12);
//! # Ok::<(), ahv_trust::shapley::ShapleyError>(())
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The most players a game may have: a coalition is a `u64` bitmask.
pub const MAX_PLAYERS: usize = 64;

/// The most players [`exact`] accepts: `2^16` coalition values and
/// `16 · 2^15` weighted marginals are cheap; each further player doubles both.
pub const MAX_EXACT_PLAYERS: usize = 16;

/// The most calls to [`Game::value`] [`sampled`] makes (permutations ×
/// players); a larger `m` (a very small `ε` or `δ`) is refused rather than
/// left to run for minutes.
pub const MAX_SAMPLED_EVALUATIONS: u64 = 1 << 26;

/// A cooperative game with transferable utility.
pub trait Game {
    /// The number of players `n` (players are `0..n`).
    fn players(&self) -> usize;

    /// The worth `v(S)` of the coalition whose members are the set bits of
    /// `coalition` (only bits below [`Game::players`] are ever set).
    fn value(&self, coalition: u64) -> f64;

    /// Bounds `(lo, hi)` on every marginal contribution `v(S ∪ {i}) − v(S)`;
    /// the sampling error bound is only as good as these (sampling checks
    /// every contribution it sees against them).
    fn bounds(&self) -> (f64, f64);
}

/// Why Shapley values could not be computed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ShapleyError {
    /// The game has no players.
    #[error("the game has no players")]
    NoPlayers,
    /// The game has more players than a `u64` coalition can hold.
    #[error("the game has {players} players; at most {max} are supported")]
    TooManyPlayers {
        /// Its player count.
        players: usize,
        /// [`MAX_PLAYERS`].
        max: usize,
    },
    /// Exact computation was asked for a game too large for it.
    #[error("exact Shapley values need at most {max} players; the game has {players}")]
    TooManyForExact {
        /// Its player count.
        players: usize,
        /// [`MAX_EXACT_PLAYERS`].
        max: usize,
    },
    /// The game gave a NaN or infinite worth.
    #[error("the game's value of coalition {coalition:#x} is {value}, not a finite number")]
    NonFiniteValue {
        /// The coalition (bitmask).
        coalition: u64,
        /// What the game answered.
        value: f64,
    },
    /// The error bound ε is not a finite number above 0.
    #[error("epsilon is {epsilon}; it must be a finite number above 0")]
    BadEpsilon {
        /// The ε given.
        epsilon: f64,
    },
    /// The failure probability δ is not strictly between 0 and 1.
    #[error("delta is {delta}; it must be strictly between 0 and 1")]
    BadDelta {
        /// The δ given.
        delta: f64,
    },
    /// The game's marginal bounds are not finite or `lo > hi`.
    #[error("the game's marginal bounds [{lo}, {hi}] are not a finite interval")]
    BadBounds {
        /// The lower bound.
        lo: f64,
        /// The upper bound.
        hi: f64,
    },
    /// A sampled marginal contribution fell outside the game's own bounds, so
    /// the stated error bound would not hold.
    #[error(
        "player {player}'s marginal contribution to coalition {coalition:#x} is {marginal}, outside the game's bounds [{lo}, {hi}]"
    )]
    MarginalOutOfBounds {
        /// The player.
        player: usize,
        /// The coalition it joined (bitmask, without it).
        coalition: u64,
        /// Its contribution.
        marginal: f64,
        /// The game's lower bound.
        lo: f64,
        /// The game's upper bound.
        hi: f64,
    },
    /// The requested accuracy needs more game evaluations than allowed.
    #[error(
        "epsilon {epsilon} and delta {delta} need {permutations} permutations of {players} players, over the budget of {max_evaluations} evaluations"
    )]
    OverBudget {
        /// The permutations needed (saturating).
        permutations: u64,
        /// The player count.
        players: usize,
        /// The ε asked for.
        epsilon: f64,
        /// The δ asked for.
        delta: f64,
        /// [`MAX_SAMPLED_EVALUATIONS`].
        max_evaluations: u64,
    },
}

/// What permutation sampling should achieve, and from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Every estimate within `epsilon` of its Shapley value…
    pub epsilon: f64,
    /// …with probability at least `1 − delta`.
    pub delta: f64,
    /// The [`SplitMix64`] seed: the same seed gives the same estimates.
    pub seed: u64,
}

impl Sampling {
    /// Checks `ε > 0` finite and `0 < δ < 1`.
    ///
    /// # Errors
    /// [`ShapleyError::BadEpsilon`] or [`ShapleyError::BadDelta`].
    pub fn validate(&self) -> Result<(), ShapleyError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(ShapleyError::BadEpsilon {
                epsilon: self.epsilon,
            });
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(ShapleyError::BadDelta { delta: self.delta });
        }
        Ok(())
    }
}

/// How a set of Shapley values was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Method {
    /// Exact, by subset enumeration.
    Exact,
    /// Estimated from `permutations` random orders: each value within
    /// `sampling.epsilon` with probability at least `1 − sampling.delta`.
    Sampled {
        /// The number of permutations `m` used.
        permutations: u64,
        /// The bound and seed asked for.
        sampling: Sampling,
    },
}

/// Shapley values, one per player, and how they were obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapleyValues {
    /// `values[i]` is player `i`'s value.
    pub values: Vec<f64>,
    /// Exact or sampled (with the bound).
    pub method: Method,
}

impl ShapleyValues {
    /// The permutations used, if the values were sampled.
    pub fn permutations(&self) -> Option<u64> {
        match self.method {
            Method::Exact => None,
            Method::Sampled { permutations, .. } => Some(permutations),
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014; constants as in Vigna's reference `splitmix64.c`):
/// a 64-bit counter stepped by the golden-ratio increment and scrambled by a
/// bijective mixer. Not cryptographic; it only has to make sampled
/// attributions reproducible from a seed, and it passes BigCrush, which is
/// more than the permutation sampler needs.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose output depends only on `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound` (0 when `bound` is 0), by Lemire's
    /// multiply-and-reject method, so small bounds carry no modulo bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // 2^64 mod bound: products whose low half falls below it are the
        // over-represented ones and are drawn again.
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let wide = u128::from(self.next_u64()) * u128::from(bound);
            if (wide as u64) >= threshold {
                return (wide >> 64) as u64;
            }
        }
    }
}

fn check_players(players: usize) -> Result<usize, ShapleyError> {
    match players {
        0 => Err(ShapleyError::NoPlayers),
        n if n > MAX_PLAYERS => Err(ShapleyError::TooManyPlayers {
            players: n,
            max: MAX_PLAYERS,
        }),
        n => Ok(n),
    }
}

fn finite_value<G: Game + ?Sized>(game: &G, coalition: u64) -> Result<f64, ShapleyError> {
    let value = game.value(coalition);
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ShapleyError::NonFiniteValue { coalition, value })
    }
}

/// `C(n, k)` as a float; exact for the `n ≤ 15` exact computation uses.
fn binomial(n: usize, k: usize) -> f64 {
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, j| acc * (n - j) as f64 / (j + 1) as f64)
}

/// Exact Shapley values by enumerating every coalition.
///
/// # Errors
/// [`ShapleyError::NoPlayers`], [`ShapleyError::TooManyPlayers`],
/// [`ShapleyError::TooManyForExact`] above [`MAX_EXACT_PLAYERS`], or
/// [`ShapleyError::NonFiniteValue`].
pub fn exact<G: Game + ?Sized>(game: &G) -> Result<Vec<f64>, ShapleyError> {
    let n = check_players(game.players())?;
    if n > MAX_EXACT_PLAYERS {
        return Err(ShapleyError::TooManyForExact {
            players: n,
            max: MAX_EXACT_PLAYERS,
        });
    }
    let coalitions = 1u64 << n;
    let worth = (0..coalitions)
        .map(|s| finite_value(game, s))
        .collect::<Result<Vec<f64>, _>>()?;
    // weight[s] = s!(n−s−1)!/n! = 1/(n·C(n−1, s)).
    let weight: Vec<f64> = (0..n)
        .map(|s| 1.0 / (n as f64 * binomial(n - 1, s)))
        .collect();
    let mut phi = vec![0.0; n];
    for (s, &without) in worth.iter().enumerate() {
        let size = (s as u64).count_ones() as usize;
        if size == n {
            continue;
        }
        for (i, phi_i) in phi.iter_mut().enumerate() {
            if s & (1 << i) == 0 {
                *phi_i += weight[size] * (worth[s | (1 << i)] - without);
            }
        }
    }
    Ok(phi)
}

/// The number of permutations `m = ⌈(hi−lo)² ln(2n/δ) / (2ε²)⌉` (at least 1)
/// that puts all `players` estimates within `ε` of their Shapley values with
/// probability at least `1 − δ` (Hoeffding, union bound over the players),
/// saturating at `u64::MAX`.
///
/// # Errors
/// [`ShapleyError::NoPlayers`], [`ShapleyError::TooManyPlayers`],
/// [`ShapleyError::BadBounds`], [`ShapleyError::BadEpsilon`],
/// [`ShapleyError::BadDelta`].
pub fn permutations_needed(
    players: usize,
    (lo, hi): (f64, f64),
    epsilon: f64,
    delta: f64,
) -> Result<u64, ShapleyError> {
    let n = check_players(players)?;
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(ShapleyError::BadBounds { lo, hi });
    }
    Sampling {
        epsilon,
        delta,
        seed: 0,
    }
    .validate()?;
    let range = hi - lo;
    let m = (range * range * (2.0 * n as f64 / delta).ln() / (2.0 * epsilon * epsilon)).ceil();
    // `as` saturates: +∞ (a subnormal ε) becomes u64::MAX, caught by the budget.
    Ok((m as u64).max(1))
}

/// Shapley values estimated from random permutations, within `ε` of the exact
/// values with probability at least `1 − δ` (see the module doc); the
/// permutation count used is in the returned [`Method::Sampled`].
///
/// # Errors
/// Those of [`permutations_needed`] for the game's size and bounds,
/// [`ShapleyError::OverBudget`] beyond [`MAX_SAMPLED_EVALUATIONS`],
/// [`ShapleyError::NonFiniteValue`] and [`ShapleyError::MarginalOutOfBounds`].
pub fn sampled<G: Game + ?Sized>(
    game: &G,
    sampling: Sampling,
) -> Result<ShapleyValues, ShapleyError> {
    let n = check_players(game.players())?;
    let (lo, hi) = game.bounds();
    let m = permutations_needed(n, (lo, hi), sampling.epsilon, sampling.delta)?;
    if m.saturating_mul(n as u64) > MAX_SAMPLED_EVALUATIONS {
        return Err(ShapleyError::OverBudget {
            permutations: m,
            players: n,
            epsilon: sampling.epsilon,
            delta: sampling.delta,
            max_evaluations: MAX_SAMPLED_EVALUATIONS,
        });
    }
    // Rounding in a game's sum of terms may overshoot an exact bound by a few ulps.
    let slack = 1e-9 * lo.abs().max(hi.abs()).max(1.0);
    let empty = finite_value(game, 0)?;
    let mut rng = SplitMix64::new(sampling.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut sum = vec![0.0; n];
    for _ in 0..m {
        // Fisher–Yates; shuffling the previous order is as uniform as shuffling 0..n.
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut coalition = 0u64;
        let mut before = empty;
        for &player in &order {
            let with = coalition | (1 << player);
            let after = finite_value(game, with)?;
            let marginal = after - before;
            if !(marginal >= lo - slack && marginal <= hi + slack) {
                return Err(ShapleyError::MarginalOutOfBounds {
                    player,
                    coalition,
                    marginal,
                    lo,
                    hi,
                });
            }
            sum[player] += marginal;
            coalition = with;
            before = after;
        }
    }
    Ok(ShapleyValues {
        values: sum.into_iter().map(|s| s / m as f64).collect(),
        method: Method::Sampled {
            permutations: m,
            sampling,
        },
    })
}

/// Exact values for up to [`MAX_EXACT_PLAYERS`] players, sampled ones (with
/// `sampling`'s bound) above that.
///
/// # Errors
/// Those of [`exact`] or [`sampled`]; `sampling` is validated even when the
/// values are exact, so a bad policy fails on small games too.
pub fn shapley<G: Game + ?Sized>(
    game: &G,
    sampling: Sampling,
) -> Result<ShapleyValues, ShapleyError> {
    sampling.validate()?;
    if check_players(game.players())? <= MAX_EXACT_PLAYERS {
        Ok(ShapleyValues {
            values: exact(game)?,
            method: Method::Exact,
        })
    } else {
        sampled(game, sampling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The glove game: players `0..left` hold left gloves, the rest right ones.
    struct Gloves {
        left: usize,
        players: usize,
    }

    impl Game for Gloves {
        fn players(&self) -> usize {
            self.players
        }
        fn value(&self, s: u64) -> f64 {
            let left_mask = (1u64 << self.left) - 1;
            let left = (s & left_mask).count_ones();
            let right = (s & !left_mask).count_ones();
            f64::from(left.min(right))
        }
        fn bounds(&self) -> (f64, f64) {
            (0.0, 1.0)
        }
    }

    /// A weighted voting game: a coalition wins (worth 1) when its weights reach the quota.
    #[derive(Debug, Clone)]
    struct Voting {
        weights: Vec<u32>,
        quota: u32,
    }

    impl Game for Voting {
        fn players(&self) -> usize {
            self.weights.len()
        }
        fn value(&self, s: u64) -> f64 {
            let total: u32 = (0..self.weights.len())
                .filter(|i| s & (1 << i) != 0)
                .map(|i| self.weights[i])
                .sum();
            if total >= self.quota { 1.0 } else { 0.0 }
        }
        fn bounds(&self) -> (f64, f64) {
            (0.0, 1.0)
        }
    }

    /// An additive game: a coalition is worth the sum of its members' worths.
    #[derive(Debug, Clone)]
    struct Additive(Vec<f64>);

    impl Game for Additive {
        fn players(&self) -> usize {
            self.0.len()
        }
        fn value(&self, s: u64) -> f64 {
            (0..self.0.len())
                .filter(|i| s & (1 << i) != 0)
                .map(|i| self.0[i])
                .sum()
        }
        fn bounds(&self) -> (f64, f64) {
            let lo = self.0.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        }
    }

    /// `v + w` of two games with the same players.
    struct Sum<'a>(&'a dyn Game, &'a dyn Game);

    impl Game for Sum<'_> {
        fn players(&self) -> usize {
            self.0.players()
        }
        fn value(&self, s: u64) -> f64 {
            self.0.value(s) + self.1.value(s)
        }
        fn bounds(&self) -> (f64, f64) {
            let (a, b) = (self.0.bounds(), self.1.bounds());
            (a.0 + b.0, a.1 + b.1)
        }
    }

    /// A game answering a fixed value for every coalition but the empty one.
    struct Constant {
        players: usize,
        value: f64,
        bounds: (f64, f64),
    }

    impl Game for Constant {
        fn players(&self) -> usize {
            self.players
        }
        fn value(&self, s: u64) -> f64 {
            if s == 0 { 0.0 } else { self.value }
        }
        fn bounds(&self) -> (f64, f64) {
            self.bounds
        }
    }

    const SAMPLING: Sampling = Sampling {
        epsilon: 0.05,
        delta: 1e-9,
        seed: 7,
    };

    fn voting() -> impl Strategy<Value = Voting> {
        (1usize..=7)
            .prop_flat_map(|n| (prop::collection::vec(0u32..10, n), 1u32..40))
            .prop_map(|(weights, quota)| Voting { weights, quota })
    }

    fn additive(n: usize) -> impl Strategy<Value = Additive> {
        prop::collection::vec(-5.0f64..5.0, n).prop_map(Additive)
    }

    #[test]
    fn glove_game_gives_the_scarce_glove_two_thirds() {
        let phi = exact(&Gloves {
            left: 1,
            players: 3,
        })
        .unwrap();
        let expected = [2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0];
        for (got, want) in phi.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{phi:?}");
        }
    }

    #[test]
    fn single_player_gets_the_whole_worth() {
        let phi = exact(&Additive(vec![2.5])).unwrap();
        assert_eq!(phi, vec![2.5]);
    }

    #[test]
    fn exact_handles_sixteen_players() {
        let game = Voting {
            weights: vec![1; 16],
            quota: 9,
        };
        let phi = exact(&game).unwrap();
        for p in phi {
            assert!((p - 1.0 / 16.0).abs() < 1e-12);
        }
    }

    #[test]
    fn binomial_weights_sum_to_one_over_subset_sizes() {
        // Σ_s C(n−1, s) · s!(n−s−1)!/n! = 1 for every n: each size class is 1/n.
        for n in 1..=16usize {
            let total: f64 = (0..n)
                .map(|s| binomial(n - 1, s) / (n as f64 * binomial(n - 1, s)))
                .sum();
            assert!((total - 1.0).abs() < 1e-12, "n = {n}");
        }
        assert_eq!(binomial(15, 7), 6435.0);
    }

    #[test]
    fn splitmix64_matches_the_reference_output() {
        // First outputs of Vigna's splitmix64.c seeded with 0.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_value() {
        let mut rng = SplitMix64::new(42);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let x = rng.below(5);
            assert!(x < 5);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn permutations_needed_follows_the_hoeffding_formula() {
        // (1)² ln(2·10/0.01) / (2·0.1²) = ln(2000)/0.02 = 380.04… → 381.
        assert_eq!(permutations_needed(10, (0.0, 1.0), 0.1, 0.01).unwrap(), 381);
        // Range 2 quadruples it: 1520.16… → 1521.
        assert_eq!(
            permutations_needed(10, (-1.0, 1.0), 0.1, 0.01).unwrap(),
            1521
        );
        // A constant-marginal game still needs one permutation.
        assert_eq!(permutations_needed(3, (0.5, 0.5), 0.1, 0.01).unwrap(), 1);
    }

    #[test]
    fn sampled_reports_the_permutations_it_used() {
        let game = Voting {
            weights: vec![3, 2, 1],
            quota: 4,
        };
        let sampling = Sampling {
            epsilon: 0.1,
            delta: 0.01,
            seed: 1,
        };
        let values = sampled(&game, sampling).unwrap();
        let m = permutations_needed(3, (0.0, 1.0), 0.1, 0.01).unwrap();
        assert_eq!(values.permutations(), Some(m));
        assert_eq!(
            values.method,
            Method::Sampled {
                permutations: m,
                sampling
            }
        );
    }

    #[test]
    fn same_seed_same_estimate_and_different_seed_differs() {
        let game = Voting {
            weights: vec![5, 4, 3, 2, 1],
            quota: 8,
        };
        let a = sampled(&game, SAMPLING).unwrap();
        let b = sampled(&game, SAMPLING).unwrap();
        let c = sampled(
            &game,
            Sampling {
                seed: 8,
                ..SAMPLING
            },
        )
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a.values, c.values);
    }

    #[test]
    fn shapley_is_exact_up_to_sixteen_players_and_sampled_above() {
        let small = Voting {
            weights: vec![1; 16],
            quota: 9,
        };
        assert_eq!(shapley(&small, SAMPLING).unwrap().method, Method::Exact);
        let large = Voting {
            weights: vec![1; 20],
            quota: 11,
        };
        let values = shapley(&large, SAMPLING).unwrap();
        assert!(values.permutations().is_some());
        for p in &values.values {
            assert!((p - 0.05).abs() <= SAMPLING.epsilon, "{p}");
        }
        let total: f64 = values.values.iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn sampling_handles_sixty_four_players() {
        let game = Additive((0..64).map(f64::from).collect());
        let values = sampled(
            &game,
            Sampling {
                epsilon: 1.0,
                delta: 0.1,
                seed: 3,
            },
        )
        .unwrap();
        // Additive games have constant marginals: every sample is exact.
        for (i, p) in values.values.iter().enumerate() {
            assert!((p - i as f64).abs() < 1e-9);
        }
    }

    #[test]
    fn no_players_is_an_error() {
        let game = Additive(vec![]);
        assert_eq!(exact(&game), Err(ShapleyError::NoPlayers));
        assert_eq!(sampled(&game, SAMPLING), Err(ShapleyError::NoPlayers));
    }

    #[test]
    fn more_than_sixty_four_players_is_an_error() {
        let game = Additive(vec![1.0; 65]);
        let err = ShapleyError::TooManyPlayers {
            players: 65,
            max: 64,
        };
        assert_eq!(exact(&game), Err(err.clone()));
        assert_eq!(sampled(&game, SAMPLING), Err(err.clone()));
        assert_eq!(shapley(&game, SAMPLING), Err(err));
    }

    #[test]
    fn exact_refuses_seventeen_players() {
        let game = Additive(vec![1.0; 17]);
        assert_eq!(
            exact(&game),
            Err(ShapleyError::TooManyForExact {
                players: 17,
                max: 16
            })
        );
    }

    #[test]
    fn non_finite_values_are_errors() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let game = Constant {
                players: 2,
                value,
                bounds: (0.0, 1.0),
            };
            assert!(matches!(
                exact(&game),
                Err(ShapleyError::NonFiniteValue { coalition: 1, .. })
            ));
            assert!(matches!(
                sampled(&game, SAMPLING),
                Err(ShapleyError::NonFiniteValue { .. })
            ));
        }
    }

    #[test]
    fn bad_epsilon_and_delta_are_errors() {
        let game = Additive(vec![1.0, 2.0]);
        for epsilon in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                sampled(
                    &game,
                    Sampling {
                        epsilon,
                        ..SAMPLING
                    }
                ),
                Err(ShapleyError::BadEpsilon { .. })
            ));
            assert!(matches!(
                shapley(
                    &game,
                    Sampling {
                        epsilon,
                        ..SAMPLING
                    }
                ),
                Err(ShapleyError::BadEpsilon { .. })
            ));
        }
        for delta in [0.0, 1.0, -0.5, 2.0, f64::NAN] {
            assert!(matches!(
                sampled(&game, Sampling { delta, ..SAMPLING }),
                Err(ShapleyError::BadDelta { .. })
            ));
        }
    }

    #[test]
    fn bad_bounds_are_errors() {
        for bounds in [(1.0, 0.0), (f64::NAN, 1.0), (0.0, f64::INFINITY)] {
            let game = Constant {
                players: 2,
                value: 1.0,
                bounds,
            };
            assert!(matches!(
                sampled(&game, SAMPLING),
                Err(ShapleyError::BadBounds { .. })
            ));
        }
    }

    #[test]
    fn a_marginal_outside_the_stated_bounds_is_an_error() {
        let game = Constant {
            players: 3,
            value: 2.0,
            bounds: (0.0, 1.0),
        };
        assert!(matches!(
            sampled(&game, SAMPLING),
            Err(ShapleyError::MarginalOutOfBounds {
                coalition: 0,
                marginal: 2.0,
                ..
            })
        ));
    }

    #[test]
    fn accuracy_beyond_the_budget_is_refused() {
        let game = Additive(vec![0.0, 1.0]);
        let err = sampled(
            &game,
            Sampling {
                epsilon: 1e-6,
                delta: 1e-6,
                seed: 0,
            },
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ShapleyError::OverBudget {
                players: 2,
                max_evaluations: MAX_SAMPLED_EVALUATIONS,
                ..
            }
        ));
        // A subnormal ε saturates rather than overflowing.
        assert!(matches!(
            sampled(
                &game,
                Sampling {
                    epsilon: 1e-300,
                    ..SAMPLING
                }
            ),
            Err(ShapleyError::OverBudget {
                permutations: u64::MAX,
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn efficiency_holds_exact_and_sampled(game in voting()) {
            let total = game.value((1 << game.players()) - 1) - game.value(0);
            let phi = exact(&game).unwrap();
            prop_assert!((phi.iter().sum::<f64>() - total).abs() < 1e-9);
            let est = sampled(&game, SAMPLING).unwrap();
            prop_assert!((est.values.iter().sum::<f64>() - total).abs() < 1e-9);
        }

        #[test]
        fn efficiency_holds_for_additive_games(game in (1usize..=8).prop_flat_map(additive)) {
            let total = game.value((1 << game.players()) - 1);
            let phi = exact(&game).unwrap();
            prop_assert!((phi.iter().sum::<f64>() - total).abs() < 1e-9);
            // An additive game's Shapley values are its players' own worths.
            for (p, a) in phi.iter().zip(&game.0) {
                prop_assert!((p - a).abs() < 1e-9);
            }
        }

        #[test]
        fn interchangeable_players_get_equal_values(
            (mut game, i, j) in voting()
                .prop_filter("two players", |g| g.players() >= 2)
                .prop_flat_map(|g| { let n = g.players(); (Just(g), 0..n, 0..n) })
                .prop_filter("distinct", |(_, i, j)| i != j)
        ) {
            game.weights[j] = game.weights[i];
            let phi = exact(&game).unwrap();
            prop_assert!((phi[i] - phi[j]).abs() < 1e-12, "{:?}", phi);
        }

        #[test]
        fn null_players_get_zero(
            (mut game, i) in voting().prop_flat_map(|g| { let n = g.players(); (Just(g), 0..n) })
        ) {
            game.weights[i] = 0;
            prop_assert!(exact(&game).unwrap()[i].abs() < 1e-12);
            prop_assert!(sampled(&game, SAMPLING).unwrap().values[i].abs() < 1e-12);
        }

        #[test]
        fn values_are_additive_over_games(
            (v, w) in (1usize..=6).prop_flat_map(|n| (
                (prop::collection::vec(0u32..10, n), 1u32..30)
                    .prop_map(|(weights, quota)| Voting { weights, quota }),
                additive(n),
            ))
        ) {
            let sum = exact(&Sum(&v, &w)).unwrap();
            let (pv, pw) = (exact(&v).unwrap(), exact(&w).unwrap());
            for i in 0..v.players() {
                prop_assert!((sum[i] - (pv[i] + pw[i])).abs() < 1e-9);
            }
        }

        #[test]
        fn sampled_is_within_epsilon_of_exact(game in voting()) {
            // A fixed seed and δ = 1e-9 per game: a failure here is a bug, not bad luck.
            let phi = exact(&game).unwrap();
            let est = sampled(&game, SAMPLING).unwrap();
            for (p, e) in phi.iter().zip(&est.values) {
                prop_assert!((p - e).abs() <= SAMPLING.epsilon, "{:?} vs {:?}", phi, est.values);
            }
        }
    }
}
