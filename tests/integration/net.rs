//! The `net` capability against a real guest (`model-caller`) and real HTTP
//! servers the tests start on 127.0.0.1: an allowed request arrives with the
//! host's credential and is audited; every destination trick, a redirect, a
//! body over its limit, a server that never answers, a rate limit and a call
//! from outside the ring are refused — and nothing reaches a server that
//! should not be reached.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahv_core::event::{Event, EventKind, EventPayload, EventQuery};
use ahv_core::{Capability, Ring, SessionId};
use ahv_governance::files::{Caller, FileSpace};
use ahv_hypervisor::{HypervisorError, JoinRequest};
use ahv_runtime::{AgentError, LogSource, TrapCause};
use ahv_security::policy::PolicyFile;
use ahv_tests::within;
use sha2::{Digest, Sha256};

use crate::sessions::{Hv, id};

/// `model-caller` has its tests here.
pub const TESTED: () = ();

/// The secret the policy attaches to requests for the test server.
const SECRET: &str = "Bearer sekrit-4711";

/// Longest any one run may take here (the policy's own timeout is 1.5 s).
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What the test server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// An HTTP/1.1 server on 127.0.0.1 that answers by path:
/// `/v1/complete` 200 with a JSON answer, `/redirect` 302, `/big` 200 with
/// 300 000 bytes, `/hang` never answers (until the client goes or 20 s pass).
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, acc) = (seen.clone(), stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        let (s, st) = (s.clone(), st.clone());
                        std::thread::spawn(move || serve(stream, &s, &st));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("test server accept: {e}"),
                }
            }
        });
        Server {
            addr,
            seen,
            accepted,
            stop,
        }
    }

    /// Connections accepted so far (a refused request makes none).
    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        headers,
        body,
    });
    let respond = |stream: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    match path.as_str() {
        "/v1/complete" => respond(
            &mut stream,
            "200 OK",
            "content-type: application/json\r\n",
            br#"{"answer":"forty-two"}"#,
        ),
        "/redirect" => respond(
            &mut stream,
            "302 Found",
            "location: http://127.0.0.1:1/elsewhere\r\n",
            b"",
        ),
        "/big" => respond(&mut stream, "200 OK", "", &vec![b'x'; 300_000]),
        "/hang" => {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20) {
                stream
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                match stream.read(&mut chunk) {
                    Ok(0) => return,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    _ => return,
                }
            }
        }
        _ => respond(&mut stream, "404 Not Found", "", b"no such path"),
    }
}

/// A listener nothing may reach: the tests fail if anything connects.
struct Bait(TcpListener);

