//! Vector clocks (`docs/governance.md`, "Shared state" and "Locks") and the per-session table of
//! what each agent has seen.
//!
//! Every shared resource (a state key, a file in the shared area) carries the
//! clock of its last write. Every agent carries the clock of everything it
//! has read or written. A read merges the resource's clock into the reader's;
//! a write in strict mode is accepted only if the writer's clock dominates
//! (is ≥, component-wise) the resource's clock: the writer has seen the latest
//! write. A stale **or concurrent** write is refused, never silently accepted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use ahv_core::AgentId;
use thiserror::Error;

/// How two vector clocks relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockOrder {
    /// Every component is equal.
    Equal,
    /// `self < other`: every component ≤ and at least one <.
    Before,
    /// `self > other`: every component ≥ and at least one >.
    After,
    /// Neither ≤ nor ≥: the two histories diverged.
    Concurrent,
}

impl fmt::Display for ClockOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClockOrder::Equal => "equal",
            ClockOrder::Before => "before",
            ClockOrder::After => "after",
            ClockOrder::Concurrent => "concurrent",
        })
    }
}

/// A vector clock: one counter per agent; a missing entry is 0 (so `{a: 0}`
/// equals `{}`).
#[derive(Debug, Clone, Default)]
pub struct VectorClock(BTreeMap<AgentId, u64>);

impl PartialEq for VectorClock {
    fn eq(&self, other: &Self) -> bool {
        self.compare(other) == ClockOrder::Equal
    }
}

impl Eq for VectorClock {}

impl VectorClock {
    /// The zero clock (every entry 0).
    pub fn new() -> VectorClock {
        VectorClock::default()
    }

    /// The counter of `agent` (0 if absent).
    pub fn get(&self, agent: &AgentId) -> u64 {
        self.0.get(agent).copied().unwrap_or(0)
    }

    /// Increments `agent`'s counter and returns its new value.
    pub fn tick(&mut self, agent: &AgentId) -> u64 {
        if let Some(n) = self.0.get_mut(agent) {
            *n = n.saturating_add(1);
            return *n;
        }
        self.0.insert(agent.clone(), 1);
        1
    }

    /// A clock from `(agent, counter)` pairs (later pairs for the same agent win).
    pub fn from_entries(entries: impl IntoIterator<Item = (AgentId, u64)>) -> VectorClock {
        VectorClock(entries.into_iter().filter(|(_, n)| *n > 0).collect())
    }

    /// Component-wise maximum with `other`.
    pub fn merge(&mut self, other: &VectorClock) {
        for (agent, n) in &other.0 {
            match self.0.get_mut(agent) {
                Some(m) => *m = (*m).max(*n),
                None => {
                    self.0.insert(agent.clone(), *n);
                }
            }
        }
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VectorClock) -> ClockOrder {
        let (mut less, mut greater) = (false, false);
        for (agent, n) in &self.0 {
            let m = other.get(agent);
            less |= *n < m;
            greater |= *n > m;
        }
        for (agent, m) in &other.0 {
            if !self.0.contains_key(agent) && *m > 0 {
                less = true;
            }
        }
        match (less, greater) {
            (false, false) => ClockOrder::Equal,
            (true, false) => ClockOrder::Before,
            (false, true) => ClockOrder::After,
            (true, true) => ClockOrder::Concurrent,
        }
    }

    /// True when `self ≥ other` component-wise (equal or after).
    pub fn dominates(&self, other: &VectorClock) -> bool {
        other.0.iter().all(|(agent, m)| self.get(agent) >= *m)
    }

    /// The non-zero entries, ordered by agent id.
    pub fn entries(&self) -> impl Iterator<Item = (&AgentId, u64)> {
        self.0.iter().filter(|(_, n)| **n > 0).map(|(a, n)| (a, *n))
    }

    /// How many entries it stores (its size in memory; zeros included).
    pub fn entry_count(&self) -> usize {
        self.0.len()
    }

    /// True when every entry is 0.
    pub fn is_zero(&self) -> bool {
        self.0.values().all(|n| *n == 0)
    }
}

/// The most entries a clock's text shows ([`VectorClock`]'s `Display`).
pub const MAX_SHOWN_ENTRIES: usize = 16;

