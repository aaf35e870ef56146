//! Fuzz target `path`: see `checks/path.rs` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ahv_fuzz::path::check(data));
