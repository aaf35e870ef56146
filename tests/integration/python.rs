//! Python agents: built from `example-agents/python/<name>/app.py` with
//! componentize-py, then run under the real runtime.
//!
//! componentize-py (pinned: [`COMPONENTIZE_PY_VERSION`]) is installed by
//! the tests themselves from PyPI into a virtual environment under the
//! target directory (or `AHV_COMPONENTIZE_PY` names one); they fail, never
//! skip, when that cannot be done. Building takes ~20 s, so each built component is
//! kept under the target directory, named by a hash of everything that goes
//! into it (the agent's source, the WIT, the world, componentize-py's
//! version): a second run, or another test of the same agent, reuses it.

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
/// build and a compile under load; within nextest's 8 minutes for these tests.
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
fn componentize_py() -> (PathBuf, String) {
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
/// `<target>/tmp/python-agents/<name>-<hash>.wasm`.
pub fn python_agent(name: &str, world: &str) -> Vec<u8> {
    let (bin, version) = componentize_py();
    let source = repo().join("example-agents/python").join(name);
    let wit = repo().join("wit");
    let app = std::fs::read(source.join("app.py"))
        .unwrap_or_else(|e| panic!("{}/app.py: {e}", source.display()));
    let mut h = Sha256::new();
    for part in [version.as_bytes(), world.as_bytes(), app.as_slice()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for (path, bytes) in files_of(&wit) {
        for part in [path.as_bytes(), bytes.as_slice()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    let hash = hex::encode(h.finalize());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-agents");
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
        &format!("another test building the Python agent {name}"),
    );
    let bytes = match std::fs::read(&out) {
        Ok(bytes) => bytes,
        Err(_) => build(&bin, name, world, &wit, &app, &out),
    };
    if !compiled.is_file() {
        // Fill the compiled-component cache the tests' runtimes use
        // (compiling the 18 MB component takes the longest).
        if let Err(e) = Harness::new(&cache_dir()).runtime.load(&bytes) {
            panic!("the Python agent {name} is not admitted: {e}");
        }
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

/// Builds `app` (the source of the Python agent `name`) for `world` with
/// componentize-py and stores the component at `out`.
fn build(bin: &Path, name: &str, world: &str, wit: &Path, app: &[u8], out: &Path) -> Vec<u8> {
    // Build from a copy of the source alone, so that nothing but what was
    // hashed goes in (and nothing is written beside the source).
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("app.py"), app).unwrap();
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