/// `{a: 1, b: 2}`: at most [`MAX_SHOWN_ENTRIES`] entries, then how many
/// more there are. A clock has an entry for every agent whose writes its
/// holder saw, however many have come and gone; the text goes into error
/// messages to guests and into `state.conflict` and `vfs.conflict` events,
/// which must not grow with the session's history.
impl fmt::Display for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        let mut more = 0usize;
        for (i, (a, n)) in self.entries().enumerate() {
            if i >= MAX_SHOWN_ENTRIES {
                more += 1;
                continue;
            }
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}: {n}")?;
        }
        if more > 0 {
            write!(f, ", … ({more} more)")?;
        }
        f.write_str("}")
    }
}

fn relation(order: ClockOrder) -> &'static str {
    match order {
        ClockOrder::Equal => "equal to",
        ClockOrder::Before => "behind",
        ClockOrder::After => "ahead of",
        ClockOrder::Concurrent => "concurrent with",
    }
}

/// A write refused because the writer had not seen the resource's latest write.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{agent} has not seen the latest write (its clock is {} the resource's: {writer} vs {resource})",
    relation(*order)
)]
pub struct StaleWrite {
    /// The writer.
    pub agent: AgentId,
    /// How the writer's clock relates to the resource's (`before` or `concurrent`).
    pub order: ClockOrder,
    /// The writer's clock.
    pub writer: VectorClock,
    /// The resource's clock.
    pub resource: VectorClock,
}

/// What each agent of one session has seen: one clock per agent.
#[derive(Debug, Default)]
pub struct ClockTable {
    agents: Mutex<HashMap<AgentId, VectorClock>>,
}

impl ClockTable {
    /// An empty table.
    pub fn new() -> ClockTable {
        ClockTable::default()
    }

    fn with<R>(&self, agent: &AgentId, f: impl FnOnce(&mut VectorClock) -> R) -> R {
        // A poisoned lock only means a panic elsewhere; the map is still consistent.
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        match agents.get_mut(agent) {
            Some(c) => f(c),
            None => f(agents.entry(agent.clone()).or_default()),
        }
    }

    /// The clock of `agent` (zero if it never read or wrote).
    pub fn clock_of(&self, agent: &AgentId) -> VectorClock {
        self.with(agent, |c| c.clone())
    }

    /// A read: merges the resource's clock into the reader's.
    pub fn observe(&self, agent: &AgentId, resource: &VectorClock) {
        if resource.is_zero() {
            return;
        }
        self.with(agent, |c| c.merge(resource));
    }

    /// Checks a strict write: the writer's clock must dominate `resource`.
    ///
    /// # Errors
    /// [`StaleWrite`] when the writer's clock is before or concurrent with it.
    pub fn check_write(&self, agent: &AgentId, resource: &VectorClock) -> Result<(), StaleWrite> {
        self.with(agent, |c| {
            if c.dominates(resource) {
                Ok(())
            } else {
                Err(StaleWrite {
                    agent: agent.clone(),
                    order: c.compare(resource),
                    writer: c.clone(),
                    resource: resource.clone(),
                })
            }
        })
    }

    /// Records a write: the writer merges the resource's clock (so an
    /// accepted eventual-mode write does not lose history), ticks its own
    /// entry, and the result becomes the resource's new clock.
    pub fn stamp_write(&self, agent: &AgentId, resource: &VectorClock) -> VectorClock {
        self.with(agent, |c| {
            c.merge(resource);
            c.tick(agent);
            c.clone()
        })
    }

