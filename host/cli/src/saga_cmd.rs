//! `ahv saga`: run a saga definition with real agents, and read sagas back
//! from a state directory.
//!
//! `ahv saga run FILE --state-dir DIR` sets up a session from the file's
//! `agents` section (each joins with its component and σ), runs the saga,
//! shows each transition as it happens when standard error is a terminal
//! (step, agent, state, attempt, elapsed), then prints a table of the steps.
//! It exits 0 when the saga completed, 1 when it failed (and was
//! compensated), 5 when it escalated (a compensation failed).
//!
//! `ahv saga resume ID --state-dir DIR` continues a saga a killed host left
//! unfinished: a new session gets the agents back and what the committed
//! steps left (from the redo their commits kept), then the engine resumes
//! (or compensates, under `on_crash: compensate`). `ahv saga compensate`
//! undoes such a saga instead, on the operator's order.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ahv_core::AgentId;
use ahv_core::event::{Event, EventPayload};
use ahv_governance::actions::builtin;
use ahv_governance::session::SessionConfig;
use ahv_hypervisor::{Hypervisor, JoinRequest};
use ahv_saga::{
    EngineError, FileStore, ProgressStore, SagaDefinition, SagaId, SagaRecord, SagaReport,
    SagaState, StepState, report_of,
};
use anyhow::Context;
use serde_json::json;

use crate::CacheArgs;
use crate::exit::Exit;
use crate::out::{Failure, errln, outln};

