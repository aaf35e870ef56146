//! `ahv`: run, inspect and demo governed Wasm agents.

// No unwrap, expect or panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit_cmd;
mod demo;
mod session_demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ahv_core::{AgentId, Ring, RingPolicy};
use ahv_governance::actions::builtin;
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{
    AgentError, AgentSpec, ImportKind, LoadError, LogLine, LogSource, RunOutput, Runtime, TrapCause,
};
use anyhow::Context;
use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Rings (lower = more privilege):
  3 sandbox     context, log, vfs-read
  2 standard    + vfs-write, actions (reversible)
  1 privileged  + effects (non-reversible)
  0 root        everything

Built-in host actions available to `ahv run`:
  note.append   reversible (ring 2+): appends a line to journal/notes.log
  notify.send   effect (ring 1+): appends a line to outbox/notifications.log

Exit codes of `ahv run`:
  0 the agent answered         1 the agent reported its own failure
  2 bad command line           3 component refused (not a component, bad import, strict ring)
  4 setup error (directory, cache, runtime)
  10 ring breach   11 out of fuel   12 memory limit   13 deadline exceeded
  14 killed (Ctrl-C)   15 stack overflow   16 other guest trap   17 host error
  18 host call too large (the agent passed more data to one host call than its ring allows)
  19 the agent called WASI exit (even exit(0)) instead of answering
  20 resource limit (the agent filled its resource table)
  21 request too large (random bytes or an answer beyond the ring's limit)
  22 invalid guest data (not UTF-8, a pointer outside its memory, a bad handle)

Try:  ahv demo                       (the example agents, hostile ones included)
      ahv audit verify <STATE_DIR>   (check a state directory's audit log offline)
      ahv agents                     (where the built example agents are)
      ahv run <hello.wasm> --ring 3 --input Ada";

/// Agent Hypervisor: runs untrusted AI-agent code as WebAssembly components,
/// inside an execution ring that decides which host capabilities it may call.
#[derive(Parser, Debug)]
#[command(name = "ahv", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an agent's `run` once in a ring, with a directory as its files.
    Run(RunArgs),
    /// Show a component's imports, exports and the lowest ring that covers them.
    Inspect {
        /// The agent component (.wasm).
        agent: PathBuf,
    },
    /// Run the example agents (useful and hostile) and narrate what happens.
    Demo {
        /// Keep the agents' files and the audit log here. Default: a new
        /// directory `ahv-demo-*` under the system temporary directory, kept
        /// afterwards so its audit log can be verified.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// List the built-in example agents and where their components are.
    Agents,
    /// Check, read and prove from the tamper-evident audit log of a state directory.
    Audit {
        #[command(subcommand)]
        cmd: audit_cmd::AuditCmd,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The agent component (.wasm), built for wasm32-wasip2.
    agent: PathBuf,
    /// The ring to run it in: 0-3 or root, privileged, standard, sandbox.
    #[arg(long, short)]
    ring: Ring,
    /// The input passed to `run`.
    #[arg(long, short, default_value = "")]
    input: String,
    /// The agent's directory (its whole file system). Default: a new temporary directory.
    #[arg(long, short)]
    dir: Option<PathBuf>,
    /// The agent's id.
    #[arg(long, default_value = "did:ahv:cli")]
    agent_id: String,
    /// Override the ring's fuel per call.
    #[arg(long)]
    fuel: Option<u64>,
    /// Override the ring's wall-clock deadline, in milliseconds.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Refuse to run a component in a ring that lacks a capability it imports.
    #[arg(long)]
    strict: bool,
    /// Where compiled components are cached. Default: $XDG_CACHE_HOME/ahv or ~/.cache/ahv.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Do not use the on-disk component cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

/// The exit code for each way a call can end (documented in `--help` and the README).
fn exit_code_for(cause: &TrapCause) -> u8 {
    match cause {
        TrapCause::RingBreach(_) => 10,
        TrapCause::OutOfFuel { .. } => 11,
        TrapCause::MemoryLimit(_) => 12,
        TrapCause::DeadlineExceeded(_) => 13,
        TrapCause::Killed(_) => 14,
        TrapCause::StackOverflow => 15,
        TrapCause::GuestTrap { .. } => 16,
        TrapCause::Host { .. } => 17,
        TrapCause::HostcallTooLarge { .. } => 18,
        TrapCause::Exited { .. } => 19,
        TrapCause::ResourceLimit { .. } => 20,
        TrapCause::RequestTooLarge(_) => 21,
        TrapCause::InvalidGuestData(_) => 22,
    }
}

const EXIT_AGENT_FAILED: u8 = 1;
const EXIT_REFUSED: u8 = 3;
const EXIT_SETUP: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AHV_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let code = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Inspect { agent } => inspect(&agent),
            Command::Demo { state_dir } => demo::demo(state_dir).await,
            Command::Agents => {
                agents();
                Ok(0)
            }
            Command::Audit { cmd } => audit_cmd::audit(cmd),
        }
    });
    match code {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ahv"))
}

/// Prints one log line the way `ahv run` and `ahv demo` show them.
pub(crate) fn print_log(prefix: &str, line: &LogLine) {
    let source = match line.source {
        LogSource::Log => format!("{:?}", line.level).to_lowercase(),
        LogSource::Stdout => "stdout".into(),
        LogSource::Stderr => "stderr".into(),
    };
    println!("{prefix}[{source}] {}", line.message);
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let agent_id = AgentId::new(&args.agent_id).context("--agent-id")?;
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
            .context("--fuel / --deadline-ms")?;
    }
    let mut builder = Runtime::builder()
        .policy(policy)
        .strict_admission(args.strict)
        .max_instances(4);
    if let Some(dir) = args
        .cache_dir
        .clone()
        .or_else(default_cache_dir)
        .filter(|_| !args.no_cache)
    {
        builder = builder.cache_dir(dir);
    }
    let runtime = builder.build().context("starting the runtime")?;

    let component = match runtime.load_file(&args.agent) {
        Ok(c) => c,
        Err(e @ LoadError::Cache { .. }) => return Err(e).context("component cache"),
        Err(e) => {
            eprintln!("refused: {}: {e}", args.agent.display());
            return Ok(EXIT_REFUSED);
        }
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
    let vfs = Arc::new(Vfs::new(dir, VfsLimits::default()));
    let spec = AgentSpec::new(agent_id, args.ring, vfs).actions(Arc::new(builtin::registry()));

    let mut agent = match runtime.spawn(&component, spec).await {
        Ok(a) => a,
        Err(AgentError::Load(e)) => {
            eprintln!("refused: {e}");
            return Ok(EXIT_REFUSED);
        }
        Err(e) => return Ok(report_error(&e)),
    };
    let kill = agent.kill_handle();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            kill.kill("interrupted (Ctrl-C)");
        }
    });
    let result = agent.run(&args.input).await;
    ctrl_c.abort();
    Ok(match result {
        Ok(out) => report_output(&out),
        Err(e) => report_error(&e),
    })
}

