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
//! the caller allows no wait) or waits. The wait-for graph has an edge
//! `waiter → agent` for every holder in a waiter's way and every earlier
//! waiter it queues behind; it is derived from the lock table whenever it is
//! checked, so a release or a waiter giving up never leaves a stale edge. If
//! a wait closes a cycle through the requester, its wait is withdrawn and it
//! gets [`LockError::Deadlock`] naming the cycle (the others keep waiting, so
//! one refusal breaks the cycle). Waiters wake whenever a lock is released or
//! a waiter leaves the queue, try again (checking for a cycle again) and give
//! up at their deadline with [`LockError::Timeout`]. Waiting uses tokio's clock, so paused-time tests
//! never sleep.
//!
//! Locks die with their holder: [`LockManager::release_all`] is called when
//! an agent leaves, traps or is killed, and a dropped [`LockManager::acquire`]
//! future (its agent was killed mid-wait) removes its edges.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ahv_core::AgentId;
use thiserror::Error;

use crate::session::files::AreaPath;
use tokio::sync::Notify;
use tokio::time::Instant;

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

/// One waiting `acquire`: who waits, for what, in which mode. Whom it
/// waits for (holders in the way and earlier waiters it queues behind) is
/// derived from the table whenever it is needed, so it is never stale when
/// another waiter leaves or a holder releases.
#[derive(Debug)]
struct Wait {
    agent: AgentId,
    resource: LockResource,
    mode: LockMode,
}

#[derive(Debug, Default)]
struct Table {
    /// Resource → its holders. Ordered so range scans over key locks work.
    held: BTreeMap<LockResource, BTreeMap<AgentId, LockMode>>,
    /// Agent → what it holds (the inverse of `held`).
    by_agent: HashMap<AgentId, BTreeMap<LockResource, LockMode>>,
    /// Wait id → the wait; the wait-for graph is the union of their edges.
    waits: HashMap<u64, Wait>,
}

