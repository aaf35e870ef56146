//! Intent locks with a real wait-for graph (`docs/governance.md`, "Shared state" and "Locks").
//!
//! One [`LockManager`] per session. Modes are [`LockMode::Read`],
//! [`LockMode::Write`] and [`LockMode::Exclusive`] (ordered by strength);
//! only `Read` + `Read` share a resource. An agent never conflicts with
//! itself: re-acquiring is idempotent, asking for a stronger mode upgrades
//! when no *other* holder conflicts, asking for a weaker one keeps the
//! stronger.
//!
//! A conflicting request either fails at once ([`LockError::Conflict`], when
//! the caller allows no wait) or waits in the resource's FIFO queue. The
//! wait-for graph has an edge `waiter → agent` for every holder in a
//! waiter's way and every earlier waiter it queues behind; it is derived from
//! the lock table and the queues, so a release or a waiter giving up never
//! leaves a stale edge. If a wait would close a cycle through the requester,
//! it is not queued and gets [`LockError::Deadlock`] naming the cycle (the
//! others keep waiting, so one refusal breaks the cycle). Only a new wait
//! adds edges out of its agent, so the check runs when a wait starts (and in
//! the rare cases where an agent with waits elsewhere gains or loses a lock),
//! searching from that agent only and visiting each agent and queue entry a
//! bounded number of times.
//!
//! Waking is a hand-off: a release (or a waiter leaving the queue) grants the
//! lock to exactly the waiters that can now go and wakes only those, each
//! through its own channel, so a woken waiter already holds its lock and
//! nobody else is disturbed; N agents contending on one lock cost time linear
//! in the grants. A waiter gives up at its deadline with
//! [`LockError::Timeout`]; a grant made before the deadline wins. Deadlines
//! run on an injected [`WaitClock`] ([`TokioWaitClock`] unless
//! [`LockManager::with_clock`] names another), so tests drive a fake clock
//! and never sleep — and need no `tokio/test-util`, whose paused clock would
//! slow every tokio clock read in any build it is unified into.
//!
//! Locks die with their holder: [`LockManager::release_all`] is called when
//! an agent leaves, traps or is killed, and a dropped [`LockManager::acquire`]
//! future (its agent was killed mid-wait) leaves the queue — or, if the lock
//! was handed to it before it saw the grant, gives it back to the next in
//! line.
//!
//! Waiters are served first come, first served: a request is also blocked by
//! every earlier waiter for the same resource whose mode conflicts with its
//! own (and waits for it in the wait-for graph), so a steady stream of readers
//! cannot keep a writer waiting — a reader that arrives after a waiting writer
//! queues behind it. Compatible requests still share: readers queued behind
//! readers are granted together. An agent that already holds the resource
//! (an upgrade) is not queued behind waiters, who are waiting for it anyway.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ahv_core::{AgentId, Clock};
use thiserror::Error;

use crate::session::files::AreaPath;
use tokio::sync::oneshot;

/// A future a [`WaitClock`] returns: it completes at the deadline asked.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The clock lock waits run on: a [`Clock`] that can also wait for one of
/// its own times to come.
pub trait WaitClock: Clock {
    /// A future that completes once [`Clock::now`] has reached `deadline`
    /// (at once if it already has).
    fn sleep_until(&self, deadline: Duration) -> Sleep;
}

/// Tokio's timer, the clock of [`LockManager::new`]: its time is measured
/// from when it was made; its sleeps need a tokio runtime with time enabled
/// (they are made when first polled, so inside the runtime that polls them).
#[derive(Debug, Clone, Copy)]
pub struct TokioWaitClock {
    origin: tokio::time::Instant,
}

impl Default for TokioWaitClock {
    fn default() -> Self {
        TokioWaitClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioWaitClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

impl WaitClock for TokioWaitClock {
    fn sleep_until(&self, deadline: Duration) -> Sleep {
        let at = self.origin.checked_add(deadline);
        Box::pin(async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                // Beyond any representable instant: never.
                None => std::future::pending().await,
            }
        })
    }
}

/// Longest resource name, in bytes (kind prefix included).
pub const MAX_RESOURCE_BYTES: usize = 1024;

/// A lock mode. Ordered by strength: `Read < Write < Exclusive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockMode {
    /// Shared with other readers.
    Read,
    /// Excludes every other holder.
    Write,
    /// Excludes every other holder (the strongest mode).
    Exclusive,
}

impl LockMode {
    /// Whether two different agents may hold `self` and `other` at once.
    fn compatible(self, other: LockMode) -> bool {
        self == LockMode::Read && other == LockMode::Read
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Read => "read",
            LockMode::Write => "write",
            LockMode::Exclusive => "exclusive",
        })
    }
}

const PATH_PREFIX: &str = "path:";
const KEY_PREFIX: &str = "key:";

/// What a lock protects: a place in the session's files ([`AreaPath`]) or a
/// state key. Shown (in errors and events) by its name, `path:shared/doc.md`,
/// `path:private/<agent>/notes.md` or `key:findings`; the name also orders
/// the lock table, so the key locks under a prefix sit together.
#[derive(Debug, Clone)]
pub struct LockResource {
    name: String,
    place: Option<AreaPath>,
}

impl PartialEq for LockResource {
    fn eq(&self, other: &LockResource) -> bool {
        self.name == other.name
    }
}

impl Eq for LockResource {}

impl std::hash::Hash for LockResource {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl PartialOrd for LockResource {
    fn partial_cmp(&self, other: &LockResource) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LockResource {
    fn cmp(&self, other: &LockResource) -> std::cmp::Ordering {
        self.name.cmp(&other.name)
    }
}

impl LockResource {
    /// The lock on a place in the session's files: `path:<place>`.
    pub fn path(place: &AreaPath) -> LockResource {
        LockResource {
            name: format!("{PATH_PREFIX}{place}"),
            place: Some(place.clone()),
        }
    }

    /// The lock on a state key: `key:<k>`. A key lock also serves as the
    /// range lock on every key starting with `k` when the state store lists
    /// keys under serializable isolation, so `key:` (the empty key) names the
    /// whole key space.
    pub fn key(key: &str) -> LockResource {
        LockResource {
            name: format!("{KEY_PREFIX}{key}"),
            place: None,
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The place this lock names, if it is a path lock.
    pub fn place(&self) -> Option<&AreaPath> {
        self.place.as_ref()
    }

    /// The state key this lock names, if it is a key lock.
    pub(crate) fn key_name(&self) -> Option<&str> {
        self.name.strip_prefix(KEY_PREFIX)
    }

    fn validate(&self) -> Result<(), LockError> {
        let bad = |reason: String| Err(LockError::InvalidResource { reason });
        if self.name.len() > MAX_RESOURCE_BYTES {
            return bad(format!(
                "resource name is {} bytes long; the maximum is {MAX_RESOURCE_BYTES}",
                self.name.len()
            ));
        }
        if let Some(ch) = self.name.chars().find(|c| c.is_control()) {
            return bad(format!(
                "resource name {:?} contains the control character {ch:?}",
                truncate(&self.name)
            ));
        }
        if self.name.is_empty() || self.name == PATH_PREFIX {
            return bad(format!("resource name {:?} names nothing", self.name));
        }
        Ok(())
    }
}

impl fmt::Display for LockResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn list<T: fmt::Display>(items: impl IntoIterator<Item = T>, sep: &str) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

fn holders_text(holders: &[(AgentId, LockMode)]) -> String {
    list(holders.iter().map(|(a, m)| format!("{a} ({m})")), ", ")
}

fn conflict_text(holders: &[(AgentId, LockMode)], queued: &[(AgentId, LockMode)]) -> String {
    match (holders.is_empty(), queued.is_empty()) {
        (_, true) => format!("held by {}", holders_text(holders)),
        (true, false) => format!("awaited first by {}", holders_text(queued)),
        (false, false) => format!(
            "held by {} and awaited first by {}",
            holders_text(holders),
            holders_text(queued)
        ),
    }
}

/// Why a lock operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LockError {
    /// Another agent holds a conflicting lock, or waits for one ahead of the
    /// caller, and the caller chose not to wait.
    #[error("{resource} is {}", conflict_text(holders, queued))]
    Conflict {
        /// The resource.
        resource: LockResource,
        /// The holders in the way, with their modes.
        holders: Vec<(AgentId, LockMode)>,
        /// Earlier waiters in the way (first come, first served), with the
        /// modes they wait for.
        queued: Vec<(AgentId, LockMode)>,
    },
    /// Waiting would close a cycle in the wait-for graph.
    #[error("waiting for {resource} would deadlock: {} → {}", list(cycle, " → "), cycle.first().map(ToString::to_string).unwrap_or_default())]
    Deadlock {
        /// The resource requested.
        resource: LockResource,
        /// The cycle, starting with the requester: each waits for the next,
        /// the last for the first.
        cycle: Vec<AgentId>,
    },
    /// The lock was not granted within the time the caller allowed.
    #[error("{resource} was not granted within {waited:?}")]
    Timeout {
        /// The resource.
        resource: LockResource,
        /// How long the caller waited (the time it allowed).
        waited: Duration,
    },
    /// The wait was withdrawn while the call still ran: the agent's locks
    /// and waits were released (it left, trapped or was killed). Final: the
    /// call does not queue again.
    #[error(
        "{agent}'s wait for {resource} was withdrawn: its locks were released (it left, trapped or was killed)"
    )]
    Withdrawn {
        /// The resource.
        resource: LockResource,
        /// The agent.
        agent: AgentId,
    },
    /// The agent does not hold the lock it tried to release.
    #[error("{agent} does not hold {resource}")]
    NotHeld {
        /// The resource.
        resource: LockResource,
        /// The agent.
        agent: AgentId,
    },
    /// The agent already holds as many locks as it may.
    #[error("{agent} already holds {max} locks, the most allowed")]
    TooMany {
        /// The agent.
        agent: AgentId,
        /// The per-agent maximum.
        max: usize,
    },
    /// The resource name is not acceptable.
    #[error("invalid lock resource: {reason}")]
    InvalidResource {
        /// What is wrong.
        reason: String,
    },
}

/// What a waiter is sent when it leaves the queue other than by its own
/// choice: the lock (with the mode its agent held before, so a future
/// dropped before it saw the grant can be undone) or a refusal.
type Verdict = Result<Option<LockMode>, LockError>;

/// One waiting `acquire`, queued on its resource. Whom it waits for (holders
/// in its way and earlier waiters it queues behind) is derived from the table
/// when it is needed, so it is never stale when another waiter leaves or a
/// holder releases.
#[derive(Debug)]
struct Waiter {
    agent: AgentId,
    mode: LockMode,
    /// Its own wake-up: a grant or a refusal is sent here, under the table
    /// lock, and only to this waiter.
    tx: oneshot::Sender<Verdict>,
}

/// Whom the waiters still queued ahead are: nobody, one agent, or several.
/// An agent never queues behind itself, so one agent ahead blocks everybody
/// else but not that agent.
#[derive(Debug)]
enum Ahead {
    Nobody,
    One(AgentId),
    Several,
}

impl Ahead {
    fn add(&mut self, agent: &AgentId) {
        match self {
            Ahead::Nobody => *self = Ahead::One(agent.clone()),
            Ahead::One(a) if a == agent => {}
            _ => *self = Ahead::Several,
        }
    }

