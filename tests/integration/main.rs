//! The one integration-test binary: real guest components under the real host.

mod agents;
mod audit;
mod cli;
mod runtime;
mod sessions;

use std::path::PathBuf;

/// Compiled components are cached here across test runs.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ahv-component-cache")
}

/// Every example agent must have a module in `agents` with `pub const TESTED: ()`;
/// an agent without one does not compile.
macro_rules! require_test {
    ($agent:ident) => {
        const _: () = agents::$agent::TESTED;
    };
}
ahv_agents::for_each_agent!(require_test);
