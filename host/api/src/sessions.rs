//! Sessions and their agents: create, join, activate, run, leave, kill,
//! terminate, snapshot, restore, and read-only views of their files and
//! state.

use std::time::Duration;

use ahv_core::AgentId;
use ahv_governance::session::{Consistency, SessionConfig};
use ahv_hypervisor::{HypervisorError, JoinRequest, SessionInfo};
use ahv_runtime::LogSource;
use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{JsonBody, PathParams, QueryParams, RawBody};
use crate::problem::Problem;
use crate::{Auth, State, admin_only, agent_id, components, operate, operator_agent, session_id};

/// A new session's configuration; every field is optional and defaults as
/// the hypervisor's `SessionConfig` does.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// `strong` (default) or `eventual`.
    pub consistency: Option<String>,
    /// Most participants at once, 1..=1000 (default 10).
    pub max_participants: Option<u32>,
    /// Longest the session may live, in seconds, 1..=604800 (default 3600).
    pub max_duration_s: Option<u64>,
    /// Least effective score admitted above ring 3 (default 0.60).
    pub min_eff_score: Option<f64>,
    /// Whether governed actions are audited (default true).
    pub audit: Option<bool>,
    /// `read-committed` (default), `snapshot` or `serializable`.
    pub isolation: Option<String>,
}

/// A participant of a session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ParticipantView {
    /// The agent.
    pub agent: String,
    /// Its trust score σ (after any slash).
    pub sigma: f64,
    /// The ring it holds now (0 root … 3 sandbox), elevations and demotions
    /// included; for an archived session, the ring it held at the end.
    pub ring: u8,
    /// Its effective score σ_eff (σ plus vouching), when the session is live.
    pub effective: Option<f64>,
}

/// A session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Its id.
    pub id: String,
    /// created, handshaking, active, terminating or archived.
    pub state: String,
    /// Who created it (`ahv:operator:<name>` for API callers).
    pub creator: String,
    /// Its consistency mode now (a join may have forced strong).
    pub consistency: String,
    /// Its isolation level.
    pub isolation: String,
    /// When it runs out of time, in ms on the hypervisor's clock.
    pub expires_at_ms: u64,
    /// Its participants.
    pub participants: Vec<ParticipantView>,
}

pub(crate) fn view(s: &crate::Shared, info: SessionInfo) -> SessionView {
    let live = !matches!(info.state, ahv_governance::session::SessionState::Archived);
    SessionView {
        id: info.id.to_string(),
        state: info.state.to_string(),
        creator: info.creator.to_string(),
        consistency: match info.consistency {
            Consistency::Strong => "strong".into(),
            Consistency::Eventual => "eventual".into(),
        },
        isolation: info.isolation.to_string(),
        expires_at_ms: u64::try_from(info.expires_at.as_millis()).unwrap_or(u64::MAX),
        participants: info
            .participants
            .iter()
            .map(|p| {
                let ring = live
                    .then(|| s.hv.ring(&info.id, &p.agent).ok())
                    .flatten()
                    .unwrap_or(p.ring);
                ParticipantView {
                    agent: p.agent.to_string(),
                    sigma: p.sigma,
                    ring: ring.number(),
                    effective: live
                        .then(|| s.hv.effective_trust(&info.id, &p.agent).ok())
                        .flatten(),
                }
            })
            .collect(),
    }
}

fn config(req: CreateSession) -> Result<SessionConfig, Problem> {
    let mut c = SessionConfig::default();
    if let Some(v) = req.consistency {
        c.consistency = match v.as_str() {
            "strong" => Consistency::Strong,
            "eventual" => Consistency::Eventual,
            other => {
                return Err(Problem::bad_request(format!(
                    "consistency {other:?}: expected strong or eventual"
                )));
            }
        };
    }
    if let Some(v) = req.max_participants {
        c.max_participants = v;
    }
    if let Some(v) = req.max_duration_s {
        c.max_duration = Duration::from_secs(v);
    }
    if let Some(v) = req.min_eff_score {
        c.min_eff_score = v;
    }
    if let Some(v) = req.audit {
        c.audit = v;
    }
    if let Some(v) = req.isolation {
        c.isolation = v
            .parse()
            .map_err(|e| Problem::bad_request(format!("isolation: {e}")))?;
    }
    Ok(c)
}

