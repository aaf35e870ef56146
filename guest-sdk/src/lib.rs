//! # agent-sdk: write Agent Hypervisor agents in plain Rust
//!
//! An agent is a WebAssembly component that exports one function, `run`, and
//! calls the host's *capabilities* (files, shared state, locks, logs,
//! actions, effects). Which
//! capabilities it may call depends on the *ring* the host runs it in; a call
//! outside its ring traps the agent (a *ring breach*). Agent authors never
//! touch `wit-bindgen`: they implement [`Agent`] and call [`export_agent!`].
//!
//! A complete agent (build it with `cargo build --target wasm32-wasip2 --release`
//! as a `cdylib` crate):
//!
//! ```no_run
//! use agent_sdk::{Agent, export_agent, log, vfs, context};
//!
//! struct Greeter;
//!
//! impl Agent for Greeter {
//!     fn run(input: String) -> Result<String, String> {
//!         let me = context::whoami();
//!         log::info!("{} running in ring {}", me.agent_id, me.ring);
//!         // A missing file is an error *value*, not a crash.
//!         let greeting = match vfs::read_to_string("greeting.txt") {
//!             Ok(text) => text.trim().to_string(),
//!             Err(vfs::Error::NotFound(_)) => "Hello".to_string(),
//!             Err(e) => return Err(format!("cannot read greeting: {e}")),
//!         };
//!         Ok(format!("{greeting}, {input}!"))
//!     }
//! }
//!
//! export_agent!(Greeter);
//! ```
//!
//! An agent that takes part in sagas also implements [`SagaParticipant`]
//! (`execute` and `compensate` a step) and exports itself with
//! `export_agent!(MyAgent, saga)`; see [`SagaParticipant`] for an example.
//!
//! The capabilities a component *actually calls* become its imports and so
//! its capability manifest: `ahv inspect agent.wasm` tells the lowest ring that
//! covers them.
//!
//! # What lives across calls
//!
//! The host keeps an agent's instance between calls, so its statics (a
//! `static` cache, a `thread_local!`, a `OnceLock`) persist from one `run` to
//! the next. Nothing promises they will: the host discards the instance when
//! a call traps, runs out of fuel, memory or time, is killed, or breaches
//! its ring, and the next call starts from a fresh one; a session's end drops
//! it too. Use statics as a cache only; keep what must last in [`state`] or
//! in files ([`vfs`]), which the session keeps and the audit log records.
//!
//! # Failing with `?`
//!
//! `run` fails with a `String`; a host [`Error`] converts into one (its WIT
//! case and the host's explanation, see [`describe`]), so `?` works on every
//! capability call. [`state::update`] is the compare-and-set loop for shared
//! state, [`locks::lock`] a lock held until its guard is dropped.
//!
//! # Declaring a ring
//!
//! With its default features the SDK offers every capability. An agent
//! that declares its ring turns them off and names one feature,
//! `ring-sandbox`, `ring-standard`, `ring-privileged` or `ring-root`
//! (`default-features = false, features = ["ring-sandbox"]`): the wrappers
//! of capabilities outside that ring are then not compiled in, and calling
//! one fails to compile with rustc's note that the item "is gated behind
//! the `vfs-write` feature" (the capability's name). Each ring feature is
//! a bundle of capability features (`vfs-write`, `state-write`, `locks`,
//! `actions`; `effects`, `spawn`, `net`; `admin`), so an agent can add one
//! its policy grants. [`RING`] is the declared ring. Cargo unifies features,
//! so when crates of one build ask for different rings the SDK is built for
//! the most privileged of them; without any ring feature it is ring 3's.
//!
//! # Testing with `cargo test`
//!
//! On native targets the wrappers call [`testing`], an in-memory fake host,
//! instead of the WIT imports, so an agent's `run` can be unit-tested on the
//! build machine. The `wasm32` build is unchanged by it.
//!
//! # Rings
//!
//! Ring 0 is the most privileged, ring 3 the least; each ring has the
//! capabilities of the less privileged rings plus its own. The host's default
//! table (generated from the host's ring table; a host may narrow it):
//!
//! <!-- ring-table: generated from RingPolicy::default() and RateTable::default() by host/cli/src/rings.rs; AHV_BLESS=1 cargo test -p ahv-cli rings rewrites it -->
//!
//! | Ring | Capabilities (WIT interfaces) | Fuel / call | Memory | Deadline / call | Rate limit: changes | Rate limit: reads | Host-call data | Answer | Random bytes | Resources |
//! |---|---|---|---|---|---|---|---|---|---|---|
//! | 3 sandbox | `context`, `log`, `vfs-read`, `state-read`, `elevation` | 10^8 | 32 MiB | 2 s | 5/s, burst 10 | 50/s, burst 100 | 4 MiB | 1 MiB | 64 KiB | 256 |
//! | 2 standard | ring 3's + `vfs-write`, `state-write`, `locks`, `actions` | 10^9 | 128 MiB | 30 s | 20/s, burst 40 | 200/s, burst 400 | 16 MiB | 4 MiB | 256 KiB | 1024 |
//! | 1 privileged | ring 2's + `effects`, `spawn`, `net` | 10^10 | 512 MiB | 300 s | 50/s, burst 100 | 500/s, burst 1000 | 64 MiB | 16 MiB | 1 MiB | 4096 |
//! | 0 root | ring 1's + `admin` | 10^11 | 1 GiB | 300 s | 100/s, burst 200 | 1000/s, burst 2000 | 128 MiB | 16 MiB | 1 MiB | 16384 |
//!
//! <!-- ring-table: end -->
//!
//! The ring that counts is the agent's ring *now*, judged at every host call:
//! an [`elevation`] raises it until its time runs out, the host may demote
//! it, and a quarantined agent gets [`Error::Quarantined`] from everything
//! but [`context`] and [`log`]. Calls that change something and calls that
//! read draw from separate rate limits; past them a call returns
//! [`Error::RateLimited`] with the milliseconds to wait, a value, not a trap.
#![deny(missing_docs)]

