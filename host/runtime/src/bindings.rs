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
