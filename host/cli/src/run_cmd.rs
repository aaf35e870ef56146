//! `ahv run`: one call into an agent, in a ring, over a directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ahv_core::{AgentId, Ring, RingPolicy};
use ahv_governance::actions::builtin;
use ahv_governance::session_vfs::FileQuotas;
use ahv_runtime::{AgentError, AgentSpec, LoadError, RunOutput, Runtime};
use anyhow::Context;

use crate::exit::Exit;
use crate::out::{Failure, errln, outln};
use crate::quota_files::QuotaFiles;
use crate::{CacheArgs, log_text, read_component};

/// Parses and validates an agent id (SEMANTICS.md, "Identifiers").
pub(crate) fn parse_agent_id(text: &str) -> Result<AgentId, String> {
    AgentId::new(text).map_err(|e| e.to_string())
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// The agent component (.wasm), built for wasm32-wasip2.
    pub(crate) agent: PathBuf,
    /// The ring to run it in: 0-3 or root, privileged, standard, sandbox.
    #[arg(long, short)]
    pub(crate) ring: Ring,
    /// The input passed to `run`.
    #[arg(long, short, default_value = "")]
    input: String,
    /// The agent's directory (its whole file system). Default: a new temporary directory.
    #[arg(long, short)]
    dir: Option<PathBuf>,
    /// The agent's id.
    #[arg(long, default_value = "did:ahv:cli", value_parser = parse_agent_id)]
    agent_id: AgentId,
    /// Override the ring's fuel per call (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    fuel: Option<u64>,
    /// Override the ring's wall-clock deadline, in milliseconds (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    deadline_ms: Option<u64>,
    /// Refuse to run a component in a ring that lacks a capability it imports.
    #[arg(long)]
    strict: bool,
    /// Most regular files the agent's directory may hold (what it holds
    /// already counts). Default: the session quota, 10 000.
    #[arg(long, value_name = "N")]
    max_files: Option<u64>,
    /// Most directories below the agent's directory (what it holds already
    /// counts). Default: the session quota, 10 000.
    #[arg(long, value_name = "N")]
    max_dirs: Option<u64>,
    /// Most bytes the files of the agent's directory may hold together (what
    /// it holds already counts). Default: the session quota, 256 MiB.
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    #[command(flatten)]
    cache: CacheArgs,
}

impl RunArgs {
    /// The session quotas, with the command line's overrides.
    fn quotas(&self) -> FileQuotas {
        let d = FileQuotas::default();
        FileQuotas {
            max_files: self.max_files.unwrap_or(d.max_files),
            max_dirs: self.max_dirs.unwrap_or(d.max_dirs),
            max_total_bytes: self.max_bytes.unwrap_or(d.max_total_bytes),
            ..d
        }
    }
}

pub(crate) async fn run(args: RunArgs) -> Result<Exit, Failure> {
    let mut policy = RingPolicy::default();
    if args.fuel.is_some() || args.deadline_ms.is_some() {
        let mut limits = policy.limits(args.ring).clone();
        if let Some(f) = args.fuel {
            limits.fuel_per_call = f;
        }
        if let Some(ms) = args.deadline_ms {
            limits.deadline = Duration::from_millis(ms);
        }
        policy
            .set_limits(args.ring, limits)
            .map_err(|e| Failure::usage("run", format!("--fuel / --deadline-ms: {e}")))?;
    }
    let mut builder = Runtime::builder()
        .policy(policy)
        .strict_admission(args.strict)
        .max_instances(4);
    if let Some(dir) = args.cache.dir() {
        builder = builder.cache_dir(dir);
    }
    let runtime = builder.build().context("starting the runtime")?;

    let bytes = read_component(&args.agent)?;
    let component = match runtime.load(&bytes) {
        Ok(c) => c,
        Err(e @ LoadError::Cache { .. }) => return Err(anyhow::Error::new(e).into()),
        Err(e) => return Err(Failure::Refused(format!("{}: {e}", args.agent.display()))),
    };

    let tmp;
    let dir_path = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("ahv-run-")
                .tempdir()
                .context("creating a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let dir = cap_std::fs::Dir::open_ambient_dir(&dir_path, cap_std::ambient_authority())
        .with_context(|| format!("opening the agent directory {}", dir_path.display()))?;
    let files = QuotaFiles::open(dir, args.quotas())
        .with_context(|| format!("the agent directory {}", dir_path.display()))?;
    let spec = AgentSpec::new(args.agent_id.clone(), args.ring, Arc::new(files))
        .actions(Arc::new(builtin::registry()));

    let mut agent = match runtime.spawn(&component, spec).await {
        Ok(a) => a,
        Err(AgentError::Load(e)) => {
            return Err(Failure::Refused(format!("{}: {e}", args.agent.display())));
        }
        Err(e) => return report_error(&e),
    };
    let kill = agent.kill_handle();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            kill.kill("interrupted (Ctrl-C)");
        }
    });
    let result = agent.run(&args.input).await;
    ctrl_c.abort();
    match result {
        Ok(out) => report_output(&out),
        Err(e) => report_error(&e),
    }
}

fn report_output(out: &RunOutput) -> Result<Exit, Failure> {
    for line in &out.logs {
        outln!("{}", log_text(line))?;
    }
    if out.dropped_log_lines > 0 {
        outln!(
            "[log] … {} more line(s) dropped (log budget per call)",
            out.dropped_log_lines
        )?;
    }
    match &out.result {
        Ok(answer) => {
            outln!("{answer}")?;
            Ok(Exit::Ok)
        }
        Err(msg) => {
            errln!("agent failed: {msg}");
            Ok(Exit::Failed)
        }
    }
}

fn report_error(e: &AgentError) -> Result<Exit, Failure> {
    if let AgentError::Trapped { logs, .. } = e {
        for line in logs {
            outln!("{}", log_text(line))?;
        }
    }
    match e.cause() {
        Some(cause) => {
            errln!("{cause}");
            Ok(Exit::for_trap(cause))
        }
        None if matches!(e, AgentError::InputTooLarge { .. }) => {
            Err(Failure::usage("run", format!("--input: {e}")))
        }
        None => Err(Failure::Setup(anyhow::anyhow!("{e}"))),
    }
}
