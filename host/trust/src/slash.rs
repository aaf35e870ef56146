//! Slashing (SEMANTICS.md "Liability"): a misbehaving vouchee loses all its
//! σ, each of its vouchers in the session loses the share ω of its own (down
//! to a floor) and its bond is released, and a voucher left nearly worthless
//! who is itself vouched for is slashed in turn, at most
//! [`MAX_CASCADE_HOPS`] hops from the first vouchee.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ahv_core::{AgentId, ScoreError, SessionId, check_score};
use thiserror::Error;

use crate::vouch::{Vouch, VouchBook, check_unit};

/// The least σ a slash leaves a voucher with (a voucher already below it keeps
/// what it has: a slash never raises a score).
pub const SIGMA_FLOOR: f64 = 0.05;
/// A voucher left below this σ by a slash, and vouched for by others, is
/// slashed in turn.
pub const CASCADE_THRESHOLD: f64 = 0.06;
/// How many hops from the first vouchee the cascade may reach.
pub const MAX_CASCADE_HOPS: u32 = 2;

/// The σ of each agent, each validated to lie in [0, 1].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores(BTreeMap<AgentId, f64>);

impl Scores {
    /// An empty table.
    pub fn new() -> Scores {
        Scores::default()
    }

    /// Sets `agent`'s σ.
    ///
    /// # Errors
    /// [`ScoreError`] if `sigma` is not a number in [0, 1].
    pub fn set(&mut self, agent: AgentId, sigma: f64) -> Result<(), ScoreError> {
        let sigma = check_score("sigma", sigma)?;
        self.0.insert(agent, sigma);
        Ok(())
    }

    /// `agent`'s σ, if it has one.
    pub fn get(&self, agent: &AgentId) -> Option<f64> {
        self.0.get(agent).copied()
    }

    /// Every agent and its σ, in agent order.
    pub fn iter(&self) -> impl Iterator<Item = (&AgentId, f64)> {
        self.0.iter().map(|(a, s)| (a, *s))
    }

    /// How many agents have a σ.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<AgentId, f64>> for Scores {
    type Error = ScoreError;

    fn try_from(map: BTreeMap<AgentId, f64>) -> Result<Scores, ScoreError> {
        for sigma in map.values() {
            check_score("sigma", *sigma)?;
        }
        Ok(Scores(map))
    }
}

/// Why a slash was refused. A refused slash changes nothing.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SlashError {
    /// ω is not a number in [0, 1].
    #[error("omega must be a number in [0, 1], got {value}")]
    BadOmega {
        /// The value given.
        value: f64,
    },
    /// An agent the slash reaches has no σ in the table.
    #[error("agent {agent} has no σ to slash (reached at hop {hop})")]
    UnknownScore {
        /// The agent.
        agent: AgentId,
        /// How many hops from the first vouchee it was reached.
        hop: u32,
    },
}

/// Why an agent's σ changed in a slash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeCause {
    /// The agent was slashed (the first vouchee, or a cascade): σ → 0.
    Slashed,
    /// The agent vouched for a slashed agent: σ × (1 − ω), floored.
    VoucherPenalty,
}

/// One change of σ.
#[derive(Debug, Clone, PartialEq)]
pub struct SigmaChange {
    /// The agent.
    pub agent: AgentId,
    /// Its σ before this change.
    pub before: f64,
    /// Its σ after.
    pub after: f64,
    /// Why it changed.
    pub cause: ChangeCause,
    /// The hop of the slashed agent that caused it (0 = the first vouchee).
    pub hop: u32,
}

/// An agent slashed because a slash left it below [`CASCADE_THRESHOLD`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cascaded {
    /// The agent.
    pub agent: AgentId,
    /// Its distance from the first vouchee, 1..=[`MAX_CASCADE_HOPS`].
    pub hop: u32,
}

