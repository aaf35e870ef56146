//! Policy files: every rule an operator may change, in one TOML file.
//!
//! A [`PolicyFile`] is what the file says; [`PolicyFile::load`] and
//! [`PolicyFile::parse`] turn it into the effective [`Policy`]: the default
//! table with the file's changes applied and checked. The format, every
//! field, its default and where it is enforced are in `docs/policy.md`.
//!
//! Rules of the format:
//! - unknown fields are refused everywhere (`deny_unknown_fields`), and every
//!   field accepted has an enforcement point (no field is parsed and ignored);
//! - a ring may only *narrow* the default table's capabilities for that ring
//!   (a capability the default ring lacks is refused as a widening), and the
//!   result must still grow with privilege ([`RingPolicy::set_limits`]);
//! - a missing field keeps its default; an agent listed under `[agents]`
//!   gets exactly the actions and effects it lists, nothing else.
//!
//! ```
//! use ahv_core::{Capability, Ring};
//! use ahv_security::policy::PolicyFile;
//!
//! let policy = PolicyFile::parse(
//!     r#"
//!     [rings.standard]
//!     capabilities = ["context", "log", "vfs-read", "state-read", "elevation", "vfs-write"]
//!     fuel_per_call = 50_000_000
//!     log_lines = 100
//!
//!     [rate_limits.standard]
//!     change = { rate_per_sec = 1.0, burst = 5 }
//!
//!     [agents."did:ex:writer"]
//!     actions = ["note.append"]
//!     "#,
//! )?;
//! let standard = policy.rings.limits(Ring::Standard);
//! assert!(!standard.capabilities.contains(Capability::Locks));
//! assert_eq!(standard.log_lines, 100);
//! assert!(policy.render_table().contains("fuel_per_call"));
//!
//! // A ring may not gain what the default table does not give it.
//! let err = PolicyFile::parse("[rings.sandbox]\ncapabilities = [\"vfs-write\"]\n").unwrap_err();
//! assert!(err.to_string().contains("widening"));
//! # Ok::<(), ahv_security::policy::PolicyError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ahv_core::{AgentId, Capability, IdError, Ring, RingError, RingLimits, RingPolicy};
use serde::Deserialize;
use thiserror::Error;

use crate::breach::{BreachAction, BreachPolicy, BreachTrigger};
use crate::elevation::ElevationRules;
use crate::net::{NetPolicy, NetPolicyError, NetSection};
use crate::rate::{BucketSpec, CallClass, RateError, RateTable};

/// Largest policy file read, in bytes: a policy is a page, not a data set.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// The name a policy parsed from text (not from a file) goes by in errors.
const TEXT_NAME: &str = "<policy text>";

/// A policy file as written: every section optional, every field optional
/// inside it. [`PolicyFile::parse`] and [`PolicyFile::load`] check it and
/// return the effective [`Policy`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyFile {
    /// `[rings.<ring>]`: capabilities (narrowing only) and budgets, by ring
    /// name (`sandbox`) or number (`3`).
    pub rings: BTreeMap<String, RingSection>,
    /// `[rate_limits.<ring>]`: the token buckets of metered host calls.
    pub rate_limits: BTreeMap<String, RateSection>,
    /// `[breach]`: the breach rules per base ring and the breach detector.
    pub breach: BreachPolicy,
    /// `[elevation]`: the rules elevation requests are decided by.
    pub elevation: ElevationRules,
    /// `[agents."<agent id>"]`: the host actions and effects a listed agent
    /// may invoke, and whether it may use `net` in ring 2.
    pub agents: BTreeMap<String, GrantsSection>,
    /// `[net]`: the outbound HTTP allow-list and limits ([`crate::net`]).
    pub net: NetSection,
}

