//! `ahv run`: one call into an agent, in a ring, over a directory.
//!
//! The command first gathers everything into a [`Report`] and prints it
//! afterwards, either for people (the answer alone on standard output, the
//! agent's log lines and what stopped it on standard error) or, with
//! `--json`, as one JSON object on standard output.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::{AgentId, Ring, SystemClock, TraceId};
use ahv_governance::actions::builtin;
use ahv_governance::session_vfs::{FileQuotas, Usage};
use ahv_runtime::{
    AgentComponent, AgentError, AgentSpec, LoadError, LogLine, LogSource, MAX_INPUT_BYTES, Runtime,
    TrapCause,
};
use ahv_security::policy::{Policy, PolicyFile};
use ahv_security::rate::RateLimiter;
use anyhow::Context;
use serde_json::json;

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
    /// The input passed to `run` (at most 1 MiB; the OS limits one argument
    /// to about 128 KiB: use --input-file for more). Default: empty.
    #[arg(long, short)]
    input: Option<String>,
    /// Read the input passed to `run` from this file, or from standard input
    /// if PATH is `-` (UTF-8, at most 1 MiB).
    #[arg(long, value_name = "PATH", conflicts_with = "input")]
    input_file: Option<PathBuf>,
    /// Print one JSON object on standard output: the outcome and exit code,
    /// the answer or the agent's failure, the trap cause, the log lines, fuel,
    /// trace id, file usage and timings. Nothing else goes to standard output.
    #[arg(long)]
    json: bool,
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
    /// A TOML policy file (see `ahv policy check`): its ring table (capabilities
    /// and budgets, log budgets included), its rate limits (on with a policy,
    /// off without) and the grants of host actions for --agent-id apply to
    /// the run; --fuel and --deadline-ms still override the ring's budgets.
    /// Breach and elevation rules apply to sessions: a lone run ends at a
    /// breach and is granted no elevation.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
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

/// Everything one `ahv run` learned, printed once at the end.
#[derive(Debug, Default)]
struct Report {
    answer: Option<String>,
    failure: Option<String>,
    trap: Option<TrapCause>,
    logs: Vec<LogLine>,
    dropped_log_lines: usize,
    fuel_used: Option<u64>,
    trace: Option<TraceId>,
    usage: Option<Usage>,
    load: Option<Duration>,
    instantiate: Option<Duration>,
    call: Option<Duration>,
}

pub(crate) async fn run(args: RunArgs) -> Result<Exit, Failure> {
    let started = Instant::now();
    let mut report = Report::default();
    let result = execute(&args, &mut report).await;
    if args.json {
        return print_json(&report, result, started.elapsed());
    }
    print_text(&report)?;
    result
}