// Lets the bindings name this crate by its absolute path from inside it too.
#[allow(unused_extern_crates)]
extern crate self as agent_sdk;

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// The raw `wit-bindgen` bindings of the `root` world (every capability).
///
/// Prefer the wrappers in [`context`], [`log`], [`vfs`], [`state`], [`locks`],
/// [`actions`] and [`effects`]; this module exists for the export macro.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "root",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_root_world",
        default_bindings_module: "::agent_sdk::bindings",
        runtime_path: "::agent_sdk::__private::wit_bindgen::rt",
    });
}

/// The bindings of the `saga` world: `root`'s imports and the
/// `saga-participant` export, for the `saga` form of [`export_agent!`].
///
/// A second `generate!` because a world's exports are all-or-nothing: one
/// world with `saga-participant` would make every agent export it. Its
/// imports are mapped (`with:`) onto [`bindings`]' so there is one set of
/// import bindings and one set of types; only the exports are generated
/// here. Its export macro carries the saga world's component type, so a
/// plain agent, which never invokes it, stays `run` only.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod saga_bindings {
    wit_bindgen::generate!({
        world: "saga",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_saga_world",
        default_bindings_module: "::agent_sdk::saga_bindings",
        runtime_path: "::agent_sdk::__private::wit_bindgen::rt",
        with: {
            "agent-hypervisor:agent/types@0.1.0": crate::bindings::agent_hypervisor::agent::types,
            "agent-hypervisor:agent/context@0.1.0": crate::bindings::agent_hypervisor::agent::context,
            "agent-hypervisor:agent/log@0.1.0": crate::bindings::agent_hypervisor::agent::log,
            "agent-hypervisor:agent/vfs-read@0.1.0": crate::bindings::agent_hypervisor::agent::vfs_read,
            "agent-hypervisor:agent/vfs-write@0.1.0": crate::bindings::agent_hypervisor::agent::vfs_write,
            "agent-hypervisor:agent/state-read@0.1.0": crate::bindings::agent_hypervisor::agent::state_read,
            "agent-hypervisor:agent/state-write@0.1.0": crate::bindings::agent_hypervisor::agent::state_write,
            "agent-hypervisor:agent/locks@0.1.0": crate::bindings::agent_hypervisor::agent::locks,
            "agent-hypervisor:agent/actions@0.1.0": crate::bindings::agent_hypervisor::agent::actions,
            "agent-hypervisor:agent/effects@0.1.0": crate::bindings::agent_hypervisor::agent::effects,
            "agent-hypervisor:agent/elevation@0.1.0": crate::bindings::agent_hypervisor::agent::elevation,
            "agent-hypervisor:agent/spawn@0.1.0": crate::bindings::agent_hypervisor::agent::spawn,
            "agent-hypervisor:agent/admin@0.1.0": crate::bindings::agent_hypervisor::agent::admin,
        },
    });
}

/// The WIT imports the wrappers call: the host's on `wasm32`, the test
/// double's ([`testing`]) on every other target.
#[cfg(target_arch = "wasm32")]
use bindings::agent_hypervisor::agent as imports;
#[cfg(not(target_arch = "wasm32"))]
use testing::imports;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// A ring: 0 root, the most privileged, to 3 sandbox, the least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ring {
    /// Ring 0: everything, including `admin`.
    Root = 0,
    /// Ring 1: adds `effects`, `spawn` and `net`.
    Privileged = 1,
    /// Ring 2: adds `vfs-write`, `state-write`, `locks` and `actions`.
    Standard = 2,
    /// Ring 3: `context`, `log`, `vfs-read`, `state-read`, `elevation`.
    Sandbox = 3,
}

impl Ring {
    /// The ring's number, as `context::ring()` reports it.
    pub const fn number(self) -> u8 {
        self as u8
    }
}

/// The ring this build of the SDK was declared for: the most privileged of
/// the `ring-*` features that are on (cargo unifies features, so one crate's
/// `ring-standard` and another's `ring-sandbox` in the same build make it
/// [`Ring::Standard`]). The default features declare [`Ring::Root`]:
/// everything. Capabilities outside it are not compiled in, so calling one
/// is a compile error naming the capability's feature. The host still judges
/// every call at the agent's ring *now*; this only moves mistakes to build time.
pub const RING: Ring = if cfg!(feature = "ring-root") {
    Ring::Root
} else if cfg!(feature = "ring-privileged") {
    Ring::Privileged
} else if cfg!(feature = "ring-standard") {
    Ring::Standard
} else {
    Ring::Sandbox
};

/// Why the host refused a request. Every variant carries a human-readable
/// explanation naming the input that was refused. `Display` shows the variant
/// and its explanation.
pub use bindings::agent_hypervisor::agent::types::Error;

