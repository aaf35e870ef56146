//! Elevation (sudo with a TTL) and verifiable sponsorship (SEMANTICS.md, "Rings").
//!
//! [`decide`] applies the rules in a fixed order, so the reason a request is
//! refused does not depend on what else is wrong with it:
//!
//! 1. the target is more privileged than the base ring (`InvalidTarget`);
//! 2. the target is not ring 0 (`Ring0Forbidden`);
//! 3. no elevation is already active for the (agent, session) (`DuplicateElevation`);
//! 4. the trust score is a score (`InvalidTrust`) and reaches the target's
//!    threshold, inclusive: 0.85 for ring 1, 0.50 for ring 2 (`InsufficientTrust`);
//! 5. the justification is non-blank and at most 1024 bytes (`Justification`);
//! 6. ring 1 comes with a sponsorship (`NoSponsorship`);
//! 7. a sponsorship, when given (for either ring), verifies (`BadSponsorship`).
//!
//! A sponsorship is an [`Attestation`]: an ed25519 signature by the sponsor
//! (the operator, or an agent now at ring 1 or 0) over a domain-separated
//! statement naming the sponsor, the agent, the session, the target ring and an
//! expiry. The reference took a free string; this one a guest cannot forge.
//!
//! The TTL of a grant is the requested one clamped into [1 s, `max_ttl_secs`],
//! or `default_ttl_secs` when none is asked for. A requested TTL of 0 becomes
//! 1 s rather than a refusal, the same way an over-long one becomes the cap.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use ahv_core::{AgentId, IdError, Ring, SessionId, check_score};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest justification accepted, in bytes.
pub const MAX_JUSTIFICATION: usize = 1024;

/// Shortest TTL a grant gets.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// Longest `max_ttl_secs` a policy may set: 24 hours.
pub const MAX_TTL_CAP_SECS: u64 = 86_400;

/// The elevation rules: TTLs and the trust each target ring needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ElevationRulesDef", into = "ElevationRulesDef")]
pub struct ElevationRules {
    /// TTL of a grant that asked for none, in seconds.
    pub default_ttl_secs: u64,
    /// Longest TTL granted, in seconds.
    pub max_ttl_secs: u64,
    /// Trust needed for ring 2 (inclusive).
    pub min_trust_ring2: f64,
    /// Trust needed for ring 1 (inclusive).
    pub min_trust_ring1: f64,
}

/// The serialized form of [`ElevationRules`]: validated on load.
#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ElevationRulesDef {
    default_ttl_secs: u64,
    max_ttl_secs: u64,
    min_trust_ring2: f64,
    min_trust_ring1: f64,
}

impl Default for ElevationRulesDef {
    fn default() -> Self {
        ElevationRules::default().into()
    }
}

impl TryFrom<ElevationRulesDef> for ElevationRules {
    type Error = ElevationRulesError;

    fn try_from(d: ElevationRulesDef) -> Result<Self, ElevationRulesError> {
        let rules = ElevationRules {
            default_ttl_secs: d.default_ttl_secs,
            max_ttl_secs: d.max_ttl_secs,
            min_trust_ring2: d.min_trust_ring2,
            min_trust_ring1: d.min_trust_ring1,
        };
        rules.validate()?;
        Ok(rules)
    }
}

impl From<ElevationRules> for ElevationRulesDef {
    fn from(r: ElevationRules) -> Self {
        ElevationRulesDef {
            default_ttl_secs: r.default_ttl_secs,
            max_ttl_secs: r.max_ttl_secs,
            min_trust_ring2: r.min_trust_ring2,
            min_trust_ring1: r.min_trust_ring1,
        }
    }
}

impl Default for ElevationRules {
    /// TTL 300 s, cap 3600 s; trust 0.50 for ring 2, 0.85 for ring 1.
    fn default() -> Self {
        ElevationRules {
            default_ttl_secs: 300,
            max_ttl_secs: 3600,
            min_trust_ring2: 0.50,
            min_trust_ring1: 0.85,
        }
    }
}

/// An [`ElevationRules`] field out of range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("elevation rules {field} = {value}: {reason}")]
pub struct ElevationRulesError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What it must be.
    pub reason: &'static str,
}

impl ElevationRules {
    /// Checks that TTLs are > 0 with default ≤ max ≤ 24 h, and that trusts are
    /// scores with ring 1 needing at least what ring 2 needs.
    ///
    /// # Errors
    /// [`ElevationRulesError`] naming the field.
    pub fn validate(&self) -> Result<(), ElevationRulesError> {
        let bad = |field, value: String, reason| {
            Err(ElevationRulesError {
                field,
                value,
                reason,
            })
        };
        if self.default_ttl_secs == 0 {
            return bad("default_ttl_secs", "0".into(), "must be at least 1");
        }
        if self.max_ttl_secs < self.default_ttl_secs {
            return bad(
                "max_ttl_secs",
                self.max_ttl_secs.to_string(),
                "must be at least default_ttl_secs",
            );
        }
        if self.max_ttl_secs > MAX_TTL_CAP_SECS {
            return bad(
                "max_ttl_secs",
                self.max_ttl_secs.to_string(),
                "must be at most 86400 (24 h)",
            );
        }
        for (field, v) in [
            ("min_trust_ring2", self.min_trust_ring2),
            ("min_trust_ring1", self.min_trust_ring1),
        ] {
            if check_score(field, v).is_err() {
                return bad(field, v.to_string(), "must be a number in [0, 1]");
            }
        }
        if self.min_trust_ring1 < self.min_trust_ring2 {
            return bad(
                "min_trust_ring1",
                self.min_trust_ring1.to_string(),
                "must be at least min_trust_ring2",
            );
        }
        Ok(())
    }

