//! Loading components: admission (the imports are the capability manifest),
//! the on-disk cache of compiled components, and `inspect`.
//!
//! `admit` is the one admission check: [`crate::Runtime::load`] runs it
//! before any agent can be spawned, and `ahv inspect` reports its verdict, so
//! a component `inspect` calls admissible is one `run` accepts.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ahv_core::{
    Capability, CapabilitySet, Ring, RingPolicy, TYPE_ONLY_INTERFACES, WIT_PACKAGE, WIT_VERSION,
};
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};

use crate::bindings::RootPre;
use crate::bindings::saga::GuestIndices as SagaIndices;

use crate::state::AgentState;

/// The export name of the `saga-participant` interface: a component that
/// exports it can run saga steps ([`AgentComponent::saga_participant`]).
pub const SAGA_PARTICIPANT: &str = "agent-hypervisor:agent/saga-participant@0.1.0";

/// WASI p2 interfaces an agent may import. They are linked with a context that
/// grants nothing (no preopens, environment, arguments or network), so they
/// only give the guest `std` basics: clocks, randomness, stdout/stderr into its
/// log, and a file system with no directories in it.
pub const WASI_ALLOWED: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    // Building requests and reading responses: grants nothing by itself;
    // sending is `wasi:http/outgoing-handler`, the `net` capability.
    "wasi:http/types",
];

/// The WASI interface that is the `net` capability ([`Capability::Net`]):
/// any `0.2.x` import of it is that capability.
pub const WASI_NET: &str = "wasi:http/outgoing-handler";

/// WASI p2 interfaces a component may import although no ring grants what
/// they do: toolchains import them whatever the agent does
/// (componentize-py 0.25 always imports all seven; a Rust agent that names
/// `std::net` does too). They are linked, and the WASI context denies every
/// use: creating a TCP or UDP socket answers `access-denied`, a name lookup
/// a resolver failure, and no address passes its check
/// (`crate::state::AgentState::new`). So importing one is neither an
/// admission failure nor a breach; using one gets an error value the guest
/// sees, never a connection.
pub const WASI_DENIED: &[&str] = &[
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// What one import of a component is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportKind {
    /// One of our capabilities.
    Capability(Capability),
    /// One of our type-only interfaces (grants nothing).
    Types,
    /// A WASI interface from the allowed subset.
    Wasi,
    /// A WASI interface that is linked but denies every use
    /// ([`WASI_DENIED`]: the network); its calls return errors.
    WasiDenied,
    /// Anything else: the component is refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// One import of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The full import name (`agent-hypervisor:agent/vfs-write@0.1.0`).
    pub name: String,
    /// What it is.
    pub kind: ImportKind,
}

/// A component's capability manifest: what it imports and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Every import, in the component's order.
    pub imports: Vec<Import>,
    /// Every export name.
    pub exports: Vec<String>,
    /// The capabilities it imports.
    pub capabilities: CapabilitySet,
    /// The least privileged ring that has all of them (`None` if none does).
    pub lowest_ring: Option<Ring>,
}

impl Manifest {
    /// The imports that make the component inadmissible.
    pub fn refused(&self) -> impl Iterator<Item = (&str, &str)> {
        self.imports.iter().filter_map(|i| match &i.kind {
            ImportKind::Refused { reason } => Some((i.name.as_str(), reason.as_str())),
            _ => None,
        })
    }
}

/// Why a component could not be loaded or admitted.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The bytes are not a valid component for this engine.
    #[error("not a valid WebAssembly component: {message}")]
    Invalid {
        /// Wasmtime's description.
        message: String,
    },
    /// An import outside the contract and the allowed WASI subset.
    #[error("refused import {name}: {reason}")]
    RefusedImport {
        /// The import name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The component imports a function of one of our interfaces that the
    /// contract does not define, or with another type than the contract's.
    #[error("import {import} does not match the contract: {message}")]
    Contract {
        /// The import (interface, or interface and function).
        import: String,
        /// What is wrong.
        message: String,
    },
    /// The component's imports of the contract's functions have other types
    /// than the contract's (found by linking against it).
    #[error("the component's imports do not have the contract's types: {message}")]
    ContractTypes {
        /// Wasmtime's description, naming the import and the mismatch.
        message: String,
    },
    /// The component does not export `run: func(input: string) -> result<string, string>`.
    #[error(
        "the component does not export `run: func(input: string) -> result<string, string>`: {message}"
    )]
    MissingRun {
        /// What was found instead.
        message: String,
    },
    /// The component exports `saga-participant`, but not with the contract's shape.
    #[error("the component's `{SAGA_PARTICIPANT}` export does not match the contract: {message}")]
    SagaExport {
        /// What is wrong (the function and the types found).
        message: String,
    },
    /// Strict admission: the ring given is less privileged than the imports need.
    #[error(
        "strict admission: the component imports {capability}, which {given} lacks (it needs {needed})"
    )]
    RingTooLow {
        /// A capability the ring lacks.
        capability: Capability,
        /// The ring asked for.
        given: Ring,
        /// The lowest ring that covers the imports.
        needed: String,
    },
    /// The on-disk cache could not be used.
    #[error("component cache {path}: {message}")]
    Cache {
        /// The cache path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The host could not make the component's memory images (the
    /// copy-on-write sources of its instances' linear memories): out of
    /// memory or file descriptors.
    #[error("cannot make the component's memory images: {message}")]
    Image {
        /// Wasmtime's description.
        message: String,
    },
    /// Linking against a ring failed (a host bug, or an import type mismatch).
    #[error("cannot link the component in {ring}: {message}")]
    Link {
        /// The ring.
        ring: Ring,
        /// Wasmtime's description.
        message: String,
    },
}