/// A host error becomes the agent's failure message, so `?` works in `run`
/// (and in saga steps), which fail with a `String`:
///
/// ```no_run
/// use agent_sdk::{Agent, export_agent, vfs};
///
/// struct Copier;
///
/// impl Agent for Copier {
///     fn run(input: String) -> Result<String, String> {
///         let text = vfs::read_to_string(&input)?; // `Error` → the failure message
///         vfs::write("copy.txt", &text)?;
///         Ok(format!("copied {} bytes", text.len()))
///     }
/// }
///
/// export_agent!(Copier);
/// ```
///
/// The message is the error's [`describe`]: its WIT case and the host's
/// explanation (`not-found: notes/today.md`).
impl From<Error> for String {
    fn from(e: Error) -> String {
        describe(&e)
    }
}

/// An error as one line: its WIT case ([`error_kind`]) and the host's
/// explanation (for `rate-limited`, how long to wait).
pub fn describe(e: &Error) -> String {
    let why = match e {
        Error::InvalidPath(m)
        | Error::NotFound(m)
        | Error::AlreadyExists(m)
        | Error::Denied(m)
        | Error::Quota(m)
        | Error::UnknownAction(m)
        | Error::ActionFailed(m)
        | Error::Io(m)
        | Error::Conflict(m)
        | Error::Deadlock(m)
        | Error::Timeout(m)
        | Error::InvalidKey(m)
        | Error::Quarantined(m) => m.clone(),
        Error::RateLimited(u64::MAX) => "the budget does not refill".to_string(),
        Error::RateLimited(ms) => format!("retry in {ms} ms"),
    };
    format!("{}: {why}", error_kind(e))
}

/// The WIT name of an error's case (`not-found`, `rate-limited`, …), for
/// logs and reports that should not depend on its message.
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidPath(_) => "invalid-path",
        Error::NotFound(_) => "not-found",
        Error::AlreadyExists(_) => "already-exists",
        Error::Denied(_) => "denied",
        Error::Quota(_) => "quota",
        Error::UnknownAction(_) => "unknown-action",
        Error::ActionFailed(_) => "action-failed",
        Error::Io(_) => "io",
        Error::Conflict(_) => "conflict",
        Error::Deadlock(_) => "deadlock",
        Error::Timeout(_) => "timeout",
        Error::InvalidKey(_) => "invalid-key",
        Error::RateLimited(_) => "rate-limited",
        Error::Quarantined(_) => "quarantined",
    }
}

/// The one thing an agent implements: its entry point.
pub trait Agent {
    /// Handles one request. `Ok` is the agent's answer; `Err` is a failure
    /// message the host reports as the agent's own failure (not a trap).
    fn run(input: String) -> Result<String, String>;
}

/// Which step of which saga the host is running (the WIT `step-call`).
pub use saga_bindings::exports::agent_hypervisor::agent::saga_participant::StepCall as Step;

/// What a saga participant implements beside [`Agent`]: the saga steps it
/// runs. Export it with `export_agent!(MyAgent, saga)`.
///
/// A step runs under the agent's ring, like `run`: a host call outside the
/// ring is a breach and the step fails. The host records what a step changed
/// (files, state, reversible actions) and undoes it itself when the saga
/// compensates; `compensate` is for what the host cannot see, and for saying
/// what was undone.
///
/// ```no_run
/// use agent_sdk::{Agent, SagaParticipant, Step, export_agent, log, vfs};
///
/// struct Stamper;
///
/// impl Agent for Stamper {
///     fn run(input: String) -> Result<String, String> {
///         Ok(input)
///     }
/// }
///
/// impl SagaParticipant for Stamper {
///     fn execute(step: &Step, input: &str) -> Result<String, String> {
///         let path = format!("shared/stamps/{}.txt", step.step_id);
///         vfs::write(&path, input).map_err(|e| e.to_string())?;
///         Ok(path)
///     }
///
///     fn compensate(step: &Step, _input: &str, output: &str) -> Result<(), String> {
///         log::info!("saga {}: the host undoes {output}", step.saga_id);
///         Ok(())
///     }
/// }
///
/// export_agent!(Stamper, saga);
/// ```
pub trait SagaParticipant {
    /// Runs the step named by `step` with `input`. `Ok` is the step's output,
    /// given back to [`SagaParticipant::compensate`]; `Err` fails the step.
    fn execute(step: &Step, input: &str) -> Result<String, String>;

    /// Undoes a committed step, given its `input` and the `output` its
    /// `execute` returned. `Err` is a compensation failure: the saga escalates.
    fn compensate(step: &Step, input: &str, output: &str) -> Result<(), String>;
}

