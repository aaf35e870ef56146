//! `ahv`: run, inspect and demo governed Wasm agents.
//!
//! The binary's `main` is [`main`]; it lives in this library so that the
//! workspace's integration tests can build the very same command as their own
//! binary and run it as users do.
#![deny(missing_docs)]
// No unwrap, expect or panic outside tests (clippy.toml allows them in tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit_cmd;
mod client_cmd;
mod demo;
pub mod exit;
mod inspect_cmd;
mod ledger_cmd;
mod liability_demo;
mod mcp_cmd;
pub mod new_cmd;
mod out;
mod policy_cmd;
mod quota_files;
pub mod rings;
mod run_cmd;
mod saga_cmd;
mod saga_demo;
mod serve_cmd;
mod session_demo;

use std::path::PathBuf;
use std::process::ExitCode;

use ahv_runtime::{LogLine, LogSource};
use clap::{Parser, Subcommand};

use crate::exit::Exit;
use crate::out::{Failure, errln};

const ACTIONS_HELP: &str = "\
Built-in host actions available to `ahv run`:
  note.append   reversible (ring ≤ 2): appends a line to journal/notes.log
  notify.send   effect (ring ≤ 1): appends a line to outbox/notifications.log
";

const TRY_HELP: &str = "\
Try:  ahv demo                       (the example agents, hostile ones included)
      ahv audit verify <STATE_DIR>   (check a state directory's audit log offline)
      ahv agents                     (where the built example agents are)
      ahv run <hello.wasm> --ring 3 --input Ada
      ahv new --lang rust|python|js <NAME>  (a new agent project that builds and runs as made)
      ahv policy check <policy.toml>  (the effective ring table of a policy file)
      ahv saga run <saga.yaml> --state-dir <DIR>  (steps inside agents, compensated on failure)
";

fn top_help() -> String {
    format!(
        "{}\n{ACTIONS_HELP}\n{}\n{TRY_HELP}",
        rings::help(),
        exit::help()
    )
}

fn run_help() -> String {
    format!("{}\n{ACTIONS_HELP}\n{}", rings::help(), exit::help())
}

/// Agent Hypervisor: runs untrusted AI-agent code as WebAssembly components,
/// inside an execution ring that decides which host capabilities it may call.
#[derive(Parser, Debug)]
#[command(name = "ahv", version, about, after_help = top_help())]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an agent's `run` once in a ring, with a directory as its files.
    #[command(after_help = run_help())]
    Run(run_cmd::RunArgs),
    /// Make a new agent project (Rust, Python or JavaScript) in a new
    /// directory NAME: the agent, its SDK, its build command and a unit test
    /// of its logic. It builds and runs under `ahv run` as it is made.
    #[command(after_help = exit::help())]
    New(new_cmd::NewArgs),
    /// Show a component's imports and exports, whether it is admitted (the
    /// same checks as `ahv run`), and the lowest ring that covers it.
    #[command(after_help = exit::help())]
    Inspect(inspect_cmd::InspectArgs),
    /// Run the example agents (useful and hostile) and narrate what happens.
    #[command(after_help = exit::help())]
    Demo {
        /// Keep the agents' files and the audit log here. Default: a new
        /// directory `ahv-demo-*` under the system temporary directory, kept
        /// afterwards so its audit log can be verified.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// List the built-in example agents and where their components are.
    #[command(after_help = exit::help())]
    Agents,
    /// Check, read and prove from the tamper-evident audit log of a state directory.
    #[command(after_help = exit::help())]
    Audit {
        #[command(subcommand)]
        cmd: audit_cmd::AuditCmd,
    },
    /// Check a TOML policy file (rings, budgets, rate limits, breach and
    /// elevation rules, per-agent grants) and print its effective table.
    Policy {
        #[command(subcommand)]
        cmd: policy_cmd::PolicyCmd,
    },
    /// Run a saga (steps inside agents, compensated on failure) from a YAML
    /// or JSON definition, or read sagas back from a state directory.
    #[command(after_help = exit::help())]
    Saga {
        #[command(subcommand)]
        cmd: saga_cmd::SagaCmd,
    },
    /// Read the liability ledger (slashes, quarantines, faults, clean
    /// sessions, risk and admission) of a state directory or a database.
    #[command(after_help = exit::help())]
    Ledger {
        #[command(subcommand)]
        cmd: ledger_cmd::LedgerCmd,
    },
    /// Serve the HTTP API (sessions, agents, liability, sagas, events) over
    /// a state directory, with bearer-token auth; `/openapi.json` describes it.
    #[command(after_help = exit::help())]
    Serve(serve_cmd::ServeArgs),
    /// Serve agents as MCP tools over standard input and output (for an LLM
    /// client): each call runs the agent under its ring, audited.
    #[command(after_help = exit::help())]
    Mcp(mcp_cmd::McpArgs),
    /// Make bearer tokens for `ahv serve`'s tokens file.
    Token {
        #[command(subcommand)]
        cmd: serve_cmd::TokenCmd,
    },
    /// Drive shared sessions on a running `ahv serve`: create, join, run,
    /// kill, terminate, list, read files.
    Session {
        #[command(subcommand)]
        cmd: client_cmd::SessionCmd,
    },
    /// Vouch, release, slash, quarantine and release agents in a session on
    /// a running `ahv serve`; blame and ledgers.
    Liability {
        #[command(subcommand)]
        cmd: client_cmd::LiabilityCmd,
    },
}

/// Options shared by the commands that compile components.
#[derive(clap::Args, Debug, Clone)]
struct CacheArgs {
    /// Where compiled components are cached (created private, mode 0700).
    /// Default: $XDG_CACHE_HOME/ahv or ~/.cache/ahv.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Do not use the on-disk component cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// The most bytes the component cache keeps; after compiling a
    /// component, the least recently loaded others are removed until the
    /// rest fit. Default: 1 GiB.
    #[arg(long, value_name = "BYTES", conflicts_with = "no_cache",
          value_parser = clap::value_parser!(u64).range(1..))]
    cache_max_bytes: Option<u64>,
}

