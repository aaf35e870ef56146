//! The capabilities: one module per WIT interface, all built the same way.
//!
//! Each module implements the generated `Host` trait on a [`View`] (the
//! state the capability needs beside the [`Gate`]: the [`Handles`] the
//! capabilities share, or a `Ctx` of its own) and has an
//! `add_to_linker`. Every adapter starts with the gate
//! ([`Gate::admit`]), then calls a domain method and converts its result:
//! the rules live in the gate and in the domain crates, not here.
//!
//! [`UNITS`] is the one table from capability to module. Adding a
//! capability is one WIT interface, one module and one row; the tests fail
//! when any of the three is missing (`ahv-core`'s WIT contract test for the
//! interface, [`tests::every_capability_has_exactly_one_unit`] here).

use std::sync::{Arc, Mutex};

use ahv_core::{Capability, CapabilitySet};
use ahv_governance::actions::ActionRegistry;
use ahv_governance::files::FileSpace;
use ahv_governance::session_core::SessionCore;
use wasmtime::component::{HasData, Linker};

use crate::gate::Gate;
use crate::state::{AgentState, Journal, LogBuffer};

pub(crate) mod actions;
pub(crate) mod admin;
pub(crate) mod context;
pub(crate) mod effects;
pub(crate) mod elevation;
pub(crate) mod locks;
pub(crate) mod log;
pub(crate) mod net;
pub(crate) mod spawn;
pub(crate) mod state_read;
pub(crate) mod state_write;
pub(crate) mod vfs_read;
pub(crate) mod vfs_write;

/// Reads at least this large run off the async worker (see [`off_worker`]);
/// smaller ones take microseconds, less than handing the worker over.
pub(crate) const OFF_WORKER_READ_BYTES: u64 = 64 << 10;

/// Runs `f`, a host function's work that may block its thread for
/// milliseconds (a write's sync, a large read and its hash, a directory's
/// walk), so that it does not hold a tokio worker meanwhile: on a
/// multi-threaded runtime the worker's other tasks (other agents, other
/// sessions, the API) move to another thread while `f` runs
/// (`block_in_place`). Elsewhere (a current-thread runtime, no runtime) it
/// just runs `f`: there is no other worker to hand them to.
pub(crate) fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What a capability's host functions see: the state it works on (the
/// shared [`Handles`], or a context of its own) and the gate. The state is
/// borrowed shared: no capability can replace what the others share (the
/// journal, the log buffer); all their writes go through the handles'
/// own locks and journals.
pub(crate) struct View<'a, C> {
    /// The state the capability works on.
    pub(crate) ctx: &'a C,
    /// The caller's gate (identity, standing, rate budget, trace).
    pub(crate) gate: &'a mut Gate,
}

/// The [`HasData`] marker of a capability whose context is `C`.
pub(crate) struct Has<C>(std::marker::PhantomData<C>);

impl<C: 'static> HasData for Has<C> {
    type Data<'a> = View<'a, C>;
}

/// What the capabilities that work on the agent's files, session, actions
/// and log share: one handle of each per store, where each capability
/// used to hold its own clone (13 reference counts taken at every
/// instantiation and dropped with the store). `vfs-read`, `vfs-write`,
/// `state-read`, `state-write`, `locks`, `actions`, `effects` and `log`
/// implement their host traits on a [`View`] of it.
pub(crate) struct Handles {
    /// The caller's file space.
    pub(crate) files: Arc<dyn FileSpace>,
    /// The caller's session, if it runs in one (its bus gets the action and
    /// effect events).
    pub(crate) shared: Option<Arc<SessionCore>>,
    /// The host's actions and effects.
    pub(crate) registry: Arc<ActionRegistry>,
    /// The current call's change journal.
    pub(crate) changes: Journal,
    /// The agent's log buffer (which also gets its stdout and stderr).
    pub(crate) log: Arc<Mutex<LogBuffer>>,
}

/// The contexts of all capabilities: the shared [`Handles`], and what a
/// capability holds for itself.
pub(crate) struct Contexts {
    pub(crate) handles: Handles,
    pub(crate) context: context::Ctx,
    pub(crate) elevation: elevation::Ctx,
    pub(crate) spawn: spawn::Ctx,
    pub(crate) admin: admin::Ctx,
    pub(crate) net: net::LazyCtx,
}