/// Exports a type implementing [`Agent`] as the component's `run` function;
/// with `, saga`, also its [`SagaParticipant`] hooks (the `saga-participant`
/// interface).
///
/// Use it once per agent crate, at the top level:
/// `agent_sdk::export_agent!(MyAgent);` for a plain agent, or
/// `agent_sdk::export_agent!(MyAgent, saga);` for a saga participant.
/// It exports on `wasm32` only: a native build of the crate (its unit
/// tests) exports nothing and calls the agent's methods directly.
#[macro_export]
macro_rules! export_agent {
    ($agent:ident) => {
        impl $crate::bindings::Guest for $agent {
            fn run(input: ::std::string::String) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                <$agent as $crate::Agent>::run(input)
            }
        }
        // Exported on `wasm32` only (where the SDK calls the host's imports):
        // a native build (a unit test, or `cargo build --workspace` on the
        // host) has no component to export from, and the exports' names
        // (`pkg:ns/iface@version#func`) are not symbols a native linker
        // accepts.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_root_world!($agent with_types_in $crate::bindings);
        // What the exports would call, named so a native build does not
        // find the agent unused.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(::std::string::String) -> ::std::result::Result<::std::string::String, ::std::string::String> =
            <$agent as $crate::bindings::Guest>::run;
    };
    ($agent:ident, saga) => {
        impl $crate::saga_bindings::Guest for $agent {
            fn run(input: ::std::string::String) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                <$agent as $crate::Agent>::run(input)
            }
        }
        impl $crate::saga_bindings::exports::agent_hypervisor::agent::saga_participant::Guest for $agent {
            fn execute(
                step: $crate::Step,
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                <$agent as $crate::SagaParticipant>::execute(&step, &input)
            }
            fn compensate(
                step: $crate::Step,
                input: ::std::string::String,
                output: ::std::string::String,
            ) -> ::std::result::Result<(), ::std::string::String> {
                <$agent as $crate::SagaParticipant>::compensate(&step, &input, &output)
            }
        }
        #[cfg(target_arch = "wasm32")]
        $crate::saga_bindings::__export_saga_world!($agent with_types_in $crate::saga_bindings);
        #[cfg(not(target_arch = "wasm32"))]
        const _: (
            fn(::std::string::String) -> ::std::result::Result<::std::string::String, ::std::string::String>,
            fn($crate::Step, ::std::string::String) -> ::std::result::Result<::std::string::String, ::std::string::String>,
            fn($crate::Step, ::std::string::String, ::std::string::String) -> ::std::result::Result<(), ::std::string::String>,
        ) = (
            <$agent as $crate::saga_bindings::Guest>::run,
            <$agent as $crate::saga_bindings::exports::agent_hypervisor::agent::saga_participant::Guest>::execute,
            <$agent as $crate::saga_bindings::exports::agent_hypervisor::agent::saga_participant::Guest>::compensate,
        );
    };
}

/// Structured input and answers (feature `json`).
///
/// The convention: `run` takes and returns text, and an agent that wants
/// structure takes a JSON document as its input and answers with one; a
/// failure stays a plain message. [`json::input`] parses the input (its
/// error names what was wrong and where, ready to return), [`json::answer`]
/// writes the answer.
///
/// ```no_run
/// use agent_sdk::{Agent, export_agent, json};
///
/// #[derive(serde::Deserialize)]
/// struct Ask { name: String, times: u32 }
///
/// #[derive(serde::Serialize)]
/// struct Reply { greeting: String }
///
/// struct Greeter;
///
/// impl Agent for Greeter {
///     fn run(input: String) -> Result<String, String> {
///         let ask: Ask = json::input(&input)?;
///         json::answer(&Reply { greeting: format!("hello {}", ask.name).repeat(ask.times as usize) })
///     }
/// }
///
/// export_agent!(Greeter);
/// ```
#[cfg(feature = "json")]
pub mod json {
    pub use serde_json::{Value, json};

    /// Parses `input` as JSON of type `T`.
    ///
    /// # Errors
    /// A message naming the expected type and serde's reason with its line
    /// and column (`input is not the JSON expected (app::Ask): missing field
    /// `name` at line 1 column 12`).
    pub fn input<T: serde::de::DeserializeOwned>(input: &str) -> Result<T, String> {
        serde_json::from_str(input).map_err(|e| {
            format!(
                "input is not the JSON expected ({}): {e}",
                std::any::type_name::<T>()
            )
        })
    }

    /// Writes `value` as the agent's JSON answer.
    ///
    /// # Errors
    /// A message when `value` cannot be written as JSON (a map with
    /// non-string keys, a serializer's own error).
    pub fn answer<T: serde::Serialize>(value: &T) -> Result<String, String> {
        serde_json::to_string(value)
            .map_err(|e| format!("the answer cannot be written as JSON: {e}"))
    }
}

/// Outbound HTTP (capability `net`, ring 1 and below, or ring 2 by a
/// per-agent policy grant; feature `http`): WASI's HTTP client, governed by
/// the host's allow-list.
#[cfg(all(feature = "http", feature = "net"))]
pub mod http;

/// Who am I: the calling agent's identity and ring (capability `context`, every ring).
pub mod context {
    use crate::imports::context as raw;

    /// The calling agent's identity, ring and current trace id.
    pub use crate::bindings::agent_hypervisor::agent::context::AgentInfo;

    /// Returns the agent's id, session, ring and trace id.
    pub fn whoami() -> AgentInfo {
        raw::whoami()
    }

    /// Returns the agent's current ring (0 root … 3 sandbox).
    pub fn ring() -> u8 {
        raw::current_ring()
    }
}

/// Structured logging (capability `log`, every ring).
///
/// `log::info!("x = {}", x)` formats like `format!`. Plain `println!` and
/// `eprintln!` also end up in the agent's log, at levels info and warn.
pub mod log {
    use crate::imports::log as raw;

    /// Severity of a log line.
    pub use crate::bindings::agent_hypervisor::agent::log::Level;

    /// Appends one line to the agent's log at `level`.
    pub fn write(level: Level, message: &str) {
        raw::log(level, message);
    }

    #[doc(inline)]
    pub use crate::{
        __log_debug as debug, __log_error as error, __log_info as info, __log_trace as trace,
        __log_warn as warn,
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Trace, &::std::format!($($arg)*)) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)*)) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)*)) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)*)) }; }
#[doc(hidden)]
#[macro_export]
macro_rules! __log_error { ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)*)) }; }

/// The agent's files (capabilities `vfs-read`, every ring, and `vfs-write`, ring 2 and below).
///
/// Paths are relative POSIX paths such as `notes/today.md`: no leading `/`,
/// no `..`, no NUL. A bad path is an [`Error::InvalidPath`] value.
///
/// In a shared session, paths under `shared/` name the session's shared area
/// (every participant sees it, subject to each file's [`Acl`](vfs::Acl)); every other
/// path names the agent's private area, which no other agent can reach.
pub mod vfs {
    use crate::imports::vfs_read;
    #[cfg(feature = "vfs-write")]
    use crate::imports::vfs_write;

