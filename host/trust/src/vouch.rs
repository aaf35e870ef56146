//! Per-session vouching (SEMANTICS.md "Liability"): an agent with enough
//! trust puts part of its σ up as a bond for another agent in one session,
//! which raises the vouchee's effective score and exposes the voucher to a
//! slash if the vouchee misbehaves.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ahv_core::{AgentId, SessionId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The least σ a voucher needs (inclusive).
pub const MIN_VOUCHER_SIGMA: f64 = 0.50;
/// The share of the voucher's σ bonded when none is given.
pub const DEFAULT_BOND_PCT: f64 = 0.20;
/// The most of its σ a voucher may have bonded at once in one session.
pub const MAX_EXPOSURE: f64 = 0.80;
/// How many active vouches a [`VouchBook`] holds unless told otherwise.
pub const DEFAULT_MAX_VOUCHES: usize = 65_536;

/// Slack for comparisons of sums of bonds: four 20 % bonds must fit under an
/// 80 % cap even when the float sum lands a hair above 0.8.
pub(crate) const EPSILON: f64 = 1e-9;

/// The id of one vouch, unique within its [`VouchBook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VouchId(pub u64);

impl fmt::Display for VouchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vouch-{}", self.0)
    }
}

/// One active vouch: `voucher` backs `vouchee` in `session` with `bond`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vouch {
    /// Its id.
    pub id: VouchId,
    /// The session it holds in.
    pub session: SessionId,
    /// The agent that vouches.
    pub voucher: AgentId,
    /// The agent vouched for.
    pub vouchee: AgentId,
    /// The voucher's σ when it vouched.
    pub voucher_sigma: f64,
    /// The share of that σ bonded, in (0, 1].
    pub pct: f64,
    /// The bonded amount, `voucher_sigma × pct`.
    pub bond: f64,
}

/// Why a vouch, a release or an effective-score computation was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum VouchError {
    /// An agent tried to vouch for itself.
    #[error("agent {agent} may not vouch for itself")]
    SelfVouch {
        /// The agent.
        agent: AgentId,
    },
    /// The voucher's σ is below [`MIN_VOUCHER_SIGMA`].
    #[error("voucher {voucher} has σ {sigma}, below the {min} needed to vouch")]
    VoucherTooWeak {
        /// The voucher.
        voucher: AgentId,
        /// Its σ.
        sigma: f64,
        /// The minimum.
        min: f64,
    },
    /// The vouch would close a cycle of vouches in the session.
    #[error(
        "{voucher} vouching for {vouchee} in session {session} would close a cycle: {vouchee} already backs {voucher}, directly or through others"
    )]
    Cycle {
        /// The session.
        session: SessionId,
        /// The would-be voucher.
        voucher: AgentId,
        /// The would-be vouchee.
        vouchee: AgentId,
    },
    /// The voucher already vouches for the vouchee in the session.
    #[error("{voucher} already vouches for {vouchee} in session {session} ({existing})")]
    Duplicate {
        /// The session.
        session: SessionId,
        /// The voucher.
        voucher: AgentId,
        /// The vouchee.
        vouchee: AgentId,
        /// The active vouch.
        existing: VouchId,
    },
    /// The new bond would push the voucher's active bonds in the session over
    /// [`MAX_EXPOSURE`] of its σ.
    #[error(
        "voucher {voucher} has {active} bonded in session {session}; a bond of {bond} would pass its cap of {cap} (80 % of σ {sigma})"
    )]
    ExposureExceeded {
        /// The session.
        session: SessionId,
        /// The voucher.
        voucher: AgentId,
        /// Its σ.
        sigma: f64,
        /// What it already has bonded in the session.
        active: f64,
        /// The bond asked for.
        bond: f64,
        /// The cap, `0.8 × σ`.
        cap: f64,
    },
    /// A number is NaN, infinite or outside its range.
    #[error("{field} must be a number in {range}, got {value}")]
    OutOfRange {
        /// Which input.
        field: &'static str,
        /// Its value.
        value: f64,
        /// The allowed range.
        range: &'static str,
    },
    /// No active vouch has this id.
    #[error("no active vouch {id}")]
    UnknownVouch {
        /// The id asked for.
        id: VouchId,
    },
    /// The book holds as many active vouches as it may.
    #[error("the vouch book is full ({max} active vouches); {voucher} cannot vouch for {vouchee}")]
    Full {
        /// The would-be voucher.
        voucher: AgentId,
        /// The would-be vouchee.
        vouchee: AgentId,
        /// The cap.
        max: usize,
    },
}