/// What a slash did, in the order it did it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlashReport {
    /// The session.
    pub session: SessionId,
    /// The agent slashed first.
    pub vouchee: AgentId,
    /// The ω used.
    pub omega: f64,
    /// Every σ change, in order (an agent may appear twice: once as a
    /// penalised voucher, once when slashed in turn).
    pub changes: Vec<SigmaChange>,
    /// The bonds released, in order.
    pub released: Vec<Vouch>,
    /// The agents slashed by the cascade, in order.
    pub cascaded: Vec<Cascaded>,
}

/// Slashes `vouchee` in `session` with vouching weight `omega`: its σ → 0;
/// each of its vouchers' σ ← max(σ × (1 − ω), [`SIGMA_FLOOR`]) (never raised)
/// and that bond is released; a voucher so left below [`CASCADE_THRESHOLD`]
/// that has active vouchers of its own in the session is slashed the same
/// way, breadth first, up to [`MAX_CASCADE_HOPS`] from `vouchee`. Beyond that
/// the penalties still apply but nobody else is slashed. Every slashed
/// agent's own vouches are released too: at σ 0 it backs nobody.
///
/// The slash is computed on copies and committed only if it succeeds.
///
/// # Errors
/// [`SlashError::BadOmega`] if ω is not in [0, 1];
/// [`SlashError::UnknownScore`] if an agent it reaches has no σ.
pub fn slash(
    book: &mut VouchBook,
    scores: &mut Scores,
    session: &SessionId,
    vouchee: &AgentId,
    omega: f64,
) -> Result<SlashReport, SlashError> {
    let omega = check_unit("omega", omega).map_err(|_| SlashError::BadOmega { value: omega })?;
    let mut new_book = book.clone();
    let mut new_scores = scores.clone();
    let mut report = SlashReport {
        session: session.clone(),
        vouchee: vouchee.clone(),
        omega,
        changes: Vec::new(),
        released: Vec::new(),
        cascaded: Vec::new(),
    };
    let mut queued: BTreeSet<AgentId> = BTreeSet::from([vouchee.clone()]);
    let mut queue: VecDeque<(AgentId, u32)> = VecDeque::from([(vouchee.clone(), 0)]);
    while let Some((agent, hop)) = queue.pop_front() {
        let before = sigma_of(&new_scores, &agent, hop)?;
        new_scores.0.insert(agent.clone(), 0.0);
        report.changes.push(SigmaChange {
            agent: agent.clone(),
            before,
            after: 0.0,
            cause: ChangeCause::Slashed,
            hop,
        });
        // A slashed agent (σ 0) backs nobody any more: its own bonds go.
        let outgoing: Vec<Vouch> = new_book.vouches_by(session, &agent).cloned().collect();
        for v in outgoing {
            if let Ok(released) = new_book.release(v.id) {
                report.released.push(released);
            }
        }
        let bonds: Vec<Vouch> = new_book.vouches_for(session, &agent).cloned().collect();
        for bond in bonds {
            let voucher = bond.voucher.clone();
            let before = sigma_of(&new_scores, &voucher, hop + 1)?;
            let after = (before * (1.0 - omega)).max(SIGMA_FLOOR).min(before);
            new_scores.0.insert(voucher.clone(), after);
            report.changes.push(SigmaChange {
                agent: voucher.clone(),
                before,
                after,
                cause: ChangeCause::VoucherPenalty,
                hop,
            });
            if let Ok(released) = new_book.release(bond.id) {
                report.released.push(released);
            }
            let next = hop + 1;
            if after < CASCADE_THRESHOLD
                && next <= MAX_CASCADE_HOPS
                && new_book.vouches_for(session, &voucher).next().is_some()
                && queued.insert(voucher.clone())
            {
                report.cascaded.push(Cascaded {
                    agent: voucher.clone(),
                    hop: next,
                });
                queue.push_back((voucher, next));
            }
        }
    }
    *book = new_book;
    *scores = new_scores;
    Ok(report)
}

