//! Test support for the workspace integration tests: a runtime whose breaches
//! are collected, and an agent directory with a sentinel file beside it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ahv_core::{AgentId, Ring, RingPolicy};
use ahv_governance::actions::builtin;
use ahv_governance::vfs::{Vfs, VfsLimits};
use ahv_runtime::{Agent, AgentError, AgentSpec, RingBreach, RunOutput, Runtime, TrapCause};

/// The sentinel's content; a test fails if it ever changes.
pub const SENTINEL: &[u8] = b"outside the agent's directory: must never be read or changed\n";

/// A runtime plus everything it reported.
pub struct Harness {
    /// The runtime under test.
    pub runtime: Runtime,
    /// Every breach the runtime recorded, in order.
    pub breaches: Arc<Mutex<Vec<RingBreach>>>,
}

impl Harness {
    /// A runtime with `policy`, caching compiled components in `cache`.
    pub fn with_policy(cache: &Path, policy: RingPolicy) -> Harness {
        let breaches = Arc::new(Mutex::new(Vec::new()));
        let sink = breaches.clone();
        let runtime = Runtime::builder()
            .policy(policy)
            .cache_dir(cache)
            .max_instances(64)
            .on_breach(move |b: &RingBreach| sink.lock().unwrap().push(b.clone()))
            .build()
            .expect("runtime builds");
        Harness { runtime, breaches }
    }

    /// A runtime with the default ring table.
    pub fn new(cache: &Path) -> Harness {
        Harness::with_policy(cache, RingPolicy::default())
    }

    /// The breaches recorded so far.
    pub fn breaches(&self) -> Vec<RingBreach> {
        self.breaches.lock().unwrap().clone()
    }

    /// Spawns `bytes` as agent `id` in `ring` over `sandbox`'s directory, with the built-in actions.
    pub async fn spawn(&self, bytes: &[u8], id: &str, ring: Ring, sandbox: &Sandbox) -> Agent {
        let component = self.runtime.load(bytes).expect("component loads");
        let spec = AgentSpec::new(AgentId::new(id).unwrap(), ring, sandbox.vfs.clone())
            .actions(Arc::new(builtin::registry()));
        self.runtime
            .spawn(&component, spec)
            .await
            .expect("agent spawns")
    }
}

/// `outer/` holds `sentinel.txt` and `agent/`, the agent's directory.
pub struct Sandbox {
    /// Keeps the directory alive.
    pub tmp: tempfile::TempDir,
    /// The agent's directory.
    pub dir: PathBuf,
    /// The VFS over it.
    pub vfs: Arc<Vfs>,
}

impl Sandbox {
    /// A fresh sandbox.
    pub fn new() -> Sandbox {
        Sandbox::with_limits(VfsLimits::default())
    }

    /// A fresh sandbox whose VFS has these limits.
    pub fn with_limits(limits: VfsLimits) -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agent");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(tmp.path().join("sentinel.txt"), SENTINEL).unwrap();
        let handle =
            cap_std::fs::Dir::open_ambient_dir(&dir, cap_std::ambient_authority()).unwrap();
        Sandbox {
            tmp,
            dir,
            vfs: Arc::new(Vfs::new(handle, limits)),
        }
    }

    /// The directory that contains the agent's directory and the sentinel.
    pub fn outer(&self) -> &Path {
        self.tmp.path()
    }

    /// Every path under `outer/` except inside `agent/`, with its content
    /// (symlinks as `-> target`), sorted: what must not change.
    pub fn outside_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(p: &Path, skip: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for e in std::fs::read_dir(p).unwrap() {
                let path = e.unwrap().path();
                if path == skip {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    let t = std::fs::read_link(&path).unwrap();
                    out.push((path, format!("-> {}", t.display()).into_bytes()));
                } else if meta.is_dir() {
                    out.push((path.clone(), b"<dir>".to_vec()));
                    walk(&path, skip, out);
                } else {
                    out.push((path.clone(), std::fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.outer(), &self.dir, &mut out);
        out.sort();
        out
    }

    /// The sentinel's access time, to detect reads.
    pub fn sentinel_atime(&self) -> std::time::SystemTime {
        std::fs::metadata(self.outer().join("sentinel.txt"))
            .unwrap()
            .accessed()
            .unwrap()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

/// The answer of a call that must succeed.
pub fn answer(r: Result<RunOutput, AgentError>) -> String {
    match r {
        Ok(out) => out.result.unwrap_or_else(|e| panic!("agent failed: {e}")),
        Err(e) => panic!("call trapped: {e}"),
    }
}

/// The trap cause of a call that must trap.
pub fn trap(r: Result<RunOutput, AgentError>) -> TrapCause {
    match r {
        Ok(out) => panic!("expected a trap, got {:?}", out.result),
        Err(AgentError::Trapped { cause, .. }) => cause,
        Err(e) => panic!("expected a trap, got {e}"),
    }
}

/// Awaits `f` for at most `limit`; past it the test fails naming `what` it
/// waited for, instead of hanging the suite.
pub async fn within<T>(limit: std::time::Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `done` every millisecond (yielding to the runtime) for at most
/// `limit`; past it the test fails naming `what` it waited for.
pub async fn wait_until(limit: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Bytes of Wasmtime memory images (the sealed memfds linear memories are
/// mapped copy-on-write from) mapped into this process now, from
/// `/proc/self/maps`. Linux only.
#[cfg(target_os = "linux")]
pub fn memory_images_mapped() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.contains("memfd:wasm-memory-image"))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            Some(u64::from_str_radix(end, 16).ok()? - start)
        })
        .sum()
}

/// Spawns `bytes` in ring 3 (as `id`), calls it once, and fails unless at
/// least `min` bytes of memory images are then mapped into this process:
/// the agent's memory is mapped copy-on-write from its module's image, not
/// copied (nothing else in a test's process has an image that large).
#[cfg(target_os = "linux")]
pub async fn assert_memory_mapped_from_image(
    h: &Harness,
    bytes: &[u8],
    id: &str,
    min: u64,
    language: &str,
) {
    let sb = Sandbox::new();
    let mut a = h.spawn(bytes, id, Ring::Sandbox, &sb).await;
    let out = a.run("Ada").await.unwrap();
    assert!(out.result.is_ok(), "{:?}", out.result);
    let mapped = memory_images_mapped();
    assert!(
        mapped >= min,
        "{mapped} bytes of memory images mapped: the {language} agent's memory is copied"
    );
}
