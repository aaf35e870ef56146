//! `ahv new`: the projects it makes build with their own documented command,
//! pass their own unit test, and run under `ahv run` as they are made; and
//! what it refuses, it refuses with exit 2 (or 4 for a missing Rust SDK)
//! and writes nothing.
//!
//! The builds are real: the Rust crate with `cargo` for wasm32-wasip2 (into
//! a target directory kept under the target directory, so a second run
//! builds only the crate), the Python project with its `build.sh` and the
//! componentize-py the Python tests install, the JavaScript project with
//! `npm run build` on the `node_modules` the JavaScript tests install (from
//! the same lock file the project carries). A Python or JavaScript component
//! takes a minute or more to compile in a debug `ahv`; the tests share the
//! compiled-component cache of the other tests, so a rerun of an unchanged
//! build is served from it. nextest gives `new_agent::` tests 16 minutes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ahv_cli::exit::Exit;
use serde_json::Value;

use crate::cache_dir;
use crate::python::run_bounded;

/// The `ahv` binary under test.
const AHV: &str = env!("CARGO_BIN_EXE_ahv-under-test");

/// Longest `ahv new` may take.
const NEW_LIMIT: Duration = Duration::from_secs(30);

/// Longest one build of a project may take (a cold Rust build compiles
/// wit-bindgen; a Python or JavaScript build runs a Wasm toolchain).
const BUILD_LIMIT: Duration = Duration::from_secs(300);

/// Longest `ahv run` may take: compiling an 18 MB component in a debug
/// build on a loaded machine, then the call.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Longest a project's own unit tests may take (Rust: a native build of
/// the SDK first).
const TEST_LIMIT: Duration = Duration::from_secs(300);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to its end, bounded by `limit`.
fn bounded(cmd: &mut Command, limit: Duration, what: &str) -> Out {
    let (status, stdout, stderr) =
        run_bounded(cmd, limit, what).unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Out {
        code: status
            .code()
            .unwrap_or_else(|| panic!("{what} was killed by a signal")),
        stdout,
        stderr,
    }
}

/// `ahv ARGS` in `dir`.
fn ahv(dir: &Path, args: &[&str]) -> Out {
    bounded(
        Command::new(AHV)
            .current_dir(dir)
            .args(args)
            .env("XDG_CACHE_HOME", dir.join(".xdg-cache"))
            .env("RUST_BACKTRACE", "1")
            .env_remove("AHV_LOG"),
        NEW_LIMIT,
        &format!("ahv {}", args.join(" ")),
    )
}

/// Runs `cmd` and fails the test, with its output, unless it succeeds.
fn succeeds(cmd: &mut Command, limit: Duration, what: &str) -> Out {
    let out = bounded(cmd, limit, what);
    assert_eq!(out.code, 0, "{what} failed: {out:?}");
    out
}

/// `ahv new ARGS` in a new temporary directory; returns it and the project's directory.
fn made(args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    made_in(tempfile::tempdir().unwrap(), args)
}

/// `ahv new ARGS` in `dir`; returns it and the project's directory.
fn made_in(dir: tempfile::TempDir, args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let out = ahv(dir.path(), &[&["new"], args].concat());
    assert_eq!(out.code, 0, "{out:?}");
    let name = args.last().unwrap();
    assert!(out.stdout.contains(&format!("made {name}/")), "{out:?}");
    let project = dir.path().join(name);
    (dir, project)
}

/// Runs the component at `wasm` under `ahv run --json` in `ring`, in a
/// directory holding `greeting.txt`, and returns the JSON report.
fn run_agent(wasm: &Path, ring: &str) -> Value {
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("greeting.txt"), "Howdy\n").unwrap();
    let cache = cache_dir();
    let out = bounded(
        Command::new(AHV)
            .arg("run")
            .arg(wasm)
            .args(["--ring", ring, "--input", "Ada", "--json", "--dir"])
            .arg(files.path())
            .arg("--cache-dir")
            .arg(&cache)
            .env_remove("AHV_LOG"),
        RUN_LIMIT,
        &format!("ahv run {}", wasm.display()),
    );
    let report: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("ahv run --json: {e}: {out:?}"));
    assert_eq!(out.code, 0, "{report:#}");
    report
}

