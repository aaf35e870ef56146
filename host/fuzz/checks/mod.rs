//! The checks the fuzz targets run, one module per target.
//!
//! Each module has a `check(data: &[u8])` that feeds `data` to the code under
//! test and panics when an invariant fails (a panic of the code under test is
//! a failure too). The fuzz targets (`fuzz_targets/*.rs`) call it with
//! libFuzzer's inputs; the workspace's integration tests
//! (`tests/integration/fuzz_seeds.rs`) include this file with `#[path]` and
//! call it with every file under `seeds/<target>/` and
//! `regressions/<target>/`, so an input that once failed stays a test.
//!
//! Everything here must build both in the fuzz crate (its own workspace,
//! instrumented) and inside the `ahv-tests` crate: it uses only crates both
//! have (`ahv-*`, `cap-std`, `tempfile`, `serde_json`; the tests crate has the
//! last as a dev-dependency, which its integration tests can use).
#![deny(unsafe_code)]

pub mod admission;
pub mod audit_records;
pub mod path;

/// A scratch directory for one check: on tmpfs when the machine has one (the
/// audit checks sync files, which costs nothing there), else in the system's
/// temporary directory.
///
/// # Panics
/// When no temporary directory can be created: the machine, not the input,
/// is at fault, and a fuzz run must stop rather than count it as a pass.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new().prefix("ahv-fuzz-").tempdir_in(shm)
    } else {
        Err(std::io::Error::other("no /dev/shm"))
    };
    match made.or_else(|_| tempfile::Builder::new().prefix("ahv-fuzz-").tempdir()) {
        Ok(d) => d,
        Err(e) => panic!("cannot create a scratch directory for the check: {e}"),
    }
}
