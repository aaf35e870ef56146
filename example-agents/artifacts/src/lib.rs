//! The example agents, built to `wasm32-wasip2` components by this crate's
//! build script and embedded here.
//!
//! ```
//! // Every agent is a component: the binary starts with the component magic.
//! assert!(ahv_agents::HELLO.starts_with(b"\0asm"));
//! assert!(ahv_agents::ALL.iter().any(|(name, _)| *name == "spinner"));
//! ```

include!(concat!(env!("OUT_DIR"), "/agents.rs"));
