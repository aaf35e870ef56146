//! Outbound HTTP rules: which destinations an agent may reach through the
//! `net` capability, and the limits every request is held to.
//!
//! The runtime asks two questions, in this order, and sends nothing until
//! both say yes:
//! 1. [`NetAccess::check`], before anything leaves the host: is this
//!    method, scheme, host and port on the agent's allow-list? The
//!    authority is parsed strictly: user info (`user@host`), numeric host
//!    forms that resolvers read as addresses (`2130706433`, `0x7f.1`,
//!    `127.1`), and IP literals that no rule names are refused here.
//! 2. [`Permit::vet`], for the address the host name resolved to: loopback,
//!    private, link-local, shared (CGNAT), multicast, documentation and
//!    other non-global addresses — also when they hide inside an IPv6 form
//!    (IPv4-mapped, NAT64, 6to4) — are refused unless the rule that
//!    matched says `private_addresses = true`. The runtime connects to the
//!    address it vetted, never resolving the name a second time (no DNS
//!    rebinding between the check and the connection).
//!
//! A policy with no `[[net.allow]]` rule refuses every destination. The
//! limits ([`NetLimits`]) are the request and response body sizes and the
//! connect and total timeouts. A rule may carry a credential the host adds
//! to the requests it matches ([`Credential`]); the guest never sees it and
//! the audit record never holds it.
//!
//! ```
//! use ahv_core::{AgentId, SessionId};
//! use ahv_security::net::{NetPolicy, NetRefusal, NetSection};
//!
//! let section: NetSection = toml::from_str(
//!     r#"
//!     [[allow]]
//!     host = "api.example.com"
//!     methods = ["POST"]
//!     credential = { header = "authorization", value = "Bearer sk-test" }
//!     "#,
//! )
//! .unwrap();
//! let policy = NetPolicy::from_section(section, |_| None)?;
//! let access = policy.for_agent(&AgentId::new("did:ex:a")?, &SessionId::new("s")?);
//!
//! let permit = access.check("POST", "https", "api.example.com")?;
//! assert_eq!(permit.port, 443);
//! assert!(matches!(
//!     access.check("POST", "https", "evil.example.net"),
//!     Err(NetRefusal::HostNotAllowed { .. })
//! ));
//! // An address the name resolved to is vetted before the connection.
//! assert!(permit.vet("10.0.0.7:443".parse().unwrap()).is_err());
//! assert!(permit.vet("93.184.216.34:443".parse().unwrap()).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ahv_core::{AgentId, SessionId};
use serde::Deserialize;
use thiserror::Error;

/// Default largest request body, in bytes (1 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1 << 20;
/// Default largest response body, in bytes (4 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// Default longest a request may take, connection to last response byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest the name lookup and the connection may take together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body limit a policy may set (64 MiB): the host buffers bodies.
pub const MAX_BODY_LIMIT: u64 = 64 << 20;
/// Longest timeout a policy may set (10 minutes).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// `[net]` in a policy file: the allow-list and the limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetSection {
    /// `[[net.allow]]`: the destinations; none means every request is refused.
    pub allow: Vec<AllowSection>,
    /// Largest request body, in bytes.
    pub max_request_bytes: Option<u64>,
    /// Largest response body, in bytes.
    pub max_response_bytes: Option<u64>,
    /// Longest a request may take, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Longest the name lookup and connection may take, in milliseconds.
    pub connect_timeout_ms: Option<u64>,
}

/// One `[[net.allow]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowSection {
    /// `api.example.com`, `*.example.com` (subdomains only), or an IP
    /// literal (`127.0.0.1`, `[::1]`) — the only way to allow one.
    pub host: String,
    /// The port; left out: the scheme's default (443, 80) only.
    pub port: Option<u16>,
    /// Schemes (`https`, `http`); left out: `https` only.
    pub schemes: Option<Vec<String>>,
    /// Methods; left out: `GET` and `POST`.
    pub methods: Option<Vec<String>>,
    /// The agents it applies to; left out or empty: every agent that holds
    /// the `net` capability.
    #[serde(default)]
    pub agents: Vec<String>,
    /// The sessions it applies to; left out or empty: every session.
    #[serde(default)]
    pub sessions: Vec<String>,
    /// Whether the host may resolve to loopback, private or other
    /// non-global addresses (a local model server); default false.
    #[serde(default)]
    pub private_addresses: bool,
    /// Whether a redirect (3xx) response reaches the guest; default false:
    /// it is refused, so a guest cannot be steered by a server it may
    /// reach toward one it may not. (The host never follows redirects.)
    #[serde(default)]
    pub redirects: bool,
    /// A header the host sets on every request this rule matches.
    pub credential: Option<CredentialSection>,
}