/// `[rings.<ring>]`: a missing field keeps the default table's value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingSection {
    /// The ring's capabilities (WIT interface names): a subset of the default's.
    pub capabilities: Option<Vec<String>>,
    /// Wasm fuel per call.
    pub fuel_per_call: Option<u64>,
    /// Linear memory and tables of the instance, in bytes.
    pub memory_bytes: Option<u64>,
    /// Wall-clock deadline per call, in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Most bytes passed to the host in one host call.
    pub hostcall_bytes: Option<usize>,
    /// Largest answer `run` may return, in bytes.
    pub result_bytes: Option<usize>,
    /// Most bytes one WASI random request may produce.
    pub random_bytes: Option<usize>,
    /// Most live entries in the instance's resource table.
    pub max_resources: Option<usize>,
    /// Most log lines kept per call.
    pub log_lines: Option<usize>,
    /// Most log bytes kept per call.
    pub log_bytes: Option<usize>,
    /// Most core module instances one agent instance may create.
    pub max_core_instances: Option<u32>,
    /// Most linear memories one agent instance may define.
    pub max_memories: Option<u32>,
    /// Most tables one agent instance may define.
    pub max_tables: Option<u32>,
}

/// `[rate_limits.<ring>]`: a missing class keeps the default table's bucket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSection {
    /// Calls that change something or reach out.
    pub change: Option<BucketSpec>,
    /// Calls that only read.
    pub read: Option<BucketSpec>,
}

/// `[agents."<agent id>"]`: what a listed agent may invoke. A list left out
/// grants nothing of its kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantsSection {
    /// Reversible host actions (the `actions` capability), by name.
    pub actions: Vec<String>,
    /// Non-reversible effects (the `effects` capability), by name.
    pub effects: Vec<String>,
    /// Whether the agent may use `net` (outbound HTTP) when its ring is 2
    /// (standard) as well as in ring 1 and 0; default false.
    pub net: bool,
}

/// The host actions and effects one agent is granted: every other name is
/// unknown to it (`unknown-action`), as if it were not registered. Its ring
/// still decides whether it may call `actions` or `effects` at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Reversible actions it may invoke.
    pub actions: BTreeSet<String>,
    /// Effects it may invoke.
    pub effects: BTreeSet<String>,
    /// `net` is granted in ring 2 too.
    pub net: bool,
}

/// The effective policy: the default tables with a policy file's changes.
/// `Policy::default()` is the default everything, with no per-agent grants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Capabilities and budgets per ring.
    pub rings: RingPolicy,
    /// Rate limits per ring and call class.
    pub rate: RateTable,
    /// What a breach costs, per base ring, and the breach detector.
    pub breach: BreachPolicy,
    /// The elevation rules.
    pub elevation: ElevationRules,
    /// Per-agent grants of host actions and effects; an agent not listed
    /// gets every registered one (subject to its ring).
    pub grants: BTreeMap<AgentId, Grants>,
    /// The outbound HTTP allow-list and limits (default: every destination refused).
    pub net: NetPolicy,
}

/// Why a policy file was refused. Each variant names the file, the field
/// (as a TOML path, `rings.sandbox.capabilities`) and the value.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error("{file}: {size} bytes; a policy file may hold at most {MAX_POLICY_BYTES}")]
    TooLarge {
        /// The file.
        file: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not TOML, an unknown field, a value of the wrong type or out of range
    /// (toml's message, with the line and column).
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// toml's message: the line, the excerpt and what is wrong.
        message: String,
    },
    /// A ring key that is not a ring.
    #[error(
        "{file}: {field}: {value:?} is not a ring (0..3 or root, privileged, standard, sandbox)"
    )]
    UnknownRing {
        /// The file.
        file: String,
        /// The section (`rings` or `rate_limits`).
        field: String,
        /// The key given.
        value: String,
    },
    /// The same ring given twice (by name and by number).
    #[error("{file}: {field}: {ring} is given twice ({first:?} and {second:?})")]
    DuplicateRing {
        /// The file.
        file: String,
        /// The section.
        field: String,
        /// The ring.
        ring: Ring,
        /// The first key.
        first: String,
        /// The second key.
        second: String,
    },
    /// A capability name that is not a WIT interface of the contract.
    #[error("{file}: {field}: {value:?} is not a capability (WIT interface names: {known})")]
    UnknownCapability {
        /// The file.
        file: String,
        /// The field.
        field: String,
        /// The name given.
        value: String,
        /// The names that exist.
        known: String,
    },
    /// A capability the default table does not give the ring: a policy may
    /// only narrow a ring.
    #[error(
        "{file}: {field}: {capability} is a widening: {ring} does not have it in the default table, and a policy may only narrow a ring"
    )]
    Widening {
        /// The file.
        file: String,
        /// The field.
        field: String,
        /// The ring.
        ring: Ring,
        /// The capability.
        capability: Capability,
    },
    /// The ring's limits were refused (a zero budget, or capabilities that no
    /// longer grow with privilege).
    #[error("{file}: {field}: {source}")]
    Ring {
        /// The file.
        file: String,
        /// The section.
        field: String,
        /// Why.
        #[source]
        source: RingError,
    },
    /// A rate bucket was refused.
    #[error("{file}: {field}: {source}")]
    Rate {
        /// The file.
        file: String,
        /// The bucket (`rate_limits.standard.change`).
        field: String,
        /// Why.
        #[source]
        source: RateError,
    },
    /// The `[net]` section was refused.
    #[error("{file}: {source}")]
    Net {
        /// The file.
        file: String,
        /// The field and why.
        #[source]
        source: NetPolicyError,
    },
    /// An `[agents]` key that is not a valid agent id.
    #[error("{file}: agents.{value:?}: not an agent id: {source}")]
    AgentId {
        /// The file.
        file: String,
        /// The key given.
        value: String,
        /// Why.
        #[source]
        source: IdError,
    },
}

