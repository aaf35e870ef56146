//! `ahv mcp`: agents as MCP tools, for an LLM client (Claude Desktop, an
//! agent framework) to call untrusted tools safely. One session is created
//! with the agents named on the command line; each call is the agent's `run`
//! under its ring, audited.
//!
//! By default the protocol runs over standard input and output (standard
//! output carries only the protocol; diagnostics go to standard error), and
//! when the client closes the connection the session is terminated (its
//! audit log sealed) and the head signed. With `--listen ADDR` it runs over
//! MCP's streamable HTTP transport at `http://ADDR/mcp` instead, for the
//! callers of a tokens file (as `ahv serve`), until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use ahv_api::mcp::AgentTools;
use ahv_core::AgentId;
use ahv_governance::session::SessionConfig;
use ahv_hypervisor::JoinRequest;
use anyhow::Context;
use rmcp::ServiceExt;

use crate::exit::Exit;
use crate::out::{Failure, errln};
use crate::{CacheArgs, read_component};

#[derive(clap::Args, Debug)]
pub(crate) struct McpArgs {
    /// Where the session's files, the audit log and the ledger live.
    #[arg(long)]
    state_dir: PathBuf,
    /// An agent to serve as a tool: `ID=COMPONENT.wasm` (repeatable). It
    /// joins at σ 0.5 (ring 3, sandbox) unless `--sigma ID=S` says otherwise.
    #[arg(long = "agent", value_name = "ID=PATH", required = true)]
    agents: Vec<String>,
    /// An agent's trust score σ: `ID=S` (σ > 0.60 earns ring 2).
    #[arg(long = "sigma", value_name = "ID=S")]
    sigmas: Vec<String>,
    /// Where the liability ledger is: `postgres://USER@HOST/DB`,
    /// `sqlite://PATH` or `memory`. Default: `<state dir>/liability.sqlite`.
    #[arg(long)]
    database: Option<String>,
    /// Serve over streamable HTTP at `http://ADDR/mcp` instead of standard
    /// input and output (HTTPS with `--tls-cert` and `--tls-key`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// With `--listen`: the tokens file (as `ahv serve --tokens`). Without
    /// it, a new admin token is written to `<state dir>/mcp.token` (0600).
    #[arg(long, requires = "listen")]
    tokens: Option<PathBuf>,
    #[command(flatten)]
    tls: crate::serve_cmd::TlsArgs,
    /// With `--listen`: requests per second each caller may make on average.
    #[arg(long, default_value_t = 50.0, requires = "listen", value_parser = crate::serve_cmd::positive)]
    rate: f64,
    #[command(flatten)]
    cache: CacheArgs,
}

fn split<'a>(what: &str, s: &'a str) -> Result<(&'a str, &'a str), Failure> {
    s.split_once('=')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| Failure::usage("mcp", format!("{what} {s:?}: expected ID=VALUE")))
}

pub(crate) async fn mcp(args: McpArgs) -> Result<Exit, Failure> {
    let mut agents = Vec::new();
    for a in &args.agents {
        let (id, path) = split("--agent", a)?;
        let id =
            AgentId::new(id).map_err(|e| Failure::usage("mcp", format!("--agent {a:?}: {e}")))?;
        agents.push((id, PathBuf::from(path), 0.5));
    }
    for s in &args.sigmas {
        let (id, v) = split("--sigma", s)?;
        let sigma: f64 = v
            .parse()
            .map_err(|_| Failure::usage("mcp", format!("--sigma {s:?}: {v:?} is not a number")))?;
        let Some(slot) = agents.iter_mut().find(|(a, _, _)| a.as_str() == id) else {
            return Err(Failure::usage(
                "mcp",
                format!("--sigma {s:?}: no --agent {id}"),
            ));
        };
        slot.2 = sigma;
    }
    if args.tls.given() && args.listen.is_none() {
        return Err(Failure::usage(
            "mcp",
            "--tls-cert and --tls-key need --listen (standard input and output have no TLS)",
        ));
    }
    let tls = args.tls.config("mcp")?;
    let tokens = match args.listen {
        Some(_) => Some(crate::serve_cmd::load_tokens(
            "mcp",
            args.tokens.as_deref(),
        )?),
        None => None,
    };
    // Bound before anything is created, so a busy port leaves nothing behind.
    let listener = match args.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let hv = Arc::new(crate::saga_cmd::open(
        &args.state_dir,
        Some(&args.cache),
        args.database.as_deref(),
    )?);
    let creator = AgentId::new("ahv:mcp").map_err(|e| Failure::Setup(e.into()))?;
    let session = hv
        .create_session(SessionConfig::default(), creator)
        .map_err(|e| Failure::Setup(e.into()))?;
    let served = serve_session(&hv, &session, agents, listener, tokens, tls, &args).await;
    // Whatever happened, the session is sealed and the head signed.
    errln!("sealing session {session}");
    let hv2 = hv.clone();
    let sealed = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        crate::serve_cmd::terminate_if_live(&hv2, &session)?;
        hv2.shutdown()?;
        Ok(())
    })
    .await
    .context("stopping")
    .and_then(|r| r.context("sealing the audit log"));
    let exit = served?;
    sealed?;
    Ok(exit)
}