    fn lets_through(&self, agent: &AgentId) -> bool {
        match self {
            Ahead::Nobody => true,
            Ahead::One(a) => a == agent,
            Ahead::Several => false,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    max_per_agent: usize,
    /// Resource → its holders. Ordered so range scans over key locks work.
    held: BTreeMap<LockResource, BTreeMap<AgentId, LockMode>>,
    /// Agent → what it holds (the inverse of `held`).
    by_agent: HashMap<AgentId, BTreeMap<LockResource, LockMode>>,
    /// Resource → its waiters by wait id. Ids grow, so this is arrival order
    /// (first come, first served), and a waiter leaves from anywhere in
    /// O(log n).
    queues: HashMap<LockResource, BTreeMap<u64, Waiter>>,
    /// Agent → its waits (id → resource), the inverse of `queues`.
    waiting: HashMap<AgentId, BTreeMap<u64, LockResource>>,
}

impl Table {
    fn new(max_per_agent: usize) -> Table {
        Table {
            max_per_agent,
            ..Table::default()
        }
    }

    fn mode_of(&self, agent: &AgentId, resource: &LockResource) -> Option<LockMode> {
        self.by_agent.get(agent)?.get(resource).copied()
    }

    fn count(&self, agent: &AgentId) -> usize {
        self.by_agent.get(agent).map_or(0, BTreeMap::len)
    }

    /// Other agents whose locks on `resource` conflict with `mode`.
    fn blockers(
        &self,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
    ) -> Vec<(AgentId, LockMode)> {
        self.held.get(resource).map_or_else(Vec::new, |holders| {
            holders
                .iter()
                .filter(|(a, m)| *a != agent && !mode.compatible(**m))
                .map(|(a, m)| (a.clone(), *m))
                .collect()
        })
    }

    /// Earlier waiters (wait ids below `before`; all of them for a request
    /// that does not wait) for `resource` from other agents whose modes
    /// conflict with `mode`, first come first. An agent that holds the
    /// resource already is queued behind nobody.
    fn queued_ahead<'t>(
        &'t self,
        agent: &'t AgentId,
        resource: &LockResource,
        mode: LockMode,
        before: Option<u64>,
    ) -> impl Iterator<Item = (&'t AgentId, LockMode)> + 't {
        let queue = match self.mode_of(agent, resource) {
            Some(_) => None,
            None => self.queues.get(resource),
        };
        queue
            .into_iter()
            .flat_map(move |q| q.range(..before.unwrap_or(u64::MAX)))
            .filter(move |(_, w)| &w.agent != agent && !mode.compatible(w.mode))
            .map(|(_, w)| (&w.agent, w.mode))
    }

    /// Whether `agent` may take `resource` in `mode` now (as wait `before`).
    fn grantable(
        &self,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
        before: Option<u64>,
    ) -> bool {
        let holders_ok = self
            .held
            .get(resource)
            .is_none_or(|h| h.iter().all(|(a, m)| a == agent || mode.compatible(*m)));
        holders_ok
            && self
                .queued_ahead(agent, resource, mode, before)
                .next()
                .is_none()
    }

    fn grant(&mut self, agent: &AgentId, resource: &LockResource, mode: LockMode) {
        let mine = self.by_agent.entry(agent.clone()).or_default();
        let m = mine.entry(resource.clone()).or_insert(mode);
        *m = (*m).max(mode);
        let m = *m;
        self.held
            .entry(resource.clone())
            .or_default()
            .insert(agent.clone(), m);
    }

    /// Sets `agent`'s mode on `resource` back to `mode` (`None`: not held).
    fn set_mode(&mut self, agent: &AgentId, resource: &LockResource, mode: Option<LockMode>) {
        match mode {
            Some(mode) => {
                if let Some(m) = self
                    .by_agent
                    .get_mut(agent)
                    .and_then(|mine| mine.get_mut(resource))
                {
                    *m = mode;
                }
                if let Some(m) = self
                    .held
                    .get_mut(resource)
                    .and_then(|holders| holders.get_mut(agent))
                {
                    *m = mode;
                }
            }
            None => {
                self.remove(agent, resource);
            }
        }
    }

    fn remove(&mut self, agent: &AgentId, resource: &LockResource) -> Option<LockMode> {
        let mine = self.by_agent.get_mut(agent)?;
        let mode = mine.remove(resource)?;
        if mine.is_empty() {
            self.by_agent.remove(agent);
        }
        if let Some(holders) = self.held.get_mut(resource) {
            holders.remove(agent);
            if holders.is_empty() {
                self.held.remove(resource);
            }
        }
        Some(mode)
    }

    /// Queues wait `id`; its verdict arrives on the receiver.
    fn enqueue(
        &mut self,
        id: u64,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
    ) -> oneshot::Receiver<Verdict> {
        let (tx, rx) = oneshot::channel();
        self.queues.entry(resource.clone()).or_default().insert(
            id,
            Waiter {
                agent: agent.clone(),
                mode,
                tx,
            },
        );
        self.waiting
            .entry(agent.clone())
            .or_default()
            .insert(id, resource.clone());
        rx
    }

    /// Takes wait `id` out of the queue, if it is still there.
    fn unqueue(&mut self, id: u64, resource: &LockResource) -> Option<Waiter> {
        let queue = self.queues.get_mut(resource)?;
        let waiter = queue.remove(&id)?;
        if queue.is_empty() {
            self.queues.remove(resource);
        }
        if let Some(mine) = self.waiting.get_mut(&waiter.agent) {
            mine.remove(&id);
            if mine.is_empty() {
                self.waiting.remove(&waiter.agent);
            }
        }
        Some(waiter)
    }

    /// The ids of `agent`'s waits on `resource`.
    fn waits_of(&self, agent: &AgentId, resource: &LockResource) -> Vec<u64> {
        self.waiting.get(agent).map_or_else(Vec::new, |mine| {
            mine.iter()
                .filter(|(_, r)| *r == resource)
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// Grants wait `id` its lock and sends it the news (the hand-off: the
    /// woken waiter already holds the lock). Whether the queue changed: a
    /// grant, or a waiter refused or gone (then those behind it may go).
    fn hand_off(&mut self, id: u64, resource: &LockResource) -> bool {
        let Some(w) = self.unqueue(id, resource) else {
            return false;
        };
        let prev = self.mode_of(&w.agent, resource);
        if prev.is_none() && self.count(&w.agent) >= self.max_per_agent {
            // It took other locks while it waited.
            let refusal = LockError::TooMany {
                agent: w.agent.clone(),
                max: self.max_per_agent,
            };
            // A refused waiter that is gone needs nothing more.
            let _ = w.tx.send(Err(refusal));
            return true;
        }
        self.grant(&w.agent, resource, w.mode);
        if w.tx.send(Ok(prev)).is_err() {
            // Its future is gone (it cannot be, while queued, but a lock must
            // never go to nobody): undo, and the caller grants the next one.
            self.set_mode(&w.agent, resource, prev);
            return true;
        }
        self.after_grant(&w.agent, resource, prev);
        true
    }

    /// Follows a grant to `agent` on `resource` (it held `prev` before):
    /// its other waits there that the lock now satisfies are granted too,
    /// and a stronger lock may have put it in new waiters' way.
    fn after_grant(&mut self, agent: &AgentId, resource: &LockResource, prev: Option<LockMode>) {
        let held = self.mode_of(agent, resource);
        for other in self.waits_of(agent, resource) {
            let satisfied = self
                .queues
                .get(resource)
                .and_then(|q| q.get(&other))
                .is_some_and(|o| Some(o.mode) <= held);
            if satisfied && let Some(o) = self.unqueue(other, resource) {
                // A gone waiter had nothing granted: the lock was held already.
                let _ = o.tx.send(Ok(held));
            }
        }
        if prev.is_some_and(|p| Some(p) < held) {
            self.after_upgrade(agent, resource);
        }
    }

    /// Grants every waiter on `resource` that can go now, first come first
    /// served, and wakes only those. Called whenever the resource's holders
    /// lose a lock or a waiter leaves its queue.
    ///
    /// The walk stops as soon as no later waiter can go, so its cost is the
    /// number granted plus a few: FIFO order means everything behind a
    /// blocked writer of another agent is blocked too.
    fn settle(&mut self, resource: &LockResource) {
        loop {
            let mut granted = false;
            // An upgrade (a holder waiting for a stronger mode) ignores the
            // queue and can go once its agent holds the resource alone.
            if let Some(sole) = self
                .held
                .get(resource)
                .filter(|h| h.len() == 1)
                .and_then(|h| h.keys().next().cloned())
            {
                for id in self.waits_of(&sole, resource) {
                    granted |= self.hand_off(id, resource);
                }
            }
            for id in self.grantable_now(resource) {
                granted |= self.hand_off(id, resource);
            }
            if !granted {
                return;
            }
        }
    }

    /// The waiters (not upgrades) on `resource` that can go now, in order.
    fn grantable_now(&self, resource: &LockResource) -> Vec<u64> {
        let Some(queue) = self.queues.get(resource) else {
            return Vec::new();
        };
        let holders = self.held.get(resource);
        if holders.is_some_and(|h| h.values().any(|m| *m >= LockMode::Write)) {
            // Only the writer's own upgrades could go, and they are not here.
            return Vec::new();
        }
        let mut readers_hold = holders.is_some_and(|h| !h.is_empty());
        let (mut writers_ahead, mut any_ahead) = (Ahead::Nobody, Ahead::Nobody);
        let mut go = Vec::new();
        for (id, w) in queue {
            let upgrade = holders.is_some_and(|h| h.contains_key(&w.agent));
            let can_go = !upgrade
                && match w.mode {
                    LockMode::Read => writers_ahead.lets_through(&w.agent),
                    LockMode::Write | LockMode::Exclusive => {
                        !readers_hold && any_ahead.lets_through(&w.agent)
                    }
                };
            if can_go {
                go.push(*id);
                if w.mode >= LockMode::Write {
                    // Everyone behind conflicts with the new writer.
                    break;
                }
                readers_hold = true;
                continue;
            }
            any_ahead.add(&w.agent);
            if w.mode >= LockMode::Write {
                writers_ahead.add(&w.agent);
            }
            // Behind a writer of one agent only that agent's own later waits
            // could go; behind writers of several, nobody.
            let stop = match &writers_ahead {
                Ahead::Nobody => false,
                Ahead::One(a) => self.waits_of(a, resource).len() <= 1,
                Ahead::Several => true,
            };
            if stop {
                break;
            }
        }
        go
    }

    /// `agent`'s lock on `resource` got stronger while it waits elsewhere:
    /// readers queued on `resource` now wait for it too, and such a new
    /// edge may close a cycle; each reader it closes one for is refused.
    fn after_upgrade(&mut self, agent: &AgentId, resource: &LockResource) {
        if !self.waiting.contains_key(agent) {
            return;
        }
        let readers: Vec<u64> = self.queues.get(resource).map_or_else(Vec::new, |q| {
            q.iter()
                .filter(|(_, w)| &w.agent != agent && w.mode == LockMode::Read)
                .map(|(id, _)| *id)
                .collect()
        });
        for id in readers {
            self.refuse_if_cyclic(id, resource);
        }
    }

    /// `agent` lost (or weakened) its lock on `resource`; its own waits
    /// there, upgrades until now, queue behind earlier waiters from now on,
    /// which may close a cycle.
    fn after_loss(&mut self, agent: &AgentId, resource: &LockResource) {
        for id in self.waits_of(agent, resource) {
            self.refuse_if_cyclic(id, resource);
        }
    }

    /// Refuses wait `id` with [`LockError::Deadlock`] if its agent is on a
    /// cycle of the wait-for graph.
    fn refuse_if_cyclic(&mut self, id: u64, resource: &LockResource) {
        let Some(agent) = self
            .queues
            .get(resource)
            .and_then(|q| q.get(&id))
            .map(|w| w.agent.clone())
        else {
            return;
        };
        if let Some(cycle) = self.cycle_through(&agent)
            && let Some(w) = self.unqueue(id, resource)
        {
            let _ = w.tx.send(Err(LockError::Deadlock {
                resource: resource.clone(),
                cycle,
            }));
            self.settle(resource);
        }
    }

    /// Whether anybody can be waiting for `agent` (an edge into it), so that
    /// its new wait `id` on `resource` could close a cycle: someone queues
    /// on a resource it holds, or behind one of its waits.
    fn may_be_waited_for(&self, agent: &AgentId, id: u64, resource: &LockResource) -> bool {
        let others_queue_on = |r: &LockResource, from: u64| {
            self.queues
                .get(r)
                .is_some_and(|q| q.range(from..).any(|(_, w)| &w.agent != agent))
        };
        let holds = self
            .by_agent
            .get(agent)
            .is_some_and(|mine| mine.keys().any(|r| others_queue_on(r, 0)));
        let other_waits = self
            .waiting
            .get(agent)
            .is_some_and(|mine| mine.keys().any(|other| *other != id));
        holds || other_waits || others_queue_on(resource, id.saturating_add(1))
    }

    /// The wait-for graph as it stands: each waiter → the holders in its
    /// way and the earlier waiters it queues behind. Quadratic in the
    /// waiters of a resource; for inspection, not on the grant path.
    fn graph(&self) -> BTreeMap<AgentId, BTreeSet<AgentId>> {
        let mut graph: BTreeMap<AgentId, BTreeSet<AgentId>> = BTreeMap::new();
        for (resource, queue) in &self.queues {
            for (id, w) in queue {
                let on: Vec<AgentId> = self
                    .blockers(&w.agent, resource, w.mode)
                    .into_iter()
                    .map(|(a, _)| a)
                    .chain(
                        self.queued_ahead(&w.agent, resource, w.mode, Some(*id))
                            .map(|(a, _)| a.clone()),
                    )
                    .collect();
                graph.entry(w.agent.clone()).or_default().extend(on);
            }
        }
        graph
    }

    /// Whom `agent` waits for, skipping what an earlier call of this search
    /// already listed (`seen`): in a FIFO queue every waiter waits for all
    /// earlier conflicting ones, so listing each queue prefix once keeps a
    /// search linear in the size of the graph instead of quadratic.
    ///
    /// What an earlier listing covered was listed without its own explorer,
    /// so an edge back to `start` — what the search looks for — is checked
    /// on its own.
    fn successors(&self, agent: &AgentId, start: &AgentId, seen: &mut Seen) -> Vec<AgentId> {
        let mut next = Vec::new();
        let Some(mine) = self.waiting.get(agent) else {
            return next;
        };
        for (id, resource) in mine {
            let Some(w) = self.queues.get(resource).and_then(|q| q.get(id)) else {
                continue;
            };
            if let Some(holders) = self.held.get(resource) {
                match w.mode {
                    // Only a writer can be in a reader's way, and a writer
                    // holds alone.
                    LockMode::Read => {
                        if holders.len() == 1 {
                            next.extend(
                                holders
                                    .iter()
                                    .filter(|(a, m)| *a != agent && **m >= LockMode::Write)
                                    .map(|(a, _)| a.clone()),
                            );
                        }
                    }
                    LockMode::Write | LockMode::Exclusive => {
                        if seen.all_holders.insert(resource.clone()) {
                            next.extend(holders.keys().filter(|a| *a != agent).cloned());
                        }
                    }
                }
            }
            let upgrade = self.mode_of(agent, resource).is_some();
            if agent != start {
                let start_holds = self
                    .mode_of(start, resource)
                    .is_some_and(|m| !w.mode.compatible(m));
                let start_ahead = !upgrade
                    && self.waiting.get(start).is_some_and(|theirs| {
                        theirs.range(..*id).any(|(other, r)| {
                            r == resource
                                && self
                                    .queues
                                    .get(resource)
                                    .and_then(|q| q.get(other))
                                    .is_some_and(|o| !w.mode.compatible(o.mode))
                        })
                    });
                if start_holds || start_ahead {
                    next.push(start.clone());
                }
            }
            if upgrade {
                continue;
            }
            let Some(queue) = self.queues.get(resource) else {
                continue;
            };
            let (all, writers) = seen.prefixes.entry(resource.clone()).or_insert((0, 0));
            let from = match w.mode {
                LockMode::Read => (*all).max(*writers),
                LockMode::Write | LockMode::Exclusive => *all,
            };
            if from < *id {
                next.extend(
                    queue
                        .range(from..*id)
                        .filter(|(_, o)| &o.agent != agent && !w.mode.compatible(o.mode))
                        .map(|(_, o)| o.agent.clone()),
                );
            }
            match w.mode {
                LockMode::Read => *writers = (*writers).max(*id),
                LockMode::Write | LockMode::Exclusive => *all = (*all).max(*id),
            }
        }
        next
    }

    /// A cycle through `start` in the wait-for graph, starting with `start`.
    /// Searches from `start` only, visiting each agent and each queue entry
    /// at most a couple of times.
    fn cycle_through(&self, start: &AgentId) -> Option<Vec<AgentId>> {
        let mut seen = Seen::default();
        // Iterative DFS: `path[i]` is being explored with `frames[i]` as its
        // remaining successors, so a deep graph cannot overflow the stack.
        let mut path: Vec<AgentId> = vec![start.clone()];
        let mut frames = vec![self.successors(start, start, &mut seen).into_iter()];
        let mut visited: HashSet<AgentId> = HashSet::from([start.clone()]);
        while let Some(frame) = frames.last_mut() {
            match frame.next() {
                Some(next) if &next == start => return Some(path),
                Some(next) => {
                    if visited.insert(next.clone()) {
                        frames.push(self.successors(&next, start, &mut seen).into_iter());
                        path.push(next);
                    }
                }
                None => {
                    frames.pop();
                    path.pop();
                }
            }
        }
        None
    }
}

/// What one cycle search has listed already (see [`Table::successors`]).
#[derive(Default)]
struct Seen {
    /// Resources whose holders were all listed.
    all_holders: HashSet<LockResource>,
    /// Resource → (all waiters below this id listed, writers below this id
    /// listed).
    prefixes: HashMap<LockResource, (u64, u64)>,
}

/// The session's intent locks and wait-for graph.
#[derive(Debug)]
pub struct LockManager {
    table: Mutex<Table>,
    next_wait: AtomicU64,
    clock: Arc<dyn WaitClock>,
}

/// How a request that may wait starts.
enum Start {
    Granted,
    Waiting(oneshot::Receiver<Verdict>),
}

/// Cleans up after a waiting `acquire` however it ends, including when the
/// future is dropped mid-wait because its agent was killed: a wait still
/// queued leaves the queue (and those behind it may go); a lock handed to
/// it that it never saw is given back to the next in line.
struct WaitGuard<'a> {
    manager: &'a LockManager,
    id: u64,
    agent: &'a AgentId,
    resource: &'a LockResource,
    mode: LockMode,
    /// Set while the wait is queued or its verdict unread.
    rx: Option<oneshot::Receiver<Verdict>>,
}

impl WaitGuard<'_> {
    /// Settles a wait that reached its deadline: a grant or a refusal sent
    /// before the deadline wins; otherwise the wait leaves the queue.
    fn give_up(&mut self, wait: Duration) -> Result<(), LockError> {
        let timeout = || LockError::Timeout {
            resource: self.resource.clone(),
            waited: wait,
        };
        let Some(mut rx) = self.rx.take() else {
            return Err(timeout());
        };
        let mut t = self.manager.table();
        if t.unqueue(self.id, self.resource).is_some() {
            t.settle(self.resource);
            return Err(timeout());
        }
        // Sent under the table lock, which we hold: it is there or never.
        match rx.try_recv() {
            Ok(verdict) => verdict.map(|_| ()),
            Err(_) => Err(timeout()),
        }
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut t = self.manager.table();
        if t.unqueue(self.id, self.resource).is_some() {
            t.settle(self.resource);
            return;
        }
        if let Ok(Ok(prev)) = rx.try_recv() {
            let granted = prev.map_or(self.mode, |p| p.max(self.mode));
            // Undone only if nothing changed it since (another call of the
            // same agent may have).
            if t.mode_of(self.agent, self.resource) == Some(granted) && prev != Some(granted) {
                t.set_mode(self.agent, self.resource, prev);
                t.settle(self.resource);
                t.after_loss(self.agent, self.resource);
            }
        }
    }
}

impl LockManager {
    /// An empty lock table; each agent may hold at most `max_locks_per_agent`
    /// locks at once. Waits time out on tokio's timer ([`TokioWaitClock`]).
    pub fn new(max_locks_per_agent: usize) -> LockManager {
        LockManager::with_clock(max_locks_per_agent, Arc::new(TokioWaitClock::default()))
    }

    /// [`LockManager::new`] with waits timed by `clock`.
    pub fn with_clock(max_locks_per_agent: usize, clock: Arc<dyn WaitClock>) -> LockManager {
        LockManager {
            table: Mutex::new(Table::new(max_locks_per_agent)),
            next_wait: AtomicU64::new(0),
            clock,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means a panic elsewhere; every update below
        // leaves the table consistent before it can panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks every request makes first: already held (nothing to do)
    /// or at the per-agent limit (refused).
    fn precheck(
        t: &Table,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
    ) -> Result<bool, LockError> {
        match t.mode_of(agent, resource) {
            Some(held) if held >= mode => Ok(true),
            None if t.count(agent) >= t.max_per_agent => Err(LockError::TooMany {
                agent: agent.clone(),
                max: t.max_per_agent,
            }),
            _ => Ok(false),
        }
    }

    /// Grants at once if nothing is in the way (as wait `id`), else queues
    /// wait `id` — unless queueing would close a cycle.
    fn start(
        &self,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
        id: u64,
    ) -> Result<Start, LockError> {
        let mut t = self.table();
        if Self::precheck(&t, agent, resource, mode)? {
            return Ok(Start::Granted);
        }
        if t.grantable(agent, resource, mode, Some(id)) {
            let prev = t.mode_of(agent, resource);
            t.grant(agent, resource, mode);
            t.after_grant(agent, resource, prev);
            return Ok(Start::Granted);
        }
        let rx = t.enqueue(id, agent, resource, mode);
        // Only the new wait adds edges, all out of `agent`: a new cycle must
        // pass through it, which needs an edge into it.
        if t.may_be_waited_for(agent, id, resource)
            && let Some(cycle) = t.cycle_through(agent)
        {
            t.unqueue(id, resource);
            t.settle(resource);
            return Err(LockError::Deadlock {
                resource: resource.clone(),
                cycle,
            });
        }
        Ok(Start::Waiting(rx))
    }

    /// Takes (or strengthens) a lock without waiting.
    ///
    /// # Errors
    /// [`LockError::Conflict`] when another agent holds a conflicting lock;
    /// [`LockError::TooMany`] when the agent is at its limit;
    /// [`LockError::InvalidResource`].
    pub fn try_acquire(
        &self,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
    ) -> Result<(), LockError> {
        resource.validate()?;
        let mut t = self.table();
        if Self::precheck(&t, agent, resource, mode)? {
            return Ok(());
        }
        let holders = t.blockers(agent, resource, mode);
        let queued: Vec<(AgentId, LockMode)> = t
            .queued_ahead(agent, resource, mode, None)
            .map(|(a, m)| (a.clone(), m))
            .collect();
        if !holders.is_empty() || !queued.is_empty() {
            return Err(LockError::Conflict {
                resource: resource.clone(),
                holders,
                queued,
            });
        }
        let prev = t.mode_of(agent, resource);
        t.grant(agent, resource, mode);
        t.after_grant(agent, resource, prev);
        Ok(())
    }

    /// Takes (or strengthens) a lock, waiting up to `wait` for conflicting
    /// holders to release it. `wait == 0` is [`LockManager::try_acquire`].
    ///
    /// A waiter sleeps until the lock is handed to it: a release grants the
    /// lock to the waiters that can now go and wakes only them.
    /// Cancel-safe: dropping the future removes its wait, or gives back a
    /// lock handed to it that it never saw.
    ///
    /// # Errors
    /// [`LockError::Conflict`] (only when `wait` is zero);
    /// [`LockError::Deadlock`] when waiting would close a cycle in the
    /// wait-for graph (checked when the wait starts);
    /// [`LockError::Timeout`] when the lock was not granted within `wait`;
    /// [`LockError::TooMany`]; [`LockError::InvalidResource`].
    pub async fn acquire(
        &self,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
        wait: Duration,
    ) -> Result<(), LockError> {
        if wait.is_zero() {
            return self.try_acquire(agent, resource, mode);
        }
        resource.validate()?;
        let mut guard = WaitGuard {
            manager: self,
            id: self.next_wait.fetch_add(1, Ordering::Relaxed),
            agent,
            resource,
            mode,
            rx: None,
        };
        let rx = match self.start(agent, resource, mode, guard.id)? {
            Start::Granted => return Ok(()),
            Start::Waiting(rx) => guard.rx.insert(rx),
        };
        // Timed from when the wait is queued. No representable deadline (an
        // absurd `wait`): wait without one.
        let verdict = match self.clock.now().checked_add(wait) {
            Some(deadline) => {
                let sleep = self.clock.sleep_until(deadline);
                // The verdict first: a grant made before the deadline wins.
                tokio::select! {
                    biased;
                    verdict = rx => Some(verdict),
                    () = sleep => None,
                }
            }
            None => Some(rx.await),
        };
        match verdict {
            Some(Ok(verdict)) => {
                guard.rx = None;
                verdict.map(|_| ())
            }
            // `release_all` withdrew the wait (its agent left, trapped or was
            // killed) while this call still runs: final. Queuing again could
            // hand a lock to a killed agent that nobody would ever release.
            Some(Err(_)) => {
                guard.rx = None;
                Err(LockError::Withdrawn {
                    resource: resource.clone(),
                    agent: agent.clone(),
                })
            }
            None => guard.give_up(wait),
        }
    }

    /// Releases a lock and hands it to the waiters that can now go.
    ///
    /// # Errors
    /// [`LockError::NotHeld`] when the agent does not hold it.
    pub fn release(&self, agent: &AgentId, resource: &LockResource) -> Result<LockMode, LockError> {
        let mut t = self.table();
        match t.remove(agent, resource) {
            Some(mode) => {
                t.settle(resource);
                t.after_loss(agent, resource);
                Ok(mode)
            }
            None => Err(LockError::NotHeld {
                resource: resource.clone(),
                agent: agent.clone(),
            }),
        }
    }

    /// Releases everything `agent` holds (it left, trapped or was killed),
    /// withdraws its waits and hands the released locks to the waiters that
    /// can now go. Returns what it held.
    pub fn release_all(&self, agent: &AgentId) -> Vec<(LockResource, LockMode)> {
        let mut t = self.table();
        let mine: Vec<LockResource> = t
            .by_agent
            .get(agent)
            .map_or_else(Vec::new, |m| m.keys().cloned().collect());
        let released: Vec<(LockResource, LockMode)> = mine
            .into_iter()
            .filter_map(|r| t.remove(agent, &r).map(|m| (r, m)))
            .collect();
        let waits: Vec<(u64, LockResource)> = t.waiting.get(agent).map_or_else(Vec::new, |m| {
            m.iter().map(|(i, r)| (*i, r.clone())).collect()
        });
        for (id, r) in &waits {
            // Dropping its sender tells a still-running acquire.
            t.unqueue(*id, r);
        }
        for r in released
            .iter()
            .map(|(r, _)| r)
            .chain(waits.iter().map(|(_, r)| r))
        {
            t.settle(r);
        }
        released
    }

    /// Whether `agent` holds `resource` in `at_least` or a stronger mode
    /// (`Exclusive > Write > Read`).
    pub fn holds(&self, agent: &AgentId, resource: &LockResource, at_least: LockMode) -> bool {
        self.table()
            .mode_of(agent, resource)
            .is_some_and(|m| m >= at_least)
    }

    /// What `agent` holds, ordered by resource.
    pub fn held_by(&self, agent: &AgentId) -> Vec<(LockResource, LockMode)> {
        self.table().by_agent.get(agent).map_or_else(Vec::new, |m| {
            m.iter().map(|(r, m)| (r.clone(), *m)).collect()
        })
    }

    /// Who holds `resource`, ordered by agent.
    pub fn holders(&self, resource: &LockResource) -> Vec<(AgentId, LockMode)> {
        self.table().held.get(resource).map_or_else(Vec::new, |h| {
            h.iter().map(|(a, m)| (a.clone(), *m)).collect()
        })
    }

    /// The current wait-for graph: `(waiter, agent it waits for)` — a holder
    /// in its way or an earlier waiter it queues behind — sorted, without
    /// duplicates.
    pub fn wait_for_edges(&self) -> Vec<(AgentId, AgentId)> {
        self.table()
            .graph()
            .into_iter()
            .flat_map(|(w, on)| on.into_iter().map(move |h| (w.clone(), h)))
            .collect()
    }

    /// The first of `resources` on which an agent other than `agent` holds
    /// any lock.
    pub(crate) fn held_by_other<'r>(
        &self,
        agent: &AgentId,
        resources: impl IntoIterator<Item = &'r LockResource>,
    ) -> Option<&'r LockResource> {
        let t = self.table();
        resources
            .into_iter()
            .find(|r| t.held.get(*r).is_some_and(|h| h.keys().any(|a| a != agent)))
    }

    /// The first key lock under `prefix` (its name starts with `key:<prefix>`)
    /// that an agent other than `agent` holds in `Write` mode or stronger.
    pub(crate) fn written_by_other_under(&self, agent: &AgentId, prefix: &str) -> Option<String> {
        let t = self.table();
        let from = LockResource::key(prefix);
        t.held
            .range(from.clone()..)
            .take_while(|(r, _)| r.name.starts_with(&from.name))
            .find(|(_, h)| h.iter().any(|(a, m)| a != agent && *m >= LockMode::Write))
            .and_then(|(r, _)| r.key_name().map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::task::{Poll, Waker};

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn place(agent: &AgentId, path: &str) -> AreaPath {
        AreaPath::resolve(agent, &crate::path::VfsPath::parse(path).unwrap())
    }

    fn res(s: &str) -> LockResource {
        LockResource::key(s)
    }

    const MODES: [LockMode; 3] = [LockMode::Read, LockMode::Write, LockMode::Exclusive];

    /// Yields a task gets from [`FakeWaitClock::run`] to finish before the
    /// clock moves: far more than any chain of hand-offs here needs.
    const SETTLE_YIELDS: usize = 1000;

    /// A [`WaitClock`] that moves only when a test moves it (or when
    /// [`FakeWaitClock::run`] finds nothing left to do but wait), like
    /// tokio's paused clock but without `tokio/test-util`. Clones share the
    /// time and the sleepers.
    #[derive(Debug, Clone, Default)]
    struct FakeWaitClock(Arc<Mutex<Sleepers>>);

    #[derive(Debug, Default)]
    struct Sleepers {
        now: Duration,
        next_id: u64,
        /// (deadline, sleep id) → the waker of the task sleeping.
        waiting: BTreeMap<(Duration, u64), Waker>,
    }

    impl Clock for FakeWaitClock {
        fn now(&self) -> Duration {
            self.0.lock().unwrap().now
        }
    }

    impl WaitClock for FakeWaitClock {
        fn sleep_until(&self, deadline: Duration) -> Sleep {
            Box::pin(FakeSleep {
                clock: self.clone(),
                deadline,
                key: None,
            })
        }
    }

    /// A sleep on a [`FakeWaitClock`]; dropped early, it leaves no sleeper.
    struct FakeSleep {
        clock: FakeWaitClock,
        deadline: Duration,
        key: Option<(Duration, u64)>,
    }

    impl Future for FakeSleep {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
            let this = &mut *self;
            let mut s = this.clock.0.lock().unwrap();
            if s.now >= this.deadline {
                return Poll::Ready(());
            }
            let key = match this.key {
                Some(key) => key,
                None => {
                    s.next_id += 1;
                    (this.deadline, s.next_id)
                }
            };
            this.key = Some(key);
            s.waiting.insert(key, cx.waker().clone());
            Poll::Pending
        }
    }

    impl Drop for FakeSleep {
        fn drop(&mut self) {
            if let (Some(key), Ok(mut s)) = (self.key, self.clock.0.lock()) {
                s.waiting.remove(&key);
            }
        }
    }

    impl FakeWaitClock {
        /// A future that completes `d` from now.
        fn sleep(&self, d: Duration) -> Sleep {
            self.sleep_until(self.now() + d)
        }

        fn next_deadline(&self) -> Option<Duration> {
            self.0
                .lock()
                .unwrap()
                .waiting
                .keys()
                .next()
                .map(|(d, _)| *d)
        }

        /// Sets the time to `t` (never back) and wakes the sleepers due,
        /// without yielding: they run when the test next awaits.
        fn jump_to(&self, t: Duration) {
            let due: Vec<Waker> = {
                let mut s = self.0.lock().unwrap();
                s.now = s.now.max(t);
                let now = s.now;
                let later = s.waiting.split_off(&(now, u64::MAX));
                std::mem::replace(&mut s.waiting, later)
                    .into_values()
                    .collect()
            };
            due.into_iter().for_each(Waker::wake);
        }

        /// Lets every task that can run do so.
        async fn settle() {
            for _ in 0..SETTLE_YIELDS {
                tokio::task::yield_now().await;
            }
        }

        /// Moves time forward by `by`, stopping at each deadline on the way
        /// so each sleeper sees its own time, as tokio's `advance` does.
        async fn advance(&self, by: Duration) {
            let to = self.now() + by;
            while let Some(next) = self.next_deadline().filter(|d| *d <= to) {
                self.jump_to(next);
                Self::settle().await;
            }
            self.jump_to(to);
            Self::settle().await;
        }

        /// Awaits `fut`, moving time to the next deadline whenever `fut` is
        /// still pending after every task had its turn (as tokio's paused
        /// clock does when the runtime is idle). Fails, rather than hanging,
        /// if nothing could wake it any more or if it would take more than
        /// `limit` of fake time.
        async fn within<F: Future>(&self, limit: Duration, fut: F) -> F::Output {
            let end = self.now() + limit;
            let mut fut = std::pin::pin!(fut);
            loop {
                for _ in 0..SETTLE_YIELDS {
                    let polled = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx)));
                    if let Poll::Ready(out) = polled.await {
                        return out;
                    }
                    tokio::task::yield_now().await;
                }
                match self.next_deadline() {
                    Some(next) if next <= end => self.jump_to(next),
                    Some(next) => panic!("not done within {limit:?}: next deadline at {next:?}"),
                    None => panic!("stuck: pending, and no deadline left to wake anything"),
                }
            }
        }

        /// [`FakeWaitClock::within`] a day: every wait in these tests is
        /// shorter, so this only fails a future that nothing would finish.
        async fn run<F: Future>(&self, fut: F) -> F::Output {
            self.within(Duration::from_secs(86_400), fut).await
        }
    }

    /// A lock manager whose waits run on a fake clock.
    fn fake(max_locks_per_agent: usize) -> (Arc<LockManager>, FakeWaitClock) {
        let clock = FakeWaitClock::default();
        let m = LockManager::with_clock(max_locks_per_agent, Arc::new(clock.clone()));
        (Arc::new(m), clock)
    }

    /// Yields until `cond` holds (tasks spawned on the current-thread
    /// runtime run while we yield); fails rather than hanging.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never happened: {what}");
    }