    /// The trust `target` needs; `None` for rings that cannot be elevated to.
    pub fn min_trust(&self, target: Ring) -> Option<f64> {
        match target {
            Ring::Privileged => Some(self.min_trust_ring1),
            Ring::Standard => Some(self.min_trust_ring2),
            Ring::Root | Ring::Sandbox => None,
        }
    }
}

/// Who vouches for an elevation to ring 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sponsor {
    /// The hypervisor's operator (always acceptable).
    Operator,
    /// An agent, acceptable while its ring is 1 or 0.
    Agent(AgentId),
}

impl fmt::Display for Sponsor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sponsor::Operator => f.write_str("operator"),
            Sponsor::Agent(a) => write!(f, "agent {a}"),
        }
    }
}

/// Domain separation for attestation signatures.
pub const ATTESTATION_DOMAIN: &[u8] = b"ahv-elevation-attestation-v1\0";

/// First field of an attestation's text form.
const TEXT_VERSION: &str = "ahv-att-v1";

/// Longest text form accepted: three 256-byte ids in hex, a signature and change.
pub const MAX_ATTESTATION_TEXT: usize = 2048;

/// A sponsor's signed statement that `agent` may be elevated to `ring` in
/// `session` until `expires_unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// Who signed it.
    pub sponsor: Sponsor,
    /// The agent to be elevated.
    pub agent: AgentId,
    /// The session it applies to.
    pub session: SessionId,
    /// The ring it allows.
    pub ring: Ring,
    /// Unix time (seconds) from which it is no longer valid.
    pub expires_unix: u64,
    /// ed25519 signature over [`Attestation::signing_bytes`].
    pub signature: [u8; 64],
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Ids are at most 256 bytes, so the length always fits.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Attestation {
    /// The canonical bytes a sponsor signs: the domain, the sponsor (0 for the
    /// operator, or 1 and its length-prefixed id), then the length-prefixed
    /// agent and session, the ring byte and the expiry as a big-endian u64.
    /// Lengths are u32 big-endian, so no two statements share an encoding.
    pub fn signing_bytes(
        sponsor: &Sponsor,
        agent: &AgentId,
        session: &SessionId,
        ring: Ring,
        expires_unix: u64,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(ATTESTATION_DOMAIN.len() + 32 + 3 * 64);
        out.extend_from_slice(ATTESTATION_DOMAIN);
        match sponsor {
            Sponsor::Operator => out.push(0),
            Sponsor::Agent(a) => {
                out.push(1);
                put_bytes(&mut out, a.as_str().as_bytes());
            }
        }
        put_bytes(&mut out, agent.as_str().as_bytes());
        put_bytes(&mut out, session.as_str().as_bytes());
        out.push(ring.number());
        out.extend_from_slice(&expires_unix.to_be_bytes());
        out
    }

    /// Signs a statement with the sponsor's key.
    pub fn sign(
        sponsor: Sponsor,
        agent: AgentId,
        session: SessionId,
        ring: Ring,
        expires_unix: u64,
        key: &SigningKey,
    ) -> Attestation {
        let msg = Attestation::signing_bytes(&sponsor, &agent, &session, ring, expires_unix);
        let signature = key.sign(&msg).to_bytes();
        Attestation {
            sponsor,
            agent,
            session,
            ring,
            expires_unix,
            signature,
        }
    }

    /// Checks this attestation for an elevation of `agent` in `session` to
    /// `ring` at `now_unix_secs`: the sponsor's key is known, the sponsor is
    /// the operator or an agent (other than `agent`) now at ring 1 or 0, the
    /// statement names the same agent, session and ring, it has not expired,
    /// and the signature verifies (strictly).
    ///
    /// # Errors
    /// [`SponsorshipError`] naming the first check that failed.
    pub fn verify(
        &self,
        sponsors: &dyn SponsorKeys,
        agent: &AgentId,
        session: &SessionId,
        ring: Ring,
        now_unix_secs: u64,
    ) -> Result<(), SponsorshipError> {
        if let Sponsor::Agent(a) = &self.sponsor
            && a == agent
        {
            return Err(SponsorshipError::SelfSponsored);
        }
        let key = sponsors
            .key(&self.sponsor)
            .ok_or_else(|| SponsorshipError::UnknownSponsor {
                sponsor: self.sponsor.clone(),
            })?;
        if let Sponsor::Agent(_) = self.sponsor {
            match sponsors.ring(&self.sponsor) {
                Some(r) if r.covers(Ring::Privileged) => {}
                found => {
                    return Err(SponsorshipError::SponsorRing {
                        sponsor: self.sponsor.clone(),
                        ring: found,
                    });
                }
            }
        }
        if &self.agent != agent {
            return Err(SponsorshipError::WrongAgent {
                attested: self.agent.clone(),
                requested: agent.clone(),
            });
        }
        if &self.session != session {
            return Err(SponsorshipError::WrongSession {
                attested: self.session.clone(),
                requested: session.clone(),
            });
        }
        if self.ring != ring {
            return Err(SponsorshipError::WrongRing {
                attested: self.ring,
                requested: ring,
            });
        }
        if self.expires_unix <= now_unix_secs {
            return Err(SponsorshipError::Expired {
                expires_unix: self.expires_unix,
                now_unix: now_unix_secs,
            });
        }
        let msg = Attestation::signing_bytes(
            &self.sponsor,
            &self.agent,
            &self.session,
            self.ring,
            self.expires_unix,
        );
        key.verify_strict(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| SponsorshipError::Signature)
    }

    /// The single-line text form a guest passes along:
    /// `ahv-att-v1.<operator|agent>.<sponsor id hex>.<agent hex>.<session hex>.<ring>.<expires>.<signature hex>`
    /// (ids in hex because they may contain `.`; the sponsor id is empty for the operator).
    pub fn to_text(&self) -> String {
        let (kind, sponsor_id) = match &self.sponsor {
            Sponsor::Operator => ("operator", String::new()),
            Sponsor::Agent(a) => ("agent", hex_encode(a.as_str().as_bytes())),
        };
        format!(
            "{TEXT_VERSION}.{kind}.{sponsor_id}.{}.{}.{}.{}.{}",
            hex_encode(self.agent.as_str().as_bytes()),
            hex_encode(self.session.as_str().as_bytes()),
            self.ring.number(),
            self.expires_unix,
            hex_encode(&self.signature),
        )
    }

    /// Parses [`Attestation::to_text`]'s form. Parsing does not verify.
    ///
    /// # Errors
    /// [`AttestationParseError`] naming the field that is wrong.
    pub fn from_text(text: &str) -> Result<Attestation, AttestationParseError> {
        if text.len() > MAX_ATTESTATION_TEXT {
            return Err(AttestationParseError::TooLong {
                len: text.len(),
                max: MAX_ATTESTATION_TEXT,
            });
        }
        let fields: Vec<&str> = text.split('.').collect();
        let [
            version,
            kind,
            sponsor_id,
            agent,
            session,
            ring,
            expires,
            signature,
        ] = fields[..]
        else {
            return Err(AttestationParseError::FieldCount {
                found: fields.len(),
            });
        };
        if version != TEXT_VERSION {
            return Err(AttestationParseError::Version {
                found: truncate(version),
            });
        }
        let sponsor = match kind {
            "operator" if sponsor_id.is_empty() => Sponsor::Operator,
            "operator" => return Err(AttestationParseError::OperatorWithId),
            "agent" => Sponsor::Agent(AgentId::new(hex_text("sponsor", sponsor_id)?).map_err(
                |source| AttestationParseError::Id {
                    field: "sponsor",
                    source,
                },
            )?),
            other => {
                return Err(AttestationParseError::SponsorKind {
                    found: truncate(other),
                });
            }
        };
        let agent = AgentId::new(hex_text("agent", agent)?).map_err(|source| {
            AttestationParseError::Id {
                field: "agent",
                source,
            }
        })?;
        let session = SessionId::new(hex_text("session", session)?).map_err(|source| {
            AttestationParseError::Id {
                field: "session",
                source,
            }
        })?;
        let ring = match ring.as_bytes() {
            [d @ b'0'..=b'3'] => Ring::from_number(d - b'0').ok(),
            _ => None,
        }
        .ok_or_else(|| AttestationParseError::Ring {
            found: truncate(ring),
        })?;
        let expires_unix = expires
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| expires.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| AttestationParseError::Expiry {
                found: truncate(expires),
            })?;
        let sig = hex_decode("signature", signature)?;
        let signature: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| AttestationParseError::SignatureLength { len: sig.len() })?;
        Ok(Attestation {
            sponsor,
            agent,
            session,
            ring,
            expires_unix,
            signature,
        })
    }
}