/// Checks a score in [0, 1] (NaN and infinities refused).
pub(crate) fn check_unit(field: &'static str, value: f64) -> Result<f64, VouchError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(VouchError::OutOfRange {
            field,
            value,
            range: "[0, 1]",
        })
    }
}

/// `eff = min(1, σ + ω × Σ bonds)`: the effective score of an agent with σ
/// `sigma` backed by `bonds`, with vouching weight `omega`.
///
/// # Errors
/// [`VouchError::OutOfRange`] if σ, ω or a bond is not a number in [0, 1].
pub fn effective_sigma(
    sigma: f64,
    omega: f64,
    bonds: impl IntoIterator<Item = f64>,
) -> Result<f64, VouchError> {
    let sigma = check_unit("sigma", sigma)?;
    let omega = check_unit("omega", omega)?;
    let mut total = 0.0;
    for bond in bonds {
        total += check_unit("bond", bond)?;
    }
    Ok((sigma + omega * total).min(1.0))
}

/// The active vouches of every session, with their invariants: no self-vouch,
/// no cycle within a session, one vouch per (voucher, vouchee, session), and
/// a voucher's bonds in a session within [`MAX_EXPOSURE`] of its σ.
#[derive(Debug, Clone)]
pub struct VouchBook {
    sessions: BTreeMap<SessionId, BTreeMap<VouchId, Vouch>>,
    index: BTreeMap<VouchId, SessionId>,
    next_id: u64,
    max: usize,
}

impl Default for VouchBook {
    fn default() -> Self {
        VouchBook::new()
    }
}

impl VouchBook {
    /// An empty book holding at most [`DEFAULT_MAX_VOUCHES`] active vouches.
    pub fn new() -> VouchBook {
        VouchBook::with_max_vouches(DEFAULT_MAX_VOUCHES)
    }

    /// An empty book holding at most `max` active vouches.
    pub fn with_max_vouches(max: usize) -> VouchBook {
        VouchBook {
            sessions: BTreeMap::new(),
            index: BTreeMap::new(),
            next_id: 1,
            max,
        }
    }

