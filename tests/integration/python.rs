//! Python agents: built from `example-agents/python/<name>/app.py` and the
//! SDK (`example-agents/python/sdk/ahv`) with componentize-py, then run under
//! the real runtime; and the SDK's own unit tests under plain CPython.
//!
//! componentize-py (pinned: [`COMPONENTIZE_PY_VERSION`]) is installed by
//! the tests themselves from PyPI into a virtual environment under the
//! target directory (or `AHV_COMPONENTIZE_PY` names one); they fail, never
//! skip, when that cannot be done. Building takes ~20 s, so each built component is
//! kept under the target directory, named by a hash of everything that goes
//! into it (the agent's source, the SDK's sources, the WIT, the world,
//! componentize-py's version): a second run, or another test of the same agent, reuses it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ahv_core::{Ring, RingLimits, RingPolicy};
use ahv_runtime::{AgentSpec, LogSource, TrapCause};
use ahv_tests::{Harness, Sandbox};
use sha2::{Digest, Sha256};

use crate::cache_dir;

/// The componentize-py release these agents are written for (the tests
/// install exactly this one).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The environment variable that names the componentize-py binary.
const COMPONENTIZE_PY_ENV: &str = "AHV_COMPONENTIZE_PY";

/// Longest a build may take before the test fails naming it.
const BUILD_LIMIT: Duration = Duration::from_secs(150);

/// Longest each step of installing componentize-py (the virtual
/// environment, the download from PyPI) may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(240);

/// Longest a test waits for another one installing componentize-py: all of
/// the installer's steps (two version checks, the venv, pip) and a margin.
const INSTALL_WAIT: Duration = Duration::from_secs(2 * 30 + 2 * 240 + 30);

/// Longest a test waits for another one building and compiling an agent: a
/// build and a compile under load; within nextest's 16 minutes for these tests.
const BUILD_WAIT: Duration = Duration::from_secs(420);

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The componentize-py binary and its `--version` line. `AHV_COMPONENTIZE_PY`
/// names one to use as it is; otherwise the tests install the pinned
/// release from PyPI into a virtual environment of their own under the
/// target directory, once (one test installs, the others wait for it), so
/// the README's test command needs no manual step. Fails the test, naming
/// what is missing, when that cannot be done.
pub(crate) fn componentize_py() -> (PathBuf, String) {
    if let Some(bin) = std::env::var_os(COMPONENTIZE_PY_ENV).map(PathBuf::from) {
        return match version_of(&bin) {
            Ok(version) => (bin, version),
            Err(why) => panic!("{COMPONENTIZE_PY_ENV}={}: {why}", bin.display()),
        };
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let bin = venv.join("bin/componentize-py");
    if let Ok(version) = version_of(&bin) {
        return (bin, version);
    }
    std::fs::create_dir_all(venv.parent().expect("the target directory")).unwrap();
    let _lock = lock(
        &venv.with_file_name(format!("componentize-py-{COMPONENTIZE_PY_VERSION}.lock")),
        INSTALL_WAIT,
        "another test installing componentize-py",
    );
    if let Ok(version) = version_of(&bin) {
        return (bin, version);
    }
    let step = |cmd: &mut Command, what: &str, hint: &str| {
        let (status, stdout, stderr) = run_bounded(cmd, INSTALL_LIMIT, what)
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}. {hint}"));
        assert!(
            status.success(),
            "{what} failed ({status}). {hint}\n{stdout}\n{stderr}"
        );
    };
    let _ = std::fs::remove_dir_all(&venv);
    step(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv (for componentize-py)",
        "Python agents are built with componentize-py, installed into a virtual environment: \
         this needs python3 with its venv module (Debian: `apt-get install python3-venv`)",
    );
    step(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}")),
        &format!("pip install componentize-py=={COMPONENTIZE_PY_VERSION}"),
        "it comes from PyPI; set AHV_COMPONENTIZE_PY to an installed one to skip the download",
    );
    match version_of(&bin) {
        Ok(version) => (bin, version),
        Err(why) => panic!(
            "the componentize-py just installed in {}: {why}",
            venv.display()
        ),
    }
}

