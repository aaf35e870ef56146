//! Host functions that take bulk data from the guest, linked over the
//! generated ones.
//!
//! The generated bindings lift every `string` and `list<u8>` argument into an
//! owned host copy before the host function runs, so a 100 MiB `log` line or
//! `write` used to be copied in full before it was cut or refused. The
//! functions here take the data as [`WasmStr`] / [`WasmList`] — a bounds-
//! checked view into guest memory — and hand the domain a borrowed slice:
//! a log line is cut to its budget, a write is checked against its quota,
//! before a byte is copied. The same goes for WASI's random bytes, which the
//! host would otherwise allocate at whatever size the guest names.
//!
//! Every function still starts with the gate (`Gate::admit`), like the
//! generated adapters in [`crate::capabilities`], which stay the reference
//! implementation (and are what the capability tests call).

use std::borrow::Cow;

use ahv_core::{Capability, CapabilitySet};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmList, WasmStr};
use wasmtime_wasi::p2::bindings::random::{insecure, random};

use crate::adapters::HostError;
use crate::bindings::WitError;
use crate::bindings::agent_hypervisor::agent::log;
use crate::state::AgentState;
use crate::trap::{InvalidGuestData, RequestTooLarge};

/// The WASI random interfaces as wasmtime-wasi 48 links them (guests
/// importing an older 0.2.x resolve to these by semver).
const WASI_RANDOM: &str = "wasi:random/random@0.2.12";
const WASI_INSECURE_RANDOM: &str = "wasi:random/insecure@0.2.12";

type Store<'a> = StoreContextMut<'a, AgentState>;

/// Links the bulk-data functions of the capabilities in `caps` (others
/// keep their breach stubs) and the bounded WASI random functions, replacing
/// what the generated `add_to_linker` functions defined.
///
/// # Errors
/// A Wasmtime linking error (a host bug: a name or type that does not match `wit/`).
pub(crate) fn link(l: &mut Linker<AgentState>, caps: CapabilitySet) -> wasmtime::Result<()> {
    l.allow_shadowing(true);
    if caps.contains(Capability::Log) {
        l.instance(&Capability::Log.instance_name())?.func_wrap(
            "log",
            |mut store: Store<'_>, (level, message): (log::Level, WasmStr)| {
                store.data_mut().gate.admit_free(Capability::Log, "log")?;
                let text = text(&store, &message, "log message")?;
                store.data().caps.handles.log_line(level, &text);
                Ok(())
            },
        )?;
    }
    if caps.contains(Capability::VfsWrite) {
        let mut vfs = l.instance(&Capability::VfsWrite.instance_name())?;
        for (function, append) in [("write", false), ("append", true)] {
            vfs.func_wrap(
                function,
                move |mut store: Store<'_>, (path, contents): (WasmStr, WasmList<u8>)| {
                    let ring = match store.data_mut().gate.admit(Capability::VfsWrite, function) {
                        Ok(ring) => ring,
                        Err(e) => return refusal(&store.data().gate, Err(e)),
                    };
                    let path = text(&store, &path, "path")?;
                    let contents = contents.as_le_slice(&store);
                    let data = store.data();
                    let caller = data.gate.caller(ring);
                    refusal(
                        &data.gate,
                        data.caps
                            .handles
                            .write_file(caller, &path, contents, append),
                    )
                },
            )?;
        }
    }
    if caps.contains(Capability::StateWrite) {
        l.instance(&Capability::StateWrite.instance_name())?
            .func_wrap(
                "put",
                |mut store: Store<'_>, (key, value, expected): (WasmStr, WasmList<u8>, u64)| {
                    let ring = match store.data_mut().gate.admit(Capability::StateWrite, "put") {
                        Ok(ring) => ring,
                        Err(e) => return refusal(&store.data().gate, Err(e)),
                    };
                    let key = text(&store, &key, "state key")?;
                    let value = value.as_le_slice(&store);
                    let data = store.data();
                    refusal(
                        &data.gate,
                        data.caps
                            .handles
                            .state_put(data.gate.caller(ring), &key, value, expected),
                    )
                },
            )?;
    }
    l.instance(WASI_RANDOM)?.func_wrap(
        "get-random-bytes",
        move |mut store: Store<'_>, (len,): (u64,)| {
            let max = store.data().random_limit;
            bounded(len, max, "wasi:random get-random-bytes")?;
            let rng = store.data_mut().wasi_mut().random();
            Ok((random::Host::get_random_bytes(rng, len)?,))
        },
    )?;
    l.instance(WASI_INSECURE_RANDOM)?.func_wrap(
        "get-insecure-random-bytes",
        move |mut store: Store<'_>, (len,): (u64,)| {
            let max = store.data().random_limit;
            bounded(len, max, "wasi:random get-insecure-random-bytes")?;
            let rng = store.data_mut().wasi_mut().random();
            Ok((insecure::Host::get_insecure_random_bytes(rng, len)?,))
        },
    )?;
    l.allow_shadowing(false);
    Ok(())
}

/// A guest string, validated in place (borrowed, not copied, when it is UTF-8).
fn text<'a>(store: &'a Store<'_>, s: &WasmStr, what: &str) -> wasmtime::Result<Cow<'a, str>> {
    s.to_str(store).map_err(|e| {
        wasmtime::Error::new(InvalidGuestData {
            message: format!("the {what} is not UTF-8: {e:#}"),
        })
    })
}

/// A refusal becomes the WIT `error` value (and is counted); a trap stays a trap.
fn refusal<T>(
    gate: &crate::gate::Gate,
    r: Result<T, HostError>,
) -> wasmtime::Result<(Result<T, WitError>,)> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(HostError::Refused(e)) => {
            gate.metrics.refusal(&e);
            Ok((Err(e),))
        }
        Err(HostError::Trap(e)) => Err(e),
    }
}

/// Refuses (with a typed trap) a request larger than the ring allows,
/// before anything is allocated.
pub(crate) fn bounded(requested: u64, limit: u64, what: &str) -> wasmtime::Result<()> {
    if requested > limit {
        return Err(wasmtime::Error::new(RequestTooLarge {
            what: what.to_string(),
            requested,
            limit,
        }));
    }
    Ok(())
}
