//! Joint liability: vouches and their release, slashing, quarantine and its
//! release, the ledger. Each change takes effect on the agent's next host
//! call (the gate reads its standing); slashes and quarantines need admin.

use std::time::Duration;

use ahv_trust::{Admission, QuarantineReason, VouchId};
use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::problem::Problem;
use crate::{Auth, State, admin_only, agent_id, operate, session_id};

/// A vouch to make.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VouchRequest {
    /// The agent that vouches (σ ≥ 0.50).
    pub voucher: String,
    /// The agent vouched for.
    pub vouchee: String,
    /// The share of the voucher's σ to bond, in (0, 1] (default 0.20).
    pub pct: Option<f64>,
}

/// An active vouch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VouchView {
    /// Its id in the session.
    pub id: u64,
    /// The agent that vouches.
    pub voucher: String,
    /// The agent vouched for.
    pub vouchee: String,
    /// The bonded amount (voucher σ × pct).
    pub bond: f64,
    /// The share of the voucher's σ bonded.
    pub pct: f64,
}

/// What a vouch did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VouchCreated {
    /// The vouch's id.
    pub id: u64,
    /// The bonded amount.
    pub bond: f64,
    /// The vouchee's effective score now.
    pub effective: f64,
    /// The vouchee's base ring now.
    pub ring: u8,
}

/// Vouches for an agent: bonds part of the voucher's σ; the vouchee's
/// σ_eff (and so its ring) rises on its next host call.
#[utoipa::path(post, path = "/v1/sessions/{session}/vouches", tag = "liability",
    params(("session" = String, Path)), request_body = VouchRequest,
    responses((status = 201, body = VouchCreated), (status = 409, body = Problem)))]
pub(crate) async fn vouch(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams(session): PathParams<String>,
    JsonBody(req): JsonBody<VouchRequest>,
) -> Result<(StatusCode, Json<VouchCreated>), Problem> {
    let voucher = agent_id(&req.voucher)?;
    let vouchee = agent_id(&req.vouchee)?;
    s.may_act_for(&caller, &voucher)?;
    s.may_act_for(&caller, &vouchee)?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("POST /v1/sessions/{{session}}/vouches voucher={voucher} vouchee={vouchee}"),
    )?;
    let r = s.hv.vouch(&id, &voucher, &vouchee, req.pct)?;
    Ok((
        StatusCode::CREATED,
        Json(VouchCreated {
            id: r.vouch.0,
            bond: r.bond,
            effective: r.effective,
            ring: r.ring.number(),
        }),
    ))
}

/// The session's active vouches.
#[utoipa::path(get, path = "/v1/sessions/{session}/vouches", tag = "liability",
    params(("session" = String, Path)),
    responses((status = 200, body = Vec<VouchView>), (status = 404, body = Problem)))]
pub(crate) async fn vouches(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    PathParams(session): PathParams<String>,
) -> Result<Json<Vec<VouchView>>, Problem> {
    let v = s.hv.vouches(&session_id(&session)?)?;
    Ok(Json(
        v.into_iter()
            .map(|v| VouchView {
                id: v.id.0,
                voucher: v.voucher.to_string(),
                vouchee: v.vouchee.to_string(),
                bond: v.bond,
                pct: v.pct,
            })
            .collect(),
    ))
}

/// Why a vouch is released.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseQuery {
    /// Recorded in the `liability.vouch_released` event (default `released`).
    reason: Option<String>,
}

/// Releases a vouch: the bond is returned and the vouchee's σ_eff falls
/// (a demotion takes effect on its next host call).
#[utoipa::path(delete, path = "/v1/sessions/{session}/vouches/{vouch}", tag = "liability",
    params(("session" = String, Path), ("vouch" = u64, Path), ReleaseQuery),
    responses((status = 200, body = VouchView), (status = 409, body = Problem)))]