/// `bin --version`, if it is the pinned release.
fn version_of(bin: &Path) -> Result<String, String> {
    let (status, stdout, _) = run_bounded(
        Command::new(bin).arg("--version"),
        Duration::from_secs(30),
        "componentize-py --version",
    )
    .map_err(|e| format!("cannot run it: {e}"))?;
    let version = stdout.trim().to_string();
    if status.success() && version.ends_with(COMPONENTIZE_PY_VERSION) {
        Ok(version)
    } else {
        Err(format!(
            "--version says {version:?} ({status}); these agents need componentize-py {COMPONENTIZE_PY_VERSION}"
        ))
    }
}

/// Runs `cmd` to its end, its output read on threads (a chatty child
/// cannot block on a full pipe), for at most `limit`: past it the child is
/// killed and the test fails naming `what`. Returns the exit status, stdout
/// and stderr; an error only if the command cannot be started.
pub(crate) fn run_bounded(
    cmd: &mut Command,
    limit: Duration,
    what: &str,
) -> std::io::Result<(std::process::ExitStatus, String, String)> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((status, stdout.join().unwrap(), stderr.join().unwrap()))
}

/// Every file of `dir`, recursively, as (path relative to `dir`, bytes), sorted.
pub(crate) fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The component of the Python agent `example-agents/python/<name>/app.py`
/// for `world`: built on first use, then taken from
/// `<target>/tmp/python-agents/<name>-<world>-<hash>.wasm`.
pub fn python_agent(name: &str, world: &str) -> Vec<u8> {
    let (bin, version) = componentize_py();
    let source = repo().join("example-agents/python").join(name);
    let wit = repo().join("wit");
    let app = std::fs::read(source.join("app.py"))
        .unwrap_or_else(|e| panic!("{}/app.py: {e}", source.display()));
    let sdk = sdk_sources();
    let mut h = Sha256::new();
    for part in [version.as_bytes(), world.as_bytes(), app.as_slice()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for (tree, files) in [("wit", files_of(&wit)), ("sdk", sdk.clone())] {
        for (path, bytes) in files {
            for part in [tree.as_bytes(), path.as_bytes(), bytes.as_slice()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
    }
    let hash = hex::encode(h.finalize());
    cached_agent("Python", name, world, &hash, |out| {
        build(&bin, name, world, &wit, &app, &sdk, out)
    })
}

/// The component of the `language` agent `name` for `world` whose inputs
/// hash to `hash`: from `<target>/tmp/<language>-agents/` when an earlier
/// test built and compiled it, else built by `build` (given where to store
/// it) and compiled into the tests' cache, once across concurrent tests.
pub(crate) fn cached_agent(
    language: &str,
    name: &str,
    world: &str,
    hash: &str,
    build: impl FnOnce(&Path) -> Vec<u8>,
) -> Vec<u8> {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-agents", language.to_lowercase()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{name}-{world}-{}.wasm", &hash[..16]));
    let compiled = out.with_extension("compiled");
    if compiled.is_file()
        && let Ok(bytes) = std::fs::read(&out)
    {
        return bytes;
    }
    // One process builds and compiles; tests started together (nextest runs
    // each in its own process) wait for it instead of doing it too.
    let _lock = lock(
        &out_dir.join(format!("{name}-{world}.lock")),
        BUILD_WAIT,
        &format!("another test building the {language} agent {name}"),
    );
    let bytes = match std::fs::read(&out) {
        Ok(bytes) => bytes,
        Err(_) => build(&out),
    };
    if !compiled.is_file() {
        // Fill the compiled-component cache the tests' runtimes use
        // (compiling a 12-18 MB component takes the longest).
        let started = Instant::now();
        if let Err(e) = Harness::new(&cache_dir()).runtime.load(&bytes) {
            panic!("the {language} agent {name} is not admitted: {e}");
        }
        eprintln!(
            "compiled the {language} agent {name} in {:?}",
            started.elapsed()
        );
        std::fs::write(&compiled, b"").unwrap();
    }
    bytes
}

/// An exclusive lock on `path`, held until the file is dropped; waits at
/// most `limit`, then fails the test naming what it waited for.
pub(crate) fn lock(path: &Path, limit: Duration, what: &str) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = Instant::now();
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return file,
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => panic!("cannot lock {}: {e}", path.display()),
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what} (lock {})",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The SDK package `ahv` (`example-agents/python/sdk/ahv`): its Python
/// sources as (path relative to the package, bytes), sorted; bytecode
/// caches and other files left out.
fn sdk_sources() -> Vec<(String, Vec<u8>)> {
    let sdk = files_of(&repo().join("example-agents/python/sdk/ahv"));
    let sources: Vec<_> = sdk
        .into_iter()
        .filter(|(path, _)| path.ends_with(".py") && !path.contains("__pycache__"))
        .collect();
    assert!(
        sources.iter().any(|(path, _)| path == "__init__.py"),
        "the Python SDK has no __init__.py"
    );
    sources
}

