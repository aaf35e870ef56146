//! `spawn` (ring 1): start, run and stop child agents in the caller's
//! session. The rules (the child's ring, per-ring limits on children and
//! depth, cascade stops) are the [`crate::gate::Governor`]'s; a child's run
//! is awaited under the caller's own deadline and kill switch.

use std::time::Instant;

use ahv_core::Capability;
use wasmtime::component::Linker;

use super::{Has, View};
use crate::adapters::HostError;
use crate::bindings::WitError;
use crate::bindings::agent_hypervisor::agent::spawn;
use crate::state::AgentState;
use crate::trap::Killed;

/// `spawn` needs nothing beyond the gate (its governor).
#[derive(Debug, Default)]
pub(crate) struct Ctx;

/// Longest component name or child id accepted, in bytes.
const MAX_NAME: usize = 512;
/// Largest input handed to a child, in bytes (as `Agent::run` allows).
const MAX_INPUT: usize = crate::agent::MAX_INPUT_BYTES;

fn too_long(what: &str, len: usize, max: usize) -> HostError {
    HostError::Refused(WitError::Quota(format!(
        "spawn: the {what} has {len} bytes; at most {max}"
    )))
}

impl spawn::Host for View<'_, Ctx> {
    async fn start(&mut self, component: String) -> Result<String, HostError> {
        let ring = self.gate.admit(Capability::Spawn, "start")?;
        if component.len() > MAX_NAME {
            return Err(too_long("component name", component.len(), MAX_NAME));
        }
        let start = self
            .gate
            .governor
            .clone()
            .spawn_child(self.gate.who(ring), &component);
        let kill = self.gate.kill.clone();
        tokio::select! {
            r = start => Ok(r?.to_string()),
            () = kill.cancelled() => Err(HostError::Trap(wasmtime::Error::new(
                kill.killed().unwrap_or(Killed { reason: "killed".into() }),
            ))),
        }
    }

    async fn run(
        &mut self,
        child: String,
        input: String,
    ) -> Result<Result<String, String>, HostError> {
        self.gate.admit(Capability::Spawn, "run")?;
        if child.len() > MAX_NAME {
            return Err(too_long("child id", child.len(), MAX_NAME));
        }
        if input.len() > MAX_INPUT {
            return Err(too_long("input", input.len(), MAX_INPUT));
        }
        let left = self
            .gate
            .call_deadline
            .saturating_duration_since(Instant::now());
        let run = self.gate.governor.clone().run_child(
            self.gate.session.clone(),
            self.gate.agent.clone(),
            child.clone(),
            input,
        );
        let kill = self.gate.kill.clone();
        tokio::select! {
            r = run => Ok(r?),
            () = tokio::time::sleep(left) => Err(HostError::Refused(WitError::Timeout(format!(
                "spawn: child {child} did not answer within the caller's deadline"
            )))),
            () = kill.cancelled() => Err(HostError::Trap(wasmtime::Error::new(
                kill.killed().unwrap_or(Killed { reason: "killed".into() }),
            ))),
        }
    }

    fn stop(&mut self, child: String) -> Result<(), HostError> {
        let ring = self.gate.admit(Capability::Spawn, "stop")?;
        if child.len() > MAX_NAME {
            return Err(too_long("child id", child.len(), MAX_NAME));
        }
        Ok(self
            .gate
            .governor
            .clone()
            .stop_child(self.gate.who(ring), &child)?)
    }

    fn children(&mut self) -> Result<Vec<String>, HostError> {
        let ring = self.gate.admit(Capability::Spawn, "children")?;
        let list = self.gate.governor.clone().children(self.gate.who(ring))?;
        Ok(list.into_iter().map(|a| a.to_string()).collect())
    }
}

/// Links `spawn`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    spawn::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &s.caps.spawn,
        gate: &mut s.gate,
    })
}