/// Creates a session (it opens its handshake at once). Operators may then
/// drive it; the creator is recorded as `ahv:operator:<name>`.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions",
    request_body = CreateSession,
    responses((status = 201, body = SessionView), (status = 400, body = Problem),
        (status = 403, body = Problem)))]
pub(crate) async fn create(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    JsonBody(req): JsonBody<CreateSession>,
) -> Result<(StatusCode, Json<SessionView>), Problem> {
    crate::not_auditor(&caller, "creating a session")?;
    let config = config(req)?;
    let id = s.hv.create_session(config, operator_agent(&caller)?)?;
    if caller.role != crate::auth::Role::Admin {
        // The ledger is shared: an operator must not be able to work an
        // agent's slashes off by ending empty sessions with it.
        s.hv.set_clean_session_credit(&id, false)?;
    }
    {
        let mut owners = s.owners.lock().unwrap_or_else(|p| p.into_inner());
        // Archived sessions change no more: their owners are forgotten.
        if owners.len() >= 1024 {
            let live: std::collections::HashSet<_> =
                s.hv.sessions()
                    .into_iter()
                    .filter(|i| i.state != ahv_governance::session::SessionState::Archived)
                    .map(|i| i.id)
                    .collect();
            owners.retain(|k, _| live.contains(k));
        }
        owners.insert(id.clone(), caller.name.clone());
    }
    let info = s.hv.session(&id)?;
    Ok((StatusCode::CREATED, Json(view(&s, info))))
}

/// The live sessions, then the most recently archived ones.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    responses((status = 200, body = Vec<SessionView>)))]
pub(crate) async fn list(axum::extract::State(s): State, Auth(_c): Auth) -> Json<Vec<SessionView>> {
    Json(s.hv.sessions().into_iter().map(|i| view(&s, i)).collect())
}

/// One session.
#[utoipa::path(get, path = "/v1/sessions/{session}", tag = "sessions",
    params(("session" = String, Path)),
    responses((status = 200, body = SessionView), (status = 404, body = Problem)))]
pub(crate) async fn show(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    PathParams(session): PathParams<String>,
) -> Result<Json<SessionView>, Problem> {
    let info = s.hv.session(&session_id(&session)?)?;
    Ok(Json(view(&s, info)))
}

/// Activates a session (it needs at least one participant).
#[utoipa::path(post, path = "/v1/sessions/{session}/activate", tag = "sessions",
    params(("session" = String, Path)),
    responses((status = 200, body = SessionView), (status = 409, body = Problem)))]
pub(crate) async fn activate(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams(session): PathParams<String>,
    // Read and dropped, so the connection stays reusable.
    RawBody(_body): RawBody,
) -> Result<Json<SessionView>, Problem> {
    let id = operate(
        &s,
        &caller,
        &session,
        "POST /v1/sessions/{session}/activate",
    )?;
    s.hv.activate_session(&id)?;
    Ok(Json(view(&s, s.hv.session(&id)?)))
}

/// How a session ended.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TerminationView {
    /// The session.
    pub session: String,
    /// `requested` or `expired`.
    pub reason: String,
    /// Participants at the end.
    pub participants: usize,
    /// The commitment sealing its audit log (absent with auditing off).
    pub commitment: Option<CommitmentView>,
}

/// A commitment sealing a session's audit log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommitmentView {
    /// Its index in the commitment log.
    pub index: u64,
    /// How many deltas it covers.
    pub tree_size: u64,
    /// The Merkle root over them, hex.
    pub root: String,
}

/// Terminates and archives a session: every instance stops, its audit log
/// is sealed by a commitment. Answers once that commitment is on disk (under
/// group commit, at the end of the round that writes it), so a returned
/// commitment survives a crash; if it is not on disk within
/// [`ahv_audit::DURABLE_WAIT`] the answer is a 500 `seal-not-durable` problem
/// naming the session and the commitment index (the session is terminated
/// all the same).
#[utoipa::path(post, path = "/v1/sessions/{session}/terminate", tag = "sessions",
    params(("session" = String, Path)),
    responses((status = 200, body = TerminationView), (status = 409, body = Problem)))]
