//! Sagas: submit a definition (YAML or JSON) to run in a session, read its
//! progress, and split the blame for a failed one.

use std::collections::HashMap;
use std::sync::Mutex;

use ahv_saga::{SagaDefinition, SagaId, SagaReport};
use ahv_trust::AttributionPolicy;
use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{PathParams, QueryParams, TextBody};
use crate::problem::Problem;
use crate::{Auth, State, session_id};

/// Sagas whose run ended in an error before any record was written (an
/// agent missing from the session, say), by id: `GET /v1/sagas/{saga}`
/// reports it.
#[derive(Default)]
pub(crate) struct Failures(Mutex<(HashMap<String, Problem>, std::collections::VecDeque<String>)>);

/// Most setup failures kept (the oldest are forgotten first).
const MAX_FAILURES: usize = 10_000;

impl Failures {
    fn insert(&self, saga: String, p: Problem) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *g;
        if map.len() >= MAX_FAILURES
            && let Some(old) = order.pop_front()
        {
            map.remove(&old);
        }
        order.push_back(saga.clone());
        map.insert(saga, p);
    }

    fn get(&self, saga: &str) -> Option<Problem> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(saga)
            .cloned()
    }
}

/// A submitted saga.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// Its id: `GET /v1/sagas/{saga}` shows its progress.
    pub saga: String,
}

/// One step of a saga.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// The step's id.
    pub id: String,
    /// Its state (pending, executing, committed, failed, compensating,
    /// compensated, compensation_failed).
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// Its output, once committed.
    pub output: Option<String>,
    /// Its last error.
    pub error: Option<String>,
    /// Time spent in it, in ms.
    pub elapsed_ms: u64,
    /// Whether a valid checkpoint let it be skipped.
    pub skipped: bool,
}

/// A saga's progress.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SagaView {
    /// Its id.
    pub saga: String,
    /// running, compensating, completed, failed or escalated.
    pub state: String,
    /// Its steps.
    pub steps: Vec<StepView>,
}

fn view(r: &SagaReport) -> SagaView {
    SagaView {
        saga: r.saga.to_string(),
        state: r.state.to_string(),
        steps: r
            .steps
            .iter()
            .map(|s| StepView {
                id: s.id.clone(),
                state: s.state.to_string(),
                attempts: s.attempts,
                output: s.output.clone(),
                error: s.error.clone(),
                elapsed_ms: u64::try_from(s.elapsed.as_millis()).unwrap_or(u64::MAX),
                skipped: s.skipped,
            })
            .collect(),
    }
}

/// Submits a saga definition (`application/yaml` or `application/json`)
/// to run in the session; it runs in the background and is durable in the
/// state directory. Definition errors name the step and the field.
#[utoipa::path(post, path = "/v1/sessions/{session}/sagas", tag = "sagas",
    params(("session" = String, Path)),
    request_body(content(
        (String = "application/yaml"),
        (String = "application/json"),
    )),
    responses((status = 202, body = Submitted), (status = 400, body = Problem),
        (status = 409, body = Problem)))]
pub(crate) async fn submit(
    axum::extract::State(s): State,
    Auth(caller): Auth,
    PathParams(session): PathParams<String>,
    headers: HeaderMap,
    TextBody(body): TextBody,
) -> Result<(StatusCode, Json<Submitted>), Problem> {
    let id = session_id(&session)?;
    s.may_operate(&caller, &id)?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let def = if json {
        SagaDefinition::from_json(&body)
    } else {
        SagaDefinition::from_yaml(&body)
    }
    .map_err(|e| Problem::bad_request(format!("saga definition: {e}")))?;
    for step in &def.steps {
        s.may_act_for(&caller, &crate::agent_id(step.agent.as_str())?)?;
    }
    let saga = s.hv.new_saga_id();
    s.record(
        &caller,
        &id,
        &format!(
            "POST /v1/sessions/{{session}}/sagas saga={saga} name={}",
            def.name
        ),
    );
    let (hv, shared, sid) = (s.hv.clone(), s.clone(), saga.clone());
    // The saga runs in its own task, in the request's trace.
    let trace = ahv_runtime::trace_context::current();
    tokio::spawn(async move {
        let run = hv.run_saga_as(&id, sid.clone(), def);
        let result = match trace {
            Some(t) => ahv_runtime::trace_context::with_trace(t, run).await,
            None => run.await,
        };
        if let Err(e) = result {
            shared
                .saga_failures
                .insert(sid.to_string(), Problem::from(e));
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            saga: saga.to_string(),
        }),
    ))
}

