//! `ahv session …` and `ahv liability …`: drive a running `ahv serve` from a
//! shell. Each command is one HTTP request; the answer is printed as JSON
//! (`session create` prints only the new session's id, for `S=$(…)`). A
//! refusal prints the server's problem detail and exits with `api-refused`
//! (or `denied` when the ledger refused a join).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::exit::Exit;
use crate::out::{Failure, errln, outln};

/// Where the server is and who we are.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "AHV_SERVER", default_value = "http://127.0.0.1:7878")]
    server: String,
    /// A file holding the bearer token (`ahv serve` writes
    /// `<state dir>/serve.token` when it makes its own). The token can also
    /// come from the AHV_TOKEN environment variable.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For an https server: trust the CA certificate(s) in this PEM file
    /// instead of the usual roots (a self-signed server's own certificate,
    /// say), like curl's `--cacert`.
    #[arg(long, env = "AHV_CACERT", value_name = "PEM")]
    cacert: Option<PathBuf>,
}

impl ServerArgs {
    fn token(&self, command: &str) -> Result<String, Failure> {
        if let Some(p) = &self.token_file {
            let t = std::fs::read_to_string(p).map_err(|e| {
                Failure::usage(command, format!("--token-file {}: {e}", p.display()))
            })?;
            return Ok(t.trim().to_string());
        }
        std::env::var("AHV_TOKEN").map_err(|_| {
            Failure::usage(command, "no token: pass --token-file FILE or set AHV_TOKEN")
        })
    }
}

/// Every certificate in the PEM file `--cacert` names.
fn ca_certs(
    command: &str,
    path: &std::path::Path,
) -> Result<Vec<ureq::tls::Certificate<'static>>, Failure> {
    let bad =
        |what: String| Failure::usage(command, format!("--cacert {}: {what}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        // A key in the same file is skipped.
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| bad(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it (expected \"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    Ok(certs)
}

/// One HTTP exchange with the server.
struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    fn new(args: &ServerArgs) -> Result<Client, Failure> {
        Client::for_command(args, "session")
    }

    /// A client for `ahv COMMAND …` (named in usage errors).
    fn for_command(args: &ServerArgs, command: &str) -> Result<Client, Failure> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &args.cacert {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&ca_certs(
                command, path,
            )?));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .max_idle_connections(0)
            .tls_config(tls.build())
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            base: args.server.trim_end_matches('/').to_string(),
            token: args.token(command)?,
        })
    }

    /// Sends `method path` with an optional JSON or byte body; returns the
    /// JSON answer, or the failure the server's problem detail describes.
    fn call(&self, method: &str, path: &str, body: Body) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let unreachable = |e: ureq::Error| {
            Failure::Setup(anyhow::anyhow!(
                "{method} {url}: {e} (is `ahv serve` running there?)"
            ))
        };
        let res = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, Body::None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            (_, Body::Json(v)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(&v),
            (_, Body::Bytes(b, ct)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .content_type(ct)
                .send(&b[..]),
        }
        .map_err(unreachable)?;
        let status = res.status().as_u16();
        let text = res
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        if status == 204 || text.is_empty() {
            return Ok(Value::Null);
        }
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {url}: the answer is not JSON: {text:.200}"))?;
        if status >= 400 {
            let detail = v["detail"].as_str().unwrap_or(&text).to_string();
            let kind = v["type"].as_str().unwrap_or("");
            if kind.ends_with(":admission-denied") {
                return Err(Failure::Denied(detail));
            }
            return Err(Failure::Api(format!("{status}: {detail}")));
        }
        Ok(v)
    }
}