    pub use crate::Error;
    /// Who may do something to a file.
    pub use crate::bindings::agent_hypervisor::agent::types::Access;
    /// A file's access control list.
    pub use crate::bindings::agent_hypervisor::agent::types::Acl;
    /// File or directory.
    pub use crate::bindings::agent_hypervisor::agent::vfs_read::EntryKind;
    /// Metadata of one entry.
    pub use crate::bindings::agent_hypervisor::agent::vfs_read::EntryStat as Stat;

    /// Reads a whole file.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied`, `Quota` (file too large to read) or `Io`.
    pub fn read(path: &str) -> Result<Vec<u8>, Error> {
        vfs_read::read(path)
    }

    /// Reads a whole file as UTF-8 text.
    ///
    /// # Errors
    /// As [`read`]; invalid UTF-8 is reported as `Io`.
    pub fn read_to_string(path: &str) -> Result<String, Error> {
        let bytes = read(path)?;
        String::from_utf8(bytes).map_err(|e| Error::Io(format!("{path}: not UTF-8 text: {e}")))
    }

    /// Lists a directory (`"."` is the agent's root); names are sorted.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` or `Io`.
    pub fn list(path: &str) -> Result<Vec<String>, Error> {
        vfs_read::list_dir(path)
    }

    /// Describes one entry.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` or `Io`.
    pub fn stat(path: &str) -> Result<Stat, Error> {
        vfs_read::stat(path)
    }

    /// SHA-256 of a file's content (64 lower-case hex digits).
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` or `Io`.
    pub fn hash(path: &str) -> Result<String, Error> {
        vfs_read::hash(path)
    }

    /// A shared file's access control list.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound` or `Denied` (outside a session there are no ACLs).
    pub fn acl(path: &str) -> Result<Acl, Error> {
        vfs_read::get_acl(path)
    }

    #[cfg(feature = "vfs-write")]
    /// Replaces a shared file's ACL: only its owner, or an agent in ring 1 or 0, may.
    /// Needs ring 2 or below.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` or `Conflict`.
    pub fn set_acl(path: &str, acl: &Acl) -> Result<(), Error> {
        vfs_write::set_acl(path, acl)
    }

    #[cfg(feature = "vfs-write")]
    /// Replaces or creates a file atomically, creating parent directories.
    /// Needs ring 2 or below: in ring 3 this call is a ring breach.
    ///
    /// # Errors
    /// `InvalidPath`, `Denied`, `Quota` or `Io`.
    pub fn write(path: &str, contents: impl AsRef<[u8]>) -> Result<(), Error> {
        vfs_write::write(path, contents.as_ref())
    }

    #[cfg(feature = "vfs-write")]
    /// Appends to a file, creating it if needed. Needs ring 2 or below.
    ///
    /// # Errors
    /// `InvalidPath`, `Denied`, `Quota` or `Io`.
    pub fn append(path: &str, contents: impl AsRef<[u8]>) -> Result<(), Error> {
        vfs_write::append(path, contents.as_ref())
    }

    #[cfg(feature = "vfs-write")]
    /// Deletes a file or an empty directory. Needs ring 2 or below.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `Denied` or `Io`.
    pub fn delete(path: &str) -> Result<(), Error> {
        vfs_write::delete(path)
    }

    #[cfg(feature = "vfs-write")]
    /// Renames `src` to `dst` (which must not exist). Needs ring 2 or below.
    ///
    /// # Errors
    /// `InvalidPath`, `NotFound`, `AlreadyExists`, `Denied` or `Io`.
    pub fn rename(src: &str, dst: &str) -> Result<(), Error> {
        vfs_write::rename(src, dst)
    }

    #[cfg(feature = "vfs-write")]
    /// Creates a directory and its parents. Needs ring 2 or below.
    ///
    /// # Errors
    /// `InvalidPath`, `Denied`, `Quota` or `Io`.
    pub fn create_dir(path: &str) -> Result<(), Error> {
        vfs_write::create_dir(path)
    }
}

#[cfg(feature = "actions")]
/// Host-registered reversible actions (capability `actions`, ring 2 and below).
pub mod actions {
    use crate::imports::actions as raw;

    /// Runs the reversible action `name`; the host keeps its undo record.
    ///
    /// # Errors
    /// `UnknownAction`, `ActionFailed` or an error of the resource it touched.
    pub fn invoke(name: &str, args: &str) -> Result<String, crate::Error> {
        raw::invoke(name, args)
    }

    /// Names of the reversible actions the host offers.
    ///
    /// # Errors
    /// `RateLimited` or `Quarantined`, like every metered call.
    pub fn available() -> Result<Vec<String>, crate::Error> {
        raw::available()
    }
}

#[cfg(feature = "effects")]
/// Host-registered non-reversible effects (capability `effects`, ring 1 and below).
pub mod effects {
    use crate::imports::effects as raw;

    /// Runs the non-reversible effect `name`.
    ///
    /// # Errors
    /// `UnknownAction`, `ActionFailed` or an error of the resource it touched.
    pub fn invoke(name: &str, args: &str) -> Result<String, crate::Error> {
        raw::invoke(name, args)
    }

    /// Names of the effects the host offers.
    ///
    /// # Errors
    /// `RateLimited` or `Quarantined`, like every metered call.
    pub fn available() -> Result<Vec<String>, crate::Error> {
        raw::available()
    }
}