impl PolicyFile {
    /// Reads, parses and checks the policy file at `path`.
    ///
    /// # Errors
    /// [`PolicyError::Read`] or [`PolicyError::TooLarge`] for the file;
    /// otherwise as [`PolicyFile::parse`], naming `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        use std::io::Read as _;
        let path = path.as_ref();
        let read = |source| PolicyError::Read {
            file: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_POLICY_BYTES + 1).read_to_string(&mut text))
            .map_err(read)?;
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                file: path.to_path_buf(),
                size: text.len() as u64,
            });
        }
        Self::parse_named(&text, &path.display().to_string())
    }

    /// Parses and checks a policy from its text.
    ///
    /// # Errors
    /// [`PolicyError::Syntax`] for bad TOML, an unknown field, a value of the
    /// wrong type or out of range, a bad breach rule or elevation rule (with
    /// toml's line and column); the other [`PolicyError`] variants for ring
    /// keys, capabilities, budgets, rate buckets and agent ids.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        Self::parse_named(text, TEXT_NAME)
    }

    fn parse_named(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let raw: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        raw.resolve(file)
    }

    /// Applies the file to the defaults and checks the result.
    fn resolve(self, file: &str) -> Result<Policy, PolicyError> {
        let rings = resolve_rings(file, self.rings)?;
        let rate = resolve_rates(file, self.rate_limits)?;
        let mut grants = BTreeMap::new();
        for (key, g) in self.agents {
            let agent = AgentId::new(key.as_str()).map_err(|source| PolicyError::AgentId {
                file: file.to_string(),
                value: key.clone(),
                source,
            })?;
            grants.insert(
                agent,
                Grants {
                    actions: g.actions.into_iter().collect(),
                    effects: g.effects.into_iter().collect(),
                    net: g.net,
                },
            );
        }
        let net =
            NetPolicy::from_section(self.net, |var| std::env::var(var).ok()).map_err(|source| {
                PolicyError::Net {
                    file: file.to_string(),
                    source,
                }
            })?;
        Ok(Policy {
            rings,
            rate,
            breach: self.breach,
            elevation: self.elevation,
            grants,
            net,
        })
    }
}

/// Maps each key of a per-ring section to its ring, refusing unknown rings
/// and a ring given twice.
fn by_ring<T>(
    file: &str,
    section: &str,
    entries: BTreeMap<String, T>,
) -> Result<BTreeMap<Ring, (String, T)>, PolicyError> {
    let mut out: BTreeMap<Ring, (String, T)> = BTreeMap::new();
    for (key, value) in entries {
        let ring: Ring = key.parse().map_err(|_| PolicyError::UnknownRing {
            file: file.to_string(),
            field: section.to_string(),
            value: key.clone(),
        })?;
        if let Some((first, _)) = out.get(&ring) {
            return Err(PolicyError::DuplicateRing {
                file: file.to_string(),
                field: section.to_string(),
                ring,
                first: first.clone(),
                second: key,
            });
        }
        out.insert(ring, (key, value));
    }
    Ok(out)
}