/// Classifies one import name.
pub fn classify_import(name: &str) -> ImportKind {
    let refused = |reason: &str| ImportKind::Refused {
        reason: reason.to_string(),
    };
    let Some((path, version)) = name.split_once('@') else {
        return refused("unversioned import; only versioned WIT interfaces are allowed");
    };
    let Some((package, iface)) = path.split_once('/') else {
        return refused("not an interface import");
    };
    if package == WIT_PACKAGE {
        if version != WIT_VERSION {
            return refused(&format!(
                "this host implements {WIT_PACKAGE}@{WIT_VERSION}, not @{version}"
            ));
        }
        if TYPE_ONLY_INTERFACES.contains(&iface) {
            return ImportKind::Types;
        }
        return match Capability::from_interface(iface) {
            Some(c) => ImportKind::Capability(c),
            None => refused("no such capability in the contract"),
        };
    }
    if package.starts_with("wasi:") {
        if !version.starts_with("0.2.") {
            return refused("only WASI 0.2.x is provided");
        }
        if WASI_ALLOWED.contains(&path) {
            return ImportKind::Wasi;
        }
        if WASI_DENIED.contains(&path) {
            return ImportKind::WasiDenied;
        }
        if path == WASI_NET {
            return ImportKind::Capability(Capability::Net);
        }
        if package == "wasi:sockets" || package == "wasi:http" {
            return refused(
                "this network interface is not provided (outbound HTTP is wasi:http/outgoing-handler, the `net` capability)",
            );
        }
        return refused("this WASI interface is not provided");
    }
    refused("not part of the agent contract")
}

/// Reads a component's imports and exports.
pub fn manifest(engine: &Engine, component: &Component, policy: &RingPolicy) -> Manifest {
    let ty = component.component_type();
    let imports: Vec<Import> = ty
        .imports(engine)
        .map(|(name, _)| Import {
            name: name.to_string(),
            kind: classify_import(name),
        })
        .collect();
    let exports = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let capabilities = imports
        .iter()
        .filter_map(|i| match i.kind {
            ImportKind::Capability(c) => Some(c),
            _ => None,
        })
        .collect();
    Manifest {
        imports,
        exports,
        capabilities,
        lowest_ring: policy.lowest_ring_covering(capabilities),
    }
}

/// Admission: the checks a component must pass before any agent runs it, in
/// any ring. In order, each naming what it refuses:
///
/// 1. every import is one of our interfaces at our version, an allowed WASI
///    interface, or a WASI interface linked to deny every use (the network,
///    [`WASI_DENIED`]) ([`classify_import`]);
/// 2. every function imported from one of our capabilities is one the
///    contract defines (a function the contract lacks would otherwise be
///    refused only by the linker, in every ring);
/// 3. `run` is exported with the contract's type;
/// 4. if it exports `saga-participant`, that interface has exactly the
///    contract's `execute` and `compensate` ([`LoadError::SagaExport`]);
/// 5. it links against `contract`, the linker of the most privileged ring,
///    where every capability that ring grants is a typed adapter: an import
///    with another type than the contract's is refused here even if the agent
///    will run in a ring where it would have been a breach stub.
///
/// Returns the manifest, the pre-instantiated component for `contract`'s
/// ring and, for a saga participant, the indices of its saga hooks.
///
/// # Errors
/// [`LoadError::RefusedImport`], [`LoadError::Contract`],
/// [`LoadError::MissingRun`], [`LoadError::SagaExport`],
/// [`LoadError::ContractTypes`] or [`LoadError::Link`].
pub(crate) fn admit(
    engine: &Engine,
    contract: &Linker<AgentState>,
    contract_ring: Ring,
    component: &Component,
    policy: &RingPolicy,
) -> Result<Admitted, LoadError> {
    let manifest = manifest(engine, component, policy);
    if let Some((name, reason)) = manifest.refused().next() {
        return Err(LoadError::RefusedImport {
            name: name.to_string(),
            reason: reason.to_string(),
        });
    }
    check_capability_functions(engine, component)?;
    check_run_export(engine, component)?;
    let participant = check_saga_export(engine, component)?;
    let pre = contract
        .instantiate_pre(component)
        .map_err(|e| LoadError::ContractTypes {
            message: format!("{e:#}"),
        })?;
    let pre = RootPre::new(pre).map_err(|e| LoadError::Link {
        ring: contract_ring,
        message: format!("{e:#}"),
    })?;
    let saga = if participant {
        let indices = SagaIndices::new(pre.instance_pre()).map_err(|e| LoadError::SagaExport {
            message: format!("{e:#}"),
        })?;
        Some(indices)
    } else {
        None
    };
    Ok(Admitted {
        manifest,
        pre,
        saga,
    })
}

/// What admission hands to [`crate::Runtime::load`].
pub(crate) struct Admitted {
    pub(crate) manifest: Manifest,
    pub(crate) pre: RootPre<AgentState>,
    pub(crate) saga: Option<SagaIndices>,
}

