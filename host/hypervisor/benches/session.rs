//! Session benchmarks, each with a baseline measured in the same run.
//!
//! - `session_lifecycle/unaudited`: create a session, join one agent with
//!   σ = 0.8 *without* a component, activate, terminate (every event
//!   emitted) — the Python reference's `session_lifecycle` scenario, except
//!   that the reference also builds a new `Hypervisor` per iteration (ours
//!   holds a wasmtime engine, so it is built once).
//! - `join_wasm/pinger`: only the join of an agent *with* its component,
//!   instantiation included (session creation and termination are outside the
//!   timed part); baseline `raw_instantiate`: `Runtime::spawn` of the same
//!   component alone (no session).
//! - `vfs_1k/*`: a guest writes 1 KiB to a shared file through `vfs-write`
//!   and reads it back through `vfs-read` (one `run` call on a live
//!   instance: ACL, quota, clock, hash and undo record included), against the
//!   same bytes written and read natively with cap-std: `native_plain`
//!   (`Dir::write` + `Dir::read`) and `native_atomic` (what the VFS does
//!   underneath: temporary file, `sync_data`, rename, read).
//! - `session_lifecycle/audited`: the same with the audit log on (a delta
//!   per event, the session sealed by a commitment at termination); every
//!   1000 lifecycles the log is written and synced *outside* the timing —
//!   `audited_incl_disk` counts that too (the sessions' deltas go to a
//!   segment file, one write and one sync per round).
//!   Its floor in the same run, `session_lifecycle/floor_unaudited_plus_hashing`:
//!   the unaudited lifecycle plus only the SHA-256 work of auditing it (its
//!   six real deltas' leaf hashes, their tree and root, the commitment's
//!   leaf, the sealed session's fingerprint).
//! - `full_pipeline/*`: the Python reference's `full_governance_pipeline`:
//!   create, join σ = 0.8, activate, 3 governed actions (shared-state writes,
//!   each a delta), one agent step, terminate with root + commitment
//!   appended. `no_wasm`: the step is one more governed state write by the
//!   agent, host-side (no saga engine yet); `wasm`: the agent (`pinger`) is
//!   instantiated at join and the step is a `run` call inside it. Disk
//!   writes are handled as in `session_lifecycle/audited` (`*_incl_disk`
//!   counts them). Baselines in the same run: `unaudited` and
//!   `wasm_unaudited` (audit off), and `floor_unaudited_plus_hashing`: the
//!   unaudited pipeline plus only the SHA-256 work that auditing it needs
//!   (the ten real deltas' leaf hashes, their Merkle tree and root, the
//!   commitment's leaf, the sealed session's fingerprint) — the least any
//!   design that hashes each governed event as its own leaf on the hot path
//!   can cost.
//!
//! - `floor_unaudited_plus_hashing_and_announcements` (both groups) and
//!   `full_pipeline/wasm_floor_unaudited_plus_hashing_and_announcements`:
//!   the hashing floor plus the bare bus emits of the deltas'
//!   `audit.delta_captured` events (each governed event is announced as
//!   captured, SEMANTICS' event taxonomy; emitted as the auditor emits
//!   them, each following its event: `EventBus::emit_following`) — the
//!   least an audited run that hashes and announces every event on the
//!   emitting thread can cost.
//!
//! - `floor_unaudited_plus_encoding_hashing_and_announcements` (both
//!   groups) and its `wasm_` twin: that floor with each delta also encoded
//!   from its event (`ahv_audit::delta::encode_event` into a reused buffer,
//!   as capture does), and with the seal's `audit.committed` announced as
//!   well: a delta's leaf hash is the hash of its canonical bytes, so this
//!   design, which hashes and announces each event as its own delta, does
//!   no less. What an audited row costs above it is the auditor's
//!   bookkeeping (the session's log looked up and locked, the bytes staged
//!   for the flusher, the commitment staged and the seal recorded) and the
//!   flusher's work beside it.
//!
//! - `elevation/*`: one `run` of the `scripted` agent (joined at σ 0.55:
//!   ring 3, enough for ring 2) in an audited session: `request` is
//!   `elevate 2 60 why` + `relinquish` (a grant by the rules, the standing
//!   changed, `ring.elevated` and `ring.elevation_revoked` emitted and
//!   audited); `denied` is `elevate 0 0 x` (refused by the rules,
//!   `ring.elevation_denied` emitted). Baselines in the same run:
//!   `baseline_ring_x2` and `baseline_ring` run scripts of the same length
//!   with free calls (`ring`), so the difference is the elevation work. Rate
//!   limits are on, with change budgets that never run out.
//!
//! Run: `env -u RUST_BACKTRACE cargo bench --workspace --bench session`
//! (beside the Python reference: `host/bench/compare.sh`).
//!
//! `elevation/*` medians (2 shared vCPUs, load ~4; `... --bench session --
//! '^elevation/' --warm-up-time 1 --measurement-time 3`): `request` 12.3 µs
//! vs `baseline_ring_x2` 3.3 µs, so a granted request plus its relinquish
//! costs ~9.0 µs; `denied` 10.7 µs vs `baseline_ring` 2.7 µs: ~8.0 µs per
//! refusal (the rules, the `ring.elevation_denied` event and its audit
//! delta, the message).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_core::{AgentId, Ring, SessionId};
use ahv_governance::files::Caller;
use ahv_governance::session::SessionConfig;
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_hypervisor::{Hypervisor, JoinRequest};
use ahv_runtime::AgentSpec;
use ahv_security::rate::{BucketSpec, CallClass, RateTable};
use criterion::{Criterion, criterion_group, criterion_main};