fn resolve_rings(
    file: &str,
    sections: BTreeMap<String, RingSection>,
) -> Result<RingPolicy, PolicyError> {
    let mut policy = RingPolicy::default();
    // Least privileged first: a ring is checked against the final form of the
    // rings below it and the defaults above it, so any set of narrowings that
    // keeps the table monotonic is accepted whatever order the file uses.
    for (ring, (key, s)) in by_ring(file, "rings", sections)?.into_iter().rev() {
        let field = format!("rings.{key}");
        let default = RingLimits::default_for(ring);
        let mut limits = default.clone();
        if let Some(names) = s.capabilities {
            let cap_field = format!("{field}.capabilities");
            let mut set = ahv_core::CapabilitySet::EMPTY;
            for name in names {
                let capability =
                    Capability::from_name(&name).ok_or_else(|| PolicyError::UnknownCapability {
                        file: file.to_string(),
                        field: cap_field.clone(),
                        value: name.clone(),
                        known: Capability::ALL.map(Capability::interface).join(", "),
                    })?;
                if !default.capabilities.contains(capability) {
                    return Err(PolicyError::Widening {
                        file: file.to_string(),
                        field: cap_field,
                        ring,
                        capability,
                    });
                }
                set = set.with(capability);
            }
            limits.capabilities = set;
        }
        let RingSection {
            capabilities: _,
            fuel_per_call,
            memory_bytes,
            deadline_ms,
            hostcall_bytes,
            result_bytes,
            random_bytes,
            max_resources,
            log_lines,
            log_bytes,
            max_core_instances,
            max_memories,
            max_tables,
        } = s;
        limits.fuel_per_call = fuel_per_call.unwrap_or(limits.fuel_per_call);
        limits.memory_bytes = memory_bytes.unwrap_or(limits.memory_bytes);
        limits.deadline = deadline_ms.map_or(limits.deadline, Duration::from_millis);
        limits.hostcall_bytes = hostcall_bytes.unwrap_or(limits.hostcall_bytes);
        limits.result_bytes = result_bytes.unwrap_or(limits.result_bytes);
        limits.random_bytes = random_bytes.unwrap_or(limits.random_bytes);
        limits.max_resources = max_resources.unwrap_or(limits.max_resources);
        limits.log_lines = log_lines.unwrap_or(limits.log_lines);
        limits.log_bytes = log_bytes.unwrap_or(limits.log_bytes);
        limits.max_core_instances = max_core_instances.unwrap_or(limits.max_core_instances);
        limits.max_memories = max_memories.unwrap_or(limits.max_memories);
        limits.max_tables = max_tables.unwrap_or(limits.max_tables);
        policy
            .set_limits(ring, limits)
            .map_err(|source| PolicyError::Ring {
                file: file.to_string(),
                field: field.clone(),
                source,
            })?;
    }
    Ok(policy)
}

fn resolve_rates(
    file: &str,
    sections: BTreeMap<String, RateSection>,
) -> Result<RateTable, PolicyError> {
    let mut table = RateTable::default();
    for (ring, (key, s)) in by_ring(file, "rate_limits", sections)? {
        for (class, name, spec) in [
            (CallClass::Change, "change", s.change),
            (CallClass::Read, "read", s.read),
        ] {
            if let Some(spec) = spec {
                table = table
                    .with_spec(class, ring, spec)
                    .map_err(|source| PolicyError::Rate {
                        file: file.to_string(),
                        field: format!("rate_limits.{key}.{name}"),
                        source,
                    })?;
            }
        }
    }
    Ok(table)
}