/// Builds `app` (the source of the Python agent `name`) with the SDK's
/// `sdk` sources for `world` with componentize-py and stores the component
/// at `out`.
fn build(
    bin: &Path,
    name: &str,
    world: &str,
    wit: &Path,
    app: &[u8],
    sdk: &[(String, Vec<u8>)],
    out: &Path,
) -> Vec<u8> {
    // Build from a copy of the sources alone, so that nothing but what was
    // hashed goes in (and nothing is written beside the sources).
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("app.py"), app).unwrap();
    for (path, bytes) in sdk {
        let to = work.path().join("ahv").join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
    let built = work.path().join("agent.wasm");
    let (status, stdout, stderr) = run_bounded(
        Command::new(bin)
            .current_dir(work.path())
            .env_remove("VIRTUAL_ENV")
            .arg("-d")
            .arg(wit)
            .args(["-w", world, "componentize", "app", "-p", ".", "-o"])
            .arg(&built),
        BUILD_LIMIT,
        &format!("componentize-py to build the Python agent {name}"),
    )
    .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    assert!(
        status.success(),
        "componentize-py failed to build the Python agent {name} ({status}):\n{stdout}\n{stderr}"
    );
    let bytes = std::fs::read(&built).unwrap();
    // Write under another name, then rename: a reader never sees a partial file.
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, out).unwrap();
    bytes
}

pub mod hello {
    use super::*;

    fn component() -> Vec<u8> {
        python_agent("hello", "sandbox")
    }

    /// A componentize-py component imports `wasi:sockets` (always) and needs
    /// 14 core instances, 1 memory, 2 tables and ~12.3 MiB: admitted, and
    /// run in ring 3 with the default budgets.
    #[tokio::test]
    async fn is_admitted_and_greets_and_logs_in_the_sandbox_ring() {
        let bytes = component();
        let h = Harness::new(&cache_dir());
        // `load`, not `inspect`: inspecting compiles the 18 MB component
        // afresh, loading takes it from the cache.
        let loaded = h.runtime.load(&bytes).unwrap();
        let manifest = loaded.manifest();
        assert_eq!(manifest.refused().count(), 0, "{manifest:?}");
        assert!(
            manifest
                .imports
                .iter()
                .any(|i| i.kind == ahv_runtime::ImportKind::WasiDenied),
            "componentize-py imports wasi:sockets: {manifest:?}"
        );
        assert_eq!(manifest.lowest_ring, Some(Ring::Sandbox));
        let sb = Sandbox::new();
        let mut a = h
            .spawn(&bytes, "did:test:py-hello", Ring::Sandbox, &sb)
            .await;
        for (input, name) in [("Ada", "Ada"), ("  ", "world")] {
            let out = a.run(input).await.unwrap();
            assert_eq!(
                out.result.as_deref(),
                Ok(
                    format!("Hello, {name}! (agent did:test:py-hello, ring 3, from Python)")
                        .as_str()
                )
            );
            let logs: Vec<_> = out
                .logs
                .iter()
                .map(|l| (l.source, l.message.as_str()))
                .collect();
            let greeting = format!("greeting {name} from did:test:py-hello in ring 3");
            assert!(
                logs.contains(&(LogSource::Log, greeting.as_str())),
                "{logs:?}"
            );
            assert!(
                logs.contains(&(LogSource::Stdout, "hello.py says hi on stdout")),
                "{logs:?}"
            );
        }
        assert!(h.breaches().is_empty(), "{:?}", h.breaches());
    }