/// `credential = { header = "…", value = "…" }` or `value_env = "VAR"`.
/// Its `Debug` does not show `value`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSection {
    /// The header (`authorization`, `x-api-key`).
    pub header: String,
    /// The header's value, written in the file.
    pub value: Option<String>,
    /// The environment variable of the host process that holds the value.
    pub value_env: Option<String>,
}

impl fmt::Debug for CredentialSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSection")
            .field("header", &self.header)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("value_env", &self.value_env)
            .finish()
    }
}

/// A secret: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that needs it (the outgoing header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A header the host sets on a matched request, replacing any the guest set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The header name, lower case.
    pub header: String,
    /// Its value.
    pub value: Secret,
}

/// The size and time limits of outbound requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLimits {
    /// Largest request body, in bytes.
    pub max_request_bytes: u64,
    /// Largest response body, in bytes.
    pub max_response_bytes: u64,
    /// Longest a request may take, connection to last response byte.
    pub timeout: Duration,
    /// Longest the name lookup and the connection may take together.
    pub connect_timeout: Duration,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Which host names a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name (lower case, no trailing dot).
    Exact(String),
    /// Any name ending in `.` + this suffix (not the suffix itself).
    Subdomains(String),
    /// Exactly this IP literal.
    Ip(IpAddr),
}

impl HostPattern {
    fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(p), Host::Name(n)) => p == n,
            (HostPattern::Subdomains(s), Host::Name(n)) => n
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostPattern::Ip(p), Host::Ip(ip)) => p == ip,
            _ => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Subdomains(s) => write!(f, "*.{s}"),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One checked allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    /// The hosts it matches.
    pub host: HostPattern,
    /// The port (`None`: the scheme's default).
    pub port: Option<u16>,
    /// Allowed schemes, lower case.
    pub schemes: BTreeSet<String>,
    /// Allowed methods, upper case.
    pub methods: BTreeSet<String>,
    /// The agents it applies to (empty: all).
    pub agents: BTreeSet<AgentId>,
    /// The sessions it applies to (empty: all).
    pub sessions: BTreeSet<String>,
    /// Non-global addresses allowed.
    pub private_addresses: bool,
    /// Redirect responses passed to the guest.
    pub redirects: bool,
    /// The header the host adds.
    pub credential: Option<Credential>,
}

/// The effective outbound HTTP policy: rules and limits. The default has
/// no rule, so it refuses every destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPolicy {
    /// The rules, in file order.
    pub rules: Vec<NetRule>,
    /// The limits.
    pub limits: NetLimits,
}

/// Why a `[net]` section was refused: the field (`allow[2].host`) and the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("net.{field}: {message}")]
pub struct NetPolicyError {
    /// The field, as a TOML path below `net`.
    pub field: String,
    /// What is wrong, naming the value.
    pub message: String,
}