    /// `voucher` (whose σ is `voucher_sigma`) bonds `pct` of it for `vouchee`
    /// in `session`.
    ///
    /// # Errors
    /// [`VouchError::OutOfRange`] for a σ outside [0, 1] or a `pct` outside
    /// (0, 1]; [`VouchError::SelfVouch`], [`VouchError::VoucherTooWeak`],
    /// [`VouchError::Duplicate`], [`VouchError::Cycle`],
    /// [`VouchError::ExposureExceeded`] or [`VouchError::Full`] when a rule
    /// refuses it. A refused vouch changes nothing.
    pub fn vouch(
        &mut self,
        session: &SessionId,
        voucher: &AgentId,
        vouchee: &AgentId,
        voucher_sigma: f64,
        pct: f64,
    ) -> Result<Vouch, VouchError> {
        let sigma = check_unit("voucher_sigma", voucher_sigma)?;
        if !(pct.is_finite() && pct > 0.0 && pct <= 1.0) {
            return Err(VouchError::OutOfRange {
                field: "pct",
                value: pct,
                range: "(0, 1]",
            });
        }
        if voucher == vouchee {
            return Err(VouchError::SelfVouch {
                agent: voucher.clone(),
            });
        }
        if sigma < MIN_VOUCHER_SIGMA {
            return Err(VouchError::VoucherTooWeak {
                voucher: voucher.clone(),
                sigma,
                min: MIN_VOUCHER_SIGMA,
            });
        }
        let empty = BTreeMap::new();
        let active = self.sessions.get(session).unwrap_or(&empty);
        if let Some(existing) = active
            .values()
            .find(|v| &v.voucher == voucher && &v.vouchee == vouchee)
        {
            return Err(VouchError::Duplicate {
                session: session.clone(),
                voucher: voucher.clone(),
                vouchee: vouchee.clone(),
                existing: existing.id,
            });
        }
        if backs(active, vouchee, voucher) {
            return Err(VouchError::Cycle {
                session: session.clone(),
                voucher: voucher.clone(),
                vouchee: vouchee.clone(),
            });
        }
        let bond = sigma * pct;
        let bonded: f64 = active
            .values()
            .filter(|v| &v.voucher == voucher)
            .map(|v| v.bond)
            .sum();
        let cap = MAX_EXPOSURE * sigma;
        if bonded + bond > cap + EPSILON {
            return Err(VouchError::ExposureExceeded {
                session: session.clone(),
                voucher: voucher.clone(),
                sigma,
                active: bonded,
                bond,
                cap,
            });
        }
        if self.index.len() >= self.max {
            return Err(VouchError::Full {
                voucher: voucher.clone(),
                vouchee: vouchee.clone(),
                max: self.max,
            });
        }
        let id = VouchId(self.next_id);
        self.next_id += 1;
        let vouch = Vouch {
            id,
            session: session.clone(),
            voucher: voucher.clone(),
            vouchee: vouchee.clone(),
            voucher_sigma: sigma,
            pct,
            bond,
        };
        self.sessions
            .entry(session.clone())
            .or_default()
            .insert(id, vouch.clone());
        self.index.insert(id, session.clone());
        Ok(vouch)
    }

    /// Like [`VouchBook::vouch`] with the [`DEFAULT_BOND_PCT`] of 20 %.
    ///
    /// # Errors
    /// As [`VouchBook::vouch`].
    pub fn vouch_default(
        &mut self,
        session: &SessionId,
        voucher: &AgentId,
        vouchee: &AgentId,
        voucher_sigma: f64,
    ) -> Result<Vouch, VouchError> {
        self.vouch(session, voucher, vouchee, voucher_sigma, DEFAULT_BOND_PCT)
    }

    /// Releases one vouch and returns it.
    ///
    /// # Errors
    /// [`VouchError::UnknownVouch`] if no active vouch has that id.
    pub fn release(&mut self, id: VouchId) -> Result<Vouch, VouchError> {
        let session = self
            .index
            .remove(&id)
            .ok_or(VouchError::UnknownVouch { id })?;
        let vouches = self
            .sessions
            .get_mut(&session)
            .ok_or(VouchError::UnknownVouch { id })?;
        let vouch = vouches.remove(&id).ok_or(VouchError::UnknownVouch { id })?;
        if vouches.is_empty() {
            self.sessions.remove(&session);
        }
        Ok(vouch)
    }

    /// Releases every vouch, in every session, that `agent` gives or receives,
    /// and returns them in id order.
    pub fn release_all_for(&mut self, agent: &AgentId) -> Vec<Vouch> {
        self.release_where(|v| &v.voucher == agent || &v.vouchee == agent)
    }

    /// Releases every vouch of `session` (it ended) and returns them in id order.
    pub fn release_session(&mut self, session: &SessionId) -> Vec<Vouch> {
        self.release_where(|v| &v.session == session)
    }

    fn release_where(&mut self, pred: impl Fn(&Vouch) -> bool) -> Vec<Vouch> {
        let ids: Vec<VouchId> = self
            .sessions
            .values()
            .flat_map(BTreeMap::values)
            .filter(|v| pred(v))
            .map(|v| v.id)
            .collect();
        let mut out: Vec<Vouch> = ids
            .into_iter()
            .filter_map(|id| self.release(id).ok())
            .collect();
        out.sort_by_key(|v| v.id);
        out
    }

    /// The active vouch with this id.
    pub fn get(&self, id: VouchId) -> Option<&Vouch> {
        let session = self.index.get(&id)?;
        self.sessions.get(session)?.get(&id)
    }

