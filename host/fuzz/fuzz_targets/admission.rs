//! Fuzz target `admission`: see `checks/admission.rs` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ahv_fuzz::admission::check(data));
