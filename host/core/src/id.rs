//! Identifiers: agent ids (validated), session ids and trace ids.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Maximum length of an agent id, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// A validated agent id (a DID or similar): `^[a-zA-Z0-9](?:[a-zA-Z0-9._:-]*[a-zA-Z0-9])?$`,
/// at most [`MAX_ID_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(Arc<str>);

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The id is empty.
    #[error("{kind} id is empty")]
    Empty {
        /// Which kind of id.
        kind: &'static str,
    },
    /// The id is too long.
    #[error("{kind} id is {len} bytes long; the maximum is {max}")]
    TooLong {
        /// Which kind of id.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The id has a character outside the allowed set, or starts/ends with punctuation.
    #[error(
        "{kind} id {id:?} has a bad character {ch:?} at byte {at}: ids use letters, digits and . _ : - (not first or last)"
    )]
    BadChar {
        /// Which kind of id.
        kind: &'static str,
        /// The id (truncated to 64 chars).
        id: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

/// Checks `s` against the id rules of [`AgentId`] without making an id,
/// naming `kind` ("agent", "session", "saga", …) in the error: for other
/// crates' ids that follow the same rules.
///
/// # Errors
/// [`IdError`] naming what is wrong.
pub fn check(kind: &'static str, s: &str) -> Result<(), IdError> {
    validate(kind, s)
}

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max: MAX_ID_LEN,
        });
    }
    let last = s.len() - 1;
    for (at, ch) in s.char_indices() {
        let ok = ch.is_ascii_alphanumeric()
            || (matches!(ch, '.' | '_' | ':' | '-') && at != 0 && at != last);
        if !ok {
            return Err(IdError::BadChar {
                kind,
                id: s.chars().take(64).collect(),
                ch,
                at,
            });
        }
    }
    Ok(())
}

impl AgentId {
    /// The shared text (for cache hints on the event bus).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.0
    }

    /// Validates and wraps an agent id.
    ///
    /// # Errors
    /// [`IdError`] naming what is wrong.
    pub fn new(s: impl AsRef<str>) -> Result<AgentId, IdError> {
        let s = s.as_ref();
        validate("agent", s)?;
        Ok(AgentId(s.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A session id: opaque, validated like an agent id. Like [`AgentId`], cloning
/// it is a reference-count increment: ids travel on every event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// The shared text (for cache hints on the event bus).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.0
    }

    /// Validates and wraps a session id.
    ///
    /// # Errors
    /// [`IdError`] naming what is wrong.
    pub fn new(s: impl AsRef<str>) -> Result<SessionId, IdError> {
        let s = s.as_ref();
        validate("session", s)?;
        Ok(SessionId(s.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Ids hash and compare as their text, so maps keyed by id can be searched
// with a `&str`.
impl std::borrow::Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for AgentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A causal trace id in W3C trace-context form (16 bytes, 32 lower-case hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn agent_ids_follow_the_did_pattern() {
        for ok in ["a", "did:example:alice", "agent-1.v2", "A_b:c-d.9"] {
            assert!(AgentId::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(AgentId::new(""), Err(IdError::Empty { kind: "agent" }));
        assert!(matches!(
            AgentId::new("-a"),
            Err(IdError::BadChar { ch: '-', at: 0, .. })
        ));
        assert!(matches!(
            AgentId::new("a:"),
            Err(IdError::BadChar { ch: ':', at: 1, .. })
        ));
        assert!(matches!(
            AgentId::new("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            AgentId::new("a\0b"),
            Err(IdError::BadChar { ch: '\0', .. })
        ));
        assert!(matches!(
            AgentId::new("é"),
            Err(IdError::BadChar { ch: 'é', .. })
        ));
        assert!(AgentId::new("a".repeat(256)).is_ok());
        assert_eq!(
            AgentId::new("a".repeat(257)),
            Err(IdError::TooLong {
                kind: "agent",
                len: 257,
                max: 256
            })
        );
    }

    #[test]
    fn trace_ids_are_32_hex_digits() {
        assert_eq!(TraceId(0xab).to_string(), format!("{:0>32}", "ab"));
    }

    proptest! {
        #[test]
        fn valid_ids_match_the_regex(s in "[a-zA-Z0-9]([a-zA-Z0-9._:-]{0,40}[a-zA-Z0-9])?") {
            prop_assert!(AgentId::new(s).is_ok());
        }

        #[test]
        fn any_string_is_either_valid_or_refused_without_panic(s in "\\PC{0,300}") {
            let valid = !s.is_empty() && s.len() <= MAX_ID_LEN
                && s.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric());
            prop_assert_eq!(AgentId::new(s).is_ok(), valid);
        }
    }
}