    #[test]
    fn compatibility_matrix_only_read_read_shares() {
        let (a, b) = (id("a"), id("b"));
        for first in MODES {
            for second in MODES {
                let m = LockManager::new(8);
                let r = res("doc");
                m.try_acquire(&a, &r, first).unwrap();
                let got = m.try_acquire(&b, &r, second);
                if first == LockMode::Read && second == LockMode::Read {
                    assert_eq!(got, Ok(()), "{first}+{second}");
                    assert_eq!(
                        m.holders(&r),
                        vec![(a.clone(), LockMode::Read), (b.clone(), LockMode::Read)]
                    );
                } else {
                    assert_eq!(
                        got,
                        Err(LockError::Conflict {
                            resource: r.clone(),
                            holders: vec![(a.clone(), first)],
                            queued: vec![],
                        }),
                        "{first}+{second}"
                    );
                    assert_eq!(m.holders(&r), vec![(a.clone(), first)]);
                }
            }
        }
    }

    #[test]
    fn an_agent_never_conflicts_with_itself_and_upgrades() {
        let (a, b) = (id("a"), id("b"));
        let m = LockManager::new(8);
        let r = res("doc");
        for mode in MODES {
            m.try_acquire(&a, &r, mode).unwrap();
            m.try_acquire(&a, &r, mode).expect("idempotent");
            assert_eq!(m.held_by(&a), vec![(r.clone(), mode)], "upgraded to {mode}");
        }
        // Weaker requests keep the stronger mode.
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        assert_eq!(m.held_by(&a), vec![(r.clone(), LockMode::Exclusive)]);
        assert!(m.holds(&a, &r, LockMode::Write));
        assert!(!m.holds(&b, &r, LockMode::Read));
        assert_eq!(m.release(&a, &r), Ok(LockMode::Exclusive));
        assert!(m.held_by(&a).is_empty());

        // An upgrade is refused while another reader shares the lock.
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        m.try_acquire(&b, &r, LockMode::Read).unwrap();
        assert!(matches!(
            m.try_acquire(&a, &r, LockMode::Write),
            Err(LockError::Conflict { holders, .. }) if holders == vec![(b.clone(), LockMode::Read)]
        ));
        assert!(m.holds(&a, &r, LockMode::Read) && !m.holds(&a, &r, LockMode::Write));
        m.release(&b, &r).unwrap();
        m.try_acquire(&a, &r, LockMode::Write)
            .expect("sole holder upgrades");
        assert!(m.holds(&a, &r, LockMode::Write));
    }

