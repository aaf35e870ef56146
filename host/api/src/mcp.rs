//! The MCP front (`ahv mcp`): a session's agents served as Model Context
//! Protocol tools, so that an LLM client can call untrusted tools safely.
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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use ahv_core::{AgentId, SessionId};
use ahv_hypervisor::Hypervisor;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

/// A session's agents as MCP tools.
#[derive(Clone)]
pub struct AgentTools {
    hv: Arc<Hypervisor>,
    session: SessionId,
}

impl AgentTools {
    /// The agents of `session` (those with a live instance) as tools.
    pub fn new(hv: Arc<Hypervisor>, session: SessionId) -> AgentTools {
        AgentTools { hv, session }
    }

    /// Tool name → agent, for the participants with an instance. A tool
    /// name is the agent id with every character outside `[A-Za-z0-9_-]`
    /// replaced by `_` (MCP clients restrict names); a clash gets a suffix.
    fn tools(&self) -> BTreeMap<String, (AgentId, u8)> {
        let mut out = BTreeMap::new();
        let Ok(info) = self.hv.session(&self.session) else {
            return out;
        };
        for p in info.participants {
            if self.hv.kill_handle(&self.session, &p.agent).is_err() {
                continue; // no instance: nothing to call
            }
            let ring = self
                .hv
                .ring(&self.session, &p.agent)
                .unwrap_or(p.ring)
                .number();
            let base: String = p
                .agent
                .as_str()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(60)
                .collect();
            let mut name = base.clone();
            let mut n = 2;
            while out.contains_key(&name) {
                name = format!("{base}-{n}");
                n += 1;
            }
            out.insert(name, (p.agent, ring));
        }
        out
    }
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
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agent-hypervisor", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Each tool is an untrusted agent of hypervisor session {}, sandboxed in WebAssembly and \
                 confined to its ring: what it may read, write or call is decided by the host at every \
                 call, and everything it does is audited. A tool error says why a call failed \
                 (the agent's own failure, a refusal, or a trap such as a ring breach).",
                self.session
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self
            .tools()
            .into_iter()
            .map(|(name, (agent, ring))| {
                Tool::new(
                    Cow::Owned(name),
                    Cow::Owned(format!(
                        "Runs agent {agent} (ring {ring}) of session {} with `input`; answers with what the agent returns.",
                        self.session
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
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tools = self.tools();
        let Some((agent, _)) = tools.get(request.name.as_ref()) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "no tool {:?} (list the tools: they change as agents join, leave and trap)",
                    request.name
                ),
                None,
            ));
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
        let result = match self.hv.run_agent(&self.session, agent, &input).await {
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