/// `ahv saga …`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum SagaCmd {
    /// Run a saga definition (YAML or JSON) with the agents it lists, in a
    /// new session of the state directory; progress is kept in
    /// `<DIR>/sagas` so that `ahv saga show` can read it back.
    #[command(after_help = crate::exit::help())]
    Run(RunArgs),
    /// Resume an unfinished saga after the host stopped (killed, crashed):
    /// its committed steps' changes are put back into a new session from the
    /// saga journal and never run again; the step that was interrupted runs
    /// again, or the saga is compensated if its definition says
    /// `on_crash: compensate`.
    #[command(after_help = crate::exit::help())]
    Resume(ResumeArgs),
    /// Compensate an unfinished saga on an operator's order: its committed
    /// steps are put back into a new session and undone, newest first.
    #[command(after_help = crate::exit::help())]
    Compensate(CompensateArgs),
    /// Split the blame for a failed or escalated saga among its agents:
    /// Shapley values of the game built from its records (exact up to 16
    /// agents), or the reference's 0.5/0.3/0.2 heuristic.
    #[command(after_help = crate::exit::help())]
    Blame(BlameArgs),
    /// Show a saga's steps and state from a state directory's saga journal.
    #[command(after_help = crate::exit::help())]
    Show(ShowArgs),
    /// List the sagas a state directory holds, with their state.
    #[command(after_help = crate::exit::help())]
    List {
        /// The state directory.
        #[arg(long)]
        state_dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// The saga definition (`.yaml`, `.yml` or `.json`), with an `agents` section.
    file: PathBuf,
    /// Where the session's files, the audit log and the saga journal live.
    #[arg(long)]
    state_dir: PathBuf,
    /// Print the final report as one JSON object on standard output.
    #[arg(long)]
    json: bool,
    /// Where the liability ledger is (admission consults it at every join):
    /// `postgres://USER@HOST/DB`, `sqlite://PATH` or `memory`. Default:
    /// `<state dir>/liability.sqlite`.
    #[arg(long)]
    database: Option<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ResumeArgs {
    /// The saga's id (as `ahv saga run` and `ahv saga list` print it).
    saga: String,
    /// The state directory it ran in.
    #[arg(long)]
    state_dir: PathBuf,
    /// Print the final report as one JSON object on standard output.
    #[arg(long)]
    json: bool,
    /// Where the liability ledger is (admission consults it at every join):
    /// `postgres://USER@HOST/DB`, `sqlite://PATH` or `memory`. Default:
    /// `<state dir>/liability.sqlite`.
    #[arg(long)]
    database: Option<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CompensateArgs {
    #[command(flatten)]
    saga: ResumeArgs,
    /// Why, as the saga's records and events will say.
    #[arg(long, default_value = "operator order")]
    reason: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct BlameArgs {
    /// The saga's id (as `ahv saga run` and `ahv saga list` print it).
    saga: String,
    /// The state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// Use the reference's heuristic instead of Shapley values.
    #[arg(long)]
    heuristic: bool,
    /// Print the attribution as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ShowArgs {
    /// The saga's id (as `ahv saga run` and `ahv saga list` print it).
    saga: String,
    /// The state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// Print the report and its records as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn saga(cmd: SagaCmd) -> Result<Exit, Failure> {
    match cmd {
        SagaCmd::Run(args) => run(args).await,
        SagaCmd::Resume(args) => take_up(args, None).await,
        SagaCmd::Compensate(args) => take_up(args.saga, Some(args.reason)).await,
        SagaCmd::Show(args) => show(&args),
        SagaCmd::Blame(args) => blame(&args),
        SagaCmd::List { state_dir } => list(&state_dir),
    }
}

fn builtin_agent(component: &str) -> Option<&'static [u8]> {
    ahv_agents::ALL
        .iter()
        .find(|(n, _)| *n == component)
        .map(|(_, b)| *b)
}

/// The component bytes an `agents` entry names: a built example agent, or a
/// file (relative to `base`).
fn component_bytes(base: &Path, component: &str) -> Result<Vec<u8>, Failure> {
    if let Some(bytes) = builtin_agent(component) {
        return Ok(bytes.to_vec());
    }
    let path = base.join(component);
    ahv_runtime::runtime::read_component_file(&path).map_err(|e| {
        Failure::Refused(format!(
            "component {component:?}: not an example agent (see `ahv agents`), and {e}"
        ))
    })
}

pub(crate) fn open(
    state_dir: &Path,
    cache: Option<&CacheArgs>,
    database: Option<&str>,
) -> Result<Hypervisor, Failure> {
    let mut b = Hypervisor::builder()
        .state_dir(state_dir)
        .actions(builtin::registry());
    if let Some(cache) = cache {
        if let Some(dir) = cache.dir() {
            b = b.cache_dir(dir);
        }
        if let Some(bytes) = cache.cache_max_bytes {
            b = b.cache_max_bytes(bytes);
        }
    }
    if let Some(url) = database {
        b = b.database(url);
    }
    b.build()
        .with_context(|| format!("cannot open state directory {}", state_dir.display()))
        .map_err(Failure::Setup)
}

/// A new active session with the definition's agents joined (each with its
/// component and σ); relative component paths are resolved against `base`.
async fn agents_session(
    hv: &Hypervisor,
    definition: &SagaDefinition,
    base: &Path,
) -> Result<ahv_core::SessionId, Failure> {
    let operator = AgentId::new("did:ahv:saga-runner").map_err(|e| Failure::Setup(e.into()))?;
    let session = hv
        .create_session(SessionConfig::default(), operator)
        .map_err(|e| Failure::Setup(e.into()))?;
    for a in &definition.agents {
        let bytes = component_bytes(base, &a.component)?;
        let component = hv
            .load(&bytes)
            .map_err(|e| Failure::Refused(format!("agent {} ({}): {e}", a.id, a.component)))?;
        let id = AgentId::new(a.id.as_str()).map_err(|e| Failure::Setup(e.into()))?;
        match hv
            .join_session(&session, JoinRequest::new(id, a.sigma).component(component))
            .await
        {
            Ok(_) => {}
            Err(e @ ahv_hypervisor::HypervisorError::AdmissionDenied { .. }) => {
                return Err(Failure::Denied(e.to_string()));
            }
            Err(e) => {
                return Err(Failure::Setup(
                    anyhow::Error::from(e).context(format!("agent {} could not join", a.id)),
                ));
            }
        }
    }
    hv.activate_session(&session)
        .map_err(|e| Failure::Setup(e.into()))?;
    Ok(session)
}

/// What to do with a saga once its session is set up.
enum Work {
    Run(SagaDefinition),
    Resume,
    Compensate(String),
}

/// Runs, resumes or compensates `saga` in `session` with live progress on
/// a terminal, then ends the session and prints the report.
async fn drive(
    hv: &Hypervisor,
    session: &ahv_core::SessionId,
    saga: &SagaId,
    definition: &SagaDefinition,
    work: Work,
    state_dir: &Path,
    json: bool,
) -> Result<Exit, Failure> {
    if !json {
        errln!(
            "saga {saga} ({}) in session {session}; files under {}",
            definition.name,
            state_dir.join("sessions").join(session.as_str()).display()
        );
    }
    let live = (!json && std::io::stderr().is_terminal()).then(|| {
        let start = Instant::now();
        let saga = saga.clone();
        hv.events()
            .subscribe(move |e: &Event| progress(&saga, start, e))
    });
    let result = match work {
        Work::Run(def) => hv.run_saga_as(session, saga.clone(), def).await,
        Work::Resume => hv.resume_saga(session, saga).await,
        Work::Compensate(reason) => hv.compensate_saga(session, saga, &reason).await,
    };
    if let Some(sub) = live {
        hv.events().unsubscribe(sub);
    }
    let report = result
        .with_context(|| format!("saga {saga} could not run"))
        .map_err(Failure::Setup)?;
    hv.terminate_session(session)
        .map_err(|e| Failure::Setup(e.into()))?;
    hv.shutdown().map_err(|e| Failure::Setup(e.into()))?;
    print_report(&report, definition, json, None)?;
    Ok(exit_for(report.state))
}

async fn run(args: RunArgs) -> Result<Exit, Failure> {
    let mut definition = SagaDefinition::from_path(&args.file)
        .map_err(|e| Failure::usage("saga", format!("{}: {e}", args.file.display())))?;
    if definition.agents.is_empty() {
        return Err(Failure::usage(
            "saga",
            format!(
                "{}: lists no agents; `ahv saga run` joins the agents of the file's `agents` section",
                args.file.display()
            ),
        ));
    }
    // Component files are kept by absolute path in the saga journal, so
    // that `ahv saga resume` finds them from anywhere.
    let base = args.file.parent().unwrap_or(Path::new("."));
    for a in &mut definition.agents {
        if builtin_agent(&a.component).is_none() {
            let path = base.join(&a.component);
            let abs = std::fs::canonicalize(&path).map_err(|e| {
                Failure::Refused(format!(
                    "component {:?}: not an example agent (see `ahv agents`), and {} cannot be read: {e}",
                    a.component,
                    path.display()
                ))
            })?;
            a.component = abs.to_string_lossy().into_owned();
        }
    }
    let hv = open(&args.state_dir, Some(&args.cache), args.database.as_deref())?;
    let session = agents_session(&hv, &definition, base).await?;
    let saga = hv.new_saga_id();
    let work = Work::Run(definition.clone());
    drive(
        &hv,
        &session,
        &saga,
        &definition,
        work,
        &args.state_dir,
        args.json,
    )
    .await
}

/// `ahv saga resume` and `ahv saga compensate` (with a reason).
async fn take_up(args: ResumeArgs, compensate: Option<String>) -> Result<Exit, Failure> {
    let saga = saga_id(&args.saga)?;
    // Read first: an unknown saga or a missing journal is the user's error,
    // and opening the hypervisor would create a state directory.
    let (_, definition, report) = load_saga(&args.state_dir, &saga)?;
    if report.state.is_final() {
        if !args.json {
            errln!(
                "saga {saga} is already {}: nothing to do",
                report.state.as_str()
            );
        }
        print_report(&report, &definition, args.json, None)?;
        return Ok(exit_for(report.state));
    }
    let hv = open(&args.state_dir, Some(&args.cache), args.database.as_deref())?;
    let session = agents_session(&hv, &definition, Path::new(".")).await?;
    let work = match compensate {
        Some(reason) => Work::Compensate(reason),
        None => Work::Resume,
    };
    drive(
        &hv,
        &session,
        &saga,
        &definition,
        work,
        &args.state_dir,
        args.json,
    )
    .await
}

fn exit_for(state: SagaState) -> Exit {
    match state {
        SagaState::Completed => Exit::Ok,
        SagaState::Escalated => Exit::Escalated,
        _ => Exit::Failed,
    }
}

/// One line per transition of `saga` on standard error.
fn progress(saga: &SagaId, start: Instant, e: &Event) {
    let (step, what) = match &e.payload {
        EventPayload::SagaStepStarted {
            saga: s,
            step,
            attempt,
        } if s == saga.as_str() => (step.clone(), format!("executing (attempt {attempt})")),
        EventPayload::SagaStepCommitted {
            saga: s,
            step,
            attempt,
            changes,
        } if s == saga.as_str() => (
            step.clone(),
            format!("committed (attempt {attempt}, {changes} changes)"),
        ),
        EventPayload::SagaStepFailed {
            saga: s,
            step,
            attempt,
            error,
            retry_in,
        } if s == saga.as_str() => {
            let retry = if retry_in.is_zero() {
                String::new()
            } else {
                format!("; retry in {}", fmt_elapsed(*retry_in))
            };
            (
                step.clone(),
                format!("failed (attempt {attempt}): {error}{retry}"),
            )
        }
        EventPayload::SagaStepCompensated { saga: s, step } if s == saga.as_str() => {
            (step.clone(), "compensated".into())
        }
        EventPayload::SagaCompensationFailed {
            saga: s,
            step,
            error,
        } if s == saga.as_str() => (step.clone(), format!("compensation failed: {error}")),
        EventPayload::SagaCompensating { saga: s, reason } if s == saga.as_str() => {
            ("*".into(), format!("compensating: {reason}"))
        }
        EventPayload::SagaFanoutStarted {
            saga: s,
            group,
            policy,
            branches,
        } if s == saga.as_str() => (
            group.clone(),
            format!("fan-out {policy} of {branches} started"),
        ),
        EventPayload::SagaFanoutResolved {
            saga: s,
            group,
            succeeded,
            failed,
            cancelled,
            ..
        } if s == saga.as_str() => (
            group.clone(),
            format!(
                "fan-out resolved: {succeeded} succeeded, {failed} failed, {cancelled} cancelled"
            ),
        ),
        _ => return,
    };
    let agent = e.agent.as_ref().map_or("-", AgentId::as_str);
    errln!(
        "  {:>8}  {step:<16} {agent:<24} {what}",
        fmt_elapsed(start.elapsed())
    );
}

fn fmt_elapsed(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

fn state_name(s: StepState, skipped: bool) -> &'static str {
    if skipped { "skipped" } else { s.as_str() }
}

fn print_report(
    report: &SagaReport,
    definition: &SagaDefinition,
    json: bool,
    records: Option<&[SagaRecord]>,
) -> Result<(), Failure> {
    let agent_of = |id: &str| {
        definition
            .steps
            .iter()
            .find(|s| s.id == id)
            .map_or("?", |s| s.agent.as_str())
    };
    if json {
        let steps: Vec<_> = report
            .steps
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "agent": agent_of(&s.id),
                    "state": state_name(s.state, s.skipped),
                    "attempts": s.attempts,
                    "elapsed_ms": s.elapsed.as_secs_f64() * 1e3,
                    "output": s.output,
                    "error": s.error,
                })
            })
            .collect();
        let mut v = json!({
            "saga": report.saga.as_str(),
            "name": definition.name,
            "state": report.state.as_str(),
            "exit_code": exit_for(report.state).code(),
            "steps": steps,
        });
        if let Some(records) = records {
            v["records"] = serde_json::to_value(records).map_err(|e| Failure::Setup(e.into()))?;
        }
        outln!("{v}")?;
        return Ok(());
    }
    outln!(
        "saga {} ({}): {}",
        report.saga,
        definition.name,
        report.state.as_str()
    )?;
    outln!(
        "  {:<16} {:<24} {:<20} {:>8} {:>9}  detail",
        "step",
        "agent",
        "state",
        "attempts",
        "elapsed"
    )?;
    for s in &report.steps {
        let detail = s
            .error
            .as_deref()
            .or(s.output.as_deref())
            .unwrap_or("")
            .replace('\n', " ");
        let detail: String = detail.chars().take(100).collect();
        outln!(
            "  {:<16} {:<24} {:<20} {:>8} {:>9}  {detail}",
            s.id,
            agent_of(&s.id),
            state_name(s.state, s.skipped),
            s.attempts,
            fmt_elapsed(s.elapsed)
        )?;
    }
    Ok(())
}

