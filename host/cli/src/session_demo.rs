//! `ahv demo`, part 1: a governed shared session. A researcher and an editor
//! collaborate through shared state and a locked shared file; a hostile
//! participant admitted at ring 3 tries to write and is expelled. Every
//! governance event is printed.
//!
//! Events are emitted while an agent runs, but its log lines come back only
//! with the call's result, so printing events as they are emitted put a
//! breach before the log line of the agent that caused it. The [`Narrator`]
//! keeps the events and prints them at the next line of narration; around a
//! call that is after the agent's own log lines, under "the host recorded".

use std::path::Path;
use std::sync::{Arc, Mutex};

use ahv_core::event::{Event, EventKind, EventPayload};
use ahv_core::{AgentId, Ring};
use ahv_governance::files::{Caller, FileSpace};
use ahv_governance::session::SessionConfig;
use ahv_hypervisor::{Hypervisor, HypervisorError, JoinRequest};
use ahv_runtime::AgentError;
use anyhow::Context;

use crate::log_text;
use crate::out::outln;

fn short(h: &[u8; 32]) -> String {
    h.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// One line per event.
fn show(e: &Event) -> String {
    let who = e.agent.as_ref().map_or(String::new(), |a| format!(" {a}"));
    let what = match &e.payload {
        EventPayload::SessionCreated {
            max_participants,
            max_duration,
            ..
        } => {
            format!("at most {max_participants} participants, {max_duration:?}")
        }
        EventPayload::SessionJoined { ring, sigma } => format!("σ {sigma:.2} → {ring}"),
        EventPayload::RingAssigned { ring, reason } => format!("{ring} ({reason})"),
        EventPayload::SessionActivated { participants } => format!("{participants} participants"),
        EventPayload::SessionLeft { reason } => reason.clone(),
        EventPayload::SessionTerminated { reason } => reason.to_string(),
        EventPayload::VfsWrite {
            path,
            op,
            size,
            after,
            ..
        } => format!(
            "{op} {path} ({size} B{})",
            after.map_or(String::new(), |h| format!(", sha256 {}…", short(&h)))
        ),
        EventPayload::VfsDelete { path, .. } => path.clone(),
        EventPayload::VfsRename { from, to, .. } => format!("{from} → {to}"),
        EventPayload::VfsConflict { path, reason } => format!("{path}: {reason}"),
        EventPayload::StateWrite { key, version } => format!("{key} = v{version}"),
        EventPayload::StateConflict { key, reason } => format!("{key}: {reason}"),
        EventPayload::LockAcquired { resource, mode } => format!("{mode} {resource}"),
        EventPayload::LockReleased { resource } => resource.clone(),
        EventPayload::RingBreachDetected {
            ring,
            capability,
            function,
        } => {
            format!("{capability}/{function} called from {ring}")
        }
        EventPayload::VfsSnapshot {
            snapshot,
            files,
            bytes,
        } => {
            format!("#{snapshot}: {files} files, {bytes} B")
        }
        // The rest carry their fields in their `key=value` display form.
        other => other.fields().to_string().trim_start().to_owned(),
    };
    let line = format!("{:<22}{who}  {what}", e.kind().name());
    format!("   · {}", line.trim_end())
}

/// Prints the narration and the session's events in an order that reads
/// causally (see the module docs), and counts the breaches it shows.
pub(crate) struct Narrator {
    pending: Arc<Mutex<Vec<Event>>>,
    breaches: usize,
}

impl Narrator {
    /// A narrator of `hv`'s events.
    fn new(hv: &Hypervisor) -> Narrator {
        let pending = Arc::new(Mutex::new(Vec::new()));
        let sink = pending.clone();
        // Every governed event is also followed by its `audit.delta_captured`;
        // the narration leaves those out.
        hv.events().subscribe(move |e: &Event| {
            if e.kind() != EventKind::AuditDeltaCaptured {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(e.clone());
            }
        });
        Narrator {
            pending,
            breaches: 0,
        }
    }

    /// Prints the events emitted since the last call.
    fn events(&mut self) -> std::io::Result<()> {
        let events = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for e in &events {
            if e.kind() == EventKind::RingBreachDetected {
                self.breaches += 1;
            }
            outln!("{}", show(e))?;
        }
        Ok(())
    }

    /// Prints the pending events, then `line`.
    fn say(&mut self, line: impl std::fmt::Display) -> std::io::Result<()> {
        self.events()?;
        outln!("{line}")
    }

    /// The ring breaches shown so far.
    pub(crate) fn breaches(&self) -> usize {
        self.breaches
    }
}

/// One call into `agent`: what it logged, what the host recorded meanwhile, how it ended.
async fn run(
    n: &mut Narrator,
    hv: &Hypervisor,
    s: &ahv_core::SessionId,
    agent: &AgentId,
    input: &str,
) -> std::io::Result<()> {
    n.say(format!("   ▶ {agent} runs with input {input:?}"))?;
    let result = hv.run_agent(s, agent, input).await;
    let logs = match &result {
        Ok(out) => out.logs.as_slice(),
        Err(HypervisorError::Agent(AgentError::Trapped { logs, .. })) => logs.as_slice(),
        Err(_) => &[],
    };
    for line in logs {
        outln!("     {}", log_text(line))?;
    }
    n.events()?;
    match result {
        Ok(out) => match out.result {
            Ok(answer) => outln!("   → {answer}"),
            Err(msg) => outln!("   → the agent reported a failure: {msg}"),
        },
        Err(HypervisorError::Agent(e)) => {
            let cause = e.cause().map_or_else(|| e.to_string(), ToString::to_string);
            outln!("   ✗ TRAPPED: {cause}")
        }
        Err(e) => outln!("   ✗ {e}"),
    }
}

/// What part 1 leaves for the rest of the demo.
pub(crate) struct SessionDemo {
    /// The audit log's public key (hex), if the log was kept.
    pub(crate) public_key: Option<String>,
    /// The ring breaches it showed.
    pub(crate) breaches: usize,
}

/// Runs the session demo with its state under `state_dir`.
pub(crate) async fn session_demo(
    state_dir: &Path,
    cache: Option<&Path>,
) -> anyhow::Result<SessionDemo> {
    let mut b = Hypervisor::builder().state_dir(state_dir).max_instances(32);
    if let Some(c) = cache {
        b = b.cache_dir(c);
    }
    let hv = b.build().context("building the hypervisor")?;
    let mut n = Narrator::new(&hv);

    n.say("\nPart 1: a shared session")?;
    n.say(format!("   state directory: {}", state_dir.display()))?;
    let operator = AgentId::new("did:demo:operator")?;
    let s = hv.create_session(SessionConfig::default(), operator.clone())?;

    // The operator (the host) seeds the shared area with sources.
    let core = hv.session_core(&s)?;
    let host = Caller::untraced(&operator, Ring::Root);
    for (name, text) in [
        (
            "wasm.txt",
            "WebAssembly components are portable. The component model composes them. Cats are unrelated.",
        ),
        (
            "sandbox.txt",
            "A sandbox limits fuel and memory. Components get only the capabilities they are granted.",
        ),
        ("weather.txt", "Rain is likely tomorrow."),
    ] {
        core.write(host, &format!("shared/sources/{name}"), text.as_bytes())?;
    }

    let researcher = AgentId::new("did:demo:researcher")?;
    let editor = AgentId::new("did:demo:editor")?;
    let intruder = AgentId::new("did:demo:intruder")?;
    for (agent, sigma, wasm) in [
        (&researcher, 0.75, ahv_agents::RESEARCHER),
        (&editor, 0.85, ahv_agents::EDITOR),
        (&intruder, 0.30, ahv_agents::ESCALATOR),
    ] {
        let component = hv.load(wasm)?;
        hv.join_session(
            &s,
            JoinRequest::new(agent.clone(), sigma).component(component),
        )
        .await?;
    }
    hv.activate_session(&s)?;

    run(&mut n, &hv, &s, &researcher, "component").await?;
    run(
        &mut n,
        &hv,
        &s,
        &editor,
        "What the sources say about components",
    )
    .await?;

    let report = core.read(host, "shared/report.md")?;
    n.say("   shared/report.md:")?;
    for l in String::from_utf8_lossy(&report).lines() {
        n.say(format!("     | {l}"))?;
    }

    n.say("   the intruder (ring 3) tries to overwrite the findings in shared state:")?;
    run(&mut n, &hv, &s, &intruder, "state:the sources say nothing").await?;
    let still = core
        .state()
        .peek("findings/wasm.txt")
        .map(|v| String::from_utf8_lossy(&v.value).into_owned())
        .unwrap_or_default();
    n.say(format!(
        "   findings/wasm.txt is still: {:?}",
        still.lines().next().unwrap_or("")
    ))?;
    let left: Vec<String> = hv
        .participants(&s)?
        .iter()
        .map(|p| format!("{} ({})", p.agent, p.ring))
        .collect();
    n.say(format!("   participants now: {}", left.join(", ")))?;
    run(&mut n, &hv, &s, &intruder, "state:again").await?;

    let snap = hv.snapshot(&s)?;
    // The seal is reported below: only once it is on disk.
    let t = hv.wait_durable(hv.terminate_session(&s)?, ahv_audit::DURABLE_WAIT)?;
    n.say(format!(
        "   session {} ended ({}), snapshot #{} kept; its files stay in {}",
        t.session,
        t.reason,
        snap.id,
        state_dir.join("sessions").join(s.as_str()).display()
    ))?;
    if let Some(c) = &t.commitment {
        n.say(format!(
            "   its audit log is sealed: commitment #{} over {} delta(s), Merkle root {}…",
            c.index,
            c.commitment.tree_size,
            &c.commitment.root.to_hex()[..16]
        ))?;
    }
    let head = hv
        .shutdown()
        .context("flushing and signing the audit log")?;
    if let Some(h) = head {
        n.say(format!(
            "   commitment log head signed: {} commitment(s), root {}…",
            h.head.size,
            &h.head.root.to_hex()[..16]
        ))?;
    }
    n.events()?;
    Ok(SessionDemo {
        public_key: hv.audit().map(|a| a.public_key().to_hex()),
        breaches: n.breaches(),
    })
}