/// The session's shared key-value state (capabilities `state-read`, every
/// ring, and `state-write`, ring 2 and below).
///
/// Every value has a version. A write names the version it read (0 for a key
/// that must not exist yet); if someone else wrote in between, the write is a
/// [`Error::Conflict`] value: read again and retry.
///
/// ```no_run
/// use agent_sdk::state;
/// // Increment a shared counter, retrying on conflicts.
/// loop {
///     let (n, version) = match state::get("counter").unwrap() {
///         Some(v) => (String::from_utf8_lossy(&v.value).parse::<u64>().unwrap_or(0), v.version),
///         None => (0, 0),
///     };
///     match state::put("counter", (n + 1).to_string(), version) {
///         Ok(_) => break,
///         Err(state::Error::Conflict(_)) => continue,
///         Err(e) => panic!("{e}"),
///     }
/// }
/// ```
pub mod state {
    use crate::imports::state_read;
    #[cfg(feature = "state-write")]
    use crate::imports::state_write;

    pub use crate::Error;
    /// A value with its version, vector clock and writer.
    pub use crate::bindings::agent_hypervisor::agent::state_read::Versioned;

    /// Reads `key`; `None` if it does not exist.
    ///
    /// # Errors
    /// `InvalidPath` (a bad key), `Denied` (isolation needs a lock) or `Denied`
    /// outside a session.
    pub fn get(key: &str) -> Result<Option<Versioned>, Error> {
        state_read::get(key)
    }

    /// Keys starting with `prefix`, sorted.
    ///
    /// # Errors
    /// `Denied` outside a session.
    pub fn keys(prefix: &str) -> Result<Vec<String>, Error> {
        state_read::keys(prefix)
    }

    #[cfg(feature = "state-write")]
    /// Writes `key` if it is still at `expected_version`; returns the new version.
    /// Needs ring 2 or below.
    ///
    /// # Errors
    /// `Conflict` (someone wrote in between), `Quota`, `Denied`.
    pub fn put(key: &str, value: impl AsRef<[u8]>, expected_version: u64) -> Result<u64, Error> {
        state_write::put(key, value.as_ref(), expected_version)
    }

    #[cfg(feature = "state-write")]
    /// Deletes `key` if it is still at `expected_version`. Needs ring 2 or below.
    ///
    /// # Errors
    /// `Conflict`, `NotFound`, `Denied`.
    pub fn delete(key: &str, expected_version: u64) -> Result<(), Error> {
        state_write::delete(key, expected_version)
    }

    /// Reads `key` as JSON (feature `json`); `None` if it does not exist.
    ///
    /// # Errors
    /// As [`get`], and `InvalidKey` naming the key when its value is not
    /// JSON of type `T`.
    #[cfg(feature = "json")]
    pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
        match get(key)? {
            Some(v) => decode(key, &v.value).map(Some),
            None => Ok(None),
        }
    }

    #[cfg(feature = "state-write")]
    /// Writes `value` as JSON (feature `json`) if `key` is still at
    /// `expected_version`; returns the new version. Needs ring 2 or below.
    ///
    /// # Errors
    /// As [`put`].
    #[cfg(feature = "json")]
    pub fn put_json<T: serde::Serialize>(
        key: &str,
        value: &T,
        expected_version: u64,
    ) -> Result<u64, Error> {
        put(key, encode(key, value)?, expected_version)
    }

    #[cfg(feature = "state-write")]
    /// [`update`] on a JSON value (feature `json`): `f` gets the current
    /// value (`None` if the key does not exist) and returns the new one.
    ///
    /// ```no_run
    /// use agent_sdk::state;
    /// #[derive(serde::Serialize, serde::Deserialize, Default)]
    /// struct Tally { runs: u64 }
    /// state::update_json("tally", |old: Option<Tally>| {
    ///     let mut t = old.unwrap_or_default();
    ///     t.runs += 1;
    ///     t
    /// })?;
    /// # Ok::<(), state::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`update`]; `InvalidKey` naming the key when the stored value is
    /// not JSON of type `T` (nothing is written then).
    #[cfg(feature = "json")]
    pub fn update_json<T: serde::Serialize + serde::de::DeserializeOwned>(
        key: &str,
        mut f: impl FnMut(Option<T>) -> T,
    ) -> Result<u64, Error> {
        update_with(key, |current| {
            let old = current.map(|v| decode(key, v)).transpose()?;
            encode(key, &f(old))
        })
    }

    #[cfg(feature = "json")]
    fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::InvalidKey(format!(
                "the value of {key:?} is not JSON of type {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    #[cfg(feature = "state-write")]
    #[cfg(feature = "json")]
    fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(value).map_err(|e| {
            Error::InvalidKey(format!(
                "the new value of {key:?} cannot be written as JSON: {e}"
            ))
        })
    }

    #[cfg(feature = "state-write")]
    /// How many times [`update`] tries before it gives up on a key that
    /// others keep changing.
    pub const UPDATE_ATTEMPTS: u32 = 16;

    #[cfg(feature = "state-write")]
    /// The compare-and-set loop, written once: reads `key`, computes its new
    /// value with `f` (given the current value, `None` if the key does not
    /// exist) and writes it if nobody wrote in between; on a conflict it
    /// reads again and calls `f` again, up to [`UPDATE_ATTEMPTS`] times.
    /// Returns the new version. Needs ring 2 or below.
    ///
    /// `f` may run more than once, so it should only compute (no writes of
    /// its own). A key that other agents change constantly can still make
    /// every attempt lose: then the last `Conflict` is returned. Under
    /// snapshot isolation a call keeps reading its snapshot, so a lost race
    /// cannot be won again within the call: the `Conflict` is returned at
    /// once (the next call sees the new value).
    ///
    /// ```no_run
    /// use agent_sdk::state;
    /// // Increment a shared counter.
    /// let version = state::update("counter", |old| {
    ///     let n: u64 = old
    ///         .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
    ///         .unwrap_or(0);
    ///     (n + 1).to_string().into_bytes()
    /// })?;
    /// # Ok::<(), state::Error>(())
    /// ```
    ///
    /// # Errors
    /// `Conflict` after [`UPDATE_ATTEMPTS`] lost races; the read's and the
    /// write's own errors (`Denied`, `Quota`, `RateLimited`, …) at once.
    pub fn update(key: &str, mut f: impl FnMut(Option<&[u8]>) -> Vec<u8>) -> Result<u64, Error> {
        update_with(key, |current| Ok(f(current)))
    }

    #[cfg(feature = "state-write")]
    /// [`update`]'s loop, with an `f` that may fail (nothing is written then).
    fn update_with(
        key: &str,
        mut f: impl FnMut(Option<&[u8]>) -> Result<Vec<u8>, Error>,
    ) -> Result<u64, Error> {
        let mut lost: Option<(u64, Error)> = None;
        for _ in 0..UPDATE_ATTEMPTS {
            let current = get(key)?;
            let version = current.as_ref().map_or(0, |v| v.version);
            // A read that shows what lost already (a snapshot): another
            // attempt would lose the same way.
            if let Some((v, e)) = lost.take()
                && v == version
            {
                return Err(e);
            }
            let value = f(current.as_ref().map(|v| v.value.as_slice()))?;
            match put(key, value, version) {
                Err(e @ Error::Conflict(_)) => lost = Some((version, e)),
                other => return other,
            }
        }
        Err(lost.map_or_else(
            || Error::Conflict(format!("{key:?}: no attempt made")),
            |(_, e)| e,
        ))
    }
}

