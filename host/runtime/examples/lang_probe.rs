//! Compile, instantiate and per-call times of agents written in different
//! languages, on the same runtime settings: for each component given, the
//! compile time (one `Runtime::load` without a disk cache), the median time
//! to instantiate it (a fresh instance, as a join does), the first call on a
//! fresh instance, and the median per-call time and fuel of `run` on one live
//! instance.
//!
//! Run: `env -u RUST_BACKTRACE cargo run --release -p ahv-runtime --example
//! lang_probe -- rust=target/wasm-agents/wasm32-wasip2/release/hello.wasm
//! python=PY.wasm js=JS.wasm` — each argument `NAME=PATH` names a component
//! that exports `run` and needs at most ring 3 (sandbox). The tests build the
//! Python and JavaScript `hello` agents into the target directory
//! (`tests/integration/python.rs`, `tests/integration/js.rs`); `PROBE_CALLS`
//! sets the calls per component (default 200), `PROBE_SPAWNS` the instances
//! (default 20).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::{AgentId, Ring};
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{AgentSpec, Runtime};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let calls = env_count("PROBE_CALLS", 200);
    let spawns = env_count("PROBE_SPAWNS", 20);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        anyhow::bail!("usage: lang_probe NAME=COMPONENT.wasm ...");
    }
    println!(
        "| agent | size | compile | instantiate (median of {spawns}) | first call | per call (median of {calls}) | fuel per call |"
    );
    println!("|---|---|---|---|---|---|---|");
    for arg in args {
        let (name, path) = arg
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("{arg:?}: expected NAME=PATH"))?;
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let runtime = Runtime::builder()
            .max_instances(spawns as u32 + 2)
            .build()?;
        let t = Instant::now();
        let component = runtime.load(&bytes)?;
        let compile = t.elapsed();
        let dir = tempfile::tempdir()?;
        let spec = || -> anyhow::Result<AgentSpec> {
            let cap = cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority())?;
            Ok(AgentSpec::new(
                AgentId::new("did:probe:a")?,
                Ring::Sandbox,
                Arc::new(Vfs::new(cap, VfsLimits::default())),
            ))
        };
        let mut instantiate = Vec::with_capacity(spawns);
        let mut first = Vec::with_capacity(spawns);
        for _ in 0..spawns {
            let s = spec()?;
            let t = Instant::now();
            let mut agent = runtime.spawn(&component, s).await?;
            instantiate.push(t.elapsed());
            let t = Instant::now();
            let out = agent.run("probe").await?;
            first.push(t.elapsed());
            if let Err(e) = out.result {
                anyhow::bail!("{name}: run failed: {e}");
            }
        }
        let mut agent = runtime.spawn(&component, spec()?).await?;
        agent.run("warm-up").await?;
        let mut per_call = Vec::with_capacity(calls);
        let mut fuel = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            let out = agent.run("probe").await?;
            per_call.push(t.elapsed());
            fuel.push(out.fuel_used);
        }
        fuel.sort_unstable();
        println!(
            "| {name} | {:.1} MB | {} | {} | {} | {} | {} |",
            bytes.len() as f64 / 1e6,
            ms(compile),
            ms(median(instantiate)),
            ms(median(first)),
            ms(median(per_call)),
            fuel[fuel.len() / 2],
        );
    }
    Ok(())
}
