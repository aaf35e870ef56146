//! Lock contention: N agents on one shared key (issue 16, item 5).
//!
//! - `write_one_key/<N>`: N tasks on a 2-worker tokio runtime, each doing
//!   `acquire(Write)` on the same key, a read-modify-write of a counter the
//!   lock protects, then `release`, [`ROUNDS`] times. The throughput is in
//!   grants (N × [`ROUNDS`]), so "total time linear in grants" shows as a flat
//!   time per element across N.
//! - `mixed_one_key/<N>`: the same with one agent in four a writer and the
//!   rest readers (readers only read the counter), so queued readers are
//!   granted in groups between writers.
//!
//! Every iteration checks the counter, so a lost update (two writers at once)
//! fails the bench instead of making it faster.
//!
//! Run: `cargo bench --workspace --bench locks -- --warm-up-time 1 --measurement-time 5`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ahv_core::AgentId;
use ahv_governance::locks::{LockManager, LockMode, LockResource};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Lock–increment–release rounds per agent.
const ROUNDS: u64 = 5;

/// Agents contending, per benchmark.
const AGENTS: [u64; 3] = [10, 100, 1000];

/// Long enough never to time out, even on the slowest code measured.
const WAIT: Duration = Duration::from_secs(3600);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

/// One run: `n` agents, agent `i` a writer when `writer(i)`; returns how
/// long all of them took.
fn contend(rt: &tokio::runtime::Runtime, n: u64, writer: fn(u64) -> bool) -> Duration {
    let locks = Arc::new(LockManager::new(8));
    let key = LockResource::key("counter");
    // Read then written back under the lock: an increment that two writers
    // at once would lose.
    let counter = Arc::new(AtomicU64::new(0));
    let agents: Vec<AgentId> = (0..n)
        .map(|i| AgentId::new(format!("agent-{i}")).expect("a valid id"))
        .collect();
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = agents
            .into_iter()
            .enumerate()
            .map(|(i, agent)| {
                let (locks, key, counter) = (locks.clone(), key.clone(), counter.clone());
                let mode = if writer(i as u64) {
                    LockMode::Write
                } else {
                    LockMode::Read
                };
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        locks
                            .acquire(&agent, &key, mode, WAIT)
                            .await
                            .expect("granted");
                        let seen = counter.load(Ordering::Relaxed);
                        if mode == LockMode::Write {
                            tokio::task::yield_now().await;
                            counter.store(seen + 1, Ordering::Relaxed);
                        }
                        locks.release(&agent, &key).expect("held");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("the task finished");
        }
    });
    let took = start.elapsed();
    let writers = (0..n).filter(|i| writer(*i)).count() as u64;
    assert_eq!(
        counter.load(Ordering::Relaxed),
        writers * ROUNDS,
        "lost update"
    );
    took
}

fn bench_group(c: &mut Criterion, name: &str, writer: fn(u64) -> bool) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    for n in AGENTS {
        group.throughput(Throughput::Elements(n * ROUNDS));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| (0..iters).map(|_| contend(&rt, n, writer)).sum());
        });
    }
    group.finish();
}

fn write_one_key(c: &mut Criterion) {
    bench_group(c, "write_one_key", |_| true);
}

fn mixed_one_key(c: &mut Criterion) {
    bench_group(c, "mixed_one_key", |i| i % 4 == 0);
}

criterion_group!(benches, write_one_key, mixed_one_key);
criterion_main!(benches);