/// mimalloc, as the `ahv` binary uses: glibc's allocator takes an arena lock
/// whenever the audit flusher frees memory another thread allocated.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn hypervisor(state: &std::path::Path) -> Hypervisor {
    Hypervisor::builder()
        .state_dir(state)
        .max_instances(64)
        .event_capacity(4096)
        .build()
        .unwrap()
}

/// Times `iters` runs of `once`; every `FLUSH_EVERY` runs the audit log is
/// written and synced (`Hypervisor::shutdown`), inside the timing when
/// `count_flush`, outside it otherwise. Without this the per-session log
/// files pile up faster than the disk takes them and the group-commit
/// backpressure makes the measured loop disk-bound.
fn timed<F: std::future::Future>(
    rt: &tokio::runtime::Runtime,
    hv: &Hypervisor,
    iters: u64,
    count_flush: bool,
    mut once: impl FnMut() -> F,
) -> Duration {
    const FLUSH_EVERY: u64 = 1000;
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(FLUSH_EVERY);
        let t = Instant::now();
        for _ in 0..n {
            rt.block_on(once());
        }
        let mut spent = t.elapsed();
        let f = Instant::now();
        hv.shutdown().unwrap();
        if count_flush {
            spent += f.elapsed();
        }
        total += spent;
        done += n;
    }
    total
}

/// The deltas a sealed session's log holds, as written.
fn logged_deltas(state: &std::path::Path, session: &SessionId) -> Vec<Vec<u8>> {
    ahv_audit::auditor::read_session_log(&state.join("audit"), session.as_str())
        .unwrap()
        .into_iter()
        .map(|r| r.body)
        .collect()
}

/// The SHA-256 work of sealing a session whose deltas make `tree`: its
/// commitment's leaf in the commitment log (`commitments`), and the sealed
/// session's fingerprint.
fn sealing_hashes(
    tree: &ahv_audit::merkle::CompactTree,
    session: &SessionId,
    commitments: &mut ahv_audit::merkle::CompactTree,
) -> ahv_audit::Hash {
    let c = ahv_audit::Commitment {
        session: session.to_string(),
        tree_size: tree.len().0,
        root: tree.root(),
        time_unix_ns: 1,
    };
    commitments.append_leaf_hash(ahv_audit::merkle::leaf_hash(&c.encode()));
    ahv_audit::merkle::leaf_hash(session.as_str().as_bytes())
}

/// Only the SHA-256 work of auditing a session with `deltas`: their leaf
/// hashes, their Merkle tree and root, the commitment's leaf in the
/// commitment log (`commitments`), the sealed session's fingerprint.
fn hashing_only(
    deltas: &[Vec<u8>],
    session: &SessionId,
    commitments: &mut ahv_audit::merkle::CompactTree,
) -> ahv_audit::Hash {
    let mut tree = ahv_audit::merkle::CompactTree::new();
    for d in deltas {
        tree.append_leaf_hash(ahv_audit::merkle::leaf_hash(d));
    }
    sealing_hashes(&tree, session, commitments)
}

