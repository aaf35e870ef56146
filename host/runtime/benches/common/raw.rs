//! The raw wasmtime baseline the runtime's benches and probes measure
//! against: the same engine and component as the governed runtime, a bare
//! store with WASI, and ungoverned stand-ins for the host functions the
//! baselines call. Included with `#[path]` by `benches/runtime.rs`,
//! `examples/instantiate_probe.rs`, `examples/density_probe.rs` and the
//! hypervisor's saga bench (`host/hypervisor/benches/saga.rs`).

use ahv_runtime::raw::WitError;
use ahv_runtime::raw::agent_hypervisor::agent::locks::{LockMode, LockTarget};
use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A raw store's data: WASI's context and nothing of ours.
pub struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The ungoverned host functions of the raw baselines: `context.current-ring`
/// and `locks.held` with the governed signatures, but no gate, no state.
fn raw_imports(linker: &mut Linker<RawState>) {
    linker
        .instance("agent-hypervisor:agent/context@0.1.0")
        .unwrap()
        .func_wrap("current-ring", |_, (): ()| Ok((3u8,)))
        .unwrap();
    linker
        .instance("agent-hypervisor:agent/locks@0.1.0")
        .unwrap()
        .func_wrap("held", |_, (): ()| {
            Ok((Ok::<Vec<(LockTarget, LockMode)>, WitError>(Vec::new()),))
        })
        .unwrap();
}

/// Traps for every function of our package the component imports:
/// `pinger` imports more than it calls (vfs, state), and those are never
/// reached in the bench. (Not `Linker::define_unknown_imports_as_traps`:
/// for a WASI interface that `use`s a resource of another, such as
/// `wasi:io/streams`' `error`, it defines a second resource of that name
/// and the component no longer links.) `raw_imports` then shadows the
/// functions the bench calls.
pub fn trap_our_imports(
    engine: &Engine,
    linker: &mut Linker<RawState>,
    component: &wasmtime::component::Component,
) {
    use wasmtime::component::types::ComponentItem;
    linker.allow_shadowing(true);
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if !name.starts_with("agent-hypervisor:") {
            continue;
        }
        let mut inst = linker.instance(name).unwrap();
        for (function, item) in instance.exports(engine) {
            if let ComponentItem::ComponentFunc(_) = item.ty {
                let full = format!("{name}#{function}");
                inst.func_new(function, move |_, _, _, _| {
                    Err(wasmtime::format_err!(
                        "{full} is not linked in the raw baseline"
                    ))
                })
                .unwrap();
            }
        }
    }
}

/// Raw wasmtime: WASI plus an ungoverned `context` and `locks.held` (no
/// ring check, no rate limit, no state).
pub fn raw_pre(
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> InstancePre<RawState> {
    let mut linker = Linker::<RawState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    trap_our_imports(engine, &mut linker, component);
    raw_imports(&mut linker);
    linker.instantiate_pre(component).unwrap()
}

/// As [`raw_pre`], with synchronous WASI, for the sync-call baseline.
#[allow(dead_code)] // Not every includer uses it.
pub fn raw_pre_sync(
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> InstancePre<RawState> {
    let mut linker = Linker::<RawState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    trap_our_imports(engine, &mut linker, component);
    raw_imports(&mut linker);
    linker.instantiate_pre(component).unwrap()
}

/// A bare store with fuel and an epoch deadline that a bench never exhausts.
pub fn raw_store(engine: &Engine) -> Store<RawState> {
    let mut store = Store::new(
        engine,
        RawState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        },
    );
    store.set_fuel(100_000_000).unwrap();
    store.set_epoch_deadline(1_000_000);
    store
}
