//! The one `bindgen!` site of the host, over `wit/`.
//!
//! Imports are sync and trappable (a host function can refuse with a WIT
//! `error` value or trap with a typed cause); the `run` export is async so
//! agents share tokio's threads and yield at epoch ticks.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "root",
    // Sync and trappable, except `locks.acquire`, which may wait for another
    // agent's lock: async, so the wait yields the thread and stays under the
    // call's deadline and kill switch.
    imports: {
        "agent-hypervisor:agent/locks.acquire": async | trappable,
        // Waits for the child's call, under the caller's deadline and kill switch.
        "agent-hypervisor:agent/spawn.run": async | trappable,
        "agent-hypervisor:agent/spawn.start": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    trappable_error_type: {
        "agent-hypervisor:agent/types.error" => crate::adapters::HostError,
    },
});

pub use agent_hypervisor::agent::types::Error as WitError;

/// The `saga-participant` export, which an agent may or may not have.
///
/// A second `bindgen!` because one world cannot describe an *optional*
/// export: `root` (above) is what every agent has, and a `saga` world's
/// `SagaPre` would refuse every plain agent. This one generates only the
/// export's types and call glue (`interfaces:` emits no world, no imports and
/// no `Host` traits), so the host still has one set of import bindings.
pub mod saga {
    wasmtime::component::bindgen!({
        path: "../../wit",
        interfaces: "export agent-hypervisor:agent/saga-participant@0.1.0;",
        exports: { default: async },
    });

    pub use exports::agent_hypervisor::agent::saga_participant::{Guest, GuestIndices, StepCall};
}