/// The governed events of `session` on `hv`'s bus (those the auditor makes
/// deltas of: every event but its own announcements), oldest first.
/// Checked against the deltas logged for them: as many, and each encoding
/// as long as its delta (they differ only in the time).
fn governed_events(
    hv: &Hypervisor,
    session: &SessionId,
    logged: &[Vec<u8>],
) -> Vec<ahv_core::Event> {
    let events: Vec<ahv_core::Event> = hv
        .events()
        .query(&ahv_core::EventQuery::default().session(session.clone()))
        .into_iter()
        .filter(|e| !e.kind().name().starts_with("audit."))
        .collect();
    assert_eq!(events.len(), logged.len(), "one delta per governed event");
    for (seq, (e, delta)) in events.iter().zip(logged).enumerate() {
        let mut bytes = Vec::new();
        let parent = (seq > 0).then_some(ahv_audit::Hash([0; 32]));
        ahv_audit::delta::encode_event(
            &mut bytes,
            seq as u64,
            session.as_str(),
            0,
            parent.as_ref(),
            e,
        );
        assert_eq!(
            bytes.len(),
            delta.len(),
            "delta {seq} ({}) re-encoded",
            e.kind()
        );
    }
    events
}

/// [`hashing_only`] with each delta encoded first, from the event it
/// records, as capture encodes it (`ahv_audit::delta::encode_event` into a
/// reused staging buffer): the least work that makes each governed event
/// its own hashed delta, since a delta's leaf hash is the hash of its
/// canonical bytes.
fn encoding_and_hashing_only(
    events: &[ahv_core::Event],
    session: &SessionId,
    staged: &mut Vec<u8>,
    commitments: &mut ahv_audit::merkle::CompactTree,
) -> ahv_audit::Hash {
    staged.clear();
    let mut tree = ahv_audit::merkle::CompactTree::new();
    let mut parent = None;
    for (seq, e) in events.iter().enumerate() {
        let start = staged.len();
        ahv_audit::delta::encode_event(
            staged,
            seq as u64,
            session.as_str(),
            1_700_000_000_000_000_000,
            parent.as_ref(),
            e,
        );
        let leaf = ahv_audit::merkle::leaf_hash(&staged[start..]);
        tree.append_leaf_hash(leaf);
        parent = Some(leaf);
    }
    sealing_hashes(&tree, session, commitments)
}

/// The `audit.committed` event sealing `session` emits (a plain emit, as
/// the auditor's seal makes it).
fn committed_announcement(hv: &Hypervisor, session: &SessionId) {
    hv.events().emit(
        Some(session),
        None,
        ahv_core::TraceId(0),
        None,
        ahv_core::EventPayload::AuditCommitted {
            tree_size: 6,
            root: [7; 32],
            index: 0,
        },
    );
}

/// The design's floor beyond the unaudited run of `session`: its deltas'
/// announcements, its `audit.committed`, and each delta encoded and hashed
/// ([`encoding_and_hashing_only`]).
fn design_floor_work(
    hv: &Hypervisor,
    session: &SessionId,
    events: &[ahv_core::Event],
    staged: &mut Vec<u8>,
    commitments: &mut ahv_audit::merkle::CompactTree,
) -> ahv_audit::Hash {
    announcements_only(hv, session, events.len());
    committed_announcement(hv, session);
    encoding_and_hashing_only(events, session, staged, commitments)
}

/// The `audit.delta_captured` events auditing `n` deltas emits, on `hv`'s
/// bus, each following an event of `session` as the auditor's do
/// (`EventBus::emit_following`; bare emits: no capture behind them).
fn announcements_only(hv: &Hypervisor, session: &SessionId, n: usize) {
    let cause = ahv_core::Event {
        id: ahv_core::EventId(0),
        time: std::time::Duration::ZERO,
        session: Some(session.clone()),
        agent: None,
        trace: ahv_core::TraceId(0),
        parent: None,
        payload: ahv_core::EventPayload::AuditDeltaCaptured {
            seq: 0,
            hash: [7; 32],
        },
    };
    for seq in 0..n as u64 {
        hv.events().emit_following(
            &cause,
            ahv_core::EventPayload::AuditDeltaCaptured { seq, hash: [7; 32] },
        );
    }
}