    /// Its linear memory is mapped copy-on-write from its module's image:
    /// the interpreter's heap snapshot is dense enough (12.1 MB of data over
    /// 12.9 MB) for Wasmtime to build one. A toolchain upgrade that made it
    /// sparse would silently bring back copying it into every instance
    /// (6.2 ms to instantiate instead of 0.6, README "Performance").
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn its_memory_is_mapped_from_its_module_s_image() {
        let h = Harness::new(&cache_dir());
        ahv_tests::assert_memory_mapped_from_image(
            &h,
            &component(),
            "did:test:py-image",
            8 << 20,
            "Python",
        )
        .await;
    }

    /// The ring's budgets are what decide whether a Python agent fits: one
    /// core instance fewer than it needs, or less memory than its
    /// interpreter's ~12.3 MiB, and it cannot be instantiated (a typed cause
    /// naming the limit, not a host error).
    #[tokio::test]
    async fn the_ring_s_instance_and_memory_budgets_decide_whether_it_fits() {
        let bytes = component();
        let spawn_in = |limits: RingLimits| {
            let bytes = bytes.clone();
            async move {
                let policy = RingPolicy::default()
                    .with_limits(Ring::Sandbox, limits)
                    .unwrap();
                let h = Harness::with_policy(&cache_dir(), policy);
                let component = h.runtime.load(&bytes).unwrap();
                let sb = Sandbox::new();
                let spec = AgentSpec::new(
                    ahv_core::AgentId::new("did:test:py-tight").unwrap(),
                    Ring::Sandbox,
                    sb.vfs.clone(),
                );
                let mut a = h.runtime.spawn(&component, spec).await?;
                a.run("x").await.map(|_| ())
            }
        };
        let fits = RingLimits::default_for(Ring::Sandbox);
        spawn_in(fits.clone()).await.unwrap();

        let mut instances = fits.clone();
        instances.max_core_instances = 13;
        let e = spawn_in(instances).await.unwrap_err();
        assert!(
            matches!(
                e.cause(),
                Some(TrapCause::InstanceLimit {
                    what: "core instance",
                    limit: 13,
                    ..
                })
            ),
            "{e}"
        );

        let mut memory = fits.clone();
        memory.memory_bytes = 12 << 20;
        let e = spawn_in(memory).await.unwrap_err();
        assert!(
            matches!(e.cause(), Some(TrapCause::MemoryLimit(m)) if m.limit == 12 << 20),
            "{e}"
        );
    }
}

pub mod sdk {
    use super::*;

