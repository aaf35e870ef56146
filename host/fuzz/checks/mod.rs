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
    scratch_dir_named("ahv-fuzz-")
}

/// A scratch directory whose name starts with `prefix`, where
/// [`scratch_dir`] makes its own.
///
/// # Panics
/// As [`scratch_dir`].
pub fn scratch_dir_named(prefix: &str) -> tempfile::TempDir {
    let made = match scratch_parent() {
        Some(shm) => tempfile::Builder::new().prefix(prefix).tempdir_in(shm),
        None => Err(std::io::Error::other("no /dev/shm")),
    };
    match made.or_else(|_| tempfile::Builder::new().prefix(prefix).tempdir()) {
        Ok(d) => d,
        Err(e) => panic!("cannot create a scratch directory for the check: {e}"),
    }
}

/// tmpfs, when the machine has it.
fn scratch_parent() -> Option<&'static std::path::Path> {
    let shm = std::path::Path::new("/dev/shm");
    shm.is_dir().then_some(shm)
}

/// A scratch directory for the rest of this process (a fuzz target's
/// fixture: libFuzzer ends the process without dropping statics). Its name
/// carries the process id, and the ones left by processes that have ended
/// are removed first, so repeated fuzz runs do not pile them up.
///
/// # Panics
/// As [`scratch_dir`].
pub fn process_scratch_dir(what: &str) -> std::path::PathBuf {
    let prefix = format!("ahv-fuzz-{what}-");
    for parent in [scratch_parent(), Some(std::env::temp_dir().as_path())]
        .into_iter()
        .flatten()
    {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    scratch_dir_named(&format!("{prefix}{}-", std::process::id())).keep()
}