    /// The active vouches backing `agent` in `session`, in id order.
    pub fn vouches_for<'a>(
        &'a self,
        session: &SessionId,
        agent: &'a AgentId,
    ) -> impl Iterator<Item = &'a Vouch> + 'a {
        self.in_session(session)
            .filter(move |v| &v.vouchee == agent)
    }

    /// The active vouches `agent` gives in `session`, in id order.
    pub fn vouches_by<'a>(
        &'a self,
        session: &SessionId,
        agent: &'a AgentId,
    ) -> impl Iterator<Item = &'a Vouch> + 'a {
        self.in_session(session)
            .filter(move |v| &v.voucher == agent)
    }

    /// Every active vouch of `session`, in id order.
    pub fn in_session<'a>(&'a self, session: &SessionId) -> impl Iterator<Item = &'a Vouch> + 'a {
        self.sessions
            .get(session)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// What `agent` has bonded in `session`.
    pub fn active_bonds_by(&self, session: &SessionId, agent: &AgentId) -> f64 {
        self.vouches_by(session, agent).map(|v| v.bond).sum()
    }

    /// `agent`'s effective score in `session`: [`effective_sigma`] over the
    /// bonds of its active vouchers there.
    ///
    /// # Errors
    /// [`VouchError::OutOfRange`] if σ or ω is not a number in [0, 1].
    pub fn effective_sigma(
        &self,
        session: &SessionId,
        agent: &AgentId,
        sigma: f64,
        omega: f64,
    ) -> Result<f64, VouchError> {
        effective_sigma(
            sigma,
            omega,
            self.vouches_for(session, agent).map(|v| v.bond),
        )
    }

    /// How many vouches are active, over all sessions.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no vouch is active.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Whether `from` backs `to` through a chain of active vouches (voucher →
/// vouchee edges) in one session. The adjacency is built once so the walk
/// costs O(E log E) however long the chains are.
fn backs(vouches: &BTreeMap<VouchId, Vouch>, from: &AgentId, to: &AgentId) -> bool {
    let mut edges: BTreeMap<&AgentId, Vec<&AgentId>> = BTreeMap::new();
    for v in vouches.values() {
        edges.entry(&v.voucher).or_default().push(&v.vouchee);
    }
    let mut seen: BTreeSet<&AgentId> = BTreeSet::new();
    let mut stack = vec![from];
    while let Some(agent) = stack.pop() {
        if agent == to {
            return true;
        }
        if seen.insert(agent)
            && let Some(next) = edges.get(agent)
        {
            stack.extend(next.iter().copied());
        }
    }
    false
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

    #[test]
    fn a_vouch_bonds_sigma_times_pct() {
        let mut book = VouchBook::new();
        let v = book.vouch(&s1(), &a("alice"), &a("bob"), 0.9, 0.5).unwrap();
        assert!(close(v.bond, 0.45), "{}", v.bond);
        assert_eq!(v.voucher, a("alice"));
        assert_eq!(v.vouchee, a("bob"));
        assert_eq!(book.get(v.id), Some(&v));
    }

    #[test]
    fn the_default_bond_is_twenty_percent() {
        let mut book = VouchBook::new();
        let v = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.8)
            .unwrap();
        assert!(close(v.bond, 0.16), "{}", v.bond);
        assert!(close(v.pct, DEFAULT_BOND_PCT));
    }

    #[test]
    fn an_agent_cannot_vouch_for_itself() {
        let err = VouchBook::new()
            .vouch_default(&s1(), &a("alice"), &a("alice"), 0.9)
            .unwrap_err();
        assert_eq!(err, VouchError::SelfVouch { agent: a("alice") });
        assert!(err.to_string().contains("alice"), "{err}");
    }

    #[test]
    fn a_voucher_needs_sigma_of_at_least_one_half() {
        let mut book = VouchBook::new();
        let err = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.49)
            .unwrap_err();
        assert!(matches!(err, VouchError::VoucherTooWeak { sigma, .. } if sigma == 0.49));
        assert!(err.to_string().contains("0.49"), "{err}");
        book.vouch_default(&s1(), &a("alice"), &a("bob"), 0.50)
            .unwrap();
    }

    #[test]
    fn a_direct_cycle_is_refused() {
        let mut book = VouchBook::new();
        book.vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        let err = book
            .vouch_default(&s1(), &a("bob"), &a("alice"), 0.9)
            .unwrap_err();
        assert!(matches!(err, VouchError::Cycle { .. }), "{err}");
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn an_indirect_cycle_is_refused() {
        let mut book = VouchBook::new();
        book.vouch_default(&s1(), &a("a"), &a("b"), 0.9).unwrap();
        book.vouch_default(&s1(), &a("b"), &a("c"), 0.9).unwrap();
        book.vouch_default(&s1(), &a("c"), &a("d"), 0.9).unwrap();
        let err = book
            .vouch_default(&s1(), &a("d"), &a("a"), 0.9)
            .unwrap_err();
        assert!(matches!(err, VouchError::Cycle { ref voucher, .. } if voucher == &a("d")));
    }

    #[test]
    fn cycles_are_per_session() {
        let mut book = VouchBook::new();
        let s2 = SessionId::new("s2").unwrap();
        book.vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        book.vouch_default(&s2, &a("bob"), &a("alice"), 0.9)
            .unwrap();
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn a_released_vouch_no_longer_closes_a_cycle() {
        let mut book = VouchBook::new();
        let v = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        book.release(v.id).unwrap();
        book.vouch_default(&s1(), &a("bob"), &a("alice"), 0.9)
            .unwrap();
    }

    #[test]
    fn a_second_vouch_for_the_same_pair_is_refused() {
        let mut book = VouchBook::new();
        let v = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        let err = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap_err();
        assert!(matches!(err, VouchError::Duplicate { existing, .. } if existing == v.id));
    }

    #[test]
    fn bonds_may_reach_but_not_pass_eighty_percent_of_sigma() {
        let mut book = VouchBook::new();
        for who in ["b", "c", "d", "e"] {
            book.vouch_default(&s1(), &a("alice"), &a(who), 1.0)
                .unwrap();
        }
        assert!(close(book.active_bonds_by(&s1(), &a("alice")), 0.8));
        let err = book
            .vouch(&s1(), &a("alice"), &a("f"), 1.0, 0.01)
            .unwrap_err();
        match err {
            VouchError::ExposureExceeded {
                active, bond, cap, ..
            } => {
                assert!(close(active, 0.8) && close(bond, 0.01) && close(cap, 0.8));
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn exposure_is_counted_per_session() {
        let mut book = VouchBook::new();
        let s2 = SessionId::new("s2").unwrap();
        book.vouch(&s1(), &a("alice"), &a("bob"), 1.0, 0.8).unwrap();
        book.vouch(&s2, &a("alice"), &a("bob"), 1.0, 0.8).unwrap();
        assert!(
            book.vouch(&s1(), &a("alice"), &a("carol"), 1.0, 0.1)
                .is_err()
        );
    }

    #[test]
    fn a_released_bond_frees_exposure() {
        let mut book = VouchBook::new();
        let v = book.vouch(&s1(), &a("alice"), &a("bob"), 1.0, 0.8).unwrap();
        assert!(
            book.vouch(&s1(), &a("alice"), &a("carol"), 1.0, 0.1)
                .is_err()
        );
        book.release(v.id).unwrap();
        book.vouch(&s1(), &a("alice"), &a("carol"), 1.0, 0.1)
            .unwrap();
    }

    #[test]
    fn nan_and_out_of_range_numbers_are_refused() {
        let mut book = VouchBook::new();
        for (sigma, pct, field) in [
            (f64::NAN, 0.2, "voucher_sigma"),
            (1.1, 0.2, "voucher_sigma"),
            (-0.1, 0.2, "voucher_sigma"),
            (0.9, f64::NAN, "pct"),
            (0.9, 0.0, "pct"),
            (0.9, 1.01, "pct"),
            (0.9, f64::INFINITY, "pct"),
        ] {
            let err = book
                .vouch(&s1(), &a("alice"), &a("bob"), sigma, pct)
                .unwrap_err();
            assert!(
                matches!(err, VouchError::OutOfRange { field: f, .. } if f == field),
                "{sigma} {pct}: {err}"
            );
        }
        assert!(book.is_empty());
        book.vouch(&s1(), &a("alice"), &a("bob"), 0.9, 1.0)
            .unwrap_err();
        book.vouch(&s1(), &a("alice"), &a("bob"), 0.9, 0.8).unwrap();
    }

    #[test]
    fn releasing_an_unknown_vouch_is_an_error() {
        let mut book = VouchBook::new();
        let v = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        assert_eq!(book.release(v.id).unwrap(), v);
        assert_eq!(
            book.release(v.id),
            Err(VouchError::UnknownVouch { id: v.id })
        );
        assert!(book.is_empty());
    }

    #[test]
    fn release_all_for_drops_vouches_given_and_received_in_every_session() {
        let mut book = VouchBook::new();
        let s2 = SessionId::new("s2").unwrap();
        let v1 = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        let v2 = book
            .vouch_default(&s2, &a("carol"), &a("alice"), 0.9)
            .unwrap();
        let keep = book
            .vouch_default(&s1(), &a("carol"), &a("bob"), 0.9)
            .unwrap();
        let released = book.release_all_for(&a("alice"));
        assert_eq!(released, vec![v1, v2]);
        assert_eq!(book.len(), 1);
        assert_eq!(book.get(keep.id), Some(&keep));
    }

    #[test]
    fn release_session_drops_only_that_session() {
        let mut book = VouchBook::new();
        let s2 = SessionId::new("s2").unwrap();
        let v1 = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        book.vouch_default(&s2, &a("alice"), &a("bob"), 0.9)
            .unwrap();
        assert_eq!(book.release_session(&s1()), vec![v1]);
        assert_eq!(book.in_session(&s2).count(), 1);
    }

    #[test]
    fn vouches_for_and_by_list_the_active_vouches_of_an_agent() {
        let mut book = VouchBook::new();
        let v1 = book
            .vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        let v2 = book
            .vouch_default(&s1(), &a("carol"), &a("bob"), 0.7)
            .unwrap();
        let v3 = book
            .vouch_default(&s1(), &a("bob"), &a("dave"), 0.6)
            .unwrap();
        let bob = a("bob");
        assert_eq!(
            book.vouches_for(&s1(), &bob).collect::<Vec<_>>(),
            vec![&v1, &v2]
        );
        assert_eq!(book.vouches_by(&s1(), &bob).collect::<Vec<_>>(), vec![&v3]);
        let other = SessionId::new("other").unwrap();
        assert_eq!(book.vouches_for(&other, &bob).count(), 0);
    }

    #[test]
    fn a_full_book_refuses_new_vouches() {
        let mut book = VouchBook::with_max_vouches(1);
        book.vouch_default(&s1(), &a("alice"), &a("bob"), 0.9)
            .unwrap();
        let err = book
            .vouch_default(&s1(), &a("alice"), &a("carol"), 0.9)
            .unwrap_err();
        assert!(matches!(err, VouchError::Full { max: 1, .. }), "{err}");
    }

    #[test]
    fn effective_sigma_matches_the_examples() {
        assert!(close(effective_sigma(0.3, 0.2, [0.45]).unwrap(), 0.39));
        assert!(close(effective_sigma(0.1, 0.5, [0.4, 0.3]).unwrap(), 0.45));
        assert!(close(effective_sigma(0.9, 1.0, [0.5, 0.5]).unwrap(), 1.0));
        assert!(close(effective_sigma(0.4, 0.5, []).unwrap(), 0.4));
    }

    #[test]
    fn effective_sigma_refuses_bad_numbers() {
        for (sigma, omega, bond, field) in [
            (f64::NAN, 0.5, 0.1, "sigma"),
            (0.5, f64::NAN, 0.1, "omega"),
            (0.5, 1.5, 0.1, "omega"),
            (0.5, 0.5, f64::NAN, "bond"),
            (0.5, 0.5, -0.1, "bond"),
        ] {
            let err = effective_sigma(sigma, omega, [bond]).unwrap_err();
            assert!(
                matches!(err, VouchError::OutOfRange { field: f, .. } if f == field),
                "{err}"
            );
        }
    }

    #[test]
    fn the_book_computes_eff_from_active_vouchers() {
        let mut book = VouchBook::new();
        book.vouch(&s1(), &a("alice"), &a("carol"), 0.8, 0.5)
            .unwrap();
        let v = book.vouch(&s1(), &a("bob"), &a("carol"), 0.6, 0.5).unwrap();
        let carol = a("carol");
        assert!(close(
            book.effective_sigma(&s1(), &carol, 0.1, 0.5).unwrap(),
            0.45
        ));
        book.release(v.id).unwrap();
        assert!(close(
            book.effective_sigma(&s1(), &carol, 0.1, 0.5).unwrap(),
            0.3
        ));
    }

    #[test]
    fn vouch_ids_display_with_a_prefix() {
        assert_eq!(VouchId(7).to_string(), "vouch-7");
    }

    fn agent_strategy() -> impl Strategy<Value = usize> {
        0usize..6
    }

    proptest! {
        #[test]
        fn eff_lies_between_sigma_and_one(
            sigma in 0.0f64..=1.0,
            omega in 0.0f64..=1.0,
            bonds in proptest::collection::vec(0.0f64..=1.0, 0..8),
        ) {
            let eff = effective_sigma(sigma, omega, bonds).unwrap();
            prop_assert!(eff >= sigma && eff <= 1.0, "{eff} for σ {sigma}");
        }

        #[test]
        fn accepted_vouches_never_form_a_cycle_nor_pass_the_exposure_cap(
            ops in proptest::collection::vec(
                (agent_strategy(), agent_strategy(), 0.01f64..=1.0, any::<bool>()), 1..60),
        ) {
            let names: Vec<AgentId> = (0..6).map(|i| a(&format!("agent{i}"))).collect();
            // A fixed σ per agent, so "80 % of its σ" is a fixed cap.
            let sigma = |i: usize| 0.5 + 0.1 * i as f64;
            let mut book = VouchBook::new();
            for (from, to, pct, release_first) in ops {
                let first = book.in_session(&s1()).map(|v| v.id).next();
                if release_first && let Some(id) = first {
                    book.release(id).unwrap();
                }
                let _ = book.vouch(&s1(), &names[from], &names[to], sigma(from), pct);
                let all: BTreeMap<VouchId, Vouch> =
                    book.in_session(&s1()).map(|v| (v.id, v.clone())).collect();
                for v in all.values() {
                    prop_assert!(v.voucher != v.vouchee);
                }
                // Acyclic by an independent check (Kahn's algorithm), not
                // by the `backs` the book itself uses.
                let mut indegree: BTreeMap<&AgentId, usize> = BTreeMap::new();
                for v in all.values() {
                    indegree.entry(&v.voucher).or_insert(0);
                    *indegree.entry(&v.vouchee).or_insert(0) += 1;
                }
                let mut ready: Vec<&AgentId> =
                    indegree.iter().filter(|(_, d)| **d == 0).map(|(a, _)| *a).collect();
                let mut removed = 0;
                while let Some(a) = ready.pop() {
                    removed += 1;
                    for v in all.values().filter(|v| &v.voucher == a) {
                        let d = indegree.get_mut(&v.vouchee).unwrap();
                        *d -= 1;
                        if *d == 0 {
                            ready.push(&v.vouchee);
                        }
                    }
                }
                prop_assert_eq!(removed, indegree.len(), "the accepted vouches form a cycle");
                for (i, name) in names.iter().enumerate() {
                    let bonded = book.active_bonds_by(&s1(), name);
                    prop_assert!(bonded <= MAX_EXPOSURE * sigma(i) + EPSILON, "{name}: {bonded}");
                }
            }
        }
    }
}