#[cfg(feature = "locks")]
/// Intent locks on shared paths and state keys (capability `locks`, ring 2
/// and below). Locks are released when the agent releases them, leaves the
/// session, traps or is killed.
pub mod locks {
    use crate::imports::locks as raw;

    pub use crate::Error;
    /// Lock modes: only read + read share.
    pub use crate::bindings::agent_hypervisor::agent::locks::LockMode as Mode;
    /// What a lock protects: a path or a state key.
    pub use crate::bindings::agent_hypervisor::agent::locks::LockTarget as Target;

    /// Takes a lock, waiting up to `wait_ms` (0: fail at once with `Conflict`).
    ///
    /// # Errors
    /// `Conflict`, `Timeout`, `Deadlock` (waiting would close a cycle).
    pub fn acquire(target: &Target, mode: Mode, wait_ms: u32) -> Result<(), Error> {
        raw::acquire(target, mode, wait_ms)
    }

    /// Releases a lock.
    ///
    /// # Errors
    /// `NotFound` if the caller does not hold it.
    pub fn release(target: &Target) -> Result<(), Error> {
        raw::release(target)
    }

    /// The locks the caller holds.
    ///
    /// # Errors
    /// `RateLimited` or `Quarantined`, like every metered call.
    pub fn held() -> Result<Vec<(Target, Mode)>, Error> {
        raw::held()
    }

    /// Takes a lock like [`acquire`] and returns a guard that releases it
    /// when dropped, on every path out of the scope (an early `return`, a
    /// `?`). The host also releases an agent's locks when it leaves the
    /// session, traps or is killed. A guard never releases a lock the caller
    /// held before it (the host keeps one lock per target: taking it again
    /// keeps it, a stronger mode upgrades it, and the upgrade then stays).
    ///
    /// ```no_run
    /// use agent_sdk::{locks, vfs};
    /// let report = locks::Target::Path("shared/report.txt".into());
    /// let _guard = locks::lock(&report, locks::Mode::Write, 1_000)?;
    /// vfs::append("shared/report.txt", "one more line\n")?;
    /// // released here
    /// # Ok::<(), locks::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`acquire`].
    pub fn lock(target: &Target, mode: Mode, wait_ms: u32) -> Result<Guard, Error> {
        // The host keeps one lock per target (taking it again is a no-op or
        // an upgrade) and a release drops it whole: a guard over a lock the
        // caller already held must not release it.
        let already = held()?.iter().any(|(t, _)| same(t, target));
        acquire(target, mode, wait_ms)?;
        Ok(Guard {
            target: (!already).then(|| target.clone()),
        })
    }

    fn same(a: &Target, b: &Target) -> bool {
        match (a, b) {
            (Target::Path(x), Target::Path(y)) | (Target::Key(x), Target::Key(y)) => x == y,
            _ => false,
        }
    }

    /// A held lock, released when dropped (see [`lock`]).
    #[must_use = "dropping the guard releases the lock at once"]
    #[derive(Debug)]
    pub struct Guard {
        target: Option<Target>,
    }

    impl Guard {
        /// What the guard holds.
        pub fn target(&self) -> Option<&Target> {
            self.target.as_ref()
        }

        /// Releases the lock now and says whether the host released it
        /// (dropping the guard does the same and ignores the answer).
        ///
        /// # Errors
        /// `NotFound` if the lock was already gone (the host withdrew it).
        pub fn release(mut self) -> Result<(), Error> {
            match self.target.take() {
                Some(t) => release(&t),
                None => Ok(()),
            }
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(t) = self.target.take() {
                // Nothing to do about a lock the host already withdrew.
                let _ = release(&t);
            }
        }
    }