impl Policy {
    /// The effective ring table as text: per ring (columns, least privileged
    /// first) its capabilities, budgets, rates and breach rule, named as in
    /// the policy file; then the breach detector, the elevation rules and
    /// the per-agent grants.
    pub fn render_table(&self) -> String {
        let rings: Vec<Ring> = Ring::ALL.into_iter().rev().collect();
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let mut row = |name: &str, cell: &dyn Fn(Ring) -> String| {
            rows.push((name.to_string(), rings.iter().map(|r| cell(*r)).collect()));
        };
        let limits = |r: Ring| self.rings.limits(r);
        for c in Capability::ALL {
            row(c.interface(), &|r| {
                if limits(r).capabilities.contains(c) {
                    "yes".into()
                } else {
                    "-".into()
                }
            });
        }
        row("fuel_per_call", &|r| limits(r).fuel_per_call.to_string());
        row("memory_bytes", &|r| limits(r).memory_bytes.to_string());
        row("deadline_ms", &|r| {
            limits(r).deadline.as_millis().to_string()
        });
        row("hostcall_bytes", &|r| limits(r).hostcall_bytes.to_string());
        row("result_bytes", &|r| limits(r).result_bytes.to_string());
        row("random_bytes", &|r| limits(r).random_bytes.to_string());
        row("max_resources", &|r| limits(r).max_resources.to_string());
        row("log_lines", &|r| limits(r).log_lines.to_string());
        row("log_bytes", &|r| limits(r).log_bytes.to_string());
        row("max_core_instances", &|r| {
            limits(r).max_core_instances.to_string()
        });
        row("max_memories", &|r| limits(r).max_memories.to_string());
        row("max_tables", &|r| limits(r).max_tables.to_string());
        let bucket = |s: BucketSpec| format!("{}/s burst {}", s.rate_per_sec, s.burst);
        row("rate change", &|r| {
            bucket(self.rate.spec(CallClass::Change, r))
        });
        row("rate read", &|r| bucket(self.rate.spec(CallClass::Read, r)));
        row("on breach", &|r| {
            let rule = self.breach.rule(r);
            let action = match rule.action {
                BreachAction::Expel => "expel".to_string(),
                BreachAction::Readmit { ring } => format!("readmit {}", ring.number()),
                BreachAction::Quarantine { secs } => format!("quarantine {secs}s"),
                BreachAction::Kill => "kill".to_string(),
            };
            match rule.trigger {
                BreachTrigger::EveryBreach => action,
                BreachTrigger::BreakerTrip => format!("{action} on trip"),
            }
        });

        let headers: Vec<String> = rings
            .iter()
            .map(|r| format!("{} {}", r.number(), r.name()))
            .collect();
        let first = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..rings.len())
            .map(|i| {
                rows.iter()
                    .map(|(_, cells)| cells[i].len())
                    .chain([headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let mut line = |name: &str, cells: &[String]| {
            let mut l = format!("{name:<first$}");
            for (cell, w) in cells.iter().zip(&widths) {
                let _ = write!(l, "  {cell:>w$}");
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line("ring", &headers);
        for (name, cells) in &rows {
            line(name, cells);
        }

        let d = self.breach.detector();
        let _ = writeln!(
            out,
            "\nbreach detector: window {} s, baseline {} per window, trips at {}, cooldown {} s, \
             {} events per agent, {} agents",
            d.window_secs,
            d.baseline_per_window,
            d.trip_at,
            d.cooldown_secs,
            d.max_events,
            d.max_keys
        );
        let e = &self.elevation;
        let _ = writeln!(
            out,
            "elevation: default TTL {} s, at most {} s; trust >= {} for ring 2, >= {} for ring 1 \
             (ring 1 also needs a signed sponsorship; ring 0 never)",
            e.default_ttl_secs, e.max_ttl_secs, e.min_trust_ring2, e.min_trust_ring1
        );
        if self.grants.is_empty() {
            out.push_str(
                "grants: none listed: every agent may invoke every registered action and effect its ring allows\n",
            );
        } else {
            out.push_str(
                "grants (listed agents get exactly these; others get every registered one):\n",
            );
            let list = |s: &BTreeSet<String>| {
                if s.is_empty() {
                    "none".to_string()
                } else {
                    s.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            };
            for (agent, g) in &self.grants {
                let _ = writeln!(
                    out,
                    "  {agent}: actions {}; effects {}{}",
                    list(&g.actions),
                    list(&g.effects),
                    if g.net { "; net in ring 2" } else { "" }
                );
            }
        }
        let n = &self.net;
        if n.rules.is_empty() {
            out.push_str("net: no allow rule: every outbound request is refused\n");
        } else {
            let _ = writeln!(
                out,
                "net (requests up to {} bytes, responses up to {} bytes, {} ms, connect {} ms):",
                n.limits.max_request_bytes,
                n.limits.max_response_bytes,
                n.limits.timeout.as_millis(),
                n.limits.connect_timeout.as_millis()
            );
            for r in &n.rules {
                let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
                let _ = writeln!(
                    out,
                    "  {}{} {} {}{}{}{}",
                    r.host,
                    r.port.map(|p| format!(":{p}")).unwrap_or_default(),
                    join(&r.schemes),
                    join(&r.methods),
                    if r.private_addresses {
                        ", private addresses"
                    } else {
                        ""
                    },
                    if r.redirects { ", redirects" } else { "" },
                    r.credential
                        .as_ref()
                        .map(|c| format!(", sets {}", c.header))
                        .unwrap_or_default()
                );
            }
        }
        out
    }

    /// The grants of `agent`, if the policy lists it (`None`: every
    /// registered action and effect).
    pub fn grants_for(&self, agent: &AgentId) -> Option<&Grants> {
        self.grants.get(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breach::BreachRule;

    fn err(text: &str) -> PolicyError {
        PolicyFile::parse(text).expect_err(text)
    }

    #[test]
    fn an_empty_file_is_the_default_policy() {
        assert_eq!(PolicyFile::parse("").unwrap(), Policy::default());
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level_naming_them() {
        for (text, field) in [
            ("sandboxes = 1\n", "sandboxes"),
            ("[rings.sandbox]\nfuel = 5\n", "fuel"),
            (
                "[rate_limits.sandbox]\nwrite = { rate_per_sec = 1.0, burst = 1 }\n",
                "write",
            ),
            (
                "[rate_limits.sandbox]\nchange = { rate_per_sec = 1.0, burst = 1, jitter = 2 }\n",
                "jitter",
            ),
            (
                "[breach.rules.standard]\naction = \"expel\"\nseverity = 1\n",
                "severity",
            ),
            ("[breach.detector]\nwindow = 60\n", "window"),
            ("[elevation]\nsudo = true\n", "sudo"),
            (
                "[agents.\"did:ex:a\"]\nactions = []\nnetwork = [\"x\"]\n",
                "network",
            ),
        ] {
            let e = err(text);
            let msg = e.to_string();
            assert!(matches!(e, PolicyError::Syntax { .. }), "{text}: {e:?}");
            assert!(msg.contains(field), "{text}: {msg}");
            assert!(msg.contains("line"), "toml's line is kept: {msg}");
        }
    }

    #[test]
    fn a_widening_is_refused_naming_the_ring_and_capability() {
        let e = err("[rings.sandbox]\ncapabilities = [\"context\", \"vfs-write\"]\n");
        assert!(
            matches!(
                &e,
                PolicyError::Widening { field, ring: Ring::Sandbox, capability: Capability::VfsWrite, .. }
                    if field == "rings.sandbox.capabilities"
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("widening"), "{e}");
        assert!(matches!(
            err("[rings.1]\ncapabilities = [\"admin\"]\n"),
            PolicyError::Widening {
                ring: Ring::Privileged,
                capability: Capability::Admin,
                ..
            }
        ));
        assert!(matches!(
            err("[rings.standard]\ncapabilities = [\"spawn-anything\"]\n"),
            PolicyError::UnknownCapability { value, .. } if value == "spawn-anything"
        ));
    }

    #[test]
    fn a_narrowing_applies_and_must_stay_monotonic() {
        let p = PolicyFile::parse(
            "[rings.standard]\ncapabilities = [\"context\", \"log\", \"vfs-read\", \"state-read\", \"elevation\", \"vfs-write\", \"state-write\", \"actions\"]\n",
        )
        .unwrap();
        let standard = p.rings.limits(Ring::Standard).capabilities;
        assert!(!standard.contains(Capability::Locks));
        assert!(standard.contains(Capability::VfsWrite));
        assert!(
            p.rings
                .limits(Ring::Privileged)
                .capabilities
                .contains(Capability::Locks)
        );
        // Removing vfs-read from standard while sandbox keeps it breaks monotonicity.
        let e = err("[rings.standard]\ncapabilities = [\"context\", \"log\"]\n");
        assert!(
            matches!(&e, PolicyError::Ring { field, source: RingError::NotMonotonic { .. }, .. } if field == "rings.standard"),
            "{e:?}"
        );
        // Narrowing both, in any order in the file, is fine.
        let p = PolicyFile::parse(
            "[rings.2]\ncapabilities = [\"context\", \"log\"]\n[rings.sandbox]\ncapabilities = [\"log\"]\n",
        )
        .unwrap();
        assert_eq!(p.rings.limits(Ring::Sandbox).capabilities.iter().count(), 1);
    }

    #[test]
    fn every_budget_field_reaches_the_ring_limits() {
        let p = PolicyFile::parse(
            "[rings.privileged]\nfuel_per_call = 11\nmemory_bytes = 12\ndeadline_ms = 13\nhostcall_bytes = 14\n\
             result_bytes = 15\nrandom_bytes = 16\nmax_resources = 17\nlog_lines = 18\nlog_bytes = 19\n\
             max_core_instances = 20\nmax_memories = 21\nmax_tables = 22\n",
        )
        .unwrap();
        let l = p.rings.limits(Ring::Privileged);
        assert_eq!(
            (
                l.fuel_per_call,
                l.memory_bytes,
                l.deadline,
                l.hostcall_bytes,
                l.result_bytes,
                l.random_bytes,
                l.max_resources,
                l.log_lines,
                l.log_bytes
            ),
            (11, 12, Duration::from_millis(13), 14, 15, 16, 17, 18, 19)
        );
        assert_eq!(
            (l.max_core_instances, l.max_memories, l.max_tables),
            (20, 21, 22)
        );
        assert_eq!(
            l.capabilities,
            RingLimits::default_for(Ring::Privileged).capabilities
        );
        assert_eq!(
            p.rings.limits(Ring::Standard),
            &RingLimits::default_for(Ring::Standard)
        );
    }

    #[test]
    fn bad_budgets_and_ring_keys_are_refused_naming_them() {
        assert!(matches!(
            err("[rings.standard]\nfuel_per_call = 0\n"),
            PolicyError::Ring {
                source: RingError::ZeroBudget {
                    field: "fuel_per_call",
                    ..
                },
                ..
            }
        ));
        let e = err("[rings.standard]\nmemory_bytes = -1\n");
        assert!(e.to_string().contains("memory_bytes"), "{e}");
        assert!(matches!(
            err("[rings.guest]\nfuel_per_call = 1\n"),
            PolicyError::UnknownRing { value, .. } if value == "guest"
        ));
        assert!(matches!(
            err("[rings.4]\nfuel_per_call = 1\n"),
            PolicyError::UnknownRing { value, .. } if value == "4"
        ));
        assert!(matches!(
            err("[rings.standard]\nfuel_per_call = 1\n[rings.2]\nfuel_per_call = 2\n"),
            PolicyError::DuplicateRing {
                ring: Ring::Standard,
                ..
            }
        ));
    }

    #[test]
    fn rate_limits_replace_only_the_buckets_given() {
        let p = PolicyFile::parse(
            "[rate_limits.standard]\nchange = { rate_per_sec = 0.0, burst = 2 }\n",
        )
        .unwrap();
        assert_eq!(
            p.rate.spec(CallClass::Change, Ring::Standard),
            BucketSpec {
                rate_per_sec: 0.0,
                burst: 2
            }
        );
        let d = RateTable::default();
        assert_eq!(
            p.rate.spec(CallClass::Read, Ring::Standard),
            d.spec(CallClass::Read, Ring::Standard)
        );
        assert_eq!(
            p.rate.spec(CallClass::Change, Ring::Sandbox),
            d.spec(CallClass::Change, Ring::Sandbox)
        );
        let e = err("[rate_limits.sandbox]\nread = { rate_per_sec = 1.0, burst = 0 }\n");
        assert!(
            matches!(&e, PolicyError::Rate { field, source: RateError::InvalidSpec { field: "burst", .. }, .. } if field == "rate_limits.sandbox.read"),
            "{e:?}"
        );
        assert!(
            err("[rate_limits.sandbox]\nchange = { rate_per_sec = 1.0 }\n")
                .to_string()
                .contains("burst")
        );
    }

    #[test]
    fn breach_and_elevation_sections_use_their_own_forms() {
        let p = PolicyFile::parse(
            "[breach.rules.standard]\naction = \"readmit\"\nring = \"sandbox\"\n[breach.detector]\nwindow_secs = 30\n\
             [elevation]\ndefault_ttl_secs = 30\nmax_ttl_secs = 60\n",
        )
        .unwrap();
        assert_eq!(
            p.breach.rule(Ring::Standard),
            BreachRule {
                action: BreachAction::Readmit {
                    ring: Ring::Sandbox
                },
                trigger: BreachTrigger::EveryBreach
            }
        );
        assert_eq!(p.breach.detector().window_secs, 30);
        assert_eq!(
            (p.elevation.default_ttl_secs, p.elevation.max_ttl_secs),
            (30, 60)
        );
        let e = err("[breach.rules.sandbox]\naction = \"readmit\"\nring = 3\n");
        assert!(e.to_string().contains("not a demotion"), "{e}");
        let e = err("[elevation]\nmax_ttl_secs = 100000\n");
        assert!(e.to_string().contains("max_ttl_secs"), "{e}");
    }

    #[test]
    fn agents_get_exactly_their_grants_and_ids_are_checked() {
        let p = PolicyFile::parse(
            "[agents.\"did:ex:a\"]\nactions = [\"note.append\"]\n[agents.\"did:ex:b\"]\n",
        )
        .unwrap();
        let a = p.grants_for(&AgentId::new("did:ex:a").unwrap()).unwrap();
        assert_eq!(a.actions.iter().collect::<Vec<_>>(), ["note.append"]);
        assert!(a.effects.is_empty());
        assert_eq!(
            p.grants_for(&AgentId::new("did:ex:b").unwrap()),
            Some(&Grants::default())
        );
        assert_eq!(p.grants_for(&AgentId::new("did:ex:c").unwrap()), None);
        assert!(matches!(
            err("[agents.\"not valid!\"]\nactions = []\n"),
            PolicyError::AgentId { value, .. } if value == "not valid!"
        ));
    }

    #[test]
    fn the_table_shows_every_ring_capability_budget_and_rate() {
        let p = PolicyFile::parse(
            "[rings.standard]\nlog_lines = 3\n[rate_limits.standard]\nchange = { rate_per_sec = 0.0, burst = 2 }\n\
             [agents.\"did:ex:a\"]\neffects = [\"notify.send\"]\n",
        )
        .unwrap();
        let t = p.render_table();
        let line = |name: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
                .unwrap_or_else(|| panic!("no row {name}:\n{t}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("ring"), "3 sandbox 2 standard 1 privileged 0 root");
        assert_eq!(line("vfs-write"), "- yes yes yes");
        assert_eq!(line("admin"), "- - - yes");
        assert_eq!(line("log_lines"), "4096 3 4096 4096");
        assert_eq!(
            line("fuel_per_call"),
            "100000000 1000000000 10000000000 100000000000"
        );
        assert_eq!(line("deadline_ms"), "2000 30000 300000 300000");
        assert_eq!(
            line("rate change"),
            "5/s burst 10 0/s burst 2 50/s burst 100 100/s burst 200"
        );
        assert_eq!(line("on breach"), "expel expel expel expel");
        assert!(
            t.contains("did:ex:a: actions none; effects notify.send"),
            "{t}"
        );
        assert!(
            t.contains("elevation: default TTL 300 s, at most 3600 s"),
            "{t}"
        );
    }

    #[test]
    fn load_names_the_file_and_refuses_missing_or_huge_files() {
        let dir = std::env::temp_dir().join(format!("ahv-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[rings.sandbox]\nfuel = 1\n").unwrap();
        let e = PolicyFile::load(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&bad.display().to_string()) && e.contains("fuel"),
            "{e}"
        );
        assert!(matches!(
            PolicyFile::load(dir.join("missing.toml")),
            Err(PolicyError::Read { .. })
        ));
        let huge = dir.join("huge.toml");
        std::fs::write(&huge, "#".repeat(MAX_POLICY_BYTES as usize + 1)).unwrap();
        assert!(matches!(
            PolicyFile::load(&huge),
            Err(PolicyError::TooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