fn report_output(out: &RunOutput) -> u8 {
    for line in &out.logs {
        print_log("", line);
    }
    if out.dropped_log_lines > 0 {
        println!(
            "[log] … {} more line(s) dropped (log budget per call)",
            out.dropped_log_lines
        );
    }
    match &out.result {
        Ok(answer) => {
            println!("{answer}");
            0
        }
        Err(msg) => {
            eprintln!("agent failed: {msg}");
            EXIT_AGENT_FAILED
        }
    }
}

fn report_error(e: &AgentError) -> u8 {
    if let AgentError::Trapped { logs, .. } = e {
        for line in logs {
            print_log("", line);
        }
    }
    match e.cause() {
        Some(cause) => {
            eprintln!("{cause}");
            exit_code_for(cause)
        }
        None => {
            eprintln!("error: {e}");
            EXIT_SETUP
        }
    }
}

fn inspect(path: &PathBuf) -> anyhow::Result<u8> {
    let runtime = Runtime::builder()
        .max_instances(1)
        .build()
        .context("starting the runtime")?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let manifest = match runtime.inspect(&bytes) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("refused: {}: {e}", path.display());
            return Ok(EXIT_REFUSED);
        }
    };
    println!("{}", path.display());
    println!("imports:");
    for import in &manifest.imports {
        let what = match &import.kind {
            ImportKind::Capability(c) => {
                format!("capability {c} (from ring {})", c.default_ring().number())
            }
            ImportKind::Types => "types only".into(),
            ImportKind::Wasi => "WASI (granting nothing: no files, env, args or network)".into(),
            ImportKind::Refused { reason } => format!("REFUSED: {reason}"),
        };
        println!("  {:<48} {what}", import.name);
    }
    println!("exports:");
    for e in &manifest.exports {
        println!("  {e}");
    }
    let refused = manifest.refused().count();
    match (refused, manifest.lowest_ring) {
        (0, Some(ring)) => {
            println!("lowest ring: {} ({})", ring.number(), ring.name());
            Ok(0)
        }
        (0, None) => {
            println!("lowest ring: none covers these capabilities");
            Ok(EXIT_REFUSED)
        }
        (n, _) => {
            println!("admission: refused ({n} import(s) outside the contract)");
            Ok(EXIT_REFUSED)
        }
    }
}

fn agents() {
    println!("Example agents built with this binary (run one with `ahv run PATH --ring N`):");
    for (name, bytes) in ahv_agents::ALL {
        let path = ahv_agents::PATHS
            .iter()
            .find(|(n, _)| n == name)
            .map_or("?", |(_, p)| p);
        println!("  {name:<13} {:>7} bytes  {path}", bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_trap_cause_has_a_distinct_exit_code() {
        use ahv_runtime::{DeadlineExceeded, Killed, MemoryLimitExceeded, RingBreach};
        let breach = RingBreach {
            agent: AgentId::new("a").unwrap(),
            session: ahv_core::SessionId::new("s").unwrap(),
            ring: Ring::Sandbox,
            capability: ahv_core::Capability::VfsWrite,
            function: "write".into(),
            trace: ahv_core::TraceId(1),
        };
        let causes = [
            TrapCause::RingBreach(breach),
            TrapCause::OutOfFuel { limit: 1 },
            TrapCause::MemoryLimit(MemoryLimitExceeded {
                limit: 1,
                requested: 2,
            }),
            TrapCause::DeadlineExceeded(DeadlineExceeded {
                deadline: Duration::from_secs(1),
            }),
            TrapCause::Killed(Killed { reason: "x".into() }),
            TrapCause::StackOverflow,
            TrapCause::GuestTrap {
                message: "x".into(),
            },
            TrapCause::Host {
                message: "x".into(),
            },
        ];
        let codes: std::collections::BTreeSet<u8> = causes.iter().map(exit_code_for).collect();
        assert_eq!(codes.len(), causes.len());
        assert!(
            codes
                .iter()
                .all(|c| ![0, EXIT_AGENT_FAILED, 2, EXIT_REFUSED, EXIT_SETUP].contains(c))
        );
    }

    #[test]
    fn ring_flag_accepts_numbers_and_names() {
        let cli = Cli::try_parse_from(["ahv", "run", "a.wasm", "--ring", "standard"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.ring, Ring::Standard);
        assert!(Cli::try_parse_from(["ahv", "run", "a.wasm", "--ring", "7"]).is_err());
    }
}
