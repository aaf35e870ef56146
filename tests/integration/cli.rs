//! The `ahv` command line as users meet it: the real binary, run as a child
//! process with real pipes, files and exit codes.
//!
//! The binary is `ahv-under-test`, built by this package from the CLI's own
//! `main.rs` (see `tests/Cargo.toml`), so Cargo rebuilds it whenever the CLI
//! changes and these tests never run a stale `ahv`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ahv_cli::exit::Exit;

/// The `ahv` binary under test.
const AHV: &str = env!("CARGO_BIN_EXE_ahv-under-test");

/// Longest any one `ahv` run may take here (the demo takes a few seconds in a
/// debug build; a cold component cache adds compile time).
const LIMIT: Duration = Duration::from_secs(120);

/// What one run of `ahv` produced.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The exit code; a run killed by a signal fails the test.
    fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("ahv was killed by a signal: {self:?}"))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A command for `ahv` with a private XDG cache (the default component cache
/// goes there) and backtraces on, so that a panic would show.
fn ahv(args: &[&str]) -> Command {
    let mut c = Command::new(AHV);
    c.args(args)
        .env("XDG_CACHE_HOME", xdg_cache())
        .env("RUST_BACKTRACE", "1")
        .env_remove("AHV_LOG");
    c
}

fn xdg_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ahv-cli-xdg-cache")
}

/// Waits for `child` at most `limit`, killing it and failing the test past that.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{what}` did not finish within {limit:?}");
            }
            Err(e) => panic!("waiting for `{what}`: {e}"),
        }
    }
}

/// Reads a child's pipe on its own thread, so that a full pipe never blocks the child.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion (bounded by [`LIMIT`]), feeding it `stdin`.
fn run(mut cmd: Command, stdin: &[u8]) -> Run {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut input = child.stdin.take().expect("stdin piped");
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // The child may exit without reading all of it.
        let _ = input.write_all(&stdin);
    });
    let out = drain(child.stdout.take().expect("stdout piped"));
    let err = drain(child.stderr.take().expect("stderr piped"));
    let status = wait_within(&mut child, LIMIT, &what);
    let _ = feeder.join();
    Run {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn ahv_run(args: &[&str]) -> Run {
    run(ahv(args), b"")
}

fn code(e: Exit) -> i32 {
    i32::from(e.code())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A state directory with one sealed, signed session, as a hypervisor leaves it.
fn audited_state() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let hv = ahv_hypervisor::Hypervisor::builder()
        .state_dir(tmp.path())
        .max_instances(1)
        .build()
        .unwrap();
    let s = hv
        .create_session(
            ahv_governance::session::SessionConfig::default(),
            ahv_core::AgentId::new("did:test:operator").unwrap(),
        )
        .unwrap();
    hv.terminate_session(&s).unwrap();
    hv.shutdown().unwrap();
    tmp
}

#[test]
fn usage_errors_exit_2_whichever_command_finds_them() {
    let missing_proof = tempfile::tempdir().unwrap();
    let proof = missing_proof.path().join("p.json");
    let cases: &[&[&str]] = &[
        &["run", "a.wasm", "--ring", "3", "--fuel", "0"],
        &["run", "a.wasm", "--ring", "3", "--deadline-ms", "0"],
        &["run", "a.wasm", "--ring", "3", "--agent-id", "not an id!"],
        &["run", "a.wasm", "--ring", "9"],
        &["run", "a.wasm"],
        &["audit", "verify", "--proof", path_str(&proof)],
        &["audit", "verify"],
        &["audit", "verify", "dir", "--public-key", "12ab"],
        &["audit", "show", "dir", "--session", "../../etc"],
        &["frobnicate"],
    ];
    for args in cases {
        let r = ahv_run(args);
        assert_eq!(r.code(), code(Exit::Usage), "ahv {}: {r:?}", args.join(" "));
        assert!(r.stderr.contains("error:"), "ahv {}: {r:?}", args.join(" "));
        assert!(r.stdout.is_empty(), "ahv {}: {r:?}", args.join(" "));
    }
    // A proof checked against a key: the key is valid, the file is missing.
    let key = "11".repeat(32);
    let r = ahv_run(&[
        "audit",
        "verify",
        "--proof",
        path_str(&proof),
        "--public-key",
        &key,
    ]);
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
}

#[test]
fn a_component_that_cannot_be_read_is_refused_alike_by_run_and_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.wasm");
    let not_wasm = tmp.path().join("text.wasm");
    std::fs::write(&not_wasm, "not a component").unwrap();
    for file in [&missing, &not_wasm] {
        let f = path_str(file);
        let run = ahv_run(&["run", f, "--ring", "3", "--no-cache"]);
        let inspect = ahv_run(&["inspect", f, "--no-cache"]);
        for r in [&run, &inspect] {
            assert_eq!(r.code(), code(Exit::Refused), "{f}: {r:?}");
            assert!(r.stderr.contains("refused:"), "{f}: {r:?}");
            assert!(r.stderr.contains(f), "names the file: {r:?}");
        }
    }
}

#[test]
fn every_command_s_help_shows_the_exit_code_table() {
    let table = ahv_cli::exit::help();
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["inspect", "--help"],
        &["demo", "--help"],
        &["agents", "--help"],
        &["audit", "verify", "--help"],
        &["audit", "show", "--help"],
        &["audit", "prove", "--help"],
        &["audit", "prune", "--help"],
    ] {
        let r = ahv_run(args);
        assert_eq!(r.code(), 0, "{r:?}");
        assert!(
            r.stdout.contains(table.trim_end()),
            "ahv {}: {r:?}",
            args.join(" ")
        );
    }
}

/// `ahv ARGS` with standard output a pipe nobody reads any more.
fn with_closed_stdout(args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut cmd = ahv(args);
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("ahv starts");
    // Our copy of the write end is gone with `cmd`; the child holds the only one.
    drop(cmd);
    let err = drain(child.stderr.take().expect("stderr piped"));
    let status = wait_within(&mut child, LIMIT, &what);
    Run {
        status,
        stdout: String::new(),
        stderr: err.join().expect("stderr reader"),
    }
}

#[test]
fn a_reader_that_stops_early_ends_ahv_quietly() {
    let state = audited_state();
    for args in [
        &["agents"][..],
        &["audit", "verify", path_str(state.path()), "--json"],
        &["audit", "verify", path_str(state.path())],
        &["--help"],
    ] {
        let r = with_closed_stdout(args);
        let expected = if args == ["--help"] {
            // clap prints help itself and ignores the failed write.
            0
        } else {
            code(Exit::OutputClosed)
        };
        assert_eq!(
            r.status.code(),
            Some(expected),
            "ahv {}: {r:?}",
            args.join(" ")
        );
        assert!(
            !r.stderr.contains("panicked"),
            "ahv {}: {r:?}",
            args.join(" ")
        );
        assert!(r.stderr.is_empty(), "nothing to say: {r:?}");
    }

    // `ahv demo | head -1`: the reader takes one line, then goes away.
    let demo_dir = tempfile::tempdir().unwrap();
    let mut cmd = ahv(&["demo", "--state-dir", path_str(demo_dir.path())]);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ahv demo starts");
    // Read the first line on a thread, so that a demo that never prints
    // fails this test by name instead of hanging it.
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let mut out = BufReader::new(stdout);
        let read = out.read_line(&mut first).map(|_| first);
        drop(out); // the reader goes away: the pipe closes
        let _ = tx.send(read);
    });
    let first = match rx.recv_timeout(LIMIT) {
        Ok(read) => read.expect("the demo's first line"),
        Err(_) => {
            let _ = child.kill();
            panic!("timed out after {LIMIT:?} waiting for the demo's first line");
        }
    };
    let err = drain(child.stderr.take().expect("stderr piped"));
    let status = wait_within(&mut child, LIMIT, "ahv demo | head -1");
    let stderr = err.join().expect("stderr reader");
    assert!(first.contains("Agent Hypervisor demo"), "{first}");
    assert_eq!(status.code(), Some(code(Exit::OutputClosed)), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A hand-made component: `imports` (component-text declarations) and `exports`
/// over a core module whose `run` answers "ok" and whose `run-string` returns "ok".
fn component(imports: &str, exports: &str) -> Vec<u8> {
    let text = format!(
        r#"(component
  {imports}
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    (data (i32.const 16) "ok")
    (func (export "run") (param i32 i32) (result i32)
      (i32.store8 (i32.const 32) (i32.const 0))
      (i32.store (i32.const 36) (i32.const 16))
      (i32.store (i32.const 40) (i32.const 2))
      (i32.const 32))
    (func (export "run-string") (result i32)
      (i32.store (i32.const 48) (i32.const 16))
      (i32.store (i32.const 52) (i32.const 2))
      (i32.const 48)))
  (core instance $i (instantiate $m))
  {exports})"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const RUN: &str = r#"(func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))"#;

