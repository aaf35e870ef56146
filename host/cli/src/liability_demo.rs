//! `ahv demo`, part 3: joint liability. A trusted lead vouches for an
//! intern whose own trust keeps it in ring 3; the bond lifts the intern to
//! ring 2 and its note-taking works. Then the lead is slashed: its σ falls
//! to 0, the bond is released, and the intern's very next host call is
//! judged at ring 3 again — the same write is now a ring breach. The ledger
//! in the state directory remembers both (`ahv ledger list`).

use std::path::Path;

use ahv_core::AgentId;
use ahv_governance::session::SessionConfig;
use ahv_hypervisor::{Hypervisor, HypervisorError, JoinRequest};
use ahv_runtime::{AgentError, TrapCause};
use anyhow::Context;

use crate::out::outln;

/// Runs part 3 of the demo in `state` (shared with parts 1 and 2).
pub(crate) async fn liability_demo(state: &Path, cache: Option<&Path>) -> anyhow::Result<()> {
    outln!(
        "\nPart 3: joint liability: a vouch lifts an agent, a slash of its voucher takes it back"
    )?;
    let mut b = Hypervisor::builder().state_dir(state);
    if let Some(c) = cache {
        b = b.cache_dir(c);
    }
    let hv = b.build().context("opening the demo's state directory")?;
    let session = hv.create_session(SessionConfig::default(), AgentId::new("did:ex:operator")?)?;
    let lead = AgentId::new("did:ex:lead")?;
    let intern = AgentId::new("did:ex:intern")?;
    let note_taker = hv.load(ahv_agents::NOTE_TAKER)?;
    hv.join_session(&session, JoinRequest::new(lead.clone(), 0.9))
        .await?;
    let ring = hv
        .join_session(
            &session,
            JoinRequest::new(intern.clone(), 0.55).component(note_taker),
        )
        .await?;
    hv.activate_session(&session)?;
    outln!("  {intern} joins with σ 0.55, below the 0.60 a ring 2 seat needs: {ring}")?;
    let receipt = hv.vouch(&session, &lead, &intern, None)?;
    outln!(
        "  {lead} (σ 0.90) vouches for it, bonding {:.2}: effective trust 0.55 + 0.5 × {:.2} = {:.2} -> {}",
        receipt.bond,
        receipt.bond,
        receipt.effective,
        receipt.ring
    )?;
    let out = hv
        .run_agent(&session, &intern, "check the release checklist")
        .await?;
    match out.result {
        Ok(answer) => outln!("  the intern takes a note at {}: {answer}", receipt.ring)?,
        Err(e) => anyhow::bail!("the vouched intern's note failed: {e}"),
    }
    let slash = hv.slash(&session, &lead, None, 1.0, "leaked a deploy key")?;
    for c in &slash.report.changes {
        outln!(
            "  slash ({}): {} σ {:.2} -> {:.2}",
            "leaked a deploy key",
            c.agent,
            c.before,
            c.after
        )?;
    }
    outln!(
        "  its bond for {intern} is released ({} vouch); the intern is back at {}",
        slash.report.released.len(),
        hv.ring(&session, &intern)?
    )?;
    match hv.run_agent(&session, &intern, "and one more note").await {
        Err(HypervisorError::Agent(AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            ..
        })) => outln!(
            "  its very next write is judged at {}: ring breach ({}/{}), recorded, and the agent is expelled",
            b.ring,
            b.capability,
            b.function
        )?,
        other => {
            anyhow::bail!("the intern's write after the slash must be a breach, got {other:?}")
        }
    }
    for agent in [&lead, &intern] {
        let a = hv.assess(agent).await?;
        outln!(
            "  ledger: {agent} risk {:.2} -> {:?} at its next join",
            a.risk,
            a.admission
        )?;
    }
    hv.terminate_session(&session)?;
    hv.shutdown()?;
    outln!(
        "  (`ahv ledger list --state-dir {}` shows the same records)",
        state.display()
    )?;
    Ok(())
}
