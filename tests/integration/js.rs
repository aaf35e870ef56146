//! JavaScript agents: built from `example-agents/js/<name>/agent.js` (and
//! the SDK in `example-agents/js/sdk/`) with componentize-js, then run under
//! the real runtime.
//!
//! componentize-js is pinned by `example-agents/js/package-lock.json`; the
//! tests install exactly that with `npm ci` into a directory under the
//! target directory (or `AHV_JS_NODE_MODULES` names an installed
//! `node_modules`); they fail, never skip, when that cannot be done.
//! Building takes 10–30 s, so each built component is kept under the target
//! directory, named by a hash of everything that goes into it (the agent,
//! the SDK, the build script, the lock file, the WIT, the world). Only two
//! components are built (a ~12 MB StarlingMonkey component takes up to a
//! minute to compile in a debug host): `hello` and `tally`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ahv_core::event::{EventKind, EventQuery};
use ahv_core::{Capability, Ring};
use ahv_hypervisor::HypervisorError;
use ahv_runtime::{AgentError, LogSource, TrapCause};
use ahv_tests::{Harness, Sandbox};
use sha2::{Digest, Sha256};

use crate::cache_dir;
use crate::python::{cached_agent, files_of, lock, repo, run_bounded};
use crate::sessions::{Hv, id, ok};

/// The componentize-js release the build script is written for; the lock
/// file pins it (and everything it needs), and the tests check it.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// The environment variable that names an installed `node_modules`.
const NODE_MODULES_ENV: &str = "AHV_JS_NODE_MODULES";

/// Longest a build may take before the test fails naming it.
const BUILD_LIMIT: Duration = Duration::from_secs(150);

/// Longest `npm ci` (a download of ~150 packages) may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(300);

/// Longest a test waits for another one installing the packages: the
/// version checks, `npm ci`, and a margin.
const INSTALL_WAIT: Duration = Duration::from_secs(2 * 30 + 300 + 30);

/// Longest the racing agents may take, all together.
const RACE_LIMIT: Duration = Duration::from_secs(240);

fn js_dir() -> PathBuf {
    repo().join("example-agents/js")
}

/// `node_modules` holding the pinned componentize-js. `AHV_JS_NODE_MODULES`
/// names one to use as it is; otherwise the tests run `npm ci` on the
/// repository's lock file into a directory of their own under the target
/// directory, once per lock file (one test installs, the others wait), so
/// the README's test command needs no manual step. Fails the test, naming
/// what is missing, when that cannot be done.
pub(crate) fn node_modules() -> PathBuf {
    if let Some(dir) = std::env::var_os(NODE_MODULES_ENV).map(PathBuf::from) {
        if let Err(why) = pinned(&dir) {
            panic!("{NODE_MODULES_ENV}={}: {why}", dir.display());
        }
        return dir;
    }
    let lockfile = std::fs::read(js_dir().join("package-lock.json")).unwrap();
    let hash = hex::encode(Sha256::digest(&lockfile));
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("js-node-{}", &hash[..16]));
    let dir = root.join("node_modules");
    let done = root.join("installed");
    if done.is_file() {
        return dir;
    }
    std::fs::create_dir_all(root.parent().expect("the target directory")).unwrap();
    let _lock = lock(
        &root.with_extension("lock"),
        INSTALL_WAIT,
        "another test installing componentize-js with npm",
    );
    if done.is_file() {
        return dir;
    }
    for (tool, what) in [("node", "node --version"), ("npm", "npm --version")] {
        let started = run_bounded(
            Command::new(tool).arg("--version"),
            Duration::from_secs(30),
            what,
        );
        let major = match &started {
            Ok((status, stdout, _)) if status.success() => stdout
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok()),
            _ => None,
        };
        let enough = match (tool, major) {
            ("node", Some(m)) => m >= 20,
            (_, m) => m.is_some(),
        };
        assert!(
            enough,
            "{what}: {started:?}. JavaScript agents are built with componentize-js, which needs \
             Node.js 20 or later and npm (Debian: `apt-get install nodejs npm`)"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(js_dir().join(f), root.join(f)).unwrap();
    }
    let (status, stdout, stderr) = run_bounded(
        Command::new("npm").current_dir(&root).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]),
        INSTALL_LIMIT,
        "npm ci (componentize-js for the JavaScript agents)",
    )
    .unwrap_or_else(|e| panic!("cannot start npm: {e}"));
    assert!(
        status.success(),
        "npm ci failed ({status}); it downloads from the npm registry: set {NODE_MODULES_ENV} to \
         an installed node_modules to skip the download\n{stdout}\n{stderr}"
    );
    if let Err(why) = pinned(&dir) {
        panic!(
            "the node_modules just installed in {}: {why}",
            root.display()
        );
    }
    std::fs::write(&done, b"").unwrap();
    dir
}

