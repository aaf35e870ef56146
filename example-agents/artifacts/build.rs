//! Builds every example agent under `example-agents/` to a `wasm32-wasip2`
//! component and generates `agents.rs`: one byte constant and one path constant
//! per agent, plus `for_each_agent!`, which the integration tests use to
//! require a test per agent (an agent without a test does not compile).
//!
//! The agents are built by a nested `cargo build --release --target
//! wasm32-wasip2` into `<target>/wasm-agents`, so debug, release and clippy
//! builds share one set of components.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let agents_dir = manifest_dir
        .parent()
        .expect("example-agents dir")
        .to_path_buf();
    let root = agents_dir.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out.
    let target_root = out_dir
        .ancestors()
        .nth(4)
        .expect("target dir")
        .to_path_buf();
    let wasm_target = target_root.join("wasm-agents");

    let mut agents = Vec::new();
    for entry in fs::read_dir(&agents_dir).expect("read example-agents") {
        let path = entry.expect("dir entry").path();
        if path == manifest_dir || !path.join("Cargo.toml").is_file() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        agents.push(name);
    }
    agents.sort();

    for dir in [root.join("wit"), root.join("guest-sdk"), agents_dir.clone()] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--locked",
        ])
        .env("CARGO_TARGET_DIR", &wasm_target)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        // The outer build's flags, wrappers (clippy) and coverage are for the host.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET");
    for a in &agents {
        cmd.args(["-p", a]);
    }
    let status = cmd.status().expect("run cargo to build the example agents");
    assert!(
        status.success(),
        "building the example agents for wasm32-wasip2 failed ({status}); \
         is the target installed? run `rustup target add wasm32-wasip2`"
    );

    let mut code = String::new();
    let mut idents = Vec::new();
    for a in &agents {
        let file = wasm_target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", a.replace('-', "_")));
        assert!(
            file.is_file(),
            "agent {a} was built but {} is missing",
            file.display()
        );
        let ident = a.replace('-', "_");
        let upper = ident.to_uppercase();
        let doc = first_doc_line(&agents_dir.join(a).join("src/lib.rs"));
        code.push_str(&format!(
            "/// Component bytes of `{a}`: {doc}\npub const {upper}: &[u8] = include_bytes!({file:?});\n\
             /// Path of the built `{a}` component.\npub const {upper}_PATH: &str = {file:?};\n",
        ));
        idents.push((a.clone(), ident, upper));
    }
    code.push_str(
        "/// Every example agent: (name, component bytes).\npub const ALL: &[(&str, &[u8])] = &[\n",
    );
    for (a, _, upper) in &idents {
        code.push_str(&format!("    ({a:?}, {upper}),\n"));
    }
    code.push_str("];\n");
    code.push_str("/// Every example agent: (name, path of the built component).\npub const PATHS: &[(&str, &str)] = &[\n");
    for (a, _, upper) in &idents {
        code.push_str(&format!("    ({a:?}, {upper}_PATH),\n"));
    }
    code.push_str("];\n");
    code.push_str("/// Calls `$m!(ident)` once per example agent (ident = crate name with `_`).\n#[macro_export]\nmacro_rules! for_each_agent {\n    ($m:ident) => {\n");
    for (_, ident, _) in &idents {
        code.push_str(&format!("        $m!({ident});\n"));
    }
    code.push_str("    };\n}\n");
    fs::write(out_dir.join("agents.rs"), code).expect("write agents.rs");
}

fn first_doc_line(lib: &Path) -> String {
    let text = fs::read_to_string(lib).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("//! "))
        .map(|l| l.replace('`', ""))
        .unwrap_or_default()
}
