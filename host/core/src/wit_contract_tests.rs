//! The ring table and `wit/` must describe the same contract: every WIT
//! interface is in the table (with exactly its functions), and every ring
//! world imports exactly the capabilities the default table grants that ring.

use std::collections::BTreeSet;
use std::path::Path;

use crate::{Capability, Ring, RingPolicy, TYPE_ONLY_INTERFACES, WIT_PACKAGE, WIT_VERSION};
use wit_parser::{Resolve, WorldItem, WorldKey};

/// Interfaces an agent may *export*: they grant nothing and are no ring's.
const EXPORTED_INTERFACES: &[&str] = &["saga-participant"];

fn load() -> (Resolve, wit_parser::PackageId) {
    let mut resolve = Resolve::default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let (pkg, _) = resolve.push_dir(&dir).expect("wit/ parses");
    (resolve, pkg)
}

#[test]
fn package_name_and_version_match() {
    let (resolve, pkg) = load();
    let name = &resolve.packages[pkg].name;
    assert_eq!(format!("{}:{}", name.namespace, name.name), WIT_PACKAGE);
    assert_eq!(
        name.version.as_ref().map(ToString::to_string).as_deref(),
        Some(WIT_VERSION)
    );
}

#[test]
fn every_wit_interface_is_in_the_ring_table_with_its_functions() {
    let (resolve, pkg) = load();
    let mut seen = BTreeSet::new();
    for (name, id) in &resolve.packages[pkg].interfaces {
        let iface = &resolve.interfaces[*id];
        let funcs: BTreeSet<&str> = iface.functions.keys().map(String::as_str).collect();
        if EXPORTED_INTERFACES.contains(&name.as_str()) {
            continue;
        }
        if TYPE_ONLY_INTERFACES.contains(&name.as_str()) {
            assert!(
                funcs.is_empty(),
                "type-only interface {name} has functions {funcs:?}"
            );
            continue;
        }
        let cap = Capability::from_interface(name).unwrap_or_else(|| {
            panic!("WIT interface {name} is missing from the ring table (Capability)")
        });
        let table: BTreeSet<&str> = cap.functions().iter().copied().collect();
        assert_eq!(
            funcs, table,
            "functions of {name} differ between wit/ and Capability::functions"
        );
        seen.insert(cap);
    }
    // `net` is WASI's `wasi:http/outgoing-handler`, not an interface of ours.
    let all: BTreeSet<Capability> = Capability::ALL
        .into_iter()
        .filter(|c| !c.is_wasi())
        .collect();
    assert_eq!(
        seen, all,
        "the ring table lists capabilities that wit/ does not define"
    );
}

#[test]
fn every_ring_world_imports_exactly_its_capabilities() {
    let (resolve, pkg) = load();
    let policy = RingPolicy::default();
    for ring in Ring::ALL {
        let world = resolve.packages[pkg]
            .worlds
            .get(ring.name())
            .unwrap_or_else(|| panic!("wit/ has no world {} for {ring}", ring.name()));
        let mut imported = BTreeSet::new();
        for (key, item) in &resolve.worlds[*world].imports {
            if let (WorldKey::Interface(id), WorldItem::Interface { .. }) = (key, item) {
                let name = resolve.interfaces[*id].name.clone().unwrap_or_default();
                if !TYPE_ONLY_INTERFACES.contains(&name.as_str()) {
                    imported.insert(Capability::from_interface(&name).expect("known capability"));
                }
            }
        }
        // The worlds do not import `net` (WASI's, not ours): a guest's HTTP
        // client imports `wasi:http/outgoing-handler` itself.
        let granted: BTreeSet<Capability> = policy
            .limits(ring)
            .capabilities
            .iter()
            .filter(|c| !c.is_wasi())
            .collect();
        assert_eq!(
            imported,
            granted,
            "world {} and the ring table disagree",
            ring.name()
        );
        let exports: Vec<String> = resolve.worlds[*world]
            .exports
            .keys()
            .map(|k| resolve.name_world_key(k))
            .collect();
        assert_eq!(
            exports,
            ["run"],
            "world {} must export exactly `run`",
            ring.name()
        );
    }
}

#[test]
fn exported_interfaces_are_exported_by_the_saga_world_only() {
    let (resolve, pkg) = load();
    let saga = resolve.packages[pkg]
        .worlds
        .get("saga")
        .expect("wit/ has a saga world");
    let exports: BTreeSet<String> = resolve.worlds[*saga]
        .exports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    let expected: BTreeSet<String> = std::iter::once("run".to_string())
        .chain(
            EXPORTED_INTERFACES
                .iter()
                .map(|i| format!("{WIT_PACKAGE}/{i}@{WIT_VERSION}")),
        )
        .collect();
    assert_eq!(
        exports, expected,
        "world saga must export `run` and the saga hooks"
    );
    for (name, world) in &resolve.packages[pkg].worlds {
        for (key, _) in &resolve.worlds[*world].imports {
            let import = resolve.name_world_key(key);
            assert!(
                !EXPORTED_INTERFACES
                    .iter()
                    .any(|i| import.contains(&format!("/{i}@"))),
                "world {name} imports the export-only interface {import}"
            );
        }
    }
}
