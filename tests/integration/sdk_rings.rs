//! A ring declared with an `agent-sdk` feature makes a call outside it a
//! compile error: a tiny agent crate is built for `wasm32-wasip2` with
//! `ring-sandbox`, with and without a `vfs::write` call.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::python::run_bounded;

/// A cold build compiles `wit-bindgen`'s macro for the probe's own target dir.
const LIMIT: Duration = Duration::from_secs(900);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds an agent crate whose `run` body is `body`, on `agent-sdk` with
/// only `features`; returns whether it built and cargo's stderr.
fn build_probe(case: &str, features: &str, body: &str) -> (bool, String) {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sdk-ring-probe");
    let dir = tmp.join(case);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let sdk = repo().join("guest-sdk");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "ring-probe-{case}"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
agent-sdk = {{ path = {sdk:?}, default-features = false, features = [{features}] }}

# Not a member of the repository's workspace.
[workspace]
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        format!(
            "use agent_sdk::{{Agent, export_agent, vfs}};\n\
             struct Probe;\n\
             impl Agent for Probe {{\n    fn run(input: String) -> Result<String, String> {{\n{body}\n    }}\n}}\n\
             export_agent!(Probe);\n"
        ),
    )
    .unwrap();
    // The repository's lock file: the same dependency versions, no network.
    std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&dir)
        .args(["build", "--offline", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", tmp.join("target"))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET");
    let (status, _, stderr) =
        run_bounded(&mut cmd, LIMIT, &format!("cargo build of the {case} probe")).unwrap();
    (status.success(), stderr)
}

#[test]
fn a_sandbox_agent_calling_vfs_write_does_not_compile_and_without_the_call_it_does() {
    let reads = "        let text = vfs::read_to_string(&input)?;\n\
                 \x20       const _: () = assert!(matches!(agent_sdk::RING, agent_sdk::Ring::Sandbox));\n\
                 \x20       Ok(text)";
    let (ok, stderr) = build_probe("sandbox-reads", r#""ring-sandbox""#, reads);
    assert!(ok, "the in-ring probe must build:\n{stderr}");

    let writes = "        vfs::write(\"copy.txt\", &input)?;\n        Ok(input)";
    let (ok, stderr) = build_probe("sandbox-writes", r#""ring-sandbox""#, writes);
    assert!(
        !ok,
        "a ring-sandbox agent calling vfs::write must not build"
    );
    assert!(
        stderr.contains("cannot find function `write` in module `vfs`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the item is gated behind the `vfs-write` feature"),
        "the error must name the capability:\n{stderr}"
    );

    let (ok, stderr) = build_probe("standard-writes", r#""ring-standard""#, writes);
    assert!(ok, "ring-standard has vfs-write:\n{stderr}");
}