fn saga_id(s: &str) -> Result<SagaId, Problem> {
    SagaId::new(s).map_err(|e| Problem::bad_request(format!("saga id {s:?}: {e}")))
}

/// The sagas in the saga store.
#[utoipa::path(get, path = "/v1/sagas", tag = "sagas",
    responses((status = 200, body = Vec<String>)))]
pub(crate) async fn list(
    axum::extract::State(s): State,
    Auth(_c): Auth,
) -> Result<Json<Vec<String>>, Problem> {
    Ok(Json(
        s.hv.sagas()?.iter().map(ToString::to_string).collect(),
    ))
}

/// A saga's progress; a saga that could not start is its error.
#[utoipa::path(get, path = "/v1/sagas/{saga}", tag = "sagas",
    params(("saga" = String, Path)),
    responses((status = 200, body = SagaView), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub(crate) async fn show(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    PathParams(saga): PathParams<String>,
) -> Result<Json<SagaView>, Problem> {
    let id = saga_id(&saga)?;
    if let Some(p) = s.saga_failures.get(id.as_str()) {
        return Err(p);
    }
    match s.hv.saga_records(&id) {
        Ok(r) if r.is_empty() => Err(Problem::not_found(format!(
            "no saga {saga} (not submitted, or it has not started yet)"
        ))),
        Ok(_) => Ok(Json(view(&s.hv.saga_report(&id)?))),
        Err(e) => Err(e.into()),
    }
}

/// Which attribution to compute.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlameQuery {
    /// Use the reference's 0.5 / 0.3 / 0.2 heuristic instead of Shapley values.
    #[serde(default)]
    heuristic: bool,
}

/// One agent's share of the blame.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShareView {
    /// The agent.
    pub agent: String,
    /// Its share, in [0, 1]; the shares sum to 1 when anyone is blamed.
    pub share: f64,
}

/// How the blame for a saga splits among its agents.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttributionView {
    /// The saga.
    pub saga: String,
    /// Each agent's share.
    pub shares: Vec<ShareView>,
    /// The agent whose step failed, if one did.
    pub direct_cause: Option<String>,
    /// How it was computed (no-harm, exact, sampled with its bound, heuristic).
    pub method: String,
}

/// Splits the blame for a failed or escalated saga among its agents
/// (Shapley values of the saga game; a completed saga blames nobody).
#[utoipa::path(get, path = "/v1/sagas/{saga}/attribution", tag = "sagas",
    params(("saga" = String, Path), BlameQuery),
    responses((status = 200, body = AttributionView), (status = 404, body = Problem)))]
pub(crate) async fn attribution(
    axum::extract::State(s): State,
    Auth(_c): Auth,
    PathParams(saga): PathParams<String>,
    QueryParams(q): QueryParams<BlameQuery>,
) -> Result<Json<AttributionView>, Problem> {
    let id = saga_id(&saga)?;
    let policy = if q.heuristic {
        AttributionPolicy::Heuristic
    } else {
        AttributionPolicy::default()
    };
    // Shapley values: exact up to 16 agents, sampled above (seconds for a
    // large saga): off the async workers.
    let hv = s.hv.clone();
    let _two_at_a_time = s
        .attributions
        .acquire()
        .await
        .map_err(|e| Problem::internal(format!("waiting to attribute: {e}")))?;
    let a = crate::blocking("attributing the saga", move || {
        hv.saga_attribution(&id, &policy).map_err(Problem::from)
    })
    .await??;
    Ok(Json(AttributionView {
        saga,
        shares: a
            .shares
            .iter()
            .map(|s| ShareView {
                agent: s.agent.to_string(),
                share: s.share,
            })
            .collect(),
        direct_cause: a.direct_cause.as_ref().map(ToString::to_string),
        method: format!("{:?}", a.method),
    }))
}