/// Joins the component at `wasm` to a shared session (ring 3) beside the
/// Rust `scripted` agent, which writes a shared file first; runs it there
/// and checks its answer (no `greeting.txt` in its private area: the
/// default greeting) and its log line.
fn in_a_shared_session(wasm: &Path) {
    use ahv_core::Ring;

    use crate::sessions::{Hv, id};

    let bytes = std::fs::read(wasm).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(ahv_tests::within(
        RUN_LIMIT,
        "the new agent in a shared session",
        async {
            let h = Hv::new();
            let s = h.session();
            assert_eq!(h.join(&s, "did:test:new", 0.3, &bytes).await, Ring::Sandbox);
            h.join(&s, "did:test:rust", 0.8, ahv_agents::SCRIPTED).await;
            h.hv.activate_session(&s).unwrap();
            h.script(&s, "did:test:rust", "write shared/plan.md v1")
                .await;
            let out =
                h.hv.run_agent(&s, &id("did:test:new"), "Ada")
                    .await
                    .unwrap();
            assert_eq!(out.result, Ok("Hello, Ada! (ring 3)".to_string()));
            assert!(
                out.logs
                    .iter()
                    .any(|l| l.message == "did:test:new answering in ring 3"),
                "{:?}",
                out.logs
            );
            let out = h.script(&s, "did:test:rust", "read shared/plan.md").await;
            assert!(out.contains("v1"), "{out}");
        },
    ));
}

/// Builds a new project with `build` (named `what` if it fails), then runs
/// the component it made at `wasm` alone in ring 3 and in a shared session.
fn builds_and_runs(build: &mut Command, what: &str, wasm: &Path) {
    succeeds(build, BUILD_LIMIT, what);
    answered(&run_agent(wasm, "3"), 3);
    in_a_shared_session(wasm);
}

/// Checks the generated agent's answer and log line in `ring`.
fn answered(report: &Value, ring: u8) {
    assert_eq!(report["outcome"], "ok", "{report:#}");
    assert_eq!(
        report["answer"],
        format!("Howdy, Ada! (ring {ring})"),
        "{report:#}"
    );
    let logged = format!("did:ahv:cli answering in ring {ring}");
    assert!(
        report["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"] == logged.as_str()),
        "no log line {logged:?}: {report:#}"
    );
}

/// A nested `cargo` as a user runs it in the project: none of the outer
/// build's flags, wrappers, target or toolchain override (the project's
/// `rust-toolchain.toml` chooses), with `target` as its target directory.
fn cargo(project: &Path, target: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(project)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// The new crate, made inside another Cargo workspace (its own
/// `[workspace]` table keeps it out): `cargo test` passes its unit test
/// natively, `cargo build --release --target wasm32-wasip2` (the README's
/// command) builds the component, and `ahv run` runs it in ring 3: it reads
/// its greeting file, logs and answers.
#[test]
fn rust_project_builds_tests_and_runs_as_made() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(
        outer.path().join("Cargo.toml"),
        "[workspace]\nmembers = []\n",
    )
    .unwrap();
    let (_dir, project) = made_in(outer, &["--lang", "rust", "hello-rs"]);
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(readme.contains("cargo build --release --target wasm32-wasip2"));
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("new-agent-rust");
    let tested = succeeds(
        cargo(&project, &target).arg("test"),
        TEST_LIMIT,
        "cargo test (the new crate's unit test)",
    );
    assert!(
        tested
            .stdout
            .contains("greets_the_input_or_the_world ... ok"),
        "{tested:?}"
    );
    builds_and_runs(
        cargo(&project, &target).args(["build", "--release", "--target", "wasm32-wasip2"]),
        "cargo build --release --target wasm32-wasip2 (the new crate)",
        &target.join("wasm32-wasip2/release/hello_rs.wasm"),
    );
}