/// Checks that every function imported from one of our capabilities is in the contract.
fn check_capability_functions(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let ImportKind::Capability(cap) = classify_import(name) else {
            continue;
        };
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            return Err(LoadError::Contract {
                import: name.to_string(),
                message: format!("{cap} is an interface; it was imported as something else"),
            });
        };
        for (function, item) in instance.exports(engine) {
            let is_func = matches!(item.ty, ComponentItem::ComponentFunc(_));
            if is_func && !cap.functions().contains(&function) {
                return Err(LoadError::Contract {
                    import: format!("{name}/{function}"),
                    message: format!(
                        "{cap} has no function `{function}` (it has {})",
                        cap.functions().join(", ")
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Checks that `run` has the contract's type.
fn check_run_export(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let Some((_, item)) = ty.exports(engine).find(|(n, _)| *n == "run") else {
        let names: BTreeSet<&str> = ty.exports(engine).map(|(n, _)| n).collect();
        return Err(LoadError::MissingRun {
            message: format!("exports are {names:?}"),
        });
    };
    let ComponentItem::ComponentFunc(f) = item.ty else {
        return Err(LoadError::MissingRun {
            message: "`run` is not a function".into(),
        });
    };
    use wasmtime::component::types::Type;
    let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = f.results().collect();
    let ok = matches!(params.as_slice(), [Type::String])
        && matches!(results.as_slice(), [Type::Result(r)]
            if matches!(r.ok(), Some(Type::String)) && matches!(r.err(), Some(Type::String)));
    if !ok {
        return Err(LoadError::MissingRun {
            message: format!("`run` takes {params:?} and returns {results:?}"),
        });
    }
    Ok(())
}

/// Whether the component exports `saga-participant`, and if it does, that
/// its functions are exactly the contract's: `execute: func(step: step-call,
/// input: string) -> result<string, string>` and `compensate: func(step:
/// step-call, input: string, output: string) -> result<_, string>`, where
/// `step-call` is `record { saga-id: string, step-id: string, action: string,
/// attempt: u32 }`. Checked here, before linking, so that a wrong shape is
/// refused with its name rather than found at the first step.
fn check_saga_export(engine: &Engine, component: &Component) -> Result<bool, LoadError> {
    use wasmtime::component::types::Type;
    let ty = component.component_type();
    let Some((_, item)) = ty.exports(engine).find(|(n, _)| *n == SAGA_PARTICIPANT) else {
        return Ok(false);
    };
    let refuse = |message: String| LoadError::SagaExport { message };
    let ComponentItem::ComponentInstance(instance) = item.ty else {
        return Err(refuse("it is not an interface".into()));
    };
    // The interface's types (`step-call`) are exported beside its functions.
    let funcs: BTreeSet<&str> = instance
        .exports(engine)
        .filter(|(_, item)| !matches!(item.ty, ComponentItem::Type(_)))
        .map(|(n, _)| n)
        .collect();
    if funcs != BTreeSet::from(["compensate", "execute"]) {
        return Err(refuse(format!(
            "it must export exactly the functions `execute` and `compensate`, not {funcs:?}"
        )));
    }
    let is_step_call = |t: &Type| match t {
        Type::Record(r) => {
            let fields: Vec<(&str, Type)> = r.fields().map(|f| (f.name, f.ty)).collect();
            matches!(
                fields.as_slice(),
                [
                    ("saga-id", Type::String),
                    ("step-id", Type::String),
                    ("action", Type::String),
                    ("attempt", Type::U32),
                ]
            )
        }
        _ => false,
    };
    for (name, item) in instance.exports(engine) {
        let f = match item.ty {
            ComponentItem::ComponentFunc(f) => f,
            ComponentItem::Type(_) => continue,
            _ => return Err(refuse(format!("`{name}` is not a function"))),
        };
        let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
        let results: Vec<Type> = f.results().collect();
        let strings = if name == "execute" { 1 } else { 2 };
        let params_ok = params.len() == 1 + strings
            && params.first().is_some_and(is_step_call)
            && params[1..].iter().all(|t| matches!(t, Type::String));
        let results_ok = matches!(results.as_slice(), [Type::Result(r)]
        if matches!(r.err(), Some(Type::String))
            && if name == "execute" {
                matches!(r.ok(), Some(Type::String))
            } else {
                r.ok().is_none()
            });
        if !params_ok || !results_ok {
            return Err(refuse(format!(
                "`{name}` takes {params:?} and returns {results:?}"
            )));
        }
    }
    Ok(true)
}

/// A loaded, admitted component, with its `InstancePre` per ring (built on first use).
#[derive(Clone)]
pub struct AgentComponent {
    pub(crate) inner: Arc<ComponentInner>,
}

pub(crate) struct ComponentInner {
    pub(crate) hash: [u8; 32],
    pub(crate) component: Component,
    pub(crate) manifest: Manifest,
    pub(crate) pres: [OnceLock<RootPre<AgentState>>; 4],
    /// Where its saga hooks are, if it is a saga participant.
    pub(crate) saga: Option<SagaIndices>,
}

impl AgentComponent {
    /// SHA-256 of the component bytes, in hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.inner.hash)
    }

    /// The component's capability manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Whether the component can take part in sagas: it exports
    /// `saga-participant` (with the contract's shape; admission checked it).
    pub fn saga_participant(&self) -> bool {
        self.inner.saga.is_some()
    }
}

impl fmt::Debug for AgentComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentComponent")
            .field("sha256", &self.hash_hex())
            .finish_non_exhaustive()
    }
}

/// The on-disk cache of compiled components, keyed by the SHA-256 of the
/// component bytes and the engine's tag (Wasmtime's compatibility hash and
/// the settings it leaves out: [`DiskCache::engine_tag`]).
///
/// Loading a compiled artifact runs native code, so the directory must be
/// private to the host: it is created with mode 0700, one owned by another
/// user is refused, and one that group or others may write to is made
/// private and emptied before anything in it is used (see
/// [`DiskCache::ensure_private`]). Each artifact has a `.sha256` sidecar
/// checked before loading, which catches truncated or corrupted files (not a
/// determined attacker who can write both; hence the checks on the directory).
///
/// The directory is kept within a byte budget ([`DiskCache::max_bytes`]):
/// after each artifact it stores, the least recently loaded artifacts (by
/// modification time, which a load from this directory renews; a runtime
/// serves components it loaded already from memory, so a long-running
/// server renews its agents' times once, when it loads them) are removed
/// until the rest fit, never the one just stored. Temporary files a crashed
/// writer left behind are removed once [`STALE_TEMPORARY`] old. Only the
/// names the cache writes are counted or removed ([`CacheFile`]). Another
/// process sharing the directory at most loses an artifact it then compiles
/// again: a reader that misses either file of a pair compiles, and files are
/// only ever replaced by rename, never rewritten in place. (On Windows a
/// load cannot renew the time through a read-only handle: there the oldest
/// compiled goes first.)
#[derive(Debug, Clone)]
pub(crate) struct DiskCache {
    pub(crate) dir: PathBuf,
    /// The most bytes of artifacts and checksums the directory keeps.
    pub(crate) max_bytes: u64,
}

/// The default budget of the compiled-component cache: a compiled Rust
/// agent takes about 1 MiB, a Python or JavaScript one 30-60 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 1 << 30;

/// How old a writer's temporary file must be before pruning takes it for
/// left behind by a crash (the slowest compile, a Python agent in a debug
/// build, takes a minute or two).
pub const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What one pruning of the cache removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pruned {
    /// Files removed (artifacts, checksums and stale temporary files).
    pub(crate) files: usize,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// The bytes of artifacts and checksums left.
    pub(crate) kept: u64,
}

impl DiskCache {
    /// What an artifact must have been compiled under to be loaded here:
    /// Wasmtime's compatibility hash, and the settings that shape an
    /// artifact without being in that hash. Wasmtime 48 leaves out
    /// `memory_guaranteed_dense_image_size`, which decides at compile time
    /// which memories get a copy-on-write image: without it here, a change
    /// of the allowance would be ignored for every component already in the
    /// cache (found on 2026-12-05, when a test of the JavaScript agents'
    /// images passed on a warm cache with no allowance).
    fn engine_tag(engine: &Engine) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        engine.get_memory_guaranteed_dense_image_size().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    fn paths(&self, engine: &Engine, hash: &[u8; 32]) -> (PathBuf, PathBuf) {
        let base = format!("{}-{}", hex::encode(hash), Self::engine_tag(engine));
        (
            self.dir.join(format!("{base}.cwasm")),
            self.dir.join(format!("{base}.sha256")),
        )
    }

    fn cache_err(path: &Path, e: impl fmt::Display) -> LoadError {
        LoadError::Cache {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    /// Makes sure the directory is private before anything in it is read or
    /// written: creates it (and missing parents) with mode 0700; refuses it if
    /// it is not a directory or another user owns it; and if group or others
    /// may write to it, makes it 0700 and removes every file in it, since
    /// anyone could have planted an artifact and its checksum there.
    ///
    /// # Errors
    /// [`LoadError::Cache`] naming the directory and what is wrong with it.
    #[cfg(unix)]
    pub(crate) fn ensure_private(&self) -> Result<(), LoadError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let dir = &self.dir;
        let err = |e: &dyn fmt::Display| Self::cache_err(dir, e);
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            return Err(err(&format!("cannot create it: {e}")));
        }
        // Following a symbolic link: what matters is the directory read from.
        let meta = std::fs::metadata(dir).map_err(|e| err(&e))?;
        if !meta.is_dir() {
            return Err(err(&"not a directory"));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(err(&format!(
                "owned by user {}, not by this user ({me}); compiled components are \
                 loaded as native code, so the cache must be this user's own",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 == 0 {
            return Ok(());
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            err(&format!(
                "mode {mode:o} lets others write to it, and chmod 700 failed: {e}"
            ))
        })?;
        let entries = std::fs::read_dir(dir).map_err(|e| err(&e))?;
        let mut removed = 0usize;
        for entry in entries {
            let entry = entry.map_err(|e| err(&e))?;
            if entry.file_type().map_err(|e| err(&e))?.is_dir() {
                continue;
            }
            std::fs::remove_file(entry.path()).map_err(|e| {
                err(&format!(
                    "was writable by others (mode {mode:o}); cannot remove {}: {e}",
                    entry.path().display()
                ))
            })?;
            removed += 1;
        }
        tracing::warn!(
            path = %dir.display(),
            "component cache was writable by group or others (mode {mode:o}): made private (700) and emptied ({removed} file(s) removed)"
        );
        Ok(())
    }

    /// Loads the compiled form of `bytes`, compiling and storing it if needed.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        hash: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        #[cfg(unix)]
        self.ensure_private()?;
        let (art, sum) = self.paths(engine, hash);
        if let (Ok((data, file)), Ok(expected)) = (read_file(&art), std::fs::read_to_string(&sum)) {
            if hex::encode(Sha256::digest(&data)) == expected.trim() {
                // SAFETY: the artifact was written by `store` below with this
                // engine's compatibility hash in its name, and its checksum
                // matches; wasmtime also checks the header and version.
                #[allow(unsafe_code)]
                let loaded = unsafe { Component::deserialize(engine, &data) };
                match loaded {
                    Ok(c) => {
                        // Used now: pruning removes the least recently used
                        // first. A failure costs at worst an early eviction.
                        if let Err(e) = file.set_modified(std::time::SystemTime::now()) {
                            tracing::debug!(path = %art.display(), "cannot mark a cached component used: {e}");
                        }
                        return Ok(c);
                    }
                    Err(e) => {
                        tracing::warn!(path = %art.display(), "discarding unusable cached component: {e:#}")
                    }
                }
            } else {
                tracing::warn!(path = %art.display(), "discarding cached component with a bad checksum");
            }
        }
        let component = compile(engine, bytes)?;
        let compiled = component
            .serialize()
            .map_err(|e| Self::cache_err(&art, e))?;
        self.store(&art, &sum, &compiled)?;
        match self.prune(&art, std::time::SystemTime::now()) {
            Ok(p) if p.files > 0 => tracing::info!(
                path = %self.dir.display(),
                removed_files = p.files,
                removed_bytes = p.bytes,
                kept_bytes = p.kept,
                budget = self.max_bytes,
                "pruned the compiled-component cache"
            ),
            Ok(_) => {}
            // The artifact is stored; a cache over its budget is not a
            // reason to fail the load.
            Err(e) => tracing::warn!("cannot prune the compiled-component cache: {e}"),
        }
        Ok(component)
    }

    /// Brings the directory within [`DiskCache::max_bytes`]: removes
    /// temporary files older than [`STALE_TEMPORARY`] at `now`, then the
    /// least recently loaded artifacts with their checksums (oldest
    /// modification time first) until the rest fit. `keep` (the artifact
    /// just stored) is never removed, even alone over the budget. Names
    /// [`CacheFile`] does not accept, directories and links are left alone
    /// and not counted; files another process removed meanwhile are skipped,
    /// and a file that cannot be removed is logged and skipped.
    ///
    /// # Errors
    /// [`LoadError::Cache`] if the directory cannot be listed or the
    /// metadata of a file of the cache cannot be read.
    pub(crate) fn prune(
        &self,
        keep: &Path,
        now: std::time::SystemTime,
    ) -> Result<Pruned, LoadError> {
        /// An artifact and its checksum, by their common name.
        #[derive(Default)]
        struct Entry {
            bytes: u64,
            used: Option<std::time::SystemTime>,
            files: Vec<(PathBuf, u64)>,
        }
        let err = |p: &Path, e: std::io::Error| Self::cache_err(p, e);
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let mut out = Pruned::default();
        // Removes one file; false if it could not be (and says why). One
        // file that cannot go must not stop the rest from going.
        let remove = |path: &Path, len: u64, out: &mut Pruned| match std::fs::remove_file(path) {
            Ok(()) => {
                out.files += 1;
                out.bytes = out.bytes.saturating_add(len);
                true
            }
            Err(e) if gone(&e) => true,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove from the component cache: {e}");
                false
            }
        };
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for item in std::fs::read_dir(&self.dir).map_err(|e| err(&self.dir, e))? {
            let item = item.map_err(|e| err(&self.dir, e))?;
            let name = item.file_name();
            let Some(kind) = name.to_str().and_then(CacheFile::of) else {
                continue;
            };
            let path = item.path();
            // `DirEntry::metadata` does not follow links: a link is not ours.
            let meta = match item.metadata() {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(err(&path, e)),
            };
            let modified = meta.modified().map_err(|e| err(&path, e))?;
            let (base, artifact) = match kind {
                CacheFile::Temporary => {
                    let age = now.duration_since(modified).unwrap_or_default();
                    if age >= STALE_TEMPORARY {
                        remove(&path, meta.len(), &mut out);
                    }
                    continue;
                }
                CacheFile::Artifact(base) => (base, true),
                CacheFile::Checksum(base) => (base, false),
            };
            let e = entries.entry(base.to_owned()).or_default();
            e.bytes = e.bytes.saturating_add(meta.len());
            // An artifact's time is its last use; a lone checksum's, its writing.
            if artifact || e.used.is_none() {
                e.used = Some(modified);
            }
            e.files.push((path, meta.len()));
        }
        let keep = keep
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".cwasm"));
        let mut total = entries
            .values()
            .fold(0u64, |t, e| t.saturating_add(e.bytes));
        let mut by_age: Vec<(String, Entry)> = entries
            .into_iter()
            .filter(|(base, _)| Some(base.as_str()) != keep)
            .collect();
        by_age.sort_by(|(a, x), (b, y)| x.used.cmp(&y.used).then_with(|| a.cmp(b)));
        for (_, entry) in by_age {
            if total <= self.max_bytes {
                break;
            }
            // The checksum first: a reader that finds the artifact without
            // it compiles, it never loads a half-removed pair.
            let mut files = entry.files;
            files.sort_by_key(|(p, _)| p.extension().is_some_and(|x| x == "cwasm"));
            for (path, len) in files {
                if remove(&path, len, &mut out) {
                    total = total.saturating_sub(len);
                }
            }
        }
        out.kept = total;
        Ok(out)
    }

    fn store(&self, art: &Path, sum: &Path, compiled: &[u8]) -> Result<(), LoadError> {
        #[cfg(not(unix))]
        std::fs::create_dir_all(&self.dir).map_err(|e| Self::cache_err(&self.dir, e))?;
        // Write to unique temporary names, then rename: readers never see a partial file.
        let tmp = |p: &Path| {
            let mut name = p.as_os_str().to_owned();
            name.push(format!(
                ".tmp-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            PathBuf::from(name)
        };
        let (tmp_art, tmp_sum) = (tmp(art), tmp(sum));
        std::fs::write(&tmp_art, compiled).map_err(|e| Self::cache_err(&tmp_art, e))?;
        std::fs::write(&tmp_sum, hex::encode(Sha256::digest(compiled)))
            .map_err(|e| Self::cache_err(&tmp_sum, e))?;
        std::fs::rename(&tmp_art, art).map_err(|e| Self::cache_err(art, e))?;
        std::fs::rename(&tmp_sum, sum).map_err(|e| Self::cache_err(sum, e))?;
        Ok(())
    }
}

/// Refuses, before anything is compiled or taken from the cache, a
/// component whose compiling would make the host allocate out of proportion
/// to its size: memory images past [`crate::images::max_image_bytes`], or
/// tables and memories the instance pool could never hold (both read in
/// one pass, [`crate::images::scan`]). Bytes that do not parse are left to
/// the compiler, which says what is wrong with them (it parses with the
/// same wasmparser, validating as well).
///
/// # Errors
/// [`LoadError::Invalid`] naming what is too large.
pub(crate) fn check_before_compiling(bytes: &[u8]) -> Result<(), LoadError> {
    let Some(found) = crate::images::scan(bytes) else {
        return Ok(());
    };
    if let Some(misfit) = found.misfit {
        return Err(LoadError::Invalid { message: misfit });
    }
    let max = crate::images::max_image_bytes(bytes.len());
    if found.images > max {
        let largest = found.largest.map_or(String::new(), |l| {
            format!(
                "; the largest, memory {} of core module {}, holds {} bytes of data over {} bytes",
                l.memory, l.module, l.data, l.range
            )
        });
        return Err(LoadError::Invalid {
            message: format!(
                "its data segments would make {} bytes of memory images, more than \
                 {max} (twice its {} bytes, plus {}){largest}",
                found.images,
                bytes.len(),
                crate::images::EXTRA_IMAGE_BYTES
            ),
        });
    }
    Ok(())
}

/// A file of the cache, by its name. Only the names [`DiskCache`] writes
/// count (`<sha256 hex>-<tag hex>.cwasm`, `.sha256`, and either with a
/// writer's `.tmp-<pid>-ThreadId(<n>)`): anything else in the directory is
/// someone else's, never counted or removed.
#[derive(Debug, PartialEq, Eq)]
enum CacheFile<'a> {
    /// A compiled artifact, by its common name.
    Artifact(&'a str),
    /// An artifact's checksum, by their common name.
    Checksum(&'a str),
    /// A writer's temporary file.
    Temporary,
}

impl<'a> CacheFile<'a> {
    fn of(name: &'a str) -> Option<CacheFile<'a>> {
        fn hex(s: &str) -> bool {
            s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        fn digits(s: &str) -> bool {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
        }
        let base = |b: &str| {
            b.len() == 64 + 1 + 16 && b.as_bytes()[64] == b'-' && hex(&b[..64]) && hex(&b[65..])
        };
        let pair = |n: &'a str| {
            if let Some(b) = n.strip_suffix(".cwasm") {
                base(b).then_some(CacheFile::Artifact(b))
            } else if let Some(b) = n.strip_suffix(".sha256") {
                base(b).then_some(CacheFile::Checksum(b))
            } else {
                None
            }
        };
        match name.split_once(".tmp-") {
            Some((stem, writer)) => {
                let by_writer = writer
                    .split_once("-ThreadId(")
                    .is_some_and(|(pid, t)| digits(pid) && t.strip_suffix(')').is_some_and(digits));
                (by_writer && pair(stem).is_some()).then_some(CacheFile::Temporary)
            }
            None => pair(name),
        }
    }
}

/// Reads a whole file, keeping it open (to mark it used).
fn read_file(path: &Path) -> std::io::Result<(Vec<u8>, std::fs::File)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok((data, file))
}

/// Compiles component bytes. Callers run [`check_before_compiling`] first
/// (once: `Runtime::load` before its cache lookup, `Runtime::inspect`).
pub(crate) fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, LoadError> {
    Component::new(engine, bytes).map_err(|e| LoadError::Invalid {
        message: format!("{e:#}"),
    })
}

/// SHA-256 of component bytes.
pub(crate) fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_compiled_under_another_dense_image_allowance_are_cached_apart() {
        let engine = |allowance: u64| {
            let mut config = wasmtime::Config::new();
            config.memory_guaranteed_dense_image_size(allowance);
            Engine::new(&config).unwrap()
        };
        let tag = |allowance| DiskCache::engine_tag(&engine(allowance));
        assert_eq!(tag(16 << 20), tag(16 << 20));
        // Wasmtime's own compatibility hash does not tell these apart.
        let wasmtime_hash = |allowance| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine(allowance)
                .precompile_compatibility_hash()
                .hash(&mut h);
            h.finish()
        };
        assert_eq!(wasmtime_hash(0), wasmtime_hash(16 << 20));
        assert_ne!(tag(0), tag(16 << 20));
    }

    #[cfg(unix)]
    #[test]
    fn the_cache_directory_is_created_private_and_an_open_one_is_closed_and_emptied() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().unwrap();
        let fresh = DiskCache {
            dir: tmp.path().join("a/b/cache"),
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
        };
        fresh.ensure_private().unwrap();
        assert_eq!(mode(&fresh.dir), 0o700);

        // Private enough already (nobody else can write): left as it is.
        let kept = tmp.path().join("kept");
        std::fs::create_dir(&kept).unwrap();
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(kept.join("x.cwasm"), b"compiled").unwrap();
        DiskCache {
            dir: kept.clone(),
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
        }
        .ensure_private()
        .unwrap();
        assert_eq!(mode(&kept), 0o755);
        assert!(kept.join("x.cwasm").exists());

        // Writable by others: anything in it may be planted.
        for open in [0o777, 0o770, 0o702] {
            let dir = tmp.path().join(format!("open-{open:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("planted.cwasm"), b"native code").unwrap();
            std::fs::write(dir.join("planted.sha256"), b"matching sum").unwrap();
            std::fs::create_dir(dir.join("sub")).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(open)).unwrap();
            DiskCache {
                dir: dir.clone(),
                max_bytes: DEFAULT_CACHE_MAX_BYTES,
            }
            .ensure_private()
            .unwrap();
            assert_eq!(mode(&dir), 0o700, "{open:o}");
            let left: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, ["sub"], "{open:o}");
        }

        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = DiskCache {
            dir: file,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
        }
        .ensure_private()
        .unwrap_err();
        assert!(err.to_string().contains("cannot create it"), "{err}");
    }

    /// A cache in a fresh directory, with `budget` bytes.
    fn cache_in(tmp: &tempfile::TempDir, budget: u64) -> DiskCache {
        let cache = DiskCache {
            dir: tmp.path().join("cache"),
            max_bytes: budget,
        };
        #[cfg(unix)]
        cache.ensure_private().unwrap();
        #[cfg(not(unix))]
        std::fs::create_dir_all(&cache.dir).unwrap();
        cache
    }

    /// Writes `name` with `len` bytes, last modified `age` before `now`.
    fn file_aged(dir: &Path, name: &str, len: usize, now: std::time::SystemTime, age_s: u64) {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(now - std::time::Duration::from_secs(age_s))
            .unwrap();
    }

    /// A name the cache could write: `c` repeated as the component's hash
    /// and the engine tag.
    fn base(c: char) -> String {
        format!("{}-{}", c.to_string().repeat(64), c.to_string().repeat(16))
    }

    fn names(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn pruning_removes_the_least_recently_used_artifacts_until_the_rest_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache_in(&tmp, 2_500);
        let now = std::time::SystemTime::now();
        let (old, mid, new) = (base('a'), base('b'), base('c'));
        // Three pairs of 1,000 + 64 bytes, used 30, 20 and 10 minutes ago.
        for (base, age) in [(&old, 1800), (&mid, 1200), (&new, 600)] {
            file_aged(&cache.dir, &format!("{base}.cwasm"), 1000, now, age);
            // The checksum's own time does not count: the artifact's does.
            file_aged(&cache.dir, &format!("{base}.sha256"), 64, now, 1);
        }
        let pruned = cache
            .prune(&cache.dir.join(format!("{new}.cwasm")), now)
            .unwrap();
        assert_eq!(
            pruned,
            Pruned {
                files: 2,
                bytes: 1064,
                kept: 2128
            }
        );
        assert_eq!(
            names(&cache.dir),
            BTreeSet::from([
                format!("{mid}.cwasm"),
                format!("{mid}.sha256"),
                format!("{new}.cwasm"),
                format!("{new}.sha256"),
            ])
        );

        // Within the budget: nothing to do.
        let again = cache.prune(&cache.dir.join(format!("{new}.cwasm")), now);
        assert_eq!(again.unwrap().files, 0);
    }

    #[test]
    fn pruning_never_removes_the_artifact_just_stored_even_alone_over_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache_in(&tmp, 100);
        let now = std::time::SystemTime::now();
        let (kept, other, lone) = (base('1'), base('2'), base('3'));
        // The one just stored is the oldest by its time (a clock set back).
        file_aged(&cache.dir, &format!("{kept}.cwasm"), 1000, now, 5000);
        file_aged(&cache.dir, &format!("{kept}.sha256"), 64, now, 5000);
        file_aged(&cache.dir, &format!("{other}.cwasm"), 1000, now, 10);
        // A checksum whose artifact is gone is removed like any entry.
        file_aged(&cache.dir, &format!("{lone}.sha256"), 64, now, 10);
        let pruned = cache
            .prune(&cache.dir.join(format!("{kept}.cwasm")), now)
            .unwrap();
        assert_eq!(pruned.files, 2);
        assert_eq!(pruned.kept, 1064);
        assert_eq!(
            names(&cache.dir),
            BTreeSet::from([format!("{kept}.cwasm"), format!("{kept}.sha256")])
        );
    }

    #[test]
    fn pruning_removes_temporary_files_a_crashed_writer_left_only_once_they_are_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache_in(&tmp, u64::MAX);
        let now = std::time::SystemTime::now();
        let stale = STALE_TEMPORARY.as_secs();
        let (a, b) = (base('a'), base('b'));
        file_aged(
            &cache.dir,
            &format!("{a}.cwasm.tmp-1-ThreadId(2)"),
            500,
            now,
            stale,
        );
        file_aged(
            &cache.dir,
            &format!("{a}.sha256.tmp-1-ThreadId(2)"),
            64,
            now,
            stale + 60,
        );
        // Another writer may still be at work on this one.
        let fresh = format!("{b}.cwasm.tmp-7-ThreadId(1)");
        file_aged(&cache.dir, &fresh, 500, now, stale - 60);
        let pruned = cache
            .prune(&cache.dir.join(format!("{b}.cwasm")), now)
            .unwrap();
        assert_eq!((pruned.files, pruned.bytes, pruned.kept), (2, 564, 0));
        assert_eq!(names(&cache.dir), BTreeSet::from([fresh]));
    }

    #[test]
    fn pruning_never_counts_or_removes_what_the_cache_did_not_write() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache_in(&tmp, 1);
        let now = std::time::SystemTime::now();
        let ancient = 10 * STALE_TEMPORARY.as_secs();
        let b = base('d');
        let theirs = [
            // `wasmtime compile`'s output, a user's notes, near misses.
            "app.cwasm".to_owned(),
            "report.tmp-2024.txt".to_owned(),
            format!("{}.cwasm", base('D')),
            format!("{}.cwasm", &b[1..]),
            format!("{b}.cwasm.tmp-x-ThreadId(1)"),
            format!("{b}.wasm.tmp-1-ThreadId(1)"),
            format!("{b}.cwasm.bak"),
        ];
        for name in &theirs {
            file_aged(&cache.dir, name, 10_000, now, ancient);
        }
        std::fs::create_dir(cache.dir.join(format!("{}.cwasm", base('e')))).unwrap();
        // A link named as an artifact, to a file outside: neither followed
        // nor removed.
        #[cfg(unix)]
        {
            let outside = tmp.path().join("outside");
            std::fs::write(&outside, vec![0u8; 10_000]).unwrap();
            std::os::unix::fs::symlink(&outside, cache.dir.join(format!("{}.cwasm", base('f'))))
                .unwrap();
        }
        let pruned = cache
            .prune(&cache.dir.join(format!("{b}.cwasm")), now)
            .unwrap();
        assert_eq!(pruned, Pruned::default());
        assert!(tmp.path().join("outside").exists() || cfg!(not(unix)));
        let left = names(&cache.dir);
        for name in &theirs {
            assert!(left.contains(name), "{name} was removed");
        }
    }

    #[test]
    fn only_the_names_the_cache_writes_are_its_files() {
        let b = base('0');
        assert_eq!(
            CacheFile::of(&format!("{b}.cwasm")),
            Some(CacheFile::Artifact(&b))
        );
        assert_eq!(
            CacheFile::of(&format!("{b}.sha256")),
            Some(CacheFile::Checksum(&b))
        );
        assert_eq!(
            CacheFile::of(&format!("{b}.sha256.tmp-42-ThreadId(7)")),
            Some(CacheFile::Temporary)
        );
        for name in [
            String::new(),
            ".cwasm".into(),
            b.clone(),
            format!("{b}.cwasm.tmp-42-ThreadId(7"),
            format!("{b}.cwasm.tmp--ThreadId(7)"),
            format!("{b}.cwasm.tmp-42-ThreadId()"),
            format!("{}.cwasm", b.replace('-', "_")),
            format!("{}0.cwasm", b),
        ] {
            assert_eq!(CacheFile::of(&name), None, "{name}");
        }
        // What the cache names its files, through its own path function.
        let cache = DiskCache {
            dir: PathBuf::from("/nowhere"),
            max_bytes: 0,
        };
        let (art, sum) = cache.paths(&Engine::default(), &[0xab; 32]);
        for p in [art, sum] {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(CacheFile::of(name).is_some(), "{name}");
        }
    }

    #[test]
    fn loads_keep_the_cache_within_its_budget_and_recompile_what_was_pruned() {
        let engine = Engine::default();
        let component = |n: u32| {
            // Distinct bodies: distinct hashes, artifacts of about equal size.
            wat::parse_str(format!(
                "(component (core module (func (export \"f{n}\") (result i32) i32.const {n})))"
            ))
            .unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut cache = cache_in(&tmp, u64::MAX);
        let (a, b) = (component(1), component(2));
        cache.load(&engine, &hash(&a), &a).unwrap();
        let (art_a, _) = cache.paths(&engine, &hash(&a));
        let one_pair: u64 = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(one_pair > 0);

        // A load from the cache marks the artifact used.
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(&art_a)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        cache.load(&engine, &hash(&a), &a).unwrap();
        let used = std::fs::metadata(&art_a).unwrap().modified().unwrap();
        assert!(used > long_ago + std::time::Duration::from_secs(3600));

        // Room for one pair and a half: storing `b` evicts `a`.
        cache.max_bytes = one_pair + one_pair / 2;
        cache.load(&engine, &hash(&b), &b).unwrap();
        let (art_b, _) = cache.paths(&engine, &hash(&b));
        assert!(
            !art_a.exists(),
            "the least recently used artifact was not removed"
        );
        assert!(art_b.exists());
        assert_eq!(names(&cache.dir).len(), 2, "{:?}", names(&cache.dir));

        // `a` compiles again, and works.
        let again = cache.load(&engine, &hash(&a), &a).unwrap();
        assert!(art_a.exists() && !art_b.exists());
        let mut store = wasmtime::Store::new(&engine, ());
        wasmtime::component::Linker::<()>::new(&engine)
            .instantiate(&mut store, &again)
            .unwrap();
    }

    #[test]
    fn imports_are_classified_against_the_contract() {
        assert_eq!(
            classify_import("agent-hypervisor:agent/vfs-write@0.1.0"),
            ImportKind::Capability(Capability::VfsWrite)
        );
        assert_eq!(
            classify_import("agent-hypervisor:agent/types@0.1.0"),
            ImportKind::Types
        );
        assert_eq!(classify_import("wasi:cli/stdout@0.2.6"), ImportKind::Wasi);
        assert_eq!(classify_import("wasi:io/streams@0.2.0"), ImportKind::Wasi);
        // What componentize-py 0.25 always imports: linked, every use denied.
        for socket in [
            "wasi:sockets/network@0.2.9",
            "wasi:sockets/instance-network@0.2.9",
            "wasi:sockets/udp@0.2.9",
            "wasi:sockets/udp-create-socket@0.2.9",
            "wasi:sockets/tcp@0.2.6",
            "wasi:sockets/tcp-create-socket@0.2.0",
            "wasi:sockets/ip-name-lookup@0.2.12",
        ] {
            assert_eq!(classify_import(socket), ImportKind::WasiDenied, "{socket}");
        }
        // Outbound HTTP: sending is the `net` capability, the types are free.
        assert_eq!(
            classify_import("wasi:http/outgoing-handler@0.2.3"),
            ImportKind::Capability(Capability::Net)
        );
        assert_eq!(classify_import("wasi:http/types@0.2.10"), ImportKind::Wasi);
        for bad in [
            "agent-hypervisor:agent/net@0.1.0",
            "agent-hypervisor:agent/vfs-write@0.2.0",
            "wasi:sockets/tcp@0.3.0",
            "wasi:sockets/raw-socket@0.2.6",
            "wasi:http/outgoing-handler@0.3.0",
            "wasi:http/incoming-handler@0.2.6",
            "wasi:http/handler@0.2.6",
            "wasi:cli/stdout@0.3.0",
            "wasi:keyvalue/store@0.2.0",
            "evil:pkg/thing@1.0.0",
            "bare-function",
        ] {
            assert!(
                matches!(classify_import(bad), ImportKind::Refused { .. }),
                "{bad} must be refused"
            );
        }
    }
}
