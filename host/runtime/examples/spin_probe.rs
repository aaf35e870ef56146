//! How spinning agents share a tokio runtime: kill latency while N agents
//! spin, and how late a 1 ms timer task on the same runtime wakes.
//!
//! Every agent spins in a tight loop (`spinner`); the epoch ticker makes each
//! one yield once per tick (1 ms) and wait for its next turn (see
//! `RuntimeBuilder::guest_turns`), so no agent holds a worker thread longer
//! than a tick. Agents are then killed one at a time, and the probe reports
//! the two promises a kill makes:
//! (a) guest code stops: from `KillHandle::kill` until the agent's guest code
//!     stopped (`KillHandle::stopped_after`: zero when it was waiting for a
//!     turn, else the time to its next epoch check);
//! (b) the caller hears of it: from `KillHandle::kill` until that agent's
//!     `run` has returned its `Killed` trap to the task that awaited it.
//!
//! Run: `env -u RUST_BACKTRACE cargo run --release -p ahv-runtime --example
//! spin_probe -- [AGENTS] [WORKERS] [KILLS] [TURNS]` (defaults 100, 2, 100
//! and the runtime's default turns, one per thread of the machine; WORKERS 0
//! means a current-thread runtime, as `#[tokio::test]` uses). The
//! first KILLS agents are killed and measured one by one, 5 ms apart, while
//! the others keep spinning; the rest are killed at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::{AgentId, Ring, RingLimits, RingPolicy};
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{AgentSpec, Runtime, TrapCause};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{what}: n={} p50={:?} p99={:?} max={:?}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or_default()
    );
}

async fn probe(agents: usize, kills_measured: usize, turns: Option<usize>) -> anyhow::Result<()> {
    let mut limits = RingLimits::default_for(Ring::Sandbox);
    limits.fuel_per_call = u64::MAX / 2;
    limits.deadline = Duration::from_secs(120);
    let policy = RingPolicy::default().with_limits(Ring::Sandbox, limits)?;
    let mut builder = Runtime::builder()
        .policy(policy)
        .max_instances(u32::try_from(agents + 1)?);
    if let Some(turns) = turns {
        builder = builder.guest_turns(turns);
    }
    let runtime = builder.build()?;
    let component = runtime.load(ahv_agents::SPINNER)?;
    let dir = tempfile::tempdir()?;
    let files = Arc::new(Vfs::new(
        cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority())?,
        VfsLimits::default(),
    ));

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut kills = Vec::new();
    for i in 0..agents {
        let spec = AgentSpec::new(
            AgentId::new(format!("did:probe:{i}"))?,
            Ring::Sandbox,
            files.clone(),
        );
        let mut agent = runtime.spawn(&component, spec).await?;
        kills.push(agent.kill_handle());
        let done = done_tx.clone();
        tokio::spawn(async move {
            let r = agent.run("").await;
            let killed = matches!(r, Err(ref e) if matches!(e.cause(), Some(TrapCause::Killed(_))));
            let how = match &r {
                Ok(out) => format!("it returned {:?}", out.result),
                Err(e) => e.to_string(),
            };
            let _ = done.send((i, Instant::now(), killed, how));
        });
    }

    // A task that only wants to wake every millisecond.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut late = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = Instant::now() + Duration::from_millis(1);
                tokio::time::sleep(Duration::from_millis(1)).await;
                late.push(Instant::now().saturating_duration_since(due));
            }
            late
        })
    };

    // Every call's first tick runs at once, without a turn: let all of them
    // have had it (a millisecond each) before measuring.
    tokio::time::sleep(Duration::from_millis(300 + 2 * agents as u64)).await;
    let mut latencies = Vec::new();
    let mut stops = Vec::new();
    for (i, kill) in kills.iter().enumerate().take(kills_measured) {
        let at = Instant::now();
        kill.kill("probe");
        let (who, when, killed, how) =
            tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
                .await
                .map_err(|_| anyhow::anyhow!("agent {i} did not stop within 10 s of its kill"))?
                .ok_or_else(|| anyhow::anyhow!("agent tasks ended early"))?;
        anyhow::ensure!(
            who == i && killed,
            "agent {who} ended, not by the kill of {i}: {how}"
        );
        latencies.push(when.saturating_duration_since(at));
        stops.push(
            kill.stopped_after().ok_or_else(|| {
                anyhow::anyhow!("agent {i} returned its trap but has no stop time")
            })?,
        );
        // Give the others time to run between kills.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for kill in kills.iter().skip(kills_measured) {
        kill.kill("probe over");
    }
    for _ in kills_measured.min(agents)..agents {
        tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("the unmeasured agents did not stop within 10 s"))?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let late = ticker.await?;
    let running = stops.iter().filter(|d| !d.is_zero()).count();
    report(
        &format!("(a) kill -> guest code stopped, {running} of them running at the kill"),
        stops,
    );
    report(
        &format!("(b) kill -> trap at the caller with {agents} spinning"),
        latencies,
    );
    report("1 ms timer lateness on the same runtime", late);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let agents: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let workers: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let kills: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let turns: Option<usize> = args.next().map(|a| a.parse()).transpose()?;
    let rt = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    println!(
        "{agents} agents, {}",
        if workers == 0 {
            "current-thread runtime".to_string()
        } else {
            format!("{workers} worker threads")
        }
    );
    rt.block_on(probe(agents, kills.min(agents), turns))
}
