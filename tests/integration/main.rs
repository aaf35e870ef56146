//! The one integration-test binary: real guest components under the real host.

mod agents;
mod api;
mod audit;
mod cli;
mod containment;
mod fuzz_seeds;
mod js;
mod liability;
mod mcp;
mod net;
mod new_agent;
/// A PostgreSQL database per test (a private server unless AHV_TEST_DATABASE_URL names one).
#[path = "../../host/store/tests/support/mod.rs"]
mod pg;
mod policy;
mod python;
mod rings;
mod runtime;
mod saga_agents;
mod sagas;
mod sdk_rings;
mod sessions;
mod snapshots;
mod vfs_hostile;

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

/// The largest single heap allocation made on the calling thread, so a test
/// can show the host did not copy bulk guest data (the guest's own memory is
/// mapped by Wasmtime's pooling allocator, not allocated here).
#[allow(unsafe_code)]
pub mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        // `try_with`: allocations during thread teardown are not counted.
        let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
    }

    /// The system allocator, noting each allocation's size on its thread.
    pub struct Probe;

    // SAFETY: every method forwards to `System` with the same arguments; the
    // only addition is a thread-local counter that never allocates.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: forwarded as is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: forwarded as is.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded as is.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: forwarded as is.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static PROBE: Probe = Probe;

    /// Runs `f` to completion on this thread (tokio's current-thread test
    /// runtime: the host functions run here too) and returns its output with
    /// the largest single allocation made meanwhile.
    pub async fn largest_allocation_during<T>(f: impl Future<Output = T>) -> (T, usize) {
        LARGEST.with(|c| c.set(0));
        let out = f.await;
        (out, LARGEST.with(Cell::get))
    }
}