fn policy_err(field: impl Into<String>, message: impl Into<String>) -> NetPolicyError {
    NetPolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// The methods a rule may name.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl NetPolicy {
    /// Checks a `[net]` section. `env` looks up the environment variables
    /// credentials name (`|v| std::env::var(v).ok()` in a host).
    ///
    /// # Errors
    /// A [`NetPolicyError`] naming the field: a host that is not a name,
    /// a `*.` pattern or an IP literal; a port 0; a scheme other than
    /// `http`/`https`; an unknown method; a bad agent id; a credential with
    /// a bad header name, with both or neither of `value` and `value_env`,
    /// or naming an unset variable; a zero or too large limit.
    pub fn from_section(
        section: NetSection,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<NetPolicy, NetPolicyError> {
        let mut rules = Vec::with_capacity(section.allow.len());
        for (i, a) in section.allow.into_iter().enumerate() {
            let at = |f: &str| format!("allow[{i}].{f}");
            let host = parse_pattern(&a.host).map_err(|m| policy_err(at("host"), m))?;
            if a.port == Some(0) {
                return Err(policy_err(at("port"), "port 0 is not a port"));
            }
            let schemes = match a.schemes {
                None => BTreeSet::from(["https".to_string()]),
                Some(list) => {
                    let mut set = BTreeSet::new();
                    for s in list {
                        let s = s.to_ascii_lowercase();
                        if s != "http" && s != "https" {
                            return Err(policy_err(
                                at("schemes"),
                                format!("{s:?} is not a scheme the host sends (http, https)"),
                            ));
                        }
                        set.insert(s);
                    }
                    set
                }
            };
            let methods = match a.methods {
                None => BTreeSet::from(["GET".to_string(), "POST".to_string()]),
                Some(list) => {
                    let mut set = BTreeSet::new();
                    for m in list {
                        let m = m.to_ascii_uppercase();
                        if !METHODS.contains(&m.as_str()) {
                            return Err(policy_err(
                                at("methods"),
                                format!("{m:?} is not a method ({})", METHODS.join(", ")),
                            ));
                        }
                        set.insert(m);
                    }
                    set
                }
            };
            let mut agents = BTreeSet::new();
            for id in a.agents {
                agents.insert(
                    AgentId::new(id.as_str())
                        .map_err(|e| policy_err(at("agents"), format!("{id:?}: {e}")))?,
                );
            }
            let credential = match a.credential {
                None => None,
                Some(c) => Some(
                    parse_credential(c, &env)
                        .map_err(|(f, m)| policy_err(at(&format!("credential.{f}")), m))?,
                ),
            };
            rules.push(NetRule {
                host,
                port: a.port,
                schemes,
                methods,
                agents,
                sessions: a.sessions.into_iter().collect(),
                private_addresses: a.private_addresses,
                redirects: a.redirects,
                credential,
            });
        }
        let body = |field: &str, v: Option<u64>, default: u64| match v {
            None => Ok(default),
            Some(0) => Err(policy_err(field, "must be greater than zero")),
            Some(n) if n > MAX_BODY_LIMIT => Err(policy_err(
                field,
                format!("{n} is more than the largest limit, {MAX_BODY_LIMIT} bytes"),
            )),
            Some(n) => Ok(n),
        };
        let time = |field: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(policy_err(field, "must be greater than zero")),
            Some(ms) if Duration::from_millis(ms) > MAX_TIMEOUT => Err(policy_err(
                field,
                format!("{ms} ms is more than the longest timeout, {MAX_TIMEOUT:?}"),
            )),
            Some(ms) => Ok(Duration::from_millis(ms)),
        };
        let limits = NetLimits {
            max_request_bytes: body(
                "max_request_bytes",
                section.max_request_bytes,
                DEFAULT_MAX_REQUEST_BYTES,
            )?,
            max_response_bytes: body(
                "max_response_bytes",
                section.max_response_bytes,
                DEFAULT_MAX_RESPONSE_BYTES,
            )?,
            timeout: time("timeout_ms", section.timeout_ms, DEFAULT_TIMEOUT)?,
            connect_timeout: time(
                "connect_timeout_ms",
                section.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
        };
        Ok(NetPolicy { rules, limits })
    }

    /// The rules that apply to `agent` in `session`, with the limits.
    pub fn for_agent(&self, agent: &AgentId, session: &SessionId) -> NetAccess {
        let rules = self
            .rules
            .iter()
            .filter(|r| r.agents.is_empty() || r.agents.contains(agent))
            .filter(|r| r.sessions.is_empty() || r.sessions.contains(session.as_str()))
            .cloned()
            .collect();
        NetAccess {
            rules: Arc::new(rules),
            limits: self.limits,
        }
    }
}

fn parse_credential(
    c: CredentialSection,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Credential, (&'static str, String)> {
    let header = c.header.to_ascii_lowercase();
    let token = !header.is_empty()
        && header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(("header", format!("{:?} is not a header name", c.header)));
    }
    if matches!(
        header.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection" | "upgrade"
    ) {
        return Err((
            "header",
            format!("{header:?} frames the request; it cannot carry a credential"),
        ));
    }
    let value = match (c.value, c.value_env) {
        (Some(v), None) => v,
        (None, Some(var)) => env(&var).ok_or_else(|| {
            (
                "value_env",
                format!("the environment variable {var:?} is not set"),
            )
        })?,
        _ => {
            return Err((
                "value",
                "give exactly one of `value` and `value_env`".to_string(),
            ));
        }
    };
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return Err((
            "value",
            "a header value must be visible ASCII (spaces and tabs allowed), not empty".to_string(),
        ));
    }
    Ok(Credential {
        header,
        value: Secret(value),
    })
}