pub(crate) async fn terminate(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams(session): PathParams<String>,
    // Read and dropped, so the connection stays reusable.
    RawBody(_body): RawBody,
) -> Result<Json<TerminationView>, Problem> {
    let id = operate(
        &s,
        &caller,
        &session,
        "POST /v1/sessions/{session}/terminate",
    )?;
    let hv = s.hv.clone();
    // Sealing, and waiting for its group commit: off the async workers.
    let t = crate::blocking("terminating", move || {
        let t = hv.terminate_session(&id).map_err(Problem::from)?;
        hv.wait_durable(t, ahv_audit::DURABLE_WAIT)
            .map_err(Problem::from)
    })
    .await??;
    Ok(Json(TerminationView {
        session: t.session.to_string(),
        reason: match t.reason {
            ahv_core::TerminationReason::Requested => "requested".into(),
            ahv_core::TerminationReason::Expired => "expired".into(),
        },
        participants: t.participants,
        commitment: t.commitment.map(|c| CommitmentView {
            index: c.index,
            tree_size: c.commitment.tree_size,
            root: c.commitment.root.to_hex(),
        }),
    }))
}

/// A join request.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// The agent's id (a DID or similar; not starting with `ahv:`).
    pub agent: String,
    /// Its trust score σ in [0, 1].
    pub sigma: f64,
    /// The id of an uploaded component to instantiate for it; without one
    /// the agent takes part through the API only.
    pub component: Option<String>,
    /// Grants ring 0 (root), witnessed by the caller (admin only).
    #[serde(default)]
    pub root: bool,
}

/// Where a join placed the agent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Joined {
    /// The agent.
    pub agent: String,
    /// Its ring.
    pub ring: u8,
}

/// Joins an agent (with a component and σ) to a session: the ledger is
/// consulted (deny, probation at ring 3, or admit) and its instance is
/// created in its ring.
#[utoipa::path(post, path = "/v1/sessions/{session}/agents", tag = "agents",
    params(("session" = String, Path)), request_body = Join,
    responses((status = 201, body = Joined), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub(crate) async fn join(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams(session): PathParams<String>,
    JsonBody(req): JsonBody<Join>,
) -> Result<(StatusCode, Json<Joined>), Problem> {
    if req.root {
        admin_only(&caller, "a ring-0 (root) join")?;
    }
    let agent = agent_id(&req.agent)?;
    s.may_act_for(&caller, &agent)?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("POST /v1/sessions/{{session}}/agents agent={agent}"),
    )?;
    let mut r = JoinRequest::new(agent.clone(), req.sigma);
    if let Some(c) = &req.component {
        r = r.component(components::component(&s, c)?);
    }
    if req.root {
        r = r.root(format!("ahv:operator:{}", caller.name));
    }
    let ring = s.hv.join_session(&id, r).await?;
    Ok((
        StatusCode::CREATED,
        Json(Joined {
            agent: agent.to_string(),
            ring: ring.number(),
        }),
    ))
}

/// A session's participants, with their rings and effective scores now.
#[utoipa::path(get, path = "/v1/sessions/{session}/agents", tag = "agents",
    params(("session" = String, Path)),
    responses((status = 200, body = Vec<ParticipantView>), (status = 404, body = Problem)))]
pub(crate) async fn participants(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    PathParams(session): PathParams<String>,
) -> Result<Json<Vec<ParticipantView>>, Problem> {
    let info = s.hv.session(&session_id(&session)?)?;
    Ok(Json(view(&s, info).participants))
}

/// One participant of a session, with its ring and effective score now.
#[utoipa::path(get, path = "/v1/sessions/{session}/agents/{agent}", tag = "agents",
    params(("session" = String, Path), ("agent" = String, Path)),
    responses((status = 200, body = ParticipantView), (status = 404, body = Problem)))]
pub(crate) async fn participant(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
) -> Result<Json<ParticipantView>, Problem> {
    let agent = agent_id(&agent)?;
    let info = s.hv.session(&session_id(&session)?)?;
    view(&s, info)
        .participants
        .into_iter()
        .find(|p| p.agent == agent.as_str())
        .map(Json)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-a-participant",
                "The agent is not a participant of the session",
                format!("agent {agent} is not a participant of session {session}"),
            )
        })
}

/// The agent leaves the session (its private files stay).
#[utoipa::path(delete, path = "/v1/sessions/{session}/agents/{agent}", tag = "agents",
    params(("session" = String, Path), ("agent" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub(crate) async fn leave(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
) -> Result<StatusCode, Problem> {
    let agent = agent_id(&agent)?;
    s.may_act_for(&caller, &agent)?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("DELETE /v1/sessions/{{session}}/agents/{{agent}} agent={agent}"),
    )?;
    s.hv.leave_session(&id, &agent)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Input for an agent's `run`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// The input string handed to the agent's `run`.
    #[serde(default)]
    pub input: String,
}

/// One log line of a call.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogView {
    /// `log`, `stdout` or `stderr`.
    pub source: String,
    /// The level (for `log` lines).
    pub level: String,
    /// The text.
    pub message: String,
}

