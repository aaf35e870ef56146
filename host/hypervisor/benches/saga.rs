//! The Python reference's `saga_3_steps` with the three steps executed in a
//! live Wasm agent, against a floor measured in the same run.
//!
//! - `saga_3_steps/wasm`: `Hypervisor::run_saga` of a three-step chain whose
//!   steps run in one live `scripted` instance (`saga-participant.execute`
//!   with an empty script: the reference's steps are no-op coroutines too),
//!   in an unaudited session, progress in memory (a store that keeps the
//!   records like `MemoryStore`, for the last 64 sagas, so memory stays
//!   flat). The definition is shared (`Arc`), as a caller running one
//!   definition many times would pass it. Every record is still applied through the state machines
//!   and every transition is still an event on the bus.
//! - `saga_3_steps/wasm_noop`: the same with the least participant,
//!   `noop-participant`, whose steps make no host call (`scripted` logs a
//!   line per step).
//! - `saga_3_steps/wasm_audited`: the same in an audited session (each of
//!   the saga's 8 events is also a hashed audit delta).
//! - `saga_3_steps/wasm_durable`: the same with the default durable store
//!   (`<state>/sagas`, one `fsync` per record: 8 per saga).
//! - `saga_3_steps/floor_three_calls`: the floor: three `execute_step` calls
//!   on the same live instance, without a saga (no engine, no records, no
//!   events).
//! - `saga_3_steps/floor_raw_wasmtime`: the floor under that one: the same
//!   three `saga-participant.execute` calls (same arguments) on a live
//!   instance of the same component in a bare wasmtime store of the same
//!   engine (WASI; `log`, which each `scripted` step calls once, discards
//!   its line; every other import of ours is a trap, never reached; no
//!   gate, no turns, no deadline, no journal, no metrics): what wasmtime
//!   itself takes for these calls on this machine.
//! - `saga_3_steps/floor_raw_wasmtime_plus_events`: that, plus the bare
//!   emits of the 8 events a three-step saga must announce (`saga.created`,
//!   `step_started` and `step_committed` per step, `completed`; the step
//!   events name the agent, each event's parent is the one before) on the
//!   bus of a hypervisor set up as for `wasm` (its auditor listening, the
//!   session unaudited): the least a saga of this participant's steps can
//!   cost here, whatever the engine does.
//! - `saga_3_steps/floor_three_calls_noop`, `floor_raw_wasmtime_noop` and
//!   `floor_raw_wasmtime_noop_plus_events`: the three floors above with
//!   `noop-participant` (no host call in its steps): the last is the least
//!   any saga of three sandboxed steps can cost here.
//!
//! Run: `env -u RUST_BACKTRACE cargo bench --workspace --bench saga`
//! (the form every bench shares a build with; see the README's "Performance").
//! Beside the Python reference's `saga_3_steps`, same run: `host/bench/compare.sh`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahv_core::{AgentId, Ring};
use ahv_governance::session::SessionConfig;
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_hypervisor::{Hypervisor, JoinRequest};
use ahv_runtime::{AgentSpec, StepCall};
use ahv_saga::{ProgressStore, SagaDefinition, SagaId, SagaRecord, SagaState, StoreError};
use criterion::{Criterion, criterion_group, criterion_main};

/// mimalloc, as the `ahv` binary uses: glibc's allocator takes an arena lock
/// whenever the audit flusher frees memory another thread allocated.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps records like `MemoryStore` (a map of per-saga logs, a clone per
/// append) for the last [`KEPT`] sagas only, forgetting the oldest as a
/// new one starts, so a long measurement neither grows without bound nor
/// pays for freeing thousands of sagas' records in one iteration.
#[derive(Default)]
struct Bounded(Mutex<Kept>);

/// Each kept saga's records, and the kept sagas oldest first.
type Kept = (HashMap<SagaId, Vec<SagaRecord>>, VecDeque<SagaId>);

/// How many sagas' records [`Bounded`] keeps.
const KEPT: usize = 64;

impl ProgressStore for Bounded {
    fn append(&self, saga: &SagaId, rec: &SagaRecord) -> Result<(), StoreError> {
        let mut guard = self.0.lock().unwrap();
        let (logs, order) = &mut *guard;
        if !logs.contains_key(saga) {
            if order.len() >= KEPT
                && let Some(oldest) = order.pop_front()
            {
                logs.remove(&oldest);
            }
            order.push_back(saga.clone());
        }
        logs.entry(saga.clone()).or_default().push(rec.clone());
        Ok(())
    }