impl Bait {
    fn new() -> Bait {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Bait(l)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn assert_untouched(&self) {
        match self.0.accept() {
            Ok((_, peer)) => panic!("a connection from {peer} reached the bait listener"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("bait accept: {e}"),
        }
    }
}

/// The policy of these tests: `did:test:m` may use `net` in ring 2; the
/// test server's IP literal is allowed with a credential, `localhost` is
/// allowed but not its (loopback) addresses.
fn policy(port: u16, extra: &str) -> String {
    format!(
        r#"
[agents."did:test:m"]
net = true

[net]
max_request_bytes = 1000
max_response_bytes = 100000
timeout_ms = 1500

[[net.allow]]
host = "127.0.0.1"
port = {port}
schemes = ["http"]
methods = ["GET", "POST"]
private_addresses = true
credential = {{ header = "Authorization", value = "{SECRET}" }}

[[net.allow]]
host = "localhost"
port = {port}
schemes = ["http"]
{extra}
"#
    )
}

fn hv(policy_text: &str) -> Hv {
    let p = PolicyFile::parse(policy_text).unwrap_or_else(|e| panic!("{e}\n{policy_text}"));
    Hv::with(move |b| b.governance_policy(p))
}

/// A session with `model-caller` joined as `agent` at `sigma`.
async fn session_with(h: &Hv, agent: &str, sigma: f64) -> (SessionId, Ring) {
    let s = h.session();
    let c = h.hv.load(ahv_agents::MODEL_CALLER).unwrap();
    let ring =
        h.hv.join_session(&s, JoinRequest::new(id(agent), sigma).component(c))
            .await
            .unwrap();
    h.hv.activate_session(&s).unwrap();
    (s, ring)
}

async fn run(
    h: &Hv,
    s: &SessionId,
    agent: &str,
    input: &str,
) -> Result<ahv_runtime::RunOutput, HypervisorError> {
    within(RUN_LIMIT, &format!("{agent} running {input}"), async {
        h.hv.run_agent(s, &id(agent), input).await
    })
    .await
}

fn net_events(h: &Hv, s: &SessionId) -> Vec<Event> {
    h.hv.events().query(
        &EventQuery::default()
            .session(s.clone())
            .kind(EventKind::NetRequest),
    )
}

fn fields(e: &Event) -> (String, String, u64, String) {
    match &e.payload {
        EventPayload::NetRequest {
            method,
            url,
            status,
            outcome,
            ..
        } => (method.clone(), url.clone(), *status, outcome.clone()),
        other => panic!("not a net.request: {other:?}"),
    }
}

#[tokio::test]
async fn an_allowed_request_arrives_with_the_host_s_credential_and_is_audited() {
    let server = Server::start();
    let h = hv(&policy(server.port(), ""));
    let (s, ring) = session_with(&h, "did:test:m", 0.8).await;
    assert_eq!(ring, Ring::Standard, "ring 2, with the policy's net grant");
    let url = format!("http://127.0.0.1:{}/v1/complete", server.port());
    let input = format!(
        r#"{{"url": "{url}", "prompt": "what is six times seven?", "save": "shared/answers/a.json", "headers": [["authorization", "guest-chosen"]]}}"#
    );
    let out = run(&h, &s, "did:test:m", &input).await.unwrap();
    let answer = out.result.clone().unwrap();
    assert_eq!(
        answer,
        r#"{"status":200,"body":"{\"answer\":\"forty-two\"}"}"#
    );

    // The server got the request, with the host's credential in place of
    // the one the guest set.
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    let sent_body = br#"{"prompt":"what is six times seven?"}"#;
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/v1/complete")
    );
    assert_eq!(req.body, sent_body);
    let auth: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(auth, [SECRET]);

    // The answer is in the session.
    let core = h.hv.session_core(&s).unwrap();
    let host = id("did:test:host");
    let saved = core
        .read(Caller::untraced(&host, Ring::Root), "shared/answers/a.json")
        .unwrap();
    assert_eq!(saved, br#"{"answer":"forty-two"}"#);

    // One `net.request` event, with the sizes and hashes, audited, and the
    // secret nowhere.
    let events = net_events(&h, &s);
    assert_eq!(events.len(), 1, "{events:?}");
    let EventPayload::NetRequest {
        method,
        url: seen_url,
        status,
        outcome,
        request_bytes,
        response_bytes,
        request_hash,
        response_hash,
        address,
        ..
    } = &events[0].payload
    else {
        unreachable!()
    };
    assert_eq!(
        (
            method.as_str(),
            seen_url.as_str(),
            *status,
            outcome.as_str()
        ),
        ("POST", url.as_str(), 200, "ok")
    );
    assert_eq!(*request_bytes, sent_body.len() as u64);
    assert_eq!(*request_hash, hex::encode(Sha256::digest(sent_body)));
    assert_eq!(*response_bytes, 22);
    assert_eq!(
        *response_hash,
        hex::encode(Sha256::digest(br#"{"answer":"forty-two"}"#))
    );
    assert_eq!(*address, format!("127.0.0.1:{}", server.port()));
    let audited =
        h.hv.events()
            .query(&EventQuery::default().kind(EventKind::AuditDeltaCaptured))
            .iter()
            .any(|e| e.parent == Some(events[0].id));
    assert!(audited, "the net.request event has its audit delta");
    let everything = format!(
        "{:?} {:?} {answer}",
        h.hv.events()
            .query(&EventQuery::default().session(s.clone())),
        out.logs
    );
    assert!(
        !everything.contains("sekrit"),
        "the secret leaked: {everything}"
    );
}

#[tokio::test]
async fn every_destination_trick_is_refused_before_anything_is_sent() {
    let server = Server::start();
    let bait = Bait::new();
    let h = hv(&policy(server.port(), ""));
    let (s, _) = session_with(&h, "did:test:m", 0.8).await;
    let p = server.port();
    let cases = [
        // Allowed by name, but it resolves to loopback and that rule does
        // not allow private addresses.
        (
            format!("http://localhost:{p}/v1/complete"),
            "POST",
            "destination-IP-prohibited",
        ),
        (
            format!("http://LOCALHOST.:{p}/v1/complete"),
            "POST",
            "destination-IP-prohibited",
        ),
        // Other spellings of the allowed address.
        (
            format!("http://2130706433:{p}/v1/complete"),
            "POST",
            "HTTP-request-denied",
        ),
        (
            format!("http://0x7f.1:{p}/v1/complete"),
            "POST",
            "HTTP-request-denied",
        ),
        (
            format!("http://127.1:{p}/v1/complete"),
            "POST",
            "HTTP-request-denied",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{p}/v1/complete"),
            "POST",
            "destination-IP-prohibited",
        ),
        (
            format!("http://127.0.0.2:{p}/v1/complete"),
            "POST",
            "destination-IP-prohibited",
        ),
        // User info in front of an allowed host, or of a forbidden one.
        (
            format!("http://evil.example@127.0.0.1:{p}/v1/complete"),
            "POST",
            "HTTP-request-denied",
        ),
        (
            format!("http://127.0.0.1:{p}@evil.example/v1/complete"),
            "POST",
            "HTTP-request-denied",
        ),
        // The allowed host on another port, scheme or method.
        (
            format!("http://127.0.0.1:{}/v1/complete", bait.port()),
            "POST",
            "HTTP-request-denied",
        ),
        (
            format!("https://127.0.0.1:{p}/v1/complete"),
            "POST",
            "HTTP-request-denied",
        ),
        (
            format!("http://127.0.0.1:{p}/v1/complete"),
            "PUT",
            "HTTP-request-denied",
        ),
        (
            format!("http://127.0.0.1:{p}/v1/complete"),
            "DELETE",
            "HTTP-request-denied",
        ),
        // A host nobody listed.
        (
            "http://evil.example/v1/complete".to_string(),
            "POST",
            "HTTP-request-denied",
        ),
    ];
    for (url, method, code) in &cases {
        let input = format!(r#"{{"url": "{url}", "method": "{method}", "prompt": "x"}}"#);
        let out = run(&h, &s, "did:test:m", &input).await.unwrap();
        let err = out.result.clone().expect_err(url);
        assert!(
            err.contains(code),
            "{method} {url}: expected {code}, got {err:?}"
        );
        let host_lines: Vec<&str> = out
            .logs
            .iter()
            .filter(|l| l.source == LogSource::Host)
            .map(|l| l.message.as_str())
            .collect();
        let prefix = format!("net: {method} {url}: ");
        assert!(
            host_lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.len() > prefix.len()),
            "{url}: the agent's log says why: {host_lines:?}"
        );
    }
    assert_eq!(server.connections(), 0, "{:?}", server.seen());
    bait.assert_untouched();
    let events = net_events(&h, &s);
    assert_eq!(events.len(), cases.len());
    for e in &events {
        let (_, url, status, outcome) = fields(e);
        assert_eq!(status, 0, "{url}");
        assert_ne!(outcome, "ok", "{url}");
    }
}

#[tokio::test]
async fn a_redirect_is_refused_unless_the_rule_allows_it() {
    let server = Server::start();
    let p = server.port();
    let h = hv(&policy(p, ""));
    let (s, _) = session_with(&h, "did:test:m", 0.8).await;
    let input = format!(r#"{{"url": "http://127.0.0.1:{p}/redirect", "method": "GET"}}"#);
    let out = run(&h, &s, "did:test:m", &input).await.unwrap();
    let err = out.result.unwrap_err();
    assert!(err.contains("HTTP-request-denied"), "{err}");
    let (_, _, status, outcome) = fields(&net_events(&h, &s)[0]);
    assert_eq!(status, 302);
    assert!(outcome.contains("redirect 302"), "{outcome}");

    // A rule that allows redirects passes the 302 to the guest, which may
    // follow it only through the allow-list again.
    let text = policy(p, "").replace(
        "private_addresses = true",
        "private_addresses = true\nredirects = true",
    );
    let h = hv(&text);
    let (s, _) = session_with(&h, "did:test:m", 0.8).await;
    let out = run(&h, &s, "did:test:m", &input).await.unwrap();
    assert_eq!(out.result.unwrap(), r#"{"status":302,"body":""}"#);
}

#[tokio::test]
async fn bodies_over_their_limits_are_refused() {
    let server = Server::start();
    let p = server.port();
    let h = hv(&policy(p, ""));
    let (s, _) = session_with(&h, "did:test:m", 0.8).await;
    // A request body of 2 000 bytes against a limit of 1 000: refused
    // before a connection is made.
    let big = "y".repeat(2000);
    let input = format!(r#"{{"url": "http://127.0.0.1:{p}/v1/complete", "body": "{big}"}}"#);
    let out = run(&h, &s, "did:test:m", &input).await.unwrap();
    let err = out.result.unwrap_err();
    assert!(err.contains("HTTP-request-body-size"), "{err}");
    assert_eq!(server.connections(), 0, "{:?}", server.seen());
    // A response of 300 000 bytes against a limit of 100 000.
    let input = format!(r#"{{"url": "http://127.0.0.1:{p}/big", "method": "GET"}}"#);
    let out = run(&h, &s, "did:test:m", &input).await.unwrap();
    let err = out.result.unwrap_err();
    assert!(err.contains("HTTP-response-body-size"), "{err}");
    let outcomes: Vec<String> = net_events(&h, &s).iter().map(|e| fields(e).3).collect();
    assert!(
        outcomes[0].contains("request body larger than the limit of 1000"),
        "{outcomes:?}"
    );
    assert!(
        outcomes[1].contains("response body larger than the limit of 100000"),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_cut_off_at_the_policy_s_timeout() {
    let server = Server::start();
    let p = server.port();
    let h = hv(&policy(p, ""));
    let (s, _) = session_with(&h, "did:test:m", 0.8).await;
    let input = format!(r#"{{"url": "http://127.0.0.1:{p}/hang", "method": "GET"}}"#);
    let out = run(&h, &s, "did:test:m", &input).await.unwrap();
    let err = out.result.unwrap_err();
    assert!(err.contains("HTTP-response-timeout"), "{err}");
    let (_, _, _, outcome) = fields(&net_events(&h, &s)[0]);
    assert!(outcome.contains("timed out after 1.5s"), "{outcome}");
    assert_eq!(server.seen().len(), 1, "the request did arrive");
}

#[tokio::test]
async fn requests_count_against_the_ring_s_rate_limit() {
    let server = Server::start();
    let p = server.port();
    let text = format!(
        "{}\n[rate_limits.standard]\nchange = {{ rate_per_sec = 0.001, burst = 1 }}\n",
        policy(p, "")
    );
    let h = hv(&text);
    let (s, _) = session_with(&h, "did:test:m", 0.8).await;
    let input = format!(r#"{{"url": "http://127.0.0.1:{p}/v1/complete"}}"#);
    let first = run(&h, &s, "did:test:m", &input).await.unwrap();
    assert!(first.result.is_ok(), "{:?}", first.result);
    let second = run(&h, &s, "did:test:m", &input).await.unwrap();
    let err = second.result.unwrap_err();
    assert!(err.contains("rate-limited"), "{err}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn net_from_a_ring_without_it_is_a_breach_and_nothing_is_sent() {
    let server = Server::start();
    let p = server.port();
    let h = hv(&policy(p, ""));
    let input = format!(r#"{{"url": "http://127.0.0.1:{p}/v1/complete"}}"#);
    // Ring 2 without the policy's grant, and ring 3.
    for (agent, sigma, ring) in [
        ("did:test:nogrant", 0.8, Ring::Standard),
        ("did:test:low", 0.3, Ring::Sandbox),
    ] {
        let (s, joined) = session_with(&h, agent, sigma).await;
        assert_eq!(joined, ring);
        match run(&h, &s, agent, &input).await {
            Err(HypervisorError::Agent(AgentError::Trapped {
                cause: TrapCause::RingBreach(b),
                ..
            })) => {
                assert_eq!(
                    (b.capability, b.function.as_str(), b.ring),
                    (Capability::Net, "handle", ring)
                );
            }
            other => panic!("{agent}: expected a ring breach, got {other:?}"),
        }
        assert_eq!(
            h.hv.events()
                .query(
                    &EventQuery::default()
                        .session(s.clone())
                        .kind(EventKind::RingBreachDetected)
                )
                .len(),
            1
        );
    }
    assert_eq!(server.connections(), 0, "{:?}", server.seen());
}

#[tokio::test]
async fn refused_requests_leave_nothing_behind_in_the_instance() {
    // A small resource table: had refused requests stayed in it, the
    // hundredth would find it full (and the guest would trap).
    let server = Server::start();
    let p = server.port();
    let text = format!(
        "{}\n[rings.standard]\nmax_resources = 64\n[rate_limits.standard]\nchange = {{ rate_per_sec = 1000.0, burst = 1000 }}\n",
        policy(p, "")
    );
    let h = hv(&text);
    let (s, _) = session_with(&h, "did:test:m", 0.8).await;
    let refused = r#"{"url": "http://evil.example/x"}"#;
    for i in 0..100 {
        let out = run(&h, &s, "did:test:m", refused).await.unwrap();
        assert!(
            out.result
                .as_ref()
                .is_err_and(|e| e.contains("HTTP-request-denied")),
            "request {i}: {:?}",
            out.result
        );
    }
    let input = format!(r#"{{"url": "http://127.0.0.1:{p}/v1/complete"}}"#);
    let out = run(&h, &s, "did:test:m", &input).await.unwrap();
    assert!(out.result.is_ok(), "{:?}", out.result);
}

#[tokio::test]
async fn a_request_abandoned_in_flight_is_still_audited() {
    let server = Server::start();
    let p = server.port();
    let text = policy(p, "").replace("timeout_ms = 1500", "timeout_ms = 20000");
    let h = hv(&text);
    let (s, _) = session_with(&h, "did:test:m", 0.8).await;
    let (hv, session) = (h.hv.clone(), s.clone());
    let input = format!(r#"{{"url": "http://127.0.0.1:{p}/hang", "method": "GET"}}"#);
    let call = tokio::spawn(async move { hv.run_agent(&session, &id("did:test:m"), &input).await });
    ahv_tests::wait_until(
        Duration::from_secs(30),
        "the request to reach the server",
        || !server.seen().is_empty(),
    )
    .await;
    h.hv.kill_agent(&s, &id("did:test:m"), "test: abandon the request")
        .unwrap();
    let ended = within(Duration::from_secs(30), "the killed call to end", call).await;
    assert!(ended.unwrap().is_err(), "the killed call fails");
    ahv_tests::wait_until(
        Duration::from_secs(30),
        "the abandoned request's net.request event",
        || !net_events(&h, &s).is_empty(),
    )
    .await;
    let (_, _, _, outcome) = fields(&net_events(&h, &s)[0]);
    assert!(outcome.starts_with("abandoned"), "{outcome}");
}

/// A guest that keeps every response without reading or dropping it (the
/// host buffers each body, up to `max_response_bytes`) holds one of its
/// eight in-flight slots with each, across calls: the ninth request is
/// refused, so the host memory its responses take stays bounded, until it
/// drops them. Before, a finished exchange gave its slot back at once and
/// the bodies piled up (up to the resource table's size times the limit).
#[tokio::test]
async fn responses_a_guest_keeps_unread_hold_its_requests_slots() {
    let server = Server::start();
    let p = server.port();
    let text = format!(
        "{}\n[rate_limits.standard]\nchange = {{ rate_per_sec = 1000.0, burst = 1000 }}\n",
        policy(p, "")
    );
    let h = hv(&text);
    let s = h.session();
    let c = h.hv.load(ahv_agents::ABUSER).unwrap();
    h.hv.join_session(&s, JoinRequest::new(id("did:test:m"), 0.8).component(c))
        .await
        .unwrap();
    h.hv.activate_session(&s).unwrap();
    let url = format!("http://127.0.0.1:{p}/v1/complete");
    let report = |out: ahv_runtime::RunOutput| out.result.unwrap_or_else(|e| panic!("{e}"));
    let first = report(
        run(&h, &s, "did:test:m", &format!("hoard 8 {url}"))
            .await
            .unwrap(),
    );
    assert_eq!(first.matches(": status 200").count(), 8, "{first}");
    let ninth = report(
        run(&h, &s, "did:test:m", &format!("hoard 1 {url}"))
            .await
            .unwrap(),
    );
    assert!(
        ninth.contains("refused ErrorCode::ConnectionLimitReached"),
        "{ninth}"
    );
    assert_eq!(server.seen().len(), 8, "the ninth was not sent");
    let released = report(run(&h, &s, "did:test:m", "release").await.unwrap());
    assert_eq!(released, "dropped 8 responses");
    let again = report(
        run(&h, &s, "did:test:m", &format!("hoard 1 {url}"))
            .await
            .unwrap(),
    );
    assert!(again.contains("0: status 200"), "{again}");
}
