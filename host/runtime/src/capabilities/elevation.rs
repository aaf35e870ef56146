//! `elevation`: ask for a more privileged ring for a while. The adapter
//! only converts: the rules (targets, trust, sponsorship, TTL) are the
//! [`crate::gate::Governor`]'s, and the grant lands in the caller's
//! standing, so the very next host call is judged at the new ring.

use std::time::Duration;

use ahv_core::{Capability, Ring};
use wasmtime::component::Linker;

use super::{Has, View};
use crate::adapters::HostError;
use crate::bindings::WitError;
use crate::bindings::agent_hypervisor::agent::elevation;
use crate::gate::{ElevationAsk, ElevationGrant};
use crate::state::AgentState;

/// `elevation` needs nothing beyond the gate (its governor and standing).
#[derive(Debug, Default)]
pub(crate) struct Ctx;

/// Longest justification accepted, in bytes (it goes into the audit log).
const MAX_JUSTIFICATION: usize = 1024;
/// Longest attestation text accepted, in bytes.
const MAX_SPONSORSHIP: usize = 4096;

fn grant(g: ElevationGrant) -> elevation::Grant {
    elevation::Grant {
        ring: g.ring.number(),
        remaining_ms: u64::try_from(g.remaining.as_millis()).unwrap_or(u64::MAX),
    }
}

impl elevation::Host for View<'_, Ctx> {
    fn request(
        &mut self,
        ring: u8,
        ttl_secs: u32,
        justification: String,
        sponsorship: Option<String>,
    ) -> Result<elevation::Grant, HostError> {
        let now = self.gate.admit(Capability::Elevation, "request")?;
        let target = Ring::from_number(ring)
            .map_err(|e| HostError::Refused(WitError::Denied(format!("elevation: {e}"))))?;
        if justification.len() > MAX_JUSTIFICATION
            || sponsorship
                .as_ref()
                .is_some_and(|s| s.len() > MAX_SPONSORSHIP)
        {
            return Err(HostError::Refused(WitError::Quota(format!(
                "elevation: the justification may have {MAX_JUSTIFICATION} bytes and the sponsorship {MAX_SPONSORSHIP}"
            ))));
        }
        let ask = ElevationAsk {
            ring: target,
            ttl: (ttl_secs > 0).then(|| Duration::from_secs(u64::from(ttl_secs))),
            justification: &justification,
            sponsorship: sponsorship.as_deref(),
        };
        let g = self
            .gate
            .governor
            .clone()
            .request_elevation(self.gate.who(now), ask)?;
        Ok(grant(g))
    }

    fn relinquish(&mut self) -> Result<bool, HostError> {
        let now = self.gate.admit(Capability::Elevation, "relinquish")?;
        Ok(self
            .gate
            .governor
            .clone()
            .relinquish_elevation(self.gate.who(now))
            .is_some())
    }

    fn current(&mut self) -> Result<Option<elevation::Grant>, HostError> {
        self.gate.admit(Capability::Elevation, "current")?;
        Ok(self
            .gate
            .standing
            .elevation()
            .map(|(ring, remaining)| grant(ElevationGrant { ring, remaining })))
    }
}

/// Links `elevation`.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    elevation::add_to_linker::<_, Has<Ctx>>(l, |s| View {
        ctx: &s.caps.elevation,
        gate: &mut s.gate,
    })
}