/// Runs the agent, recording what happens in `report`; prints nothing.
async fn execute(args: &RunArgs, report: &mut Report) -> Result<Exit, Failure> {
    let input = read_input(args)?;
    let governance = match &args.policy {
        Some(path) => {
            PolicyFile::load(path).map_err(|e| Failure::usage("run", format!("--policy: {e}")))?
        }
        None => Policy::default(),
    };
    let actions = match governance.grants_for(&args.agent_id) {
        Some(g) => builtin::registry()
            .restricted(
                g.actions.iter().map(String::as_str),
                g.effects.iter().map(String::as_str),
            )
            .map_err(|e| {
                Failure::usage(
                    "run",
                    format!("--policy: the grants of {}: {e}", args.agent_id),
                )
            })?,
        None => builtin::registry(),
    };
    let mut policy = governance.rings.clone();
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
    if args.policy.is_some() {
        builder = builder.rate_limits(Arc::new(RateLimiter::new(
            governance.rate,
            Arc::new(SystemClock::default()),
            16,
        )));
    }
    let builder = args.cache.apply(builder);
    let runtime = builder.build().context("starting the runtime")?;

    let t = Instant::now();
    let bytes = read_component(&args.agent)?;
    let cached = args.cache.dir().is_some();
    let component = load_with_progress(&runtime, bytes, &args.agent, cached).await;
    report.load = Some(t.elapsed());
    let component = match component {
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
    let files = Arc::new(
        QuotaFiles::open(dir, args.quotas())
            .with_context(|| format!("the agent directory {}", dir_path.display()))?,
    );
    let spec =
        AgentSpec::new(args.agent_id.clone(), args.ring, files.clone()).actions(Arc::new(actions));
    // `--policy`'s `[net]` allow-list (outside a session: its rules that
    // name no session), and its ring-2 grant of `net` to this agent.
    let net = governance.net.for_agent(&args.agent_id, &spec.session);
    let net_in_standard = governance.grants_for(&args.agent_id).is_some_and(|g| g.net);
    let spec = spec.net(net, net_in_standard);

    let t = Instant::now();
    let spawned = runtime.spawn(&component, spec).await;
    report.instantiate = Some(t.elapsed());
    let mut agent = match spawned {
        Ok(a) => a,
        Err(AgentError::Load(e)) => {
            return Err(Failure::Refused(format!("{}: {e}", args.agent.display())));
        }
        Err(e) => return record_error(report, e),
    };
    let kill = agent.kill_handle();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            kill.kill("interrupted (Ctrl-C)");
        }
    });
    let t = Instant::now();
    let result = agent.run(&input).await;
    report.call = Some(t.elapsed());
    ctrl_c.abort();
    report.usage = Some(files.usage());
    match result {
        Ok(out) => {
            report.logs = out.logs;
            report.dropped_log_lines = out.dropped_log_lines;
            report.fuel_used = Some(out.fuel_used);
            report.trace = Some(out.trace);
            report.call = Some(out.elapsed);
            Ok(match out.result {
                Ok(answer) => {
                    report.answer = Some(answer);
                    Exit::Ok
                }
                Err(msg) => {
                    report.failure = Some(msg);
                    Exit::Failed
                }
            })
        }
        Err(e) => record_error(report, e),
    }
}

fn record_error(report: &mut Report, e: AgentError) -> Result<Exit, Failure> {
    match e {
        AgentError::Trapped { cause, logs, .. } => {
            report.logs = logs;
            let exit = Exit::for_trap(&cause);
            report.trap = Some(cause);
            Ok(exit)
        }
        AgentError::Poisoned { cause, .. } => {
            let exit = Exit::for_trap(&cause);
            report.trap = Some(cause);
            Ok(exit)
        }
        e @ AgentError::InputTooLarge { .. } => Err(Failure::usage("run", format!("input: {e}"))),
        e => Err(Failure::Setup(anyhow::Error::new(e))),
    }
}