    /// Forgets an agent that left the session.
    pub fn forget(&self, agent: &AgentId) {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn vc(entries: &[(&str, u64)]) -> VectorClock {
        VectorClock(entries.iter().map(|(a, n)| (id(a), *n)).collect())
    }

    #[test]
    fn a_clock_shows_at_most_sixteen_entries() {
        assert_eq!(vc(&[]).to_string(), "{}");
        assert_eq!(vc(&[("a", 1), ("b", 2)]).to_string(), "{a: 1, b: 2}");
        let names: Vec<String> = (0..1000).map(|i| format!("agent-{i:04}")).collect();
        let many = VectorClock::from_entries(names.iter().map(|n| (id(n), 1)));
        let text = many.to_string();
        assert!(text.ends_with(", … (984 more)}"), "{text}");
        assert_eq!(text.matches(": 1").count(), MAX_SHOWN_ENTRIES);
    }

    #[test]
    fn compare_follows_the_definition() {
        assert_eq!(vc(&[]).compare(&vc(&[])), ClockOrder::Equal);
        assert_eq!(
            vc(&[("a", 0)]).compare(&vc(&[])),
            ClockOrder::Equal,
            "missing = 0"
        );
        assert_eq!(
            vc(&[("a", 1)]).compare(&vc(&[("a", 2)])),
            ClockOrder::Before
        );
        assert_eq!(
            vc(&[("a", 2), ("b", 1)]).compare(&vc(&[("a", 2)])),
            ClockOrder::After
        );
        assert_eq!(
            vc(&[("a", 1)]).compare(&vc(&[("b", 1)])),
            ClockOrder::Concurrent
        );
        assert_eq!(
            vc(&[("a", 2), ("b", 0)]).compare(&vc(&[("a", 1), ("b", 1)])),
            ClockOrder::Concurrent
        );
    }

    #[test]
    fn a_writer_must_have_seen_the_latest_write() {
        let t = ClockTable::new();
        let (a, b) = (id("a"), id("b"));
        let mut file = VectorClock::new();
        t.check_write(&a, &file).unwrap();
        file = t.stamp_write(&a, &file);
        assert_eq!(file, vc(&[("a", 1)]));
        t.check_write(&a, &file).expect("a saw its own write");
        let stale = t.check_write(&b, &file).unwrap_err();
        assert_eq!(stale.order, ClockOrder::Before);
        t.observe(&b, &file);
        t.check_write(&b, &file).expect("b read it");
        file = t.stamp_write(&b, &file);
        assert_eq!(file, vc(&[("a", 1), ("b", 1)]));
        assert_eq!(
            t.check_write(&a, &file).unwrap_err().order,
            ClockOrder::Before
        );

        // Concurrent: b has seen something a has not, and vice versa.
        let other = t.stamp_write(&id("c"), &VectorClock::new());
        t.observe(&a, &other);
        assert_eq!(
            t.check_write(&a, &file).unwrap_err().order,
            ClockOrder::Concurrent
        );
        t.forget(&a);
        assert!(t.clock_of(&a).is_zero());
    }

    fn clock() -> impl Strategy<Value = VectorClock> {
        proptest::collection::btree_map(
            prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")].prop_map(id),
            0u64..4,
            0..4,
        )
        .prop_map(VectorClock)
    }

    proptest! {
        #[test]
        fn compare_is_antisymmetric_and_matches_dominates(x in clock(), y in clock()) {
            let xy = x.compare(&y);
            let yx = y.compare(&x);
            let flipped = match xy {
                ClockOrder::Before => ClockOrder::After,
                ClockOrder::After => ClockOrder::Before,
                o => o,
            };
            prop_assert_eq!(yx, flipped);
            prop_assert_eq!(x.dominates(&y), matches!(xy, ClockOrder::Equal | ClockOrder::After));
        }

        #[test]
        fn merge_is_the_least_upper_bound(x in clock(), y in clock(), z in clock()) {
            let mut m = x.clone();
            m.merge(&y);
            prop_assert!(m.dominates(&x) && m.dominates(&y));
            // Commutative.
            let mut n = y.clone();
            n.merge(&x);
            prop_assert_eq!(m.compare(&n), ClockOrder::Equal);
            // Least: any upper bound of both dominates the merge.
            if z.dominates(&x) && z.dominates(&y) {
                prop_assert!(z.dominates(&m));
            }
        }

        #[test]
        fn order_is_transitive(x in clock(), y in clock(), z in clock()) {
            if x.dominates(&y) && y.dominates(&z) {
                prop_assert!(x.dominates(&z));
            }
        }

        #[test]
        fn tick_moves_strictly_after(x in clock()) {
            let mut t = x.clone();
            t.tick(&id("a"));
            prop_assert_eq!(t.compare(&x), ClockOrder::After);
        }
    }
}
