//! The HTTP API (`ahv_api`, served by `ahv serve`) over real TCP on
//! 127.0.0.1, with real agents: authentication and roles, the session
//! lifecycle, liability through the gate, and hostile requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahv_api::auth::{Caller, Role, Tokens};
use ahv_api::{Api, ApiLimits};
use ahv_hypervisor::Hypervisor;
use serde_json::{Value, json};

const ADMIN: &str = "tok-admin";
const OP1: &str = "tok-op1";
const OP2: &str = "tok-op2";
const AUDITOR: &str = "tok-aud";

/// Longest any one request may take (a join compiles a component on a cold cache).
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// A server on an ephemeral port, stopped when dropped.
struct Server {
    base: String,
    http: ureq::Agent,
    /// The served OpenAPI document: every answer is checked against it.
    doc: Value,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _state: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(10));
        }
    }
}

fn tokens() -> Tokens {
    let c = |name: &str, role| Caller {
        name: name.into(),
        role,
        sessions: Vec::new(),
        agents: if role == Role::Operator {
            vec!["did:ex:*".into()]
        } else {
            Vec::new()
        },
    };
    Tokens::none()
        .with(ADMIN, c("root-ops", Role::Admin))
        .with(OP1, c("op1", Role::Operator))
        .with(OP2, c("op2", Role::Operator))
        .with(AUDITOR, c("aud", Role::Auditor))
}

fn server_with(limits: ApiLimits) -> Server {
    server_of(limits, |b| b)
}

/// A server whose hypervisor `configure` sets further.
fn server_of(
    limits: ApiLimits,
    configure: impl FnOnce(ahv_hypervisor::HypervisorBuilder) -> ahv_hypervisor::HypervisorBuilder,
) -> Server {
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let builder = Hypervisor::builder()
        .state_dir(state.path())
        .cache_dir(crate::cache_dir())
        .database("memory");
    let hv = Arc::new(configure(builder).build().unwrap());
    let api = Api::new(hv, tokens(), limits);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        axum::serve(listener, api.router())
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let http = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_LIMIT))
            // A fresh connection per request: the server closes a
            // connection whose request body it did not read (a refused
            // upload, say), and a pooled one may be reused just before.
            .max_idle_connections(0)
            .build(),
    );
    let base = format!("http://{addr}");
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    Server {
        base,
        http,
        doc,
        rt: Some(rt),
        stop: Some(tx),
        _state: state,
    }
}

fn server() -> Server {
    server_with(ApiLimits {
        requests_per_second: 10_000.0,
        burst: 10_000.0,
        ..ApiLimits::default()
    })
}

/// One answer: status, content type, JSON body (Null when empty or not JSON).
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
    text: String,
}

impl Answer {
    /// Asserts a problem+json answer with `status` whose detail contains `needle`.
    fn problem(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{self:#?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:#?}");
        assert_eq!(self.body["status"], status, "{self:#?}");
        let detail = self.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(needle),
            "detail {detail:?} lacks {needle:?}"
        );
    }

    fn ok(&self) -> &Value {
        assert!((200..300).contains(&self.status), "{self:#?}");
        &self.body
    }

    /// The `id` of a successful answer (an uploaded component, a new session).
    fn id(&self) -> String {
        self.ok()["id"].as_str().unwrap().to_string()
    }
}

impl Server {
    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        ct: &str,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let res = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.http.get(&url)
                } else {
                    self.http.delete(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = self.http.post(&url);
                if !ct.is_empty() {
                    r = r.content_type(ct);
                }
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(b) => r.send(&b[..]),
                    None => r.send_empty(),
                }
            }
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = res.status().as_u16();
        let header = |n: &str| {
            res.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        let text = res
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        let a = Answer {
            status,
            content_type,
            retry_after,
            body,
            text,
        };
        self.conforms(method, path, &a);
        a
    }

    /// Fails unless the answer is one the OpenAPI document promises for
    /// this operation: a documented status, a documented content type, and
    /// a JSON body valid against the documented schema.
    fn conforms(&self, method: &str, path: &str, a: &Answer) {
        let path = path.split('?').next().unwrap();
        if ["/openapi.json", "/", "/dashboard.js", "/dashboard.css"].contains(&path) {
            return;
        }
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object().unwrap();
        let Some((template, item)) = paths.iter().find(|(t, item)| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segments.len()
                && ts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with('{') || t == s)
                && item.get(method.to_lowercase()).is_some()
        }) else {
            // An undocumented route must not be served.
            assert!(
                a.status == 404 || a.status == 405,
                "{method} {path} is not in the OpenAPI document but answered {a:#?}"
            );
            return;
        };
        let op = &item[method.to_lowercase()];
        let status = a.status.to_string();
        let Some(response) = op["responses"].get(&status) else {
            panic!("{method} {template}: status {status} is not documented: {a:#?}");
        };
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(
                a.text.is_empty(),
                "{method} {template} {status}: a body where none is documented: {a:#?}"
            );
            return;
        };
        let ct = a.content_type.split(';').next().unwrap().trim();
        let Some(media) = content.get(ct) else {
            panic!(
                "{method} {template} {status}: content type {ct:?} is not documented (only {:?})",
                content.keys().collect::<Vec<_>>()
            );
        };
        if !ct.ends_with("json") {
            return;
        }
        let mut schema = media["schema"].clone();
        schema["components"] = self.doc["components"].clone();
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: bad schema: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&a.body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: the answer does not match the document: {errors:?}\n{a:#?}"
        );
    }

    fn get(&self, path: &str, token: &str) -> Answer {
        self.send("GET", path, Some(token), None, "")
    }

    fn delete(&self, path: &str, token: &str) -> Answer {
        self.send("DELETE", path, Some(token), None, "")
    }

    fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(
            "POST",
            path,
            Some(token),
            Some(serde_json::to_vec(&body).unwrap()),
            "application/json",
        )
    }

    fn upload(&self, token: &str, wasm: &[u8]) -> Answer {
        self.send(
            "POST",
            "/v1/components",
            Some(token),
            Some(wasm.to_vec()),
            "application/wasm",
        )
    }

    /// A new active session created by `creator`'s caller, with each
    /// `(agent, component id, σ, token of who joins it)` joined.
    fn live_session(&self, creator: &str, joins: &[(&str, &str, f64, &str)]) -> String {
        let id = self.post("/v1/sessions", creator, json!({})).id();
        for &(agent, component, sigma, token) in joins {
            self.post(
                &format!("/v1/sessions/{id}/agents"),
                token,
                json!({"agent": agent, "sigma": sigma, "component": component}),
            )
            .ok();
        }
        self.post(&format!("/v1/sessions/{id}/activate"), creator, json!(null))
            .ok();
        id
    }

    /// A new active session created by `token`'s caller, with `did:ex:writer`
    /// (note-taker, σ 0.8) joined.
    fn writer_session(&self, token: &str) -> String {
        let c = self.upload(token, ahv_agents::NOTE_TAKER);
        let component = c.ok()["id"].as_str().unwrap().to_string();
        let s = self.post("/v1/sessions", token, json!({}));
        let id = s.ok()["id"].as_str().unwrap().to_string();
        let j = self.post(
            &format!("/v1/sessions/{id}/agents"),
            token,
            json!({"agent": "did:ex:writer", "sigma": 0.8, "component": component}),
        );
        assert_eq!(j.ok()["ring"], 2);
        self.post(&format!("/v1/sessions/{id}/activate"), token, json!(null))
            .ok();
        id
    }
}

#[test]
fn health_needs_no_token_and_everything_else_does() {
    let s = server();
    let h = s.send("GET", "/v1/health", None, None, "");
    assert_eq!(h.ok()["status"], "ok");
    assert_eq!(h.body["ledger"], "memory");
    s.send("GET", "/v1/sessions", None, None, "")
        .problem(401, "Authorization: Bearer");
    s.get("/v1/sessions", "tok-admi").problem(401, "not known");
    let basic = s
        .http
        .get(format!("{}/v1/sessions", s.base))
        .header("Authorization", "Basic dG9rLWFkbWluOg==")
        .call()
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);
    // The scheme's case does not matter (RFC 9110).
    let lower = s
        .http
        .get(format!("{}/v1/sessions", s.base))
        .header("Authorization", format!("bearer {AUDITOR}"))
        .call()
        .unwrap();
    assert_eq!(lower.status().as_u16(), 200);
    // A token is never echoed back.
    let wrong = s.get("/v1/events", "ahv_secret_guess");
    assert!(!wrong.text.contains("ahv_secret_guess"), "{wrong:#?}");
}