#[test]
fn inspect_refuses_what_run_refuses_with_the_same_code() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "no-run",
            "",
            r#"(func (export "go") (param "input" string) (result (result string (error string)))
            (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))"#,
            "does not export `run:",
        ),
        (
            "wrong-run-type",
            "",
            r#"(func (export "run") (result string)
            (canon lift (core func $i "run-string") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))"#,
            "`run` takes",
        ),
        (
            "function-the-contract-lacks",
            r#"(import "agent-hypervisor:agent/vfs-write@0.1.0" (instance (export "format-disk" (func))))"#,
            RUN,
            "vfs-write has no function `format-disk`",
        ),
        // In ring 3 vfs-write is a breach stub, which takes any type: only
        // admission against the contract refuses this one.
        (
            "contract-function-of-another-type",
            r#"(import "agent-hypervisor:agent/vfs-write@0.1.0" (instance (export "write" (func (param "path" u32)))))"#,
            RUN,
            "do not have the contract's types",
        ),
        (
            "import-outside-the-contract",
            r#"(import "wasi:http/incoming-handler@0.2.6" (instance))"#,
            RUN,
            "wasi:http/incoming-handler@0.2.6",
        ),
        (
            "unknown-package",
            r#"(import "evil:pkg/thing@1.0.0" (instance))"#,
            RUN,
            "evil:pkg/thing@1.0.0: not part of the agent contract",
        ),
    ];
    for (name, imports, exports, why) in cases {
        let file = tmp.path().join(format!("{name}.wasm"));
        std::fs::write(&file, component(imports, exports)).unwrap();
        let f = path_str(&file);
        let inspect = ahv_run(&["inspect", f, "--no-cache"]);
        let run = ahv_run(&["run", f, "--ring", "3", "--no-cache"]);
        for (cmd, r) in [("inspect", &inspect), ("run", &run)] {
            assert_eq!(r.code(), code(Exit::Refused), "{cmd} {name}: {r:?}");
            assert!(r.stderr.contains("refused:"), "{cmd} {name}: {r:?}");
            assert!(r.stderr.contains(why), "{cmd} {name}: says {why:?}: {r:?}");
            assert!(!r.stdout.contains("lowest ring"), "{cmd} {name}: {r:?}");
        }
        // Both say the same thing.
        assert_eq!(inspect.stderr, run.stderr, "{name}");
        assert!(inspect.stdout.contains("admission: refused"), "{inspect:?}");
    }

    // The same module with a proper `run` is admitted by both, and runs.
    let file = tmp.path().join("good.wasm");
    std::fs::write(&file, component("", RUN)).unwrap();
    let f = path_str(&file);
    let inspect = ahv_run(&["inspect", f, "--no-cache"]);
    assert_eq!(inspect.code(), 0, "{inspect:?}");
    assert!(
        inspect.stdout.contains("lowest ring: 3 (sandbox)"),
        "{inspect:?}"
    );
    let run = ahv_run(&["run", f, "--ring", "3", "--no-cache"]);
    assert_eq!(run.code(), 0, "{run:?}");
    assert_eq!(run.stdout, "ok\n", "{run:?}");

    // Importing the network (as componentize-py components always do) is
    // admitted by both; `inspect` says every use of it is denied.
    let file = tmp.path().join("socket-import.wasm");
    std::fs::write(
        &file,
        component(r#"(import "wasi:sockets/tcp@0.2.6" (instance))"#, RUN),
    )
    .unwrap();
    let f = path_str(&file);
    let inspect = ahv_run(&["inspect", f, "--no-cache"]);
    assert_eq!(inspect.code(), 0, "{inspect:?}");
    assert!(
        inspect.stdout.contains("every use fails with an error"),
        "{inspect:?}"
    );
    let run = ahv_run(&["run", f, "--ring", "3", "--no-cache"]);
    assert_eq!(run.code(), 0, "{run:?}");
    assert_eq!(run.stdout, "ok\n", "{run:?}");
}

#[test]
fn inspect_reports_whether_a_component_is_a_saga_participant() {
    for (path, verdict) in [
        (ahv_agents::DRAFTER_PATH, "saga participant: yes"),
        (ahv_agents::SCRIPTED_PATH, "saga participant: yes"),
        (ahv_agents::HELLO_PATH, "saga participant: no"),
    ] {
        let inspect = ahv_run(&["inspect", path]);
        assert_eq!(inspect.code(), 0, "{inspect:?}");
        assert!(inspect.stdout.contains(verdict), "{path}: {inspect:?}");
    }
}

/// Counts the directories under `root` (not `root` itself).
fn count_dirs(root: &Path) -> usize {
    let mut n = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                n += 1;
                pending.push(e.path());
            }
        }
    }
    n
}

