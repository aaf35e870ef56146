//! `ahv serve`: the HTTP API ([`ahv_api`]) over a hypervisor on a state
//! directory, until SIGINT or SIGTERM; then the audit log is sealed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ahv_api::auth::{Caller, Role, Tokens, new_token};
use ahv_api::{Api, ApiLimits};
use anyhow::Context;

use crate::CacheArgs;
use crate::exit::Exit;
use crate::out::{Failure, errln};

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Where the sessions' files, the audit log, the saga journal and the
    /// ledger live.
    #[arg(long)]
    state_dir: PathBuf,
    /// The address to listen on (plain HTTP unless `--tls-cert` is given).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    #[command(flatten)]
    tls: TlsArgs,
    /// The tokens file (TOML: name, role, SHA-256 of each token; see
    /// `ahv token new`). Without it, a new admin token is made at every start
    /// and written to `<state dir>/serve.token` (mode 0600).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Where the liability ledger is: `postgres://USER@HOST/DB`,
    /// `sqlite://PATH` or `memory`. Default: `<state dir>/liability.sqlite`.
    #[arg(long)]
    database: Option<String>,
    /// Requests per second each caller may make on average.
    #[arg(long, default_value_t = 50.0, value_parser = positive)]
    rate: f64,
    /// Export traces to an OpenTelemetry collector over OTLP/HTTP
    /// (protobuf), e.g. `http://127.0.0.1:4318`: each request's span (in the
    /// caller's `traceparent` trace) and the agent calls under it.
    #[arg(long, value_name = "URL")]
    pub(crate) otlp_endpoint: Option<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

pub(crate) fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

pub(crate) async fn serve(args: ServeArgs) -> Result<Exit, Failure> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let (tokens, own_token) = load_tokens("serve", args.tokens.as_deref())?;
    let tls = args.tls.config("serve")?;
    let hv = Arc::new(crate::saga_cmd::open(
        &args.state_dir,
        Some(&args.cache),
        args.database.as_deref(),
    )?);
    let limits = ApiLimits {
        requests_per_second: args.rate,
        burst: (args.rate * 2.0).max(1.0),
        ..ApiLimits::default()
    };
    let api = Api::new(hv.clone(), tokens, limits);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if let Some(token) = own_token {
        write_own_token(&args.state_dir.join("serve.token"), &token)?;
    }
    errln!(
        "listening on {}://{addr} (state directory {})",
        if tls.is_some() { "https" } else { "http" },
        args.state_dir.display()
    );
    let (api2, hv3) = (api.clone(), hv.clone());
    serve_on(listener, tls, api.router(), async move {
        stop_signal().await;
        errln!("stopping: finishing the requests in flight (at most {GRACE:?})");
        // Live event streams would hold their connections open forever.
        api2.stop_streams();
        // Calls still running after the grace period are stopped: every
        // live session is terminated, which stops its agents.
        tokio::spawn(async move {
            tokio::time::sleep(GRACE).await;
            let _ = tokio::task::spawn_blocking(move || terminate_all(&hv3)).await;
        });
    })
    .await
    .context("serving")?;
    errln!("stopping: terminating the live sessions and sealing the audit log");
    let hv2 = hv.clone();
    tokio::task::spawn_blocking(move || {
        // Sessions live in memory only: each is sealed by its commitment
        // before the process ends.
        terminate_all(&hv2);
        hv2.shutdown().map(drop).map_err(anyhow::Error::from)
    })
    .await
    .context("shutting down")?
    .context("sealing the audit log")?;
    Ok(Exit::Ok)
}

/// `--tls-cert` and `--tls-key`: serve HTTPS.
#[derive(clap::Args, Debug)]
pub(crate) struct TlsArgs {
    /// Serve HTTPS with this PEM certificate chain (leaf first; needs
    /// `--tls-key`). TLS 1.2 and 1.3 by rustls; HTTP/1.1 only.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// Whether TLS was asked for.
    pub(crate) fn given(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The server configuration, loaded now so that a bad file stops the
    /// server before it listens.
    pub(crate) fn config(
        &self,
        command: &str,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, Failure> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => ahv_api::tls::server_config(cert, key)
                .map(Some)
                .map_err(|e| Failure::usage(command, e)),
            _ => Ok(None),
        }
    }
}