    #[test]
    fn release_of_a_lock_not_held_is_an_error() {
        let m = LockManager::new(8);
        let (a, b) = (id("a"), id("b"));
        let r = LockResource::path(&place(&a, "shared/doc.md"));
        assert_eq!(r.as_str(), "path:shared/doc.md");
        m.try_acquire(&a, &r, LockMode::Write).unwrap();
        assert_eq!(
            m.release(&b, &r),
            Err(LockError::NotHeld {
                resource: r.clone(),
                agent: b.clone()
            })
        );
        assert_eq!(m.holders(&r), vec![(a, LockMode::Write)]);
    }

    #[test]
    fn an_agent_holds_a_bounded_number_of_locks() {
        let m = LockManager::new(2);
        let a = id("a");
        m.try_acquire(&a, &res("1"), LockMode::Read).unwrap();
        m.try_acquire(&a, &res("2"), LockMode::Read).unwrap();
        assert_eq!(
            m.try_acquire(&a, &res("3"), LockMode::Read),
            Err(LockError::TooMany {
                agent: a.clone(),
                max: 2
            })
        );
        // Re-acquiring or upgrading a held lock does not count twice.
        m.try_acquire(&a, &res("2"), LockMode::Exclusive).unwrap();
        assert_eq!(m.held_by(&a).len(), 2);
        m.release(&a, &res("1")).unwrap();
        m.try_acquire(&a, &res("3"), LockMode::Read).unwrap();
    }

