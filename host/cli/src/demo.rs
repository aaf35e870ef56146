//! `ahv demo`: the example agents, useful and hostile, each in its ring,
//! narrated as it happens.
//!
//! A breach is recorded while the agent runs, but the agent's log lines come
//! back only with the call's result; so the tour collects the breaches and
//! prints those of a call after the agent's own lines (which all came before
//! it: a breach ends the call).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahv_core::{AgentId, Ring, RingLimits, RingPolicy};
use ahv_governance::actions::builtin;
use ahv_governance::journal::Change;
use ahv_governance::session_vfs::FileQuotas;
use ahv_runtime::{Agent, AgentError, AgentSpec, RingBreach, Runtime};
use anyhow::Context;

use crate::log_text;
use crate::out::outln;
use crate::quota_files::QuotaFiles;

struct Demo {
    runtime: Runtime,
    root: PathBuf,
    breaches: Arc<Mutex<Vec<RingBreach>>>,
    step: usize,
}

impl Demo {
    fn header(&mut self, title: &str) -> std::io::Result<()> {
        self.step += 1;
        outln!("\n{}. {title}", self.step)
    }

    async fn spawn(&self, bytes: &[u8], name: &str, ring: Ring) -> anyhow::Result<Agent> {
        let dir_path = self.root.join(name);
        std::fs::create_dir_all(&dir_path)
            .with_context(|| format!("creating {}", dir_path.display()))?;
        let dir = cap_std::fs::Dir::open_ambient_dir(&dir_path, cap_std::ambient_authority())?;
        let files = Arc::new(QuotaFiles::open(dir, FileQuotas::default())?);
        let component = self.runtime.load(bytes)?;
        let spec = AgentSpec::new(AgentId::new(format!("did:demo:{name}"))?, ring, files)
            .actions(Arc::new(builtin::registry()));
        Ok(self.runtime.spawn(&component, spec).await?)
    }