fn lifecycle(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let hv = hypervisor(state.path());
    let rt = rt();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    let mut g = c.benchmark_group("session_lifecycle");
    let unaudited = Hypervisor::builder()
        .state_dir(state.path().join("unaudited"))
        .without_audit()
        .build()
        .unwrap();
    let once = |hv: &Hypervisor| {
        let hv = hv.clone();
        let (creator, agent) = (creator.clone(), agent.clone());
        async move {
            let s = hv
                .create_session(SessionConfig::default(), creator)
                .unwrap();
            hv.join_session(&s, JoinRequest::new(agent, 0.8))
                .await
                .unwrap();
            hv.activate_session(&s).unwrap();
            hv.terminate_session(&s).unwrap();
            s
        }
    };
    g.bench_function("unaudited", |b| b.iter(|| rt.block_on(once(&unaudited))));
    // The floor of auditing the lifecycle with each event its own leaf and
    // its own `audit.delta_captured`: the unaudited lifecycle, plus only the
    // SHA-256 work of its real deltas and commitment, plus the bare bus
    // emits of their announcements — no encoding, locking or staging.
    let sealed = rt.block_on(once(&hv));
    hv.shutdown().unwrap();
    let deltas = logged_deltas(state.path(), &sealed);
    let mut commitments = ahv_audit::merkle::CompactTree::new();
    g.bench_function("floor_unaudited_plus_hashing", |b| {
        b.iter(|| {
            let s = rt.block_on(once(&unaudited));
            std::hint::black_box(hashing_only(&deltas, &s, &mut commitments))
        })
    });
    g.bench_function("floor_unaudited_plus_hashing_and_announcements", |b| {
        b.iter(|| {
            let s = rt.block_on(once(&unaudited));
            announcements_only(&unaudited, &s, deltas.len());
            std::hint::black_box(hashing_only(&deltas, &s, &mut commitments))
        })
    });
    let events = governed_events(&hv, &sealed, &deltas);
    let mut staged = Vec::with_capacity(2048);
    g.bench_function(
        "floor_unaudited_plus_encoding_hashing_and_announcements",
        |b| {
            b.iter(|| {
                let s = rt.block_on(once(&unaudited));
                std::hint::black_box(design_floor_work(
                    &unaudited,
                    &s,
                    &events,
                    &mut staged,
                    &mut commitments,
                ))
            })
        },
    );
    g.bench_function("audited", |b| {
        b.iter_custom(|iters| timed(&rt, &hv, iters, false, || once(&hv)))
    });
    g.bench_function("audited_incl_disk", |b| {
        b.iter_custom(|iters| timed(&rt, &hv, iters, true, || once(&hv)))
    });
    g.finish();
}

