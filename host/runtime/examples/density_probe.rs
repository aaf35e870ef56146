//! How many live agents fit in a GiB: spawns N `pinger` agents (each a live
//! instance that has answered one call, so its linear memory, instance
//! state and store are all in place), keeps them alive, and reports the
//! resident memory they added per agent.
//!
//! Run: `env -u RUST_BACKTRACE cargo run --release -p ahv-runtime --example
//! density_probe -- [AGENTS]` (default 10 000). Resident memory is read from
//! `/proc/self/statm` (Linux) before the first agent and after the last;
//! 1 000 agents are spawned and dropped first so that allocator arenas and
//! the component's code are already resident and are not counted.

use std::sync::Arc;
use std::time::Instant;

use ahv_core::{AgentId, Ring};
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{AgentSpec, Runtime};

/// Resident bytes of this process.
fn resident() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("/proc/self/statm has no resident field: {statm:?}"))?
        .parse()?;
    // The page size of every Linux target this runs on.
    Ok(pages * 4096)
}

async fn spawn_many(
    runtime: &Runtime,
    component: &ahv_runtime::AgentComponent,
    files: &Arc<Vfs>,
    n: usize,
    tag: &str,
) -> anyhow::Result<Vec<ahv_runtime::Agent>> {
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let spec = AgentSpec::new(
            AgentId::new(format!("did:density:{tag}{i}"))?,
            Ring::Sandbox,
            files.clone(),
        );
        let mut agent = runtime.spawn(component, spec).await?;
        let out = agent.run("").await?;
        anyhow::ensure!(
            out.result.as_deref() == Ok("pong"),
            "agent {i} answered {:?}",
            out.result
        );
        agents.push(agent);
    }
    Ok(agents)
}

async fn probe(n: usize) -> anyhow::Result<()> {
    let runtime = Runtime::builder()
        .max_instances(u32::try_from(n + 1)?)
        .build()?;
    let component = runtime.load(ahv_agents::PINGER)?;
    let dir = tempfile::tempdir()?;
    let files = Arc::new(Vfs::new(
        cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority())?,
        VfsLimits::default(),
    ));
    drop(spawn_many(&runtime, &component, &files, n.min(1000), "warm").await?);

    let before = resident()?;
    let started = Instant::now();
    let agents = spawn_many(&runtime, &component, &files, n, "").await?;
    let took = started.elapsed();
    let after = resident()?;
    let per = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "{n} live agents: +{:.1} MiB resident, {:.1} KiB per agent, {:.0} agents per GiB \
         (spawned and called in {took:.2?}, {:.1} µs each)",
        after.saturating_sub(before) as f64 / f64::from(1 << 20),
        per / 1024.0,
        f64::from(1 << 30) / per.max(1.0),
        took.as_secs_f64() * 1e6 / n as f64,
    );
    drop(agents);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let agents: usize = std::env::args()
        .nth(1)
        .map_or(Ok(10_000), |a| a.parse())?;
    anyhow::ensure!(agents > 0, "AGENTS must be at least 1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(probe(agents))
}