#[test]
fn a_directory_and_file_storm_under_ahv_run_stops_at_the_quotas() {
    let scripted = ahv_agents::SCRIPTED_PATH;
    let dir = tempfile::tempdir().unwrap();
    let d = path_str(dir.path());
    let mut script: Vec<String> = (0..300).map(|n| format!("mkdir storm{n}")).collect();
    script.extend((0..300).map(|n| format!("write nested{n}/deeper/f.txt x")));
    let r = ahv_run(&[
        "run",
        scripted,
        "--ring",
        "2",
        "--dir",
        d,
        "--max-dirs",
        "5",
        "--input",
        &script.join("\n"),
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    let ok = r.stdout.lines().filter(|l| l.ends_with("-> ok")).count();
    let refused = r
        .stdout
        .lines()
        .filter(|l| l.contains("-> err quota:") && l.contains("--max-dirs"))
        .count();
    assert_eq!((ok, refused), (5, 595), "{r:?}");
    assert_eq!(count_dirs(dir.path()), 5);

    // Files, then bytes, in a fresh directory.
    let dir = tempfile::tempdir().unwrap();
    let d = path_str(dir.path());
    let script: Vec<String> = (0..50).map(|n| format!("write f{n} 0123456789")).collect();
    let r = ahv_run(&[
        "run",
        scripted,
        "--ring",
        "2",
        "--dir",
        d,
        "--max-files",
        "3",
        "--input",
        &script.join("\n"),
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(r.stdout.matches("-> ok").count(), 3, "{r:?}");
    assert_eq!(r.stdout.matches("--max-files").count(), 47, "{r:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    let r = ahv_run(&[
        "run",
        scripted,
        "--ring",
        "2",
        "--dir",
        d,
        "--max-bytes",
        "35",
        "--input",
        "write g 0123456789\nappend f0 0123456789\nwrite f1 short",
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].contains("-> err quota:") && lines[0].contains("--max-bytes"),
        "{r:?}"
    );
    assert!(lines[1].contains("-> err quota:"), "{r:?}");
    assert!(lines[2].ends_with("-> ok"), "shrinking is allowed: {r:?}");

    // Without flags the session quotas hold, and what the directory holds counts.
    let full = tempfile::tempdir().unwrap();
    for n in 0..=ahv_governance::session_vfs::FileQuotas::default().max_dirs {
        std::fs::create_dir(full.path().join(format!("d{n}"))).unwrap();
    }
    let r = ahv_run(&[
        "run",
        scripted,
        "--ring",
        "2",
        "--dir",
        path_str(full.path()),
        "--input",
        "mkdir one-more",
    ]);
    assert_eq!(r.code(), code(Exit::Setup), "{r:?}");
    assert!(r.stderr.contains("more than 10000 directories"), "{r:?}");
}

fn json(r: &Run) -> serde_json::Value {
    assert_eq!(r.stdout.lines().count(), 1, "one line of JSON: {r:?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

#[test]
fn run_json_is_one_object_and_logs_never_mix_into_the_answer() {
    let hello = ahv_agents::HELLO_PATH;
    // For people: the answer alone on stdout, the agent's log lines on stderr.
    let r = ahv_run(&["run", hello, "--ring", "3", "--input", "Ada"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(
        r.stdout, "Hello, Ada! (agent did:ahv:cli, ring 3)\n",
        "{r:?}"
    );
    assert!(
        r.stderr.contains("[stdout] hello says hi on stdout"),
        "{r:?}"
    );

    let r = ahv_run(&["run", hello, "--ring", "3", "--input", "Ada", "--json"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "ok");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["answer"], "Hello, Ada! (agent did:ahv:cli, ring 3)");
    assert!(v["trap"].is_null() && v["error"].is_null() && v["failure"].is_null());
    let logs = v["logs"].as_array().unwrap();
    assert!(
        logs.iter()
            .any(|l| l["source"] == "stdout" && l["message"] == "hello says hi on stdout"),
        "{v}"
    );
    assert!(
        logs.iter()
            .any(|l| l["level"] == "info" && l["source"] == "log"),
        "{v}"
    );
    assert!(v["fuel_used"].as_u64().unwrap() > 0);
    assert_eq!(v["trace"].as_str().unwrap().len(), 32);
    for t in ["load", "instantiate", "run", "total"] {
        assert!(v["timings_ms"][t].as_f64().unwrap() >= 0.0, "{t}: {v}");
    }

    // A breach: the trap, and the agent's log line before it.
    let r = ahv_run(&["run", ahv_agents::ESCALATOR_PATH, "--ring", "3", "--json"]);
    assert_eq!(r.code(), code(Exit::RingBreach), "{r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "ring-breach");
    assert_eq!(v["trap"]["kind"], "ring-breach");
    assert!(
        v["trap"]["message"]
            .as_str()
            .unwrap()
            .contains("vfs-write/write"),
        "{v}"
    );
    assert!(v["answer"].is_null());
    assert_eq!(v["logs"][0]["message"], "escalator trying to write", "{v}");

    // Refusals and late usage errors are JSON too.
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.wasm");
    let r = ahv_run(&["run", path_str(&missing), "--ring", "3", "--json"]);
    assert_eq!(r.code(), code(Exit::Refused), "{r:?}");
    let v = json(&r);
    assert_eq!(v["outcome"], "refused");
    assert!(v["error"].as_str().unwrap().contains("nope.wasm"), "{v}");
    let r = ahv_run(&[
        "run",
        hello,
        "--ring",
        "3",
        "--json",
        "--input-file",
        path_str(&missing),
    ]);
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
    assert_eq!(json(&r)["outcome"], "usage");
}

#[test]
fn input_comes_from_a_file_or_stdin_past_the_argument_limit() {
    let hello = ahv_agents::HELLO_PATH;
    let tmp = tempfile::tempdir().unwrap();
    // Larger than one command-line argument may be (128 KiB on Linux).
    let name = "A".repeat(300 << 10);
    let file = tmp.path().join("input.txt");
    std::fs::write(&file, &name).unwrap();
    let expected = format!("Hello, {name}! (agent did:ahv:cli, ring 3)\n");
    let r = ahv_run(&["run", hello, "--ring", "3", "--input-file", path_str(&file)]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert!(r.stdout == expected, "the whole input arrived");
    let r = run(
        ahv(&["run", hello, "--ring", "3", "--input-file", "-"]),
        name.as_bytes(),
    );
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert!(r.stdout == expected, "the whole input arrived from stdin");

    // Too large, not text, both sources, missing: bad command lines.
    let big = tmp.path().join("big.txt");
    std::fs::write(&big, vec![b'a'; ahv_runtime::MAX_INPUT_BYTES + 1]).unwrap();
    let binary = tmp.path().join("binary.txt");
    std::fs::write(&binary, [b'o', b'k', 0xff, 0xfe]).unwrap();
    for (args, why) in [
        (
            vec!["--input-file", path_str(&big)],
            "larger than the 1048576-byte limit",
        ),
        (
            vec!["--input-file", path_str(&binary)],
            "not UTF-8 text (invalid at byte 2)",
        ),
        (
            vec!["--input-file", path_str(&file), "--input", "x"],
            "cannot be used with",
        ),
        (vec!["--input-file", "/nonexistent/input"], "cannot read"),
    ] {
        let mut all = vec!["run", hello, "--ring", "3"];
        all.extend(args);
        let r = ahv_run(&all);
        assert_eq!(r.code(), code(Exit::Usage), "{all:?}: {r:?}");
        assert!(r.stderr.contains(why), "{all:?}: {r:?}");
    }
}

#[cfg(unix)]
#[test]
fn the_component_cache_is_created_private_and_an_open_one_is_repaired() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("new/cache");
    let r = ahv_run(&[
        "run",
        ahv_agents::HELLO_PATH,
        "--ring",
        "3",
        "--cache-dir",
        path_str(&fresh),
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(mode(&fresh), 0o700);
    assert!(
        std::fs::read_dir(&fresh).unwrap().count() > 0,
        "the compiled component is cached"
    );

    // Writable by everyone: anything in it may have been planted.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::write(open.join("planted.cwasm"), b"not ours").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = ahv_run(&[
        "inspect",
        ahv_agents::HELLO_PATH,
        "--cache-dir",
        path_str(&open),
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(mode(&open), 0o700);
    assert!(!open.join("planted.cwasm").exists());
    assert!(r.stderr.contains("made private"), "{r:?}");
}

#[test]
fn the_component_cache_is_kept_within_its_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    // Private already, whatever the umask: not emptied as an open one is.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // An artifact compiled long ago, for a component no longer run.
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    let old = format!("{}-{}", "0".repeat(64), "0".repeat(16));
    for name in [format!("{old}.cwasm"), format!("{old}.sha256")] {
        let path = cache.join(name);
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
    }
    let r = ahv_run(&[
        "run",
        ahv_agents::HELLO_PATH,
        "--ring",
        "3",
        "--cache-dir",
        path_str(&cache),
        "--cache-max-bytes",
        "1",
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(!r.stderr.contains("made private"), "{r:?}");
    let left: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // The agent's own artifact stays, alone over the budget; the old one went.
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|n| !n.starts_with(&old)), "{left:?}");
    assert!(left.iter().any(|n| n.ends_with(".cwasm")), "{left:?}");

    for bad in [
        &["--cache-max-bytes", "0"][..],
        &["--cache-max-bytes", "-5"],
        &["--cache-max-bytes", "1", "--no-cache"],
    ] {
        let mut args = vec!["inspect", ahv_agents::HELLO_PATH];
        args.extend_from_slice(bad);
        let r = ahv_run(&args);
        assert_eq!(r.code(), code(Exit::Usage), "{bad:?}: {r:?}");
    }
}

/// A valid component whose compilation takes a while (thousands of functions).
fn slow_to_compile() -> Vec<u8> {
    let funcs: String = (0..6000)
        .map(|i| {
            format!(
                "(func (param i32) (result i32) (local i32) local.get 0 i32.const {i} i32.add \
                 local.tee 1 local.get 1 i32.mul local.get 0 i32.xor local.get 1 i32.rotl)\n"
            )
        })
        .collect();
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    {funcs}
    (data (i32.const 16) "ok")
    (func (export "run") (param i32 i32) (result i32)
      (i32.store8 (i32.const 32) (i32.const 0))
      (i32.store (i32.const 36) (i32.const 16))
      (i32.store (i32.const 40) (i32.const 2))
      (i32.const 32)))
  (core instance $i (instantiate $m))
  {RUN})"#
    );
    wat::parse_str(&text).unwrap()
}

/// `script` (util-linux) runs a command on a pseudo-terminal, as a user's shell would.
#[test]
fn a_slow_first_compile_shows_progress_on_a_terminal_only() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("slow.wasm");
    std::fs::write(&file, slow_to_compile()).unwrap();
    let f = path_str(&file);

    // Not a terminal: not a byte of progress.
    let r = ahv_run(&["run", f, "--ring", "3", "--no-cache"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(r.stdout, "ok\n");
    assert!(r.stderr.is_empty(), "{r:?}");

    let cache = tmp.path().join("cache");
    let line = format!("{AHV} run {f} --ring 3 --cache-dir {}", path_str(&cache));
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("XDG_CACHE_HOME", xdg_cache())
        .env("TERM", "xterm");
    let r = run(script, b"");
    assert_eq!(
        r.status.code(),
        Some(0),
        "needs `script` from util-linux: {r:?}"
    );
    assert!(r.stdout.contains("compiling"), "{r:?}");
    assert!(
        r.stdout.contains("the next run takes it from the cache"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("\x1b[2K"),
        "the spinner clears its line: {r:?}"
    );
    assert!(r.stdout.trim_end().ends_with("ok"), "{r:?}");

    // From the cache: quick, so no spinner.
    let r = run(
        {
            let mut c = Command::new("script");
            c.args(["-q", "-e", "-c", &line, "/dev/null"])
                .env("TERM", "xterm");
            c
        },
        b"",
    );
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert!(!r.stdout.contains("compiling"), "{r:?}");
}

/// A line the demo prints for a ring breach it recorded.
fn is_breach_line(line: &str) -> bool {
    line.contains("· ring.breach_detected") || line.contains("! hypervisor recorded: ring breach")
}

/// A line the demo prints for one of an agent's own log lines.
fn is_log_line(line: &str) -> bool {
    let t = line.trim_start();
    [
        "[trace] ",
        "[debug] ",
        "[info] ",
        "[warn] ",
        "[error] ",
        "[stdout] ",
        "[stderr] ",
    ]
    .iter()
    .any(|p| t.starts_with(p))
}

/// A line that starts the narration of another agent call or step.
fn starts_step(line: &str) -> bool {
    line.starts_with("   ▶ ")
        || line.starts_with("Part ")
        || line
            .split_once(". ")
            .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
}

#[test]
fn the_demo_counts_every_breach_it_shows_each_after_the_agent_s_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    let r = ahv_run(&["demo", "--state-dir", path_str(dir.path())]);
    assert_eq!(r.code(), 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();

    let shown = lines.iter().filter(|l| is_breach_line(l)).count();
    let done = lines
        .iter()
        .find_map(|l| l.strip_prefix("Done: "))
        .unwrap_or_else(|| panic!("no summary: {r:?}"));
    assert!(
        done.starts_with(&format!(
            "{shown} ring breach(es) recorded (1 in the shared session, 2 in the tour)"
        )),
        "{shown} breach lines shown; the summary says: {done}"
    );
    assert_eq!(
        shown, 3,
        "the intruder, the deployer at ring 2, the escalator at ring 3"
    );

    // Within each step, the agent's log lines come before the breach they led to.
    let mut step_start = 0;
    for (i, line) in lines.iter().enumerate() {
        if starts_step(line) {
            step_start = i;
        }
        if !is_breach_line(line) {
            continue;
        }
        let step_end = lines[i..]
            .iter()
            .position(|l| starts_step(l))
            .map_or(lines.len(), |p| i + p);
        let before = lines[step_start..i]
            .iter()
            .filter(|l| is_log_line(l))
            .count();
        let after = lines[i..step_end].iter().filter(|l| is_log_line(l)).count();
        assert!(
            before > 0 && after == 0,
            "breach at line {i} ({line}): {before} log line(s) before it, {after} after, in\n{}",
            lines[step_start..step_end].join("\n")
        );
    }

    // The command it ends with verifies the session's audit log.
    let verify = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("ahv audit verify "))
        .unwrap_or_else(|| panic!("no verify command: {r:?}"));
    let args: Vec<&str> = std::iter::once("audit")
        .chain(std::iter::once("verify"))
        .chain(verify.split(' '))
        .collect();
    let v = ahv_run(&args);
    assert_eq!(v.code(), 0, "{v:?}");
}

#[test]
fn policy_check_prints_the_table_and_refuses_a_bad_file_with_exit_2() {
    let example = crate::policy::example_path();
    let r = ahv_run(&["policy", "check", path_str(&example)]);
    assert_eq!(r.code(), 0, "{r:?}");
    let row = |name: &str| {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
            .unwrap_or_else(|| panic!("no row {name}: {r:?}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("ring"), "3 sandbox 2 standard 1 privileged 0 root");
    assert_eq!(row("locks"), "- - yes yes", "the example narrows ring 2");
    assert_eq!(row("log_lines"), "200 4096 4096 4096");
    assert!(
        r.stdout
            .contains("did:example:note-taker: actions note.append; effects none")
    );

    let dir = tempfile::tempdir().unwrap();
    for (text, names) in [
        (
            "[rings.sandbox]\ncapabilities = [\"vfs-write\"]\n",
            &["rings.sandbox.capabilities", "vfs-write", "widening"][..],
        ),
        (
            "[rings.standard]\nlog_lines = 3\nlog_linez = 4\n",
            &["log_linez", "line 3"][..],
        ),
        (
            "[elevation]\nmax_ttl_secs = 100000\n",
            &["max_ttl_secs", "100000"][..],
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let r = ahv_run(&["policy", "check", path_str(&file)]);
        assert_eq!(r.code(), code(Exit::Usage), "{text}: {r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
        for name in names {
            assert!(r.stderr.contains(name), "{text}: no {name:?} in {r:?}");
        }
    }
    let r = ahv_run(&["policy", "check", "/nonexistent/policy.toml"]);
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
}

#[test]
fn run_with_a_policy_enforces_its_ring_table_log_budget_and_grants() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        r#"
[rings.standard]
capabilities = ["context", "log", "vfs-read", "state-read", "elevation", "vfs-write", "state-write", "actions"]
log_lines = 3
[agents."did:ahv:cli"]
actions = []
"#,
    )
    .unwrap();
    let policy = path_str(&file);
    let scripted = ahv_agents::SCRIPTED_PATH;
    let lock = [
        "run",
        scripted,
        "--ring",
        "2",
        "--input",
        "lock key:k write 0",
    ];
    // Without the policy the lock call is inside ring 2 (it fails for want
    // of a session, as a value); with it, it is a breach.
    let r = ahv_run(&lock);
    assert_eq!(r.code(), 0, "{r:?}");
    let r = ahv_run(&[&lock[..], &["--policy", policy]].concat());
    assert_eq!(r.code(), code(Exit::RingBreach), "{r:?}");

    let r = ahv_run(&[
        "run",
        ahv_agents::ABUSER_PATH,
        "--ring",
        "2",
        "--input",
        "log-lines:10",
        "--json",
        "--policy",
        policy,
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    let j = json(&r);
    assert_eq!(j["dropped_log_lines"], 7, "{r:?}");
    assert_eq!(j["logs"].as_array().unwrap().len(), 4, "{r:?}");

    let action = [
        "run",
        ahv_agents::ESCALATOR_PATH,
        "--ring",
        "2",
        "--input",
        "action:hi",
    ];
    let r = ahv_run(&action);
    assert_eq!(r.code(), 0, "every built-in action without a policy: {r:?}");
    let r = ahv_run(&[&action[..], &["--policy", policy]].concat());
    assert_eq!(r.code(), code(Exit::Failed), "{r:?}");
    assert!(r.stderr.contains("UnknownAction"), "{r:?}");
    let r = ahv_run(
        &[
            &action[..],
            &["--policy", policy, "--agent-id", "did:ahv:other"],
        ]
        .concat(),
    );
    assert_eq!(r.code(), 0, "an agent the policy does not list: {r:?}");
}

/// `example-agents/sagas/NAME`.
fn saga_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../example-agents/sagas")
        .join(name)
}

#[test]
fn saga_run_exits_0_when_completed_and_1_when_compensated_and_show_reads_it_back() {
    let state = tempfile::tempdir().unwrap();
    let dir = path_str(state.path());
    let ok = saga_file("publish.yaml");
    let r = ahv_run(&["saga", "run", path_str(&ok), "--state-dir", dir]);
    assert_eq!(r.code(), code(Exit::Ok), "{r:?}");
    assert!(r.stdout.contains("completed"), "{r:?}");
    let fails = saga_file("publish-fails.yaml");
    let r = ahv_run(&[
        "saga",
        "run",
        path_str(&fails),
        "--state-dir",
        dir,
        "--json",
    ]);
    assert_eq!(r.code(), code(Exit::Failed), "{r:?}");
    let v = json(&r);
    assert_eq!(v["state"], "failed");
    assert_eq!(v["exit_code"], 1);
    let states: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["compensated", "compensated", "failed"]);
    let saga = v["saga"].as_str().unwrap();
    let r = ahv_run(&["saga", "show", saga, "--state-dir", dir, "--json"]);
    assert_eq!(r.code(), code(Exit::Ok), "{r:?}");
    let shown = json(&r);
    assert_eq!(shown["state"], "failed");
    assert!(shown["records"].as_array().unwrap().len() > 8, "{r:?}");
    let r = ahv_run(&["saga", "list", "--state-dir", dir]);
    assert_eq!(r.code(), code(Exit::Ok), "{r:?}");
    assert_eq!(r.stdout.lines().count(), 2, "{r:?}");
    // The failed publish is to blame, most of all.
    let r = ahv_run(&["saga", "blame", saga, "--state-dir", dir, "--json"]);
    assert_eq!(r.code(), code(Exit::Ok), "{r:?}");
    let blame = json(&r);
    assert_eq!(blame["direct_cause"], "did:ex:publisher", "{r:?}");
    let shares: Vec<(String, f64)> = blame["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["agent"].as_str().unwrap().to_string(),
                s["share"].as_f64().unwrap(),
            )
        })
        .collect();
    let total: f64 = shares.iter().map(|(_, s)| s).sum();
    assert!((total - 1.0).abs() < 1e-9, "{r:?}");
    let top = shares.iter().max_by(|x, y| x.1.total_cmp(&y.1)).unwrap();
    assert_eq!(top.0, "did:ex:publisher", "{r:?}");
    // A definition error names the step and the field; it is a bad command line.
    let bad = state.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\nsteps:\n  - id: a\n    agent: did:x:a\n    action: w\n    retries: 11\n",
    )
    .unwrap();
    let r = ahv_run(&["saga", "run", path_str(&bad), "--state-dir", dir]);
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
    assert!(
        r.stderr.contains("\"a\"") && r.stderr.contains("retries"),
        "{r:?}"
    );
}

/// A saga whose second step sleeps on its first attempt: the window in
/// which the test kills the host. Compensations are harmless (`ring`), so
/// only the host's undo of recorded changes acts.
const CRASH_SAGA: &str = r#"
name: crash-and-resume
agents:
  - id: did:ex:w
    component: scripted
steps:
  - id: first
    agent: did:ex:w
    action: write
    undo: ring
    execute: |
      append shared/log.txt first;
      put counter one
  - id: second
    agent: did:ex:w
    action: slow
    undo: ring
    depends_on: [first]
    timeout_secs: 300
    execute: |
      append shared/log.txt second;
      @1 sleep 300000
  - id: third
    agent: did:ex:w
    action: read
    undo: ring
    depends_on: [second]
    execute: |
      read shared/log.txt
      get counter
"#;

/// Starts `ahv saga run FILE`, waits (bounded) until step `second` is
/// executing according to the saga journal, and SIGKILLs it; the saga id.
fn run_and_kill_in_second_step(file: &Path, dir: &str) -> String {
    let mut child = ahv(&["saga", "run", path_str(file), "--state-dir", dir])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line on standard error names the saga.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(LIMIT)
        .unwrap_or_else(|e| panic!("`ahv saga run` named no saga within {LIMIT:?}: {e}"));
    let saga = first
        .strip_prefix("saga ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = ahv_run(&["saga", "show", &saga, "--state-dir", dir, "--json"]);
        if r.code() == code(Exit::Ok) && json(&r)["steps"][1]["state"] == "executing" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "step `second` was not executing within {LIMIT:?}: {r:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "`ahv saga run` ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    let status = wait_within(&mut child, LIMIT, "ahv saga run (killed)");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    saga
}

/// How many `step_started` records step `step` has in the saga's journal.
fn starts(saga: &str, dir: &str, step: &str) -> usize {
    let r = ahv_run(&["saga", "show", saga, "--state-dir", dir, "--json"]);
    assert_eq!(r.code(), code(Exit::Ok), "{r:?}");
    json(&r)["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rec| rec["type"] == "step_started" && rec["step"] == step)
        .count()
}

#[test]
fn a_sigkilled_saga_run_resumes_in_a_new_process_and_no_committed_step_runs_twice() {
    let state = tempfile::tempdir().unwrap();
    let dir = path_str(state.path());
    let file = state.path().join("crash.yaml");
    std::fs::write(&file, CRASH_SAGA).unwrap();
    let saga = run_and_kill_in_second_step(&file, dir);

    let r = ahv_run(&["saga", "list", "--state-dir", dir]);
    assert!(r.stdout.contains(&format!("{saga}  running")), "{r:?}");
    let r = ahv_run(&["saga", "resume", &saga, "--state-dir", dir, "--json"]);
    assert_eq!(r.code(), code(Exit::Ok), "{r:?}");
    let v = json(&r);
    assert_eq!(v["state"], "completed", "{r:?}");
    // `first` appended once and put the counter once: its effects were put
    // back, not redone; the killed attempt of `second` left nothing behind.
    assert_eq!(
        v["steps"][2]["output"],
        "read shared/log.txt -> ok first;second;\nget counter -> ok v1 one by did:ex:w\n",
        "{r:?}"
    );
    assert_eq!(starts(&saga, dir, "first"), 1);
    assert_eq!(starts(&saga, dir, "second"), 2);
    assert_eq!(v["steps"][1]["attempts"], 2);
    // Resuming it again does nothing.
    let r = ahv_run(&["saga", "resume", &saga, "--state-dir", dir]);
    assert_eq!(r.code(), code(Exit::Ok), "{r:?}");
    assert!(r.stderr.contains("already completed"), "{r:?}");
    assert_eq!(starts(&saga, dir, "first"), 1);
}

#[test]
fn a_sigkilled_saga_is_compensated_on_restart_by_its_policy_or_an_operators_order() {
    let state = tempfile::tempdir().unwrap();
    let dir = path_str(state.path());
    // By its policy: `on_crash: compensate`.
    let file = state.path().join("crash.yaml");
    std::fs::write(
        &file,
        CRASH_SAGA.replace("name: crash-and-resume", "name: c\non_crash: compensate"),
    )
    .unwrap();
    let saga = run_and_kill_in_second_step(&file, dir);
    let r = ahv_run(&["saga", "resume", &saga, "--state-dir", dir, "--json"]);
    assert_eq!(r.code(), code(Exit::Failed), "{r:?}");
    let states: Vec<_> = json(&r)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["compensated", "failed", "pending"], "{r:?}");
    assert_eq!(starts(&saga, dir, "first"), 1);

    // By an operator's order, for a saga whose policy is to resume.
    let file = state.path().join("crash2.yaml");
    std::fs::write(&file, CRASH_SAGA).unwrap();
    let saga = run_and_kill_in_second_step(&file, dir);
    let r = ahv_run(&[
        "saga",
        "compensate",
        &saga,
        "--state-dir",
        dir,
        "--reason",
        "rolled back by the on-call",
    ]);
    assert_eq!(r.code(), code(Exit::Failed), "{r:?}");
    assert!(r.stdout.contains("compensated"), "{r:?}");
    let r = ahv_run(&["saga", "show", &saga, "--state-dir", dir, "--json"]);
    assert!(
        r.stdout.contains("operator: rolled back by the on-call"),
        "{r:?}"
    );
    // An unknown saga is a usage error naming it.
    let r = ahv_run(&["saga", "resume", "saga-no-such", "--state-dir", dir]);
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
    assert!(r.stderr.contains("saga-no-such"), "{r:?}");
}

/// One session of `hv` in which `agent` joins and is slashed at severity 1.
async fn slashed_once(hv: &ahv_hypervisor::Hypervisor, agent: &str) {
    let s = hv
        .create_session(
            Default::default(),
            ahv_core::AgentId::new("did:ex:op").unwrap(),
        )
        .unwrap();
    let a = ahv_core::AgentId::new(agent).unwrap();
    hv.join_session(&s, ahv_hypervisor::JoinRequest::new(a.clone(), 0.8))
        .await
        .unwrap();
    hv.slash(&s, &a, None, 1.0, "test").unwrap();
    hv.terminate_session(&s).unwrap();
}

const LEDGER_SAGA: &str = r#"
name: two-agents
agents:
  - id: did:ex:clean
    component: scripted
  - id: did:ex:bad
    component: scripted
steps:
  - id: one
    agent: did:ex:clean
    action: w
    execute: write shared/one.txt 1
"#;

#[tokio::test]
async fn two_processes_on_one_postgresql_share_the_ledger_and_a_slash_in_one_refuses_the_agent_in_the_other()
 {
    let db = crate::pg::PgDatabase::create();
    let state = tempfile::tempdir().unwrap();
    let hv = ahv_hypervisor::Hypervisor::builder()
        .state_dir(state.path().join("one"))
        .cache_dir(crate::cache_dir())
        .database(&db.url)
        .build()
        .unwrap();
    assert_eq!(hv.ledger_backend(), "postgres");
    // This process: four slashes of did:ex:bad (risk 0.60: deny), one of
    // did:ex:clean (0.15, which a clean session elsewhere will work off).
    for _ in 0..4 {
        slashed_once(&hv, "did:ex:bad").await;
    }
    slashed_once(&hv, "did:ex:clean").await;
    hv.flush_liability().await.unwrap();
    let file = state.path().join("saga.yaml");
    std::fs::write(&file, LEDGER_SAGA).unwrap();
    let other = state.path().join("two");
    let other = path_str(&other).to_string();
    // Another process on the same database refuses did:ex:bad at join.
    let r = ahv_run(&[
        "saga",
        "run",
        path_str(&file),
        "--state-dir",
        &other,
        "--database",
        &db.url,
    ]);
    assert_eq!(r.code(), code(Exit::Denied), "{r:?}");
    assert!(
        r.stderr.contains("did:ex:bad") && r.stderr.contains("0.60"),
        "{r:?}"
    );
    // What another process records is seen here: without did:ex:bad the
    // saga runs, and did:ex:clean ends its session there without a mark.
    let only_clean = LEDGER_SAGA.replace("  - id: did:ex:bad\n    component: scripted\n", "");
    std::fs::write(&file, only_clean).unwrap();
    let r = ahv_run(&[
        "saga",
        "run",
        path_str(&file),
        "--state-dir",
        &other,
        "--database",
        &db.url,
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    let clean = ahv_core::AgentId::new("did:ex:clean").unwrap();
    let entries = hv.ledger_entries(&clean).await.unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.kind == ahv_trust::EntryKind::CleanSession),
        "{entries:?}"
    );
    // And `ahv ledger` (a third process) reads the same records.
    let r = ahv_run(&[
        "ledger",
        "show",
        "did:ex:bad",
        "--database",
        &db.url,
        "--json",
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    let v = json(&r);
    assert_eq!(v["backend"], "postgres");
    assert_eq!(v["admission"], "deny");
    assert_eq!(v["entries"].as_array().unwrap().len(), 4, "{v}");
    assert!((v["risk"].as_f64().unwrap() - 0.6).abs() < 1e-9, "{v}");
    let r = ahv_run(&["ledger", "list", "--database", &db.url]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("did:ex:bad") && l.ends_with("deny")),
        "{r:?}"
    );
}

#[tokio::test]
async fn ahv_ledger_reads_a_state_directory_and_says_when_there_is_none() {
    let state = tempfile::tempdir().unwrap();
    let dir = path_str(state.path()).to_string();
    let r = ahv_run(&["ledger", "list", "--state-dir", &dir]);
    assert_eq!(r.code(), code(Exit::Setup), "{r:?}");
    assert!(r.stderr.contains("liability.sqlite"), "{r:?}");
    let hv = ahv_hypervisor::Hypervisor::builder()
        .state_dir(state.path())
        .cache_dir(crate::cache_dir())
        .build()
        .unwrap();
    slashed_once(&hv, "did:ex:once").await;
    hv.shutdown().unwrap();
    drop(hv);
    let r = ahv_run(&["ledger", "show", "did:ex:once", "--state-dir", &dir]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("agent did:ex:once: risk 0.15, admission admit (1 entries in sqlite)"),
        "{r:?}"
    );
    assert!(r.stdout.contains("slash"), "{r:?}");
    let r = ahv_run(&["ledger", "show", "not an id", "--state-dir", &dir]);
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
    let r = ahv_run(&["ledger", "list"]);
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
}

/// `ahv serve` as a child process: started on an ephemeral port, its address
/// read from its standard error.
struct Serving {
    child: Child,
    url: String,
    err: std::sync::mpsc::Receiver<String>,
}

impl Serving {
    fn start(state: &Path, tokens: &Path) -> Serving {
        Serving::start_with(state, tokens, &[])
    }

    fn start_with(state: &Path, tokens: &Path, extra: &[&str]) -> Serving {
        let mut child = ahv(&[
            "serve",
            "--state-dir",
            path_str(state),
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            path_str(tokens),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + LIMIT;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        break rest.split_whitespace().next().unwrap().to_string();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("`ahv serve` did not say where it listens within {LIMIT:?}: {e}");
                }
            }
        };
        Serving {
            child,
            url,
            err: rx,
        }
    }

    /// `ahv ARGS` against this server with the token in `token_file`.
    fn ahv(&self, token_file: &Path, args: &[&str]) -> Run {
        let mut c = ahv(args);
        c.env("AHV_SERVER", &self.url)
            .arg("--token-file")
            .arg(token_file);
        run(c, b"")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A seal receipt as `ahv session terminate` printed it.
#[derive(Debug, Clone)]
struct Printed {
    session: String,
    index: u64,
    tree_size: u64,
    root: String,
}

/// What a client thread of [`a_printed_seal_survives_a_sigkill_of_the_server_right_after_it`]
/// tells the test.
enum ClientNews {
    /// A receipt, sent as soon as `ahv session terminate` has printed it.
    Receipt(Printed),
    /// The thread stopped (the server is gone); why, if not asked to.
    Done(Option<String>),
}

/// Runs `ahv session terminate SESSION` against `url` and returns its
/// standard output as soon as the command has closed it (it printed the
/// receipt, or failed), without waiting for its exit to be reaped.
fn terminate_printing(url: &str, token: &Path, session: &str) -> Result<String, String> {
    let mut child = ahv(&["session", "terminate", session])
        .env("AHV_SERVER", url)
        .arg("--token-file")
        .arg(token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting `ahv session terminate {session}`: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let err = drain(child.stderr.take().expect("stderr piped"));
    let out = rx.recv_timeout(LIMIT);
    let what = format!("ahv session terminate {session}");
    let status = wait_within(&mut child, LIMIT, &what);
    let stderr = err.join().unwrap_or_default();
    match out {
        Ok(out) if status.success() => Ok(out),
        Ok(_) => Err(format!("`{what}`: {status:?}: {stderr}")),
        Err(e) => Err(format!("`{what}` printed nothing within {LIMIT:?}: {e}")),
    }
}

/// One client: creates and terminates sessions with the `ahv` CLI until
/// `stop`, sending each printed receipt the moment it is printed.
fn terminate_in_a_loop(
    url: String,
    token: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    news: std::sync::mpsc::Sender<ClientNews>,
) {
    let why = loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break None;
        }
        let mut c = ahv(&["session", "create"]);
        c.env("AHV_SERVER", &url).arg("--token-file").arg(&token);
        let r = run(c, b"");
        if r.code() != 0 {
            break Some(format!("ahv session create: {r:?}"));
        }
        let session = r.stdout.trim().to_string();
        let out = match terminate_printing(&url, &token, &session) {
            Ok(out) => out,
            Err(e) => break Some(e),
        };
        let v: serde_json::Value = match serde_json::from_str(&out) {
            Ok(v) => v,
            Err(e) => {
                break Some(format!(
                    "ahv session terminate {session} printed {out:?}: {e}"
                ));
            }
        };
        let c = &v["commitment"];
        let printed = Printed {
            session: session.clone(),
            index: c["index"].as_u64().expect("a commitment index"),
            tree_size: c["tree_size"].as_u64().expect("a tree size"),
            root: c["root"].as_str().expect("a root").to_string(),
        };
        assert_eq!(v["session"], session.as_str(), "{v}");
        if news.send(ClientNews::Receipt(printed)).is_err() {
            break None;
        }
    };
    let _ = news.send(ClientNews::Done(why));
}

/// Checks that every printed receipt is in the commitment log at its index,
/// as printed, and that `ahv audit verify` finds each of those sessions
/// sealed by it and intact.
fn assert_printed_seals_on_disk(state: &Path, printed: &[Printed], when: &str) {
    let audit = ahv_audit::audit_dir(state);
    let log = ahv_audit::read_log(
        ahv_audit::auditor::commitments_path(&audit),
        ahv_audit::LogKind::COMMITMENTS,
    )
    .unwrap();
    let disk: Vec<ahv_audit::Commitment> = log
        .records
        .iter()
        .map(|r| ahv_audit::Commitment::decode(&r.body).unwrap())
        .collect();
    for p in printed {
        let c = disk.get(p.index as usize).unwrap_or_else(|| {
            panic!(
                "{when}: session {} was printed sealed by commitment #{}, \
                 but the commitment log holds only {} commitments",
                p.session,
                p.index,
                disk.len()
            )
        });
        assert_eq!(
            (c.session.as_str(), c.tree_size, c.root.to_hex()),
            (p.session.as_str(), p.tree_size, p.root.clone()),
            "{when}: commitment #{} is not the one printed",
            p.index
        );
    }
    let r = ahv_run(&["audit", "verify", path_str(state), "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    let sessions = report["sessions"].as_array().unwrap();
    for p in printed {
        let s = sessions
            .iter()
            .find(|s| s["session"] == p.session.as_str())
            .unwrap_or_else(|| panic!("`ahv audit verify` does not list {}: {r:?}", p.session));
        assert_eq!(
            s["status"],
            serde_json::json!({"status": "committed", "index": p.index, "tree_size": p.tree_size}),
            "{when}: {s}"
        );
        assert_eq!(s["problems"], serde_json::json!([]), "{when}: {s}");
    }
}

/// A seal receipt the CLI printed survives a SIGKILL of the server right
/// after it: `POST …/terminate` answers only once the commitment is on disk,
/// even under group commit. Four clients terminate sessions in a loop with
/// `ahv session create` / `ahv session terminate`; as soon as a few receipts
/// are printed the server is SIGKILLed, and every printed commitment must be
/// in the commitment log, as printed, and verify. Three rounds on one state
/// directory, so recovery after each kill is exercised too. (Before receipts
/// waited for their group commit, the commitments printed within the last
/// ~10 ms were lost.)
#[test]
fn a_printed_seal_survives_a_sigkill_of_the_server_right_after_it() {
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 3;
    /// Receipts printed in a round before the kill.
    const KILL_AFTER: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let tokens = tmp.path().join("tokens.toml");
    let r = ahv_run(&["token", "new", "--name", "ops", "--role", "admin"]);
    assert_eq!(r.code(), 0, "{r:?}");
    std::fs::write(&tokens, &r.stderr).unwrap();
    let token = tmp.path().join("ops.token");
    std::fs::write(&token, r.stdout.trim()).unwrap();

    let mut printed: Vec<Printed> = Vec::new();
    for round in 1..=ROUNDS {
        let mut srv = Serving::start_with(
            &state,
            &tokens,
            &["--rate", "100000", "--database", "memory"],
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..CLIENTS {
            let (url, token, stop, tx) = (srv.url.clone(), token.clone(), stop.clone(), tx.clone());
            std::thread::spawn(move || terminate_in_a_loop(url, token, stop, tx));
        }
        drop(tx);
        let before = printed.len();
        let mut done = 0;
        let mut killed = false;
        while done < CLIENTS {
            let news = rx.recv_timeout(LIMIT).unwrap_or_else(|e| {
                panic!(
                    "round {round}: no receipt nor client end within {LIMIT:?} \
                     ({} receipts, {done} clients done): {e}",
                    printed.len() - before
                )
            });
            match news {
                ClientNews::Receipt(p) => {
                    printed.push(p);
                    if !killed && printed.len() - before >= KILL_AFTER {
                        srv.child.kill().unwrap(); // SIGKILL
                        killed = true;
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                ClientNews::Done(why) => {
                    assert!(
                        killed,
                        "round {round}: a client stopped before the kill: {why:?}"
                    );
                    done += 1;
                }
            }
        }
        let status = wait_within(&mut srv.child, LIMIT, "ahv serve (killed)");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status:?}"
        );
        assert_printed_seals_on_disk(&state, &printed, &format!("after SIGKILL {round}"));
    }
    assert!(printed.len() >= ROUNDS * KILL_AFTER, "{}", printed.len());
    // Reopened once more (recovery seals the sessions the last kill left
    // open) and closed cleanly: the whole directory verifies, and recovery
    // left every printed commitment where it was.
    let hv = ahv_hypervisor::Hypervisor::builder()
        .state_dir(&state)
        .database("memory")
        .max_instances(1)
        .build()
        .unwrap();
    hv.shutdown().unwrap();
    drop(hv);
    let r = ahv_run(&["audit", "verify", path_str(&state)]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_printed_seals_on_disk(&state, &printed, "after recovery");
}

#[test]
fn a_shell_user_drives_a_shared_session_and_its_liability_through_ahv_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // Tokens made by `ahv token new`: the token on stdout, the entry on stderr.
    let tokens = tmp.path().join("tokens.toml");
    let mut entries = String::new();
    for (name, role) in [("ops", "admin"), ("dev", "operator")] {
        let mut args = vec!["token", "new", "--name", name, "--role", role];
        if role == "operator" {
            args.extend(["--agents", "did:ex:*"]);
        }
        let r = ahv_run(&args);
        assert_eq!(r.code(), 0, "{r:?}");
        assert!(
            !r.stderr.contains(r.stdout.trim()),
            "the entry holds only the hash"
        );
        std::fs::write(tmp.path().join(format!("{name}.token")), r.stdout.trim()).unwrap();
        entries += &r.stderr;
    }
    std::fs::write(&tokens, entries).unwrap();
    let ops = tmp.path().join("ops.token");
    let dev = tmp.path().join("dev.token");
    let mut srv = Serving::start(&state, &tokens);
    let note_taker = ahv_agents::PATHS
        .iter()
        .find(|(n, _)| *n == "note-taker")
        .unwrap()
        .1;

    let r = srv.ahv(&dev, &["session", "create"]);
    assert_eq!(r.code(), 0, "{r:?}");
    let s = r.stdout.trim().to_string();
    assert!(s.starts_with('s'), "{r:?}");
    let join = |agent: &str, sigma: &str, component: Option<&str>| {
        let mut args = vec!["session", "join", &s, agent, "--sigma", sigma];
        if let Some(c) = component {
            args.extend(["--component", c]);
        }
        let r = srv.ahv(&dev, &args);
        assert_eq!(r.code(), 0, "{r:?}");
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["ring"].clone()
    };
    assert_eq!(join("did:ex:writer", "0.8", Some(note_taker)), 2);
    assert_eq!(join("did:ex:boss", "0.9", None), 2);
    assert_eq!(join("did:ex:low", "0.4", None), 3);
    assert_eq!(srv.ahv(&dev, &["session", "activate", &s]).code(), 0);
    let r = srv.ahv(
        &dev,
        &[
            "session",
            "run",
            &s,
            "did:ex:writer",
            "--input",
            "from a shell",
        ],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let r = srv.ahv(
        &dev,
        &[
            "session",
            "files",
            &s,
            "notes/today.md",
            "--read",
            "--agent",
            "did:ex:writer",
        ],
    );
    assert_eq!(r.stdout, "# Today\n- from a shell\n", "{r:?}");

    // Liability from the shell: a vouch lifts, a release drops.
    let r = srv.ahv(
        &dev,
        &[
            "liability",
            "vouch",
            &s,
            "did:ex:boss",
            "did:ex:low",
            "--pct",
            "0.5",
        ],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ring"], 2);
    let vouch = v["id"].to_string();
    assert_eq!(
        srv.ahv(&dev, &["liability", "release", &s, &vouch]).code(),
        0
    );
    // Punishments need admin: the operator's slash is refused (exit 7), the admin's is not.
    let r = srv.ahv(
        &dev,
        &[
            "liability",
            "slash",
            &s,
            "did:ex:low",
            "--severity",
            "1",
            "--reason",
            "spam",
        ],
    );
    assert_eq!(r.code(), code(Exit::ApiRefused), "{r:?}");
    assert!(
        r.stderr.contains("403") && r.stderr.contains("admin"),
        "{r:?}"
    );
    let r = srv.ahv(
        &ops,
        &[
            "liability",
            "slash",
            &s,
            "did:ex:low",
            "--severity",
            "1",
            "--reason",
            "spam",
        ],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    // A quarantine stops the writer's next file read; the release lets it through.
    let r = srv.ahv(
        &ops,
        &[
            "liability",
            "quarantine",
            &s,
            "did:ex:writer",
            "--duration-s",
            "60",
        ],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let r = srv.ahv(
        &dev,
        &["session", "run", &s, "did:ex:writer", "--input", "x"],
    );
    assert_eq!(r.code(), code(Exit::Failed), "{r:?}");
    assert!(r.stdout.contains("quarantined"), "{r:?}");
    let r = srv.ahv(
        &ops,
        &["liability", "release-quarantine", &s, "did:ex:writer"],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let r = srv.ahv(
        &dev,
        &["session", "run", &s, "did:ex:writer", "--input", "y"],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let r = srv.ahv(&ops, &["liability", "ledger", "did:ex:low"]);
    assert!(r.stdout.contains("\"slash\""), "{r:?}");
    // Kill needs admin too.
    let r = srv.ahv(&dev, &["session", "kill", &s, "did:ex:writer"]);
    assert_eq!(r.code(), code(Exit::ApiRefused), "{r:?}");
    let r = srv.ahv(&ops, &["session", "kill", &s, "did:ex:writer"]);
    assert_eq!(r.code(), 0, "{r:?}");
    let r = srv.ahv(&dev, &["session", "terminate", &s]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stdout.contains("\"commitment\""), "{r:?}");
    // Errors: an unknown session, no token, no server.
    let r = srv.ahv(&dev, &["session", "show", "s999-00"]);
    assert_eq!(r.code(), code(Exit::ApiRefused), "{r:?}");
    let r = run(
        {
            let mut c = ahv(&["session", "ls"]);
            c.env("AHV_SERVER", &srv.url).env_remove("AHV_TOKEN");
            c
        },
        b"",
    );
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
    let r = run(
        {
            let mut c = ahv(&["session", "ls", "--token-file", path_str(&dev)]);
            c.env("AHV_SERVER", "http://127.0.0.1:9");
            c
        },
        b"",
    );
    assert_eq!(r.code(), code(Exit::Setup), "{r:?}");

    // SIGTERM: the server stops and seals its audit log, which verifies.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&srv.child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = wait_within(&mut srv.child, LIMIT, "ahv serve after SIGTERM");
    assert!(status.success(), "{status:?}");
    let said: Vec<String> = srv.err.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("sealing")), "{said:?}");
    let r = ahv_run(&["audit", "verify", path_str(&state)]);
    assert_eq!(r.code(), 0, "{r:?}");
}

/// The README's curl block, exactly as written, against a real `ahv serve`.
#[test]
fn the_readme_curl_examples_run() {
    let readme = include_str!("../../README.md");
    let marker =
        "<!-- curl examples: run by tests/integration/cli.rs (the_readme_curl_examples_run) -->";
    let after = &readme[readme.find(marker).expect("the README's curl marker") + marker.len()..];
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a sh block after the marker")
        .0;
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.toml");
    let r = ahv_run(&["token", "new", "--name", "ops", "--role", "admin"]);
    std::fs::write(&tokens, &r.stderr).unwrap();
    let srv = Serving::start(&tmp.path().join("state"), &tokens);
    let wasm = ahv_agents::PATHS
        .iter()
        .find(|(n, _)| *n == "note-taker")
        .unwrap()
        .1;
    let mut c = Command::new("bash");
    c.args(["-euo", "pipefail", "-c", block])
        .env("AHV", &srv.url)
        .env("AHV_TOKEN", r.stdout.trim())
        .env("WASM", wasm);
    let out = run(c, b"");
    assert_eq!(out.code(), 0, "the README's curl block failed: {out:?}");
    assert!(out.stdout.contains("# Today\n- ship it"), "{out:?}");
    assert!(out.stdout.contains("\"kind\":\"vfs.write\""), "{out:?}");
    assert!(out.stdout.contains("\"commitment\":{"), "{out:?}");
    assert!(
        out.stdout.contains("\"signed_size\":1}") && out.stdout.contains("\"ok\":true,"),
        "{out:?}"
    );
}

/// SIGTERM with a call blocked in an agent and a live event stream open: the
/// stream ends, the call is stopped after the grace period, the sessions are
/// sealed, the head signed, and the log verifies.
#[test]
fn sigterm_stops_ahv_serve_gracefully_with_a_call_running_and_a_stream_open() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let tokens = tmp.path().join("tokens.toml");
    let r = ahv_run(&["token", "new", "--name", "ops", "--role", "admin"]);
    std::fs::write(&tokens, &r.stderr).unwrap();
    let token_file = tmp.path().join("ops.token");
    std::fs::write(&token_file, r.stdout.trim()).unwrap();
    let mut srv = Serving::start(&state, &tokens);
    let sleeper = ahv_agents::PATHS
        .iter()
        .find(|(n, _)| *n == "sleeper")
        .unwrap()
        .1;
    let s = srv
        .ahv(&token_file, &["session", "create"])
        .stdout
        .trim()
        .to_string();
    let r = srv.ahv(
        &token_file,
        &[
            "session",
            "join",
            &s,
            "did:ex:sleepy",
            "--sigma",
            "0.8",
            "--component",
            sleeper,
        ],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(srv.ahv(&token_file, &["session", "activate", &s]).code(), 0);
    // A call that would sleep for an hour, and a stream that never ends by itself.
    let mut call = ahv(&["session", "run", &s, "did:ex:sleepy", "--input", "3600000"]);
    call.env("AHV_SERVER", &srv.url)
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut call = call.spawn().unwrap();
    let mut stream = Command::new("curl")
        .args(["-sN", "-H"])
        .arg(format!("Authorization: Bearer {}", token_in(&token_file)))
        .arg(format!("{}/v1/events/stream", srv.url))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&srv.child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = wait_within(&mut srv.child, LIMIT, "ahv serve after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stopping took {:?}",
        started.elapsed()
    );
    let call_status = wait_within(&mut call, LIMIT, "the running call after SIGTERM");
    assert!(
        !call_status.success(),
        "the hour-long call cannot have answered"
    );
    let _ = wait_within(&mut stream, LIMIT, "the event stream after SIGTERM");
    let said: Vec<String> = srv.err.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("sealing")), "{said:?}");
    let r = ahv_run(&["audit", "verify", path_str(&state)]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stdout.contains(&s), "the session was sealed: {r:?}");
}

fn token_in(token_file: &Path) -> String {
    std::fs::read_to_string(token_file)
        .unwrap()
        .trim()
        .to_string()
}

/// One span an OTLP exporter sent.
#[derive(Debug, Clone)]
struct ExportedSpan {
    name: String,
    trace: u128,
    id: u64,
    parent: Option<u64>,
}

/// A fake OpenTelemetry collector on 127.0.0.1: takes OTLP/HTTP protobuf
/// POSTs to `/v1/traces`, decodes them, and sends each span on.
fn otlp_collector() -> (String, std::sync::mpsc::Receiver<ExportedSpan>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    assert!(
                        request_line.starts_with("POST /v1/traces "),
                        "the exporter sent {request_line:?}"
                    );
                    let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    for span in req
                        .resource_spans
                        .into_iter()
                        .flat_map(|r| r.scope_spans)
                        .flat_map(|s| s.spans)
                    {
                        let _ = tx.send(ExportedSpan {
                            name: span.name,
                            trace: u128::from_be_bytes(
                                span.trace_id.as_slice().try_into().unwrap(),
                            ),
                            id: u64::from_be_bytes(span.span_id.as_slice().try_into().unwrap()),
                            parent: (span.parent_span_id.len() == 8).then(|| {
                                u64::from_be_bytes(
                                    span.parent_span_id.as_slice().try_into().unwrap(),
                                )
                            }),
                        });
                    }
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                    );
                }
            });
        }
    });
    (url, rx)
}

#[test]
fn ahv_serve_exports_its_spans_to_an_otlp_collector_in_the_callers_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            hex::encode(ahv_api::auth::hash_token("tok-otlp"))
        ),
    )
    .unwrap();
    let (collector, spans) = otlp_collector();
    let mut srv = Serving::start_with(
        &tmp.path().join("state"),
        &tokens,
        &["--otlp-endpoint", &collector],
    );
    let http = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(LIMIT))
            .build(),
    );
    let post = |path: &str, traceparent: Option<&str>, body: serde_json::Value| {
        let mut req = http
            .post(format!("{}{path}", srv.url))
            .header("Authorization", "Bearer tok-otlp");
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let res = req.send_json(body).unwrap();
        let tp = res.headers()["traceparent"].to_str().unwrap().to_string();
        let body: serde_json::Value = res.into_body().read_json().unwrap();
        (tp, body)
    };
    let hello = http
        .post(format!("{}/v1/components", srv.url))
        .header("Authorization", "Bearer tok-otlp")
        .header("content-type", "application/wasm")
        .send(ahv_agents::HELLO)
        .unwrap()
        .into_body()
        .read_json::<serde_json::Value>()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Without a traceparent the request takes the exported span's trace id.
    let (created_tp, created) = post("/v1/sessions", None, serde_json::json!({}));
    let s = created["id"].as_str().unwrap().to_string();
    let created_trace = u128::from_str_radix(created_tp.split('-').nth(1).unwrap(), 16).unwrap();
    post(
        &format!("/v1/sessions/{s}/agents"),
        None,
        serde_json::json!({"agent": "did:ex:hello", "sigma": 0.8, "component": hello}),
    );
    post(
        &format!("/v1/sessions/{s}/activate"),
        None,
        serde_json::json!(null),
    );
    // With one, the request's span is a child of the caller's span.
    let (trace, parent) = (
        0x4bf92f3577b34da6a3ce929d0e0e4736_u128,
        0x00f067aa0ba902b7_u64,
    );
    let (run_tp, ran) = post(
        &format!("/v1/sessions/{s}/agents/did:ex:hello/run"),
        Some(&format!("00-{trace:032x}-{parent:016x}-01")),
        serde_json::json!({"input": "Ada"}),
    );
    assert_eq!(ran["trace"], format!("{trace:032x}"), "{ran}");
    let run_span = u64::from_str_radix(run_tp.split('-').nth(2).unwrap(), 16).unwrap();
    // An MCP tool call in a trace of its own: its agent call joins it too.
    let mcp_trace = 0x0af7651916cd43dd8448eb211c80319c_u128;
    let tool = ahv_api::mcp::tool_name(&ahv_core::AgentId::new("did:ex:hello").unwrap());
    let res = http
        .post(format!("{}/v1/sessions/{s}/mcp", srv.url))
        .header("Authorization", "Bearer tok-otlp")
        .header("accept", "application/json, text/event-stream")
        .header(
            "traceparent",
            format!("00-{mcp_trace:032x}-b7ad6b7169203331-01"),
        )
        .send_json(
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {"input": "Mo"}}}),
        )
        .unwrap();
    assert!(
        res.headers()["traceparent"]
            .to_str()
            .unwrap()
            .starts_with(&format!("00-{mcp_trace:032x}-")),
        "{res:?}"
    );
    let answer: serde_json::Value = res.into_body().read_json().unwrap();
    assert_eq!(
        answer["result"]["_meta"]["ahv/trace"],
        format!("{mcp_trace:032x}"),
        "{answer}"
    );
    let events: serde_json::Value = http
        .get(format!(
            "{}/v1/events?session={s}&kind=session.created",
            srv.url
        ))
        .header("Authorization", "Bearer tok-otlp")
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    assert_eq!(
        events[0]["trace"],
        format!("{created_trace:032x}"),
        "the session's creation is in its request's trace: {events}"
    );
    // SIGTERM: the server stops and sends the spans still queued.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(srv.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = wait_within(&mut srv.child, LIMIT, "ahv serve to stop on SIGTERM");
    assert!(status.success(), "{status:?}");
    let mut got: Vec<ExportedSpan> = Vec::new();
    let deadline = Instant::now() + LIMIT;
    let found = |got: &[ExportedSpan]| {
        let request = got
            .iter()
            .find(|x| x.name == "request" && x.trace == trace)?;
        let run = got
            .iter()
            .find(|x| x.name == "agent.run" && x.trace == trace)?;
        got.iter()
            .find(|x| x.name == "request" && x.trace == created_trace)?;
        got.iter()
            .find(|x| x.name == "agent.run" && x.trace == mcp_trace)?;
        Some((request.clone(), run.clone()))
    };
    let (request, run) = loop {
        if let Some(f) = found(&got) {
            break f;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match spans.recv_timeout(left) {
            Ok(x) => got.push(x),
            Err(e) => panic!(
                "the collector did not get the request and agent.run spans within {LIMIT:?} ({e}): {got:#?}"
            ),
        }
    };
    assert_eq!(request.parent, Some(parent), "{request:?}");
    assert_eq!(
        request.id, run_span,
        "the answer's traceparent names the exported span"
    );
    assert_eq!(run.parent, Some(request.id), "{run:?}");
}