/// One row of the capability table.
pub(crate) struct Unit {
    /// The capability (its WIT interface and ring come from `ahv-core`).
    pub(crate) capability: Capability,
    /// Links its interface to its module's adapters.
    pub(crate) add_to_linker: fn(&mut Linker<AgentState>) -> wasmtime::Result<()>,
}

/// Capability → module.
pub(crate) const UNITS: [Unit; 13] = [
    Unit {
        capability: Capability::Context,
        add_to_linker: context::add_to_linker,
    },
    Unit {
        capability: Capability::Log,
        add_to_linker: log::add_to_linker,
    },
    Unit {
        capability: Capability::VfsRead,
        add_to_linker: vfs_read::add_to_linker,
    },
    Unit {
        capability: Capability::StateRead,
        add_to_linker: state_read::add_to_linker,
    },
    Unit {
        capability: Capability::Elevation,
        add_to_linker: elevation::add_to_linker,
    },
    Unit {
        capability: Capability::VfsWrite,
        add_to_linker: vfs_write::add_to_linker,
    },
    Unit {
        capability: Capability::StateWrite,
        add_to_linker: state_write::add_to_linker,
    },
    Unit {
        capability: Capability::Locks,
        add_to_linker: locks::add_to_linker,
    },
    Unit {
        capability: Capability::Actions,
        add_to_linker: actions::add_to_linker,
    },
    Unit {
        capability: Capability::Effects,
        add_to_linker: effects::add_to_linker,
    },
    Unit {
        capability: Capability::Spawn,
        add_to_linker: spawn::add_to_linker,
    },
    Unit {
        capability: Capability::Net,
        add_to_linker: net::add_to_linker,
    },
    Unit {
        capability: Capability::Admin,
        add_to_linker: admin::add_to_linker,
    },
];

/// Links the capabilities in `linked` to their adapters, and every other
/// capability to breach stubs (which pass the gate too). `net` is always
/// linked to its adapter: it is WASI's interface, whose `types` half every
/// ring gets, and its adapter starts with the gate like a stub does, so an
/// agent outside its ring breaches all the same.
///
/// # Errors
/// A Wasmtime linking error (a host bug: a name or type that does not match `wit/`).
pub(crate) fn link(
    l: &mut Linker<AgentState>,
    linked: CapabilitySet,
) -> Result<(), (Capability, wasmtime::Error)> {
    for unit in &UNITS {
        let cap = unit.capability;
        if linked.contains(cap) || cap.is_wasi() {
            (unit.add_to_linker)(l).map_err(|e| (cap, e))?;
        } else {
            stubs(l, cap).map_err(|e| (cap, e))?;
        }
    }
    Ok(())
}