fn parse_pattern(text: &str) -> Result<HostPattern, String> {
    if let Some(suffix) = text.strip_prefix("*.") {
        return match parse_host(suffix) {
            Ok(Host::Name(n)) if n.contains('.') => Ok(HostPattern::Subdomains(n)),
            _ => Err(format!(
                "{text:?}: a `*.` pattern needs a domain of at least two labels after it"
            )),
        };
    }
    match parse_host(text) {
        Ok(Host::Name(n)) => Ok(HostPattern::Exact(n)),
        Ok(Host::Ip(ip)) => Ok(HostPattern::Ip(ip)),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

/// A destination host, parsed strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lower case, without a trailing dot.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Parses a host: a bracketed IPv6 literal, a dotted-quad IPv4 literal, or
/// a DNS name (letters, digits, `-` and `.`; labels of 1 to 63; at most 253
/// in all; the last label not numeric, since resolvers read such names as
/// addresses: `2130706433`, `127.1`, `0x7f.1`).
fn parse_host(text: &str) -> Result<Host, String> {
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or("an IPv6 literal must be closed by `]`")?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| format!("[{inner}] is not an IPv6 address"));
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    if text.parse::<Ipv6Addr>().is_ok() {
        return Err("an IPv6 literal must be written in brackets".into());
    }
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || name.len() > 253 {
        return Err("a host name has 1 to 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label {label:?} must have 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "label {label:?} holds a character other than a letter, digit or `-`"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with `-`"));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(format!(
            "{name:?} is a numeric form resolvers read as an address; write a dotted-quad IP literal"
        ));
    }
    Ok(Host::Name(name.to_string()))
}

/// Splits an authority into host and port, refusing user info.
fn parse_authority(authority: &str) -> Result<(Host, Option<u16>), NetRefusal> {
    let bad = |reason: String| NetRefusal::BadAuthority {
        authority: authority.to_string(),
        reason,
    };
    if authority.contains('@') {
        return Err(bad("user info (`user@host`) is not accepted".into()));
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let (h, rest) = authority.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None if rest.is_empty() => (h, None),
                    None => return Err(bad("text after the IPv6 literal".into())),
                }
            }
            None => return Err(bad("an IPv6 literal must be closed by `]`".into())),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            let n = if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse::<u16>().ok()
            } else {
                None
            };
            match n {
                Some(n) if n > 0 => Some(n),
                _ => return Err(bad(format!("{p:?} is not a port"))),
            }
        }
    };
    let host = parse_host(host).map_err(bad)?;
    Ok((host, port))
}

/// The rules of one agent in one session ([`NetPolicy::for_agent`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetAccess {
    rules: Arc<Vec<NetRule>>,
    limits: NetLimits,
}

impl NetAccess {
    /// The limits every request is held to.
    pub fn limits(&self) -> &NetLimits {
        &self.limits
    }

