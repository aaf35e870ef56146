//! Target `admission`: arbitrary bytes offered as an agent component.
//!
//! [`Runtime::load`] (admission) and [`Runtime::inspect`] must answer `Ok`
//! or a [`LoadError`], never panic, and agree with each other:
//! - a component that loads inspects to the same manifest, has no refused
//!   import and exports `run`;
//! - bytes that are not a component are `Invalid` for both;
//! - a refused import named by `load` is one `inspect` lists as refused;
//! - every import in a manifest is classified as `classify_import` says, and
//!   the manifest's capabilities and lowest ring follow from its imports.
//!
//! A component that loads is then linked for every ring (`instance_pre`),
//! which must give a pre-instance or `LoadError::Link`, never a panic:
//! admission goes by import names, linking checks their types.

use std::sync::Mutex;
use std::time::Duration;

use ahv_core::{Capability, CapabilitySet, Ring};
use ahv_runtime::component::classify_import;
use ahv_runtime::{ImportKind, LoadError, Manifest, Runtime};

/// Loads after which the runtime is built afresh: [`Runtime::load`] keeps
/// every admitted component in memory, and a fuzz run admits thousands of
/// mutated ones.
const LOADS_PER_RUNTIME: usize = 256;

/// The runtime every check uses and how many components it has admitted.
static RUNTIME: Mutex<Option<(Runtime, usize)>> = Mutex::new(None);

fn runtime() -> Runtime {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((rt, loads)) = slot.as_mut()
        && *loads < LOADS_PER_RUNTIME
    {
        *loads += 1;
        return rt.clone();
    }
    let built = Runtime::builder()
        // Nothing is instantiated: the smallest pool, the slowest tick.
        .max_instances(1)
        .epoch_tick(Duration::from_millis(50))
        .build();
    match built {
        Ok(rt) => {
            *slot = Some((rt.clone(), 1));
            rt
        }
        Err(e) => panic!("cannot build the runtime (the machine, not the input): {e}"),
    }
}

/// The fuzz target's entry point.
///
/// # Panics
/// When an invariant fails (or the code under test panics).
pub fn check(data: &[u8]) {
    let rt = runtime();
    let inspected = rt.inspect(data);
    if let Ok(m) = &inspected {
        manifest_is_consistent(&rt, m);
    }
    let loaded = rt.load(data);
    match (&loaded, &inspected) {
        (Ok(c), Ok(m)) => {
            assert_eq!(c.manifest(), m, "load and inspect read different manifests");
            assert!(
                m.refused().next().is_none(),
                "admitted with refused imports: {m:?}"
            );
            assert!(
                m.exports.iter().any(|e| e == "run"),
                "admitted without `run`: {m:?}"
            );
            for ring in Ring::ALL {
                match rt.instance_pre(c, ring) {
                    Ok(_) | Err(LoadError::Link { .. }) => {}
                    Err(e) => panic!("linking in {ring} fails with a non-link error: {e}"),
                }
            }
        }
        (Err(LoadError::Invalid { .. }), Err(LoadError::Invalid { .. })) => {}
        (Err(LoadError::RefusedImport { name, .. }), Ok(m)) => {
            assert!(
                m.refused().any(|(n, _)| n == name),
                "load refuses {name:?}, which inspect does not list as refused: {m:?}"
            );
        }
        (Err(LoadError::MissingRun { .. }), Ok(m)) => {
            assert!(
                m.refused().next().is_none(),
                "refused imports, yet blamed on `run`: {m:?}"
            );
        }
        // Inspect reads imports without admitting; only admission checks the
        // capability functions and their types against the contract.
        (Err(LoadError::Contract { .. } | LoadError::ContractTypes { .. }), Ok(m)) => {
            assert!(
                m.refused().next().is_none(),
                "refused imports, yet blamed on the contract's functions: {m:?}"
            );
        }
        (l, i) => panic!("load and inspect disagree: load {l:?}, inspect {i:?}"),
    }
    if let Err(e) = &loaded {
        let _ = e.to_string();
    }
}

fn manifest_is_consistent(rt: &Runtime, m: &Manifest) {
    let mut caps = Vec::new();
    for i in &m.imports {
        assert_eq!(
            classify_import(&i.name),
            i.kind,
            "{} classified differently",
            i.name
        );
        if let ImportKind::Capability(c) = i.kind {
            caps.push(c);
        }
    }
    let set: CapabilitySet = caps.iter().copied().collect();
    assert_eq!(
        m.capabilities, set,
        "capabilities are not those of the imports"
    );
    assert_eq!(
        m.lowest_ring,
        rt.policy().lowest_ring_covering(set),
        "lowest ring of {set:?}"
    );
    if let Some(ring) = m.lowest_ring {
        let have = rt.policy().limits(ring).capabilities;
        assert!(
            caps.iter().all(|c: &Capability| have.contains(*c)),
            "{ring} lacks a capability the component imports"
        );
    }
}