/// The input: `--input`, `--input-file` or standard input, checked against
/// the runtime's input limit before anything is started.
fn read_input(args: &RunArgs) -> Result<String, Failure> {
    let limit = MAX_INPUT_BYTES;
    let (what, bytes) = match (&args.input, &args.input_file) {
        (Some(text), _) => ("--input".to_string(), text.clone().into_bytes()),
        (None, None) => return Ok(String::new()),
        (None, Some(path)) => {
            let what = format!("--input-file {}", path.display());
            let mut buf = Vec::new();
            // One byte past the limit is enough to know it is too large.
            let cap = limit as u64 + 1;
            let read = if path.as_os_str() == "-" {
                std::io::stdin().lock().take(cap).read_to_end(&mut buf)
            } else {
                std::fs::File::open(path).and_then(|f| f.take(cap).read_to_end(&mut buf))
            };
            read.map_err(|e| Failure::usage("run", format!("{what}: cannot read: {e}")))?;
            (what, buf)
        }
    };
    if bytes.len() > limit {
        return Err(Failure::usage(
            "run",
            format!("{what}: the input is larger than the {limit}-byte limit"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        Failure::usage(
            "run",
            format!(
                "{what}: the input is not UTF-8 text (invalid at byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// How long loading may take before a spinner says what is going on.
const QUIET_LOAD: Duration = Duration::from_millis(300);

/// Loads (and on a cold cache compiles) the component; if that takes longer
/// than [`QUIET_LOAD`] and standard error is a terminal, shows a spinner.
pub(crate) async fn load_with_progress(
    runtime: &Runtime,
    bytes: Vec<u8>,
    path: &Path,
    cached: bool,
) -> Result<AgentComponent, LoadError> {
    let size = bytes.len();
    let rt = runtime.clone();
    let mut task = tokio::task::spawn_blocking(move || rt.load(&bytes));
    let joined = match tokio::time::timeout(QUIET_LOAD, &mut task).await {
        Ok(joined) => joined,
        Err(_) => {
            let spinner = std::io::stderr().is_terminal().then(|| {
                let s = indicatif::ProgressBar::new_spinner();
                s.set_message(format!(
                    "compiling {} ({:.1} MB) for this machine{}",
                    path.display(),
                    size as f64 / 1e6,
                    if cached {
                        "; the next run takes it from the cache"
                    } else {
                        ""
                    }
                ));
                s.enable_steady_tick(Duration::from_millis(100));
                s
            });
            let joined = task.await;
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            joined
        }
    };
    joined.unwrap_or_else(|e| {
        Err(LoadError::Invalid {
            message: format!("compiling stopped: {e}"),
        })
    })
}

/// For people: the answer alone on standard output; the rest on standard error.
fn print_text(r: &Report) -> Result<(), Failure> {
    // When lines were dropped, the last log line already says how many, once.
    for line in &r.logs {
        errln!("{}", log_text(line));
    }
    if let Some(answer) = &r.answer {
        outln!("{answer}")?;
    }
    if let Some(msg) = &r.failure {
        errln!("agent failed: {msg}");
    }
    if let Some(cause) = &r.trap {
        errln!("{cause}");
    }
    Ok(())
}

fn millis(d: Option<Duration>) -> serde_json::Value {
    d.map_or(serde_json::Value::Null, |d| json!(d.as_secs_f64() * 1e3))
}

fn level(line: &LogLine) -> &'static str {
    match line.level {
        ahv_runtime::LogLevel::Trace => "trace",
        ahv_runtime::LogLevel::Debug => "debug",
        ahv_runtime::LogLevel::Info => "info",
        ahv_runtime::LogLevel::Warn => "warn",
        ahv_runtime::LogLevel::Error => "error",
    }
}

/// For machines: one JSON object, whatever happened after the command line was parsed.
fn print_json(r: &Report, result: Result<Exit, Failure>, total: Duration) -> Result<Exit, Failure> {
    let (exit, error) = match result {
        Ok(exit) => (exit, None),
        Err(Failure::OutputClosed) => return Err(Failure::OutputClosed),
        Err(f) => (f.exit(), f.message()),
    };
    let logs: Vec<serde_json::Value> = r
        .logs
        .iter()
        .map(|l| {
            let source = match l.source {
                LogSource::Log => "log",
                LogSource::Stdout => "stdout",
                LogSource::Stderr => "stderr",
                LogSource::Host => "host",
            };
            json!({ "level": level(l), "source": source, "message": l.message })
        })
        .collect();
    let object = json!({
        "outcome": exit.name(),
        "exit_code": exit.code(),
        "answer": r.answer,
        "failure": r.failure,
        "trap": r.trap.as_ref().map(|t| json!({ "kind": t.kind(), "message": t.to_string() })),
        "error": error,
        "logs": logs,
        "dropped_log_lines": r.dropped_log_lines,
        "fuel_used": r.fuel_used,
        "trace": r.trace.map(|t| t.to_string()),
        "files": r.usage.map(|u| json!({ "files": u.files, "directories": u.dirs, "bytes": u.bytes })),
        "timings_ms": {
            "load": millis(r.load),
            "instantiate": millis(r.instantiate),
            "run": millis(r.call),
            "total": millis(Some(total)),
        },
    });
    outln!("{object}")?;
    Ok(exit)
}
