//! `ahv demo`, part 2: a saga that fails and is compensated. Three agents
//! draft, review and publish release notes, each step inside its own
//! instance; the publisher is asked for a channel it does not know, so the
//! saga compensates the review and the draft, newest first. The session's
//! shared files are listed (with their hashes) before and after: they are
//! the same, byte for byte, although the draft step had replaced an older
//! draft and the review step had created a file.

use std::path::Path;
use std::sync::Arc;

use ahv_core::event::{Event, EventPayload};
use ahv_core::{AgentId, Ring};
use ahv_governance::actions::builtin;
use ahv_governance::files::{Caller, FileSpace};
use ahv_governance::session::SessionConfig;
use ahv_governance::session_core::SessionCore;
use ahv_governance::vfs::EntryKind;
use ahv_hypervisor::{Hypervisor, JoinRequest};
use ahv_saga::SagaDefinition;
use anyhow::Context;

use crate::out::outln;

/// The failing saga, as shipped in `example-agents/sagas/`.
const SAGA: &str = include_str!("../../../example-agents/sagas/publish-fails.yaml");

/// Every file under `dir` (recursively) with its hash and size, sorted.
fn tree(
    core: &SessionCore,
    who: Caller<'_>,
    dir: &str,
    out: &mut Vec<String>,
) -> anyhow::Result<()> {
    for name in core.list(who, dir)? {
        let path = format!("{dir}/{name}");
        let stat = core.stat(who, &path)?;
        match stat.kind {
            EntryKind::Directory => tree(core, who, &path, out)?,
            EntryKind::File => {
                let hash = core.hash(who, &path)?;
                out.push(format!(
                    "{path:<36} {:>5} B  sha256 {}…",
                    stat.size,
                    hex::encode(&hash[..6])
                ));
            }
        }
    }
    Ok(())
}

fn narrate(e: &Event) -> Option<String> {
    let who = e.agent.as_ref().map_or("", AgentId::as_str);
    Some(match &e.payload {
        EventPayload::SagaStepStarted { step, attempt, .. } => {
            format!("{step}: started in {who} (attempt {attempt})")
        }
        EventPayload::SagaStepCommitted { step, changes, .. } => {
            format!("{step}: committed ({changes} changes recorded)")
        }
        EventPayload::SagaStepFailed {
            step,
            error,
            retry_in,
            ..
        } => {
            if retry_in.is_zero() {
                format!("{step}: failed: {error}")
            } else {
                format!("{step}: failed: {error}; retry in {retry_in:?}")
            }
        }
        EventPayload::SagaCompensating { reason, .. } => format!("compensating: {reason}"),
        EventPayload::SagaStepCompensated { step, .. } => {
            format!("{step}: compensated (its recorded changes undone, newest first)")
        }
        EventPayload::SagaCompensationFailed { step, error, .. } => {
            format!("{step}: compensation failed: {error}")
        }
        EventPayload::SagaFailed { .. } => "saga failed, and nothing of it remains".into(),
        EventPayload::SagaEscalated { failures, .. } => {
            format!("saga escalated: {failures} compensations failed")
        }
        EventPayload::SagaCompleted { .. } => "saga completed".into(),
        _ => return None,
    })
}

/// Runs part 2 of the demo in `state` (shared with part 1, so that one
/// `ahv audit verify` covers both).
pub(crate) async fn saga_demo(state: &Path, cache: Option<&Path>) -> anyhow::Result<()> {
    outln!("\nPart 2: a saga whose last step fails, and is compensated")?;
    let mut b = Hypervisor::builder()
        .state_dir(state)
        .actions(builtin::registry());
    if let Some(c) = cache {
        b = b.cache_dir(c);
    }
    let hv = b.build().context("opening the demo's state directory")?;
    let definition = SagaDefinition::from_yaml(SAGA).context("the shipped failing saga")?;
    let session = hv.create_session(SessionConfig::default(), AgentId::new("did:ex:operator")?)?;
    for a in &definition.agents {
        let bytes = ahv_agents::ALL
            .iter()
            .find(|(n, _)| *n == a.component)
            .map(|(_, b)| *b)
            .with_context(|| format!("example agent {}", a.component))?;
        let component = hv.load(bytes)?;
        hv.join_session(
            &session,
            JoinRequest::new(AgentId::new(a.id.as_str())?, a.sigma).component(component),
        )
        .await?;
    }
    hv.activate_session(&session)?;
    let core = hv.session_core(&session)?;
    let drafter = AgentId::new("did:ex:drafter")?;
    let who = Caller::untraced(&drafter, Ring::Standard);
    // An older draft the saga's draft step will replace (and must put back).
    core.write(
        who,
        "shared/drafts/release-notes.md",
        b"# Release notes\n(last week's draft)\n",
    )?;
    let mut before = Vec::new();
    tree(&core, who, "shared", &mut before)?;
    outln!("Shared files before the saga:")?;
    for line in &before {
        outln!("  {line}")?;
    }
    outln!(
        "Running {:?}: draft -> review -> publish (to channel \"nowhere\", which the publisher does not know)",
        definition.name
    )?;
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    let sub = hv.events().subscribe(move |e: &Event| {
        if let Some(l) = narrate(e) {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(l);
        }
    });
    let report = hv.run_saga(&session, definition).await;
    hv.events().unsubscribe(sub);
    for l in lines.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        outln!("  {l}")?;
    }
    let report = report?;
    let mut after = Vec::new();
    tree(&core, who, "shared", &mut after)?;
    outln!("Shared files after the saga ({}):", report.state.as_str())?;
    for line in &after {
        outln!("  {line}")?;
    }
    outln!(
        "Same files, same bytes as before: {}",
        if before == after { "yes" } else { "NO" }
    )?;
    anyhow::ensure!(
        before == after,
        "compensation did not restore the session's files"
    );
    hv.terminate_session(&session)?;
    hv.shutdown()?;
    Ok(())
}