enum Body {
    None,
    Json(Value),
    Bytes(Vec<u8>, &'static str),
}

fn print(v: &Value) -> Result<Exit, Failure> {
    let text = serde_json::to_string_pretty(v).context("printing the answer")?;
    outln!("{text}")?;
    Ok(Exit::Ok)
}

/// Percent-encodes a path segment or query value (ids are plain, but a
/// path or key may not be).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum SessionCmd {
    /// Create a session; prints its id.
    #[command(after_help = crate::exit::help())]
    Create {
        /// Most participants at once (1..=1000).
        #[arg(long)]
        max_participants: Option<u32>,
        /// Longest the session may live, in seconds.
        #[arg(long)]
        max_duration_s: Option<u64>,
        /// Least effective score admitted above ring 3.
        #[arg(long)]
        min_eff_score: Option<f64>,
        /// strong or eventual.
        #[arg(long)]
        consistency: Option<String>,
        /// read-committed, snapshot or serializable.
        #[arg(long)]
        isolation: Option<String>,
        /// Do not audit the session's governed actions.
        #[arg(long)]
        no_audit: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List sessions.
    #[command(after_help = crate::exit::help())]
    Ls {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a session and its participants.
    #[command(after_help = crate::exit::help())]
    Show {
        /// The session.
        session: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Join an agent: with a component file (uploaded first) or the id of an
    /// uploaded component, and its trust score σ.
    #[command(after_help = crate::exit::help())]
    Join {
        /// The session.
        session: String,
        /// The agent's id.
        agent: String,
        /// Its trust score σ in [0, 1].
        #[arg(long)]
        sigma: f64,
        /// The agent's component (.wasm), uploaded and admitted first.
        #[arg(long, conflicts_with = "component_id")]
        component: Option<PathBuf>,
        /// The id of a component already uploaded.
        #[arg(long)]
        component_id: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Activate a session.
    #[command(after_help = crate::exit::help())]
    Activate {
        /// The session.
        session: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run an agent's `run` with an input; prints its answer and logs.
    #[command(after_help = crate::exit::help())]
    Run {
        /// The session.
        session: String,
        /// The agent.
        agent: String,
        /// The input string.
        #[arg(long, default_value = "")]
        input: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// An agent leaves the session.
    #[command(after_help = crate::exit::help())]
    Leave {
        /// The session.
        session: String,
        /// The agent.
        agent: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Kill an agent (admin): its code stops, its saga steps are handed off
    /// or compensated.
    #[command(after_help = crate::exit::help())]
    Kill {
        /// The session.
        session: String,
        /// The agent.
        agent: String,
        /// Why.
        #[arg(long, default_value = "manual")]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Terminate a session; prints the commitment sealing its audit log.
    #[command(after_help = crate::exit::help())]
    Terminate {
        /// The session.
        session: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List a directory of the session's shared files, or print a file.
    #[command(after_help = crate::exit::help())]
    Files {
        /// The session.
        session: String,
        /// A directory (default: the top, where `shared` is) or, with
        /// --read, a file.
        #[arg(default_value = "")]
        path: String,
        /// Print the file's bytes instead of listing a directory.
        #[arg(long)]
        read: bool,
        /// Whose private area a path outside `shared/` is in.
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(crate) fn session(cmd: SessionCmd) -> Result<Exit, Failure> {
    match cmd {
        SessionCmd::Create {
            max_participants,
            max_duration_s,
            min_eff_score,
            consistency,
            isolation,
            no_audit,
            server,
        } => {
            let mut body = json!({});
            if let Some(v) = max_participants {
                body["max_participants"] = json!(v);
            }
            if let Some(v) = max_duration_s {
                body["max_duration_s"] = json!(v);
            }
            if let Some(v) = min_eff_score {
                body["min_eff_score"] = json!(v);
            }
            if let Some(v) = consistency {
                body["consistency"] = json!(v);
            }
            if let Some(v) = isolation {
                body["isolation"] = json!(v);
            }
            if no_audit {
                body["audit"] = json!(false);
            }
            let v = Client::new(&server)?.call("POST", "/v1/sessions", Body::Json(body))?;
            outln!("{}", v["id"].as_str().unwrap_or_default())?;
            Ok(Exit::Ok)
        }
        SessionCmd::Ls { server } => {
            print(&Client::new(&server)?.call("GET", "/v1/sessions", Body::None)?)
        }
        SessionCmd::Show { session, server } => print(&Client::new(&server)?.call(
            "GET",
            &format!("/v1/sessions/{}", enc(&session)),
            Body::None,
        )?),
        SessionCmd::Join {
            session,
            agent,
            sigma,
            component,
            component_id,
            server,
        } => {
            let c = Client::new(&server)?;
            let component = match (component, component_id) {
                (Some(path), _) => {
                    let bytes = crate::read_component(&path)?;
                    let v = c.call(
                        "POST",
                        "/v1/components",
                        Body::Bytes(bytes, "application/wasm"),
                    )?;
                    Some(v["id"].as_str().unwrap_or_default().to_string())
                }
                (None, id) => id,
            };
            let mut body = json!({ "agent": agent, "sigma": sigma });
            if let Some(id) = component {
                body["component"] = json!(id);
            }
            print(&c.call(
                "POST",
                &format!("/v1/sessions/{}/agents", enc(&session)),
                Body::Json(body),
            )?)
        }
        SessionCmd::Activate { session, server } => print(&Client::new(&server)?.call(
            "POST",
            &format!("/v1/sessions/{}/activate", enc(&session)),
            Body::None,
        )?),
        SessionCmd::Run {
            session,
            agent,
            input,
            server,
        } => {
            let v = Client::new(&server)?.call(
                "POST",
                &format!("/v1/sessions/{}/agents/{}/run", enc(&session), enc(&agent)),
                Body::Json(json!({ "input": input })),
            )?;
            print(&v)?;
            Ok(if v["ok"].as_bool() == Some(true) {
                Exit::Ok
            } else {
                Exit::Failed
            })
        }
        SessionCmd::Leave {
            session,
            agent,
            server,
        } => {
            Client::new(&server)?.call(
                "DELETE",
                &format!("/v1/sessions/{}/agents/{}", enc(&session), enc(&agent)),
                Body::None,
            )?;
            errln!("{agent} left {session}");
            Ok(Exit::Ok)
        }
        SessionCmd::Kill {
            session,
            agent,
            reason,
            server,
        } => print(&Client::new(&server)?.call(
            "POST",
            &format!("/v1/sessions/{}/agents/{}/kill", enc(&session), enc(&agent)),
            Body::Json(json!({ "reason": reason })),
        )?),
        SessionCmd::Terminate { session, server } => print(&Client::new(&server)?.call(
            "POST",
            &format!("/v1/sessions/{}/terminate", enc(&session)),
            Body::None,
        )?),
        SessionCmd::Files {
            session,
            path,
            read,
            agent,
            server,
        } => {
            let c = Client::new(&server)?;
            let whose = agent
                .map(|a| format!("&agent={}", enc(&a)))
                .unwrap_or_default();
            if read {
                let url = format!(
                    "{}/v1/sessions/{}/file?path={}{whose}",
                    c.base,
                    enc(&session),
                    enc(&path)
                );
                let res = c
                    .agent
                    .get(&url)
                    .header("Authorization", &format!("Bearer {}", c.token))
                    .call()
                    .map_err(|e| Failure::Setup(anyhow::anyhow!("GET {url}: {e}")))?;
                let status = res.status().as_u16();
                let bytes = res
                    .into_body()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_vec()
                    .with_context(|| format!("reading {url}"))?;
                if status >= 400 {
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    return Err(Failure::Api(format!(
                        "{status}: {}",
                        v["detail"]
                            .as_str()
                            .unwrap_or("the server refused the read")
                    )));
                }
                crate::out::write_out_bytes(&bytes)?;
                Ok(Exit::Ok)
            } else {
                print(&c.call(
                    "GET",
                    &format!(
                        "/v1/sessions/{}/files?dir={}{whose}",
                        enc(&session),
                        enc(&path)
                    ),
                    Body::None,
                )?)
            }
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum LiabilityCmd {
    /// VOUCHER vouches for VOUCHEE: bonds part of its σ; the vouchee's ring
    /// may rise on its next host call.
    #[command(after_help = crate::exit::help())]
    Vouch {
        /// The session.
        session: String,
        /// The agent that vouches (σ ≥ 0.50).
        voucher: String,
        /// The agent vouched for.
        vouchee: String,
        /// The share of the voucher's σ to bond, in (0, 1] (default 0.20).
        #[arg(long)]
        pct: Option<f64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the session's active vouches.
    #[command(after_help = crate::exit::help())]
    Vouches {
        /// The session.
        session: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Release a vouch by its id: the bond is returned, the vouchee's σ_eff falls.
    #[command(after_help = crate::exit::help())]
    Release {
        /// The session.
        session: String,
        /// The vouch's id (as `vouch` or `vouches` print it).
        vouch: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Slash an agent (admin): σ → 0, its vouchers forfeit ω of theirs.
    #[command(after_help = crate::exit::help())]
    Slash {
        /// The session.
        session: String,
        /// The agent.
        agent: String,
        /// The severity recorded in the ledger, in [0, 1].
        #[arg(long)]
        severity: f64,
        /// Why.
        #[arg(long)]
        reason: String,
        /// ω (default the policy's, 0.5).
        #[arg(long)]
        omega: Option<f64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Quarantine an agent (admin): only `context` and `log` calls pass.
    #[command(after_help = crate::exit::help())]
    Quarantine {
        /// The session.
        session: String,
        /// The agent.
        agent: String,
        /// behavioral_drift, liability_violation, ring_breach,
        /// rate_limit_exceeded, manual or cascade_slash.
        #[arg(long, default_value = "manual")]
        reason: String,
        /// Free text recorded with it.
        #[arg(long, default_value = "")]
        detail: String,
        /// How long, in seconds (default 300).
        #[arg(long)]
        duration_s: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// End an agent's quarantine (admin).
    #[command(after_help = crate::exit::help())]
    ReleaseQuarantine {
        /// The session.
        session: String,
        /// The agent.
        agent: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Split the blame for a failed or escalated saga among its agents.
    #[command(after_help = crate::exit::help())]
    Blame {
        /// The saga's id.
        saga: String,
        /// Use the reference's 0.5/0.3/0.2 heuristic instead of Shapley values.
        #[arg(long)]
        heuristic: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// An agent's ledger as the server sees it: risk, admission, entries.
    #[command(after_help = crate::exit::help())]
    Ledger {
        /// The agent.
        agent: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(crate) fn liability(cmd: LiabilityCmd) -> Result<Exit, Failure> {
    let (server, method, path, body) = match cmd {
        LiabilityCmd::Vouch {
            session,
            voucher,
            vouchee,
            pct,
            server,
        } => {
            let mut b = json!({ "voucher": voucher, "vouchee": vouchee });
            if let Some(p) = pct {
                b["pct"] = json!(p);
            }
            (
                server,
                "POST",
                format!("/v1/sessions/{}/vouches", enc(&session)),
                Body::Json(b),
            )
        }
        LiabilityCmd::Vouches { session, server } => (
            server,
            "GET",
            format!("/v1/sessions/{}/vouches", enc(&session)),
            Body::None,
        ),
        LiabilityCmd::Release {
            session,
            vouch,
            server,
        } => (
            server,
            "DELETE",
            format!("/v1/sessions/{}/vouches/{vouch}", enc(&session)),
            Body::None,
        ),
        LiabilityCmd::Slash {
            session,
            agent,
            severity,
            reason,
            omega,
            server,
        } => {
            let mut b = json!({ "severity": severity, "reason": reason });
            if let Some(o) = omega {
                b["omega"] = json!(o);
            }
            (
                server,
                "POST",
                format!(
                    "/v1/sessions/{}/agents/{}/slash",
                    enc(&session),
                    enc(&agent)
                ),
                Body::Json(b),
            )
        }
        LiabilityCmd::Quarantine {
            session,
            agent,
            reason,
            detail,
            duration_s,
            server,
        } => {
            let mut b = json!({ "reason": reason, "detail": detail });
            if let Some(d) = duration_s {
                b["duration_s"] = json!(d);
            }
            (
                server,
                "POST",
                format!(
                    "/v1/sessions/{}/agents/{}/quarantine",
                    enc(&session),
                    enc(&agent)
                ),
                Body::Json(b),
            )
        }
        LiabilityCmd::ReleaseQuarantine {
            session,
            agent,
            server,
        } => (
            server,
            "DELETE",
            format!(
                "/v1/sessions/{}/agents/{}/quarantine",
                enc(&session),
                enc(&agent)
            ),
            Body::None,
        ),
        LiabilityCmd::Blame {
            saga,
            heuristic,
            server,
        } => (
            server,
            "GET",
            format!("/v1/sagas/{}/attribution?heuristic={heuristic}", enc(&saga)),
            Body::None,
        ),
        LiabilityCmd::Ledger { agent, server } => (
            server,
            "GET",
            format!("/v1/ledger/{}", enc(&agent)),
            Body::None,
        ),
    };
    print(&Client::for_command(&server, "liability")?.call(method, &path, body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(enc("did:ex:a"), "did%3Aex%3Aa");
        assert_eq!(enc("shared/a b"), "shared%2Fa%20b");
        assert_eq!(enc("s1-00ff"), "s1-00ff");
    }
}
