//! The HTTP API of Agent Hypervisor (`ahv serve`): shared sessions of
//! governed Wasm agents, their files and state, joint liability, sagas and
//! the event history, over the [`Hypervisor`] facade only — this crate holds
//! no governance logic, it authenticates, authorizes, converts and delegates.
//!
//! - Every route but `/v1/health` and `/openapi.json` needs a bearer token
//!   from the tokens file ([`auth`]); the token's role decides what the
//!   caller may do, and the caller's name is recorded in the session's events
//!   and audit log (`operator.request`) before the operation runs.
//! - Errors are RFC 9457 problem details ([`problem::Problem`]).
//! - Request bodies are bounded ([`ApiLimits`]); each caller has a request
//!   budget (a token bucket), refused with 429 and `Retry-After`.
//! - The OpenAPI document is generated from the handlers themselves
//!   (`utoipa`), so a route cannot exist without being in it.
//!
//! # Wiring
//!
//! ```
//! use std::sync::Arc;
//! use ahv_api::{Api, ApiLimits, auth::{Caller, Role, Tokens}};
//! use ahv_hypervisor::Hypervisor;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let state = tempfile::tempdir()?;
//! let hv = Arc::new(Hypervisor::builder().state_dir(state.path()).build()?);
//! let tokens = Tokens::none().with(
//!     "ahv_secret",
//!     Caller { name: "ops".into(), role: Role::Admin, sessions: vec![], agents: vec![] },
//! );
//! let api = Api::new(hv, tokens, ApiLimits::default());
//! let router: axum::Router = api.router();
//! // axum::serve(tokio::net::TcpListener::bind("127.0.0.1:7878").await?, router).await?;
//! # drop(router);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
pub mod auth;
mod components;
mod dashboard;
mod events;
mod extract;
mod liability;
pub mod mcp;
mod metrics;
pub mod problem;
mod rings;
mod sagas;
mod sessions;
pub mod telemetry;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ahv_core::{AgentId, SessionId};
use ahv_hypervisor::Hypervisor;
use ahv_runtime::AgentComponent;
use axum::Json;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role, Tokens};
use crate::problem::Problem;

/// Bounds on what one caller may send.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiLimits {
    /// Largest JSON request body, in bytes (default 1 MiB).
    pub max_json_bytes: usize,
    /// Largest component upload, in bytes (default 64 MiB: a Python agent
    /// built with componentize-py is ~18 MB).
    pub max_component_bytes: usize,
    /// Requests per second each caller may make on average (default 50).
    pub requests_per_second: f64,
    /// How many requests a caller may make at once after a pause (default 100).
    pub burst: f64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_json_bytes: 1 << 20,
            max_component_bytes: 64 << 20,
            requests_per_second: 50.0,
            burst: 100.0,
        }
    }
}

/// An admitted component the server keeps for joins, by the hex SHA-256 of
/// its bytes.
struct Stored {
    component: AgentComponent,
    bytes: usize,
    uploaded_by: String,
}

/// A caller's request budget.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) hv: Arc<Hypervisor>,
    tokens: Tokens,
    limits: ApiLimits,
    components: RwLock<BTreeMap<String, Stored>>,
    /// Who created each session (operators act on their own sessions).
    owners: Mutex<HashMap<SessionId, String>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    saga_failures: sagas::Failures,
    /// Compiles at once (each takes a core and, for a Python agent, seconds).
    compiles: tokio::sync::Semaphore,
    /// Audit verifications and proofs at once (each reads and hashes the log).
    audits: tokio::sync::Semaphore,
    /// Saga attributions at once (each may sample Shapley values for seconds).
    attributions: tokio::sync::Semaphore,
    /// Live event streams open per caller (see `events::MAX_STREAMS_PER_CALLER`).
    pub(crate) streams: Arc<Mutex<HashMap<String, usize>>>,
    /// Every event, for live streams (sent only while someone listens).
    live: tokio::sync::broadcast::Sender<Arc<ahv_core::Event>>,
    subscription: ahv_core::SubscriptionId,
    /// Flipped when the server shuts down: live streams end.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.hv.events().unsubscribe(self.subscription);
    }
}

/// The API: build it with [`Api::new`], then serve [`Api::router`].
#[derive(Clone)]
pub struct Api {
    shared: Arc<Shared>,
}

type State = axum::extract::State<Arc<Shared>>;