fn saga_id(text: &str) -> Result<SagaId, Failure> {
    SagaId::new(text).map_err(|e| Failure::usage("saga", format!("saga id {text:?}: {e}")))
}

/// The saga store of a state directory, opened without the rest of the
/// hypervisor (no runtime, no audit log): reading never changes anything
/// but a torn journal tail, which is cut and kept aside.
fn store(state_dir: &Path) -> Result<FileStore, Failure> {
    let dir = state_dir.join("sagas");
    if !dir.is_dir() {
        return Err(Failure::usage(
            "saga",
            format!(
                "{} holds no sagas (no sagas/ directory)",
                state_dir.display()
            ),
        ));
    }
    FileStore::open(&dir).map_err(|e| Failure::Setup(e.into()))
}

/// A saga's records, its latest definition and its report, read from the
/// state directory's journal only (an unknown saga is a usage error).
fn load_saga(
    state_dir: &Path,
    saga: &SagaId,
) -> Result<(Vec<SagaRecord>, SagaDefinition, SagaReport), Failure> {
    let records = store(state_dir)?
        .load(saga)
        .with_context(|| format!("saga {saga}"))
        .map_err(Failure::Setup)?;
    let Some(definition) = records.iter().rev().find_map(|r| match r {
        SagaRecord::Created { definition, .. } => Some(SagaDefinition::clone(definition)),
        _ => None,
    }) else {
        return Err(Failure::usage(
            "saga",
            format!("no saga {saga} in {}", state_dir.display()),
        ));
    };
    let report = report_of(saga, &records)
        .with_context(|| format!("saga {saga}"))
        .map_err(Failure::Setup)?;
    Ok((records, definition, report))
}

