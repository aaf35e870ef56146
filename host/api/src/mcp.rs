//! The MCP front: a session's agents served as Model Context Protocol
//! tools, so that an LLM client can call untrusted tools safely — over
//! standard input and output (`ahv mcp`), or over MCP's streamable HTTP
//! transport (`ahv mcp --listen`, and every session of `ahv serve` at
//! `/v1/sessions/{session}/mcp`).
//!
//! Each participant with a live instance is one tool; a tool call is the
//! agent's `run` with the call's `input` argument, in the agent's live
//! instance, under its ring *now* — every host call it makes goes through
//! the gate, every change is an audited event. What the agent answers is
//! the tool's text; its own failure, a refusal of the session, or a trap (a
//! breach, fuel, memory, deadline, a kill) is a tool-level error whose text
//! names the cause, so the client and the model see why. The trace of each
//! call is in the result's `_meta` (`ahv/trace`) for finding its audit
//! deltas.
//!
//! Over HTTP every request carries a bearer token of the API's tokens file
//! ([`crate::auth`]) and is charged to the caller's request budget. The
//! caller sees and calls only the agents it may act for: admins all of them,
//! operators those their `agents` patterns name — in `ahv serve`, only in
//! sessions they operate — and auditors none. Each call is recorded
//! (`operator.request`, with the caller's name) in the session's events and
//! audit log before the agent runs, and runs in the trace of the request's
//! W3C `traceparent` when it has one. The transport is stateless (no MCP
//! session ids, one JSON answer per request): nothing one client holds can
//! be taken over by another, and authorization is decided per request.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use ahv_core::{AgentId, SessionId, TraceId};
use ahv_hypervisor::Hypervisor;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use sha2::Digest as _;

use crate::auth::{Caller, Role};
use crate::problem::Problem;
use crate::{Auth, Shared};

/// A session's agents as MCP tools.
#[derive(Clone)]
pub struct AgentTools {
    hv: Arc<Hypervisor>,
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    /// One session, one local client that owns it (standard input and output).
    Local(SessionId),
    /// Over HTTP: the session and the caller come with each request
    /// ([`HttpScope`], put there by [`guard`]).
    Http(Arc<Shared>),
}

/// What the HTTP guard learned about a request: which session it is for,
/// who sent it, and in which trace it runs.
#[derive(Clone)]
struct HttpScope {
    session: SessionId,
    caller: Caller,
    /// `ahv mcp --listen`: the session is the one this process serves to
    /// the tokens file's callers, so operators need not own it.
    standalone: bool,
    trace: Option<TraceId>,
}

/// Who calls, for which session.
struct Call {
    session: SessionId,
    /// `None` for the local (stdio) client.
    caller: Option<(HttpScope, Arc<Shared>)>,
}

impl Call {
    /// Refuses unless the caller may call the tools of this session: over
    /// HTTP, not an auditor, and in `ahv serve` an operator only in sessions
    /// it operates.
    fn may_call(&self) -> Result<(), ErrorData> {
        let Some((scope, shared)) = &self.caller else {
            return Ok(());
        };
        let checked = if scope.standalone {
            crate::not_auditor(&scope.caller, "calling an agent")
        } else {
            shared.may_operate(&scope.caller, &self.session)
        };
        checked.map_err(refused)
    }

    fn may_act_for(&self, agent: &AgentId) -> bool {
        self.caller
            .as_ref()
            .is_none_or(|(scope, _)| scope.caller.may_act_for(agent.as_str()))
    }
}

/// An authorization refusal as a JSON-RPC error naming who was refused what.
fn refused(p: Problem) -> ErrorData {
    ErrorData::invalid_request(p.detail, None)
}

impl AgentTools {
    /// The agents of `session` (those with a live instance) as tools, for a
    /// local client over standard input and output (no caller to check).
    pub fn new(hv: Arc<Hypervisor>, session: SessionId) -> AgentTools {
        AgentTools {
            hv,
            mode: Mode::Local(session),
        }
    }

    /// Who calls, for which session: the fixed session locally, or what
    /// the HTTP guard put in the request.
    fn call(&self, context: &RequestContext<RoleServer>) -> Result<Call, ErrorData> {
        match &self.mode {
            Mode::Local(session) => Ok(Call {
                session: session.clone(),
                caller: None,
            }),
            Mode::Http(shared) => {
                let scope = context
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|p| p.extensions.get::<HttpScope>())
                    .ok_or_else(|| {
                        ErrorData::internal_error(
                            "the request reached the MCP handler without passing its guard",
                            None,
                        )
                    })?;
                Ok(Call {
                    session: scope.session.clone(),
                    caller: Some((scope.clone(), shared.clone())),
                })
            }
        }
    }

    /// Tool name → agent, for the participants with an instance that the
    /// caller may act for (see [`tool_name`]). A name two agents would share
    /// is left out (`None`): a call by it must not guess.
    fn tools(&self, call: &Call) -> BTreeMap<String, Option<(AgentId, u8)>> {
        let mut out: BTreeMap<String, Option<(AgentId, u8)>> = BTreeMap::new();
        let Ok(info) = self.hv.session(&call.session) else {
            return out;
        };
        for p in info.participants {
            if self.hv.kill_handle(&call.session, &p.agent).is_err() {
                continue; // no instance: nothing to call
            }
            if !call.may_act_for(&p.agent) {
                continue;
            }
            let ring = self
                .hv
                .ring(&call.session, &p.agent)
                .unwrap_or(p.ring)
                .number();
            out.entry(tool_name(&p.agent))
                .and_modify(|slot| *slot = None)
                .or_insert(Some((p.agent, ring)));
        }
        out
    }
}