/// What an agent's `run` returned.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    /// Whether `run` returned its answer (`true`) or its own failure.
    pub ok: bool,
    /// The answer, or the agent's failure message.
    pub output: String,
    /// The call's log lines.
    pub logs: Vec<LogView>,
    /// Log lines dropped over the per-call budget.
    pub dropped_log_lines: usize,
    /// Fuel used.
    pub fuel_used: u64,
    /// The call's trace id (32 hex digits).
    pub trace: String,
    /// Wall-clock time of the call, in µs.
    pub elapsed_us: u64,
}

/// Runs the agent's `run` in its live instance, under its ring now. A trap
/// (a breach, fuel, memory, deadline, a kill) is a 422 problem naming the
/// cause.
#[utoipa::path(post, path = "/v1/sessions/{session}/agents/{agent}/run", tag = "agents",
    params(("session" = String, Path), ("agent" = String, Path)), request_body = RunInput,
    responses((status = 200, body = RunView), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
pub(crate) async fn run(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
    JsonBody(req): JsonBody<RunInput>,
) -> Result<Json<RunView>, Problem> {
    let agent = agent_id(&agent)?;
    s.may_act_for(&caller, &agent)?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("POST /v1/sessions/{{session}}/agents/{{agent}}/run agent={agent}"),
    )?;
    let out = s.hv.run_agent(&id, &agent, &req.input).await?;
    let (ok, output) = match out.result {
        Ok(v) => (true, v),
        Err(e) => (false, e),
    };
    Ok(Json(RunView {
        ok,
        output,
        logs: out
            .logs
            .iter()
            .map(|l| LogView {
                source: match l.source {
                    LogSource::Log => "log".into(),
                    LogSource::Stdout => "stdout".into(),
                    LogSource::Stderr => "stderr".into(),
                    LogSource::Host => "host".into(),
                },
                level: format!("{:?}", l.level).to_lowercase(),
                message: l.message.clone(),
            })
            .collect(),
        dropped_log_lines: out.dropped_log_lines,
        fuel_used: out.fuel_used,
        trace: out.trace.to_string(),
        elapsed_us: u64::try_from(out.elapsed.as_micros()).unwrap_or(u64::MAX),
    }))
}

/// Why an agent is killed.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// The reason (behavioral_drift, rate_limit, ring_breach, manual, …).
    #[serde(default = "manual")]
    pub reason: String,
}

fn manual() -> String {
    "manual".into()
}

/// A saga step a kill interrupted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KilledStepView {
    /// The saga.
    pub saga: String,
    /// The step.
    pub step: String,
    /// The substitute that runs it now (hand-off), if any.
    pub substitute: Option<String>,
}

/// What a kill did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KillView {
    /// The agents stopped and removed: the one named and its children.
    pub terminated: Vec<String>,
    /// In-flight saga steps handed to a substitute.
    pub handed_off: Vec<KilledStepView>,
    /// In-flight saga steps without a substitute (their sagas compensate).
    pub compensated: Vec<KilledStepView>,
}

/// Kills an agent (admin only): its code stops within an epoch tick, its
/// in-flight saga steps go to its substitute or are compensated.
#[utoipa::path(post, path = "/v1/sessions/{session}/agents/{agent}/kill", tag = "agents",
    params(("session" = String, Path), ("agent" = String, Path)), request_body = KillRequest,
    responses((status = 200, body = KillView), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub(crate) async fn kill(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, agent)): PathParams<(String, String)>,
    req: Option<JsonBody<KillRequest>>,
) -> Result<Json<KillView>, Problem> {
    admin_only(&caller, "killing an agent")?;
    let req = req.map_or_else(|| KillRequest { reason: manual() }, |JsonBody(r)| r);
    let agent = agent_id(&agent)?;
    crate::reason_text(&req.reason)?;
    let id = operate(
        &s,
        &caller,
        &session,
        &format!(
            "POST /v1/sessions/{{session}}/agents/{{agent}}/kill agent={agent} reason={}",
            req.reason
        ),
    )?;
    let r = s.hv.kill_agent(&id, &agent, &req.reason)?;
    Ok(Json(KillView {
        terminated: r.terminated.iter().map(AgentId::to_string).collect(),
        handed_off: r
            .handed_off
            .iter()
            .map(|(k, sub)| KilledStepView {
                saga: k.saga.clone(),
                step: k.step.clone(),
                substitute: Some(sub.to_string()),
            })
            .collect(),
        compensated: r
            .compensated
            .iter()
            .map(|k| KilledStepView {
                saga: k.saga.clone(),
                step: k.step.clone(),
                substitute: None,
            })
            .collect(),
    }))
}