impl CacheArgs {
    /// The cache directory to use, if any.
    fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(default_cache_dir)
    }

    /// Sets the cache's directory and budget on a runtime builder.
    fn apply(&self, mut b: ahv_runtime::RuntimeBuilder) -> ahv_runtime::RuntimeBuilder {
        if let Some(dir) = self.dir() {
            b = b.cache_dir(dir);
        }
        if let Some(bytes) = self.cache_max_bytes {
            b = b.cache_max_bytes(bytes);
        }
        b
    }
}

/// `ahv` itself: parses the command line, runs the command, and returns its
/// exit code (see [`exit`]).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let otlp = match &cli.command {
        Command::Serve(args) => args.otlp_endpoint.as_deref(),
        _ => None,
    };
    let telemetry = match ahv_api::telemetry::install(otlp) {
        Ok(t) => t,
        Err(e) => {
            errln!("error: {e}");
            return Exit::Usage.into();
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return Exit::Setup.into();
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run_cmd::run(args).await,
            Command::New(args) => new_cmd::new(args),
            Command::Inspect(args) => inspect_cmd::inspect(&args).await,
            Command::Demo { state_dir } => demo::demo(state_dir).await.map_err(Failure::from),
            Command::Agents => agents(),
            Command::Audit { cmd } => audit_cmd::audit(cmd),
            Command::Policy { cmd } => policy_cmd::policy(cmd),
            Command::Saga { cmd } => saga_cmd::saga(cmd).await,
            Command::Ledger { cmd } => ledger_cmd::ledger(cmd).await,
            Command::Serve(args) => serve_cmd::serve(args).await,
            Command::Mcp(args) => mcp_cmd::mcp(args).await,
            Command::Token { cmd } => serve_cmd::token(cmd),
            Command::Session { cmd } => client_cmd::session(cmd),
            Command::Liability { cmd } => client_cmd::liability(cmd),
        }
    });
    let exit = result.unwrap_or_else(Failure::report);
    drop(rt);
    telemetry.shutdown();
    exit.into()
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ahv"))
}

/// One log line the way `ahv run` and `ahv demo` show them.
fn log_text(line: &LogLine) -> String {
    let source = match line.source {
        LogSource::Log => format!("{:?}", line.level).to_lowercase(),
        LogSource::Stdout => "stdout".into(),
        LogSource::Stderr => "stderr".into(),
        LogSource::Host => "host".into(),
    };
    format!("[{source}] {}", line.message)
}

/// Reads a component file named on the command line; a file that cannot be
/// read is refused, as a file that is not a component is.
fn read_component(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    ahv_runtime::runtime::read_component_file(path).map_err(Failure::Refused)
}

fn agents() -> Result<Exit, Failure> {
    out::outln!("Example agents built with this binary (run one with `ahv run PATH --ring N`):")?;
    for (name, bytes) in ahv_agents::ALL {
        let path = ahv_agents::PATHS
            .iter()
            .find(|(n, _)| n == name)
            .map_or("?", |(_, p)| p);
        out::outln!("  {name:<13} {:>7} bytes  {path}", bytes.len())?;
    }
    Ok(Exit::Ok)
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
    fn every_command_documents_the_exit_codes() {
        let mut cli = Cli::command();
        let table = exit::help();
        let mut missing = Vec::new();
        fn walk(cmd: &mut clap::Command, path: String, table: &str, missing: &mut Vec<String>) {
            let help = cmd.render_long_help().to_string();
            if cmd.get_name() != "help"
                && !cmd.has_subcommands()
                && !help.contains(table.trim_end())
            {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands_mut() {
                let p = format!("{path} {}", sub.get_name());
                walk(sub, p, table, missing);
            }
        }
        walk(&mut cli, "ahv".into(), &table, &mut missing);
        assert!(missing.is_empty(), "no exit-code table in: {missing:?}");
    }

    #[test]
    fn ring_flag_accepts_numbers_and_names() {
        let cli = Cli::try_parse_from(["ahv", "run", "a.wasm", "--ring", "standard"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.ring, ahv_core::Ring::Standard);
        assert!(Cli::try_parse_from(["ahv", "run", "a.wasm", "--ring", "7"]).is_err());
    }

    #[test]
    fn bad_values_are_usage_errors_at_parse_time() {
        let bad: &[&[&str]] = &[
            &["ahv", "run", "a.wasm", "--ring", "3", "--fuel", "0"],
            &["ahv", "run", "a.wasm", "--ring", "3", "--deadline-ms", "0"],
            &[
                "ahv",
                "run",
                "a.wasm",
                "--ring",
                "3",
                "--agent-id",
                "not valid!",
            ],
            &["ahv", "audit", "verify", "--proof", "p.json"],
            &["ahv", "audit", "verify"],
            &["ahv", "audit", "verify", "d", "--public-key", "zz"],
            &["ahv", "audit", "show", "d", "--session", "../x"],
        ];
        for args in bad {
            let e = Cli::try_parse_from(*args).expect_err(&args.join(" "));
            assert_eq!(e.exit_code(), 2, "{}: {e}", args.join(" "));
        }
    }
}