#[test]
fn ahv_serve_speaks_tls_with_a_given_certificate_and_the_cli_trusts_it_by_cacert() {
    let tmp = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let tokens = tmp.path().join("tokens.toml");
    let r = ahv_run(&["token", "new", "--name", "ops", "--role", "admin"]);
    std::fs::write(&tokens, &r.stderr).unwrap();
    let token = tmp.path().join("ops.token");
    std::fs::write(&token, r.stdout.trim()).unwrap();
    let state = tmp.path().join("state");

    // A key that does not fit, or a file that is not a certificate: the
    // server does not start, and says which file.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_key = tmp.path().join("other-key.pem");
    std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
    for (c, k, needle) in [
        (&cert, &other_key, "other-key.pem"),
        (&key, &key, "key.pem"),
    ] {
        let r = run(
            {
                let mut c2 = ahv(&[
                    "serve",
                    "--state-dir",
                    path_str(&state),
                    "--listen",
                    "127.0.0.1:0",
                ]);
                c2.args([
                    "--tokens",
                    path_str(&tokens),
                    "--tls-cert",
                    path_str(c),
                    "--tls-key",
                    path_str(k),
                ]);
                c2
            },
            b"",
        );
        assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
        assert!(r.stderr.contains(needle), "{r:?}");
    }

    let srv = Serving::start_with(
        &state,
        &tokens,
        &["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)],
    );
    assert!(srv.url.starts_with("https://127.0.0.1:"), "{}", srv.url);
    // Junk on the port (plain HTTP, a bogus TLS record, a hang-up) does not
    // stop the server.
    let addr = srv.url.trim_start_matches("https://").to_string();
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05hello",
        b"",
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // The CLI over https, trusting the server's certificate.
    let mut c = ahv(&["session", "create"]);
    c.env("AHV_SERVER", &srv.url)
        .env("AHV_CACERT", &cert)
        .arg("--token-file")
        .arg(&token);
    let r = run(c, b"");
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stdout.starts_with('s'), "{r:?}");
    // Without it, the certificate is not trusted (the usual roots do not
    // know it): the CLI refuses to talk, and says why.
    let mut c = ahv(&["session", "ls"]);
    c.env("AHV_SERVER", &srv.url)
        .env_remove("AHV_CACERT")
        .arg("--token-file")
        .arg(&token);
    let r = run(c, b"");
    assert_ne!(r.code(), 0, "{r:?}");
    assert!(
        r.stderr.to_lowercase().contains("certificate") || r.stderr.contains("UnknownIssuer"),
        "{r:?}"
    );
    // A --cacert that is not a certificate is a usage error naming it.
    let mut c = ahv(&["session", "ls", "--cacert", path_str(&key)]);
    c.env("AHV_SERVER", &srv.url)
        .arg("--token-file")
        .arg(&token);
    let r = run(c, b"");
    assert_eq!(r.code(), code(Exit::Usage), "{r:?}");
    assert!(r.stderr.contains("key.pem"), "{r:?}");
}

