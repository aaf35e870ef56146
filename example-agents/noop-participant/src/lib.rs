//! `noop-participant` — a Ring 3 (sandbox) saga participant that does nothing.
//!
//! `run` answers the empty string; every step (`execute`) succeeds with an
//! empty output and every undo (`compensate`) succeeds, without a single host
//! call. It is the least a saga step inside a sandboxed agent can be: the
//! saga bench measures it to show what three calls into a live instance cost
//! when nothing happens inside them (`saga_3_steps/wasm_noop` and the
//! `floor_raw_wasmtime_noop` floors).

use agent_sdk::{Agent, SagaParticipant, Step, export_agent};

struct Noop;

impl Agent for Noop {
    fn run(_input: String) -> Result<String, String> {
        Ok(String::new())
    }
}

impl SagaParticipant for Noop {
    fn execute(_step: &Step, _input: &str) -> Result<String, String> {
        Ok(String::new())
    }

    fn compensate(_step: &Step, _input: &str, _output: &str) -> Result<(), String> {
        Ok(())
    }
}

export_agent!(Noop, saga);