impl Api {
    /// An API over `hv`, accepting `tokens`, bounded by `limits`.
    pub fn new(hv: Arc<Hypervisor>, tokens: Tokens, limits: ApiLimits) -> Api {
        let (live, _) = tokio::sync::broadcast::channel(events::STREAM_BUFFER);
        let tx = live.clone();
        let subscription = hv.events().subscribe(move |e: &ahv_core::Event| {
            // Called on every emit: nearly free while nobody streams.
            if tx.receiver_count() > 0 {
                let _ = tx.send(Arc::new(e.clone()));
            }
        });
        Api {
            shared: Arc::new(Shared {
                hv,
                tokens,
                limits,
                components: RwLock::new(BTreeMap::new()),
                owners: Mutex::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
                saga_failures: sagas::Failures::default(),
                compiles: tokio::sync::Semaphore::new(2),
                audits: tokio::sync::Semaphore::new(1),
                attributions: tokio::sync::Semaphore::new(2),
                streams: Arc::default(),
                live,
                subscription,
                stop: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Ends every live event stream (and refuses none: new streams end at
    /// once). Call it when the server starts shutting down: a graceful
    /// shutdown waits for open connections, and a stream would never close.
    pub fn stop_streams(&self) {
        self.shared.stop.send_replace(true);
    }

    /// The hypervisor behind the API.
    pub fn hypervisor(&self) -> &Arc<Hypervisor> {
        &self.shared.hv
    }

    /// The OpenAPI document of every route [`Api::router`] serves.
    pub fn openapi(&self) -> serde_json::Value {
        finish_openapi(&self.parts().1)
    }

    /// The routes, with `/openapi.json` serving [`Api::openapi`] and the
    /// live dashboard at `/`.
    pub fn router(&self) -> axum::Router {
        let (router, doc) = self.parts();
        let doc = Arc::new(finish_openapi(&doc));
        router
            .route(
                "/openapi.json",
                axum::routing::get(move || {
                    let doc = doc.clone();
                    async move { Json((*doc).clone()) }
                }),
            )
            .route("/", axum::routing::get(dashboard::index))
            .route("/dashboard.js", axum::routing::get(dashboard::script))
            .route("/dashboard.css", axum::routing::get(dashboard::style))
            .merge(mcp::session_routes(&self.shared))
    }

    /// Only the MCP endpoint `/mcp` (streamable HTTP), serving the agents of
    /// `session` to the tokens' callers (`ahv mcp --listen`): admins and
    /// operators call the agents they may act for; auditors are refused.
    pub fn mcp_router(&self, session: SessionId) -> axum::Router {
        mcp::standalone_routes(&self.shared, session)
    }

    fn parts(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        let json_limit = DefaultBodyLimit::max(self.shared.limits.max_json_bytes);
        let upload = OpenApiRouter::new()
            .routes(routes!(components::upload))
            .layer(DefaultBodyLimit::max(
                self.shared.limits.max_component_bytes,
            ));
        let rest = OpenApiRouter::new()
            .routes(routes!(health))
            .routes(routes!(components::list))
            .routes(routes!(components::show))
            .routes(routes!(sessions::create, sessions::list))
            .routes(routes!(sessions::show))
            .routes(routes!(sessions::activate))
            .routes(routes!(sessions::terminate))
            .routes(routes!(sessions::join, sessions::participants))
            .routes(routes!(sessions::participant, sessions::leave))
            .routes(routes!(sessions::run))
            .routes(routes!(sessions::kill))
            .routes(routes!(sessions::snapshot))
            .routes(routes!(sessions::restore))
            .routes(routes!(sessions::files))
            .routes(routes!(sessions::file))
            .routes(routes!(sessions::state_keys))
            .routes(routes!(sessions::state_value))
            .routes(routes!(liability::vouch, liability::vouches))
            .routes(routes!(liability::release_vouch))
            .routes(routes!(liability::slash))
            .routes(routes!(liability::quarantine, liability::release))
            .routes(routes!(liability::ledger))
            .routes(routes!(sagas::submit))
            .routes(routes!(sagas::list))
            .routes(routes!(sagas::show))
            .routes(routes!(sagas::attribution))
            .routes(routes!(events::query))
            .routes(routes!(events::stats))
            .routes(routes!(events::stream))
            .routes(routes!(stats))
            .routes(routes!(metrics::scrape))
            .routes(routes!(rings::table))
            .routes(routes!(rings::elevate, rings::revoke))
            .routes(routes!(rings::demote))
            .routes(routes!(audit::status))
            .routes(routes!(audit::verify))
            .routes(routes!(audit::proof))
            .layer(json_limit);
        OpenApiRouter::with_openapi(ApiDoc::openapi())
            .merge(upload)
            .merge(rest)
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                trace_request,
            ))
            .with_state(self.shared.clone())
            .split_for_parts()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Agent Hypervisor API",
        description = "Shared sessions of governed WebAssembly agents: rings, files, state, joint liability, sagas, events. Every route but /v1/health and /openapi.json needs `Authorization: Bearer <token>`; errors are RFC 9457 problem details."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The answers every route may give besides its own: problems for a
/// malformed request, a missing or unknown token, a body too large, a body
/// of the wrong shape, a used-up budget, a server failure.
const COMMON_PROBLEMS: [(&str, &str); 7] = [
    (
        "400",
        "The request is malformed (an id, a path, a query, a field)",
    ),
    ("401", "No bearer token, or one the server does not know"),
    ("403", "The caller's role does not allow it"),
    ("413", "The request body is too large"),
    (
        "422",
        "The JSON body has the wrong shape (the field is named)",
    ),
    (
        "429",
        "The caller's request budget is used up (see Retry-After)",
    ),
    ("500", "The server failed (its ledger store, its audit log)"),
];

/// The generated document, finished: problem answers are
/// `application/problem+json` (utoipa writes every body as
/// `application/json`), and every operation lists [`COMMON_PROBLEMS`]
/// (and 404 where its path names something, 409 in a session)
/// (`/v1/health` and the document itself need no token and take no body,
/// but may still fail).
fn finish_openapi(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).unwrap_or(serde_json::Value::Null);
    let problem_ref = "#/components/schemas/Problem";
    let problem = serde_json::json!({
        "application/problem+json": { "schema": { "$ref": problem_ref } }
    });
    if let Some(paths) = v.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (path, item) in paths.iter_mut() {
            // A path that names something may not find it; one in a session
            // may meet a session rule (its state, its expiry).
            let mut extra: Vec<(&str, &str)> = Vec::new();
            if path.contains('{') {
                extra.push(("404", "No such session, agent, component, saga or file"));
            }
            if path.contains("{session}") {
                extra.push((
                    "409",
                    "A session rule refuses it (its state, expiry, or an archived session)",
                ));
                extra.push((
                    "503",
                    "The host has no room for another instance now (see Retry-After)",
                ));
            }
            let Some(ops) = item.as_object_mut() else {
                continue;
            };
            for op in ops.values_mut() {
                let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                else {
                    continue;
                };
                for r in responses.values_mut() {
                    let Some(content) = r.get_mut("content").and_then(|c| c.as_object_mut()) else {
                        continue;
                    };
                    let is_problem = content
                        .get("application/json")
                        .and_then(|c| c.pointer("/schema/$ref"))
                        .and_then(|r| r.as_str())
                        == Some(problem_ref);
                    if is_problem && let Some(c) = content.remove("application/json") {
                        content.insert("application/problem+json".into(), c);
                    }
                }
                for &(status, why) in COMMON_PROBLEMS.iter().chain(&extra) {
                    responses.entry(status).or_insert_with(
                        || serde_json::json!({ "description": why, "content": problem.clone() }),
                    );
                }
            }
        }
    }
    v
}

/// The server's liveness and version.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` while the server answers.
    pub status: String,
    /// The server's version.
    pub version: String,
    /// Where the liability ledger lives (`sqlite`, `postgres`, `memory`).
    pub ledger: String,
}

/// Liveness: answers without a token.
#[utoipa::path(get, path = "/v1/health", tag = "server", security(()),
    responses((status = 200, description = "The server is up", body = Health)))]
