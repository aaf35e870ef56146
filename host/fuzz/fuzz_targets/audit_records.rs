//! Fuzz target `audit_records`: see `checks/audit_records.rs` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ahv_fuzz::audit_records::check(data));
