//! Bearer tokens bound to roles, from a tokens file.
//!
//! The file is TOML and holds only the SHA-256 of each token, never the token
//! itself, so reading the file does not let anyone in:
//!
//! ```toml
//! [[token]]
//! name = "ops"              # who the caller is: recorded in the audit log
//! role = "admin"            # admin | operator | auditor
//! sha256 = "…64 hex digits…"
//!
//! [[token]]
//! name = "ci"
//! role = "operator"
//! agents = ["did:team-a:*"] # the agent ids it may act for (required for operators)
//! sessions = ["s3-…"]       # operators act on the sessions they created and these
//! ```
//!
//! Roles:
//! - **admin**: everything, including what needs ring 0 in the product's
//!   terms: kills, slashes, quarantines, ring-0 (root) joins.
//! - **operator**: creates sessions and drives the sessions it created (or is
//!   given in `sessions`): join, activate, run, leave, vouch, terminate,
//!   snapshot, restore, sagas; reads everything. It acts only for the agents
//!   its `agents` patterns name (an exact id, or a prefix ending in `*`):
//!   the liability ledger is shared by every session and keyed by agent id,
//!   so an operator free to join any id could book faults against agents it
//!   does not run. Sessions it creates earn no clean-session credit, so it
//!   cannot work an agent's slashes off by ending empty sessions either.
//! - **auditor**: reads only (sessions, files, state, events, ledger).
//!
//! Unknown fields are refused when the file loads; so are duplicate names or
//! hashes, and hashes that are not 64 hex digits. A token is compared by its
//! SHA-256 in constant time.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Drives its own sessions; reads everything.
    Operator,
    /// Reads only.
    Auditor,
}

impl Role {
    /// The role's name as the tokens file spells it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

/// One authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its name in the tokens file.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Sessions it may operate besides those it creates (operators).
    pub sessions: Vec<String>,
    /// The agents it may act for (operators): exact ids, or prefixes
    /// ending in `*`. Admins act for every agent, auditors for none.
    pub agents: Vec<String>,
}

impl Caller {
    /// Whether the caller may join, run, vouch for or otherwise act for
    /// `agent`.
    pub fn may_act_for(&self, agent: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Auditor => false,
            Role::Operator => self.agents.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => agent.starts_with(prefix),
                None => agent == p,
            }),
        }
    }
}

/// Why a tokens file was refused.
#[derive(Debug, Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("tokens file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (names the field).
    #[error("tokens file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (line, column, field).
        message: String,
    },
    /// An entry is invalid.
    #[error("tokens file {path}: token {name:?}: {message}")]
    Entry {
        /// The file.
        path: String,
        /// The entry's name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    sha256: String,
    #[serde(default)]
    sessions: Vec<String>,
    #[serde(default)]
    agents: Vec<String>,
}

/// The tokens the server accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
}

impl Tokens {
    /// No tokens: every request is refused with 401.
    pub fn none() -> Tokens {
        Tokens::default()
    }

    /// Loads a tokens file.
    ///
    /// # Errors
    /// [`TokensError`] naming the file and, for a bad entry, its name and
    /// what is wrong with it.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        Tokens::parse(&text, &shown)
    }

    /// Parses a tokens file's text; `path` names it in errors.
    ///
    /// # Errors
    /// As [`Tokens::load`].
    pub fn parse(text: &str, path: &str) -> Result<Tokens, TokensError> {
        let file: File = toml::from_str(text).map_err(|e| TokensError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        let mut tokens = Tokens::none();
        let mut names = HashSet::new();
        for e in file.token {
            let bad = |message: String| TokensError::Entry {
                path: path.to_string(),
                name: e.name.clone(),
                message,
            };
            if e.name.is_empty()
                || e.name.len() > 64
                || !e
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad(
                    "a name is 1 to 64 letters, digits, '.', '_' or '-'".into()
                ));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(e.sha256.trim(), &mut hash).map_err(|_| {
                bad("sha256 must be 64 hex digits (the SHA-256 of the token)".into())
            })?;
            if !names.insert(e.name.clone()) {
                return Err(bad("the name is used twice".into()));
            }
            if tokens.entries.iter().any(|(h, _)| *h == hash) {
                return Err(bad("the same token hash is used twice".into()));
            }
            if e.role == Role::Operator && e.agents.is_empty() {
                return Err(bad(
                    "an operator needs `agents`: the agent ids it may act for (exact, or a prefix ending in `*`)"
                        .into(),
                ));
            }
            if e.role != Role::Operator && !e.agents.is_empty() {
                return Err(bad(format!(
                    "agents are for operators; a {} acts for {}",
                    e.role.name(),
                    if e.role == Role::Admin {
                        "every agent"
                    } else {
                        "none"
                    }
                )));
            }
            if e.agents.iter().any(String::is_empty) {
                return Err(bad("an empty agent pattern".into()));
            }
            if e.role != Role::Operator && !e.sessions.is_empty() {
                return Err(bad(format!(
                    "sessions are for operators; a {} acts on {}",
                    e.role.name(),
                    if e.role == Role::Admin {
                        "every session"
                    } else {
                        "none"
                    }
                )));
            }
            tokens.entries.push((
                hash,
                Caller {
                    name: e.name,
                    role: e.role,
                    sessions: e.sessions,
                    agents: e.agents,
                },
            ));
        }
        Ok(tokens)
    }

    /// Adds a token (the token itself; only its hash is kept).
    pub fn with(mut self, token: &str, caller: Caller) -> Tokens {
        self.entries.push((hash_token(token), caller));
        self
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a bearer token belongs to. Every entry is compared, in
    /// constant time per entry, so the time taken does not tell which
    /// entry (if any) nearly matched.
    pub fn authenticate(&self, token: &str) -> Option<&Caller> {
        let h = hash_token(token);
        let mut found = None;
        for (hash, caller) in &self.entries {
            if ct_eq(hash, &h) {
                found = Some(caller);
            }
        }
        found
    }
}