/// The new Python project: its unit test passes under CPython, its
/// `build.sh` builds the component with componentize-py from its own copies
/// of the SDK and the WIT, and `ahv run` runs it in ring 3.
#[test]
fn python_project_builds_tests_and_runs_as_made() {
    let (bin, _) = crate::python::componentize_py();
    assert_eq!(
        ahv_cli::new_cmd::COMPONENTIZE_PY_VERSION,
        crate::python::COMPONENTIZE_PY_VERSION
    );
    let (dir, project) = made(&["--lang", "python", "hello-py"]);
    let tested = succeeds(
        Command::new("python3")
            .current_dir(&project)
            .args(["-B", "-m", "unittest", "discover", "-s", "tests"]),
        TEST_LIMIT,
        "python3 -m unittest (the new project's unit test)",
    );
    assert!(tested.stderr.contains("Ran 1 test"), "{tested:?}");
    // build.sh runs `componentize-py` from PATH, as a user's would.
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::os::unix::fs::symlink(&bin, tools.join("componentize-py")).unwrap();
    let path = std::env::join_paths(
        std::iter::once(tools).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    builds_and_runs(
        Command::new("./build.sh")
            .current_dir(&project)
            .env("PATH", path)
            .env_remove("VIRTUAL_ENV"),
        "build.sh (the new Python project)",
        &project.join("hello-py.wasm"),
    );
}

/// The new JavaScript project: `npm test` passes its unit test, `npm run
/// build` builds the component with the componentize-js its lock file pins
/// (installed by the JavaScript tests from the same lock), and `ahv run`
/// runs it in ring 3.
#[test]
fn js_project_builds_tests_and_runs_as_made() {
    let modules = crate::js::node_modules();
    let (_dir, project) = made(&["--lang", "js", "hello-js"]);
    // The project's lock file is the repository's but for its name, so the
    // installed packages are the ones `npm ci` would install here.
    let lock = |p: &Path| {
        let mut v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["packages"][""]["name"] = Value::Null;
        v["packages"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lock(&project.join("package-lock.json")),
        lock(&crate::python::repo().join("example-agents/js/package-lock.json"))
    );
    std::os::unix::fs::symlink(&modules, project.join("node_modules")).unwrap();
    let tested = succeeds(
        Command::new("npm")
            .current_dir(&project)
            .args(["test", "--silent"]),
        TEST_LIMIT,
        "npm test (the new project's unit test)",
    );
    assert!(tested.stdout.contains("# pass 1"), "{tested:?}");
    builds_and_runs(
        Command::new("npm")
            .current_dir(&project)
            .args(["run", "build"]),
        "npm run build (the new JavaScript project)",
        &project.join("hello-js.wasm"),
    );
}

/// Each refusal exits 2 (a missing Rust SDK: 4), says why, and leaves the
/// directory as it was.
#[test]
fn refusals_exit_with_their_code_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("taken")).unwrap();
    std::fs::write(d.join("taken/keep.txt"), "mine").unwrap();
    std::fs::write(d.join("a-file"), "").unwrap();
    let usage = i32::from(Exit::Usage.code());
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["new", "--lang", "rust", "Bad_Name"],
            usage,
            "bad project name \"Bad_Name\"",
        ),
        (
            &["new", "--lang", "rust", "../escape"],
            usage,
            "bad project name",
        ),
        (
            &["new", "--lang", "cobol", "fine"],
            usage,
            "invalid value 'cobol'",
        ),
        (&["new", "fine"], usage, "--lang"),
        (
            &["new", "--lang", "js", "--world", "galaxy", "fine"],
            usage,
            "invalid value 'galaxy'",
        ),
        (
            &["new", "--lang", "python", "taken"],
            usage,
            "exists and is not empty",
        ),
        (
            &["new", "--lang", "rust", "a-file"],
            usage,
            "exists and is not a directory",
        ),
        (
            &["new", "--lang", "js", "--sdk", ".", "fine"],
            usage,
            "--sdk is for Rust agents",
        ),
        (
            &["new", "--lang", "rust", "--sdk", "no-such-sdk", "fine"],
            i32::from(Exit::Setup.code()),
            "--sdk PATH",
        ),
    ];
    let before = crate::python::files_of(d);
    for (args, code, says) in cases {
        let out = ahv(d, args);
        assert_eq!(out.code, *code, "ahv {}: {out:?}", args.join(" "));
        assert!(out.stderr.contains(says), "ahv {}: {out:?}", args.join(" "));
        assert!(out.stdout.is_empty(), "ahv {}: {out:?}", args.join(" "));
        let mut entries: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".xdg-cache")
            .collect();
        entries.sort();
        assert_eq!(entries, ["a-file", "taken"], "ahv {}", args.join(" "));
    }
    let after: Vec<_> = crate::python::files_of(d)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".xdg-cache"))
        .collect();
    assert_eq!(before, after);

    // An empty directory is taken; once the project is in it, it is not.
    std::fs::create_dir(d.join("empty")).unwrap();
    let out = ahv(d, &["new", "--lang", "js", "empty"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(d.join("empty/agent.js").is_file());
    let again = ahv(d, &["new", "--lang", "js", "empty"]);
    assert_eq!(again.code, usage, "{again:?}");
}