    /// True when no rule applies (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides a request before anything is sent: `method` as the guest
    /// gave it, `scheme` (`http`, `https`), `authority` (`host[:port]`).
    /// The first rule, in file order, that matches host, port, scheme and
    /// method decides (its credential, private addresses and redirects):
    /// put specific rules before `*.` ones.
    ///
    /// # Errors
    /// A [`NetRefusal`] naming what did not match.
    pub fn check(&self, method: &str, scheme: &str, authority: &str) -> Result<Permit, NetRefusal> {
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(NetRefusal::Scheme { scheme }),
        };
        let (host, port) = parse_authority(authority)?;
        let port = port.unwrap_or(default_port);
        let method = method.to_string();
        let by_host: Vec<&NetRule> = self
            .rules
            .iter()
            .filter(|r| r.host.matches(&host))
            .collect();
        if by_host.is_empty() {
            return Err(match host {
                Host::Ip(ip) => NetRefusal::IpLiteral { ip },
                Host::Name(host) => NetRefusal::HostNotAllowed { host },
            });
        }
        let by_port: Vec<&NetRule> = by_host
            .into_iter()
            .filter(|r| r.port.unwrap_or(default_port) == port)
            .collect();
        if by_port.is_empty() {
            return Err(NetRefusal::PortNotAllowed {
                host: host.to_string(),
                port,
            });
        }
        let by_scheme: Vec<&NetRule> = by_port
            .into_iter()
            .filter(|r| r.schemes.contains(&scheme))
            .collect();
        if by_scheme.is_empty() {
            return Err(NetRefusal::SchemeNotAllowed {
                host: host.to_string(),
                scheme,
            });
        }
        let rule = by_scheme
            .into_iter()
            .find(|r| r.methods.contains(&method))
            .ok_or_else(|| NetRefusal::MethodNotAllowed {
                host: host.to_string(),
                method: method.clone(),
            })?;
        Ok(Permit {
            host,
            port,
            tls: scheme == "https",
            private_addresses: rule.private_addresses,
            redirects: rule.redirects,
            credential: rule.credential.clone(),
        })
    }
}

/// A request [`NetAccess::check`] allowed: where to connect and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// The host (to resolve, or the literal to connect to).
    pub host: Host,
    /// The port.
    pub port: u16,
    /// `https`: the connection is TLS, verified against `host`.
    pub tls: bool,
    /// Non-global addresses allowed.
    pub private_addresses: bool,
    /// Redirect responses reach the guest.
    pub redirects: bool,
    /// The header the host sets.
    pub credential: Option<Credential>,
}

impl Permit {
    /// Decides an address the host resolved to (or the literal itself).
    ///
    /// # Errors
    /// [`NetRefusal::PrivateAddress`] for a non-global address the rule
    /// does not allow.
    pub fn vet(&self, addr: SocketAddr) -> Result<(), NetRefusal> {
        match address_class(addr.ip()) {
            Some(class) if !self.private_addresses => Err(NetRefusal::PrivateAddress {
                host: self.host.to_string(),
                address: addr.ip(),
                class,
            }),
            _ => Ok(()),
        }
    }
}

/// Why a request was refused by the allow-list or the address rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetRefusal {
    /// A scheme other than `http` and `https`.
    #[error("scheme {scheme:?} is not sent (http and https only)")]
    Scheme {
        /// The scheme.
        scheme: String,
    },
    /// The authority is malformed or uses a refused form.
    #[error("authority {authority:?} refused: {reason}")]
    BadAuthority {
        /// The authority as given.
        authority: String,
        /// Why.
        reason: String,
    },
    /// No rule names this host.
    #[error("host {host} is not on the agent's allow-list")]
    HostNotAllowed {
        /// The host.
        host: String,
    },
    /// An IP literal no rule names.
    #[error(
        "IP literal {ip} is not on the agent's allow-list (IP literals must be listed as such)"
    )]
    IpLiteral {
        /// The address.
        ip: IpAddr,
    },
    /// The host is listed, but not with this port.
    #[error("host {host} is allowed, but not on port {port}")]
    PortNotAllowed {
        /// The host.
        host: String,
        /// The port.
        port: u16,
    },
    /// The host is listed, but not with this scheme.
    #[error("host {host} is allowed, but not over {scheme}")]
    SchemeNotAllowed {
        /// The host.
        host: String,
        /// The scheme.
        scheme: String,
    },
    /// The host is listed, but not with this method.
    #[error("host {host} is allowed, but not with method {method}")]
    MethodNotAllowed {
        /// The host.
        host: String,
        /// The method.
        method: String,
    },
    /// The host resolved to (or is) a non-global address.
    #[error(
        "host {host} is at {address}, a {class} address, and the rule does not allow private addresses"
    )]
    PrivateAddress {
        /// The host.
        host: String,
        /// The address.
        address: IpAddr,
        /// Its class (`loopback`, `private`, `link-local`, …).
        class: &'static str,
    },
}