/// At most 32 characters of a bad field, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn hex_decode(field: &'static str, s: &str) -> Result<Vec<u8>, AttestationParseError> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(AttestationParseError::Hex { field });
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or(AttestationParseError::Hex { field })
}

fn hex_text(field: &'static str, s: &str) -> Result<String, AttestationParseError> {
    String::from_utf8(hex_decode(field, s)?).map_err(|_| AttestationParseError::Utf8 { field })
}

/// Why an attestation's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttestationParseError {
    /// The text is longer than [`MAX_ATTESTATION_TEXT`].
    #[error("attestation text is {len} bytes; the maximum is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not eight `.`-separated fields.
    #[error("attestation text has {found} fields; expected 8 separated by '.'")]
    FieldCount {
        /// How many there were.
        found: usize,
    },
    /// The first field is not `ahv-att-v1`.
    #[error("attestation version {found:?} is not {TEXT_VERSION}")]
    Version {
        /// The field (truncated).
        found: String,
    },
    /// The sponsor kind is neither `operator` nor `agent`.
    #[error("attestation sponsor kind {found:?} is neither operator nor agent")]
    SponsorKind {
        /// The field (truncated).
        found: String,
    },
    /// An operator attestation with a sponsor id.
    #[error("attestation by the operator carries a sponsor id; it must be empty")]
    OperatorWithId,
    /// A field that is not even-length hex.
    #[error("attestation {field} is not hex")]
    Hex {
        /// The field.
        field: &'static str,
    },
    /// A hex field that does not decode to UTF-8.
    #[error("attestation {field} is not UTF-8")]
    Utf8 {
        /// The field.
        field: &'static str,
    },
    /// An id field that is not a valid id.
    #[error("attestation {field}: {source}")]
    Id {
        /// The field.
        field: &'static str,
        /// Why the id was refused.
        source: IdError,
    },
    /// A ring that is not one digit 0..=3.
    #[error("attestation ring {found:?} is not 0, 1, 2 or 3")]
    Ring {
        /// The field (truncated).
        found: String,
    },
    /// An expiry that is not a decimal u64.
    #[error("attestation expiry {found:?} is not a decimal unix time")]
    Expiry {
        /// The field (truncated).
        found: String,
    },
    /// A signature that is not 64 bytes.
    #[error("attestation signature is {len} bytes; expected 64")]
    SignatureLength {
        /// Its length.
        len: usize,
    },
}