async fn health(axum::extract::State(s): State) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ledger: s.hv.ledger_backend().into(),
    })
}

/// Counts of what the server holds now.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Stats {
    /// Sessions by state (live ones and the recently archived).
    pub sessions: std::collections::BTreeMap<String, usize>,
    /// Participants of live sessions.
    pub participants: usize,
    /// Admitted components.
    pub components: usize,
    /// Events in the history.
    pub events: usize,
}

/// Counts of sessions by state, participants, components and events.
#[utoipa::path(get, path = "/v1/stats", tag = "server",
    responses((status = 200, body = Stats)))]
async fn stats(axum::extract::State(s): State, Auth(_c): Auth) -> Json<Stats> {
    let mut sessions = std::collections::BTreeMap::new();
    let mut participants = 0;
    for i in s.hv.sessions() {
        if i.state != ahv_governance::session::SessionState::Archived {
            participants += i.participants.len();
        }
        *sessions.entry(i.state.to_string()).or_insert(0) += 1;
    }
    Json(Stats {
        sessions,
        participants,
        components: s.components.read().unwrap_or_else(|p| p.into_inner()).len(),
        events: s.hv.events().len(),
    })
}

/// The authenticated caller of a request (the `Authorization: Bearer`
/// header), after its request budget was charged.
pub(crate) struct Auth(pub(crate) Caller);