fn show(args: &ShowArgs) -> Result<Exit, Failure> {
    let saga = saga_id(&args.saga)?;
    let (records, definition, report) = load_saga(&args.state_dir, &saga)?;
    print_report(
        &report,
        &definition,
        args.json,
        args.json.then_some(&records[..]),
    )?;
    if !args.json {
        outln!("  ({} records in its journal)", records.len())?;
    }
    Ok(Exit::Ok)
}

fn blame(args: &BlameArgs) -> Result<Exit, Failure> {
    use ahv_trust::{AttributionMethod, AttributionPolicy};
    let saga = saga_id(&args.saga)?;
    let (records, definition, report) = load_saga(&args.state_dir, &saga)?;
    let state = report.state;
    let policy = if args.heuristic {
        AttributionPolicy::Heuristic
    } else {
        AttributionPolicy::default()
    };
    let attribution = ahv_hypervisor::saga_trace(&saga, &definition, &records)
        .map_err(anyhow::Error::from)
        .and_then(|trace| ahv_trust::attribute(&trace, &policy).map_err(anyhow::Error::from))
        .with_context(|| format!("attributing saga {saga}"))
        .map_err(Failure::Setup)?;
    let method = match &attribution.method {
        AttributionMethod::NoHarm => "no harm".to_string(),
        AttributionMethod::Exact => "shapley (exact)".to_string(),
        AttributionMethod::Sampled {
            permutations,
            sampling,
        } => format!(
            "shapley (sampled: {permutations} permutations, each share within {} with probability {})",
            sampling.epsilon,
            1.0 - sampling.delta
        ),
        AttributionMethod::Heuristic => "heuristic (0.5 direct, 0.3 enabling, 0.2 temporal)".into(),
    };
    let cause = attribution.direct_cause.as_ref().map(AgentId::as_str);
    if args.json {
        let shares: Vec<_> = attribution
            .shares
            .iter()
            .map(|s| json!({ "agent": s.agent.as_str(), "share": s.share }))
            .collect();
        outln!(
            "{}",
            json!({
                "saga": saga.as_str(),
                "state": state.as_str(),
                "method": method,
                "direct_cause": cause,
                "shares": shares,
            })
        )?;
        return Ok(Exit::Ok);
    }
    outln!(
        "saga {saga} ({}): {}; {method}",
        definition.name,
        state.as_str()
    )?;
    if let Some(c) = cause {
        outln!("  direct cause: {c}")?;
    }
    for s in &attribution.shares {
        outln!("  {:<32} {:>6.1} %", s.agent.as_str(), s.share * 100.0)?;
    }
    Ok(Exit::Ok)
}

fn list(state_dir: &Path) -> Result<Exit, Failure> {
    let store = store(state_dir)?;
    let sagas = store
        .list()
        .context("listing sagas")
        .map_err(Failure::Setup)?;
    for saga in sagas {
        let state = store
            .load(&saga)
            .map_err(EngineError::from)
            .and_then(|records| report_of(&saga, &records))
            .map_or_else(
                |e| format!("unreadable: {e}"),
                |r| r.state.as_str().to_string(),
            );
        outln!("{saga}  {state}")?;
    }
    Ok(Exit::Ok)
}
