//! The ring an effective score earns (`ring_for_score`), the computation at
//! every join and every standing change; the reference's `ring_computation`
//! scenario is the same question (`RingEnforcer.compute_ring(0.85)`).
//!
//! `cargo bench --workspace --bench core`

use std::hint::black_box;

use ahv_core::{Ring, ring_for_score};
use criterion::{Criterion, criterion_group, criterion_main};

fn ring_computation(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_computation");
    g.bench_function("ring_for_score", |b| {
        b.iter(|| ring_for_score(black_box(0.85), black_box(false)))
    });
    // The same with the answer used as a caller uses it (a ring, or the
    // sandbox for a value that is not a score).
    g.bench_function("ring_for_score_or_sandbox", |b| {
        b.iter(|| ring_for_score(black_box(0.85), black_box(false)).unwrap_or(Ring::Sandbox))
    });
    // The shape it had before it was marked `#[inline]`: a call across the
    // crate boundary, the 24-byte `Result` returned through memory.
    g.bench_function("not_inlined_baseline", |b| {
        b.iter(|| not_inlined(black_box(0.85), black_box(false)))
    });
    // The floor in the same run: the harness (loop, `black_box` in and
    // out) around the cheapest question there is, one comparison.
    g.bench_function("floor_one_comparison", |b| {
        b.iter(|| black_box(0.85) > 0.60)
    });
    g.finish();
}

#[inline(never)]
fn not_inlined(eff: f64, consensus: bool) -> Result<Ring, ahv_core::ScoreError> {
    ring_for_score(eff, consensus)
}

criterion_group!(benches, ring_computation);
criterion_main!(benches);