    #[tokio::test]
    async fn too_many_is_refused_before_waiting() {
        let (m, clock) = fake(1);
        let (a, b) = (id("a"), id("b"));
        m.try_acquire(&a, &res("1"), LockMode::Read).unwrap();
        m.try_acquire(&b, &res("2"), LockMode::Write).unwrap();
        let start = clock.now();
        assert!(matches!(
            clock
                .run(m.acquire(&a, &res("2"), LockMode::Read, Duration::from_secs(5)))
                .await,
            Err(LockError::TooMany { .. })
        ));
        assert_eq!(clock.now() - start, Duration::ZERO);
        assert!(m.wait_for_edges().is_empty());
    }

    #[test]
    fn resource_names_are_validated() {
        let m = LockManager::new(8);
        let a = id("a");
        for bad in [
            // A path lock names a valid place (paths with NUL or no name
            // cannot be built); its name can still be too long.
            LockResource::path(&place(
                &id(&"p".repeat(256)),
                &vec!["d".repeat(200); 4].join("/"),
            )),
            LockResource::key(&"x".repeat(MAX_RESOURCE_BYTES)),
            LockResource::key("a\nb"),
            LockResource {
                name: String::new(),
                place: None,
            },
        ] {
            assert!(
                matches!(
                    m.try_acquire(&a, &bad, LockMode::Read),
                    Err(LockError::InvalidResource { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(m.held_by(&a).is_empty());
        // The longest allowed name, and the whole key space.
        m.try_acquire(
            &a,
            &LockResource::key(&"x".repeat(MAX_RESOURCE_BYTES - KEY_PREFIX.len())),
            LockMode::Read,
        )
        .unwrap();
        m.try_acquire(&a, &LockResource::key(""), LockMode::Read)
            .unwrap();
    }

    #[tokio::test]
    async fn invalid_names_are_refused_by_acquire_too() {
        let (m, clock) = fake(8);
        let r = clock
            .run(m.acquire(
                &id("a"),
                &LockResource::key("\u{7}"),
                LockMode::Read,
                Duration::from_secs(1),
            ))
            .await;
        assert!(matches!(r, Err(LockError::InvalidResource { .. })));
    }

    #[tokio::test]
    async fn a_waiter_is_granted_when_the_holder_releases() {
        let (m, clock) = fake(8);
        let (a, b) = (id("a"), id("b"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Write).unwrap();
        let start = clock.now();
        let waiter = tokio::spawn({
            let (m, b, r) = (m.clone(), b.clone(), r.clone());
            async move {
                m.acquire(&b, &r, LockMode::Read, Duration::from_secs(30))
                    .await
            }
        });
        until("b waits for a", || {
            m.wait_for_edges() == vec![(b.clone(), a.clone())]
        })
        .await;
        clock.advance(Duration::from_secs(3)).await;
        assert!(
            !waiter.is_finished(),
            "b still waits while a holds the lock"
        );
        m.release(&a, &r).unwrap();
        assert_eq!(clock.run(waiter).await.unwrap(), Ok(()));
        assert_eq!(clock.now() - start, Duration::from_secs(3));
        assert_eq!(m.holders(&r), vec![(b, LockMode::Read)]);
        assert!(m.wait_for_edges().is_empty());
    }

    #[tokio::test]
    async fn a_wait_times_out_after_the_time_asked() {
        let (m, clock) = fake(8);
        let (a, b) = (id("a"), id("b"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        let asked = Duration::from_millis(1500);
        let start = clock.now();
        let waiter = queue_up(&m, &b, &r, LockMode::Exclusive, asked).await;
        clock.advance(asked - Duration::from_millis(1)).await;
        assert!(!waiter.is_finished(), "gave up early");
        clock.advance(Duration::from_millis(1)).await;
        assert!(waiter.is_finished(), "waits past its deadline");
        assert_eq!(
            waiter.await.unwrap(),
            Err(LockError::Timeout {
                resource: r.clone(),
                waited: asked
            })
        );
        assert_eq!(clock.now() - start, asked, "it really waited");
        assert!(m.wait_for_edges().is_empty());
        assert_eq!(m.holders(&r), vec![(a, LockMode::Read)]);
    }

    #[tokio::test]
    async fn zero_wait_fails_at_once() {
        let (m, clock) = fake(8);
        let (a, b) = (id("a"), id("b"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        let got = clock
            .run(m.acquire(&b, &r, LockMode::Write, Duration::ZERO))
            .await;
        assert_eq!(
            got,
            Err(LockError::Conflict {
                resource: r,
                holders: vec![(a, LockMode::Read)],
                queued: vec![],
            })
        );
        assert!(m.wait_for_edges().is_empty());
    }

    #[tokio::test]
    async fn the_agent_closing_a_cycle_gets_deadlock_and_the_other_proceeds() {
        let (m, clock) = fake(8);
        let (a, b) = (id("a"), id("b"));
        let (r1, r2) = (res("r1"), res("r2"));
        m.try_acquire(&a, &r1, LockMode::Write).unwrap();
        m.try_acquire(&b, &r2, LockMode::Write).unwrap();
        let a_waits = tokio::spawn({
            let (m, a, r2) = (m.clone(), a.clone(), r2.clone());
            async move {
                m.acquire(&a, &r2, LockMode::Write, Duration::from_secs(60))
                    .await
            }
        });
        until("a waits for b", || {
            m.wait_for_edges() == vec![(a.clone(), b.clone())]
        })
        .await;
        let start = clock.now();
        let got = clock
            .run(m.acquire(&b, &r1, LockMode::Read, Duration::from_secs(60)))
            .await;
        assert_eq!(
            got,
            Err(LockError::Deadlock {
                resource: r1.clone(),
                cycle: vec![b.clone(), a.clone()]
            })
        );
        assert_eq!(
            clock.now() - start,
            Duration::ZERO,
            "refused without waiting"
        );
        assert_eq!(
            m.wait_for_edges(),
            vec![(a.clone(), b.clone())],
            "a keeps waiting"
        );
        assert!(!a_waits.is_finished());
        m.release(&b, &r2).unwrap();
        assert_eq!(clock.run(a_waits).await.unwrap(), Ok(()));
        assert!(m.holds(&a, &r2, LockMode::Write));
        assert!(m.wait_for_edges().is_empty());
    }

    #[tokio::test]
    async fn an_upgrade_deadlock_is_detected() {
        let (m, clock) = fake(8);
        let (a, b) = (id("a"), id("b"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        m.try_acquire(&b, &r, LockMode::Read).unwrap();
        let a_up = tokio::spawn({
            let (m, a, r) = (m.clone(), a.clone(), r.clone());
            async move {
                m.acquire(&a, &r, LockMode::Write, Duration::from_secs(60))
                    .await
            }
        });
        until("a waits for b", || !m.wait_for_edges().is_empty()).await;
        let got = clock
            .run(m.acquire(&b, &r, LockMode::Write, Duration::from_secs(60)))
            .await;
        assert!(
            matches!(&got, Err(LockError::Deadlock { cycle, .. }) if *cycle == vec![b.clone(), a.clone()]),
            "{got:?}"
        );
        m.release(&b, &r).unwrap();
        assert_eq!(clock.run(a_up).await.unwrap(), Ok(()));
        assert_eq!(m.holders(&r), vec![(a, LockMode::Write)]);
    }

    #[tokio::test]
    async fn a_three_agent_cycle_is_detected() {
        let (m, clock) = fake(8);
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let (r1, r2, r3) = (res("r1"), res("r2"), res("r3"));
        m.try_acquire(&a, &r1, LockMode::Write).unwrap();
        m.try_acquire(&b, &r2, LockMode::Write).unwrap();
        m.try_acquire(&c, &r3, LockMode::Write).unwrap();
        let spawn_wait = |who: &AgentId, r: &LockResource| {
            let (m, who, r) = (m.clone(), who.clone(), r.clone());
            tokio::spawn(async move {
                m.acquire(&who, &r, LockMode::Write, Duration::from_secs(60))
                    .await
            })
        };
        let a_waits = spawn_wait(&a, &r2);
        let b_waits = spawn_wait(&b, &r3);
        until("a → b → c", || {
            m.wait_for_edges() == vec![(a.clone(), b.clone()), (b.clone(), c.clone())]
        })
        .await;
        let got = clock
            .run(m.acquire(&c, &r1, LockMode::Write, Duration::from_secs(60)))
            .await;
        assert_eq!(
            got,
            Err(LockError::Deadlock {
                resource: r1.clone(),
                cycle: vec![c.clone(), a.clone(), b.clone()]
            })
        );
        let err = got.unwrap_err().to_string();
        assert!(err.contains("c → a → b → c"), "{err}");
        // c gives up everything; b gets r3, then releases all, then a gets r2.
        assert_eq!(m.release_all(&c), vec![(r3.clone(), LockMode::Write)]);
        assert_eq!(clock.run(b_waits).await.unwrap(), Ok(()));
        m.release_all(&b);
        assert_eq!(clock.run(a_waits).await.unwrap(), Ok(()));
        assert_eq!(
            m.held_by(&a),
            vec![(r1, LockMode::Write), (r2, LockMode::Write)]
        );
        assert!(m.wait_for_edges().is_empty());
    }

    #[tokio::test]
    async fn release_all_wakes_a_waiter() {
        let (m, clock) = fake(8);
        let (a, b) = (id("a"), id("b"));
        let (r1, r2) = (res("r1"), res("r2"));
        m.try_acquire(&a, &r1, LockMode::Read).unwrap();
        m.try_acquire(&a, &r2, LockMode::Exclusive).unwrap();
        let waiter = tokio::spawn({
            let (m, b, r2) = (m.clone(), b.clone(), r2.clone());
            async move {
                m.acquire(&b, &r2, LockMode::Write, Duration::from_secs(60))
                    .await
            }
        });
        until("b waits", || !m.wait_for_edges().is_empty()).await;
        let start = clock.now();
        assert_eq!(
            m.release_all(&a),
            vec![
                (r1.clone(), LockMode::Read),
                (r2.clone(), LockMode::Exclusive)
            ]
        );
        assert!(m.held_by(&a).is_empty() && m.holders(&r1).is_empty());
        assert_eq!(clock.run(waiter).await.unwrap(), Ok(()));
        assert_eq!(clock.now() - start, Duration::ZERO);
        assert_eq!(m.holders(&r2), vec![(b, LockMode::Write)]);
    }

    #[tokio::test]
    async fn a_newcomer_cannot_overtake_a_waiter() {
        let (m, clock) = fake(8);
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Write).unwrap();
        let waiter = tokio::spawn({
            let (m, b, r) = (m.clone(), b.clone(), r.clone());
            async move {
                m.acquire(&b, &r, LockMode::Write, Duration::from_secs(60))
                    .await
            }
        });
        until("b waits for a", || {
            m.wait_for_edges() == vec![(b.clone(), a.clone())]
        })
        .await;
        // a releases; c asks before b runs again and is refused: b was
        // first, and the release handed b the lock already.
        m.release(&a, &r).unwrap();
        assert_eq!(
            m.try_acquire(&c, &r, LockMode::Read),
            Err(LockError::Conflict {
                resource: r.clone(),
                holders: vec![(b.clone(), LockMode::Write)],
                queued: vec![],
            })
        );
        assert_eq!(clock.run(waiter).await.unwrap(), Ok(()));
        assert_eq!(m.holders(&r), vec![(b, LockMode::Write)]);
    }

    async fn wait_in_background(
        m: &Arc<LockManager>,
        agent: &AgentId,
        r: &LockResource,
        mode: LockMode,
        secs: u64,
    ) -> tokio::task::JoinHandle<Result<(), LockError>> {
        let (m, agent, r) = (m.clone(), agent.clone(), r.clone());
        let task =
            tokio::spawn(
                async move { m.acquire(&agent, &r, mode, Duration::from_secs(secs)).await },
            );
        // Queued (its edges recorded) before the next one arrives.
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        assert!(!task.is_finished());
        task
    }

    /// Readers arriving after a waiting writer queue behind it, so a stream
    /// of readers cannot starve it; the readers behind it then go together.
    #[tokio::test]
    async fn a_waiting_writer_is_not_starved_by_later_readers() {
        let (m, clock) = fake(8);
        let (r1, w, r2, r3) = (id("r1"), id("w"), id("r2"), id("r3"));
        let r = res("doc");
        m.try_acquire(&r1, &r, LockMode::Read).unwrap();
        let writer = wait_in_background(&m, &w, &r, LockMode::Write, 60).await;
        let got = m.try_acquire(&r2, &r, LockMode::Read);
        assert!(
            matches!(&got, Err(LockError::Conflict { queued, .. }) if queued == &vec![(w.clone(), LockMode::Write)]),
            "{got:?}"
        );
        let reader2 = wait_in_background(&m, &r2, &r, LockMode::Read, 60).await;
        let reader3 = wait_in_background(&m, &r3, &r, LockMode::Read, 60).await;
        assert_eq!(
            m.wait_for_edges(),
            vec![
                (r2.clone(), w.clone()),
                (r3.clone(), w.clone()),
                (w.clone(), r1.clone())
            ]
        );
        m.release(&r1, &r).unwrap();
        assert_eq!(clock.run(writer).await.unwrap(), Ok(()));
        assert!(!reader2.is_finished() && !reader3.is_finished());
        m.release(&w, &r).unwrap();
        assert_eq!(clock.run(reader2).await.unwrap(), Ok(()));
        assert_eq!(clock.run(reader3).await.unwrap(), Ok(()));
        assert_eq!(
            m.holders(&r),
            vec![(r2, LockMode::Read), (r3, LockMode::Read)]
        );
    }

    /// A queued writer that gives up (its deadline) lets the compatible
    /// requests behind it go at once.
    #[tokio::test]
    async fn a_waiter_that_times_out_lets_those_behind_it_go() {
        let (m, clock) = fake(8);
        let (r1, w, r2) = (id("r1"), id("w"), id("r2"));
        let r = res("doc");
        m.try_acquire(&r1, &r, LockMode::Read).unwrap();
        let writer = wait_in_background(&m, &w, &r, LockMode::Write, 1).await;
        let reader = wait_in_background(&m, &r2, &r, LockMode::Read, 60).await;
        assert!(matches!(
            clock.run(writer).await.unwrap(),
            Err(LockError::Timeout { .. })
        ));
        assert_eq!(
            clock.now(),
            Duration::from_secs(1),
            "at the writer's deadline"
        );
        assert_eq!(clock.run(reader).await.unwrap(), Ok(()));
        assert_eq!(
            clock.now(),
            Duration::from_secs(1),
            "the reader went at once"
        );
        assert_eq!(
            m.holders(&r),
            vec![(r1, LockMode::Read), (r2, LockMode::Read)]
        );
    }

    /// A waiter that left the queue is no longer waited for: the wait-for
    /// graph is derived afresh, so no cycle through it is reported.
    #[tokio::test]
    async fn a_waiter_gone_from_the_queue_closes_no_cycle() {
        let (m, clock) = fake(8);
        let (h, x, y) = (id("h"), id("x"), id("y"));
        let (r, s) = (res("r"), res("s"));
        m.try_acquire(&h, &r, LockMode::Write).unwrap();
        m.try_acquire(&x, &s, LockMode::Write).unwrap();
        let y_task = tokio::spawn({
            let (m, y, r, s) = (m.clone(), y.clone(), r.clone(), s.clone());
            async move {
                let first = m
                    .acquire(&y, &r, LockMode::Write, Duration::from_secs(1))
                    .await;
                // At once, before x's task runs again: x still "queues
                // behind" y in any stale record of the graph.
                let second = m
                    .acquire(&y, &s, LockMode::Write, Duration::from_secs(10))
                    .await;
                (first, second)
            }
        });
        until("y waits for h", || {
            m.wait_for_edges() == vec![(y.clone(), h.clone())]
        })
        .await;
        let x_wait = wait_in_background(&m, &x, &r, LockMode::Write, 60).await;
        assert_eq!(
            m.wait_for_edges(),
            vec![
                (x.clone(), h.clone()),
                (x.clone(), y.clone()),
                (y.clone(), h.clone())
            ]
        );
        let (first, second) = clock.run(y_task).await.unwrap();
        assert!(matches!(first, Err(LockError::Timeout { .. })), "{first:?}");
        assert!(
            matches!(second, Err(LockError::Timeout { .. })),
            "{second:?}"
        );
        x_wait.abort();
    }

    /// An upgrade by a holder is not queued behind the waiters (who wait for
    /// it anyway): no deadlock, and the waiter then waits for the stronger lock.
    #[tokio::test]
    async fn a_holder_upgrades_ahead_of_the_queue() {
        let (m, clock) = fake(8);
        let (a, w) = (id("a"), id("w"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        let writer = wait_in_background(&m, &w, &r, LockMode::Write, 60).await;
        clock
            .run(m.acquire(&a, &r, LockMode::Exclusive, Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(m.holders(&r), vec![(a.clone(), LockMode::Exclusive)]);
        m.release(&a, &r).unwrap();
        assert_eq!(clock.run(writer).await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_dropped_wait_removes_its_edges() {
        let (m, clock) = fake(8);
        let (a, b) = (id("a"), id("b"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Write).unwrap();
        let waiter = tokio::spawn({
            let (m, b, r) = (m.clone(), b.clone(), r.clone());
            async move {
                m.acquire(&b, &r, LockMode::Write, Duration::from_secs(60))
                    .await
            }
        });
        until("b waits", || !m.wait_for_edges().is_empty()).await;
        // b is killed mid-wait.
        waiter.abort();
        assert!(clock.run(waiter).await.unwrap_err().is_cancelled());
        assert!(m.wait_for_edges().is_empty());
        // Its stale edge can no longer cause a false deadlock.
        m.try_acquire(&b, &res("other"), LockMode::Write).unwrap();
        let got = clock
            .run(m.acquire(&a, &res("other"), LockMode::Write, Duration::from_secs(1)))
            .await;
        assert!(matches!(got, Err(LockError::Timeout { .. })), "{got:?}");
    }

    #[test]
    fn the_manager_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LockManager>();
    }

    #[test]
    fn errors_name_the_resource_and_agents() {
        let e = LockError::Conflict {
            resource: res("doc"),
            holders: vec![(id("a"), LockMode::Write), (id("b"), LockMode::Read)],
            queued: vec![],
        };
        assert_eq!(e.to_string(), "key:doc is held by a (write), b (read)");
        let e = LockError::Conflict {
            resource: res("doc"),
            holders: vec![(id("a"), LockMode::Read)],
            queued: vec![(id("w"), LockMode::Write)],
        };
        assert_eq!(
            e.to_string(),
            "key:doc is held by a (read) and awaited first by w (write)"
        );
        let e = LockError::Deadlock {
            resource: res("r1"),
            cycle: vec![id("b"), id("a")],
        };
        assert_eq!(
            e.to_string(),
            "waiting for key:r1 would deadlock: b → a → b"
        );
    }

    /// Who waits for `r`, first come first.
    fn queue_of(m: &LockManager, r: &LockResource) -> Vec<AgentId> {
        m.table()
            .queues
            .get(r)
            .map_or_else(Vec::new, |q| q.values().map(|w| w.agent.clone()).collect())
    }

    /// Spawns an `acquire` and yields until it is queued, so waits queue in
    /// the order they are spawned.
    async fn queue_up(
        m: &Arc<LockManager>,
        agent: &AgentId,
        r: &LockResource,
        mode: LockMode,
        wait: Duration,
    ) -> tokio::task::JoinHandle<Result<(), LockError>> {
        let before = queue_of(m, r).len();
        let task = tokio::spawn({
            let (m, agent, r) = (m.clone(), agent.clone(), r.clone());
            async move { m.acquire(&agent, &r, mode, wait).await }
        });
        until("the wait is queued", || queue_of(m, r).len() == before + 1).await;
        task
    }

    #[tokio::test]
    async fn a_thousand_waiters_are_granted_one_by_one_in_arrival_order() {
        let (m, clock) = fake(8);
        let r = res("counter");
        let h = id("holder");
        m.try_acquire(&h, &r, LockMode::Write).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let start = clock.now();
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let agent = id(&format!("agent-{i}"));
            let before = queue_of(&m, &r).len();
            tasks.push(tokio::spawn({
                let (m, r, order) = (m.clone(), r.clone(), order.clone());
                async move {
                    m.acquire(&agent, &r, LockMode::Write, Duration::from_secs(60))
                        .await?;
                    order.lock().unwrap().push(i);
                    // Nobody else holds it while we do.
                    assert_eq!(m.holders(&r), vec![(agent.clone(), LockMode::Write)]);
                    tokio::task::yield_now().await;
                    m.release(&agent, &r).map(|_| ())
                }
            }));
            until("queued", || queue_of(&m, &r).len() == before + 1).await;
        }
        m.release(&h, &r).unwrap();
        for t in tasks {
            assert_eq!(clock.run(t).await.unwrap(), Ok(()));
        }
        assert_eq!(*order.lock().unwrap(), (0..1000).collect::<Vec<_>>());
        assert_eq!(
            clock.now() - start,
            Duration::ZERO,
            "nobody waited for a timer"
        );
        assert!(m.holders(&r).is_empty() && queue_of(&m, &r).is_empty());
    }

    /// A release wakes only the waiters it grants: the others stay asleep
    /// (their futures are not polled again).
    #[tokio::test]
    async fn a_release_wakes_only_the_waiters_it_grants() {
        let (m, _clock) = fake(8);
        let r = res("doc");
        let h = id("h");
        m.try_acquire(&h, &r, LockMode::Write).unwrap();
        let polls = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let agent = id(&format!("w{i}"));
            let before = queue_of(&m, &r).len();
            tasks.push(tokio::spawn({
                let (m, r, polls) = (m.clone(), r.clone(), polls.clone());
                async move {
                    let mut wait =
                        Box::pin(m.acquire(&agent, &r, LockMode::Write, Duration::from_secs(60)));
                    std::future::poll_fn(|cx| {
                        polls.fetch_add(1, Ordering::Relaxed);
                        wait.as_mut().poll(cx)
                    })
                    .await
                }
            }));
            until("queued", || queue_of(&m, &r).len() == before + 1).await;
        }
        let polls_queued = polls.load(Ordering::Relaxed);
        m.release(&h, &r).unwrap();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            polls_queued + 1,
            "one grant, one wake-up"
        );
        assert_eq!(m.holders(&r), vec![(id("w0"), LockMode::Write)]);
        for t in &tasks {
            t.abort();
        }
    }

    #[tokio::test]
    async fn a_waiter_dropped_right_after_the_hand_off_passes_the_lock_on() {
        let (m, clock) = fake(8);
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Write).unwrap();
        let b_wait = queue_up(&m, &b, &r, LockMode::Write, Duration::from_secs(60)).await;
        let c_wait = queue_up(&m, &c, &r, LockMode::Write, Duration::from_secs(60)).await;
        m.release(&a, &r).unwrap();
        assert_eq!(
            m.holders(&r),
            vec![(b.clone(), LockMode::Write)],
            "handed to b"
        );
        // b is killed before its task ever sees the grant.
        b_wait.abort();
        assert!(clock.run(b_wait).await.unwrap_err().is_cancelled());
        assert_eq!(
            m.holders(&r),
            vec![(c.clone(), LockMode::Write)],
            "passed on to c"
        );
        assert_eq!(clock.run(c_wait).await.unwrap(), Ok(()));
        assert!(m.held_by(&b).is_empty());
    }

    #[tokio::test]
    async fn a_wait_withdrawn_by_release_all_is_final_even_if_the_lock_frees_at_once() {
        // The kill race: the agent's locks and waits are released while its
        // acquire still runs, and the lock frees before that task runs again.
        let (m, clock) = fake(8);
        let (a, c) = (id("a"), id("c"));
        let r = res("doc");
        m.try_acquire(&c, &r, LockMode::Write).unwrap();
        let a_wait = queue_up(&m, &a, &r, LockMode::Write, Duration::from_secs(60)).await;
        m.release_all(&a);
        m.release(&c, &r).unwrap();
        assert!(
            matches!(
                clock.run(a_wait).await.unwrap(),
                Err(LockError::Withdrawn { .. })
            ),
            "a withdrawn wait does not queue again"
        );
        assert!(
            m.holders(&r).is_empty(),
            "nobody holds it: {:?}",
            m.holders(&r)
        );
    }

    #[tokio::test]
    async fn a_waiter_refused_at_hand_off_lets_those_behind_it_go() {
        let (m, clock) = fake(1);
        let (h, a, b) = (id("h"), id("a"), id("b"));
        let (r, other) = (res("doc"), res("other"));
        m.try_acquire(&h, &r, LockMode::Write).unwrap();
        let a_wait = queue_up(&m, &a, &r, LockMode::Write, Duration::from_secs(60)).await;
        let b_wait = queue_up(&m, &b, &r, LockMode::Read, Duration::from_secs(60)).await;
        // a fills its one-lock limit while it waits.
        m.try_acquire(&a, &other, LockMode::Write).unwrap();
        m.release(&h, &r).unwrap();
        assert!(matches!(
            clock.run(a_wait).await.unwrap(),
            Err(LockError::TooMany { .. })
        ));
        assert_eq!(
            clock.run(b_wait).await.unwrap(),
            Ok(()),
            "b is not left asleep"
        );
        assert_eq!(m.holders(&r), vec![(b.clone(), LockMode::Read)]);
    }

    #[tokio::test]
    async fn a_dropped_upgrade_falls_back_to_the_mode_held_before() {
        let (m, clock) = fake(8);
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        m.try_acquire(&b, &r, LockMode::Read).unwrap();
        let up = queue_up(&m, &a, &r, LockMode::Exclusive, Duration::from_secs(60)).await;
        let reader = queue_up(&m, &c, &r, LockMode::Read, Duration::from_secs(60)).await;
        m.release(&b, &r).unwrap();
        assert_eq!(m.holders(&r), vec![(a.clone(), LockMode::Exclusive)]);
        up.abort();
        assert!(clock.run(up).await.unwrap_err().is_cancelled());
        // a keeps the read lock it had; the reader behind the upgrade goes.
        assert_eq!(clock.run(reader).await.unwrap(), Ok(()));
        assert_eq!(
            m.holders(&r),
            vec![(a, LockMode::Read), (c, LockMode::Read)]
        );
    }

    #[tokio::test]
    async fn many_waiters_time_out_at_their_own_deadlines_and_the_rest_are_granted() {
        let (m, clock) = fake(8);
        let r = res("doc");
        let h = id("h");
        m.try_acquire(&h, &r, LockMode::Write).unwrap();
        let start = clock.now();
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            // Odd waiters give up after i seconds; even ones wait long.
            let wait = Duration::from_secs(if i % 2 == 1 { i } else { 10_000 });
            let agent = id(&format!("w{i}"));
            let mode = if i % 3 == 0 {
                LockMode::Write
            } else {
                LockMode::Read
            };
            let before = queue_of(&m, &r).len();
            tasks.push((
                i,
                wait,
                tokio::spawn({
                    let (m, r, clock) = (m.clone(), r.clone(), clock.clone());
                    async move {
                        let got = m.acquire(&agent, &r, mode, wait).await;
                        let at = clock.now() - start;
                        if got.is_ok() {
                            m.release(&agent, &r).unwrap();
                        }
                        (got, at)
                    }
                }),
            ));
            until("queued", || queue_of(&m, &r).len() == before + 1).await;
        }
        clock.advance(Duration::from_secs(300)).await;
        assert_eq!(queue_of(&m, &r).len(), 100, "the odd ones left the queue");
        m.release(&h, &r).unwrap();
        for (i, wait, t) in tasks {
            let (got, at) = clock.run(t).await.unwrap();
            if i % 2 == 1 {
                assert_eq!(
                    got,
                    Err(LockError::Timeout {
                        resource: r.clone(),
                        waited: wait
                    })
                );
                assert_eq!(at, wait, "waiter {i} gave up at its deadline");
            } else {
                assert_eq!(got, Ok(()), "waiter {i}");
                assert_eq!(at, Duration::from_secs(300));
            }
        }
        assert!(m.holders(&r).is_empty() && queue_of(&m, &r).is_empty());
    }

    /// A deadline reached as the lock is handed over: the waiter either
    /// holds the lock and says so (the release came before it saw its
    /// deadline), or does not hold it (it gave up first) — never a lock held
    /// for a waiter that gave up.
    #[tokio::test]
    async fn a_timeout_racing_a_release_never_strands_the_lock() {
        for release_first in [true, false] {
            let (m, clock) = fake(8);
            let (a, b) = (id("a"), id("b"));
            let r = res("doc");
            m.try_acquire(&a, &r, LockMode::Write).unwrap();
            let b_wait = queue_up(&m, &b, &r, LockMode::Write, Duration::from_secs(1)).await;
            if release_first {
                // The deadline is due, but b has not run since.
                clock.jump_to(Duration::from_secs(1));
            } else {
                clock.advance(Duration::from_secs(1)).await;
                assert!(b_wait.is_finished(), "b saw its deadline");
            }
            m.release(&a, &r).unwrap();
            match clock.run(b_wait).await.unwrap() {
                Ok(()) if release_first => assert_eq!(m.holders(&r), vec![(b, LockMode::Write)]),
                Err(LockError::Timeout { .. }) if !release_first => {
                    assert!(m.holders(&r).is_empty());
                }
                other => panic!("release first: {release_first}: {other:?}"),
            }
            assert!(queue_of(&m, &r).is_empty());
        }
    }

    /// One agent's script: locks to take in order (holding each), how long
    /// to hold them, and whether it is killed (its future dropped and its
    /// locks released) after some time.
    #[derive(Debug, Clone)]
    struct Script {
        steps: Vec<(usize, LockMode, u64)>,
        killed_after_ms: Option<u64>,
    }

    fn script() -> impl Strategy<Value = Script> {
        let mode = prop_oneof![
            Just(LockMode::Read),
            Just(LockMode::Write),
            Just(LockMode::Exclusive)
        ];
        (
            proptest::collection::vec((0..3usize, mode, 0..20u64), 1..4),
            proptest::option::of(0..60u64),
        )
            .prop_map(|(steps, killed_after_ms)| Script {
                steps,
                killed_after_ms,
            })
    }

    /// What the agents themselves believe they hold: checked against the
    /// compatibility rules on every grant, independently of the manager.
    #[derive(Default)]
    struct Inside(Mutex<BTreeMap<(usize, AgentId), LockMode>>);

    impl Inside {
        fn enter(&self, r: usize, agent: &AgentId, mode: LockMode) {
            let mut inside = self.0.lock().unwrap();
            for ((other_r, other), m) in inside.iter() {
                assert!(
                    *other_r != r || other == agent || mode.compatible(*m),
                    "{agent} got {mode} on {r} while {other} holds {m}"
                );
            }
            let m = inside.entry((r, agent.clone())).or_insert(mode);
            *m = (*m).max(mode);
        }

        fn leave_all(&self, agent: &AgentId) {
            self.0.lock().unwrap().retain(|(_, a), _| a != agent);
        }
    }

    /// Leaves `Inside` when the agent's task ends or is dropped.
    struct Leave<'a>(&'a Inside, &'a AgentId);

    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.leave_all(self.1);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Many agents, random modes and resources (with upgrades and
        /// deadlocks), random kills: no two incompatible holders ever, every
        /// agent finishes, and no wait times out (waits are far longer than
        /// any hold, so a timeout would be a lost wake-up or a missed
        /// deadlock).
        #[test]
        fn random_contention_keeps_locks_exclusive_and_everyone_finishes(
            scripts in proptest::collection::vec(script(), 2..14)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let (m, clock) = fake(8);
                let inside = Arc::new(Inside::default());
                let resources = [res("r0"), res("r1"), res("r2")];
                let mut tasks = Vec::new();
                for (i, s) in scripts.into_iter().enumerate() {
                    let (m, inside, resources, clock) =
                        (m.clone(), inside.clone(), resources.clone(), clock.clone());
                    let agent = id(&format!("agent-{i}"));
                    tasks.push(tokio::spawn(async move {
                        let work = async {
                            let _leave = Leave(&inside, &agent);
                            for (r, mode, hold) in &s.steps {
                                match m
                                    .acquire(&agent, &resources[*r], *mode, Duration::from_secs(3600))
                                    .await
                                {
                                    Ok(()) => inside.enter(*r, &agent, *mode),
                                    Err(LockError::Deadlock { cycle, .. }) => {
                                        assert_eq!(cycle.first(), Some(&agent));
                                        break;
                                    }
                                    Err(e) => panic!("{agent}: {e}"),
                                }
                                clock.sleep(Duration::from_millis(*hold)).await;
                            }
                        };
                        match s.killed_after_ms {
                            Some(ms) => {
                                let kill = clock.sleep(Duration::from_millis(ms));
                                tokio::select! {
                                    biased;
                                    () = work => {}
                                    () = kill => {}
                                }
                            }
                            None => work.await,
                        }
                        // Locks die with their holder, killed or done.
                        m.release_all(&agent);
                    }));
                }
                let all = async {
                    for t in tasks {
                        t.await.unwrap();
                    }
                };
                // Fails (does not hang) if an agent is never woken.
                clock.within(Duration::from_secs(600), all).await;
                let t = m.table();
                assert!(t.held.is_empty() && t.by_agent.is_empty());
                assert!(t.queues.is_empty() && t.waiting.is_empty());
            });
        }
    }
}