impl Table {
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
    /// that does not wait) for `resource` whose modes conflict with `mode`.
    /// An agent that holds the resource already is queued behind nobody.
    fn queued_ahead(
        &self,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
        before: Option<u64>,
    ) -> Vec<(AgentId, LockMode)> {
        if self.mode_of(agent, resource).is_some() {
            return Vec::new();
        }
        let mut ahead: Vec<(u64, AgentId, LockMode)> = self
            .waits
            .iter()
            .filter(|(id, w)| {
                before.is_none_or(|b| **id < b)
                    && &w.resource == resource
                    && &w.agent != agent
                    && !mode.compatible(w.mode)
            })
            .map(|(id, w)| (*id, w.agent.clone(), w.mode))
            .collect();
        ahead.sort_unstable_by_key(|(id, ..)| *id);
        ahead.into_iter().map(|(_, a, m)| (a, m)).collect()
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

    /// Removes wait `id` from the queue; whether others still wait for the
    /// same resource (and may go now).
    fn withdraw(&mut self, id: u64) -> bool {
        self.waits
            .remove(&id)
            .is_some_and(|gone| self.waits.values().any(|w| w.resource == gone.resource))
    }

    /// The wait-for graph as it stands: each waiter → the holders in its
    /// way and the earlier waiters it queues behind.
    fn graph(&self) -> BTreeMap<AgentId, BTreeSet<AgentId>> {
        let mut graph: BTreeMap<AgentId, BTreeSet<AgentId>> = BTreeMap::new();
        for (id, w) in &self.waits {
            let on = self
                .blockers(&w.agent, &w.resource, w.mode)
                .into_iter()
                .chain(self.queued_ahead(&w.agent, &w.resource, w.mode, Some(*id)))
                .map(|(a, _)| a);
            graph.entry(w.agent.clone()).or_default().extend(on);
        }
        graph
    }

    /// A cycle through `start` in the wait-for graph, starting with `start`.
    fn cycle_through(&self, start: &AgentId) -> Option<Vec<AgentId>> {
        let graph = self.graph();
        let next_of = |a: &AgentId| -> Vec<&AgentId> {
            graph.get(a).map_or_else(Vec::new, |s| s.iter().collect())
        };
        // Iterative DFS: `path[i]` is being explored with `frames[i]` as its
        // remaining successors, so a deep graph cannot overflow the stack.
        let mut path: Vec<&AgentId> = vec![start];
        let mut frames: Vec<std::vec::IntoIter<&AgentId>> = vec![next_of(start).into_iter()];
        let mut visited: HashSet<&AgentId> = HashSet::from([start]);
        while let Some(frame) = frames.last_mut() {
            match frame.next() {
                Some(next) if next == start => {
                    return Some(path.into_iter().cloned().collect());
                }
                Some(next) => {
                    if visited.insert(next) {
                        path.push(next);
                        frames.push(next_of(next).into_iter());
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

/// The session's intent locks and wait-for graph.
#[derive(Debug)]
pub struct LockManager {
    max_per_agent: usize,
    table: Mutex<Table>,
    released: Notify,
    next_wait: AtomicU64,
}

/// Removes a waiter's edges however its `acquire` ends, including when the
/// future is dropped mid-wait because its agent was killed.
struct WaitGuard<'a> {
    manager: &'a LockManager,
    id: u64,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let queued_behind = self.manager.table().withdraw(self.id);
        // Those queued behind it (a timeout, a kill) may go now.
        if queued_behind {
            self.manager.released.notify_waiters();
        }
    }
}

impl LockManager {
    /// An empty lock table; each agent may hold at most `max_locks_per_agent`
    /// locks at once.
    pub fn new(max_locks_per_agent: usize) -> LockManager {
        LockManager {
            max_per_agent: max_locks_per_agent,
            table: Mutex::new(Table::default()),
            released: Notify::new(),
            next_wait: AtomicU64::new(0),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means a panic elsewhere; every update below
        // leaves the table consistent before it can panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One attempt: grants the lock (true), refuses it, or — for a waiter
    /// (`wait` is its id) — records who is in the way and returns false.
    fn attempt(
        &self,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
        wait: Option<u64>,
    ) -> Result<bool, LockError> {
        let mut t = self.table();
        let outcome = Self::attempt_locked(&mut t, self.max_per_agent, agent, resource, mode, wait);
        let left_queue = match wait {
            Some(id) if !matches!(outcome, Ok(false)) => t.withdraw(id),
            _ => false,
        };
        drop(t);
        // A waiter that leaves the queue (granted a shared lock, or refused)
        // may let compatible waiters behind it go.
        if left_queue {
            self.released.notify_waiters();
        }
        outcome
    }

    fn attempt_locked(
        t: &mut Table,
        max: usize,
        agent: &AgentId,
        resource: &LockResource,
        mode: LockMode,
        wait: Option<u64>,
    ) -> Result<bool, LockError> {
        match t.mode_of(agent, resource) {
            Some(held) if held >= mode => return Ok(true),
            Some(_) => {}
            None if t.count(agent) >= max => {
                return Err(LockError::TooMany {
                    agent: agent.clone(),
                    max,
                });
            }
            None => {}
        }
        let blockers = t.blockers(agent, resource, mode);
        let queued = t.queued_ahead(agent, resource, mode, wait);
        if blockers.is_empty() && queued.is_empty() {
            t.grant(agent, resource, mode);
            return Ok(true);
        }
        let Some(id) = wait else {
            return Err(LockError::Conflict {
                resource: resource.clone(),
                holders: blockers,
                queued,
            });
        };
        t.waits.insert(
            id,
            Wait {
                agent: agent.clone(),
                resource: resource.clone(),
                mode,
            },
        );
        if let Some(cycle) = t.cycle_through(agent) {
            return Err(LockError::Deadlock {
                resource: resource.clone(),
                cycle,
            });
        }
        Ok(false)
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
        self.attempt(agent, resource, mode, None).map(|_| ())
    }

    /// Takes (or strengthens) a lock, waiting up to `wait` for conflicting
    /// holders to release it. `wait == 0` is [`LockManager::try_acquire`].
    ///
    /// Cancel-safe: dropping the future removes its wait-for edges.
    ///
    /// # Errors
    /// [`LockError::Conflict`] (only when `wait` is zero);
    /// [`LockError::Deadlock`] when waiting would close a cycle in the
    /// wait-for graph (checked when the wait starts and after every wake-up);
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
        // No representable deadline (an absurd `wait`): wait without one.
        let deadline = Instant::now().checked_add(wait);
        let guard = WaitGuard {
            manager: self,
            id: self.next_wait.fetch_add(1, Ordering::Relaxed),
        };
        loop {
            // Registered before the check, so a release between the check and
            // the await still wakes us.
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.attempt(agent, resource, mode, Some(guard.id))? {
                return Ok(());
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(LockError::Timeout {
                            resource: resource.clone(),
                            waited: wait,
                        });
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Releases a lock and wakes the waiters.
    ///
    /// # Errors
    /// [`LockError::NotHeld`] when the agent does not hold it.
    pub fn release(&self, agent: &AgentId, resource: &LockResource) -> Result<LockMode, LockError> {
        let mode = self.table().remove(agent, resource);
        match mode {
            Some(mode) => {
                self.released.notify_waiters();
                Ok(mode)
            }
            None => Err(LockError::NotHeld {
                resource: resource.clone(),
                agent: agent.clone(),
            }),
        }
    }

    /// Releases everything `agent` holds (it left, trapped or was killed),
    /// drops its wait-for edges and wakes the waiters. Returns what it held.
    pub fn release_all(&self, agent: &AgentId) -> Vec<(LockResource, LockMode)> {
        let released: Vec<(LockResource, LockMode)> = {
            let mut t = self.table();
            let mine: Vec<LockResource> = t
                .by_agent
                .get(agent)
                .map_or_else(Vec::new, |m| m.keys().cloned().collect());
            let released = mine
                .into_iter()
                .filter_map(|r| t.remove(agent, &r).map(|m| (r, m)))
                .collect();
            t.waits.retain(|_, w| &w.agent != agent);
            released
        };
        self.released.notify_waiters();
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
    use std::sync::Arc;

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

    #[tokio::test(start_paused = true)]
    async fn too_many_is_refused_before_waiting() {
        let m = LockManager::new(1);
        let (a, b) = (id("a"), id("b"));
        m.try_acquire(&a, &res("1"), LockMode::Read).unwrap();
        m.try_acquire(&b, &res("2"), LockMode::Write).unwrap();
        let start = Instant::now();
        assert!(matches!(
            m.acquire(&a, &res("2"), LockMode::Read, Duration::from_secs(5))
                .await,
            Err(LockError::TooMany { .. })
        ));
        assert_eq!(start.elapsed(), Duration::ZERO);
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

    #[tokio::test(start_paused = true)]
    async fn invalid_names_are_refused_by_acquire_too() {
        let m = LockManager::new(8);
        let r = m
            .acquire(
                &id("a"),
                &LockResource::key("\u{7}"),
                LockMode::Read,
                Duration::from_secs(1),
            )
            .await;
        assert!(matches!(r, Err(LockError::InvalidResource { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_granted_when_the_holder_releases() {
        let m = Arc::new(LockManager::new(8));
        let (a, b) = (id("a"), id("b"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Write).unwrap();
        let start = Instant::now();
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
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !waiter.is_finished(),
            "b still waits while a holds the lock"
        );
        m.release(&a, &r).unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(m.holders(&r), vec![(b, LockMode::Read)]);
        assert!(m.wait_for_edges().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_after_the_time_asked() {
        let m = LockManager::new(8);
        let (a, b) = (id("a"), id("b"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        let asked = Duration::from_millis(1500);
        let start = Instant::now();
        let got = m.acquire(&b, &r, LockMode::Exclusive, asked).await;
        assert_eq!(
            got,
            Err(LockError::Timeout {
                resource: r.clone(),
                waited: asked
            })
        );
        assert_eq!(start.elapsed(), asked, "it really waited");
        assert!(m.wait_for_edges().is_empty());
        assert_eq!(m.holders(&r), vec![(a, LockMode::Read)]);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_wait_fails_at_once() {
        let m = LockManager::new(8);
        let (a, b) = (id("a"), id("b"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        let got = m.acquire(&b, &r, LockMode::Write, Duration::ZERO).await;
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

    #[tokio::test(start_paused = true)]
    async fn the_agent_closing_a_cycle_gets_deadlock_and_the_other_proceeds() {
        let m = Arc::new(LockManager::new(8));
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
        let start = Instant::now();
        let got = m
            .acquire(&b, &r1, LockMode::Read, Duration::from_secs(60))
            .await;
        assert_eq!(
            got,
            Err(LockError::Deadlock {
                resource: r1.clone(),
                cycle: vec![b.clone(), a.clone()]
            })
        );
        assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
        assert_eq!(
            m.wait_for_edges(),
            vec![(a.clone(), b.clone())],
            "a keeps waiting"
        );
        assert!(!a_waits.is_finished());
        m.release(&b, &r2).unwrap();
        assert_eq!(a_waits.await.unwrap(), Ok(()));
        assert!(m.holds(&a, &r2, LockMode::Write));
        assert!(m.wait_for_edges().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgrade_deadlock_is_detected() {
        let m = Arc::new(LockManager::new(8));
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
        let got = m
            .acquire(&b, &r, LockMode::Write, Duration::from_secs(60))
            .await;
        assert!(
            matches!(&got, Err(LockError::Deadlock { cycle, .. }) if *cycle == vec![b.clone(), a.clone()]),
            "{got:?}"
        );
        m.release(&b, &r).unwrap();
        assert_eq!(a_up.await.unwrap(), Ok(()));
        assert_eq!(m.holders(&r), vec![(a, LockMode::Write)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_three_agent_cycle_is_detected() {
        let m = Arc::new(LockManager::new(8));
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
        let got = m
            .acquire(&c, &r1, LockMode::Write, Duration::from_secs(60))
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
        assert_eq!(b_waits.await.unwrap(), Ok(()));
        m.release_all(&b);
        assert_eq!(a_waits.await.unwrap(), Ok(()));
        assert_eq!(
            m.held_by(&a),
            vec![(r1, LockMode::Write), (r2, LockMode::Write)]
        );
        assert!(m.wait_for_edges().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn release_all_wakes_a_waiter() {
        let m = Arc::new(LockManager::new(8));
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
        let start = Instant::now();
        assert_eq!(
            m.release_all(&a),
            vec![
                (r1.clone(), LockMode::Read),
                (r2.clone(), LockMode::Exclusive)
            ]
        );
        assert!(m.held_by(&a).is_empty() && m.holders(&r1).is_empty());
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(m.holders(&r2), vec![(b, LockMode::Write)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_cannot_overtake_a_waiter() {
        let m = Arc::new(LockManager::new(8));
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
        // a releases; c asks before b runs again and is refused: b was first.
        m.release(&a, &r).unwrap();
        assert_eq!(
            m.try_acquire(&c, &r, LockMode::Read),
            Err(LockError::Conflict {
                resource: r.clone(),
                holders: vec![],
                queued: vec![(b.clone(), LockMode::Write)],
            })
        );
        assert_eq!(waiter.await.unwrap(), Ok(()));
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
    #[tokio::test(start_paused = true)]
    async fn a_waiting_writer_is_not_starved_by_later_readers() {
        let m = Arc::new(LockManager::new(8));
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
        assert_eq!(writer.await.unwrap(), Ok(()));
        assert!(!reader2.is_finished() && !reader3.is_finished());
        m.release(&w, &r).unwrap();
        assert_eq!(reader2.await.unwrap(), Ok(()));
        assert_eq!(reader3.await.unwrap(), Ok(()));
        assert_eq!(
            m.holders(&r),
            vec![(r2, LockMode::Read), (r3, LockMode::Read)]
        );
    }

    /// A queued writer that gives up (its deadline) lets the compatible
    /// requests behind it go at once.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_times_out_lets_those_behind_it_go() {
        let m = Arc::new(LockManager::new(8));
        let (r1, w, r2) = (id("r1"), id("w"), id("r2"));
        let r = res("doc");
        m.try_acquire(&r1, &r, LockMode::Read).unwrap();
        let writer = wait_in_background(&m, &w, &r, LockMode::Write, 1).await;
        let reader = wait_in_background(&m, &r2, &r, LockMode::Read, 60).await;
        assert!(matches!(
            writer.await.unwrap(),
            Err(LockError::Timeout { .. })
        ));
        assert_eq!(reader.await.unwrap(), Ok(()));
        assert_eq!(
            m.holders(&r),
            vec![(r1, LockMode::Read), (r2, LockMode::Read)]
        );
    }

    /// A waiter that left the queue is no longer waited for: the wait-for
    /// graph is derived afresh, so no cycle through it is reported.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_gone_from_the_queue_closes_no_cycle() {
        let m = Arc::new(LockManager::new(8));
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
        let (first, second) = y_task.await.unwrap();
        assert!(matches!(first, Err(LockError::Timeout { .. })), "{first:?}");
        assert!(
            matches!(second, Err(LockError::Timeout { .. })),
            "{second:?}"
        );
        x_wait.abort();
    }

    /// An upgrade by a holder is not queued behind the waiters (who wait for
    /// it anyway): no deadlock, and the waiter then waits for the stronger lock.
    #[tokio::test(start_paused = true)]
    async fn a_holder_upgrades_ahead_of_the_queue() {
        let m = Arc::new(LockManager::new(8));
        let (a, w) = (id("a"), id("w"));
        let r = res("doc");
        m.try_acquire(&a, &r, LockMode::Read).unwrap();
        let writer = wait_in_background(&m, &w, &r, LockMode::Write, 60).await;
        m.acquire(&a, &r, LockMode::Exclusive, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(m.holders(&r), vec![(a.clone(), LockMode::Exclusive)]);
        m.release(&a, &r).unwrap();
        assert_eq!(writer.await.unwrap(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_removes_its_edges() {
        let m = Arc::new(LockManager::new(8));
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
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert!(m.wait_for_edges().is_empty());
        // Its stale edge can no longer cause a false deadlock.
        m.try_acquire(&b, &res("other"), LockMode::Write).unwrap();
        let got = m
            .acquire(&a, &res("other"), LockMode::Write, Duration::from_secs(1))
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
}