pub(crate) async fn release_vouch(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, vouch)): PathParams<(String, u64)>,
    QueryParams(q): QueryParams<ReleaseQuery>,
) -> Result<Json<VouchView>, Problem> {
    crate::reason_text(q.reason.as_deref().unwrap_or_default())?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("DELETE /v1/sessions/{{session}}/vouches/{vouch}"),
    )?;
    let v = s.hv.release_vouch(
        &id,
        VouchId(vouch),
        q.reason.as_deref().unwrap_or("released"),
    )?;
    Ok(Json(VouchView {
        id: v.id.0,
        voucher: v.voucher.to_string(),
        vouchee: v.vouchee.to_string(),
        bond: v.bond,
        pct: v.pct,
    }))
}

/// A slash to execute.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlashRequest {
    /// ω, the share of each voucher's σ forfeited, in [0, 1] (default the
    /// policy's, 0.5).
    pub omega: Option<f64>,
    /// The severity recorded in the ledger, in [0, 1].
    pub severity: f64,
    /// Why (recorded in events and the audit log).
    pub reason: String,
}

/// One σ change a slash made.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SigmaChangeView {
    /// The agent.
    pub agent: String,
    /// σ before.
    pub before: f64,
    /// σ after.
    pub after: f64,
    /// The hop of the slashed agent that caused it (0: the one named).
    pub hop: u32,
}

/// What a slash did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SlashView {
    /// Every σ change, in order.
    pub changes: Vec<SigmaChangeView>,
    /// Ids of the bonds released.
    pub released: Vec<u64>,
    /// Agents slashed by the cascade.
    pub cascaded: Vec<String>,
    /// Each touched agent still in the session, with its base ring now.
    pub rings: Vec<(String, u8)>,
}

/// Slashes an agent (admin only): its σ → 0, its vouchers forfeit ω of
/// theirs, bonds are released, the cascade goes at most 2 hops.
#[utoipa::path(post, path = "/v1/sessions/{session}/agents/{agent}/slash", tag = "liability",
    params(("session" = String, Path), ("agent" = String, Path)), request_body = SlashRequest,
    responses((status = 200, body = SlashView), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub(crate) async fn slash(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
    JsonBody(req): JsonBody<SlashRequest>,
) -> Result<Json<SlashView>, Problem> {
    admin_only(&caller, "slashing")?;
    let agent = agent_id(&agent)?;
    crate::reason_text(&req.reason)?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("POST /v1/sessions/{{session}}/agents/{{agent}}/slash agent={agent}"),
    )?;
    let reason = format!("{} (by {})", req.reason, caller.name);
    let o = s.hv.slash(&id, &agent, req.omega, req.severity, &reason)?;
    Ok(Json(SlashView {
        changes: o
            .report
            .changes
            .iter()
            .map(|c| SigmaChangeView {
                agent: c.agent.to_string(),
                before: c.before,
                after: c.after,
                hop: c.hop,
            })
            .collect(),
        released: o.report.released.iter().map(|v| v.id.0).collect(),
        cascaded: o
            .report
            .cascaded
            .iter()
            .map(|c| c.agent.to_string())
            .collect(),
        rings: o
            .rings
            .iter()
            .map(|(a, r)| (a.to_string(), r.number()))
            .collect(),
    }))
}

/// How long a quarantine lasts when the request does not say (SEMANTICS:
/// quarantine before termination, default 300 s).
const DEFAULT_QUARANTINE_S: u64 = 300;

/// A quarantine to impose.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRequest {
    /// behavioral_drift, liability_violation, ring_breach,
    /// rate_limit_exceeded, manual (default) or cascade_slash.
    pub reason: Option<String>,
    /// Free text recorded with it.
    #[serde(default)]
    pub detail: String,
    /// How long, in seconds (default 300; at most 86400).
    pub duration_s: Option<u64>,
}

/// A quarantine record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuarantineView {
    /// The agent held.
    pub agent: String,
    /// Why it was first quarantined.
    pub reason: String,
    /// Why it was last quarantined.
    pub last_reason: String,
    /// When it ends, in ms on the hypervisor's clock.
    pub ends_at_ms: u64,
    /// How many times it was escalated.
    pub escalations: u32,
}

