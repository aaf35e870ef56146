//! Rings: the ring table, and changing one agent's ring in a session
//! (elevation with a TTL, its revocation, demotion). Every change takes
//! effect on the agent's next host call through the gate.

use std::time::Duration;

use ahv_core::Ring;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::problem::Problem;
use crate::{Auth, State, admin_only, agent_id, session_id};

/// One row of the ring table.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RingView {
    /// The ring number (0 root … 3 sandbox).
    pub ring: u8,
    /// Its name.
    pub name: String,
    /// The capabilities linked for real; every other one is a breach.
    pub capabilities: Vec<String>,
    /// Wasm fuel per call.
    pub fuel_per_call: u64,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline per call, in ms.
    pub deadline_ms: u64,
    /// Most live children at once.
    pub max_children: u32,
}

/// The ring table in force (the default one or the policy file's).
#[utoipa::path(get, path = "/v1/rings", tag = "rings",
    responses((status = 200, body = Vec<RingView>)))]
pub(crate) async fn table(axum::extract::State(s): State, Auth(_c): Auth) -> Json<Vec<RingView>> {
    let policy = s.hv.runtime().policy();
    Json(
        Ring::ALL
            .iter()
            .map(|&r| {
                let l = policy.limits(r);
                RingView {
                    ring: r.number(),
                    name: r.name().to_string(),
                    capabilities: l.capabilities.iter().map(|c| c.to_string()).collect(),
                    fuel_per_call: l.fuel_per_call,
                    memory_bytes: l.memory_bytes,
                    deadline_ms: u64::try_from(l.deadline.as_millis()).unwrap_or(u64::MAX),
                    max_children: l.max_children,
                }
            })
            .collect(),
    )
}

fn ring(n: u8) -> Result<Ring, Problem> {
    Ring::ALL
        .into_iter()
        .find(|r| r.number() == n)
        .ok_or_else(|| Problem::bad_request(format!("ring {n}: rings are 0 to 3")))
}

/// An elevation to grant.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ElevationRequest {
    /// The ring to grant (1 or 2; never 0).
    pub ring: u8,
    /// How long, in seconds (clamped to the policy's 1..=max TTL; default 300).
    pub ttl_s: Option<u64>,
    /// Why (recorded in the `ring.elevated` event).
    pub justification: String,
}

/// An agent's ring now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RingNow {
    /// The agent.
    pub agent: String,
    /// Its effective ring now.
    pub ring: u8,
}

/// Grants an agent a more privileged ring for a limited time (admin only;
/// the operator is the sponsor). Ring 0 is never granted by elevation.
#[utoipa::path(post, path = "/v1/sessions/{session}/agents/{agent}/elevation", tag = "rings",
    params(("session" = String, Path), ("agent" = String, Path)), request_body = ElevationRequest,
    responses((status = 200, body = RingNow), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub(crate) async fn elevate(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
    JsonBody(req): JsonBody<ElevationRequest>,
) -> Result<Json<RingNow>, Problem> {
    admin_only(&caller, "granting an elevation")?;
    let agent = agent_id(&agent)?;
    let target = ring(req.ring)?;
    let id = session_id(&session)?;
    crate::reason_text(&req.justification)?;
    s.record(
        &caller,
        &id,
        &format!(
            "POST /v1/sessions/{{session}}/agents/{{agent}}/elevation agent={agent} ring={}",
            req.ring
        ),
    );
    s.hv.grant_elevation(
        &id,
        &agent,
        target,
        Duration::from_secs(req.ttl_s.unwrap_or(300)),
        &format!("{} (by {})", req.justification, caller.name),
    )?;
    Ok(Json(RingNow {
        ring: s.hv.ring(&id, &agent)?.number(),
        agent: agent.to_string(),
    }))
}

/// Why a ring is taken away.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonQuery {
    /// Recorded in the event (default `revoked by operator`).
    reason: Option<String>,
}

/// Whether an elevation was in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    /// True when one was in force and is now revoked.
    pub revoked: bool,
    /// The agent's ring now.
    pub ring: u8,
}

/// Revokes an agent's elevation at once.
#[utoipa::path(delete, path = "/v1/sessions/{session}/agents/{agent}/elevation", tag = "rings",
    params(("session" = String, Path), ("agent" = String, Path), ReasonQuery),
    responses((status = 200, body = Revoked), (status = 403, body = Problem)))]
pub(crate) async fn revoke(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<ReasonQuery>,
) -> Result<Json<Revoked>, Problem> {
    let agent = agent_id(&agent)?;
    let id = session_id(&session)?;
    s.may_operate(&caller, &id)?;
    s.may_act_for(&caller, &agent)?;
    let reason = q.reason.unwrap_or_else(|| "revoked by operator".into());
    crate::reason_text(&reason)?;
    s.record(
        &caller,
        &id,
        &format!("DELETE /v1/sessions/{{session}}/agents/{{agent}}/elevation agent={agent}"),
    );
    let revoked =
        s.hv.revoke_elevation(&id, &agent, &format!("{reason} (by {})", caller.name))?;
    Ok(Json(Revoked {
        revoked,
        ring: s.hv.ring(&id, &agent)?.number(),
    }))
}

/// A demotion.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoteRequest {
    /// The ring to demote to (less privileged than the agent's now).
    pub ring: u8,
    /// Why.
    pub reason: String,
}

/// Demotes an agent: its ring is capped there for the rest of the session
/// (a later vouch does not lift it back). A ring that is not less
/// privileged than its base ring changes nothing.
#[utoipa::path(post, path = "/v1/sessions/{session}/agents/{agent}/demote", tag = "rings",
    params(("session" = String, Path), ("agent" = String, Path)), request_body = DemoteRequest,
    responses((status = 200, body = RingNow), (status = 403, body = Problem)))]
pub(crate) async fn demote(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
    JsonBody(req): JsonBody<DemoteRequest>,
) -> Result<Json<RingNow>, Problem> {
    let agent = agent_id(&agent)?;
    let target = ring(req.ring)?;
    let id = session_id(&session)?;
    s.may_operate(&caller, &id)?;
    s.may_act_for(&caller, &agent)?;
    crate::reason_text(&req.reason)?;
    s.record(
        &caller,
        &id,
        &format!(
            "POST /v1/sessions/{{session}}/agents/{{agent}}/demote agent={agent} ring={}",
            req.ring
        ),
    );
    s.hv.demote(
        &id,
        &agent,
        target,
        &format!("{} (by {})", req.reason, caller.name),
    )?;
    Ok(Json(RingNow {
        ring: s.hv.ring(&id, &agent)?.number(),
        agent: agent.to_string(),
    }))
}