/// The SHA-256 of a token, as the tokens file stores it.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: 32 bytes from the OS, as 64 hex digits, prefixed
/// `ahv_` so it is recognisable in a secret scanner.
///
/// # Errors
/// The OS random source failed.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("ahv_{}", hex::encode(bytes)))
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, role: &str, token: &str) -> String {
        format!(
            "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hex::encode(hash_token(token))
        )
    }

    #[test]
    fn a_token_maps_to_its_caller_and_others_to_none() {
        let text = entry("ops", "admin", "t-ops") + &entry("aud", "auditor", "t-aud");
        let t = Tokens::parse(&text, "tokens.toml").unwrap();
        assert_eq!(t.authenticate("t-ops").unwrap().role, Role::Admin);
        assert_eq!(t.authenticate("t-aud").unwrap().name, "aud");
        assert!(t.authenticate("t-op").is_none());
        assert!(t.authenticate("").is_none());
    }

    #[test]
    fn operators_act_only_for_the_agents_their_patterns_name() {
        let text = entry("ci", "operator", "t") + "agents = [\"did:team-a:*\", \"did:x:one\"]\n";
        let t = Tokens::parse(&text, "t").unwrap();
        let c = t.authenticate("t").unwrap();
        assert!(c.may_act_for("did:team-a:bot"));
        assert!(c.may_act_for("did:x:one"));
        assert!(!c.may_act_for("did:x:one2"));
        assert!(!c.may_act_for("did:team-b:bot"));
        let e = Tokens::parse(&entry("ci", "operator", "t"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `agents`"), "{e}");
        let e = Tokens::parse(&(entry("a", "auditor", "t") + "agents = [\"*\"]\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("operators"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused_naming_them() {
        let text = entry("ops", "admin", "x") + "expires = 3\n";
        let e = Tokens::parse(&text, "tokens.toml").unwrap_err().to_string();
        assert!(e.contains("expires"), "{e}");
    }

    #[test]
    fn bad_entries_are_refused_naming_the_entry() {
        let dup = entry("ops", "admin", "a") + &entry("ops", "auditor", "b");
        let e = Tokens::parse(&dup, "t").unwrap_err().to_string();
        assert!(e.contains("\"ops\"") && e.contains("twice"), "{e}");
        let same = entry("a", "admin", "x") + &entry("b", "auditor", "x");
        let e = Tokens::parse(&same, "t").unwrap_err().to_string();
        assert!(e.contains("hash"), "{e}");
        let short = "[[token]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"abcd\"\n";
        let e = Tokens::parse(short, "t").unwrap_err().to_string();
        assert!(e.contains("64 hex"), "{e}");
        let role = "[[token]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"abcd\"\n";
        let e = Tokens::parse(role, "t").unwrap_err().to_string();
        assert!(e.contains("root"), "{e}");
        let sessions = entry("a", "auditor", "x") + "sessions = [\"s1\"]\n";
        let e = Tokens::parse(&sessions, "t").unwrap_err().to_string();
        assert!(e.contains("operators"), "{e}");
    }

    #[test]
    fn new_tokens_differ_and_hash_to_64_hex() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("ahv_") && a.len() == 68);
        assert_eq!(hex::encode(hash_token(&a)).len(), 64);
    }
}