/// Breach stubs for every function of `cap`: after the gate's kill check,
/// each records a breach and traps.
fn stubs(l: &mut Linker<AgentState>, cap: Capability) -> wasmtime::Result<()> {
    let mut inst = l.instance(&cap.instance_name())?;
    for function in cap.functions() {
        inst.func_new(function, move |mut store, _ty, _params, _results| {
            Err(store.data_mut().gate.stub(cap, function))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_has_exactly_one_unit() {
        for cap in Capability::ALL {
            let rows = UNITS.iter().filter(|u| u.capability == cap).count();
            assert_eq!(rows, 1, "capability {cap} has {rows} rows in UNITS");
        }
        assert_eq!(UNITS.len(), Capability::ALL.len());
    }
}

/// Capability tests without Wasm: adapters called directly on real state,
/// through the gate, with a fake clock.
#[cfg(test)]
mod gate_tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ahv_core::event::{EventBus, EventKind, EventQuery};
    use ahv_core::standing::Standing;
    use ahv_core::{AgentId, FakeClock, Ring, RingPolicy, SessionId};
    use ahv_governance::actions::builtin;
    use ahv_governance::files::{Caller, FileOp, FileSpace};
    use ahv_governance::journal::{Change, UndoError, undo_changes};
    use ahv_governance::session_core::{SessionCore, SessionCoreConfig};
    use ahv_governance::vfs::{Vfs, VfsLimits};
    use ahv_security::rate::{RateLimiter, RateTable};

    use super::*;
    use crate::adapters::HostError;
    use crate::bindings::WitError;
    use crate::bindings::agent_hypervisor::agent::{
        actions as wactions, context as wcontext, effects as weffects, elevation as welevation,
        state_write as wstate_write, types as wtypes, vfs_read as wvfs_read,
        vfs_write as wvfs_write,
    };
    use crate::gate::{GateInit, NoGovernor};
    use crate::runtime::RateSource;
    use crate::state::{KillHandle, StateInit};
    use crate::trap::{Killed, RingBreach};

    struct Fixture {
        dir: tempfile::TempDir,
        state: AgentState,
        breaches: Arc<Mutex<Vec<RingBreach>>>,
        standing: Arc<Standing>,
        clock: FakeClock,
        kill: KillHandle,
    }

    fn fixture(ring: Ring, rate: bool) -> Fixture {
        fixture_in(ring, rate, None)
    }

    /// An agent in a shared session (its files are the session's).
    fn session_fixture(ring: Ring) -> (Fixture, Arc<SessionCore>, Arc<EventBus>) {
        let dir = tempfile::tempdir().unwrap();
        let sessions =
            cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap();
        let bus = Arc::new(EventBus::new(1024, Arc::new(FakeClock::new())));
        let core = Arc::new(SessionCore::new(
            SessionId::new("s1").unwrap(),
            Arc::new(sessions),
            &SessionCoreConfig::default(),
            bus.clone(),
        ));
        let mut f = fixture_in(ring, false, Some(core.clone()));
        f.dir = dir;
        (f, core, bus)
    }

    fn fixture_in(ring: Ring, rate: bool, shared: Option<Arc<SessionCore>>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cap_dir =
            cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap();
        let breaches = Arc::new(Mutex::new(Vec::new()));
        let sink = breaches.clone();
        let clock = FakeClock::new();
        let standing = Standing::new(ring, Arc::new(clock.clone()));
        let kill = KillHandle::new(wasmtime::Engine::default(), standing.clone(), None);
        let (agent, session) = (
            AgentId::new("did:test:a").unwrap(),
            SessionId::new("s1").unwrap(),
        );
        let rate = rate.then(|| {
            RateLimiter::new(RateTable::default(), Arc::new(clock.clone()), 16)
                .budget(&agent, &session, ring)
                .unwrap()
        });
        let policy = RingPolicy::default();
        let init = StateInit {
            gate: GateInit {
                agent,
                session,
                standing: standing.clone(),
                rings: Ring::ALL.map(|r| policy.limits(r).capabilities),
                rate,
                recorder: Arc::new(move |b: &RingBreach| sink.lock().unwrap().push(b.clone())),
                governor: Arc::new(NoGovernor),
                kill: kill.clone(),
                metrics: Arc::new(crate::metrics::RuntimeMetrics::new()),
            },
            files: match &shared {
                Some(core) => core.clone(),
                None => Arc::new(Vfs::new(cap_dir, VfsLimits::default())),
            },
            shared,
            actions: Arc::new(builtin::registry()),
            policy: Arc::new(policy.clone()),
            net: Arc::default(),
        };
        let state = AgentState::new(init, policy.limits(ring), std::time::Instant::now());
        Fixture {
            dir,
            state,
            breaches,
            standing,
            clock,
            kill,
        }
    }

    /// The view of one capability, as its `add_to_linker` builds it.
    macro_rules! view {
        ($f:expr, context) => {
            &mut View {
                ctx: &$f.state.caps.context,
                gate: &mut $f.state.gate,
            }
        };
        ($f:expr, elevation) => {
            &mut View {
                ctx: &$f.state.caps.elevation,
                gate: &mut $f.state.gate,
            }
        };
        // The capabilities on the shared handles.
        ($f:expr, $shared:ident) => {
            &mut View {
                ctx: &$f.state.caps.handles,
                gate: &mut $f.state.gate,
            }
        };
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, HostError>) -> WitError {
        match r {
            Err(HostError::Refused(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn breach<T: std::fmt::Debug>(r: Result<T, HostError>) -> RingBreach {
        match r {
            Err(HostError::Trap(e)) => e
                .downcast_ref::<RingBreach>()
                .expect("a RingBreach")
                .clone(),
            other => panic!("expected a breach, got {other:?}"),
        }
    }

    #[test]
    fn sandbox_reads_but_write_is_a_breach_recorded_before_the_trap() {
        let mut f = fixture(Ring::Sandbox, false);
        std::fs::write(f.dir.path().join("f.txt"), b"data").unwrap();
        assert_eq!(
            wvfs_read::Host::read(view!(f, vfs_read), "f.txt".into()).unwrap(),
            b"data"
        );
        let b = breach(wvfs_write::Host::write(
            view!(f, vfs_write),
            "g.txt".into(),
            b"x".to_vec(),
        ));
        assert_eq!(
            (b.capability, b.function.as_str(), b.ring),
            (Capability::VfsWrite, "write", Ring::Sandbox)
        );
        assert_eq!(f.breaches.lock().unwrap().as_slice(), [b], "recorded once");
        assert!(!f.dir.path().join("g.txt").exists(), "nothing written");
        breach(wactions::Host::invoke(
            view!(f, actions),
            "note.append".into(),
            "x".into(),
        ));
        breach(weffects::Host::available(view!(f, effects)));
        assert_eq!(f.breaches.lock().unwrap().len(), 3);
    }

    #[test]
    fn in_ring_refusals_are_values_not_traps() {
        let mut f = fixture(Ring::Standard, false);
        assert!(matches!(
            refused(wvfs_read::Host::read(view!(f, vfs_read), "../x".into())),
            WitError::InvalidPath(_)
        ));
        assert!(matches!(
            refused(wactions::Host::invoke(
                view!(f, actions),
                "no.such".into(),
                "".into()
            )),
            WitError::UnknownAction(_)
        ));
        let out =
            wactions::Host::invoke(view!(f, actions), "note.append".into(), "hi".into()).unwrap();
        assert!(out.starts_with("appended"), "{out}");
        assert!(
            matches!(&f.state.caps.handles.changes.take()[..], [Change::Action { name, .. }] if name == "note.append")
        );
        assert!(f.breaches.lock().unwrap().is_empty());
    }

    /// What each recorded change is, in order: (kind, op or name, path).
    fn shapes(changes: &[Change]) -> Vec<String> {
        changes.iter().map(Change::summary).collect()
    }

    #[test]
    fn every_governed_change_of_a_call_is_journalled_in_order() {
        let (mut f, core, bus) = session_fixture(Ring::Privileged);
        let me = "did:test:a".to_string();
        wvfs_write::Host::write(view!(f, vfs_write), "shared/a".into(), b"1".to_vec()).unwrap();
        wvfs_write::Host::append(view!(f, vfs_write), "shared/a".into(), b"2".to_vec()).unwrap();
        wvfs_write::Host::create_dir(view!(f, vfs_write), "d/e".into()).unwrap();
        wvfs_write::Host::create_dir(view!(f, vfs_write), "d/e".into()).unwrap();
        wvfs_write::Host::rename(view!(f, vfs_write), "shared/a".into(), "shared/b".into())
            .unwrap();
        let acl = wtypes::Acl {
            owner: me.clone(),
            read: wtypes::Access::Owner,
            write: wtypes::Access::Owner,
        };
        wvfs_write::Host::set_acl(view!(f, vfs_write), "shared/b".into(), acl).unwrap();
        wvfs_write::Host::write(view!(f, vfs_write), "gone".into(), b"x".to_vec()).unwrap();
        wvfs_write::Host::delete(view!(f, vfs_write), "gone".into()).unwrap();
        assert_eq!(
            wstate_write::Host::put(view!(f, state_write), "k".into(), b"v".to_vec(), 0).unwrap(),
            1
        );
        wstate_write::Host::delete(view!(f, state_write), "k".into(), 1).unwrap();
        wactions::Host::invoke(view!(f, actions), "note.append".into(), "hi".into()).unwrap();
        weffects::Host::invoke(view!(f, effects), "notify.send".into(), "sent".into()).unwrap();
        // A refused change records nothing.
        refused(wvfs_write::Host::delete(view!(f, vfs_write), "nope".into()));
        refused(wstate_write::Host::delete(
            view!(f, state_write),
            "k".into(),
            1,
        ));

        let changes = f.state.caps.handles.changes.take();
        assert_eq!(
            shapes(&changes),
            [
                "write shared/a",
                "append shared/a",
                "create-dir d/e",
                "rename shared/a -> shared/b",
                "set-acl shared/b",
                "write gone",
                "delete gone",
                "state put k",
                "state delete k",
                "action note.append",
                "effect notify.send",
            ]
        );
        let Change::File {
            op: FileOp::Write,
            undo: Some(_),
            before: None,
            after: Some(after),
            ..
        } = &changes[0]
        else {
            panic!("{:?}", changes[0]);
        };
        assert_eq!(after, &hex::encode(ahv_governance::files::sha256(b"1")));
        assert!(f.state.caps.handles.changes.take().is_empty(), "taken once");

        // Actions and effects are audit deltas like the rest.
        let kinds: Vec<EventKind> = bus
            .query(&EventQuery::default())
            .iter()
            .map(|e| e.kind())
            .filter(|k| matches!(k, EventKind::ActionInvoked | EventKind::EffectInvoked))
            .collect();
        assert_eq!(kinds, [EventKind::ActionInvoked, EventKind::EffectInvoked]);

        // The journal is enough to undo the call, except the effect.
        let agent = AgentId::new("did:test:a").unwrap();
        let who = Caller::untraced(&agent, Ring::Privileged);
        let failures = undo_changes(&core, &builtin::registry(), who, &changes);
        assert!(
            matches!(&failures[..], [f] if f.index == 10 && matches!(f.error, UndoError::NoUndo { .. })),
            "{failures:?}"
        );
        assert!(core.read(who, "shared/b").is_err() && core.read(who, "shared/a").is_err());
        assert!(core.state().peek("k").is_none());
        assert!(
            core.read(who, builtin::JOURNAL).is_err(),
            "the note was taken back, with the journal it created"
        );
        assert!(core.list(who, "d").is_err(), "the directories went too");
    }

    #[test]
    fn bulk_writes_and_puts_are_journalled_too() {
        let (f, _core, _bus) = session_fixture(Ring::Standard);
        let caller = f.state.gate.caller(Ring::Standard);
        let handles = &f.state.caps.handles;
        handles.write_file(caller, "f", b"bulk", false).unwrap();
        handles.write_file(caller, "f", b"+", true).unwrap();
        handles.state_put(caller, "k", b"v", 0).unwrap();
        assert_eq!(
            shapes(&handles.changes.take()),
            ["write f", "append f", "state put k"]
        );
    }

    /// A call that writes one key over and over keeps its first previous
    /// value only (before, one per write: 1 MiB a write, bounded only by
    /// the rate limit), and undoing the call still puts the key back.
    #[test]
    fn a_key_written_again_and_again_keeps_one_previous_value() {
        let (f, core, _bus) = session_fixture(Ring::Standard);
        let caller = f.state.gate.caller(Ring::Standard);
        let handles = &f.state.caps.handles;
        // An earlier call wrote it.
        handles.state_put(caller, "k", b"before", 0).unwrap();
        handles.changes.take();
        let big = vec![7u8; 64 << 10];
        let mut version = 1;
        for _ in 0..100 {
            version = handles.state_put(caller, "k", &big, version).unwrap();
        }
        assert_eq!(handles.changes.state_bytes(), (1 + b"before".len()) as u64);
        let changes = handles.changes.take();
        assert!(
            matches!(&changes[..], [Change::State(s)]
                if s.previous.as_deref() == Some(&b"before"[..]) && s.previous_version == 1
                    && s.version == 101 && !s.deleted),
            "{changes:?}"
        );
        let agent = AgentId::new("did:test:a").unwrap();
        let who = Caller::untraced(&agent, Ring::Standard);
        assert!(undo_changes(&core, &builtin::registry(), who, &changes).is_empty());
        assert_eq!(core.state().peek("k").unwrap().value, b"before");
    }

    /// Work a host function may block on runs off the async worker: on a
    /// runtime of one worker, a task queued behind the blocked one runs
    /// (and unblocks it) while the work waits. Kept on the worker, the work
    /// would wait for that task until its bound.
    #[test]
    fn blocking_work_leaves_the_worker_to_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let waited = rt.block_on(async {
            tokio::spawn(async {
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                // Queued on this worker: it runs only if the worker moves on.
                tokio::spawn(async move {
                    let _ = tx.send(());
                });
                off_worker(|| rx.recv_timeout(Duration::from_secs(30)))
            })
            .await
            .unwrap()
        });
        waited.expect(
            "the task queued behind the blocking work ran within 30 s (it cannot while the work holds the only worker)",
        );
        // Elsewhere it simply runs.
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { off_worker(|| 7) }), 7);
        assert_eq!(off_worker(|| 8), 8);
    }

    /// What a call keeps to undo its state writes is bounded by the state
    /// store's own size, even when another writer keeps refilling the keys
    /// it overwrites (so the store stays small while the call's previous
    /// values grow): past the bound its writes are refused as over quota,
    /// and the next call starts afresh.
    #[test]
    fn a_call_keeps_no_more_undo_data_than_the_state_store_may_hold() {
        let dir = tempfile::tempdir().unwrap();
        let sessions =
            cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap();
        let bus = Arc::new(EventBus::new(1024, Arc::new(FakeClock::new())));
        let config = SessionCoreConfig {
            state: ahv_governance::state::StateLimits {
                max_total_bytes: 16 << 10,
                ..Default::default()
            },
            // Writes without reading first: this is about the journal.
            strict: false,
            ..SessionCoreConfig::default()
        };
        let core = Arc::new(SessionCore::new(
            SessionId::new("s1").unwrap(),
            Arc::new(sessions),
            &config,
            bus,
        ));
        let mut f = fixture_in(Ring::Standard, false, Some(core.clone()));
        let host = AgentId::new("did:test:host").unwrap();
        let by_host = Caller::untraced(&host, Ring::Root);
        let refill = vec![1u8; 4 << 10];
        let mut refused = None;
        for i in 0..100 {
            let key = format!("k{i}");
            let v = core.state_put(by_host, &key, &refill, 0).unwrap().version;
            let caller = f.state.gate.caller(Ring::Standard);
            match f.state.caps.handles.state_put(caller, &key, b"x", v) {
                Ok(_) => core.state_delete(by_host, &key, v + 1).map(drop).unwrap(),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (i, e) = refused.expect("the call's undo data is bounded");
        assert!(
            matches!(&e, HostError::Refused(WitError::Quota(m)) if m.contains("16384")),
            "{e:?}"
        );
        // The bound plus at most one value: 16 KiB of 4 KiB values.
        assert_eq!(i, 4, "refused once the call kept 4 values of 4 KiB");
        let held = f.state.caps.handles.changes.state_bytes();
        assert!(
            (16 << 10..(16 << 10) + (4 << 10) + 64).contains(&held),
            "{held}"
        );
        // A delete is refused too; the next call starts afresh.
        let e = wstate_write::Host::delete(view!(f, state_write), "k0".into(), 0);
        assert!(
            matches!(e, Err(HostError::Refused(WitError::Quota(_)))),
            "{e:?}"
        );
        f.state.caps.handles.changes.take();
        let caller = f.state.gate.caller(Ring::Standard);
        let handles = &f.state.caps.handles;
        assert!(handles.state_put(caller, "fresh", b"x", 0).is_ok());
    }

    #[test]
    fn the_journal_holds_one_call_only() {
        let mut f = fixture(Ring::Standard, false);
        for call in 0..3 {
            wactions::Host::invoke(view!(f, actions), "note.append".into(), "n".into()).unwrap();
            // What `Agent::run` does at the end of each call.
            let changes = f.state.caps.handles.changes.take();
            assert_eq!(changes.len(), 1, "call {call}");
        }
        // Outside a session, files keep no undo records: journalled all the same.
        wvfs_write::Host::write(view!(f, vfs_write), "x".into(), b"1".to_vec()).unwrap();
        assert!(matches!(
            &f.state.caps.handles.changes.take()[..],
            [Change::File { undo: None, .. }]
        ));
    }

    #[test]
    fn an_elevation_is_judged_per_call_and_its_expiry_at_once() {
        let mut f = fixture(Ring::Sandbox, false);
        breach(wvfs_write::Host::write(
            view!(f, vfs_write),
            "a".into(),
            b"1".to_vec(),
        ));
        f.standing
            .elevate(Ring::Standard, Duration::from_secs(60))
            .unwrap();
        wvfs_write::Host::write(view!(f, vfs_write), "a".into(), b"1".to_vec()).unwrap();
        assert_eq!(wcontext::Host::current_ring(view!(f, context)).unwrap(), 2);
        assert_eq!(
            welevation::Host::current(view!(f, elevation))
                .unwrap()
                .map(|g| g.ring),
            Some(2)
        );
        f.clock.advance(Duration::from_secs(60));
        let b = breach(wvfs_write::Host::write(
            view!(f, vfs_write),
            "a".into(),
            b"2".to_vec(),
        ));
        assert_eq!(
            b.ring,
            Ring::Sandbox,
            "the first call after the TTL is judged at the base ring"
        );
        assert_eq!(std::fs::read(f.dir.path().join("a")).unwrap(), b"1");
    }

    #[test]
    fn a_demotion_counts_at_the_very_next_call() {
        let mut f = fixture(Ring::Standard, false);
        wvfs_write::Host::write(view!(f, vfs_write), "a".into(), b"1".to_vec()).unwrap();
        f.standing.set_base(Ring::Sandbox).unwrap();
        let b = breach(wvfs_write::Host::write(
            view!(f, vfs_write),
            "a".into(),
            b"2".to_vec(),
        ));
        assert_eq!(b.ring, Ring::Sandbox);
    }

    #[test]
    fn quarantine_refuses_all_but_context_and_log_until_released() {
        let mut f = fixture(Ring::Standard, false);
        f.standing.quarantine(None).unwrap();
        assert!(matches!(
            refused(wvfs_read::Host::read(view!(f, vfs_read), "x".into())),
            WitError::Quarantined(_)
        ));
        assert!(matches!(
            refused(wvfs_write::Host::write(
                view!(f, vfs_write),
                "x".into(),
                vec![]
            )),
            WitError::Quarantined(_)
        ));
        assert_eq!(wcontext::Host::current_ring(view!(f, context)).unwrap(), 2);
        assert!(f.breaches.lock().unwrap().is_empty());
        f.standing.release();
        wvfs_write::Host::write(view!(f, vfs_write), "x".into(), b"ok".to_vec()).unwrap();
    }

    #[test]
    fn a_killed_agent_traps_at_its_next_host_call() {
        let mut f = fixture(Ring::Standard, false);
        f.kill.kill("test");
        let r = wvfs_read::Host::read(view!(f, vfs_read), "x".into());
        match r {
            Err(HostError::Trap(e)) => {
                assert_eq!(e.downcast_ref::<Killed>().unwrap().reason, "test")
            }
            other => panic!("expected a kill trap, got {other:?}"),
        }
        assert!(wcontext::Host::whoami(view!(f, context)).is_err());
    }

    #[test]
    fn at_ring_3_ten_changes_pass_and_the_eleventh_is_rate_limited() {
        let mut f = fixture(Ring::Sandbox, true);
        // Ring 3 has no writes, so count elevation requests (a change).
        for i in 0..10 {
            let e = refused(welevation::Host::request(
                view!(f, elevation),
                2,
                0,
                "why".into(),
                None,
            ));
            assert!(matches!(e, WitError::Denied(_)), "call {i}: {e:?}");
        }
        let e = refused(welevation::Host::request(
            view!(f, elevation),
            2,
            0,
            "why".into(),
            None,
        ));
        assert!(
            matches!(e, WitError::RateLimited(200)),
            "5/s: one token every 200 ms: {e:?}"
        );
        // Reads have their own bucket.
        assert!(matches!(
            refused(wvfs_read::Host::read(view!(f, vfs_read), "nope".into())),
            WitError::NotFound(_)
        ));
        f.clock.advance(Duration::from_millis(200));
        let e = refused(welevation::Host::request(
            view!(f, elevation),
            2,
            0,
            "why".into(),
            None,
        ));
        assert!(matches!(e, WitError::Denied(_)), "a token came back: {e:?}");
        // Context and log are never metered.
        for _ in 0..1000 {
            wcontext::Host::current_ring(view!(f, context)).unwrap();
        }
    }
}