/// Whether `node_modules` holds the pinned componentize-js.
fn pinned(node_modules: &Path) -> Result<(), String> {
    let manifest = node_modules.join("@bytecodealliance/componentize-js/package.json");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("no componentize-js ({}: {e})", manifest.display()))?;
    let wanted = format!("\"version\": \"{COMPONENTIZE_JS_VERSION}\"");
    if text.contains(&wanted) {
        Ok(())
    } else {
        Err(format!(
            "its componentize-js is not {COMPONENTIZE_JS_VERSION} ({})",
            manifest.display()
        ))
    }
}

/// The component of the JavaScript agent `example-agents/js/<name>/agent.js`
/// for `world`: built on first use, then taken from
/// `<target>/tmp/javascript-agents/<name>-<world>-<hash>.wasm`.
pub fn js_agent(name: &str, world: &str) -> Vec<u8> {
    let modules = node_modules();
    let js = js_dir();
    // Everything that goes into the component, as (path, bytes).
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for f in ["build.mjs", "package-lock.json"] {
        inputs.push((f.to_string(), std::fs::read(js.join(f)).unwrap()));
    }
    for (dir, under) in [(js.join("sdk"), "sdk"), (js.join(name), name)] {
        for (path, bytes) in files_of(&dir) {
            inputs.push((format!("{under}/{path}"), bytes));
        }
    }
    let mut h = Sha256::new();
    for part in [world.as_bytes(), name.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let wit = repo().join("wit");
    for (path, bytes) in inputs.iter().cloned().chain(
        files_of(&wit)
            .into_iter()
            .map(|(p, b)| (format!("wit/{p}"), b)),
    ) {
        for part in [path.as_bytes(), bytes.as_slice()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    let hash = hex::encode(h.finalize());
    cached_agent("JavaScript", name, world, &hash, |out| {
        build(&modules, name, world, &wit, &inputs, out)
    })
}

/// Builds the agent `name` from `inputs` (the hashed files) with the
/// repository's build script and stores the component at `out`.
fn build(
    node_modules: &Path,
    name: &str,
    world: &str,
    wit: &Path,
    inputs: &[(String, Vec<u8>)],
    out: &Path,
) -> Vec<u8> {
    // Build from a copy of the hashed files alone, so that nothing but
    // what was hashed goes in (and nothing is written beside the sources).
    let work = tempfile::tempdir().unwrap();
    for (path, bytes) in inputs {
        let to = work.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
    std::os::unix::fs::symlink(node_modules, work.path().join("node_modules")).unwrap();
    let built = work.path().join("agent.wasm");
    let started = Instant::now();
    let (status, stdout, stderr) = run_bounded(
        Command::new("node")
            .current_dir(work.path())
            .arg("build.mjs")
            .arg(format!("{name}/agent.js"))
            .args(["--world", world, "-o"])
            .arg(&built)
            .arg("--wit")
            .arg(wit),
        BUILD_LIMIT,
        &format!("componentize-js to build the JavaScript agent {name}"),
    )
    .unwrap_or_else(|e| panic!("cannot start node: {e}"));
    assert!(
        status.success(),
        "componentize-js failed to build the JavaScript agent {name} ({status}):\n{stdout}\n{stderr}"
    );
    eprintln!("{} (wall {:?})", stdout.trim(), started.elapsed());
    let bytes = std::fs::read(&built).unwrap();
    // Write under another name, then rename: a reader never sees a partial file.
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, out).unwrap();
    bytes
}

/// The ring breach of a call that must be one.
fn breach_of(r: Result<ahv_runtime::RunOutput, HypervisorError>) -> ahv_runtime::RingBreach {
    match r {
        Err(HypervisorError::Agent(AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            ..
        })) => b,
        Err(e) => panic!("expected a ring breach, got {e}"),
        Ok(out) => panic!("expected a ring breach, got {:?}", out.result),
    }
}

pub mod hello {
    use super::*;

    /// A StarlingMonkey component built with `-d http fetch-event` imports
    /// only allowed WASI and the `sandbox` world: admitted at ring 3; it
    /// greets, its `log.info` and its `console.log` both reach the agent's
    /// log, and a missing `greeting.txt` is handled as an AhvError with code
    /// `not-found` (a file that is there is read instead).
    #[tokio::test]
    async fn greets_in_the_sandbox_ring_and_console_log_reaches_the_log() {
        let bytes = js_agent("hello", "sandbox");
        let h = Harness::new(&cache_dir());
        let started = Instant::now();
        let loaded = h.runtime.load(&bytes).unwrap();
        let load = started.elapsed();
        let manifest = loaded.manifest();
        assert_eq!(manifest.refused().count(), 0, "{manifest:?}");
        assert_eq!(manifest.lowest_ring, Some(Ring::Sandbox), "{manifest:?}");
        let sb = Sandbox::new();
        let started = Instant::now();
        let mut a = h
            .spawn(&bytes, "did:test:js-hello", Ring::Sandbox, &sb)
            .await;
        let spawn = started.elapsed();
        for (input, name) in [("Ada", "Ada"), ("  ", "world")] {
            let out = a.run(input).await.unwrap();
            eprintln!(
                "hello.js: load {load:?}, spawn {spawn:?}, run {:?}, fuel {}",
                out.elapsed, out.fuel_used
            );
            assert_eq!(
                out.result.as_deref(),
                Ok(
                    format!("Hello, {name}! (agent did:test:js-hello, ring 3, from JavaScript)")
                        .as_str()
                )
            );
            let logs: Vec<_> = out
                .logs
                .iter()
                .map(|l| (l.source, l.message.as_str()))
                .collect();
            let greeting = format!("greeting {name} from did:test:js-hello in ring 3");
            assert!(
                logs.contains(&(LogSource::Log, greeting.as_str())),
                "{logs:?}"
            );
            assert!(
                logs.contains(&(LogSource::Log, "no greeting.txt, using the default")),
                "the missing file must be handled by its code: {logs:?}"
            );
            assert!(
                logs.contains(&(LogSource::Stdout, "hello.js says hi on stdout")),
                "{logs:?}"
            );
        }
        std::fs::write(sb.dir.join("greeting.txt"), "Salut\n").unwrap();
        let out = a.run("Ada").await.unwrap();
        assert_eq!(
            out.result.as_deref(),
            Ok("Salut, Ada! (agent did:test:js-hello, ring 3, from JavaScript)")
        );
        assert!(h.breaches().is_empty(), "{:?}", h.breaches());
    }

    /// Its linear memory is mapped copy-on-write from its module's image.
    /// The image is sparse (2.8 MB of data over 8.5 MB): Wasmtime builds it
    /// only within its dense-image allowance, which the runtime keeps
    /// (`host/runtime/src/images.rs`); without it every instance would copy
    /// the data again (1.2 ms to instantiate instead of 0.03).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn its_memory_is_mapped_from_its_module_s_image() {
        let h = Harness::new(&cache_dir());
        ahv_tests::assert_memory_mapped_from_image(
            &h,
            &js_agent("hello", "sandbox"),
            "did:test:js-image",
            4 << 20,
            "JavaScript",
        )
        .await;
    }
}

pub mod tally {
    use super::*;

    fn component() -> Vec<u8> {
        js_agent("tally", "standard")
    }

    /// Runs `tally` with `input` and returns its JSON answer.
    async fn vote(h: &Hv, s: &ahv_core::SessionId, agent: &str, input: &str) -> serde_json::Value {
        let out = match h.hv.run_agent(s, &id(agent), input).await {
            Ok(out) => out,
            Err(e) => panic!("{agent} trapped on {input}: {e}"),
        };
        eprintln!(
            "tally.js {input}: run {:?}, fuel {}",
            out.elapsed, out.fuel_used
        );
        let answer = out
            .result
            .unwrap_or_else(|e| panic!("{agent} failed on {input}: {e}"));
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer}: {e}"))
    }

    /// A JS participant and a Rust one (`scripted`) in one shared session:
    /// the JS agent reads the ballot the Rust agent wrote (and, before it
    /// exists, handles the `not-found` AhvError by its code), counts its
    /// vote in shared state with the compare-and-set loop on top of what
    /// the Rust agent wrote there, and writes a file under a lock that the
    /// Rust agent then reads.
    #[tokio::test]
    async fn votes_beside_a_rust_agent_in_one_session() {
        let bytes = component();
        let h = Hv::new();
        let s = h.session();
        assert_eq!(
            h.join(&s, "did:test:js-tally", 0.8, &bytes).await,
            Ring::Standard
        );
        assert_eq!(
            h.join(&s, "did:test:rust", 0.8, ahv_agents::SCRIPTED).await,
            Ring::Standard
        );
        h.hv.activate_session(&s).unwrap();

        let a = vote(&h, &s, "did:test:js-tally", r#"{"vote":"yes"}"#).await;
        assert_eq!(a["question"], serde_json::Value::Null, "no ballot yet: {a}");
        assert_eq!(a["counts"], serde_json::json!({"yes": 1}), "{a}");
        assert_eq!(a["version"], 1, "{a}");
        assert_eq!(a["voter"], "did:test:js-tally", "{a}");

        // The Rust agent writes the ballot, reads the JS agent's file and
        // state, and adds votes of its own.
        let out = h
            .script(
                &s,
                "did:test:rust",
                "write shared/ballot.txt Lunch at noon?\nread shared/votes.log\nget tally\nput tally {\"yes\":1,\"no\":5}",
            )
            .await;
        assert_eq!(
            ok(&out, "read shared/votes.log"),
            "did:test:js-tally voted yes",
            "{out}"
        );
        assert_eq!(
            ok(&out, "get tally"),
            "v1 {\"yes\":1} by did:test:js-tally",
            "{out}"
        );
        assert_eq!(ok(&out, "put tally {\"yes\":1,\"no\":5}"), "v2", "{out}");

        let a = vote(&h, &s, "did:test:js-tally", r#"{"vote":"no"}"#).await;
        assert_eq!(a["question"], "Lunch at noon?", "{a}");
        assert_eq!(a["counts"], serde_json::json!({"yes": 1, "no": 6}), "{a}");
        assert_eq!(a["version"], 3, "{a}");
        // The JS agent read the log before writing it again: both lines.
        let out = h.script(&s, "did:test:rust", "read shared/votes.log").await;
        assert!(
            out.contains("did:test:js-tally voted yes\ndid:test:js-tally voted no"),
            "{out}"
        );
    }

    /// Several instances of the JS agent vote at the same time, on two
    /// threads: `state.updateJson` retries every lost compare-and-set, so no
    /// vote is lost, and the lock keeps every line of the shared log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_instances_lose_no_vote() {
        let bytes = component();
        let h = Hv::new();
        let s = h.session();
        let agents: Vec<String> = (0..6).map(|i| format!("did:test:js-voter{i}")).collect();
        for a in &agents {
            assert_eq!(h.join(&s, a, 0.8, &bytes).await, Ring::Standard);
        }
        h.hv.activate_session(&s).unwrap();
        let per_agent = 5;
        let mut tasks = tokio::task::JoinSet::new();
        for a in agents.clone() {
            let (hv, s) = (h.hv.clone(), s.clone());
            tasks.spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..per_agent {
                    let out = hv.run_agent(&s, &id(&a), r#"{"vote":"yes"}"#).await;
                    answers.push(out.map(|o| o.result));
                }
                (a, answers)
            });
        }
        let all = ahv_tests::within(RACE_LIMIT, "six JS agents voting at once", async {
            let mut all = Vec::new();
            while let Some(done) = tasks.join_next().await {
                all.push(done.expect("a voting task panicked"));
            }
            all
        })
        .await;
        for (a, answers) in all {
            for answer in answers {
                match answer {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("{a}: a vote failed: {e}"),
                    Err(e) => panic!("{a} trapped: {e}"),
                }
            }
        }
        let total = agents.len() * per_agent;
        let core = h.hv.session_core(&s).unwrap();
        let tally = core.state().peek("tally").expect("the tally was written");
        let counts: serde_json::Value = serde_json::from_slice(&tally.value).unwrap();
        assert_eq!(
            counts,
            serde_json::json!({"yes": total}),
            "no vote may be lost"
        );
        assert_eq!(tally.version, total as u64);
        let log = std::fs::read_to_string(h.dir(&s).join("files/shared/votes.log")).unwrap();
        assert_eq!(log.lines().count(), total, "{log}");
        // Whether a race was lost (and retried) depends on the interleaving;
        // shown, not asserted.
        let conflicts = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::StateConflict),
        );
        eprintln!(
            "{total} votes, {} compare-and-set conflicts retried",
            conflicts.len()
        );
    }

    /// Whatever `run` throws is its `err` answer, never a trap: invalid
    /// JSON input (`json.input`'s message), an `Error` of the agent's own,
    /// and an AhvError other than `not-found` (`invalid-path`, described
    /// like the Rust SDK's `describe`); the instance keeps working.
    #[tokio::test]
    async fn anything_thrown_is_the_err_answer_not_a_trap() {
        let bytes = component();
        let h = Hv::new();
        let s = h.session();
        h.join(&s, "did:test:js-tally", 0.8, &bytes).await;
        h.hv.activate_session(&s).unwrap();
        let failure = |input: &'static str| {
            let (hv, s) = (h.hv.clone(), s.clone());
            async move {
                match hv.run_agent(&s, &id("did:test:js-tally"), input).await {
                    Ok(out) => out.result.expect_err(input),
                    Err(e) => panic!("{input} trapped: {e}"),
                }
            }
        };
        let e = failure("not json").await;
        assert!(e.starts_with("input is not the JSON expected: "), "{e}");
        let e = failure(r#"{"vote":3}"#).await;
        assert_eq!(e, "\"vote\" must be a non-empty string, got 3");
        let e = failure(r#"{"vote":"yes","ballot":"../outside.txt"}"#).await;
        assert!(e.starts_with("invalid-path: "), "{e}");
        let a = vote(&h, &s, "did:test:js-tally", r#"{"vote":"yes"}"#).await;
        assert_eq!(a["counts"], serde_json::json!({"yes": 1}), "{a}");
        assert!(
            h.kinds(&s)
                .iter()
                .all(|k| *k != EventKind::RingBreachDetected),
            "no breach"
        );
    }

    /// Hostile: the same component admitted at ring 3 (a low score) reads
    /// within its ring, but its first shared-state write is a ring breach:
    /// the call traps with a typed `RingBreach` naming `state-write.put`,
    /// the breach is recorded as an event, the agent is expelled and the
    /// state is unchanged.
    #[tokio::test]
    async fn admitted_at_ring_3_its_state_write_is_a_recorded_ring_breach() {
        let bytes = component();
        let h = Hv::new();
        let s = h.session();
        assert_eq!(
            h.join(&s, "did:test:js-low", 0.3, &bytes).await,
            Ring::Sandbox
        );
        h.hv.activate_session(&s).unwrap();
        let b = breach_of(
            h.hv.run_agent(&s, &id("did:test:js-low"), r#"{"vote":"yes"}"#)
                .await,
        );
        assert_eq!(
            (b.capability, b.function.as_str(), b.ring),
            (Capability::StateWrite, "put", Ring::Sandbox)
        );
        let recorded = h.hv.events().query(
            &EventQuery::default()
                .session(s.clone())
                .kind(EventKind::RingBreachDetected),
        );
        assert_eq!(recorded.len(), 1, "the breach is recorded: {recorded:?}");
        assert!(h.hv.ring(&s, &id("did:test:js-low")).is_err(), "expelled");
        let core = h.hv.session_core(&s).unwrap();
        assert!(core.state().peek("tally").is_none());
    }
}