    fn load(&self, saga: &SagaId) -> Result<Vec<SagaRecord>, StoreError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .0
            .get(saga)
            .cloned()
            .unwrap_or_default())
    }

    fn list(&self) -> Result<Vec<SagaId>, StoreError> {
        Ok(self.0.lock().unwrap().1.iter().cloned().collect())
    }
}

/// The reference's `saga_3_steps` as a definition (shared with
/// `examples/saga_probe.rs`).
const SAGA: &str = include_str!("saga_3_steps.yaml");

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn saga_3_steps(c: &mut Criterion) {
    let rt = rt();
    let def = Arc::new(SagaDefinition::from_yaml(SAGA).unwrap());
    let agent = AgentId::new("did:mesh:agent-1").unwrap();
    let creator = AgentId::new("did:mesh:admin").unwrap();
    let mut g = c.benchmark_group("saga_3_steps");
    let setups = [
        ("wasm", ahv_agents::SCRIPTED, false, true),
        ("wasm_noop", ahv_agents::NOOP_PARTICIPANT, false, true),
        ("wasm_audited", ahv_agents::SCRIPTED, true, true),
        ("wasm_durable", ahv_agents::SCRIPTED, false, false),
    ];
    let states: Vec<_> = setups
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    for ((name, participant, audited, in_memory), state) in setups.into_iter().zip(&states) {
        let mut b = Hypervisor::builder()
            .state_dir(state.path())
            .without_rate_limits();
        if in_memory {
            b = b.saga_store(Arc::new(Bounded::default()));
        }
        let hv = b.build().unwrap();
        let component = hv.load(participant).unwrap();
        let config = SessionConfig {
            audit: audited,
            ..SessionConfig::default()
        };
        let s = hv.create_session(config, creator.clone()).unwrap();
        rt.block_on(hv.join_session(
            &s,
            JoinRequest::new(agent.clone(), 0.8).component(component),
        ))
        .unwrap();
        hv.activate_session(&s).unwrap();
        let report = rt.block_on(hv.run_saga(&s, Arc::clone(&def))).unwrap();
        assert_eq!(report.state, SagaState::Completed);
        if !in_memory {
            g.sample_size(20);
        }
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(hv.run_saga(&s, Arc::clone(&def))).unwrap())
        });
        hv.terminate_session(&s).unwrap();
        hv.shutdown().unwrap();
    }
    g.sample_size(100);

    let state = tempfile::tempdir().unwrap();
    // As for `wasm`: the auditor listens on the bus, the session below is
    // unaudited (the standalone agent of `floor_three_calls` is in none).
    let hv = Hypervisor::builder()
        .state_dir(state.path())
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vfs = Arc::new(Vfs::new(
        cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap(),
        VfsLimits::default(),
    ));
    let calls: Vec<StepCall> = (0..3)
        .map(|i| StepCall {
            saga_id: "saga-bench".into(),
            step_id: format!("action-{i}"),
            action: format!("do-{i}"),
            attempt: 1,
        })
        .collect();
    let deadline = Duration::from_secs(300);
    let unaudited = SessionConfig {
        audit: false,
        ..SessionConfig::default()
    };
    let session = hv.create_session(unaudited, creator.clone()).unwrap();
    // Each floor with each participant (the names are literal so that the
    // bench table's check finds them in this file).
    for (three_calls, raw_calls, raw_plus_events, participant) in [
        (
            "floor_three_calls",
            "floor_raw_wasmtime",
            "floor_raw_wasmtime_plus_events",
            ahv_agents::SCRIPTED,
        ),
        (
            "floor_three_calls_noop",
            "floor_raw_wasmtime_noop",
            "floor_raw_wasmtime_noop_plus_events",
            ahv_agents::NOOP_PARTICIPANT,
        ),
    ] {
        let component = hv.load(participant).unwrap();
        let spec = AgentSpec::new(agent.clone(), Ring::Standard, vfs.clone());
        let mut live = rt.block_on(hv.runtime().spawn(&component, spec)).unwrap();
        g.bench_function(three_calls, |b| {
            b.iter(|| rt.block_on(governed_steps(&mut live, &calls, deadline)))
        });
        let (mut store, hooks) =
            rt.block_on(raw::live_participant(hv.runtime().engine(), participant));
        g.bench_function(raw_calls, |b| {
            b.iter(|| rt.block_on(raw_steps(&hooks, &mut store, &calls)))
        });
        g.bench_function(raw_plus_events, |b| {
            b.iter(|| {
                rt.block_on(raw_steps(&hooks, &mut store, &calls));
                saga_events(&hv, &session, &agent);
            })
        });
    }
    g.finish();
}