/// The class of a non-global address (`loopback`, `private`, …), or
/// `None` for a global one. IPv4 addresses inside IPv6 forms (IPv4-mapped,
/// IPv4-compatible, NAT64, 6to4) are classed by the IPv4 address.
pub fn address_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (this network)",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (100, 64..=127, _) => "shared (CGNAT)",
        (169, 254, _) => "link-local",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return Some(v4_class(embedded(s[6], s[7])).unwrap_or("IPv4-in-IPv6"));
    }
    // NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48).
    if s[0] == 0x64 && s[1] == 0xff9b {
        return Some(v4_class(embedded(s[6], s[7])).unwrap_or("NAT64"));
    }
    // 6to4 (2002::/16) carries an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return Some(v4_class(embedded(s[1], s[2])).unwrap_or("6to4"));
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "unique local (private)",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x2001 if s[1] == 0 => "Teredo tunnel",
        0x0100 if s[1..4] == [0, 0, 0] => "discard",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> NetPolicy {
        let section: NetSection = toml::from_str(toml_text).expect("toml");
        NetPolicy::from_section(section, |v| (v == "KEY").then(|| "s3cret".to_string()))
            .expect("policy")
    }

    fn access(toml_text: &str) -> NetAccess {
        policy(toml_text).for_agent(
            &AgentId::new("did:ex:a").unwrap(),
            &SessionId::new("s1").unwrap(),
        )
    }

    #[test]
    fn no_rule_refuses_everything() {
        let a = NetAccess::default();
        assert!(a.is_empty());
        assert_eq!(
            a.check("GET", "https", "example.com"),
            Err(NetRefusal::HostNotAllowed {
                host: "example.com".into()
            })
        );
    }

    #[test]
    fn a_rule_allows_its_host_port_scheme_and_methods_only() {
        let a = access(
            r#"
            [[allow]]
            host = "api.example.com"
            methods = ["post"]
            "#,
        );
        let p = a.check("POST", "https", "API.Example.com.").unwrap();
        assert_eq!(
            (p.host.clone(), p.port, p.tls),
            (Host::Name("api.example.com".into()), 443, true)
        );
        assert_eq!(
            a.check("POST", "HTTPS", "api.example.com:443")
                .unwrap()
                .port,
            443
        );
        assert!(matches!(
            a.check("POST", "https", "api.example.com:8443"),
            Err(NetRefusal::PortNotAllowed { port: 8443, .. })
        ));
        assert!(matches!(
            a.check("POST", "http", "api.example.com"),
            Err(NetRefusal::SchemeNotAllowed { .. })
        ));
        assert!(matches!(
            a.check("GET", "https", "api.example.com"),
            Err(NetRefusal::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            a.check("POST", "ftp", "api.example.com"),
            Err(NetRefusal::Scheme { .. })
        ));
        for other in [
            "example.com",
            "api.example.com.evil.net",
            "xapi.example.com",
            "evil.net",
        ] {
            assert!(
                matches!(
                    a.check("POST", "https", other),
                    Err(NetRefusal::HostNotAllowed { .. })
                ),
                "{other}"
            );
        }
    }

    #[test]
    fn subdomain_patterns_match_subdomains_only() {
        let a = access("[[allow]]\nhost = \"*.example.com\"\n");
        assert!(a.check("GET", "https", "a.example.com").is_ok());
        assert!(a.check("GET", "https", "a.b.example.com").is_ok());
        assert!(a.check("GET", "https", "example.com").is_err());
        assert!(a.check("GET", "https", "badexample.com").is_err());
    }

    #[test]
    fn bypass_forms_of_the_authority_are_refused() {
        let a = access(
            r#"
            [[allow]]
            host = "localhost"
            port = 8080
            schemes = ["http"]
            private_addresses = true
            "#,
        );
        assert!(a.check("GET", "http", "localhost:8080").is_ok());
        for (authority, what) in [
            ("localhost@evil.net:8080", "user info"),
            ("evil.net@localhost:8080", "user info"),
            ("127.0.0.1:8080", "IP literal not listed"),
            ("[::1]:8080", "IPv6 literal not listed"),
            ("2130706433:8080", "decimal address"),
            ("0x7f.1:8080", "hex address"),
            ("127.1:8080", "short address"),
            ("localhost:08080x", "bad port"),
            ("localhost:0", "port 0"),
            ("localhost:99999", "port out of range"),
            ("local%68ost:8080", "percent encoding"),
            ("localhost\u{0}:8080", "NUL"),
            ("::1:8080", "unbracketed IPv6"),
            ("[::1:8080", "unclosed bracket"),
            ("", "empty"),
        ] {
            assert!(
                a.check("GET", "http", authority).is_err(),
                "{what}: {authority:?} was allowed"
            );
        }
    }

    #[test]
    fn ip_literals_pass_only_when_listed_as_such() {
        let a = access(
            r#"
            [[allow]]
            host = "127.0.0.1"
            port = 9000
            schemes = ["http"]
            [[allow]]
            host = "[::1]"
            port = 9000
            schemes = ["http"]
            "#,
        );
        assert!(a.check("GET", "http", "127.0.0.1:9000").is_ok());
        assert!(a.check("GET", "http", "[::1]:9000").is_ok());
        assert_eq!(
            a.check("GET", "http", "127.0.0.2:9000"),
            Err(NetRefusal::IpLiteral {
                ip: "127.0.0.2".parse().unwrap()
            })
        );
        // Listed, but loopback still needs `private_addresses`.
        let p = a.check("GET", "http", "127.0.0.1:9000").unwrap();
        assert!(matches!(
            p.vet("127.0.0.1:9000".parse().unwrap()),
            Err(NetRefusal::PrivateAddress {
                class: "loopback",
                ..
            })
        ));
    }

    #[test]
    fn addresses_are_classed_including_ipv4_inside_ipv6() {
        let class = |s: &str| address_class(s.parse().unwrap());
        for (ip, want) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.20.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.100.0.1", Some("shared (CGNAT)")),
            ("0.0.0.0", Some("unspecified (this network)")),
            ("224.0.0.1", Some("multicast")),
            ("255.255.255.255", Some("reserved")),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:8.8.8.8", Some("IPv4-in-IPv6")),
            ("::127.0.0.1", Some("loopback")),
            ("64:ff9b::a00:1", Some("private")),
            ("2002:7f00:1::", Some("loopback")),
            ("2002:808:808::", Some("6to4")),
            ("fd00::1", Some("unique local (private)")),
            ("fe80::1", Some("link-local")),
            ("ff02::1", Some("multicast")),
            ("2001:db8::1", Some("documentation")),
            ("2001:0:1::1", Some("Teredo tunnel")),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn rules_apply_to_their_agents_and_sessions() {
        let p = policy(
            r#"
            [[allow]]
            host = "a.example.com"
            agents = ["did:ex:a"]
            [[allow]]
            host = "b.example.com"
            sessions = ["other"]
            "#,
        );
        let s1 = SessionId::new("s1").unwrap();
        let a = p.for_agent(&AgentId::new("did:ex:a").unwrap(), &s1);
        let b = p.for_agent(&AgentId::new("did:ex:b").unwrap(), &s1);
        assert!(a.check("GET", "https", "a.example.com").is_ok());
        assert!(b.check("GET", "https", "a.example.com").is_err());
        assert!(a.check("GET", "https", "b.example.com").is_err());
        let other = p.for_agent(
            &AgentId::new("did:ex:b").unwrap(),
            &SessionId::new("other").unwrap(),
        );
        assert!(other.check("GET", "https", "b.example.com").is_ok());
    }

    #[test]
    fn credentials_come_from_the_file_or_the_environment_and_never_print() {
        let a = access(
            r#"
            [[allow]]
            host = "api.example.com"
            credential = { header = "Authorization", value_env = "KEY" }
            "#,
        );
        let p = a.check("GET", "https", "api.example.com").unwrap();
        let c = p.credential.unwrap();
        assert_eq!(
            (c.header.as_str(), c.value.expose()),
            ("authorization", "s3cret")
        );
        assert!(!format!("{c:?} {a:?}").contains("s3cret"));
        let section: NetSection = toml::from_str(
            "[[allow]]\nhost = \"a.com\"\ncredential = { header = \"x\", value = \"s3cret\" }\n",
        )
        .unwrap();
        assert!(!format!("{section:?}").contains("s3cret"), "{section:?}");
    }

    #[test]
    fn bad_sections_are_refused_naming_the_field() {
        let err = |text: &str| {
            let section: NetSection = toml::from_str(text).expect("toml");
            NetPolicy::from_section(section, |_| None).expect_err(text)
        };
        for (text, field) in [
            ("[[allow]]\nhost = \"a b\"\n", "allow[0].host"),
            ("[[allow]]\nhost = \"*.com\"\n", "allow[0].host"),
            ("[[allow]]\nhost = \"::1\"\n", "allow[0].host"),
            ("[[allow]]\nhost = \"1.2.3\"\n", "allow[0].host"),
            ("[[allow]]\nhost = \"a.com\"\nport = 0\n", "allow[0].port"),
            (
                "[[allow]]\nhost = \"a.com\"\nschemes = [\"ftp\"]\n",
                "allow[0].schemes",
            ),
            (
                "[[allow]]\nhost = \"a.com\"\nmethods = [\"BREW\"]\n",
                "allow[0].methods",
            ),
            (
                "[[allow]]\nhost = \"a.com\"\nagents = [\"\"]\n",
                "allow[0].agents",
            ),
            (
                "[[allow]]\nhost = \"a.com\"\ncredential = { header = \"x\", value_env = \"NOPE\" }\n",
                "allow[0].credential.value_env",
            ),
            (
                "[[allow]]\nhost = \"a.com\"\ncredential = { header = \"host\", value = \"v\" }\n",
                "allow[0].credential.header",
            ),
            (
                "[[allow]]\nhost = \"a.com\"\ncredential = { header = \"x\", value = \"a\\r\\nb: c\" }\n",
                "allow[0].credential.value",
            ),
            (
                "[[allow]]\nhost = \"a.com\"\ncredential = { header = \"x\" }\n",
                "allow[0].credential.value",
            ),
            (
                "[[allow]]\nhost = \"a.com\"\ncredential = { header = \"x\", value = \"caf\u{e9}\" }\n",
                "allow[0].credential.value",
            ),
            ("max_request_bytes = 0\n", "max_request_bytes"),
            ("max_response_bytes = 100000000000\n", "max_response_bytes"),
            ("timeout_ms = 0\n", "timeout_ms"),
            ("connect_timeout_ms = 99999999\n", "connect_timeout_ms"),
        ] {
            assert_eq!(err(text).field, field, "{text}");
        }
        assert!(
            toml::from_str::<NetSection>("[[allow]]\nhost = \"a.com\"\nport_range = 1\n").is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn an_ipv4_address_is_classed_the_same_inside_ipv6(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            match v4_class(v4) {
                Some(c) => proptest::prop_assert_eq!(address_class(mapped), Some(c)),
                None => proptest::prop_assert_eq!(address_class(mapped), Some("IPv4-in-IPv6")),
            }
            // Whatever the form, a host that is not global is never `None`.
            if v4_class(v4).is_some() {
                let [a, b, c, d] = v4.octets();
                let six_to_four = Ipv6Addr::new(0x2002, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]), 0, 0, 0, 0, 1);
                proptest::prop_assert!(address_class(IpAddr::V6(six_to_four)).is_some());
            }
        }

        #[test]
        fn check_never_panics_and_never_allows_an_unlisted_host(authority in "\\PC{0,40}") {
            let a = access("[[allow]]\nhost = \"ok.example.com\"\n");
            if let Ok(p) = a.check("GET", "https", &authority) {
                proptest::prop_assert_eq!(p.host, Host::Name("ok.example.com".into()));
            }
        }
    }
}