impl FromRequestParts<Arc<Shared>> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Shared>) -> Result<Auth, Response> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = header.and_then(|h| {
            let (scheme, rest) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        });
        let Some(token) = token else {
            return Err(
                Problem::unauthorized("send `Authorization: Bearer <token>`").into_response(),
            );
        };
        let Some(caller) = s.tokens.authenticate(token.trim()) else {
            return Err(
                Problem::unauthorized("the bearer token is not known to this server")
                    .into_response(),
            );
        };
        s.charge(&caller.name).map_err(|r| *r)?;
        Ok(Auth(caller.clone()))
    }
}

impl Shared {
    /// Takes one request from `caller`'s budget, or refuses with 429.
    fn charge(&self, caller: &str) -> Result<(), Box<Response>> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (rate, burst) = (self.limits.requests_per_second, self.limits.burst);
        let b = buckets.entry(caller.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64(((1.0 - b.tokens) / rate.max(1e-9)).min(3600.0));
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut res = Problem::rate_limited(ms).into_response();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        Err(Box::new(res))
    }

    /// Refuses unless `caller` may change `session`: admins always,
    /// operators for sessions they created or were given.
    pub(crate) fn may_operate(&self, caller: &Caller, session: &SessionId) -> Result<(), Problem> {
        match caller.role {
            Role::Admin => Ok(()),
            Role::Auditor => Err(Problem::forbidden(format!(
                "{} is an auditor: it reads, it does not change session {session}",
                caller.name
            ))),
            Role::Operator => {
                let owner = self
                    .owners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(session)
                    .cloned();
                if owner.as_deref() == Some(caller.name.as_str())
                    || caller.sessions.iter().any(|s| s == session.as_str())
                {
                    Ok(())
                } else {
                    Err(Problem::forbidden(format!(
                        "operator {} did not create session {session} and is not given it in the tokens file",
                        caller.name
                    )))
                }
            }
        }
    }

    /// Refuses unless `caller` may act for `agent` (operators: only the
    /// agents their `agents` patterns name).
    pub(crate) fn may_act_for(&self, caller: &Caller, agent: &AgentId) -> Result<(), Problem> {
        if caller.may_act_for(agent.as_str()) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "{} ({}) may not act for agent {agent}: the tokens file's `agents` patterns do not name it",
                caller.name,
                caller.role.name()
            )))
        }
    }

    /// Records who asked for `operation` in the session's events and audit
    /// log, before it runs.
    pub(crate) fn record(&self, caller: &Caller, session: &SessionId, operation: &str) {
        self.hv
            .record_operator_request(session, &caller.name, caller.role.name(), operation);
    }
}

/// Runs each request inside its trace: the W3C `traceparent` it came with,
/// or a new one. Every host operation and agent call of the request, and so
/// every event and audit delta, carries that trace id; the answer's
/// `traceparent` names it, with this server's span.
async fn trace_request(
    axum::extract::State(s): State,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument;
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(traceparent_ids);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // With an OpenTelemetry exporter, the request's span joins the caller's
    // trace (or starts one), and the request takes its ids, so the exported
    // spans and the request's events and audit deltas share one trace id.
    let (trace, span_id) = match incoming {
        Some((trace, parent)) => (trace, telemetry::set_remote_parent(&span, trace.0, parent)),
        None => match telemetry::span_ids(&span) {
            Some((trace, id)) => (ahv_core::TraceId(trace), Some(id)),
            None => (s.hv.runtime().new_trace_id(), None),
        },
    };
    let span_id = span_id.unwrap_or_else(|| s.hv.runtime().new_trace_id().0 as u64 | 1);
    span.record("trace_id", tracing::field::display(trace));
    span.record(
        "span_id",
        tracing::field::display(format_args!("{span_id:016x}")),
    );
    let mut res = ahv_runtime::trace_context::with_trace(trace, next.run(req))
        .instrument(span)
        .await;
    if let Ok(v) = HeaderValue::from_str(&format!("00-{trace}-{span_id:016x}-01")) {
        res.headers_mut().insert("traceparent", v);
    }
    res
}