#[test]
fn the_bench_table_reads_benches_that_exist_and_writes_the_readme_block() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let table = root.join("host/bench/table.py");
    let list = run(
        {
            let mut c = Command::new("python3");
            c.arg(&table).arg("--list");
            c
        },
        b"",
    );
    assert_eq!(list.code(), 0, "{list:?}");
    // Every bench the table reads is one the repository has, and every
    // reference scenario one host/bench/reference.py times.
    let benches: Vec<(String, String)> = std::fs::read_dir(root.join("host"))
        .unwrap()
        .filter_map(|d| std::fs::read_dir(d.unwrap().path().join("benches")).ok())
        .flatten()
        .map(|f| f.unwrap().path())
        // The bench files themselves; shared modules sit in subdirectories.
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(p).unwrap())
        })
        .collect();
    // The benches compare.sh builds and runs: the `--bench NAME` (or
    // `--bench=NAME`) of its `cargo bench` command, continuations joined.
    let compare = std::fs::read_to_string(root.join("host/bench/compare.sh"))
        .unwrap()
        .replace("\\\n", " ");
    let command = compare
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == "cargo") && l.contains(" bench "))
        .expect("compare.sh runs `cargo bench`");
    let words: Vec<&str> = command.split_whitespace().collect();
    let run_by_compare: Vec<&str> = words
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w.strip_prefix("--bench") {
            Some("") => words.get(i + 1).copied(),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        })
        .collect();
    assert!(run_by_compare.len() >= 3, "{run_by_compare:?}");
    let reference = std::fs::read_to_string(root.join("host/bench/reference.py")).unwrap();
    let ids: Vec<&str> = list.stdout.lines().collect();
    assert!(ids.len() > 10, "{ids:?}");
    for id in &ids {
        if let Some(scenario) = id.strip_prefix("ref:") {
            assert!(
                reference.contains(&format!("def {scenario}(")),
                "table.py reads reference scenario {scenario}, which reference.py does not time"
            );
            continue;
        }
        let (group, function) = id.split_once('/').unwrap();
        let defined_in: Vec<&str> = benches
            .iter()
            .filter(|(_, src)| {
                src.contains(&format!("benchmark_group(\"{group}\")"))
                    && src.contains(&format!("\"{function}\""))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        assert!(
            !defined_in.is_empty(),
            "table.py reads bench {id}, which no bench under host/*/benches defines"
        );
        assert!(
            defined_in.iter().any(|b| run_by_compare.contains(b)),
            "table.py reads bench {id} of {defined_in:?}, which compare.sh does not run ({run_by_compare:?})"
        );
    }
    // And compare.sh's criterion filter runs each of them.
    let check = "import re, sys\n\
        m = re.search(r\"'(\\^\\(.*?\\)\\$)'\", open(sys.argv[1]).read())\n\
        pat = re.compile(m.group(1)) if m else None\n\
        bad = [i for i in sys.argv[2:] if pat is None or not pat.search(i)]\n\
        print('not run by compare.sh:', bad if pat else 'no filter found')\n\
        sys.exit(1 if bad or pat is None else 0)\n";
    let filtered = run(
        {
            let mut c = Command::new("python3");
            c.arg("-c")
                .arg(check)
                .arg(root.join("host/bench/compare.sh"))
                .args(ids.iter().filter(|i| !i.starts_with("ref:")));
            c
        },
        b"",
    );
    assert_eq!(filtered.code(), 0, "{filtered:?}");
    // With a figure for each, it prints the ratios and rewrites the block.
    let tmp = tempfile::tempdir().unwrap();
    let criterion = tmp.path().join("criterion");
    for id in ids.iter().filter(|i| !i.starts_with("ref:")) {
        let dir = id
            .split('/')
            .fold(criterion.clone(), |d, part| d.join(part))
            .join("new");
        std::fs::create_dir_all(&dir).unwrap();
        // Ours are the floors' figure doubled: every same-run ratio is 2,
        // but a floor compared with a lower floor (1).
        let ns = if id.contains("raw")
            || id.contains("floor")
            || id.ends_with("unaudited")
            || id.ends_with("native_atomic")
        {
            1000.0
        } else {
            2000.0
        };
        std::fs::write(
            dir.join("estimates.json"),
            format!("{{\"median\": {{\"point_estimate\": {ns}}}}}"),
        )
        .unwrap();
    }
    let reference_json = tmp.path().join("reference.json");
    let scenarios: Vec<String> = ids
        .iter()
        .filter_map(|i| i.strip_prefix("ref:"))
        .map(|s| format!("{{\"scenario\": \"{s}\", \"p50_us\": 8.0}}"))
        .collect();
    std::fs::write(&reference_json, format!("[{}]", scenarios.join(","))).unwrap();
    let readme = tmp.path().join("README.md");
    std::fs::write(
        &readme,
        "# x\n\n<!-- perf-table: old -->\nstale\n<!-- perf-table: end -->\n\nafter\n",
    )
    .unwrap();
    let r = run(
        {
            let mut c = Command::new("python3");
            c.arg(&table)
                .arg(&reference_json)
                .arg(&criterion)
                .arg("--readme")
                .arg(&readme);
            c
        },
        b"",
    );
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stdout.contains("| 2.00× |"), "{r:?}");
    assert!(r.stdout.contains("4.0× faster"), "{r:?}");
    // The goals, each judged beside its floor: at 2.00× audit off the
    // lifecycle meets ≤ 2×; the Wasm pipeline (1.00× at its floor) misses
    // ≤ 1.25× at 2.00×.
    let goal = |stdout: &str, name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no goal {name} in {stdout}"))
            .to_string()
    };
    let lifecycle = goal(&r.stdout, "audited lifecycle ≤ 2× audit off");
    assert!(lifecycle.ends_with("| **met** |"), "{lifecycle}");
    let wasm = goal(&r.stdout, "pipeline with Wasm ≤ 1.25× audit off");
    assert!(
        wasm.contains("| 2.00× | 1.00× (") && wasm.ends_with("| not met |"),
        "{wasm}"
    );
    let text = std::fs::read_to_string(&readme).unwrap();
    assert!(!text.contains("stale"), "{text}");
    assert!(
        text.contains("| Scenario |")
            && text.contains("| Goal |")
            && text.ends_with("<!-- perf-table: end -->\n\nafter\n"),
        "{text}"
    );
    // A floor that itself misses the goal says so: the lifecycle at 3×
    // audit off, its floor at 2.5×.
    for (bench, ns) in [
        (
            "session_lifecycle/floor_unaudited_plus_encoding_hashing_and_announcements",
            2500.0,
        ),
        ("session_lifecycle/audited", 3000.0),
    ] {
        std::fs::write(
            criterion.join(bench).join("new/estimates.json"),
            format!("{{\"median\": {{\"point_estimate\": {ns}}}}}"),
        )
        .unwrap();
    }
    let r = run(
        {
            let mut c = Command::new("python3");
            c.arg(&table).arg(&reference_json).arg(&criterion);
            c
        },
        b"",
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let lifecycle = goal(&r.stdout, "audited lifecycle ≤ 2× audit off");
    assert!(
        lifecycle.contains("| 3.00× | 2.50× (")
            && lifecycle.ends_with("| not met; the floor itself misses it in this run |"),
        "{lifecycle}"
    );
    // With `instantiate_probe pairs`' output, instantiate + call is judged
    // on its interleaved median too, in the probe's own words.
    let probe =
        std::fs::read_to_string(root.join("host/runtime/examples/instantiate_probe.rs")).unwrap();
    assert!(
        probe.contains(
            "\"median governed / raw throughput over {blocks} pairs of {per_block}: {median:.4} (min {:.4}, max {:.4})\""
        ),
        "instantiate_probe prints the line table.py reads"
    );
    let pairs = tmp.path().join("pairs.txt");
    let interleaved = "instantiate + call ≥ 0.95× raw wasmtime's throughput, interleaved";
    let with_pairs = || {
        let mut c = Command::new("python3");
        c.arg(&table)
            .arg(&reference_json)
            .arg(&criterion)
            .arg("--pairs")
            .arg(&pairs);
        run(c, b"")
    };
    for (median, verdict) in [
        ("0.9496", "| 0.9496× | — | not met |"),
        ("0.9530", "| 0.953× | — | **met** |"),
    ] {
        std::fs::write(
            &pairs,
            format!("pair 0: governed 9.0 µs, raw 8.6 µs, throughput ratio 0.955\nmedian governed / raw throughput over 20 pairs of 10000: {median} (min 0.910, max 1.020)\n"),
        )
        .unwrap();
        let r = with_pairs();
        assert_eq!(r.code(), 0, "{r:?}");
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {interleaved}")))
            .unwrap_or_else(|| panic!("no interleaved row in {r:?}"));
        assert!(row.contains("20 pairs") && row.ends_with(verdict), "{row}");
    }
    std::fs::write(&pairs, "the probe failed\n").unwrap();
    let r = with_pairs();
    assert_ne!(r.code(), 0, "{r:?}");
    // A missing figure is an error, not a blank row in the README.
    std::fs::remove_dir_all(criterion.join("hostcall")).unwrap();
    let r = run(
        {
            let mut c = Command::new("python3");
            c.arg(&table).arg(&reference_json).arg(&criterion);
            c
        },
        b"",
    );
    assert_ne!(r.code(), 0, "{r:?}");
    assert!(r.stderr.contains("hostcall/governed_x1000"), "{r:?}");
}
