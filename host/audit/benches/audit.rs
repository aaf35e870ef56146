//! Audit hot path: capturing one governed event as a delta (encode, SHA-256
//! leaf hash, chain, Merkle append, stage for the group-commit flusher).
//!
//! - `delta_capture/auditor`: `Auditor::capture` of a `vfs.write` event with a
//!   content hash (the Python reference's `delta_capture` scenario captures one
//!   VFS change with a content hash).
//! - `delta_capture/encode`: only the encoding of that event into a delta's
//!   canonical bytes (the part of capture before hashing).
//! - `delta_capture/bus_emit_audited` vs `bus_emit_unaudited`: the same event
//!   emitted on the event bus with and without the auditor subscribed — what a
//!   governed call really pays (the audited one also emits
//!   `audit.delta_captured`).
//! - `merkle/append_leaf` and `merkle/append_root`: the tree alone;
//!   `compact_append_leaf`: the compact tree a live session keeps;
//!   `leaf_hash_160B`, `node_hash`: the two SHA-256 shapes.
//! - `signer/notify`: what sealing pays to schedule a head signature (the
//!   signer is busy or already notified, the common case within a batch).
//!
//! Run: `env -u RUST_BACKTRACE cargo bench --workspace --bench audit`.

use std::sync::Arc;
use std::time::Duration;

use ahv_audit::merkle::{CompactTree, leaf_hash, node_hash};
use ahv_audit::{
    AuditConfig, Auditor, BatchSigner, Durability, Hash, HeadSource, HypervisorKey, MemorySink,
    MerkleLog, SystemWallClock,
};
use ahv_core::{AgentId, Event, EventBus, EventId, EventPayload, SessionId, SystemClock, TraceId};
use criterion::{Criterion, criterion_group, criterion_main};

fn payload() -> EventPayload {
    EventPayload::VfsWrite {
        path: "/notes.txt".into(),
        op: "write".into(),
        size: 64,
        before: None,
        after: Some([0xab; 32]),
    }
}

fn open(dir: &std::path::Path) -> Auditor {
    let config = AuditConfig {
        durability: Durability::default(),
        ..AuditConfig::default()
    };
    Auditor::open(
        dir,
        config,
        Arc::new(SystemClock::default()),
        Arc::new(SystemWallClock),
    )
    .unwrap()
    .0
}

fn capture(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let auditor = open(&tmp.path().join("audit"));
    let session = SessionId::new("session:bench").unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    let event = Event {
        id: EventId(1),
        time: Duration::ZERO,
        session: Some(session.clone()),
        agent: Some(agent.clone()),
        trace: TraceId(7),
        parent: None,
        payload: payload(),
    };
    let mut g = c.benchmark_group("delta_capture");
    g.bench_function("auditor", |b| b.iter(|| auditor.capture(&event)));
    let parent = Hash([3; 32]);
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            ahv_audit::delta::encode_event(
                &mut out,
                7,
                session.as_str(),
                1_700_000_000_000_000_000,
                Some(&parent),
                &event,
            );
            std::hint::black_box(out.len())
        })
    });

    let clock = Arc::new(SystemClock::default());
    let audited_bus = Arc::new(EventBus::new(10_000, clock.clone()));
    let tmp2 = tempfile::tempdir().unwrap();
    let auditor2 = open(&tmp2.path().join("audit"));
    auditor2.attach(&audited_bus);
    g.bench_function("bus_emit_audited", |b| {
        b.iter(|| audited_bus.emit(Some(&session), Some(&agent), TraceId(7), None, payload()))
    });
    let plain_bus = EventBus::new(10_000, clock);
    g.bench_function("bus_emit_unaudited", |b| {
        b.iter(|| plain_bus.emit(Some(&session), Some(&agent), TraceId(7), None, payload()))
    });
    g.finish();
    drop(auditor);
    drop(auditor2);
}

fn merkle(c: &mut Criterion) {
    let mut g = c.benchmark_group("merkle");
    let mut log = MerkleLog::new();
    let leaf = Hash::of(b"leaf");
    g.bench_function("append_leaf", |b| b.iter(|| log.append_leaf_hash(leaf)));
    let mut compact = CompactTree::new();
    g.bench_function("compact_append_leaf", |b| {
        b.iter(|| compact.append_leaf_hash(leaf))
    });
    let delta = [0x5a_u8; 160];
    g.bench_function("leaf_hash_160B", |b| {
        b.iter(|| leaf_hash(std::hint::black_box(&delta)))
    });
    g.bench_function("node_hash", |b| {
        b.iter(|| node_hash(std::hint::black_box(&leaf), &leaf))
    });
    let mut log = MerkleLog::new();
    g.bench_function("append_root", |b| {
        b.iter(|| {
            log.append_leaf_hash(leaf);
            log.root()
        })
    });
    g.finish();
}

struct FixedHead;

impl HeadSource for FixedHead {
    fn current(&self) -> (u64, Hash) {
        (1, Hash::of(b"commitment"))
    }
}

fn signer(c: &mut Criterion) {
    let s = BatchSigner::spawn(
        HypervisorKey::from_seed([1; 32]),
        Arc::new(FixedHead),
        vec![Arc::new(MemorySink::new("bench"))],
        Arc::new(SystemWallClock),
        Duration::from_secs(3600),
    )
    .unwrap();
    let mut g = c.benchmark_group("signer");
    g.bench_function("notify", |b| b.iter(|| s.notify()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = capture, merkle, signer
}
criterion_main!(benches);