/// Joins the agents to `session`, activates it, and serves it until the
/// client leaves (stdio) or a signal comes (HTTP).
async fn serve_session(
    hv: &Arc<ahv_hypervisor::Hypervisor>,
    session: &ahv_core::SessionId,
    agents: Vec<(AgentId, PathBuf, f64)>,
    listener: Option<tokio::net::TcpListener>,
    tokens: Option<(ahv_api::auth::Tokens, Option<String>)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    args: &McpArgs,
) -> Result<Exit, Failure> {
    for (id, path, sigma) in agents {
        let bytes = read_component(&path)?;
        let component = hv
            .load(&bytes)
            .map_err(|e| Failure::Refused(format!("{}: {e}", path.display())))?;
        match hv
            .join_session(
                session,
                JoinRequest::new(id.clone(), sigma).component(component),
            )
            .await
        {
            Ok(ring) => errln!("tool {id}: {} in ring {}", path.display(), ring.number()),
            Err(ahv_hypervisor::HypervisorError::AdmissionDenied { agent, risk }) => {
                return Err(Failure::Denied(format!(
                    "agent {agent}: the ledger refuses it (risk {risk:.2})"
                )));
            }
            Err(e) => return Err(Failure::Setup(anyhow::anyhow!("agent {id}: {e}"))),
        }
    }
    hv.activate_session(session)
        .map_err(|e| Failure::Setup(e.into()))?;
    match (listener, tokens) {
        (Some(listener), Some((tokens, own_token))) => {
            let limits = ahv_api::ApiLimits {
                requests_per_second: args.rate,
                burst: (args.rate * 2.0).max(1.0),
                ..ahv_api::ApiLimits::default()
            };
            let api = ahv_api::Api::new(hv.clone(), tokens, limits);
            let bound = listener.local_addr().context("reading the bound address")?;
            if let Some(token) = own_token {
                crate::serve_cmd::write_own_token(&args.state_dir.join("mcp.token"), &token)?;
            }
            let scheme = if tls.is_some() { "https" } else { "http" };
            errln!("serving session {session} over MCP at {scheme}://{bound}/mcp");
            let (hv3, s3) = (hv.clone(), session.clone());
            let grace = crate::serve_cmd::GRACE;
            crate::serve_cmd::serve_on(
                listener,
                tls,
                api.mcp_router(session.clone()),
                async move {
                    crate::serve_cmd::stop_signal().await;
                    errln!("stopping: finishing the calls in flight (at most {grace:?})");
                    // Calls still running then are stopped: the session ends.
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        let _ = tokio::task::spawn_blocking(move || {
                            crate::serve_cmd::terminate_if_live(&hv3, &s3)
                        })
                        .await;
                    });
                },
            )
            .await
            .context("serving")?;
        }
        _ => {
            errln!("serving session {session} over MCP on standard input and output");
            let served = AgentTools::new(hv.clone(), session.clone())
                .serve(rmcp::transport::stdio())
                .await;
            match served {
                Ok(running) => {
                    tokio::select! {
                        _ = running.waiting() => errln!("the client closed the connection"),
                        () = crate::serve_cmd::stop_signal() => errln!("stopping on a signal"),
                    }
                }
                Err(e) => errln!("the MCP client went away before initializing: {e}"),
            }
        }
    }
    Ok(Exit::Ok)
}
