//! `memory-hog` — hostile: grows its memory without bound.
//!
//! It keeps allocating (and touching) 1 MiB blocks until the host's memory
//! limiter refuses to grow linear memory, which traps it. Input `"<n>"` caps
//! the allocation at n MiB instead (then it answers how much it allocated),
//! so tests can check that a hog *under* the cap works.
//!
//! Two more inputs play an agent snooping on its predecessor:
//! `"fill:<KiB>"` fills that much heap with `0xA5` and frees it;
//! `"scan:<KiB>"` allocates that much heap *without* initialising it and
//! answers how many of its bytes are not zero. In a fresh instance that heap
//! comes straight from `memory.grow`, which Wasm promises is zero, so any
//! stale byte is the host leaking a recycled memory slot; in the same
//! instance the allocator hands back the freed, still-filled block, which
//! shows the scan sees stale bytes when there are some.
//!
//! And two for its initialised data (which the host maps copy-on-write from
//! the module's image): `"poke:<byte>"` overwrites a static array, which the
//! module's data segment starts as [`MARK_INITIAL`] bytes, with that byte;
//! `"peek"` answers how many of its bytes differ from the initial value. A
//! fresh instance must answer 0 whatever an agent before it in the same
//! memory slot poked.

// Reading uninitialised heap is this test instrument's point (see `scan:`).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU8, Ordering};

use agent_sdk::{Agent, export_agent, log};

/// What every byte of [`MARK`] starts as (not zero, so the array is in the
/// data segment, not in zero-initialised memory).
const MARK_INITIAL: u8 = 0x5A;

/// Initialised data spanning three host pages.
static MARK: [AtomicU8; 3 * 4096] = [const { AtomicU8::new(MARK_INITIAL) }; 3 * 4096];

struct MemoryHog;

impl Agent for MemoryHog {
    fn run(input: String) -> Result<String, String> {
        let kib = |s: &str| s.trim().parse::<usize>().map_err(|e| format!("{s:?}: {e}"));
        if let Some(n) = input.strip_prefix("fill:") {
            let n = kib(n)?;
            let block = vec![0xA5u8; n << 10];
            std::hint::black_box(&block);
            return Ok(format!("filled {n} KiB"));
        }
        if let Some(n) = input.strip_prefix("scan:") {
            let n = kib(n)?;
            let block: Vec<u8> = Vec::with_capacity(n << 10);
            let base = block.as_ptr();
            let stale = (0..block.capacity())
                // SAFETY: in bounds of the allocation. The bytes are
                // uninitialised on purpose (that is what a snooping agent
                // reads); volatile reads keep the compiler from assuming
                // anything about them, and in Wasm a load of any in-bounds
                // byte is defined.
                .filter(|&i| unsafe { base.add(i).read_volatile() } != 0)
                .count();
            return Ok(format!("{stale} stale bytes in {n} KiB"));
        }
        if let Some(b) = input.strip_prefix("poke:") {
            let b: u8 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
            for m in &MARK {
                m.store(b, Ordering::Relaxed);
            }
            return Ok(format!("poked {} bytes", MARK.len()));
        }
        if input == "peek" {
            let changed = MARK
                .iter()
                .filter(|m| m.load(Ordering::Relaxed) != MARK_INITIAL)
                .count();
            return Ok(format!("{changed} changed bytes"));
        }
        let cap: Option<usize> = input.trim().parse().ok();
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            if cap.is_some_and(|c| blocks.len() >= c) {
                return Ok(format!("allocated {} MiB", blocks.len()));
            }
            let mut block = vec![0u8; 1 << 20];
            block[blocks.len() % (1 << 20)] = 1;
            blocks.push(std::hint::black_box(block));
            if blocks.len().is_multiple_of(16) {
                log::debug!("{} MiB so far", blocks.len());
            }
        }
    }
}

export_agent!(MemoryHog);
