//! Child agents: the `spawn` capability's rules. A child joins its parent's
//! session at `min(parent's effective ring + 1, 3)`, never more privileged;
//! each ring limits how many live children an agent may have and how deep
//! they may nest; stopping, expelling or killing a parent does the same to
//! its children. Children are started only from components the host offers
//! ([`Hypervisor::offer_component`]), by name or SHA-256 digest.

use std::sync::atomic::Ordering;

use ahv_core::event::EventPayload;
use ahv_core::{AgentId, Ring, SessionId, TraceId};
use ahv_runtime::{AgentComponent, AgentError, GovernorFuture, Refusal, Who};

use crate::{Hypervisor, HypervisorError, JoinRequest, SessionEntry, lock};

/// Where a spawned child sits in its family.
#[derive(Debug, Clone)]
pub(crate) struct Spawned {
    /// Its parent.
    pub(crate) parent: AgentId,
    /// Its depth: its parent's plus one (agents that joined have depth 0).
    pub(crate) depth: u8,
}

/// Longest name a component may be offered under.
const MAX_COMPONENT_NAME: usize = 128;

impl Hypervisor {
    /// Offers `component` under `name`: agents with the `spawn` capability
    /// may start children from it, by this name or by its SHA-256 digest.
    /// Offering a name again replaces it.
    ///
    /// # Errors
    /// [`HypervisorError::Setup`] for an empty, over-long (> 128 bytes) or
    /// non-`[A-Za-z0-9._-]` name.
    pub fn offer_component(
        &self,
        name: &str,
        component: AgentComponent,
    ) -> Result<(), HypervisorError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_COMPONENT_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(HypervisorError::Setup(format!(
                "component name {name:?}: 1 to {MAX_COMPONENT_NAME} of A-Z a-z 0-9 . _ -"
            )));
        }
        lock(&self.inner.offered).insert(name.to_string(), component);
        Ok(())
    }

    /// The offered component named `key` (its name or its digest).
    fn offered(&self, key: &str) -> Option<(String, AgentComponent)> {
        let offered = lock(&self.inner.offered);
        if let Some(c) = offered.get(key) {
            return Some((key.to_string(), c.clone()));
        }
        let key = key.to_ascii_lowercase();
        offered
            .iter()
            .find(|(_, c)| c.hash_hex() == key)
            .map(|(name, c)| (name.clone(), c.clone()))
    }

    /// The live children of `agent` in `entry`'s session, sorted.
    pub(crate) fn children_of(&self, entry: &SessionEntry, agent: &AgentId) -> Vec<AgentId> {
        let mut list: Vec<AgentId> = lock(&entry.spawned)
            .iter()
            .filter(|(_, s)| &s.parent == agent)
            .map(|(child, _)| child.clone())
            .collect();
        list.sort();
        list
    }

    /// A participant's live children (host API).
    ///
    /// # Errors
    /// [`HypervisorError::UnknownSession`].
    pub fn children(
        &self,
        session: &SessionId,
        agent: &AgentId,
    ) -> Result<Vec<AgentId>, HypervisorError> {
        let entry = self.entry(session)?;
        Ok(self.children_of(&entry, agent))
    }

    /// Starts a child of `parent` (whose effective ring now is `ring`) from
    /// the offered component `key`. Emits `agent.spawned` (for the parent),
    /// then, once the child has joined, its `session.joined` and
    /// `ring.assigned`.
    pub(crate) async fn spawn_child(
        &self,
        session: SessionId,
        parent: AgentId,
        ring: Ring,
        key: String,
        trace: TraceId,
    ) -> Result<AgentId, Refusal> {
        let entry = self
            .entry(&session)
            .map_err(|e| Refusal::Denied(format!("spawn: {e}")))?;
        let (name, component) = self.offered(&key).ok_or_else(|| {
            Refusal::NotFound(format!(
                "spawn: no component {key:?} is offered by this host (by name or SHA-256 digest)"
            ))
        })?;
        let limits = self.inner.runtime.policy().limits(ring);
        let depth = lock(&entry.spawned)
            .get(&parent)
            .map_or(0, |s| s.depth)
            .saturating_add(1);
        if depth > limits.max_spawn_depth {
            return Err(Refusal::Denied(format!(
                "spawn: a child of {parent} would be at depth {depth}; {ring} allows {}",
                limits.max_spawn_depth
            )));
        }
        let live = self.children_of(&entry, &parent).len();
        if live >= limits.max_children as usize {
            return Err(Refusal::Denied(format!(
                "spawn: {parent} has {live} live children; {ring} allows {}",
                limits.max_children
            )));
        }
        let sigma = lock(&entry.gov)
            .participant(&parent)
            .map(|p| p.sigma)
            .ok_or_else(|| Refusal::Denied("spawn: the parent is not a participant".into()))?;
        let n = entry.spawn_counter.fetch_add(1, Ordering::Relaxed);
        let child = AgentId::new(format!("{parent}:child-{n}")).map_err(|e| {
            Refusal::Invalid(format!("spawn: the child's id would be invalid: {e}"))
        })?;
        let child_ring = Ring::from_number((ring.number() + 1).min(3)).unwrap_or(Ring::Sandbox);
        // Recorded first, so that the parent's removal during the join takes the child too.
        lock(&entry.spawned).insert(
            child.clone(),
            Spawned {
                parent: parent.clone(),
                depth,
            },
        );
        self.emit(
            &mut self.op_in(trace),
            &session,
            Some(&parent),
            EventPayload::AgentSpawned {
                child: child.clone(),
                ring: child_ring,
                component: name,
                depth: u64::from(depth),
            },
        );
        // Until the child has joined, a failed or cancelled spawn (the
        // parent's call dropped at its deadline, or its parent killed)
        // takes the record out again: no phantom child counts against the
        // parent's limit.
        let mut unrecord = Unrecord {
            entry: &entry,
            child: child.clone(),
            armed: true,
        };
        let request = JoinRequest::new(child.clone(), sigma).component(component);
        let why = format!("spawned by {parent} (ring {})", ring.number());
        match self
            .join_as(&session, request, Some((child_ring, why)))
            .await
        {
            Ok(_) => {
                unrecord.armed = false;
                Ok(child)
            }
            Err(e) => Err(Refusal::Denied(format!("spawn: {e}"))),
        }
    }

    /// Runs `child` for its parent.
    pub(crate) async fn run_child(
        &self,
        session: SessionId,
        parent: AgentId,
        child: String,
        input: String,
    ) -> Result<Result<String, String>, Refusal> {
        let entry = self
            .entry(&session)
            .map_err(|e| Refusal::Denied(format!("spawn: {e}")))?;
        let child = self.own_child(&entry, &parent, &child)?;
        match self.run_agent(&session, &child, &input).await {
            Ok(out) => Ok(out.result),
            Err(HypervisorError::Agent(
                e @ (AgentError::Trapped { .. }
                | AgentError::Poisoned { .. }
                | AgentError::AtCapacity { .. }),
            )) => Err(Refusal::Failed(format!("spawn: child {child}: {e}"))),
            Err(e) => Err(Refusal::Denied(format!("spawn: child {child}: {e}"))),
        }
    }

    /// `child`, if it names a live child of `parent`.
    fn own_child(
        &self,
        entry: &SessionEntry,
        parent: &AgentId,
        child: &str,
    ) -> Result<AgentId, Refusal> {
        let not_found = || Refusal::NotFound(format!("spawn: {parent} has no child {child:?}"));
        let child = AgentId::new(child).map_err(|_| not_found())?;
        match lock(&entry.spawned).get(&child) {
            Some(s) if &s.parent == parent => Ok(child),
            _ => Err(not_found()),
        }
    }

    /// Stops a child of `who` (and its children).
    pub(crate) fn stop_child(&self, who: Who<'_>, child: &str) -> Result<(), Refusal> {
        let entry = self
            .entry(who.session)
            .map_err(|e| Refusal::Denied(format!("spawn: {e}")))?;
        let child = self.own_child(&entry, who.agent, child)?;
        self.remove(
            &mut self.op(),
            &entry,
            &child,
            &format!("stopped by its parent {}", who.agent),
        );
        Ok(())
    }

    /// Boxes [`Hypervisor::spawn_child`] for the runtime's governor.
    pub(crate) fn spawn_future(
        &self,
        who: Who<'_>,
        key: &str,
    ) -> GovernorFuture<Result<AgentId, Refusal>> {
        let hv = self.clone();
        let (session, parent, ring, key, trace) = (
            who.session.clone(),
            who.agent.clone(),
            who.ring,
            key.to_string(),
            who.trace,
        );
        Box::pin(async move { hv.spawn_child(session, parent, ring, key, trace).await })
    }
}

/// Takes a spawned child's record out of `spawned` unless its join
/// completed (see `spawn_child`).
struct Unrecord<'a> {
    entry: &'a SessionEntry,
    child: AgentId,
    armed: bool,
}

impl Drop for Unrecord<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.entry.spawned).remove(&self.child);
        }
    }
}