fn sigma_of(scores: &Scores, agent: &AgentId, hop: u32) -> Result<f64, SlashError> {
    scores.get(agent).ok_or_else(|| SlashError::UnknownScore {
        agent: agent.clone(),
        hop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn s1() -> SessionId {
        SessionId::new("s1").unwrap()
    }

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-9
    }

    fn scores(pairs: &[(&str, f64)]) -> Scores {
        let mut s = Scores::new();
        for (name, sigma) in pairs {
            s.set(a(name), *sigma).unwrap();
        }
        s
    }

    #[test]
    fn the_vouchee_drops_to_zero_and_a_voucher_loses_omega() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("voucher", 0.9), ("bad", 0.4)]);
        let v = book
            .vouch_default(&s1(), &a("voucher"), &a("bad"), 0.9)
            .unwrap();
        let report = slash(&mut book, &mut sc, &s1(), &a("bad"), 0.5).unwrap();
        assert_eq!(sc.get(&a("bad")), Some(0.0));
        assert!(close(sc.get(&a("voucher")).unwrap(), 0.45));
        assert_eq!(report.released, vec![v]);
        assert!(book.is_empty(), "the bond is released");
        assert!(report.cascaded.is_empty());
        assert_eq!(report.changes.len(), 2);
        assert_eq!(report.changes[0].cause, ChangeCause::Slashed);
        assert!(close(report.changes[0].before, 0.4));
        assert_eq!(report.changes[1].cause, ChangeCause::VoucherPenalty);
        assert!(close(report.changes[1].before, 0.9) && close(report.changes[1].after, 0.45));
    }

    #[test]
    fn a_slashed_agent_backs_nobody_any_more() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("voucher", 0.9), ("bad", 0.6), ("protege", 0.3)]);
        book.vouch_default(&s1(), &a("voucher"), &a("bad"), 0.9)
            .unwrap();
        let backing = book
            .vouch_default(&s1(), &a("bad"), &a("protege"), 0.6)
            .unwrap();
        let report = slash(&mut book, &mut sc, &s1(), &a("bad"), 0.5).unwrap();
        assert!(report.released.contains(&backing), "{report:?}");
        assert!(book.is_empty(), "both bonds are gone");
        let eff = book
            .effective_sigma(&s1(), &a("protege"), 0.3, 0.5)
            .unwrap();
        assert!(close(eff, 0.3), "no lift from a slashed voucher: {eff}");
    }

    #[test]
    fn every_voucher_of_the_vouchee_is_penalised() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("v1", 0.8), ("v2", 0.7), ("bad", 0.3)]);
        book.vouch_default(&s1(), &a("v1"), &a("bad"), 0.8).unwrap();
        book.vouch_default(&s1(), &a("v2"), &a("bad"), 0.7).unwrap();
        let report = slash(&mut book, &mut sc, &s1(), &a("bad"), 0.3).unwrap();
        assert!(close(sc.get(&a("v1")).unwrap(), 0.56));
        assert!(close(sc.get(&a("v2")).unwrap(), 0.49));
        assert_eq!(report.released.len(), 2);
    }

    #[test]
    fn a_voucher_never_drops_below_the_floor() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("voucher", 0.6), ("bad", 0.3)]);
        book.vouch_default(&s1(), &a("voucher"), &a("bad"), 0.6)
            .unwrap();
        slash(&mut book, &mut sc, &s1(), &a("bad"), 1.0).unwrap();
        assert!(close(sc.get(&a("voucher")).unwrap(), SIGMA_FLOOR));
    }

    #[test]
    fn a_voucher_already_below_the_floor_is_not_raised() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("voucher", 0.6), ("bad", 0.3)]);
        book.vouch_default(&s1(), &a("voucher"), &a("bad"), 0.6)
            .unwrap();
        sc.set(a("voucher"), 0.02).unwrap();
        slash(&mut book, &mut sc, &s1(), &a("bad"), 0.5).unwrap();
        assert!(close(sc.get(&a("voucher")).unwrap(), 0.02));
    }

    #[test]
    fn only_vouches_of_the_session_are_slashed() {
        let mut book = VouchBook::new();
        let s2 = SessionId::new("s2").unwrap();
        let mut sc = scores(&[("voucher", 0.9), ("bad", 0.4)]);
        let other = book
            .vouch_default(&s2, &a("voucher"), &a("bad"), 0.9)
            .unwrap();
        slash(&mut book, &mut sc, &s1(), &a("bad"), 0.5).unwrap();
        assert!(close(sc.get(&a("voucher")).unwrap(), 0.9));
        assert_eq!(book.get(other.id), Some(&other));
    }

    #[test]
    fn a_clipped_voucher_with_vouchers_is_slashed_in_turn() {
        // top backs mid, mid backs bad. Slashing bad with ω = 1 clips mid to
        // the floor; mid has a voucher, so mid is slashed and top pays.
        let mut book = VouchBook::new();
        let mut sc = scores(&[("top", 0.9), ("mid", 0.8), ("bad", 0.4)]);
        book.vouch_default(&s1(), &a("top"), &a("mid"), 0.9)
            .unwrap();
        book.vouch_default(&s1(), &a("mid"), &a("bad"), 0.8)
            .unwrap();
        let report = slash(&mut book, &mut sc, &s1(), &a("bad"), 1.0).unwrap();
        assert_eq!(
            report.cascaded,
            vec![Cascaded {
                agent: a("mid"),
                hop: 1
            }]
        );
        assert_eq!(sc.get(&a("mid")), Some(0.0));
        assert!(close(sc.get(&a("top")).unwrap(), SIGMA_FLOOR));
        assert!(book.is_empty());
    }

    #[test]
    fn a_clipped_voucher_without_vouchers_is_not_slashed() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("mid", 0.8), ("bad", 0.4)]);
        book.vouch_default(&s1(), &a("mid"), &a("bad"), 0.8)
            .unwrap();
        let report = slash(&mut book, &mut sc, &s1(), &a("bad"), 1.0).unwrap();
        assert!(report.cascaded.is_empty());
        assert!(close(sc.get(&a("mid")).unwrap(), SIGMA_FLOOR));
    }

    #[test]
    fn a_voucher_above_the_threshold_does_not_cascade() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("top", 0.9), ("mid", 0.8), ("bad", 0.4)]);
        book.vouch_default(&s1(), &a("top"), &a("mid"), 0.9)
            .unwrap();
        book.vouch_default(&s1(), &a("mid"), &a("bad"), 0.8)
            .unwrap();
        let report = slash(&mut book, &mut sc, &s1(), &a("bad"), 0.5).unwrap();
        assert!(report.cascaded.is_empty());
        assert!(close(sc.get(&a("mid")).unwrap(), 0.4));
        assert!(close(sc.get(&a("top")).unwrap(), 0.9));
        assert_eq!(book.len(), 1, "top's bond for mid stays");
    }

    #[test]
    fn the_cascade_stops_at_two_hops() {
        // a4 → a3 → a2 → a1 → bad (each backs the next).
        let mut book = VouchBook::new();
        let names = ["a4", "a3", "a2", "a1", "bad"];
        let mut sc = scores(&[
            ("a4", 0.9),
            ("a3", 0.9),
            ("a2", 0.9),
            ("a1", 0.9),
            ("bad", 0.5),
        ]);
        for pair in names.windows(2) {
            book.vouch_default(&s1(), &a(pair[0]), &a(pair[1]), 0.9)
                .unwrap();
        }
        let report = slash(&mut book, &mut sc, &s1(), &a("bad"), 1.0).unwrap();
        assert_eq!(
            report.cascaded,
            vec![
                Cascaded {
                    agent: a("a1"),
                    hop: 1
                },
                Cascaded {
                    agent: a("a2"),
                    hop: 2
                }
            ]
        );
        assert_eq!(sc.get(&a("a1")), Some(0.0));
        assert_eq!(sc.get(&a("a2")), Some(0.0));
        // a3 vouched for a2 (hop 2): penalised, clipped, but not slashed.
        assert!(close(sc.get(&a("a3")).unwrap(), SIGMA_FLOOR));
        assert!(close(sc.get(&a("a4")).unwrap(), 0.9));
        assert_eq!(book.len(), 1, "a4's bond for a3 stays");
    }

    #[test]
    fn a_bad_omega_is_refused_and_changes_nothing() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("voucher", 0.9), ("bad", 0.4)]);
        book.vouch_default(&s1(), &a("voucher"), &a("bad"), 0.9)
            .unwrap();
        for omega in [f64::NAN, -0.1, 1.5] {
            let err = slash(&mut book, &mut sc, &s1(), &a("bad"), omega).unwrap_err();
            assert!(matches!(err, SlashError::BadOmega { .. }), "{err}");
        }
        assert_eq!(book.len(), 1);
        assert!(close(sc.get(&a("bad")).unwrap(), 0.4));
    }

    #[test]
    fn a_missing_score_is_refused_and_changes_nothing() {
        let mut book = VouchBook::new();
        let mut sc = scores(&[("bad", 0.4)]);
        book.vouch_default(&s1(), &a("voucher"), &a("bad"), 0.9)
            .unwrap();
        let err = slash(&mut book, &mut sc, &s1(), &a("bad"), 0.5).unwrap_err();
        assert_eq!(
            err,
            SlashError::UnknownScore {
                agent: a("voucher"),
                hop: 1
            }
        );
        assert!(err.to_string().contains("voucher"), "{err}");
        assert!(close(sc.get(&a("bad")).unwrap(), 0.4), "rolled back");
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn scores_refuse_values_outside_the_unit_interval() {
        let mut sc = Scores::new();
        assert!(sc.set(a("x"), f64::NAN).is_err());
        assert!(sc.set(a("x"), 1.01).is_err());
        assert!(sc.is_empty());
        let map = BTreeMap::from([(a("x"), 0.5), (a("y"), -1.0)]);
        assert!(Scores::try_from(map).is_err());
        let ok = Scores::try_from(BTreeMap::from([(a("x"), 0.5)])).unwrap();
        assert_eq!(ok.iter().collect::<Vec<_>>(), vec![(&a("x"), 0.5)]);
        assert_eq!(ok.len(), 1);
    }

    proptest! {
        #[test]
        fn a_slash_never_raises_sigma_and_spares_vouchers_the_floor(
            sigmas in proptest::collection::vec(0.0f64..=1.0, 6),
            edges in proptest::collection::vec((0usize..6, 0usize..6, 0.05f64..=0.8), 0..20),
            later in proptest::collection::vec(proptest::option::of(0.0f64..=0.2), 6),
            victim in 0usize..6,
            omega in 0.0f64..=1.0,
        ) {
            let names: Vec<AgentId> = (0..6).map(|i| a(&format!("agent{i}"))).collect();
            let mut sc = Scores::new();
            for (n, s) in names.iter().zip(&sigmas) {
                sc.set(n.clone(), *s).unwrap();
            }
            let mut book = VouchBook::new();
            for (from, to, pct) in edges {
                let _ = book.vouch(&s1(), &names[from], &names[to], sigmas[from], pct);
            }
            // σ may fall after vouching (other slashes, demotions), even below the floor.
            for (n, low) in names.iter().zip(&later) {
                if let Some(low) = low {
                    sc.set(n.clone(), *low).unwrap();
                }
            }
            let before = sc.clone();
            let report = slash(&mut book, &mut sc, &s1(), &names[victim], omega).unwrap();
            let slashed: BTreeSet<&AgentId> = std::iter::once(&names[victim])
                .chain(report.cascaded.iter().map(|c| &c.agent))
                .collect();
            for (agent, after) in sc.iter() {
                let was = before.get(agent).unwrap();
                prop_assert!(after <= was, "{agent}: {was} -> {after}");
                if slashed.contains(agent) {
                    prop_assert_eq!(after, 0.0);
                } else {
                    prop_assert!(after >= was.min(SIGMA_FLOOR), "{agent}: {was} -> {after}");
                }
            }
            for c in &report.cascaded {
                prop_assert!(c.hop >= 1 && c.hop <= MAX_CASCADE_HOPS);
            }
            for change in &report.changes {
                prop_assert!(change.after <= change.before);
            }
        }
    }
}