    /// The SDK's own tests under plain CPython against fake bindings (no
    /// Wasm): every WIT error case's exception, `state.update`'s
    /// compare-and-set loop (a lost race retried, a snapshot stopping at
    /// once, giving up after 16 attempts, other errors at once), the lock
    /// guard (released on every way out, never a lock held before), an
    /// interface the world lacks as `NotInWorld`, and `@agent` turning every
    /// exception into the `err` message with the JSON convention.
    #[test]
    fn unit_tests_pass_under_cpython() {
        let dir = repo().join("example-agents/python/sdk");
        let (status, stdout, stderr) = run_bounded(
            Command::new("python3")
                .current_dir(&dir)
                .args(["-B", "-m", "unittest", "discover", "-v", "-s", "tests"]),
            Duration::from_secs(120),
            "the Python SDK's unit tests",
        )
        .unwrap_or_else(|e| panic!("cannot start python3: {e}"));
        assert!(
            status.success(),
            "the Python SDK's unit tests failed ({status}):\n{stdout}\n{stderr}"
        );
        let ran = stderr
            .lines()
            .find_map(|l| {
                l.strip_prefix("Ran ")?
                    .split(' ')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap_or(0);
        assert!(ran >= 18, "only {ran} tests ran:\n{stderr}");
    }
}

pub mod tally {
    use super::*;
    use crate::sessions::{Hv, id, ok};
    use ahv_core::Capability;
    use ahv_core::event::{EventKind, EventPayload, EventQuery};
    use ahv_hypervisor::HypervisorError;
    use ahv_runtime::AgentError;
    use serde_json::{Value, json};

    fn component() -> Vec<u8> {
        python_agent("tally", "standard")
    }

    /// How many ring breaches the session recorded.
    fn breaches(h: &Hv, s: &ahv_core::SessionId) -> usize {
        h.hv.events()
            .query(
                &EventQuery::default()
                    .session(s.clone())
                    .kind(EventKind::RingBreachDetected),
            )
            .len()
    }

    /// The Python agent's JSON answer to `input`, failing the test on a
    /// trap or an `err`.
    async fn answer(h: &Hv, s: &ahv_core::SessionId, agent: &str, input: Value) -> Value {
        let out =
            h.hv.run_agent(s, &id(agent), &input.to_string())
                .await
                .unwrap_or_else(|e| panic!("{agent} trapped: {e}"));
        let text = out.result.unwrap_or_else(|e| panic!("{agent} failed: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{agent}'s answer {text:?}: {e}"))
    }

    /// The Python participant and a Rust agent in one shared session: the
    /// Python agent reads the file the Rust agent wrote, adds to the counter
    /// the Rust agent started (compare-and-set on its version), records its
    /// runs in a shared file under a write lock and answers JSON; the Rust
    /// agent then sees the counter and the file, and takes the lock at once
    /// (the SDK's guard released it).
    #[tokio::test]
    async fn shares_a_session_with_a_rust_agent_state_locks_and_files() {
        let wasm = component();
        let h = Hv::new();
        let s = h.session();
        let (rust, py) = ("did:test:rust", "did:test:py-tally");
        assert_eq!(
            h.join(&s, rust, 0.8, ahv_agents::SCRIPTED).await,
            Ring::Standard
        );
        assert_eq!(h.join(&s, py, 0.8, &wasm).await, Ring::Standard);
        h.hv.activate_session(&s).unwrap();

        let out = h
            .script(&s, rust, "write shared/brief.txt from rust\nput tally 10")
            .await;
        assert_eq!(ok(&out, "put tally 10"), "v1", "{out}");

        let got = answer(
            &h,
            &s,
            py,
            json!({"by": 2, "times": 3, "read": "shared/brief.txt"}),
        )
        .await;
        assert_eq!(
            got,
            json!({
                "agent": py, "ring": 2, "read": "from rust",
                "counter": 16, "version": 4, "attempts": 3,
                "runs": 1, "ledger": {py: {"runs": 1, "added": 6}},
            })
        );

        let out = h
            .script(
                &s,
                rust,
                "get tally\nread shared/tally.json\nlock path:shared/tally.json write 0",
            )
            .await;
        assert!(
            ok(&out, "get tally").starts_with(&format!("v4 16 by {py}")),
            "{out}"
        );
        assert_eq!(
            ok(&out, "read shared/tally.json"),
            format!(r#"{{"{py}":{{"runs":1,"added":6}}}}"#),
            "{out}"
        );
        ok(&out, "lock path:shared/tally.json write 0");
        assert_eq!(breaches(&h, &s), 0);
    }

    /// Several Python instances run `state.update` on one key at the same
    /// time (two guests run wasm at once): no increment is lost, every run
    /// succeeds, and the ledger each changes under the lock keeps every
    /// instance's entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_instances_lose_no_increment() {
        let wasm = component();
        let h = Hv::new();
        let s = h.session();
        let agents: Vec<String> = (0..3).map(|i| format!("did:test:py{i}")).collect();
        for a in &agents {
            assert_eq!(h.join(&s, a, 0.8, &wasm).await, Ring::Standard);
        }
        h.hv.activate_session(&s).unwrap();
        let times = 8;
        let mut tasks = tokio::task::JoinSet::new();
        for a in agents.clone() {
            let (hv, s) = (h.hv.clone(), s.clone());
            let input = json!({ "times": times }).to_string();
            tasks.spawn(async move { (a.clone(), hv.run_agent(&s, &id(&a), &input).await) });
        }
        // Each call is bounded by its ring's deadline; this bounds the lot.
        let all = tokio::time::timeout(Duration::from_secs(300), async {
            let mut all = Vec::new();
            while let Some(done) = tasks.join_next().await {
                all.push(done.expect("a run task panicked"));
            }
            all
        })
        .await
        .expect("three Python agents incrementing a counter did not finish within 300 s");
        let mut attempts = 0;
        for (a, out) in all {
            let text = out
                .unwrap_or_else(|e| panic!("{a} trapped: {e}"))
                .result
                .unwrap_or_else(|e| panic!("{a} failed: {e}"));
            let got: Value = serde_json::from_str(&text).unwrap();
            attempts += got["attempts"].as_u64().unwrap();
        }
        let total = 3 * times;
        eprintln!("{total} increments took {attempts} attempts");
        let core = h.hv.session_core(&s).unwrap();
        let counter = core.state().peek("tally").expect("the counter was written");
        assert_eq!(
            (counter.value.as_slice(), counter.version),
            (total.to_string().as_bytes(), total),
            "no increment may be lost"
        );
        let ledger: Value = serde_json::from_slice(
            &std::fs::read(h.dir(&s).join("files/shared/tally.json")).unwrap(),
        )
        .unwrap();
        let expected: serde_json::Map<String, Value> = agents
            .iter()
            .map(|a| (a.clone(), json!({"runs": 1, "added": times})))
            .collect();
        assert_eq!(
            ledger,
            Value::Object(expected),
            "the lock keeps every entry"
        );
    }

    /// An exception the agent does not catch (a bad `by`) and input that is
    /// not JSON are the run's `err` value, not a trap: the traceback is in
    /// the log and the same instance answers the next call. A missing file
    /// arrives as `ahv.NotFound`, which the agent catches and reports.
    #[tokio::test]
    async fn an_uncaught_exception_is_the_err_value_and_a_missing_file_is_not_found() {
        let wasm = component();
        let h = Hv::new();
        let s = h.session();
        let py = "did:test:py-tally";
        h.join(&s, py, 0.8, &wasm).await;
        h.hv.activate_session(&s).unwrap();

        for (input, failure) in [
            (
                r#"{"by": "x"}"#,
                "ValueError: invalid literal for int() with base 10: 'x'",
            ),
            (
                "not json",
                "input is not the JSON expected: Expecting value: line 1 column 1 (char 0)",
            ),
        ] {
            let out =
                h.hv.run_agent(&s, &id(py), input)
                    .await
                    .unwrap_or_else(|e| panic!("{input}: trapped: {e}"));
            assert_eq!(out.result, Err(failure.to_string()), "{input}");
            if input.starts_with('{') {
                assert!(
                    out.logs
                        .iter()
                        .any(|l| l.message.starts_with("uncaught Traceback")
                            && l.message.contains("ValueError")),
                    "the traceback goes to the log: {:?}",
                    out.logs
                );
            }
        }

        // Values componentize-py's conversion would trap on are refused by
        // the SDK first: the run fails with a message, the instance lives.
        for (input, failure) in [
            (r#"{"read": 5}"#, "must be a str, not int"),
            (r#"{"read": null}"#, "must be a str, not NoneType"),
            (r#"{"read": "\ud800"}"#, "input is not the JSON expected"),
        ] {
            let out =
                h.hv.run_agent(&s, &id(py), input)
                    .await
                    .unwrap_or_else(|e| panic!("{input}: trapped: {e}"));
            let err = out.result.expect_err(input);
            assert!(err.contains(failure), "{input}: {err}");
        }

        let got = answer(&h, &s, py, json!({"read": "shared/none.txt"})).await;
        let missing = got["missing"].as_str().unwrap_or_default();
        assert!(
            missing.starts_with("not-found: ") && missing.contains("none.txt"),
            "{got}"
        );
        assert_eq!((&got["read"], &got["counter"]), (&Value::Null, &json!(1)));
        assert_eq!(breaches(&h, &s), 0);
    }

    /// The same source built for the `sandbox` world: the SDK imports (no
    /// bindings for `state-write` exist in it), the component needs only
    /// ring 3, and its state write is `not-in-world`, the run's `err` value:
    /// no import error at build or load, no trap, no breach.
    #[tokio::test]
    async fn built_for_sandbox_its_write_is_not_in_world_an_err_not_a_trap() {
        let wasm = python_agent("tally", "sandbox");
        let h = Hv::new();
        let manifest = h.hv.load(&wasm).unwrap().manifest().clone();
        assert_eq!(manifest.lowest_ring, Some(Ring::Sandbox), "{manifest:?}");
        let s = h.session();
        let py = "did:test:py-sandboxed";
        assert_eq!(h.join(&s, py, 0.3, &wasm).await, Ring::Sandbox);
        h.hv.activate_session(&s).unwrap();
        h.put_shared(&s, "brief.txt", "for everyone");

        let out =
            h.hv.run_agent(
                &s,
                &id(py),
                &json!({"read": "shared/brief.txt"}).to_string(),
            )
            .await
            .unwrap_or_else(|e| panic!("trapped: {e}"));
        assert_eq!(
            out.result,
            Err(
                "not-in-world: the world this agent was built for does not import \
                 state-write; build it against standard or a wider world"
                    .to_string()
            )
        );
        assert_eq!(breaches(&h, &s), 0);
        assert_eq!(
            h.hv.ring(&s, &id(py)).unwrap(),
            Ring::Sandbox,
            "still in the session"
        );
        let core = h.hv.session_core(&s).unwrap();
        assert!(core.state().peek("tally").is_none(), "nothing was written");
    }

    /// Admitted at ring 3 (σ 0.30), the same component reads (in its ring)
    /// but its first state write is a ring breach: recorded as an event,
    /// the instance trapped with the typed cause, the agent expelled, and
    /// nothing written.
    #[tokio::test]
    async fn at_ring_3_its_state_write_is_a_ring_breach_recorded_and_expelled() {
        let wasm = component();
        let h = Hv::new();
        let s = h.session();
        let py = "did:test:py-intruder";
        assert_eq!(h.join(&s, py, 0.3, &wasm).await, Ring::Sandbox);
        h.hv.activate_session(&s).unwrap();
        h.put_shared(&s, "brief.txt", "for everyone");

        let r =
            h.hv.run_agent(
                &s,
                &id(py),
                &json!({"read": "shared/brief.txt"}).to_string(),
            )
            .await;
        let b = match r {
            Err(HypervisorError::Agent(AgentError::Trapped {
                cause: TrapCause::RingBreach(b),
                ..
            })) => b,
            Err(e) => panic!("expected a ring breach, got {e}"),
            Ok(out) => panic!("expected a ring breach, got {:?}", out.result),
        };
        assert_eq!(
            (b.capability, b.function.as_str(), b.ring),
            (Capability::StateWrite, "put", Ring::Sandbox)
        );
        let ev = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::RingBreachDetected),
        );
        assert_eq!(ev.len(), 1, "the breach is recorded: {ev:?}");
        assert!(h.hv.ring(&s, &id(py)).is_err(), "the agent was expelled");
        let left = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::SessionLeft),
        );
        assert!(
            left.iter().any(|e| matches!(&e.payload, EventPayload::SessionLeft { reason } if reason.starts_with("expelled: ring breach"))),
            "{left:?}"
        );
        let core = h.hv.session_core(&s).unwrap();
        assert!(core.state().peek("tally").is_none(), "nothing was written");
    }
}