/// Why an attestation does not vouch for an elevation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SponsorshipError {
    /// The agent named itself as its sponsor.
    #[error("an agent cannot sponsor its own elevation")]
    SelfSponsored,
    /// No key is known for the sponsor.
    #[error("no key is known for sponsor {sponsor}")]
    UnknownSponsor {
        /// The sponsor.
        sponsor: Sponsor,
    },
    /// The sponsoring agent is not now at ring 1 or 0.
    #[error("sponsor {sponsor} is at {}; sponsors must be at ring 1 or 0", ring.map_or("no known ring".to_string(), |r| r.to_string()))]
    SponsorRing {
        /// The sponsor.
        sponsor: Sponsor,
        /// Its ring now, if known.
        ring: Option<Ring>,
    },
    /// The attestation is for another agent.
    #[error("attestation is for agent {attested}, not {requested}")]
    WrongAgent {
        /// The agent it names.
        attested: AgentId,
        /// The agent asking.
        requested: AgentId,
    },
    /// The attestation is for another session.
    #[error("attestation is for session {attested}, not {requested}")]
    WrongSession {
        /// The session it names.
        attested: SessionId,
        /// The session asked about.
        requested: SessionId,
    },
    /// The attestation is for another ring.
    #[error("attestation is for {attested}, not {requested}")]
    WrongRing {
        /// The ring it names.
        attested: Ring,
        /// The ring asked for.
        requested: Ring,
    },
    /// The attestation has expired.
    #[error("attestation expired at unix time {expires_unix} (now {now_unix})")]
    Expired {
        /// When it expired.
        expires_unix: u64,
        /// Now.
        now_unix: u64,
    },
    /// The signature does not verify under the sponsor's key.
    #[error("attestation signature does not verify")]
    Signature,
}

/// Where sponsors' keys and current rings come from.
pub trait SponsorKeys {
    /// The sponsor's verifying key, if known.
    fn key(&self, sponsor: &Sponsor) -> Option<VerifyingKey>;
    /// The sponsor's ring now, if known.
    fn ring(&self, sponsor: &Sponsor) -> Option<Ring>;
}

/// A simple [`SponsorKeys`]: the operator's key and a key and ring per agent.
#[derive(Debug, Clone, Default)]
pub struct SponsorRegistry {
    operator: Option<VerifyingKey>,
    agents: HashMap<AgentId, (VerifyingKey, Ring)>,
}

impl SponsorRegistry {
    /// A registry with the operator's key (or none) and no agents.
    pub fn new(operator: Option<VerifyingKey>) -> SponsorRegistry {
        SponsorRegistry {
            operator,
            agents: HashMap::new(),
        }
    }

    /// Registers (or replaces) an agent's key and current ring.
    pub fn set_agent(&mut self, agent: AgentId, key: VerifyingKey, ring: Ring) {
        self.agents.insert(agent, (key, ring));
    }

    /// Updates an agent's current ring; false if the agent is unknown.
    pub fn set_ring(&mut self, agent: &AgentId, ring: Ring) -> bool {
        match self.agents.get_mut(agent) {
            Some(entry) => {
                entry.1 = ring;
                true
            }
            None => false,
        }
    }

    /// Forgets an agent.
    pub fn remove_agent(&mut self, agent: &AgentId) {
        self.agents.remove(agent);
    }
}

impl SponsorKeys for SponsorRegistry {
    fn key(&self, sponsor: &Sponsor) -> Option<VerifyingKey> {
        match sponsor {
            Sponsor::Operator => self.operator,
            Sponsor::Agent(a) => self.agents.get(a).map(|(k, _)| *k),
        }
    }

    fn ring(&self, sponsor: &Sponsor) -> Option<Ring> {
        match sponsor {
            Sponsor::Operator => Some(Ring::Root),
            Sponsor::Agent(a) => self.agents.get(a).map(|(_, r)| *r),
        }
    }
}

/// A request to run at a more privileged ring for a while.
#[derive(Debug, Clone, Copy)]
pub struct ElevationRequest<'a> {
    /// Who asks.
    pub agent: &'a AgentId,
    /// In which session.
    pub session: &'a SessionId,
    /// The agent's ring without elevation.
    pub base_ring: Ring,
    /// The ring asked for.
    pub target: Ring,
    /// How long; `None` for the default.
    pub ttl: Option<Duration>,
    /// Why (non-blank, at most [`MAX_JUSTIFICATION`] bytes).
    pub justification: &'a str,
    /// A sponsor's attestation (required for ring 1).
    pub sponsorship: Option<&'a Attestation>,
    /// The agent's trust score now.
    pub trust: f64,
    /// An elevation is already active for (agent, session).
    pub active: bool,
}

/// An elevation granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The ring granted.
    pub ring: Ring,
    /// For how long.
    pub ttl: Duration,
    /// Who vouched, if anyone.
    pub sponsor: Option<Sponsor>,
}

/// Why an elevation was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ElevationDenied {
    /// The target is not more privileged than the base ring.
    #[error("cannot elevate from {base} to {target}: the target must be more privileged")]
    InvalidTarget {
        /// The base ring.
        base: Ring,
        /// The ring asked for.
        target: Ring,
    },
    /// Ring 0 is never granted by elevation.
    #[error("ring 0 cannot be reached by elevation")]
    Ring0Forbidden,
    /// An elevation is already active for (agent, session).
    #[error("an elevation is already active for this agent in this session")]
    DuplicateElevation,
    /// The trust score is not a number in [0, 1].
    #[error("trust {value} is not a number in [0, 1]")]
    InvalidTrust {
        /// The value given.
        value: f64,
    },
    /// The trust score is below the target's threshold.
    #[error("{target} needs trust ≥ {need}; the agent has {have}")]
    InsufficientTrust {
        /// The ring asked for.
        target: Ring,
        /// The threshold.
        need: f64,
        /// The agent's score.
        have: f64,
    },
    /// The justification is blank or too long.
    #[error("justification {reason}")]
    Justification {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Ring 1 was asked for without a sponsorship.
    #[error("elevation to ring 1 needs a sponsor's attestation")]
    NoSponsorship,
    /// The sponsorship does not verify.
    #[error("sponsorship refused: {reason}")]
    BadSponsorship {
        /// Why.
        reason: SponsorshipError,
    },
}