/// The longest tool name given (MCP clients commonly accept 64 characters).
const MAX_TOOL_NAME: usize = 64;

/// An agent's tool name, a function of its id alone — so a name listed once
/// can never come to mean another agent as others join and leave. An id of
/// only letters, digits, `_` and `-` (at most 64 characters) is its own
/// name; any other is spelled with `_` for each other character, cut to 55,
/// and followed by `-` and the first 8 hex digits of the id's SHA-256
/// (`did:ex:hello` → `did_ex_hello-…`).
pub fn tool_name(agent: &AgentId) -> String {
    let id = agent.as_str();
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if id.len() <= MAX_TOOL_NAME && id.chars().all(plain) {
        return id.to_string();
    }
    let spelled: String = id
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .take(MAX_TOOL_NAME - 9)
        .collect();
    let digest = sha2::Sha256::digest(id.as_bytes());
    format!("{spelled}-{}", hex::encode(&digest[..4]))
}

fn input_schema() -> Arc<serde_json::Map<String, serde_json::Value>> {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "input": {
                "type": "string",
                "description": "The input handed to the agent's `run` (JSON is a convention many agents follow)."
            }
        },
        "additionalProperties": false
    });
    Arc::new(schema.as_object().cloned().unwrap_or_default())
}

impl ServerHandler for AgentTools {
    fn get_info(&self) -> ServerConfig {
        let which = match &self.mode {
            Mode::Local(session) => format!("hypervisor session {session}"),
            Mode::Http(_) => "this hypervisor session".to_string(),
        };
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agent-hypervisor", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Each tool is an untrusted agent of {which}, sandboxed in WebAssembly and \
                 confined to its ring: what it may read, write or call is decided by the host at every \
                 call, and everything it does is audited. A tool error says why a call failed \
                 (the agent's own failure, a refusal, or a trap such as a ring breach)."
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let call = self.call(&context)?;
        call.may_call()?;
        let tools = self
            .tools(&call)
            .into_iter()
            .filter_map(|(name, agent)| agent.map(|a| (name, a)))
            .map(|(name, (agent, ring))| {
                Tool::new(
                    Cow::Owned(name),
                    Cow::Owned(format!(
                        "Runs agent {agent} (ring {ring}) of session {} with `input`; answers with what the agent returns.",
                        call.session
                    )),
                    input_schema(),
                )
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = self.call(&context)?;
        call.may_call()?;
        let tools = self.tools(&call);
        let agent = match tools.get(request.name.as_ref()) {
            Some(Some((agent, _))) => agent,
            Some(None) => {
                return Err(ErrorData::invalid_params(
                    format!(
                        "tool {:?} names two agents of the session; neither is called",
                        request.name
                    ),
                    None,
                ));
            }
            None => {
                return Err(ErrorData::invalid_params(
                    format!(
                        "no tool {:?} (list the tools: they change as agents join, leave and trap, \
                         and name only the agents the caller may act for)",
                        request.name
                    ),
                    None,
                ));
            }
        };
        let args = request.arguments.unwrap_or_default();
        if let Some(extra) = args.keys().find(|k| k.as_str() != "input") {
            return Err(ErrorData::invalid_params(
                format!("unknown argument {extra:?}: the only one is `input`"),
                None,
            ));
        }
        let input = match args.get("input") {
            None => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(ErrorData::invalid_params(
                    format!("`input` must be a string, not {other}"),
                    None,
                ));
            }
        };
        let run = async {
            if let Some((scope, shared)) = &call.caller {
                shared.record(
                    &scope.caller,
                    &call.session,
                    &format!("MCP tools/call agent={agent}"),
                );
            }
            self.hv.run_agent(&call.session, agent, &input).await
        };
        let trace = call.caller.as_ref().and_then(|(scope, _)| scope.trace);
        let run = async {
            match trace {
                Some(trace) => ahv_runtime::trace_context::with_trace(trace, run).await,
                None => run.await,
            }
        };
        // rmcp runs each request in a task of its own and only cancels this
        // token when the client goes away: stop the call then, as a dropped
        // REST request stops its run, rather than hold the agent for nobody.
        let ran = tokio::select! {
            ran = run => ran,
            () = context.ct.cancelled() => {
                return Err(ErrorData::internal_error(
                    format!("the client went away; the call of {agent} was stopped"),
                    None,
                ));
            }
        };
        let result = match ran {
            Ok(out) => {
                let trace = out.trace.to_string();
                let mut r = match out.result {
                    Ok(answer) => CallToolResult::success(vec![ContentBlock::text(answer)]),
                    Err(failure) => CallToolResult::error(vec![ContentBlock::text(format!(
                        "the agent reported a failure: {failure}"
                    ))]),
                };
                let mut meta = rmcp::model::MetaObject::new();
                meta.insert("ahv/trace".into(), serde_json::Value::String(trace));
                r.meta = Some(meta);
                r
            }
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
        };
        Ok(result.into())
    }
}

/// The streamable HTTP transport over [`AgentTools`] in HTTP mode:
/// stateless, one JSON answer per request, bodies bounded like the API's.
fn http_service(shared: &Arc<Shared>) -> StreamableHttpService<AgentTools, LocalSessionManager> {
    let tools = AgentTools {
        hv: shared.hv.clone(),
        mode: Mode::Http(shared.clone()),
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(shared.limits.max_json_bytes)
        // Every request needs a bearer token, so a page a browser was lured
        // to (DNS rebinding) has nothing to send; the server may listen on
        // any address.
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// `/v1/sessions/{session}/mcp` of `ahv serve`: each session's agents as
/// MCP tools, for callers the session's rules let run them.
pub(crate) fn session_routes(shared: &Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route_service("/v1/sessions/{session}/mcp", http_service(shared))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            session_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::trace_request,
        ))
}

/// `/mcp` of `ahv mcp --listen`: the agents of `session`, the one session
/// this process serves.
pub(crate) fn standalone_routes(shared: &Arc<Shared>, session: SessionId) -> axum::Router {
    let guard_state = (shared.clone(), session);
    axum::Router::new()
        .route_service("/mcp", http_service(shared))
        .route_layer(axum::middleware::from_fn_with_state(
            guard_state,
            standalone_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::trace_request,
        ))
}

async fn session_guard(
    axum::extract::State(s): axum::extract::State<Arc<Shared>>,
    axum::extract::Path(session): axum::extract::Path<String>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let session = match crate::session_id(&session) {
        Ok(id) => id,
        Err(p) => return p.into_response(),
    };
    guard(&s, session, false, req, next).await
}

async fn standalone_guard(
    axum::extract::State((s, session)): axum::extract::State<(Arc<Shared>, SessionId)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    guard(&s, session, true, req, next).await
}

/// Authenticates the request (charging the caller's budget), checks the
/// session exists, and hands the handler who calls for which session in
/// which trace. Runs inside [`crate::trace_request`].
async fn guard(
    s: &Arc<Shared>,
    session: SessionId,
    standalone: bool,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let Auth(caller) = match Auth::from_request_parts(&mut parts, s).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(e) = s.hv.session(&session) {
        return Problem::from(e).into_response();
    }
    if caller.role == Role::Auditor {
        // Checked again per call; refused here so an auditor learns why at
        // once, whatever MCP method it sends.
        return Problem::forbidden(format!(
            "{} is an auditor: it reads, it does not call agents",
            caller.name
        ))
        .into_response();
    }
    // The request's trace (from its `traceparent`, or made for it by
    // `trace_request`): rmcp runs the call in a task of its own, where the
    // task-local trace does not follow, so the call sets it again.
    let trace = ahv_runtime::trace_context::current();
    parts.extensions.insert(HttpScope {
        session,
        caller,
        standalone,
        trace,
    });
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(id: &str) -> String {
        tool_name(&AgentId::new(id).unwrap_or_else(|e| panic!("{id}: {e}")))
    }

    #[test]
    fn tool_names_are_a_function_of_the_id_alone() {
        assert_eq!(name("summarizer"), "summarizer");
        assert_eq!(name("a_b-c9"), "a_b-c9");
        let did = name("did:ex:a_b");
        assert!(did.starts_with("did_ex_a_b-") && did.len() == 19, "{did}");
        assert_eq!(did, name("did:ex:a_b"), "stable");
        // Ids that read alike are told apart.
        assert_ne!(name("did:ex:a.b"), did);
        assert_ne!(name("did:ex:a_b"), name("did_ex_a_b"));
        // Long ids are cut, and still told apart by their digest.
        let long_a = format!("did:ex:{}", "a".repeat(100));
        let long_b = format!("did:ex:{}b", "a".repeat(99));
        assert!(name(&long_a).len() <= MAX_TOOL_NAME);
        assert_ne!(name(&long_a), name(&long_b));
        assert_eq!(name(&"x".repeat(64)), "x".repeat(64));
        assert_ne!(name(&"x".repeat(65)), "x".repeat(65));
    }
}