fn full_pipeline(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let hv = hypervisor(state.path());
    let unaudited = Hypervisor::builder()
        .state_dir(state.path().join("unaudited"))
        .max_instances(64)
        .without_audit()
        .build()
        .unwrap();
    let rt = rt();
    let component = hv.load(ahv_agents::PINGER).unwrap();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    let mut g = c.benchmark_group("full_pipeline");
    let component_unaudited = unaudited.load(ahv_agents::PINGER).unwrap();
    let run = |hv: &Hypervisor, wasm: bool| {
        let component = if hv.audit().is_some() {
            component.clone()
        } else {
            component_unaudited.clone()
        };
        let hv = hv.clone();
        let (creator, agent) = (creator.clone(), agent.clone());
        async move {
            let s = hv
                .create_session(SessionConfig::default(), creator)
                .unwrap();
            let mut req = JoinRequest::new(agent.clone(), 0.8);
            if wasm {
                req = req.component(component);
            }
            let ring = hv.join_session(&s, req).await.unwrap();
            hv.activate_session(&s).unwrap();
            let core = hv.session_core(&s).unwrap();
            let who = Caller::untraced(&agent, ring);
            for (i, key) in ["file-0", "file-1", "file-2"].iter().enumerate() {
                core.state_put(who, key, &[i as u8; 32], 0).unwrap();
            }
            if wasm {
                let out = hv.run_agent(&s, &agent, "ping").await.unwrap();
                assert_eq!(out.result.as_deref(), Ok("pong"));
            } else {
                core.state_put(who, "draft", b"done", 0).unwrap();
            }
            let t = hv.terminate_session(&s).unwrap();
            assert_eq!(t.commitment.is_some(), hv.audit().is_some());
            s
        }
    };
    let once = |wasm: bool| run(&hv, wasm);
    // The floors of any design that hashes each governed event as its own
    // RFC 6962 leaf on the hot path: the unaudited pipeline plus only the
    // SHA-256 work of auditing it (the real deltas' leaf hashes, their
    // Merkle tree and root, the commitment's leaf in the commitment log, the
    // sealed session's fingerprint) — no encoding, locking or staging — and
    // that plus the bare emits of the deltas' `audit.delta_captured`. Each
    // floor uses the deltas its own scenario writes, read back here.
    let sealed = rt.block_on(once(false));
    hv.shutdown().unwrap();
    let deltas = logged_deltas(state.path(), &sealed);
    assert_eq!(deltas.len(), 10, "the pipeline's governed events");
    let events = governed_events(&hv, &sealed, &deltas);
    let sealed = rt.block_on(once(true));
    hv.shutdown().unwrap();
    let wasm_deltas = logged_deltas(state.path(), &sealed);
    let wasm_events = governed_events(&hv, &sealed, &wasm_deltas);
    // The step inside the agent makes no governed call: one write fewer.
    assert_eq!(wasm_deltas.len(), 9, "the Wasm pipeline's governed events");
    g.bench_function("unaudited", |b| {
        b.iter(|| rt.block_on(run(&unaudited, false)))
    });
    let mut commitments = ahv_audit::merkle::CompactTree::new();
    g.bench_function("floor_unaudited_plus_hashing", |b| {
        b.iter(|| {
            let s = rt.block_on(run(&unaudited, false));
            std::hint::black_box(hashing_only(&deltas, &s, &mut commitments))
        })
    });
    g.bench_function("floor_unaudited_plus_hashing_and_announcements", |b| {
        b.iter(|| {
            let s = rt.block_on(run(&unaudited, false));
            announcements_only(&unaudited, &s, deltas.len());
            std::hint::black_box(hashing_only(&deltas, &s, &mut commitments))
        })
    });
    g.bench_function("wasm_floor_unaudited_plus_hashing_and_announcements", |b| {
        b.iter(|| {
            let s = rt.block_on(run(&unaudited, true));
            announcements_only(&unaudited, &s, wasm_deltas.len());
            std::hint::black_box(hashing_only(&wasm_deltas, &s, &mut commitments))
        })
    });
    let mut staged = Vec::with_capacity(2048);
    for (name, wasm, events) in [
        (
            "floor_unaudited_plus_encoding_hashing_and_announcements",
            false,
            &events,
        ),
        (
            "wasm_floor_unaudited_plus_encoding_hashing_and_announcements",
            true,
            &wasm_events,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let s = rt.block_on(run(&unaudited, wasm));
                std::hint::black_box(design_floor_work(
                    &unaudited,
                    &s,
                    events,
                    &mut staged,
                    &mut commitments,
                ))
            })
        });
    }
    g.bench_function("no_wasm", |b| {
        b.iter_custom(|iters| timed(&rt, &hv, iters, false, || once(false)))
    });
    g.bench_function("no_wasm_incl_disk", |b| {
        b.iter_custom(|iters| timed(&rt, &hv, iters, true, || once(false)))
    });
    g.bench_function("wasm", |b| {
        b.iter_custom(|iters| timed(&rt, &hv, iters, false, || once(true)))
    });
    g.bench_function("wasm_unaudited", |b| {
        b.iter(|| rt.block_on(run(&unaudited, true)))
    });
    g.finish();
}

fn join_wasm(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let hv = hypervisor(state.path());
    let rt = rt();
    let component = hv.load(ahv_agents::PINGER).unwrap();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    let mut g = c.benchmark_group("join_wasm");
    g.bench_function("pinger", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let s = hv
                    .create_session(SessionConfig::default(), creator.clone())
                    .unwrap();
                let req = JoinRequest::new(agent.clone(), 0.8).component(component.clone());
                let t = Instant::now();
                rt.block_on(hv.join_session(&s, req)).unwrap();
                total += t.elapsed();
                hv.terminate_session(&s).unwrap();
            }
            hv.shutdown().unwrap();
            total
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let vfs = Arc::new(Vfs::new(
        cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap(),
        VfsLimits::default(),
    ));
    g.bench_function("raw_instantiate", |b| {
        b.iter(|| {
            let spec = AgentSpec::new(agent.clone(), Ring::Standard, vfs.clone());
            rt.block_on(hv.runtime().spawn(&component, spec)).unwrap()
        })
    });
    g.finish();
}