/// The trace id of a W3C `traceparent` header (version 00 or a later one,
/// read as 00); `None` for a malformed one or an all-zero id, which the
/// spec says to ignore.
pub fn parse_traceparent(h: &str) -> Option<ahv_core::TraceId> {
    traceparent_ids(h).map(|(trace, _)| trace)
}

/// The trace id and parent span id of a W3C `traceparent` header.
fn traceparent_ids(h: &str) -> Option<(ahv_core::TraceId, u64)> {
    let mut parts = h.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let id = u128::from_str_radix(trace, 16).ok()?;
    let parent_id = u64::from_str_radix(parent, 16).ok()?;
    (id != 0 && parent_id != 0).then_some((ahv_core::TraceId(id), parent_id))
}

/// Runs blocking work (compiling, syncing, hashing) off the async workers,
/// in the request's trace.
pub(crate) async fn blocking<R: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, Problem> {
    let trace = ahv_runtime::trace_context::current();
    tokio::task::spawn_blocking(move || match trace {
        Some(t) => ahv_runtime::trace_context::with_trace_sync(t, f),
        None => f(),
    })
    .await
    .map_err(|e| Problem::internal(format!("{what}: {e}")))
}

/// An authenticated caller that may upload components (not an auditor),
/// checked before the body is read: an auditor cannot make the server
/// buffer 64 MiB.
pub(crate) struct Uploader(pub(crate) Caller);

impl FromRequestParts<Arc<Shared>> for Uploader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Shared>) -> Result<Uploader, Response> {
        let Auth(caller) = Auth::from_request_parts(parts, s).await?;
        not_auditor(&caller, "uploading a component").map_err(IntoResponse::into_response)?;
        Ok(Uploader(caller))
    }
}

/// Checks the caller may change `session`, records the request (before it
/// runs, refused or not), and returns the parsed id.
pub(crate) fn operate(
    s: &Shared,
    caller: &Caller,
    session: &str,
    operation: &str,
) -> Result<SessionId, Problem> {
    let id = session_id(session)?;
    s.may_operate(caller, &id)?;
    s.record(caller, &id, operation);
    Ok(id)
}

/// Refuses unless the caller is an admin.
pub(crate) fn admin_only(caller: &Caller, what: &str) -> Result<(), Problem> {
    if caller.role == Role::Admin {
        Ok(())
    } else {
        Err(Problem::forbidden(format!(
            "{what} needs the admin role; {} is {}",
            caller.name,
            caller.role.name()
        )))
    }
}

/// Refuses auditors.
pub(crate) fn not_auditor(caller: &Caller, what: &str) -> Result<(), Problem> {
    if caller.role == Role::Auditor {
        Err(Problem::forbidden(format!(
            "{what} changes the server; {} is an auditor",
            caller.name
        )))
    } else {
        Ok(())
    }
}

/// A session id from a path, validated.
pub(crate) fn session_id(s: &str) -> Result<SessionId, Problem> {
    SessionId::new(s).map_err(|e| Problem::bad_request(format!("session id {s:?}: {e}")))
}

/// The most bytes of an operator's reason (a kill, demotion, revocation,
/// slash or vouch release) or an elevation's justification: it goes into
/// events and the audit log. Checked before the request is recorded.
pub(crate) const MAX_REASON_BYTES: usize = 1024;

/// `reason`, refused past [`MAX_REASON_BYTES`].
pub(crate) fn reason_text(reason: &str) -> Result<&str, Problem> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(Problem::bad_request(format!(
            "reason: {} bytes; a reason may have at most {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    Ok(reason)
}

/// An agent id from a path or body, validated.
pub(crate) fn agent_id(s: &str) -> Result<AgentId, Problem> {
    AgentId::new(s).map_err(|e| Problem::bad_request(format!("agent id {s:?}: {e}")))
}

/// The agent id under which an API caller acts on files and state (the
/// reserved `ahv:` prefix: no agent can join under it).
pub(crate) fn operator_agent(caller: &Caller) -> Result<AgentId, Problem> {
    AgentId::new(format!("ahv:operator:{}", caller.name))
        .map_err(|e| Problem::internal(format!("operator id for {}: {e}", caller.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers_are_parsed_as_w3c_says() {
        let t = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            t,
            Some(ahv_core::TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }
}