/// A snapshot of a session's files.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SnapshotView {
    /// Its id, for restore.
    pub id: u64,
    /// Regular files in it.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// Snapshots the session's files (only while active).
#[utoipa::path(post, path = "/v1/sessions/{session}/snapshots", tag = "sessions",
    params(("session" = String, Path)),
    responses((status = 201, body = SnapshotView), (status = 409, body = Problem)))]
pub(crate) async fn snapshot(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams(session): PathParams<String>,
    // Read and dropped, so the connection stays reusable.
    RawBody(_body): RawBody,
) -> Result<(StatusCode, Json<SnapshotView>), Problem> {
    let id = operate(
        &s,
        &caller,
        &session,
        "POST /v1/sessions/{session}/snapshots",
    )?;
    let hv = s.hv.clone();
    let snap =
        crate::blocking("snapshot", move || hv.snapshot(&id).map_err(Problem::from)).await??;
    Ok((
        StatusCode::CREATED,
        Json(SnapshotView {
            id: snap.id,
            files: snap.files,
            bytes: snap.bytes,
        }),
    ))
}

/// How the participants differ from those a restored snapshot recorded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestoreView {
    /// In the session now, not when the snapshot was taken.
    pub joined: Vec<String>,
    /// In the snapshot, not in the session now.
    pub left: Vec<String>,
    /// In both, in another ring now: `agent then->now`.
    pub rings: Vec<String>,
}

/// Restores a snapshot of the session's files (only while active).
#[utoipa::path(post, path = "/v1/sessions/{session}/snapshots/{snapshot}/restore", tag = "sessions",
    params(("session" = String, Path), ("snapshot" = u64, Path)),
    responses((status = 200, body = RestoreView), (status = 409, body = Problem)))]
pub(crate) async fn restore(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams((session, snapshot)): PathParams<(String, u64)>,
    // Read and dropped, so the connection stays reusable.
    RawBody(_body): RawBody,
) -> Result<Json<RestoreView>, Problem> {
    let id = operate(
        &s,
        &caller,
        &session,
        &format!("POST /v1/sessions/{{session}}/snapshots/{snapshot}/restore"),
    )?;
    let hv = s.hv.clone();
    let d = crate::blocking("restore", move || {
        hv.restore(&id, snapshot).map_err(Problem::from)
    })
    .await??;
    Ok(Json(RestoreView {
        joined: d.joined.iter().map(AgentId::to_string).collect(),
        left: d.left.iter().map(AgentId::to_string).collect(),
        rings: d
            .rings
            .iter()
            .map(|r| format!("{} {}->{}", r.agent, r.then.number(), r.now.number()))
            .collect(),
    }))
}

/// Which directory to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirQuery {
    /// The directory (`shared`, `shared/drafts`, or a path in `agent`'s
    /// private area); default: the top, where `shared` is.
    dir: Option<String>,
    /// Whose private area paths outside `shared/` are in.
    agent: Option<String>,
}

/// Which file to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileQuery {
    /// The file's path (`shared/report.txt`, or a path in `agent`'s private area).
    path: String,
    /// Whose private area paths outside `shared/` are in.
    agent: Option<String>,
}