/// Quarantines an agent (admin only): until it ends, every call but
/// `context` and `log` is refused; quarantining again escalates the record.
#[utoipa::path(post, path = "/v1/sessions/{session}/agents/{agent}/quarantine", tag = "liability",
    params(("session" = String, Path), ("agent" = String, Path)), request_body = QuarantineRequest,
    responses((status = 200, body = QuarantineView), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub(crate) async fn quarantine(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
    JsonBody(req): JsonBody<QuarantineRequest>,
) -> Result<Json<QuarantineView>, Problem> {
    admin_only(&caller, "quarantining")?;
    let agent = agent_id(&agent)?;
    let reason: QuarantineReason = req
        .reason
        .as_deref()
        .unwrap_or("manual")
        .parse()
        .map_err(|e| Problem::bad_request(format!("reason: {e}")))?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("POST /v1/sessions/{{session}}/agents/{{agent}}/quarantine agent={agent}"),
    )?;
    let detail = if req.detail.is_empty() {
        format!("by {}", caller.name)
    } else {
        format!("{} (by {})", req.detail, caller.name)
    };
    let r = s.hv.quarantine(
        &id,
        &agent,
        reason,
        &detail,
        Some(Duration::from_secs(
            req.duration_s.unwrap_or(DEFAULT_QUARANTINE_S),
        )),
    )?;
    Ok(Json(QuarantineView {
        agent: r.agent.to_string(),
        reason: r.reason.to_string(),
        last_reason: r.last_reason.to_string(),
        ends_at_ms: u64::try_from(r.ends_at.as_millis()).unwrap_or(u64::MAX),
        escalations: r.escalations,
    }))
}

/// Whether a quarantine was in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Released {
    /// True when the agent was quarantined and is now released.
    pub released: bool,
}

/// Ends an agent's quarantine (admin only).
#[utoipa::path(delete, path = "/v1/sessions/{session}/agents/{agent}/quarantine", tag = "liability",
    params(("session" = String, Path), ("agent" = String, Path)),
    responses((status = 200, body = Released), (status = 403, body = Problem)))]
pub(crate) async fn release(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
) -> Result<Json<Released>, Problem> {
    admin_only(&caller, "releasing a quarantine")?;
    let agent = agent_id(&agent)?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("DELETE /v1/sessions/{{session}}/agents/{{agent}}/quarantine agent={agent}"),
    )?;
    Ok(Json(Released {
        released: s.hv.release(&id, &agent)?,
    }))
}

/// An agent's standing in the persistent ledger.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerView {
    /// The agent.
    pub agent: String,
    /// Its risk, in [0, 1].
    pub risk: f64,
    /// What a join would get: admit, probation (ring 3 at most) or deny.
    pub admission: String,
    /// Its entries, oldest first (`kind`, `severity`, `at`).
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<serde_json::Value>,
}

/// An agent's ledger: risk, admission decision and entries (after every
/// record made so far is stored).
#[utoipa::path(get, path = "/v1/ledger/{agent}", tag = "liability",
    params(("agent" = String, Path)),
    responses((status = 200, body = LedgerView), (status = 500, body = Problem)))]
pub(crate) async fn ledger(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    PathParams(agent): PathParams<String>,
) -> Result<Json<LedgerView>, Problem> {
    let agent = agent_id(&agent)?;
    let a = s.hv.assess(&agent).await?;
    let entries = s.hv.ledger_entries(&agent).await?;
    Ok(Json(LedgerView {
        agent: agent.to_string(),
        risk: a.risk,
        admission: match a.admission {
            Admission::Admit => "admit",
            Admission::Probation => "probation",
            Admission::Deny => "deny",
        }
        .into(),
        entries: entries
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or(serde_json::Value::Null))
            .collect(),
    }))
}