/// Decides an elevation request under `rules`, checking any sponsorship
/// against `sponsors` at `now_unix_secs`. The checks run in the order of the
/// module documentation.
///
/// # Errors
/// [`ElevationDenied`] naming the first rule the request breaks.
pub fn decide(
    rules: &ElevationRules,
    req: &ElevationRequest<'_>,
    sponsors: &dyn SponsorKeys,
    now_unix_secs: u64,
) -> Result<Grant, ElevationDenied> {
    if req.target.number() >= req.base_ring.number() {
        return Err(ElevationDenied::InvalidTarget {
            base: req.base_ring,
            target: req.target,
        });
    }
    if req.target == Ring::Root {
        return Err(ElevationDenied::Ring0Forbidden);
    }
    if req.active {
        return Err(ElevationDenied::DuplicateElevation);
    }
    let have = check_score("trust", req.trust)
        .map_err(|_| ElevationDenied::InvalidTrust { value: req.trust })?;
    // A NaN threshold (rules built without validate) refuses: fail closed.
    let need = rules.min_trust(req.target).unwrap_or(f64::NAN);
    if need.is_nan() || have < need {
        return Err(ElevationDenied::InsufficientTrust {
            target: req.target,
            need,
            have,
        });
    }
    if req.justification.trim().is_empty() {
        return Err(ElevationDenied::Justification { reason: "is empty" });
    }
    if req.justification.len() > MAX_JUSTIFICATION {
        return Err(ElevationDenied::Justification {
            reason: "is longer than 1024 bytes",
        });
    }
    if req.target == Ring::Privileged && req.sponsorship.is_none() {
        return Err(ElevationDenied::NoSponsorship);
    }
    let sponsor = match req.sponsorship {
        Some(att) => {
            att.verify(sponsors, req.agent, req.session, req.target, now_unix_secs)
                .map_err(|reason| ElevationDenied::BadSponsorship { reason })?;
            Some(att.sponsor.clone())
        }
        None => None,
    };
    let max = Duration::from_secs(rules.max_ttl_secs).max(MIN_TTL);
    let ttl = req
        .ttl
        .unwrap_or(Duration::from_secs(rules.default_ttl_secs))
        .max(MIN_TTL)
        .min(max);
    Ok(Grant {
        ring: req.target,
        ttl,
        sponsor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    struct Fixture {
        agent: AgentId,
        session: SessionId,
        operator_key: SigningKey,
        sponsor: AgentId,
        sponsor_key: SigningKey,
        registry: SponsorRegistry,
    }

    fn fixture() -> Fixture {
        let operator_key = SigningKey::from_bytes(&[1; 32]);
        let sponsor_key = SigningKey::from_bytes(&[2; 32]);
        let sponsor = AgentId::new("did:example:sponsor").unwrap();
        let mut registry = SponsorRegistry::new(Some(operator_key.verifying_key()));
        registry.set_agent(
            sponsor.clone(),
            sponsor_key.verifying_key(),
            Ring::Privileged,
        );
        Fixture {
            agent: AgentId::new("did:example:agent").unwrap(),
            session: SessionId::new("session-1").unwrap(),
            operator_key,
            sponsor,
            sponsor_key,
            registry,
        }
    }

    impl Fixture {
        fn operator_att(&self, ring: Ring) -> Attestation {
            Attestation::sign(
                Sponsor::Operator,
                self.agent.clone(),
                self.session.clone(),
                ring,
                NOW + 60,
                &self.operator_key,
            )
        }

        fn agent_att(&self) -> Attestation {
            Attestation::sign(
                Sponsor::Agent(self.sponsor.clone()),
                self.agent.clone(),
                self.session.clone(),
                Ring::Privileged,
                NOW + 60,
                &self.sponsor_key,
            )
        }

        fn request<'a>(
            &'a self,
            target: Ring,
            att: Option<&'a Attestation>,
        ) -> ElevationRequest<'a> {
            ElevationRequest {
                agent: &self.agent,
                session: &self.session,
                base_ring: Ring::Sandbox,
                target,
                ttl: None,
                justification: "deploy the fix",
                sponsorship: att,
                trust: 0.9,
                active: false,
            }
        }

        fn decide(&self, req: &ElevationRequest<'_>) -> Result<Grant, ElevationDenied> {
            decide(&ElevationRules::default(), req, &self.registry, NOW)
        }

        fn sponsorship_error(&self, att: &Attestation) -> SponsorshipError {
            match self.decide(&self.request(Ring::Privileged, Some(att))) {
                Err(ElevationDenied::BadSponsorship { reason }) => reason,
                other => panic!("expected BadSponsorship, got {other:?}"),
            }
        }
    }

    #[test]
    fn ring_2_needs_no_sponsor_and_gets_the_default_ttl() {
        let f = fixture();
        let grant = f.decide(&f.request(Ring::Standard, None)).unwrap();
        assert_eq!(
            grant,
            Grant {
                ring: Ring::Standard,
                ttl: Duration::from_secs(300),
                sponsor: None
            }
        );
    }

    #[test]
    fn target_must_be_more_privileged_than_base() {
        let f = fixture();
        for (base, target) in [
            (Ring::Standard, Ring::Standard),
            (Ring::Standard, Ring::Sandbox),
            (Ring::Root, Ring::Root),
        ] {
            let req = ElevationRequest {
                base_ring: base,
                ..f.request(target, None)
            };
            assert_eq!(
                f.decide(&req),
                Err(ElevationDenied::InvalidTarget { base, target })
            );
        }
    }

    #[test]
    fn ring_0_is_never_granted() {
        let f = fixture();
        let att = f.operator_att(Ring::Root);
        assert_eq!(
            f.decide(&f.request(Ring::Root, Some(&att))),
            Err(ElevationDenied::Ring0Forbidden)
        );
    }

    #[test]
    fn one_active_elevation_at_a_time() {
        let f = fixture();
        let req = ElevationRequest {
            active: true,
            ..f.request(Ring::Standard, None)
        };
        assert_eq!(f.decide(&req), Err(ElevationDenied::DuplicateElevation));
    }

    #[test]
    fn trust_thresholds_are_inclusive() {
        let f = fixture();
        let att = f.operator_att(Ring::Privileged);
        let at = |target, trust, att| ElevationRequest {
            trust,
            ..f.request(target, att)
        };
        assert!(f.decide(&at(Ring::Privileged, 0.85, Some(&att))).is_ok());
        assert_eq!(
            f.decide(&at(Ring::Privileged, 0.849_999_9, Some(&att))),
            Err(ElevationDenied::InsufficientTrust {
                target: Ring::Privileged,
                need: 0.85,
                have: 0.849_999_9
            })
        );
        assert!(f.decide(&at(Ring::Standard, 0.50, None)).is_ok());
        assert!(matches!(
            f.decide(&at(Ring::Standard, 0.499_999_9, None)),
            Err(ElevationDenied::InsufficientTrust {
                target: Ring::Standard,
                ..
            })
        ));
        for bad in [f64::NAN, -0.1, 1.1, f64::INFINITY] {
            assert!(matches!(
                f.decide(&at(Ring::Standard, bad, None)),
                Err(ElevationDenied::InvalidTrust { .. })
            ));
        }
    }

    #[test]
    fn justification_must_be_present_and_bounded() {
        let f = fixture();
        let long = "x".repeat(MAX_JUSTIFICATION + 1);
        let exact = "x".repeat(MAX_JUSTIFICATION);
        for (text, ok) in [
            ("", false),
            ("  \n", false),
            (long.as_str(), false),
            (exact.as_str(), true),
        ] {
            let req = ElevationRequest {
                justification: text,
                ..f.request(Ring::Standard, None)
            };
            assert_eq!(f.decide(&req).is_ok(), ok, "{} bytes", text.len());
            if !ok {
                assert!(matches!(
                    f.decide(&req),
                    Err(ElevationDenied::Justification { .. })
                ));
            }
        }
    }

    #[test]
    fn ring_1_needs_a_sponsorship() {
        let f = fixture();
        assert_eq!(
            f.decide(&f.request(Ring::Privileged, None)),
            Err(ElevationDenied::NoSponsorship)
        );
    }

    #[test]
    fn ttl_is_clamped_into_one_second_and_the_cap() {
        let f = fixture();
        let ttl = |t: Option<Duration>| {
            f.decide(&ElevationRequest {
                ttl: t,
                ..f.request(Ring::Standard, None)
            })
            .unwrap()
            .ttl
        };
        assert_eq!(ttl(None), Duration::from_secs(300));
        assert_eq!(
            ttl(Some(Duration::from_secs(7200))),
            Duration::from_secs(3600)
        );
        assert_eq!(ttl(Some(Duration::ZERO)), Duration::from_secs(1));
        assert_eq!(ttl(Some(Duration::from_secs(42))), Duration::from_secs(42));
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let f = fixture();
        // Everything wrong at once: the target check wins.
        let all_wrong = ElevationRequest {
            base_ring: Ring::Root,
            target: Ring::Root,
            active: true,
            trust: f64::NAN,
            justification: "",
            ..f.request(Ring::Privileged, None)
        };
        let expect = [
            ElevationDenied::InvalidTarget {
                base: Ring::Root,
                target: Ring::Root,
            },
            ElevationDenied::Ring0Forbidden,
            ElevationDenied::DuplicateElevation,
            ElevationDenied::InvalidTrust { value: f64::NAN },
            ElevationDenied::Justification { reason: "is empty" },
            ElevationDenied::NoSponsorship,
        ];
        // Fix one problem at a time; the next one in the order is reported.
        let steps: [&dyn Fn(ElevationRequest<'_>) -> ElevationRequest<'_>; 6] = [
            &|r| r,
            &|r| ElevationRequest {
                base_ring: Ring::Sandbox,
                ..r
            },
            &|r| ElevationRequest {
                target: Ring::Privileged,
                ..r
            },
            &|r| ElevationRequest { active: false, ..r },
            &|r| ElevationRequest { trust: 0.9, ..r },
            &|r| ElevationRequest {
                justification: "why",
                ..r
            },
        ];
        let mut req = all_wrong;
        for (step, want) in steps.iter().zip(expect) {
            req = step(req);
            let got = f.decide(&req).unwrap_err();
            // NaN != NaN, so compare the variant by its message.
            assert_eq!(got.to_string(), want.to_string());
        }
        // With low trust the trust check comes before the justification.
        let low = ElevationRequest {
            trust: 0.1,
            justification: "",
            ..f.request(Ring::Standard, None)
        };
        assert!(matches!(
            f.decide(&low),
            Err(ElevationDenied::InsufficientTrust { .. })
        ));
    }

    #[test]
    fn operator_and_ring_1_agent_attestations_are_accepted() {
        let f = fixture();
        let op = f.operator_att(Ring::Privileged);
        let grant = f.decide(&f.request(Ring::Privileged, Some(&op))).unwrap();
        assert_eq!(grant.sponsor, Some(Sponsor::Operator));
        let ag = f.agent_att();
        let grant = f.decide(&f.request(Ring::Privileged, Some(&ag))).unwrap();
        assert_eq!(grant.sponsor, Some(Sponsor::Agent(f.sponsor.clone())));
    }

    #[test]
    fn a_sponsor_below_ring_1_is_refused() {
        let mut f = fixture();
        assert!(f.registry.set_ring(&f.sponsor.clone(), Ring::Standard));
        let att = f.agent_att();
        assert_eq!(
            f.sponsorship_error(&att),
            SponsorshipError::SponsorRing {
                sponsor: Sponsor::Agent(f.sponsor.clone()),
                ring: Some(Ring::Standard)
            }
        );
    }

    #[test]
    fn unknown_sponsors_and_self_sponsorship_are_refused() {
        let mut f = fixture();
        f.registry.remove_agent(&f.sponsor.clone());
        assert!(matches!(
            f.sponsorship_error(&f.agent_att()),
            SponsorshipError::UnknownSponsor { .. }
        ));
        let no_operator = SponsorRegistry::new(None);
        let att = f.operator_att(Ring::Privileged);
        assert!(matches!(
            decide(
                &ElevationRules::default(),
                &f.request(Ring::Privileged, Some(&att)),
                &no_operator,
                NOW
            ),
            Err(ElevationDenied::BadSponsorship {
                reason: SponsorshipError::UnknownSponsor { .. }
            })
        ));
        let own_key = SigningKey::from_bytes(&[3; 32]);
        f.registry
            .set_agent(f.agent.clone(), own_key.verifying_key(), Ring::Privileged);
        let selfie = Attestation::sign(
            Sponsor::Agent(f.agent.clone()),
            f.agent.clone(),
            f.session.clone(),
            Ring::Privileged,
            NOW + 60,
            &own_key,
        );
        assert_eq!(
            f.sponsorship_error(&selfie),
            SponsorshipError::SelfSponsored
        );
    }

    #[test]
    fn attestations_for_another_agent_session_or_ring_are_refused() {
        let f = fixture();
        let sign = |agent: &str, session: &str, ring| {
            Attestation::sign(
                Sponsor::Operator,
                AgentId::new(agent).unwrap(),
                SessionId::new(session).unwrap(),
                ring,
                NOW + 60,
                &f.operator_key,
            )
        };
        let a = f.agent.as_str();
        let s = f.session.as_str();
        assert!(matches!(
            f.sponsorship_error(&sign("other", s, Ring::Privileged)),
            SponsorshipError::WrongAgent { .. }
        ));
        assert!(matches!(
            f.sponsorship_error(&sign(a, "other", Ring::Privileged)),
            SponsorshipError::WrongSession { .. }
        ));
        // A ring 2 attestation does not vouch for ring 1 …
        assert!(matches!(
            f.sponsorship_error(&sign(a, s, Ring::Standard)),
            SponsorshipError::WrongRing { .. }
        ));
        // … and a sponsorship given for ring 2 is verified too.
        let r1 = sign(a, s, Ring::Privileged);
        assert!(matches!(
            f.decide(&f.request(Ring::Standard, Some(&r1))),
            Err(ElevationDenied::BadSponsorship {
                reason: SponsorshipError::WrongRing { .. }
            })
        ));
    }

    #[test]
    fn expired_attestations_are_refused() {
        let f = fixture();
        let att = Attestation::sign(
            Sponsor::Operator,
            f.agent.clone(),
            f.session.clone(),
            Ring::Privileged,
            NOW,
            &f.operator_key,
        );
        assert_eq!(
            f.sponsorship_error(&att),
            SponsorshipError::Expired {
                expires_unix: NOW,
                now_unix: NOW
            }
        );
    }

    #[test]
    fn tampered_attestations_are_refused() {
        let f = fixture();
        let mut sig = f.operator_att(Ring::Privileged);
        sig.signature[10] ^= 1;
        assert_eq!(f.sponsorship_error(&sig), SponsorshipError::Signature);
        // A later expiry than the one signed.
        let mut exp = f.operator_att(Ring::Privileged);
        exp.expires_unix += 1;
        assert_eq!(f.sponsorship_error(&exp), SponsorshipError::Signature);
        // The operator's signature relabelled as the ring 1 agent's.
        let mut relabelled = f.operator_att(Ring::Privileged);
        relabelled.sponsor = Sponsor::Agent(f.sponsor.clone());
        assert_eq!(
            f.sponsorship_error(&relabelled),
            SponsorshipError::Signature
        );
        // Signed by someone else's key.
        let forged = Attestation::sign(
            Sponsor::Operator,
            f.agent.clone(),
            f.session.clone(),
            Ring::Privileged,
            NOW + 60,
            &SigningKey::from_bytes(&[9; 32]),
        );
        assert_eq!(f.sponsorship_error(&forged), SponsorshipError::Signature);
    }

    #[test]
    fn signing_bytes_are_domain_separated_and_length_prefixed() {
        let a = |s| AgentId::new(s).unwrap();
        let s = |x| SessionId::new(x).unwrap();
        let bytes =
            Attestation::signing_bytes(&Sponsor::Operator, &a("ab"), &s("c"), Ring::Standard, 7);
        let mut want = ATTESTATION_DOMAIN.to_vec();
        want.push(0);
        want.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c', 2]);
        want.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(bytes, want);
        assert_ne!(
            Attestation::signing_bytes(&Sponsor::Operator, &a("a:b"), &s("c"), Ring::Standard, 7),
            Attestation::signing_bytes(&Sponsor::Operator, &a("a"), &s("b:c"), Ring::Standard, 7)
        );
    }

    #[test]
    fn text_form_round_trips() {
        let f = fixture();
        for att in [f.operator_att(Ring::Privileged), f.agent_att()] {
            let text = att.to_text();
            assert!(!text.contains(char::is_whitespace));
            assert_eq!(Attestation::from_text(&text), Ok(att.clone()));
            let parsed = Attestation::from_text(&text).unwrap();
            assert!(
                f.decide(&f.request(Ring::Privileged, Some(&parsed)))
                    .is_ok()
            );
        }
    }

    #[test]
    fn garbage_text_is_a_typed_error() {
        let f = fixture();
        let good = f.agent_att().to_text();
        let fields: Vec<&str> = good.split('.').collect();
        let with = |i: usize, v: &str| {
            let mut g = fields.clone();
            g[i] = v;
            g.join(".")
        };
        use AttestationParseError as E;
        assert!(matches!(
            Attestation::from_text(""),
            Err(E::FieldCount { found: 1 })
        ));
        assert!(matches!(
            Attestation::from_text(&format!("{good}.x")),
            Err(E::FieldCount { found: 9 })
        ));
        assert!(matches!(
            Attestation::from_text(&"a".repeat(5000)),
            Err(E::TooLong { len: 5000, .. })
        ));
        assert!(matches!(
            Attestation::from_text(&with(0, "ahv-att-v2")),
            Err(E::Version { .. })
        ));
        assert!(matches!(
            Attestation::from_text(&with(1, "root")),
            Err(E::SponsorKind { .. })
        ));
        assert!(matches!(
            Attestation::from_text(&with(1, "operator")),
            Err(E::OperatorWithId)
        ));
        assert!(matches!(
            Attestation::from_text(&with(3, "abc")),
            Err(E::Hex { field: "agent" })
        ));
        assert!(matches!(
            Attestation::from_text(&with(3, "zz")),
            Err(E::Hex { field: "agent" })
        ));
        assert!(matches!(
            Attestation::from_text(&with(4, "ff")),
            Err(E::Utf8 { field: "session" })
        ));
        assert!(matches!(
            Attestation::from_text(&with(4, "2f")),
            Err(E::Id {
                field: "session",
                ..
            })
        ));
        assert!(matches!(
            Attestation::from_text(&with(2, "")),
            Err(E::Id {
                field: "sponsor",
                ..
            })
        ));
        for ring in ["4", "", "01", "+1", "x"] {
            assert!(
                matches!(Attestation::from_text(&with(5, ring)), Err(E::Ring { .. })),
                "{ring}"
            );
        }
        for exp in ["", "+5", "-1", "18446744073709551616", "1e9"] {
            assert!(
                matches!(Attestation::from_text(&with(6, exp)), Err(E::Expiry { .. })),
                "{exp}"
            );
        }
        assert!(matches!(
            Attestation::from_text(&with(7, "abcd")),
            Err(E::SignatureLength { len: 2 })
        ));
    }

    #[test]
    fn rules_validate_and_load_from_toml() {
        let d = ElevationRules::default;
        let field = |r: ElevationRules| r.validate().unwrap_err().field;
        assert!(d().validate().is_ok());
        assert_eq!(
            field(ElevationRules {
                default_ttl_secs: 0,
                ..d()
            }),
            "default_ttl_secs"
        );
        assert_eq!(
            field(ElevationRules {
                max_ttl_secs: 299,
                ..d()
            }),
            "max_ttl_secs"
        );
        assert_eq!(
            field(ElevationRules {
                max_ttl_secs: 86_401,
                ..d()
            }),
            "max_ttl_secs"
        );
        assert_eq!(
            field(ElevationRules {
                min_trust_ring2: f64::NAN,
                ..d()
            }),
            "min_trust_ring2"
        );
        assert_eq!(
            field(ElevationRules {
                min_trust_ring1: 1.5,
                ..d()
            }),
            "min_trust_ring1"
        );
        assert_eq!(
            field(ElevationRules {
                min_trust_ring1: 0.4,
                ..d()
            }),
            "min_trust_ring1"
        );
        let r: ElevationRules =
            toml::from_str("max_ttl_secs = 600\nmin_trust_ring1 = 0.9\n").unwrap();
        assert_eq!(
            r,
            ElevationRules {
                max_ttl_secs: 600,
                min_trust_ring1: 0.9,
                ..d()
            }
        );
        assert_eq!(
            toml::from_str::<ElevationRules>(&toml::to_string(&r).unwrap()).unwrap(),
            r
        );
        assert!(toml::from_str::<ElevationRules>("max_ttl_secs = 100\n").is_err());
        assert!(toml::from_str::<ElevationRules>("sudo = true\n").is_err());
    }

    #[test]
    fn invalid_rules_fail_closed() {
        let f = fixture();
        let rules = ElevationRules {
            min_trust_ring2: f64::NAN,
            max_ttl_secs: 0,
            ..ElevationRules::default()
        };
        assert!(matches!(
            decide(&rules, &f.request(Ring::Standard, None), &f.registry, NOW),
            Err(ElevationDenied::InsufficientTrust { .. })
        ));
        let rules = ElevationRules {
            max_ttl_secs: 0,
            ..ElevationRules::default()
        };
        let grant = decide(&rules, &f.request(Ring::Standard, None), &f.registry, NOW).unwrap();
        assert_eq!(grant.ttl, MIN_TTL);
    }

    proptest! {
        #[test]
        fn from_text_never_panics(s in "\\PC{0,400}") {
            let _ = Attestation::from_text(&s);
        }

        #[test]
        fn from_text_never_panics_on_near_misses(
            fields in proptest::collection::vec("[0-9a-fA-Fg.:-]{0,80}", 0..10),
        ) {
            let _ = Attestation::from_text(&format!("ahv-att-v1.{}", fields.join(".")));
        }
    }
}