fn live(
    s: &crate::Shared,
    session: &str,
) -> Result<std::sync::Arc<ahv_governance::session_core::SessionCore>, Problem> {
    let id = session_id(session)?;
    match s.hv.session_core(&id) {
        Ok(core) => Ok(core),
        Err(HypervisorError::UnknownSession { .. }) if s.hv.session(&id).is_ok() => {
            Err(Problem::new(
                StatusCode::CONFLICT,
                "session-archived",
                "The session is archived",
                format!("session {id} is archived; its files stay in the server's state directory"),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Whose area a path outside `shared/` is in: the agent named, or nobody's
/// (the caller's own operator id, which has no files).
fn owner(caller: &crate::auth::Caller, agent: Option<&str>) -> Result<AgentId, Problem> {
    match agent {
        Some(a) => agent_id(a),
        None => operator_agent(caller),
    }
}

/// The names in a directory of the session's files: the shared area, or an
/// agent's private area (read-only; the API reads as the hypervisor, checks
/// no ACL and marks nothing as seen).
#[utoipa::path(get, path = "/v1/sessions/{session}/files", tag = "files",
    params(("session" = String, Path), DirQuery),
    responses((status = 200, body = Vec<String>), (status = 404, body = Problem)))]
pub(crate) async fn files(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams(session): PathParams<String>,
    QueryParams(q): QueryParams<DirQuery>,
) -> Result<Json<Vec<String>>, Problem> {
    let core = live(&s, &session)?;
    let me = owner(&caller, q.agent.as_deref())?;
    let dir = q.dir.unwrap_or_default();
    core.files()
        .peek_list(&me, &dir)
        .map(Json)
        .map_err(|e| file_problem(&dir, e))
}

fn file_problem(path: &str, e: ahv_governance::vfs::VfsError) -> Problem {
    use ahv_governance::vfs::VfsError;
    match e {
        VfsError::NotFound { .. } => Problem::not_found(e.to_string()),
        VfsError::InvalidPath(_) => Problem::bad_request(format!("{path:?}: {e}")),
        other => Problem::new(
            StatusCode::CONFLICT,
            "files",
            "A session file operation failed",
            other.to_string(),
        ),
    }
}

/// A file of the session, as bytes (read-only; see `files`).
#[utoipa::path(get, path = "/v1/sessions/{session}/file", tag = "files",
    params(("session" = String, Path), FileQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = Problem)))]
pub(crate) async fn file(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams(session): PathParams<String>,
    QueryParams(q): QueryParams<FileQuery>,
) -> Result<Vec<u8>, Problem> {
    let core = live(&s, &session)?;
    let me = owner(&caller, q.agent.as_deref())?;
    core.files()
        .peek(&me, &q.path)
        .map_err(|e| file_problem(&q.path, e))
}

/// Which keys to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrefixQuery {
    /// Only keys starting with this (default: all).
    prefix: Option<String>,
}

/// Which key to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyQuery {
    /// The key.
    key: String,
}

/// A value of the session's shared state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StateValue {
    /// The key.
    pub key: String,
    /// The value as UTF-8 text, when it is.
    pub text: Option<String>,
    /// The value in hex.
    pub hex: String,
    /// Its version (1 for the first write of the key).
    pub version: u64,
    /// The agent that wrote it.
    pub writer: String,
}

/// The keys of the session's shared state (read-only: the latest values,
/// taking no lock and marking nothing as seen).
#[utoipa::path(get, path = "/v1/sessions/{session}/state", tag = "state",
    params(("session" = String, Path), PrefixQuery),
    responses((status = 200, body = Vec<String>), (status = 404, body = Problem)))]
pub(crate) async fn state_keys(
    axum::extract::State(s): State,
    Auth(_caller): Auth,
    PathParams(session): PathParams<String>,
    QueryParams(q): QueryParams<PrefixQuery>,
) -> Result<Json<Vec<String>>, Problem> {
    let core = live(&s, &session)?;
    core.state()
        .peek_keys(q.prefix.as_deref().unwrap_or(""))
        .map(Json)
        .map_err(|e| Problem::bad_request(e.to_string()))
}

/// One value of the session's shared state, with its version (read-only).
#[utoipa::path(get, path = "/v1/sessions/{session}/state/value", tag = "state",
    params(("session" = String, Path), KeyQuery),
    responses((status = 200, body = StateValue), (status = 404, body = Problem)))]
pub(crate) async fn state_value(
    axum::extract::State(s): State,
    Auth(_caller): Auth,
    PathParams(session): PathParams<String>,
    QueryParams(q): QueryParams<KeyQuery>,
) -> Result<Json<StateValue>, Problem> {
    let core = live(&s, &session)?;
    let v = core.state().peek(&q.key).ok_or_else(|| {
        Problem::not_found(format!("session {session} has no state key {:?}", q.key))
    })?;
    Ok(Json(StateValue {
        key: q.key,
        text: String::from_utf8(v.value.clone()).ok(),
        hex: hex::encode(&v.value),
        version: v.version,
        writer: v.writer.to_string(),
    }))
}
