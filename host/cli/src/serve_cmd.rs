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
    /// The address to listen on (plain HTTP; put a TLS proxy in front of it
    /// to serve beyond this machine).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
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
    #[command(flatten)]
    cache: CacheArgs,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

pub(crate) async fn serve(args: ServeArgs) -> Result<Exit, Failure> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let tokens = match &args.tokens {
        Some(path) => {
            let t = Tokens::load(path).map_err(|e| Failure::usage("serve", e))?;
            if t.is_empty() {
                return Err(Failure::usage(
                    "serve",
                    format!(
                        "{}: no [[token]] entries: nobody could call the server",
                        path.display()
                    ),
                ));
            }
            t
        }
        None => {
            let token = new_token().context("making an admin token")?;
            let path = args.state_dir.join("serve.token");
            write_private(&path, &token)?;
            errln!("admin token written to {} (mode 0600)", path.display());
            Tokens::none().with(
                &token,
                Caller {
                    name: "admin".into(),
                    role: Role::Admin,
                    sessions: Vec::new(),
                },
            )
        }
    };
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
    errln!(
        "listening on http://{addr} (state directory {})",
        args.state_dir.display()
    );
    axum::serve(listener, api.router())
        .with_graceful_shutdown(stop_signal())
        .await
        .context("serving")?;
    errln!("stopping: sealing the audit log");
    let hv2 = hv.clone();
    tokio::task::spawn_blocking(move || hv2.shutdown().map(drop).map_err(anyhow::Error::from))
        .await
        .context("shutting down")?
        .context("sealing the audit log")?;
    Ok(Exit::Ok)
}

async fn stop_signal() {
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

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
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
    },
}

pub(crate) fn token(cmd: TokenCmd) -> Result<Exit, Failure> {
    match cmd {
        TokenCmd::New { name, role } => {
            let token = new_token().context("making a token")?;
            let entry = format!(
                "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
                hex::encode(ahv_api::auth::hash_token(&token))
            );
            // The entry must parse as the server will parse it.
            Tokens::parse(&entry, "(new entry)").map_err(|e| Failure::usage("token", e))?;
            crate::out::outln!("{token}")?;
            errln!("{entry}");
            Ok(Exit::Ok)
        }
    }
}