/// Rate limits that never run out for `rings` (changes and reads): a bench
/// that calls an agent a million times measures the call, not a refusal.
fn endless(rings: &[Ring]) -> RateTable {
    let spec = BucketSpec {
        rate_per_sec: 1e9,
        burst: u32::MAX,
    };
    let mut table = RateTable::default();
    for &ring in rings {
        for class in [CallClass::Change, CallClass::Read] {
            table = table.with_spec(class, ring, spec).unwrap();
        }
    }
    table
}

fn vfs_1k(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    // Ring 2 writes 20 files a second at most: the bench lifts that.
    let hv = Hypervisor::builder()
        .state_dir(state.path())
        .max_instances(64)
        .event_capacity(4096)
        .rate_limits(endless(&[Ring::Standard]))
        .build()
        .unwrap();
    let rt = rt();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    let s: SessionId = hv
        .create_session(SessionConfig::default(), creator)
        .unwrap();
    let component = hv.load(ahv_agents::PINGER).unwrap();
    rt.block_on(hv.join_session(
        &s,
        JoinRequest::new(agent.clone(), 0.8).component(component),
    ))
    .unwrap();
    hv.activate_session(&s).unwrap();
    let mut g = c.benchmark_group("vfs_1k");
    g.bench_function("guest_write_read", |b| {
        b.iter(|| {
            let out = rt.block_on(hv.run_agent(&s, &agent, "vfs")).unwrap();
            assert_eq!(out.result.as_deref(), Ok("1024"));
        })
    });
    let native = tempfile::tempdir().unwrap();
    let dir =
        cap_std::fs::Dir::open_ambient_dir(native.path(), cap_std::ambient_authority()).unwrap();
    let data = [0x5au8; 1024];
    g.bench_function("native_plain", |b| {
        b.iter(|| {
            dir.write("bench.bin", data).unwrap();
            assert_eq!(dir.read("bench.bin").unwrap().len(), 1024);
        })
    });
    g.bench_function("native_atomic", |b| {
        b.iter(|| {
            let mut f = dir.create(".tmp-bench").unwrap();
            f.write_all(&data).unwrap();
            f.sync_data().unwrap();
            drop(f);
            dir.rename(".tmp-bench", &dir, "bench.bin").unwrap();
            assert_eq!(dir.read("bench.bin").unwrap().len(), 1024);
        })
    });
    g.finish();
}

fn elevation(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    // Change budgets (elevate at ring 3, relinquish at ring 2) that never
    // run out: the bench measures the request, not a refusal.
    let hv = Hypervisor::builder()
        .state_dir(state.path())
        .max_instances(64)
        .event_capacity(4096)
        .rate_limits(endless(&[Ring::Sandbox, Ring::Standard]))
        .build()
        .unwrap();
    let rt = rt();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let agent = AgentId::new("did:mesh:elevating").unwrap();
    let s = hv
        .create_session(SessionConfig::default(), creator)
        .unwrap();
    let component = hv.load(ahv_agents::SCRIPTED).unwrap();
    let ring = rt
        .block_on(hv.join_session(
            &s,
            JoinRequest::new(agent.clone(), 0.55).component(component),
        ))
        .unwrap();
    assert_eq!(ring, Ring::Sandbox, "σ 0.55 is below the session's 0.60");
    hv.activate_session(&s).unwrap();
    let cases = [
        (
            "request",
            "elevate 2 60 why\nrelinquish",
            "elevate 2 60 why -> ok ring 2\nrelinquish -> ok true\n",
        ),
        (
            "baseline_ring_x2",
            "ring\nring",
            "ring -> ok 3\nring -> ok 3\n",
        ),
        ("denied", "elevate 0 0 x", "elevate 0 0 x -> err denied: "),
        ("baseline_ring", "ring", "ring -> ok 3\n"),
    ];
    let mut g = c.benchmark_group("elevation");
    for (name, script, expected) in cases {
        let once = || async {
            let out = hv.run_agent(&s, &agent, script).await.unwrap();
            let text = out.result.unwrap();
            assert!(text.starts_with(expected), "{name}: {text}");
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| timed(&rt, &hv, iters, false, once))
        });
    }
    g.finish();
    assert_eq!(
        hv.ring(&s, &agent).unwrap(),
        Ring::Sandbox,
        "every grant was given back"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = lifecycle, join_wasm, vfs_1k, full_pipeline, elevation
}
criterion_main!(benches);