    /// Runs `f` while holding `mode` on `target`, releasing it afterwards
    /// (unless the caller held it before: see [`lock`]).
    ///
    /// # Errors
    /// The acquire error; `f`'s own result otherwise.
    pub fn with<T>(
        target: &Target,
        mode: Mode,
        wait_ms: u32,
        f: impl FnOnce() -> T,
    ) -> Result<T, Error> {
        let guard = lock(target, mode, wait_ms)?;
        let out = f();
        guard.release()?;
        Ok(out)
    }
}

/// Ask for a more privileged ring for a while (capability `elevation`,
/// every ring). The host decides by its rules: the target must be more
/// privileged than the caller's base ring and never ring 0, one elevation at
/// a time, a minimum trust score, and for ring 1 a sponsor's signed
/// attestation. Until it runs out, every host call is judged at the
/// elevated ring.
///
/// ```no_run
/// use agent_sdk::{elevation, vfs};
/// // A ring 3 agent asks for ring 2 for a minute, writes, and gives it back.
/// elevation::request(2, 60, "write the nightly report", None).map_err(|e| e.to_string())?;
/// vfs::write("report.txt", "done").map_err(|e| e.to_string())?;
/// elevation::relinquish().map_err(|e| e.to_string())?;
/// # Ok::<(), String>(())
/// ```
pub mod elevation {
    use crate::imports::elevation as raw;

    pub use crate::Error;
    /// An elevation in force: its ring and the milliseconds left.
    pub use crate::bindings::agent_hypervisor::agent::elevation::Grant;

    /// Asks for `ring` for `ttl_secs` seconds (0: the host's default),
    /// with a justification and, for ring 1, a sponsor's attestation (text form).
    ///
    /// # Errors
    /// `Denied` naming the rule that refused, `RateLimited`, `Quarantined`.
    pub fn request(
        ring: u8,
        ttl_secs: u32,
        justification: &str,
        sponsorship: Option<&str>,
    ) -> Result<Grant, Error> {
        raw::request(ring, ttl_secs, justification, sponsorship)
    }

    /// Gives up the caller's elevation; true if one was in force.
    ///
    /// # Errors
    /// `RateLimited`, `Quarantined`.
    pub fn relinquish() -> Result<bool, Error> {
        raw::relinquish()
    }

    /// The caller's elevation in force, if any.
    ///
    /// # Errors
    /// `RateLimited`, `Quarantined`.
    pub fn current() -> Result<Option<Grant>, Error> {
        raw::current()
    }
}

#[cfg(feature = "spawn")]
/// Child agents (capability `spawn`, ring 1 and below). A child runs in the
/// caller's session at `min(caller's ring + 1, 3)`; each ring limits how
/// many children an agent may have and how deep they may nest; stopping the
/// caller stops its children.
pub mod spawn {
    use crate::imports::spawn as raw;

    pub use crate::Error;

    /// Starts a child from a component the host offers (its name or SHA-256
    /// digest); returns the child's agent id.
    ///
    /// # Errors
    /// `NotFound` (no such component), `Denied` (a limit), `RateLimited`.
    pub fn start(component: &str) -> Result<String, Error> {
        raw::start(component)
    }

    /// Runs the child with `input`: its answer or its own failure message.
    ///
    /// # Errors
    /// `NotFound` (not a child of the caller), `ActionFailed` (it trapped),
    /// `Timeout` (not within the caller's deadline).
    pub fn run(child: &str, input: &str) -> Result<Result<String, String>, Error> {
        raw::run(child, input)
    }

    /// Stops a child and its children.
    ///
    /// # Errors
    /// `NotFound` (not a child of the caller).
    pub fn stop(child: &str) -> Result<(), Error> {
        raw::stop(child)
    }

    /// The caller's live children.
    ///
    /// # Errors
    /// `RateLimited`, `Quarantined`.
    pub fn children() -> Result<Vec<String>, Error> {
        raw::children()
    }
}

#[cfg(feature = "admin")]
/// Administration of the other agents of the session (capability `admin`,
/// ring 0 only): the same operations, rules and audit as the host API.
pub mod admin {
    use crate::imports::admin as raw;

    pub use crate::Error;
    /// What the host knows about one participant.
    pub use crate::bindings::agent_hypervisor::agent::admin::Participant;

    /// The participants of the caller's session, sorted by id.
    ///
    /// # Errors
    /// `Denied` outside a governed session.
    pub fn participants() -> Result<Vec<Participant>, Error> {
        raw::participants()
    }

    /// One participant.
    ///
    /// # Errors
    /// `NotFound` if no such participant.
    pub fn inspect(agent: &str) -> Result<Participant, Error> {
        raw::inspect(agent)
    }

    /// Kills a participant: its running call stops and it leaves the session.
    ///
    /// # Errors
    /// `NotFound`, `Denied` (for example the caller itself).
    pub fn kill(agent: &str, reason: &str) -> Result<(), Error> {
        raw::kill(agent, reason)
    }

    /// Quarantines a participant for `secs` seconds (0: until released).
    ///
    /// # Errors
    /// `NotFound`, `Denied`.
    pub fn quarantine(agent: &str, reason: &str, secs: u32) -> Result<(), Error> {
        raw::quarantine(agent, reason, secs)
    }

    /// Ends a participant's quarantine; true if it was quarantined.
    ///
    /// # Errors
    /// `NotFound`, `Denied`.
    pub fn release(agent: &str) -> Result<bool, Error> {
        raw::release(agent)
    }
}