#[test]
fn a_shared_session_runs_end_to_end_and_the_audit_log_names_the_caller() {
    let s = server();
    let id = s.writer_session(OP1);
    let run = s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/run"),
        OP1,
        json!({"input": "ship it"}),
    );
    assert_eq!(run.ok()["ok"], true, "{run:#?}");
    assert_eq!(run.body["output"], "1 note(s) in notes/today.md");
    // Its private file, read-only, as the host.
    let names = s.get(
        &format!("/v1/sessions/{id}/files?agent=did:ex:writer"),
        AUDITOR,
    );
    assert!(
        names.ok().as_array().unwrap().contains(&json!("notes")),
        "{names:#?}"
    );
    let file = s.get(
        &format!("/v1/sessions/{id}/file?path=notes/today.md&agent=did:ex:writer"),
        AUDITOR,
    );
    assert_eq!(file.status, 200);
    assert!(file.text.contains("- ship it"), "{}", file.text);
    // Who asked is an event, and that event an audit delta.
    let ev = s.get(
        &format!("/v1/events?session={id}&kind=operator.request"),
        AUDITOR,
    );
    let requests = ev.ok().as_array().unwrap().clone();
    let run_req = requests
        .iter()
        .find(|e| {
            e["fields"]["operation"]
                .as_str()
                .unwrap()
                .contains("/run agent=did:ex:writer")
        })
        .unwrap_or_else(|| panic!("no run request in {requests:#?}"));
    assert_eq!(run_req["fields"]["caller"], "op1");
    assert_eq!(run_req["fields"]["role"], "operator");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let captured = s.get(
            &format!("/v1/events?session={id}&kind=audit.delta_captured"),
            AUDITOR,
        );
        if captured
            .ok()
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["parent"] == run_req["id"])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator.request event was not captured in the audit log within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = s.post(&format!("/v1/sessions/{id}/terminate"), OP1, json!(null));
    assert!(
        t.ok()["commitment"]["tree_size"].as_u64().unwrap() > 5,
        "{t:#?}"
    );
    let archived = s.get(&format!("/v1/sessions/{id}"), AUDITOR);
    assert_eq!(archived.ok()["state"], "archived");
    s.get(&format!("/v1/sessions/{id}/files"), AUDITOR)
        .problem(409, "archived");
}

#[test]
fn roles_decide_who_may_do_what() {
    let s = server();
    let id = s.writer_session(OP1);
    // Auditors read, never change.
    assert_eq!(s.get(&format!("/v1/sessions/{id}"), AUDITOR).status, 200);
    s.post("/v1/sessions", AUDITOR, json!({}))
        .problem(403, "auditor");
    s.upload(AUDITOR, ahv_agents::HELLO).problem(403, "auditor");
    // Another operator may not touch op1's session.
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/run"),
        OP2,
        json!({"input": "x"}),
    )
    .problem(403, "did not create session");
    s.post(&format!("/v1/sessions/{id}/terminate"), OP2, json!(null))
        .problem(403, "op2");
    // Kills, slashes, quarantines and root joins need admin, even in one's own session.
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/kill"),
        OP1,
        json!({"reason": "manual"}),
    )
    .problem(403, "admin");
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/slash"),
        OP1,
        json!({"severity": 0.5, "reason": "r"}),
    )
    .problem(403, "admin");
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/quarantine"),
        OP1,
        json!({}),
    )
    .problem(403, "admin");
    s.post(
        &format!("/v1/sessions/{id}/agents"),
        OP1,
        json!({"agent": "did:ex:r", "sigma": 0.9, "root": true}),
    )
    .problem(403, "admin");
    // The refused requests changed nothing: the writer is still there.
    let p = s.get(&format!("/v1/sessions/{id}/agents"), AUDITOR);
    assert_eq!(p.ok().as_array().unwrap().len(), 1);
    // A reason goes into events and the audit log: at most 1 KiB.
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/kill"),
        ADMIN,
        json!({"reason": "x".repeat(1025)}),
    )
    .problem(400, "at most 1024");
    // An admin may do all of it.
    let k = s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/kill"),
        ADMIN,
        json!({"reason": "manual"}),
    );
    assert_eq!(k.ok()["terminated"], json!(["did:ex:writer"]));
}

#[test]
fn a_join_that_finds_the_instance_pool_full_is_503_with_retry_after_and_can_retry() {
    let s = server_of(
        ApiLimits {
            requests_per_second: 10_000.0,
            burst: 10_000.0,
            ..ApiLimits::default()
        },
        |b| b.max_instances(1),
    );
    let c = s.upload(ADMIN, ahv_agents::PINGER);
    let component = c.ok()["id"].as_str().unwrap().to_string();
    let id = s.post("/v1/sessions", ADMIN, json!({})).id();
    let join = |agent: &str| {
        s.post(
            &format!("/v1/sessions/{id}/agents"),
            ADMIN,
            json!({"agent": agent, "sigma": 0.8, "component": component}),
        )
    };
    join("did:ex:first").ok();
    let full = join("did:ex:second");
    full.problem(503, "did:ex:second");
    assert_eq!(
        full.body["type"], "urn:ahv:problem:at-capacity",
        "{full:#?}"
    );
    assert_eq!(full.retry_after.as_deref(), Some("1"), "{full:#?}");
    let m = s.get("/metrics", AUDITOR);
    assert!(
        m.text.lines().any(|l| l == "ahv_at_capacity_total 1"),
        "counted once, and not as a trap:\n{}",
        m.text
    );
    assert!(
        m.text
            .lines()
            .any(|l| l == "ahv_traps_total{kind=\"host-error\"} 0"),
        "{}",
        m.text
    );
    // Not a participant, and nothing held against it: once the first
    // instance ends, the same join succeeds.
    let left = s.delete(&format!("/v1/sessions/{id}/agents/did:ex:first"), ADMIN);
    assert_eq!(left.status, 204, "{left:#?}");
    join("did:ex:second").ok();
}