/// The three steps' `saga-participant.execute` calls through the runtime
/// (`Agent::execute_step`), no saga around them.
async fn governed_steps(live: &mut ahv_runtime::Agent, calls: &[StepCall], deadline: Duration) {
    for call in calls {
        let out = live.execute_step(call, "", deadline).await.unwrap();
        assert!(out.result.is_ok(), "the step failed: {:?}", out.result);
    }
}

/// The three steps' `saga-participant.execute` calls in raw wasmtime.
async fn raw_steps(
    hooks: &ahv_runtime::raw::saga::Guest,
    store: &mut wasmtime::Store<common::RawState>,
    calls: &[StepCall],
) {
    for call in calls {
        let out = hooks.call_execute(&mut *store, call, "").await.unwrap();
        assert!(out.is_ok(), "the raw step failed: {out:?}");
    }
}

/// The 8 events of a three-step saga of `agent` that completes, emitted
/// bare, in one causal chain as the saga's observer emits them.
fn saga_events(hv: &Hypervisor, session: &ahv_core::SessionId, agent: &AgentId) {
    use ahv_core::EventPayload as P;
    let mut parent = None;
    let mut emit = |agent: Option<&AgentId>, payload| {
        let id = hv
            .events()
            .emit(Some(session), agent, ahv_core::TraceId(0), parent, payload);
        parent = Some(id);
    };
    let saga = || "saga-bench".to_string();
    emit(
        None,
        P::SagaCreated {
            saga: saga(),
            name: "saga-3-steps".into(),
            steps: 3,
        },
    );
    for i in 0..3 {
        let step = format!("action-{i}");
        emit(
            Some(agent),
            P::SagaStepStarted {
                saga: saga(),
                step: step.clone(),
                attempt: 1,
            },
        );
        emit(
            Some(agent),
            P::SagaStepCommitted {
                saga: saga(),
                step,
                attempt: 1,
                changes: 0,
            },
        );
    }
    emit(
        None,
        P::SagaCompleted {
            saga: saga(),
            steps: 3,
        },
    );
}

/// The runtime benches' raw wasmtime baseline: its store and its traps for
/// our imports.
#[path = "../../runtime/benches/common/raw.rs"]
#[allow(dead_code)] // The saga floor uses only part of it.
mod common;

/// A bare wasmtime store for the raw floor.
mod raw {
    use ahv_runtime::raw::saga::{Guest, GuestIndices};
    use wasmtime::Engine;
    use wasmtime::component::{Component, Linker};

    use super::common::{RawState, raw_store, trap_our_imports};

    /// A live instance of `bytes` (a saga participant) in a store of
    /// `engine` with fuel and an epoch deadline that never run out, and its
    /// `saga-participant` export.
    pub async fn live_participant(
        engine: &Engine,
        bytes: &[u8],
    ) -> (wasmtime::Store<RawState>, Guest) {
        let component = Component::new(engine, bytes).unwrap();
        let mut linker = Linker::<RawState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        // Every function of our package the component imports is a trap
        // (neither `scripted` with an empty script nor `noop-participant`
        // calls any), except `log`, which each `scripted` step calls once:
        // here it discards the line.
        trap_our_imports(engine, &mut linker, &component);
        linker
            .instance("agent-hypervisor:agent/log@0.1.0")
            .unwrap()
            .func_new("log", |_, _, _, _| Ok(()))
            .unwrap();
        let pre = linker.instantiate_pre(&component).unwrap();
        let indices = GuestIndices::new(&pre).unwrap();
        let mut store = raw_store(engine);
        // One store serves every iteration of the bench: more than a run
        // could spend.
        store.set_fuel(1 << 40).unwrap();
        store.set_epoch_deadline(1 << 40);
        let instance = pre.instantiate_async(&mut store).await.unwrap();
        let hooks = indices.load(&mut store, &instance).unwrap();
        (store, hooks)
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = saga_3_steps
}
criterion_main!(benches);