    /// The breaches recorded so far.
    fn breaches(&self) -> Vec<RingBreach> {
        self.breaches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One call: the agent's log lines, the breaches recorded during it, how
    /// it ended. Returns the call's governed changes.
    async fn call(&self, agent: &mut Agent, input: &str) -> std::io::Result<Vec<Change>> {
        let before = self.breaches().len();
        let started = Instant::now();
        let result = agent.run(input).await;
        let elapsed = started.elapsed();
        let (logs, changes) = match &result {
            Ok(out) => (out.logs.as_slice(), out.changes.clone()),
            Err(AgentError::Trapped { logs, changes, .. }) => {
                (logs.as_slice(), changes.changes().to_vec())
            }
            Err(_) => (&[][..], Vec::new()),
        };
        for line in logs {
            outln!("   {}", log_text(line))?;
        }
        for b in self.breaches().iter().skip(before) {
            outln!("   ! hypervisor recorded: {b}")?;
        }
        match result {
            Ok(out) => match out.result {
                Ok(answer) => outln!("   → {}", answer.lines().next().unwrap_or_default()),
                Err(msg) => outln!("   → the agent reported a failure: {msg}"),
            },
            Err(e) => {
                let cause = e.cause().map_or_else(|| e.to_string(), ToString::to_string);
                outln!("   ✗ TRAPPED after {elapsed:.1?}: {cause}")
            }
        }?;
        Ok(changes)
    }
}

pub(crate) async fn demo(state_dir: Option<PathBuf>) -> anyhow::Result<crate::exit::Exit> {
    let root = match state_dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        // Kept afterwards: the audit log in it is there to be verified.
        None => tempfile::Builder::new()
            .prefix("ahv-demo-")
            .tempdir()?
            .keep(),
    };
    // A short deadline for ring 3, so the sleeping agent below is visibly cut
    // off by time; everything else is the default ring table.
    let mut sandbox = RingLimits::default_for(Ring::Sandbox);
    sandbox.deadline = Duration::from_millis(500);
    let policy = RingPolicy::default().with_limits(Ring::Sandbox, sandbox)?;
    let breaches = Arc::new(Mutex::new(Vec::new()));
    let sink = breaches.clone();
    let mut builder = Runtime::builder()
        .policy(policy)
        .max_instances(32)
        .on_breach(move |b: &RingBreach| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(b.clone());
        });
    if let Some(cache) = crate::default_cache_dir() {
        builder = builder.cache_dir(cache);
    }
    let runtime = builder.build()?;
    let mut d = Demo {
        runtime,
        root: root.clone(),
        breaches,
        step: 0,
    };

    outln!("Agent Hypervisor demo: real WebAssembly agents, each confined to its ring.")?;
    let state = root.join("state");
    let part1 =
        crate::session_demo::session_demo(&state, crate::default_cache_dir().as_deref()).await?;

    crate::saga_demo::saga_demo(&state, crate::default_cache_dir().as_deref()).await?;
    crate::liability_demo::liability_demo(&state, crate::default_cache_dir().as_deref()).await?;

    outln!("\nPart 4: a tour of single agents, useful and hostile, each in its ring")?;
    outln!("Agent files live under {}", root.display())?;

    d.header("hello in ring 3 (sandbox): reads a file and answers")?;
    write(&root, "hello/greeting.txt", "Good morning")?;
    let mut hello = d.spawn(ahv_agents::HELLO, "hello", Ring::Sandbox).await?;
    d.call(&mut hello, "Ada").await?;

    d.header(
        "note-taker in ring 2 (standard): writes notes, journals them with a reversible action",
    )?;
    let mut notes = d
        .spawn(ahv_agents::NOTE_TAKER, "note-taker", Ring::Standard)
        .await?;
    let mut performed = d.call(&mut notes, "review the sandbox design").await?;
    performed.extend(d.call(&mut notes, "benchmark instantiation").await?);
    outln!(
        "   (the host kept {} undo record(s) for its reversible actions)",
        performed
            .iter()
            .filter(|c| matches!(c, Change::Action { .. }))
            .count()
    )?;

    d.header("deployer in ring 1 (privileged): sends a non-reversible notification")?;
    write(&root, "deployer/deploy/manifest.txt", "billing-service")?;
    let mut deployer = d
        .spawn(ahv_agents::DEPLOYER, "deployer", Ring::Privileged)
        .await?;
    d.call(&mut deployer, "v2.4.1").await?;

    d.header("the same deployer admitted only at ring 2: its effect is a ring breach")?;
    let mut deployer2 = d
        .spawn(ahv_agents::DEPLOYER, "deployer-r2", Ring::Standard)
        .await?;
    d.call(&mut deployer2, "v2.4.2").await?;
    outln!(
        "   outbox exists afterwards: {}",
        root.join("deployer-r2/outbox").exists()
    )?;

    d.header("escalator in ring 2: writing is within its ring")?;
    let mut esc2 = d
        .spawn(ahv_agents::ESCALATOR, "escalator-r2", Ring::Standard)
        .await?;
    d.call(&mut esc2, "allowed").await?;

    d.header("escalator in ring 3: the write is outside its ring")?;
    let mut esc3 = d
        .spawn(ahv_agents::ESCALATOR, "escalator-r3", Ring::Sandbox)
        .await?;
    d.call(&mut esc3, "sneaky").await?;
    outln!(
        "   file written: {}",
        root.join("escalator-r3/escalated.txt").exists()
    )?;
    match esc3.run("again").await {
        Err(e) => outln!("   its next call is refused: {e}"),
        Ok(_) => outln!("   UNEXPECTED: the breaching agent ran again"),
    }?;

    d.header(
        "path-escaper in ring 2: tries .., absolute paths, NUL, long names, planted symlinks",
    )?;
    write(&root, "sentinel.txt", "outside every agent's directory")?;
    std::fs::create_dir_all(root.join("path-escaper"))?;
    plant_symlink(&root, &root.join("path-escaper/escape-link"))?;
    plant_symlink(
        &root.join("sentinel.txt"),
        &root.join("path-escaper/file-link"),
    )?;
    let mut escaper = d
        .spawn(ahv_agents::PATH_ESCAPER, "path-escaper", Ring::Standard)
        .await?;
    match escaper.run("all").await {
        Ok(out) => {
            let report = out.result.unwrap_or_else(|e| e);
            let total = report.lines().count();
            let refused = report.lines().filter(|l| l.contains(" -> err ")).count();
            outln!("   {refused} of {total} escape attempts refused, e.g.:")?;
            for line in report.lines().filter(|l| l.contains("sentinel")).take(4) {
                outln!("     {line}")?;
            }
            for line in report.lines().filter(|l| !l.contains(" -> err ")) {
                outln!("     NOT REFUSED: {line}")?;
            }
        }
        Err(e) => outln!("   ✗ {e}")?,
    }
    let sentinel = std::fs::read_to_string(root.join("sentinel.txt"))?;
    outln!(
        "   sentinel outside unchanged: {}",
        sentinel == "outside every agent's directory"
    )?;

    d.header("spinner in ring 3: an infinite loop runs out of fuel")?;
    let mut spinner = d
        .spawn(ahv_agents::SPINNER, "spinner", Ring::Sandbox)
        .await?;
    d.call(&mut spinner, "").await?;

    d.header("spinner in ring 1 (huge fuel): stopped by the kill switch after 200 ms")?;
    let mut spinner1 = d
        .spawn(ahv_agents::SPINNER, "spinner-r1", Ring::Privileged)
        .await?;
    let kill = spinner1.kill_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        kill.kill("operator pressed the kill switch");
    });
    d.call(&mut spinner1, "").await?;

    d.header("sleeper in ring 3: blocks inside a host call; the 500 ms deadline still ends it")?;
    let mut sleeper = d
        .spawn(ahv_agents::SLEEPER, "sleeper", Ring::Sandbox)
        .await?;
    d.call(&mut sleeper, "").await?;

    d.header("memory-hog in ring 3: allocates until the 32 MiB cap")?;
    let mut hog = d
        .spawn(ahv_agents::MEMORY_HOG, "memory-hog", Ring::Sandbox)
        .await?;
    d.call(&mut hog, "").await?;

    d.header("stack-bomb in ring 3: unbounded recursion")?;
    let mut bomb = d
        .spawn(ahv_agents::STACK_BOMB, "stack-bomb", Ring::Sandbox)
        .await?;
    d.call(&mut bomb, "").await?;

    d.header("net-sneak in ring 3: tries to phone home through wasi:sockets")?;
    // Admitted: toolchains import the network whatever the agent does. No
    // ring grants it, so every attempt is an error the agent sees.
    let mut sneak = d
        .spawn(ahv_agents::NET_SNEAK, "net-sneak", Ring::Sandbox)
        .await?;
    d.call(&mut sneak, "203.0.113.7:80").await?;

    d.header("the host is still healthy: hello answers again")?;
    d.call(&mut hello, "after all that").await?;

    let (shared, tour) = (part1.breaches, d.breaches().len());
    outln!(
        "\nDone: {} ring breach(es) recorded ({shared} in the shared session, {tour} in the tour); \
         every hostile agent was stopped by the host.",
        shared + tour
    )?;
    if let Some(key) = part1.public_key {
        outln!(
            "\nEvery governed action of the session is in a tamper-evident audit log. Verify it offline:\n   ahv audit verify {} --public-key {key}",
            state.display()
        )?;
    }
    Ok(crate::exit::Exit::Ok)
}

fn write(root: &Path, rel: &str, text: &str) -> anyhow::Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

fn plant_symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(link).is_ok() {
        return Ok(());
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("planting {}", link.display()))?;
    #[cfg(not(unix))]
    let _ = (target, link);
    Ok(())
}