#[test]
fn a_kill_stops_an_agent_blocked_in_the_host_mid_call() {
    let s = server();
    let c = s.upload(ADMIN, ahv_agents::SLEEPER);
    let component = c.ok()["id"].as_str().unwrap().to_string();
    let id = s.post("/v1/sessions", ADMIN, json!({})).ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.post(
        &format!("/v1/sessions/{id}/agents"),
        ADMIN,
        json!({"agent": "did:ex:spin", "sigma": 0.8, "component": component}),
    )
    .ok();
    s.post(&format!("/v1/sessions/{id}/activate"), ADMIN, json!(null))
        .ok();
    std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            s.post(
                &format!("/v1/sessions/{id}/agents/did:ex:spin/run"),
                ADMIN,
                json!({"input": "3600000"}),
            )
        });
        // The sleeper waits in the host for an hour; its ring's deadline
        // is 30 s, so a kill that did not end the call would show as a
        // 30 s call or a deadline trap.
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let k = s.post(
            &format!("/v1/sessions/{id}/agents/did:ex:spin/kill"),
            ADMIN,
            json!({"reason": "manual"}),
        );
        assert_eq!(k.ok()["terminated"], json!(["did:ex:spin"]));
        let run = running.join().unwrap();
        run.problem(422, "killed");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sleeping call outlived its kill by {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn liability_changes_take_effect_through_the_gate() {
    let s = server();
    let id = s.writer_session(ADMIN);
    let sid = &id;
    s.post(
        &format!("/v1/sessions/{sid}/agents"),
        ADMIN,
        json!({"agent": "did:ex:boss", "sigma": 0.9}),
    )
    .ok();
    s.post(
        &format!("/v1/sessions/{sid}/agents"),
        ADMIN,
        json!({"agent": "did:ex:low", "sigma": 0.4}),
    )
    .ok();
    // A vouch lifts the vouchee from ring 3 to ring 2.
    let v = s.post(
        &format!("/v1/sessions/{sid}/vouches"),
        ADMIN,
        json!({"voucher": "did:ex:boss", "vouchee": "did:ex:low", "pct": 0.5}),
    );
    assert_eq!(v.ok()["ring"], 2, "{v:#?}");
    let list = s.get(&format!("/v1/sessions/{sid}/vouches"), AUDITOR);
    assert_eq!(list.ok().as_array().unwrap().len(), 1);
    // Self-vouching is a rule violation, reported as a conflict naming the agent.
    s.post(
        &format!("/v1/sessions/{sid}/vouches"),
        ADMIN,
        json!({"voucher": "did:ex:boss", "vouchee": "did:ex:boss"}),
    )
    .problem(409, "did:ex:boss");
    // A release drops it again.
    let vid = v.body["id"].as_u64().unwrap();
    s.delete(&format!("/v1/sessions/{sid}/vouches/{vid}"), ADMIN)
        .ok();
    let low = s.get(&format!("/v1/sessions/{sid}/agents"), AUDITOR);
    let ring_of = |a: &Answer, agent: &str| {
        a.body
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["agent"] == agent)
            .unwrap()["ring"]
            .clone()
    };
    assert_eq!(ring_of(&low, "did:ex:low"), 3);
    // A quarantine refuses the writer's next file read; a release lets it through.
    let q = s.post(
        &format!("/v1/sessions/{sid}/agents/did:ex:writer/quarantine"),
        ADMIN,
        json!({"reason": "manual", "duration_s": 60}),
    );
    assert_eq!(q.ok()["reason"], "manual");
    let run = s.post(
        &format!("/v1/sessions/{sid}/agents/did:ex:writer/run"),
        ADMIN,
        json!({"input": "x"}),
    );
    assert_eq!(run.ok()["ok"], false);
    assert!(
        run.body["output"].as_str().unwrap().contains("quarantined"),
        "{run:#?}"
    );
    let r = s.delete(
        &format!("/v1/sessions/{sid}/agents/did:ex:writer/quarantine"),
        ADMIN,
    );
    assert_eq!(r.ok()["released"], true);
    let run = s.post(
        &format!("/v1/sessions/{sid}/agents/did:ex:writer/run"),
        ADMIN,
        json!({"input": "y"}),
    );
    assert_eq!(run.ok()["ok"], true, "{run:#?}");
    // A slash demotes at once and lands in the ledger.
    let sl = s.post(
        &format!("/v1/sessions/{sid}/agents/did:ex:writer/slash"),
        ADMIN,
        json!({"severity": 1.0, "reason": "bad notes"}),
    );
    assert_eq!(sl.ok()["changes"][0]["after"], 0.0);
    let after = s.get(&format!("/v1/sessions/{sid}/agents"), AUDITOR);
    assert_eq!(ring_of(&after, "did:ex:writer"), 3);
    let ledger = s.get("/v1/ledger/did:ex:writer", AUDITOR);
    let entries = ledger.ok()["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["kind"] == "slash"), "{ledger:#?}");
    assert!(ledger.body["risk"].as_f64().unwrap() > 0.0);
}

#[test]
fn hostile_requests_get_problems_not_crashes() {
    let s = server_with(ApiLimits {
        max_json_bytes: 64 << 10,
        requests_per_second: 10_000.0,
        burst: 10_000.0,
        ..ApiLimits::default()
    });
    let id = s.writer_session(ADMIN);
    // Paths that try to leave the session's files.
    for p in [
        "../../etc/passwd",
        "/etc/passwd",
        "shared/../../x",
        "a\u{0}b",
    ] {
        let a = s.get(
            &format!("/v1/sessions/{id}/file?path={}", urlencode(p)),
            ADMIN,
        );
        assert_eq!(a.content_type, "application/problem+json", "{p:?}: {a:#?}");
        assert!(a.status == 400 || a.status == 404, "{p:?}: {a:#?}");
        assert!(!a.text.contains("root:"), "{p:?} leaked a host file");
    }
    // Bad ids.
    s.get(
        &format!("/v1/sessions/{id}/file?path=x&agent=..%2Fx"),
        ADMIN,
    )
    .problem(400, "agent id");
    s.get("/v1/sessions/no%20such", ADMIN)
        .problem(400, "session id");
    s.get("/v1/sessions/s999-00", ADMIN).problem(404, "s999-00");
    // Bodies: unknown fields, wrong types, not JSON, too large.
    s.post(
        "/v1/sessions",
        ADMIN,
        json!({"max_participants": 5, "unbounded": true}),
    )
    .problem(422, "unbounded");
    s.post("/v1/sessions", ADMIN, json!({"max_participants": "many"}))
        .problem(422, "max_participants");
    s.send(
        "POST",
        "/v1/sessions",
        Some(ADMIN),
        Some(b"{not json".to_vec()),
        "application/json",
    )
    .problem(400, "JSON");
    let big = json!({"input": "x".repeat(100 << 10)});
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/run"),
        ADMIN,
        big,
    )
    .problem(413, "");
    // Rules: a bad session config and a bad σ name their field.
    s.post("/v1/sessions", ADMIN, json!({"max_participants": 0}))
        .problem(400, "max_participants");
    s.post(
        &format!("/v1/sessions/{id}/agents"),
        ADMIN,
        json!({"agent": "did:ex:nan", "sigma": 7.5}),
    )
    .problem(409, "7.5");
    s.post(
        &format!("/v1/sessions/{id}/agents"),
        ADMIN,
        json!({"agent": "ahv:operator:root-ops", "sigma": 0.9}),
    )
    .problem(400, "reserved");
    // A component refused at admission names the import at fault.
    let http =
        wat::parse_str(r#"(component (import "wasi:http/incoming-handler@0.2.6" (instance)))"#)
            .unwrap();
    s.upload(ADMIN, &http)
        .problem(422, "wasi:http/incoming-handler@0.2.6");
    // Importing the network is admitted (toolchains always import it); the
    // import is listed as linked-but-denied.
    let sneak = s.upload(ADMIN, ahv_agents::NET_SNEAK);
    let imports = sneak.ok()["imports"].as_array().unwrap();
    assert!(
        imports.iter().any(|i| i["kind"] == "wasi-denied"
            && i["name"].as_str().unwrap().starts_with("wasi:sockets/")),
        "{imports:?}"
    );
    s.upload(ADMIN, b"not a component").problem(422, "");
    // An unknown event kind.
    s.get("/v1/events?kind=session.exploded", ADMIN)
        .problem(400, "session.exploded");
    // The server still answers.
    assert_eq!(s.send("GET", "/v1/health", None, None, "").status, 200);
}

#[test]
fn each_caller_has_a_request_budget() {
    let s = server_with(ApiLimits {
        requests_per_second: 0.5,
        burst: 3.0,
        ..ApiLimits::default()
    });
    for _ in 0..3 {
        assert_eq!(s.get("/v1/sessions", OP1).status, 200);
    }
    let refused = s.get("/v1/sessions", OP1);
    refused.problem(429, "retry in");
    assert_eq!(refused.retry_after.as_deref(), Some("2"), "{refused:#?}");
    // Another caller's budget is its own.
    assert_eq!(s.get("/v1/sessions", OP2).status, 200);
}

#[test]
fn the_openapi_document_lists_every_route_and_its_problems() {
    let s = server();
    let doc = s.send("GET", "/openapi.json", None, None, "");
    let paths = doc.ok()["paths"].as_object().unwrap().clone();
    let expected = [
        ("get", "/v1/health"),
        ("post", "/v1/components"),
        ("get", "/v1/components"),
        ("get", "/v1/components/{id}"),
        ("post", "/v1/sessions"),
        ("get", "/v1/sessions"),
        ("get", "/v1/sessions/{session}"),
        ("post", "/v1/sessions/{session}/activate"),
        ("post", "/v1/sessions/{session}/terminate"),
        ("post", "/v1/sessions/{session}/agents"),
        ("get", "/v1/sessions/{session}/agents"),
        ("delete", "/v1/sessions/{session}/agents/{agent}"),
        ("post", "/v1/sessions/{session}/agents/{agent}/run"),
        ("post", "/v1/sessions/{session}/agents/{agent}/kill"),
        ("post", "/v1/sessions/{session}/agents/{agent}/slash"),
        ("post", "/v1/sessions/{session}/agents/{agent}/quarantine"),
        ("delete", "/v1/sessions/{session}/agents/{agent}/quarantine"),
        ("post", "/v1/sessions/{session}/snapshots"),
        (
            "post",
            "/v1/sessions/{session}/snapshots/{snapshot}/restore",
        ),
        ("get", "/v1/sessions/{session}/files"),
        ("get", "/v1/sessions/{session}/file"),
        ("get", "/v1/sessions/{session}/state"),
        ("get", "/v1/sessions/{session}/state/value"),
        ("post", "/v1/sessions/{session}/vouches"),
        ("get", "/v1/sessions/{session}/vouches"),
        ("delete", "/v1/sessions/{session}/vouches/{vouch}"),
        ("post", "/v1/sessions/{session}/sagas"),
        ("get", "/v1/sagas"),
        ("get", "/v1/sagas/{saga}"),
        ("get", "/v1/sagas/{saga}/attribution"),
        ("get", "/v1/ledger/{agent}"),
        ("get", "/v1/events"),
        ("get", "/v1/events/stats"),
        ("get", "/v1/events/stream"),
        ("get", "/v1/stats"),
        ("get", "/metrics"),
        ("get", "/v1/rings"),
        ("get", "/v1/sessions/{session}/agents/{agent}"),
        ("post", "/v1/sessions/{session}/agents/{agent}/elevation"),
        ("delete", "/v1/sessions/{session}/agents/{agent}/elevation"),
        ("post", "/v1/sessions/{session}/agents/{agent}/demote"),
        ("get", "/v1/audit"),
        ("post", "/v1/audit/verify"),
        ("get", "/v1/audit/sessions/{session}/proof"),
    ];
    let mut documented = 0;
    for (path, ops) in &paths {
        for (method, op) in ops.as_object().unwrap() {
            documented += 1;
            assert!(
                expected.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is served but not in this test's list"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
        }
    }
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is missing from /openapi.json"
        );
    }
    assert_eq!(documented, expected.len());
    // Every route answers: none is in the document without a handler.
    for (method, path) in expected {
        let concrete = path
            .replace("{session}", "s999-00")
            .replace("{agent}", "did:ex:a")
            .replace("{saga}", "saga-x")
            .replace("{vouch}", "1")
            .replace("{snapshot}", "1")
            .replace("{id}", "00");
        let concrete = if concrete.ends_with("/proof") {
            concrete + "?seq=0"
        } else {
            concrete
        };
        if concrete == "/v1/events/stream" {
            continue; // it never ends; a_live_event_stream_… covers it
        }
        let a = match method {
            "get" => s.get(&concrete, AUDITOR),
            "delete" => s.delete(&concrete, AUDITOR),
            _ => s.post(&concrete, AUDITOR, json!({})),
        };
        assert_ne!(a.status, 405, "{method} {path}: {a:#?}");
        assert!(
            a.status != 404 || a.content_type == "application/problem+json",
            "{method} {path} has no handler: {a:#?}"
        );
    }
    // The check every answer goes through does refuse what the document
    // does not promise.
    let wrong = |status: u16, ct: &str, body: Value| Answer {
        status,
        content_type: ct.into(),
        retry_after: None,
        text: body.to_string(),
        body,
    };
    for (status, ct, body) in [
        (200, "application/json", json!({"status": 5})),
        (
            200,
            "text/plain",
            json!({"status": "ok", "version": "1", "ledger": "m"}),
        ),
        (
            299,
            "application/json",
            json!({"status": "ok", "version": "1", "ledger": "m"}),
        ),
    ] {
        let a = wrong(status, ct, body);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.conforms("GET", "/v1/health", &a)
        }));
        assert!(caught.is_err(), "{a:#?} passed the OpenAPI check");
    }
    // The bearer scheme is declared.
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[test]
fn a_saga_submitted_over_http_runs_and_reports_its_steps() {
    let s = server();
    let c = s.upload(ADMIN, ahv_agents::SCRIPTED);
    let component = c.ok()["id"].as_str().unwrap().to_string();
    let id = s.post("/v1/sessions", OP1, json!({})).ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.post(
        &format!("/v1/sessions/{id}/agents"),
        OP1,
        json!({"agent": "did:ex:a", "sigma": 0.8, "component": component}),
    )
    .ok();
    s.post(&format!("/v1/sessions/{id}/activate"), OP1, json!(null))
        .ok();
    let yaml = "name: two
steps:
  - id: one
    agent: did:ex:a
    action: do-1
  - id: two
    agent: did:ex:a
    action: do-2
    depends_on: [one]
";
    // Definition errors name the step and the field.
    let bad = s.send(
        "POST",
        &format!("/v1/sessions/{id}/sagas"),
        Some(OP1),
        Some(
            yaml.replace("depends_on: [one]", "depends_on: [nine]")
                .into_bytes(),
        ),
        "application/yaml",
    );
    bad.problem(400, "nine");
    let sub = s.send(
        "POST",
        &format!("/v1/sessions/{id}/sagas"),
        Some(OP1),
        Some(yaml.as_bytes().to_vec()),
        "application/yaml",
    );
    assert_eq!(sub.status, 202, "{sub:#?}");
    let saga = sub.body["saga"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let a = s.get(&format!("/v1/sagas/{saga}"), AUDITOR);
        if a.status == 200 && a.body["state"] == "completed" {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "saga {saga} did not complete within 60 s: {a:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let steps: Vec<_> = done.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["state"].clone()))
        .collect();
    assert_eq!(
        steps,
        [
            ("one".to_string(), json!("committed")),
            ("two".to_string(), json!("committed"))
        ]
    );
    let blame = s.get(&format!("/v1/sagas/{saga}/attribution"), AUDITOR);
    assert!(blame.ok()["direct_cause"].is_null(), "{blame:#?}");
    // A saga naming an agent that is not there fails where GET can see it.
    let sub = s.send(
        "POST",
        &format!("/v1/sessions/{id}/sagas"),
        Some(OP1),
        Some(yaml.replace("did:ex:a", "did:ex:ghost").into_bytes()),
        "application/yaml",
    );
    let ghost = sub.body["saga"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = s.get(&format!("/v1/sagas/{ghost}"), AUDITOR);
        if a.status == 409 {
            a.problem(409, "did:ex:ghost");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "saga {ghost}'s setup failure was not reported within 60 s: {a:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn rings_change_through_the_api_and_take_effect_at_once() {
    let s = server();
    let table = s.get("/v1/rings", AUDITOR);
    let rows = table.ok().as_array().unwrap().clone();
    assert_eq!(rows.len(), 4);
    let sandbox = rows.iter().find(|r| r["ring"] == 3).unwrap();
    assert!(
        sandbox["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("vfs-read"))
    );
    assert!(
        !sandbox["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("vfs-write"))
    );
    let id = s.writer_session(OP1);
    let agent = format!("/v1/sessions/{id}/agents/did:ex:writer");
    assert_eq!(s.get(&agent, AUDITOR).ok()["ring"], 2);
    // Elevation is admin-only, never to ring 0, and revocable.
    s.post(
        &format!("{agent}/elevation"),
        OP1,
        json!({"ring": 1, "justification": "j"}),
    )
    .problem(403, "admin");
    s.post(
        &format!("{agent}/elevation"),
        ADMIN,
        json!({"ring": 0, "justification": "j"}),
    )
    .problem(409, "ring 0");
    s.post(
        &format!("{agent}/elevation"),
        ADMIN,
        json!({"ring": 9, "justification": "j"}),
    )
    .problem(400, "ring 9");
    let e = s.post(
        &format!("{agent}/elevation"),
        ADMIN,
        json!({"ring": 1, "ttl_s": 60, "justification": "hotfix"}),
    );
    assert_eq!(e.ok()["ring"], 1, "{e:#?}");
    assert_eq!(s.get(&agent, AUDITOR).ok()["ring"], 1);
    let r = s.delete(&format!("{agent}/elevation?reason=done"), OP1);
    assert_eq!(r.ok()["revoked"], true);
    assert_eq!(r.body["ring"], 2);
    // A demotion holds: the writer's next write is a breach of ring 3.
    let d = s.post(
        &format!("{agent}/demote"),
        OP1,
        json!({"ring": 3, "reason": "suspicious"}),
    );
    assert_eq!(d.ok()["ring"], 3, "{d:#?}");
    let run = s.post(&format!("{agent}/run"), OP1, json!({"input": "x"}));
    run.problem(422, "breach");
    s.get(&format!("/v1/sessions/{id}/agents/did:ex:nobody"), AUDITOR)
        .problem(404, "did:ex:nobody");
}

#[test]
fn the_audit_log_is_verifiable_and_provable_over_http() {
    let s = server();
    let id = s.writer_session(OP1);
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/run"),
        OP1,
        json!({"input": "audited"}),
    )
    .ok();
    let t = s.post(&format!("/v1/sessions/{id}/terminate"), OP1, json!(null));
    let index = t.ok()["commitment"]["index"].clone();
    let st = s.get("/v1/audit", AUDITOR);
    assert_eq!(st.ok()["enabled"], true);
    // Terminate answered once its commitment was on disk.
    assert_eq!(st.body["last_commitment"]["index"], index, "{st:#?}");
    assert_eq!(st.body["last_commitment"]["durable"], true, "{st:#?}");
    assert!(st.body["captured"].as_u64().unwrap() > 5, "{st:#?}");
    assert_eq!(st.body["public_key"].as_str().unwrap().len(), 64);
    let v = s.send(
        "POST",
        &format!("/v1/audit/verify?session={id}"),
        Some(AUDITOR),
        None,
        "",
    );
    assert_eq!(v.ok()["ok"], true, "{v:#?}");
    let p = s.get(&format!("/v1/audit/sessions/{id}/proof?seq=0"), AUDITOR);
    assert_eq!(p.status, 200, "{p:#?}");
    assert!(p.text.contains(&id), "{p:#?}");
    s.get(
        &format!("/v1/audit/sessions/{id}/proof?seq=999999"),
        AUDITOR,
    )
    .problem(404, "999999");
    let stats = s.get("/v1/stats", AUDITOR);
    assert_eq!(stats.ok()["sessions"]["archived"], 1);
    let ev = s.get("/v1/events/stats", AUDITOR);
    assert!(
        ev.ok()["by_kind"]["operator.request"].as_u64().unwrap() >= 3,
        "{ev:#?}"
    );
}

/// A caller may hold at most 16 live event streams open (each keeps a page
/// of events while its client reads, and a client that stops reading keeps
/// it): the 17th is a 429 `too-many-streams`, another caller is not
/// affected, and a closed stream's slot comes back.
#[test]
fn a_caller_holds_at_most_sixteen_live_streams() {
    let s = server_with(ApiLimits {
        requests_per_second: 10_000.0,
        burst: 10_000.0,
        ..ApiLimits::default()
    });
    let open = |token: &str| {
        s.http
            .get(&format!("{}/v1/events/stream", s.base))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap()
    };
    let mut held: Vec<_> = (0..16).map(|_| open(AUDITOR)).collect();
    assert!(held.iter().all(|r| r.status().as_u16() == 200));
    s.get("/v1/events/stream", AUDITOR)
        .problem(429, "16 live event streams open");
    assert_eq!(
        open(OP1).status().as_u16(),
        200,
        "another caller's own budget"
    );
    // A closed stream's slot comes back once the server notices the close
    // (at its next write: an event, or the keep-alive).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = open(AUDITOR);
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a stream slot did not come back within 60 s of a close"
        );
        drop(r);
        // An event on the bus makes every stream write, and find the closed one.
        s.post("/v1/sessions", OP1, json!({})).ok();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_live_event_stream_follows_a_session_and_replays_after_an_id() {
    let s = server();
    let id = s.post("/v1/sessions", OP1, json!({})).ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let open = |after: Option<u64>| {
        let mut url = format!("{}/v1/events/stream?session={id}", s.base);
        if let Some(a) = after {
            url += &format!("&after={a}");
        }
        let res = s
            .http
            .get(&url)
            .header("Authorization", format!("Bearer {AUDITOR}"))
            .call()
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let reader = std::io::BufReader::new(res.into_body().into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    // Waits for `event: KIND` on the stream and returns its id and data.
    let next = |rx: &std::sync::mpsc::Receiver<String>, kind: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut ev, mut eid) = (String::new(), 0u64);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no `event: {kind}` on the stream within 30 s: {e}"));
            if let Some(k) = line.strip_prefix("event: ") {
                ev = k.to_string();
            } else if let Some(i) = line.strip_prefix("id: ") {
                eid = i.parse().unwrap();
            } else if let Some(d) = line.strip_prefix("data: ")
                && ev == kind
            {
                return (eid, serde_json::from_str::<Value>(d).unwrap());
            }
        }
    };
    let rx = open(None);
    s.post(
        &format!("/v1/sessions/{id}/agents"),
        OP1,
        json!({"agent": "did:ex:a", "sigma": 0.7}),
    )
    .ok();
    let (req_id, req) = next(&rx, "operator.request");
    assert_eq!(req["fields"]["caller"], "op1");
    let (joined_id, joined) = next(&rx, "session.joined");
    assert_eq!(joined["agent"], "did:ex:a");
    assert_eq!(joined["session"], id.as_str());
    assert!(
        req_id < joined_id,
        "the request is recorded before the join"
    );
    // Another session's events are not on this stream; this one's activation is.
    let other = s.post("/v1/sessions", OP2, json!({})).ok()["id"].clone();
    s.post(
        &format!("/v1/sessions/{}/agents", other.as_str().unwrap()),
        OP2,
        json!({"agent": "did:ex:b", "sigma": 0.7}),
    )
    .ok();
    s.post(
        &format!("/v1/sessions/{}/activate", other.as_str().unwrap()),
        OP2,
        json!(null),
    )
    .ok();
    s.post(&format!("/v1/sessions/{id}/activate"), OP1, json!(null))
        .ok();
    let (_, activated) = next(&rx, "session.activated");
    assert_eq!(
        activated["session"],
        id.as_str(),
        "the other session's activation came through"
    );
    // A reconnect after the join replays what followed it from the history.
    let again = open(Some(joined_id));
    let (replayed, _) = next(&again, "session.activated");
    assert!(replayed > joined_id);
}

#[test]
fn metrics_count_calls_refusals_breaches_and_traps() {
    let s = server();
    let id = s.writer_session(ADMIN);
    let agent = format!("/v1/sessions/{id}/agents/did:ex:writer");
    s.post(&format!("{agent}/run"), ADMIN, json!({"input": "one"}))
        .ok();
    s.post(
        &format!("{agent}/quarantine"),
        ADMIN,
        json!({"duration_s": 60}),
    )
    .ok();
    s.post(&format!("{agent}/run"), ADMIN, json!({"input": "two"}))
        .ok();
    s.delete(&format!("{agent}/quarantine"), ADMIN).ok();
    s.post(
        &format!("{agent}/demote"),
        ADMIN,
        json!({"ring": 3, "reason": "test"}),
    )
    .ok();
    s.post(&format!("{agent}/run"), ADMIN, json!({"input": "three"}))
        .problem(422, "breach");
    let m = s.get("/metrics", AUDITOR);
    assert_eq!(m.status, 200, "{m:#?}");
    assert!(
        m.content_type.starts_with("application/openmetrics-text"),
        "{m:#?}"
    );
    let value = |line_start: &str| -> f64 {
        m.text
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{}", m.text))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("ahv_host_calls_total{capability=\"vfs-write\",ring=\"2\"}") >= 1.0);
    assert_eq!(
        value("ahv_breaches_total{capability=\"vfs-read\",ring=\"3\"}")
            + value("ahv_breaches_total{capability=\"vfs-write\",ring=\"3\"}"),
        1.0
    );
    assert!(value("ahv_refusals_total{kind=\"quarantined\"}") >= 1.0);
    assert_eq!(value("ahv_traps_total{kind=\"ring-breach\"}"), 1.0);
    assert!(value("ahv_call_seconds_count{export=\"run\"}") >= 3.0);
    assert!(value("ahv_instantiate_seconds_count") >= 1.0);
    assert_eq!(value("ahv_sessions{state=\"active\"}"), 1.0);
    assert!(value("ahv_audit_deltas_total") > 5.0);
    assert!(m.text.contains("ahv_audit_backlog_bytes"), "{}", m.text);
    assert!(m.text.trim_end().ends_with("# EOF"));
    s.send("GET", "/metrics", None, None, "")
        .problem(401, "Bearer");
}

#[test]
fn a_w3c_traceparent_is_carried_into_the_agent_call_its_events_and_the_answer() {
    let s = server();
    let id = s.writer_session(OP1);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = s
        .http
        .post(format!(
            "{}/v1/sessions/{id}/agents/did:ex:writer/run",
            s.base
        ))
        .header("Authorization", format!("Bearer {OP1}"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send_json(json!({"input": "traced"}))
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let echoed = res.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(echoed.starts_with(&format!("00-{trace}-")), "{echoed}");
    let body: Value = res.into_body().read_json().unwrap();
    assert_eq!(
        body["trace"], trace,
        "the agent call runs in the request's trace"
    );
    let events = s.get(&format!("/v1/events?session={id}"), AUDITOR);
    let traced: Vec<_> = events
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["trace"] == trace)
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        traced.contains(&"operator.request".to_string()),
        "{traced:?}"
    );
    assert!(traced.contains(&"vfs.write".to_string()), "{traced:?}");
    assert!(
        traced.contains(&"audit.delta_captured".to_string()),
        "{traced:?}"
    );
    // Without one, each request gets its own trace, named in the answer.
    let a = s.get("/v1/sessions", AUDITOR);
    assert_eq!(a.status, 200);
    let res = s
        .http
        .get(format!("{}/v1/health", s.base))
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )
        .call()
        .unwrap();
    let own = res.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        !own.contains("00000000000000000000000000000000"),
        "an all-zero trace is ignored: {own}"
    );
}

/// Resident memory of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_concurrent_requests_all_succeed_in_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Client and server share this process: 2 descriptors per connection.
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        assert!(
            limit >= 2200,
            "RLIMIT_NOFILE {limit} is too low for 1,000 connections each way"
        );
    }
    let s = server();
    let id = s.writer_session(ADMIN);
    let addr = s.base.trim_start_matches("http://").to_string();
    let before = rss_kib();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let statuses: Vec<String> = client.block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let addr = addr.clone();
                let request = match i % 5 {
                    0 => format!(
                        "POST /v1/sessions/{id}/agents/did:ex:writer/run HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{{\"input\":\"n{:03}\"}}",
                        i / 5 % 1000
                    ),
                    1 => format!("GET /v1/events?session={id}&limit=50 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {AUDITOR}\r\nConnection: close\r\n\r\n"),
                    2 => format!("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {AUDITOR}\r\nConnection: close\r\n\r\n"),
                    _ => format!("GET /v1/sessions/{id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {OP1}\r\nConnection: close\r\n\r\n"),
                };
                tokio::spawn(async move {
                    let exchange = async {
                        let mut c = tokio::net::TcpStream::connect(&addr).await?;
                        c.write_all(request.as_bytes()).await?;
                        let mut out = Vec::new();
                        c.read_to_end(&mut out).await?;
                        Ok::<_, std::io::Error>(out)
                    };
                    match tokio::time::timeout(Duration::from_secs(120), exchange).await {
                        Ok(Ok(out)) => {
                            let text = String::from_utf8_lossy(&out);
                            let status = text.lines().next().unwrap_or("").to_string();
                            // A run the agent completed (not one its own rate limit refused).
                            if text.contains("\"ok\":true,\"output\":\"") {
                                status + " ran"
                            } else {
                                status
                            }
                        }
                        Ok(Err(e)) => format!("io error: {e}"),
                        Err(_) => "no answer within 120 s".to_string(),
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let failed: Vec<_> = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.starts_with("HTTP/1.1 200"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 1000 failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 256,
        "the process grew by {grown_mib} MiB over 1,000 requests"
    );
    // Each run the agent completed left its line (a run can also leave it
    // and then fail a later write); the others met the agent's own write
    // budget (ring 2: 20/s, burst 40), a value it handled. No line twice.
    let ran = statuses.iter().filter(|s| s.ends_with(" ran")).count();
    assert!(ran >= 20, "only {ran} of 200 runs completed");
    let notes = s.get(
        &format!("/v1/sessions/{id}/file?path=notes/today.md&agent=did:ex:writer"),
        AUDITOR,
    );
    let lines: Vec<&str> = notes
        .text
        .lines()
        .filter(|l| l.starts_with("- n"))
        .collect();
    let unique: std::collections::HashSet<&&str> = lines.iter().collect();
    assert_eq!(unique.len(), lines.len(), "{}", notes.text);
    assert!(
        (ran..=200).contains(&lines.len()),
        "{ran} runs, {} lines",
        lines.len()
    );
}

/// Every route that changes something, as (method, path, body) on session
/// `id` with the writer in it.
fn mutating_routes(id: &str) -> Vec<(&'static str, String, Option<Value>)> {
    let a = format!("/v1/sessions/{id}/agents/did:ex:writer");
    vec![
        (
            "POST",
            format!("/v1/sessions/{id}/agents"),
            Some(json!({"agent": "did:ex:new", "sigma": 0.7})),
        ),
        ("POST", format!("/v1/sessions/{id}/activate"), None),
        ("POST", format!("{a}/run"), Some(json!({"input": "x"}))),
        (
            "POST",
            format!("{a}/kill"),
            Some(json!({"reason": "manual"})),
        ),
        (
            "POST",
            format!("{a}/slash"),
            Some(json!({"severity": 1.0, "reason": "r"})),
        ),
        ("POST", format!("{a}/quarantine"), Some(json!({}))),
        ("DELETE", format!("{a}/quarantine"), None),
        (
            "POST",
            format!("{a}/elevation"),
            Some(json!({"ring": 1, "justification": "j"})),
        ),
        ("DELETE", format!("{a}/elevation"), None),
        (
            "POST",
            format!("{a}/demote"),
            Some(json!({"ring": 3, "reason": "r"})),
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/vouches"),
            Some(json!({"voucher": "did:ex:writer", "vouchee": "did:ex:writer"})),
        ),
        ("DELETE", format!("/v1/sessions/{id}/vouches/1"), None),
        ("POST", format!("/v1/sessions/{id}/snapshots"), None),
        (
            "POST",
            format!("/v1/sessions/{id}/snapshots/1/restore"),
            None,
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/sagas"),
            Some(
                json!({"name": "n", "steps": [{"id": "a", "agent": "did:ex:writer", "action": "x"}]}),
            ),
        ),
        ("DELETE", a.clone(), None),
        ("POST", format!("/v1/sessions/{id}/terminate"), None),
    ]
}

#[test]
fn auditors_and_other_operators_change_nothing_on_any_route() {
    let s = server();
    let id = s.writer_session(OP1);
    let before = s.get(&format!("/v1/sessions/{id}"), AUDITOR).body;
    let events_before = s.get(&format!("/v1/events?session={id}"), AUDITOR).body;
    for token in [AUDITOR, OP2] {
        for (method, path, body) in mutating_routes(&id) {
            let a = match (method, body) {
                ("DELETE", _) => s.delete(&path, token),
                (_, Some(b)) => s.post(&path, token, b),
                (_, None) => s.send("POST", &path, Some(token), None, ""),
            };
            assert_eq!(a.status, 403, "{method} {path} as {token}: {a:#?}");
        }
    }
    assert_eq!(s.get(&format!("/v1/sessions/{id}"), AUDITOR).body, before);
    assert_eq!(
        s.get(&format!("/v1/events?session={id}"), AUDITOR).body,
        events_before,
        "a refused caller left events in the session"
    );
    // The owner may (the route list is not vacuous).
    let ok = s.post(&format!("/v1/sessions/{id}/snapshots"), OP1, json!(null));
    assert_eq!(ok.status, 201, "{ok:#?}");
}

#[test]
fn operators_act_only_for_their_agents_and_earn_no_clean_session_credit() {
    let s = server();
    // Outside op1's `did:ex:*`: refused before anything happens.
    let id = s.post("/v1/sessions", OP1, json!({})).ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.post(
        &format!("/v1/sessions/{id}/agents"),
        OP1,
        json!({"agent": "did:victim:a", "sigma": 0.4}),
    )
    .problem(403, "did:victim:a");
    assert!(
        s.get(&format!("/v1/sessions/{id}/agents"), AUDITOR)
            .ok()
            .as_array()
            .unwrap()
            .is_empty()
    );
    // An admin's slash stands however many empty sessions op1 ends with the agent.
    let admin_s = s.writer_session(ADMIN);
    s.post(
        &format!("/v1/sessions/{admin_s}/agents/did:ex:writer/slash"),
        ADMIN,
        json!({"severity": 1.0, "reason": "bad"}),
    )
    .ok();
    let risk = |s: &Server| {
        s.get("/v1/ledger/did:ex:writer", AUDITOR).ok()["risk"]
            .as_f64()
            .unwrap()
    };
    let slashed = risk(&s);
    assert!(slashed > 0.0);
    for _ in 0..3 {
        let id = s.post("/v1/sessions", OP1, json!({})).ok()["id"]
            .as_str()
            .unwrap()
            .to_string();
        s.post(
            &format!("/v1/sessions/{id}/agents"),
            OP1,
            json!({"agent": "did:ex:writer", "sigma": 0.9}),
        )
        .ok();
        s.post(&format!("/v1/sessions/{id}/activate"), OP1, json!(null))
            .ok();
        s.post(&format!("/v1/sessions/{id}/terminate"), OP1, json!(null))
            .ok();
    }
    assert_eq!(
        risk(&s),
        slashed,
        "operator-made sessions worked a slash off"
    );
    let entries = s.get("/v1/ledger/did:ex:writer", AUDITOR).body["entries"].clone();
    assert!(!entries.to_string().contains("clean"), "{entries}");
}

#[test]
fn read_only_views_create_nothing_on_disk() {
    let s = server();
    let id = s.writer_session(OP1);
    let count = |dir: &std::path::Path| -> Vec<String> {
        fn walk(d: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                out.push(e.path().display().to_string());
                if e.path().is_dir() {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, &mut out);
        out.retain(|p| !p.contains("/audit/"));
        out.sort();
        out
    };
    // The session's own directory is made on its first use (once per
    // session, as for its agents); nothing more after that.
    s.get(&format!("/v1/sessions/{id}/files"), AUDITOR).ok();
    let before = count(s._state.path());
    for i in 0..20 {
        let a = s.get(
            &format!("/v1/sessions/{id}/files?agent=did:ex:ghost{i}"),
            AUDITOR,
        );
        assert_eq!(a.ok(), &json!(["shared"]));
        s.get(
            &format!("/v1/sessions/{id}/file?path=x&agent=did:ex:ghost{i}"),
            AUDITOR,
        )
        .problem(404, "x");
        s.get(
            &format!("/v1/sessions/{id}/files?dir=deep/er&agent=did:ex:ghost{i}"),
            AUDITOR,
        )
        .problem(404, "deep");
    }
    s.get(&format!("/v1/sessions/{id}/files"), AUDITOR).ok();
    let after = count(s._state.path());
    assert_eq!(
        after, before,
        "reads created entries under the state directory"
    );
    assert!(!after.iter().any(|p| p.contains("ghost")), "{after:?}");
}

#[test]
fn quarantine_defaults_to_300_s_and_kill_needs_no_body() {
    let s = server();
    let id = s.writer_session(ADMIN);
    let a = format!("/v1/sessions/{id}/agents/did:ex:writer");
    let q = s.post(&format!("{a}/quarantine"), ADMIN, json!({}));
    let ends = q.ok()["ends_at_ms"].as_u64().unwrap();
    assert!(
        (300_000..420_000).contains(&ends),
        "a default quarantine ends at {ends} ms"
    );
    let k = s.send("POST", &format!("{a}/kill"), Some(ADMIN), None, "");
    assert_eq!(k.ok()["terminated"], json!(["did:ex:writer"]));
}

#[test]
fn a_stream_replays_more_than_a_page_and_says_when_it_cannot() {
    let s = server();
    let id = s.post("/v1/sessions", ADMIN, json!({})).ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Refused joins still record who asked: two events each (request, delta).
    for _ in 0..600 {
        s.post(
            &format!("/v1/sessions/{id}/agents"),
            ADMIN,
            json!({"agent": "did:ex:a", "sigma": 7.0}),
        );
    }
    let mut stored = 0;
    let mut after = 0u64;
    loop {
        let page = s.get(
            &format!("/v1/events?session={id}&after={after}&limit=1000"),
            AUDITOR,
        );
        let page = page.ok().as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        after = last["id"].as_u64().unwrap();
        stored += page.len();
    }
    assert!(stored > 1000, "{stored}");
    let open = |after: u64| {
        let res = s
            .http
            .get(format!(
                "{}/v1/events/stream?session={id}&after={after}",
                s.base
            ))
            .header("Authorization", format!("Bearer {AUDITOR}"))
            .call()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(res.into_body().into_reader()).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let rx = open(0);
    let mut got = 0;
    while got < stored {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("the replay stopped after {got} of {stored} events: {e}"));
        if line.starts_with("data: ") {
            got += 1;
        }
    }
    // An id from an earlier run of the server: a reset, not a silent stream.
    let rx = open(after + 1_000_000);
    let first = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a first event within 30 s");
        if let Some(e) = line.strip_prefix("event: ") {
            break e.to_string();
        }
    };
    assert_eq!(first, "reset");
}

/// A W3C WebDriver session on Debian's chromedriver and headless Chromium,
/// spoken to directly (the protocol is a handful of JSON requests).
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` when chromedriver is not installed, outside CI (`.ci/run`
    /// installs it; there its absence fails the test).
    fn start() -> Option<Browser> {
        let driver_bin = "/usr/bin/chromedriver";
        if !std::path::Path::new(driver_bin).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install chromium and chromium-driver (.ci/run does)"
            );
            eprintln!(
                "skipped: {driver_bin} is not installed (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let http = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build(),
        );
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/status")).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .send_json(&caps)
            .unwrap()
            .into_body()
            .read_json()
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Some(Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        })
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let v: Value = self
            .http
            .post(format!("{}/session/{}/{path}", self.base, self.session))
            .send_json(&body)
            .unwrap()
            .into_body()
            .read_json()
            .unwrap();
        assert!(v["value"].get("error").is_none(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.post("url", json!({ "url": url }));
    }

    /// Runs `script` in the page and returns its value.
    fn eval(&self, script: &str) -> Value {
        self.post("execute/sync", json!({ "script": script, "args": [] }))
    }

    /// Waits (at most 30 s) until `script` returns true in the page.
    fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(script) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "the dashboard did not show {what} within 30 s; page: {}",
                self.eval("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_dashboard_shows_a_session_and_highlights_a_trapped_agent_live() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let s = server();
    // Served without a token, under a strict content policy.
    let page = s.http.get(format!("{}/", s.base)).call().unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    browser.goto(&format!("{}/#token={AUDITOR}", s.base));
    // The token moved out of the address bar.
    browser.wait_for(
        "a live stream",
        "return document.getElementById('status').dataset.state === 'live'",
    );
    assert_eq!(browser.eval("return location.hash"), json!(""));
    let id = s.writer_session(OP1);
    browser.wait_for(
        "the new session",
        &format!("return document.querySelector('#sessions tbody').textContent.includes('{id}')"),
    );
    browser.wait_for(
        "the writer at ring 2",
        "return [...document.querySelectorAll('#participants tbody tr')].some(r => r.dataset.agent === 'did:ex:writer' && r.querySelector('td.ring').textContent === '2')",
    );
    // The writer is demoted and then writes: a breach, trapped and expelled.
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/demote"),
        OP1,
        json!({"ring": 3, "reason": "test"}),
    )
    .ok();
    s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:writer/run"),
        OP1,
        json!({"input": "<img src=x onerror=alert(1)>"}),
    )
    .problem(422, "breach");
    browser.wait_for(
        "the breach highlighted",
        "return [...document.querySelectorAll('#events li.alert')].some(li => li.dataset.kind === 'ring.breach_detected' && li.textContent.includes('did:ex:writer'))",
    );
    browser.wait_for(
        "the expelled writer gone from the participants",
        "return ![...document.querySelectorAll('#participants tbody tr')].some(r => r.dataset.agent === 'did:ex:writer')",
    );
    // Agent-controlled text is text, never markup.
    assert_eq!(
        browser.eval("return document.querySelectorAll('#events img').length"),
        json!(0)
    );
    // The audit status is there.
    browser.wait_for(
        "the audit status",
        "return document.getElementById('audit').textContent.includes('deltas captured')",
    );
}

/// An MCP client (rmcp's, over streamable HTTP) of one session of the server.
async fn mcp_client(
    url: &str,
    token: Option<&str>,
    traceparent: Option<&str>,
) -> Result<rmcp::service::RunningService<rmcp::RoleClient, ()>, String> {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    if let Some(tp) = traceparent {
        let mut h = std::collections::HashMap::new();
        h.insert(
            reqwest::header::HeaderName::from_static("traceparent"),
            reqwest::header::HeaderValue::from_str(tp).unwrap(),
        );
        config = config.custom_headers(h);
    }
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    tokio::time::timeout(REQUEST_LIMIT, ().serve(transport))
        .await
        .map_err(|_| {
            format!("the MCP handshake with {url} did not finish within {REQUEST_LIMIT:?}")
        })?
        .map_err(|e| e.to_string())
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(REQUEST_LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {REQUEST_LIMIT:?}"))
}

fn mcp_call(tool: &str, input: &str) -> rmcp::model::CallToolRequestParams {
    let mut args = serde_json::Map::new();
    args.insert("input".into(), Value::String(input.into()));
    rmcp::model::CallToolRequestParams::new(tool.to_string()).with_arguments(args)
}

fn mcp_text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| match c {
            rmcp::model::ContentBlock::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_mcp_client_calls_a_sessions_agents_over_http_by_the_callers_rules() {
    let s = server();
    // op1's session: two of its agents, and one of another team an admin joined.
    let hello = s.upload(OP1, ahv_agents::HELLO).id();
    let notes = s.upload(OP1, ahv_agents::NOTE_TAKER).id();
    let id = s.live_session(
        OP1,
        &[
            ("did:ex:hello", &hello, 0.5, OP1),
            ("did:ex:low", &notes, 0.5, OP1),
            ("acme:tool", &hello, 0.5, ADMIN),
        ],
    );
    let url = format!("{}/v1/sessions/{id}/mcp", s.base);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut admin_trace = None;
    let rt = s.rt.as_ref().unwrap();
    rt.block_on(async {
        let names = |tools: Vec<rmcp::model::Tool>| {
            let mut n: Vec<String> = tools.into_iter().map(|t| t.name.to_string()).collect();
            n.sort();
            n
        };
        // The operator sees and calls only its own agents.
        let op1 = mcp_client(
            &url,
            Some(OP1),
            Some(&format!("00-{trace}-b7ad6b7169203331-01")),
        )
        .await
        .unwrap();
        let tools = bounded("tools/list", op1.list_all_tools()).await.unwrap();
        let tool = |id: &str| ahv_api::mcp::tool_name(&ahv_core::AgentId::new(id).unwrap());
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            names(tools),
            sorted(vec![tool("did:ex:hello"), tool("did:ex:low")])
        );
        let r = bounded(
            "hello",
            op1.call_tool(mcp_call(&tool("did:ex:hello"), "Ada")),
        )
        .await
        .unwrap();
        assert_ne!(r.is_error, Some(true), "{r:?}");
        assert!(mcp_text(&r).contains("Ada"), "{r:?}");
        assert_eq!(
            r.meta.as_ref().and_then(|m| m.get("ahv/trace")),
            Some(&Value::String(trace.into())),
            "the call runs in the request's trace: {r:?}"
        );
        assert!(
            bounded(
                "a call of another team's agent",
                op1.call_tool(mcp_call(&tool("acme:tool"), "x"))
            )
            .await
            .is_err()
        );
        // Ring 3 writing: a breach, a tool error; the agent is gone.
        let r = bounded(
            "low",
            op1.call_tool(mcp_call(&tool("did:ex:low"), "sneaky")),
        )
        .await
        .unwrap();
        assert_eq!(r.is_error, Some(true), "{r:?}");
        assert!(mcp_text(&r).contains("ring breach"), "{r:?}");
        // The admin sees every agent left.
        let admin = mcp_client(&url, Some(ADMIN), None).await.unwrap();
        let tools = bounded("tools/list", admin.list_all_tools()).await.unwrap();
        assert_eq!(
            names(tools),
            sorted(vec![tool("acme:tool"), tool("did:ex:hello")])
        );
        // Without a traceparent, the call and its record share the trace
        // the server made for the request.
        let r = bounded(
            "hello",
            admin.call_tool(mcp_call(&tool("did:ex:hello"), "Bo")),
        )
        .await
        .unwrap();
        assert_ne!(r.is_error, Some(true), "{r:?}");
        admin_trace = r.meta.as_ref().and_then(|m| m.get("ahv/trace")).cloned();
        // Another operator may not drive op1's session; an auditor calls
        // nothing; no token, a wrong one, or an unknown session: refused.
        let op2 = mcp_client(&url, Some(OP2), None).await.unwrap();
        let refused = bounded("op2's tools/list", op2.list_all_tools()).await;
        assert!(
            format!("{refused:?}").contains("did not create session"),
            "{refused:?}"
        );
        for (who, url, token, answer) in [
            (
                "an auditor",
                url.clone(),
                Some(AUDITOR),
                "HTTP 403 Forbidden: {\"type\":\"urn:ahv:problem:forbidden\"",
            ),
            (
                "no token",
                url.clone(),
                None,
                "HTTP 401 Unauthorized: {\"type\":\"urn:ahv:problem:unauthorized\"",
            ),
            (
                "a wrong token",
                url.clone(),
                Some("tok-nobody"),
                "the bearer token is not known to this server",
            ),
            (
                "an unknown session",
                format!("{}/v1/sessions/s3-nosuchsession/mcp", s.base),
                Some(ADMIN),
                "HTTP 404 Not Found: {\"type\":\"urn:ahv:problem:unknown-session\"",
            ),
        ] {
            let r = mcp_client(&url, token, None).await;
            let e = r
                .err()
                .unwrap_or_else(|| panic!("{who} got an MCP connection"));
            assert!(e.contains(answer), "{who}: {e}");
        }
        for c in [op1, admin, op2] {
            bounded("closing", c.cancel()).await.unwrap();
        }
    });
    // Each call is recorded with its caller, in its trace, before it ran.
    let ev = s.get(
        &format!("/v1/events?session={id}&kind=operator.request"),
        AUDITOR,
    );
    let calls: Vec<&Value> = ev
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["fields"]["operation"]
                .as_str()
                .is_some_and(|o| o.starts_with("MCP tools/call"))
        })
        .collect();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0]["fields"]["caller"], "op1");
    assert_eq!(
        calls[0]["fields"]["operation"],
        "MCP tools/call agent=did:ex:hello"
    );
    assert_eq!(calls[0]["trace"], trace);
    assert_eq!(calls[2]["fields"]["caller"], "root-ops");
    assert_eq!(Some(&calls[2]["trace"]), admin_trace.as_ref(), "{calls:#?}");
}

#[test]
fn an_mcp_call_whose_client_goes_away_is_stopped_and_frees_its_agent() {
    let s = server();
    let sleeper = s.upload(ADMIN, ahv_agents::SLEEPER).id();
    // Ring 2: a call may take 30 s before its deadline stops it.
    let id = s.live_session(ADMIN, &[("did:ex:sleeper", &sleeper, 0.8, ADMIN)]);
    let tool = ahv_api::mcp::tool_name(&ahv_core::AgentId::new("did:ex:sleeper").unwrap());
    let url = format!("{}/v1/sessions/{id}/mcp", s.base);
    let rt = s.rt.as_ref().unwrap();
    // A tools/call that would sleep an hour, from a client that hangs up
    // once the call has started.
    let call = rt.spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": tool, "arguments": {"input": "3600000"}}})
                .to_string(),
            )
            .send()
            .await
    });
    let deadline = Instant::now() + REQUEST_LIMIT;
    loop {
        let ev = s.get(
            &format!("/v1/events?session={id}&kind=operator.request"),
            AUDITOR,
        );
        if ev.ok().as_array().unwrap().iter().any(|e| {
            e["fields"]["operation"]
                .as_str()
                .is_some_and(|o| o.starts_with("MCP tools/call"))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the MCP call was not recorded within {REQUEST_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    call.abort();
    // The agent is free at once: the next run gets a fresh instance, and the
    // abandoned call never reached its deadline.
    let run = s.post(
        &format!("/v1/sessions/{id}/agents/did:ex:sleeper/run"),
        ADMIN,
        json!({"input": "10"}),
    );
    assert_eq!(run.ok()["output"], "slept 10 ms", "{run:#?}");
    let m = s.get("/metrics", AUDITOR);
    let deadline_traps = m
        .text
        .lines()
        .find(|l| l.starts_with("ahv_traps_total{kind=\"deadline-exceeded\"}"))
        .unwrap_or_else(|| panic!("no deadline trap counter in\n{}", m.text))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse::<f64>()
        .unwrap();
    assert_eq!(
        deadline_traps, 0.0,
        "the abandoned call ran on to its deadline"
    );
}