/// Serves `router` on `listener` (through TLS when `tls` is given) until
/// `shutdown` completes and the requests in flight have ended.
pub(crate) async fn serve_on(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(config) => {
            axum::serve(ahv_api::tls::TlsListener::new(listener, config), router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The tokens file's callers, or (without one) a single admin with a new
/// random token, returned beside them to be written once the server can
/// start — so a second server that cannot start leaves the first one's
/// token in place.
pub(crate) fn load_tokens(
    command: &str,
    path: Option<&std::path::Path>,
) -> Result<(Tokens, Option<String>), Failure> {
    match path {
        Some(path) => {
            let t = Tokens::load(path).map_err(|e| Failure::usage(command, e))?;
            if t.is_empty() {
                return Err(Failure::usage(
                    command,
                    format!(
                        "{}: no [[token]] entries: nobody could call the server",
                        path.display()
                    ),
                ));
            }
            Ok((t, None))
        }
        None => {
            let token = new_token().context("making an admin token")?;
            let tokens = Tokens::none().with(
                &token,
                Caller {
                    name: "admin".into(),
                    role: Role::Admin,
                    sessions: Vec::new(),
                    agents: Vec::new(),
                },
            );
            Ok((tokens, Some(token)))
        }
    }
}

/// Writes the server's own admin token where its operator can read it.
pub(crate) fn write_own_token(path: &std::path::Path, token: &str) -> Result<(), Failure> {
    write_private(path, token)?;
    errln!("admin token written to {} (mode 0600)", path.display());
    Ok(())
}

/// How long a stopping server lets requests in flight finish before it
/// terminates the sessions their agents run in.
pub(crate) const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Terminates every live session (their agents stop; their audit logs are sealed).
fn terminate_all(hv: &ahv_hypervisor::Hypervisor) {
    for s in hv.sessions() {
        if let Err(e) = terminate_if_live(hv, &s.id) {
            errln!("stopping: terminating session {}: {e}", s.id);
        }
    }
}

/// Terminates `session` unless it is archived already (a grace period's end,
/// or another stop path, may have done it). Its seal receipt may still be
/// pending (group commit) and is not reported: `ahv serve` and `ahv mcp`
/// then sync the whole log (`Hypervisor::shutdown`) before they report
/// success, so no per-session wait is needed.
pub(crate) fn terminate_if_live(
    hv: &ahv_hypervisor::Hypervisor,
    session: &ahv_core::SessionId,
) -> anyhow::Result<()> {
    let live = hv
        .session(session)
        .is_ok_and(|i| i.state != ahv_governance::session::SessionState::Archived);
    if live {
        hv.terminate_session(session)?;
    }
    Ok(())
}

pub(crate) async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Replaces `path` with a file only its owner can read holding `text`: a
/// new file (mode 0600) beside it, renamed into place.
fn write_private(path: &std::path::Path, text: &str) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A TOML basic string (quotes and backslashes escaped).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum TokenCmd {
    /// Make a new random token: prints the token on standard output and the
    /// tokens-file entry (with only its SHA-256) on standard error.
    #[command(after_help = crate::exit::help())]
    New {
        /// The caller's name (recorded in the audit log of what it does).
        #[arg(long)]
        name: String,
        /// admin, operator or auditor.
        #[arg(long, value_parser = ["admin", "operator", "auditor"])]
        role: String,
        /// For an operator: an agent id it may act for, or a prefix ending
        /// in `*` (repeatable; at least one).
        #[arg(long = "agents", value_name = "PATTERN")]
        agents: Vec<String>,
    },
}

pub(crate) fn token(cmd: TokenCmd) -> Result<Exit, Failure> {
    match cmd {
        TokenCmd::New { name, role, agents } => {
            let token = new_token().context("making a token")?;
            let mut entry = format!(
                "[[token]]\nname = {}\nrole = \"{role}\"\nsha256 = \"{}\"\n",
                toml_string(&name),
                hex::encode(ahv_api::auth::hash_token(&token))
            );
            if !agents.is_empty() {
                let list: Vec<String> = agents.iter().map(|a| toml_string(a)).collect();
                entry += &format!("agents = [{}]\n", list.join(", "));
            }
            // The entry must parse as the server will parse it.
            Tokens::parse(&entry, "(new entry)").map_err(|e| Failure::usage("token", e))?;
            crate::out::outln!("{token}")?;
            errln!("{entry}");
            Ok(Exit::Ok)
        }
    }
}
