//! `net`: outbound HTTP, as WASI's `wasi:http/outgoing-handler`, behind the
//! gate and the agent's allow-list.
//!
//! `wasi:http/types` (building requests, reading responses) is linked in
//! every ring and grants nothing. Sending — `outgoing-handler.handle` — is
//! the `net` capability and goes, in order, through:
//! 1. the gate: killed, quarantined, outside the effective ring (a breach:
//!    recorded, then the trap), rate limit (a change);
//! 2. the allow-list ([`NetAccess::check`]): method, scheme, host, port, and
//!    a strict reading of the authority; a refusal is the error value
//!    `HTTP-request-denied` (or `destination-IP-prohibited` for an IP
//!    literal) with the reason in the agent's log;
//! 3. then, off the guest's call, in the request's own task bounded by the
//!    policy's timeouts: the request body is collected up to its limit, the
//!    name is resolved and every address vetted ([`Permit::vet`]: no
//!    loopback, private, link-local … unless the rule allows them), the host
//!    connects to the address it vetted (never resolving twice), adds the
//!    rule's credential (which the guest never sees), sends, refuses a
//!    redirect unless the rule allows it, and collects the response body up
//!    to its limit.
//!
//! Every request that passed the gate — sent or refused — is a `net.request`
//! event in the agent's session (and so an audit delta): method, URL,
//! status, sizes, SHA-256 of both bodies, the address, the time, and the
//! outcome. The credential is never in it.
//!
//! Bodies are buffered (bounded by the limits) rather than streamed: the
//! audit record needs both hashes, and a guest cannot hold a connection
//! open past the timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ahv_core::event::EventPayload;
use ahv_core::{AgentId, Capability, TraceId};
use ahv_governance::session_core::SessionCore;
use ahv_security::net::{Host, NetAccess, NetLimits, NetRefusal, Permit};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::outgoing_handler;
use wasmtime_wasi_http::p2::bindings::http::types::{self, ErrorCode, Scheme};
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{
    Error as SendError, RequestOptions, WasiBody, WasiHttp, WasiHttpCtx, WasiHttpCtxView,
    WasiHttpHooks,
};

use crate::adapters::HostError;
use crate::bindings::WitError;
use crate::state::{AgentState, LogBuffer, LogLevel, LogSource};

/// The `net` capability's state in one agent instance.
pub(crate) struct Ctx {
    /// The agent's allow-list and limits (empty: every request refused).
    pub(crate) access: Arc<NetAccess>,
    /// The wasi:http context (field size limits).
    pub(crate) http: WasiHttpCtx,
    /// The sender the wasi:http implementation calls.
    pub(crate) hooks: Hooks,
}

impl Ctx {
    pub(crate) fn new(
        access: Arc<NetAccess>,
        agent: AgentId,
        shared: Option<Arc<SessionCore>>,
        log: Arc<Mutex<LogBuffer>>,
    ) -> Ctx {
        Ctx {
            access,
            http: WasiHttpCtx::new(),
            hooks: Hooks {
                next: None,
                reporter: Arc::new(Reporter { agent, shared, log }),
            },
        }
    }
}

/// Where a request's outcome goes: the session's events (its audit log)
/// and the agent's log.
struct Reporter {
    agent: AgentId,
    shared: Option<Arc<SessionCore>>,
    log: Arc<Mutex<LogBuffer>>,
}

impl Reporter {
    fn report(&self, trace: TraceId, record: Record) {
        if record.outcome != "ok" {
            self.log.lock().unwrap_or_else(|p| p.into_inner()).push(
                LogLevel::Warn,
                LogSource::Host,
                &format!(
                    "net: {} {} refused or failed: {}",
                    record.method, record.url, record.outcome
                ),
            );
        }
        let payload = EventPayload::NetRequest {
            method: record.method,
            url: record.url,
            status: u64::from(record.status),
            outcome: record.outcome,
            request_bytes: record.request_bytes,
            response_bytes: record.response_bytes,
            request_hash: record.request_hash,
            response_hash: record.response_hash,
            address: record.address,
            elapsed_ms: u64::try_from(record.elapsed.as_millis()).unwrap_or(u64::MAX),
        };
        match &self.shared {
            Some(core) => core.record(&self.agent, trace, payload),
            None => tracing::info!(agent = %self.agent, ?payload, "net request (no session)"),
        }
    }
}

/// What one request's audit record holds.
struct Record {
    method: String,
    url: String,
    status: u16,
    outcome: String,
    request_bytes: u64,
    response_bytes: u64,
    request_hash: String,
    response_hash: String,
    address: String,
    elapsed: Duration,
}

impl Record {
    fn new(method: &str, url: &str) -> Record {
        let empty = hex::encode(Sha256::digest(b""));
        Record {
            method: method.to_string(),
            url: url.to_string(),
            status: 0,
            outcome: String::new(),
            request_bytes: 0,
            response_bytes: 0,
            request_hash: empty.clone(),
            response_hash: empty,
            address: String::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// A request `handle` allowed, waiting for the wasi:http implementation to
/// hand it to [`Hooks::send_request`] (which it does within the same call).
struct Next {
    permit: Permit,
    limits: NetLimits,
    record: Record,
    trace: TraceId,
}

/// The wasi:http hooks of one instance: the sender.
pub(crate) struct Hooks {
    next: Option<Next>,
    reporter: Arc<Reporter>,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = Result<(), SendError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), SendError>> + Send>,
                    ),
                    SendError,
                >,
            > + Send,
    > {
        let next = self.next.take();
        let reporter = self.reporter.clone();
        Box::new(async move {
            // `handle` sets `next` right before it delegates; nothing else
            // calls this hook.
            let Some(next) = next else {
                return Err(SendError::InternalError(Some(
                    "net: a request reached the sender without passing the allow-list".into(),
                )));
            };
            let trace = next.trace;
            let (result, record) = send(next, request, options).await;
            reporter.report(trace, record);
            let response = result?;
            let done: Box<dyn Future<Output = Result<(), SendError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// `outgoing-handler.handle`: the gate, the allow-list, then wasi:http's own
/// `handle` (which validates the request and hands it to [`Hooks`]).
/// Returns the guest's `result` (a refusal is an error value), or a trap.
fn handle(
    s: &mut AgentState,
    request: Resource<HostOutgoingRequest>,
    options: Option<Resource<types::RequestOptions>>,
) -> wasmtime::Result<Result<Resource<HostFutureIncomingResponse>, ErrorCode>> {
    let (gate, ctx, table) = s.net_parts();
    let (method, url, scheme, authority) = {
        let req = table.get(&request)?;
        let method = method_name(&req.method);
        let scheme = match &req.scheme {
            None | Some(Scheme::Https) => "https".to_string(),
            Some(Scheme::Http) => "http".to_string(),
            Some(Scheme::Other(s)) => s.clone(),
        };
        let authority = req.authority.clone().unwrap_or_default();
        let path = req.path_with_query.clone().unwrap_or_default();
        let url = format!("{scheme}://{authority}{path}");
        (method, url, scheme, authority)
    };
    let refuse = |ctx: &Ctx, trace: TraceId, code: ErrorCode, outcome: String| {
        let mut record = Record::new(&method, &url);
        record.outcome = outcome;
        ctx.hooks.reporter.report(trace, record);
        Ok(Err(code))
    };
    match gate.admit(Capability::Net, "handle") {
        Ok(_) => {}
        Err(HostError::Trap(e)) => return Err(e),
        Err(HostError::Refused(e)) => {
            let (code, why) = match e {
                WitError::RateLimited(ms) => (
                    ErrorCode::InternalError(Some(format!("rate-limited: retry after {ms} ms"))),
                    format!("rate-limited (retry after {ms} ms)"),
                ),
                other => (ErrorCode::HttpRequestDenied, format!("{other:?}")),
            };
            return refuse(ctx, gate.trace, code, why);
        }
    }
    let permit = match ctx.access.check(&method, &scheme, &authority) {
        Ok(permit) => permit,
        Err(refusal) => {
            let code = match refusal {
                NetRefusal::IpLiteral { .. } | NetRefusal::PrivateAddress { .. } => {
                    ErrorCode::DestinationIpProhibited
                }
                _ => ErrorCode::HttpRequestDenied,
            };
            return refuse(ctx, gate.trace, code, refusal.to_string());
        }
    };
    ctx.hooks.next = Some(Next {
        permit,
        limits: *ctx.access.limits(),
        record: Record::new(&method, &url),
        trace: gate.trace,
    });
    let mut view = WasiHttpCtxView {
        ctx: &mut ctx.http,
        table,
        hooks: &mut ctx.hooks,
    };
    let result = outgoing_handler::Host::handle(&mut view, request, options);
    // Refused before reaching the sender (a malformed request): nothing was
    // sent; the permit must not be left for another request.
    if ctx.hooks.next.take().is_some() {
        let mut record = Record::new(&method, &url);
        record.outcome = "malformed request (refused by wasi:http before sending)".into();
        ctx.hooks.reporter.report(gate.trace, record);
    }
    match result {
        Ok(future) => Ok(Ok(future)),
        Err(e) => e.downcast().map(Err),
    }
}

fn method_name(m: &types::Method) -> String {
    use types::Method;
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

/// Links `wasi:http/types` (free) and `wasi:http/outgoing-handler` (this
/// capability, through the gate). `handle` is defined by hand rather than
/// by the generated `add_to_linker`, whose view type must implement all of
/// `wasi:http/types` too; its resources are the ones `types` defines, so
/// the types match.
pub(crate) fn add_to_linker(l: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::p2::bindings::LinkOptions;
    types::add_to_linker::<_, WasiHttp>(
        l,
        &LinkOptions::default().into(),
        |s: &mut AgentState| {
            let (_, ctx, table) = s.net_parts();
            WasiHttpCtxView {
                ctx: &mut ctx.http,
                table,
                hooks: &mut ctx.hooks,
            }
        },
    )?;
    l.instance(ahv_core::NET_INSTANCE)?.func_wrap(
        "handle",
        |mut store: wasmtime::StoreContextMut<'_, AgentState>,
         (request, options): (
            Resource<HostOutgoingRequest>,
            Option<Resource<types::RequestOptions>>,
        )| { handle(store.data_mut(), request, options).map(|r| (r,)) },
    )?;
    Ok(())
}

type Sent = Result<http::Response<WasiBody>, SendError>;

/// Sends one allowed request; returns the response for the guest and the
/// audit record (whatever happened).
async fn send(
    next: Next,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> (Sent, Record) {
    let Next {
        permit,
        limits,
        mut record,
        ..
    } = next;
    let started = Instant::now();
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .map_or(limits.connect_timeout, |t| t.min(limits.connect_timeout));
    let result = match tokio::time::timeout(
        limits.timeout,
        exchange(&permit, &limits, connect_timeout, request, &mut record),
    )
    .await
    {
        Ok(Ok(response)) => {
            record.outcome = "ok".into();
            Ok(response)
        }
        Ok(Err((error, why))) => {
            record.outcome = why;
            Err(error)
        }
        Err(_) => {
            record.outcome = format!("timed out after {:?}", limits.timeout);
            Err(SendError::HttpResponseTimeout)
        }
    };
    record.elapsed = started.elapsed();
    (result, record)
}

type Failure = (SendError, String);

async fn exchange(
    permit: &Permit,
    limits: &NetLimits,
    connect_timeout: Duration,
    request: http::Request<WasiBody>,
    record: &mut Record,
) -> Result<http::Response<WasiBody>, Failure> {
    let (mut parts, body) = request.into_parts();
    // The request body, whole, up to its limit.
    let body = collect(body, limits.max_request_bytes)
        .await
        .map_err(|e| match e {
            Collect::TooLarge => (
                SendError::HttpRequestBodySize(Some(limits.max_request_bytes)),
                format!(
                    "request body larger than the limit of {} bytes",
                    limits.max_request_bytes
                ),
            ),
            Collect::Failed(m) => (
                SendError::HttpRequestBodySize(None),
                format!("request body: {m}"),
            ),
        })?;
    record.request_bytes = body.len() as u64;
    record.request_hash = hex::encode(Sha256::digest(&body));

    // Resolve, vet, connect — within the connect timeout.
    let stream = tokio::time::timeout(connect_timeout, connect(permit, record))
        .await
        .map_err(|_| {
            (
                SendError::ConnectionTimeout,
                format!("no connection within {connect_timeout:?}"),
            )
        })??;

    // The request as it goes on the wire: origin-form URI, the rule's
    // credential (replacing any the guest set), the body's real length.
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_string();
    parts.uri = http::Uri::try_from(path).map_err(|e| {
        (
            SendError::HttpRequestUriInvalid,
            format!("request path: {e}"),
        )
    })?;
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    if let Some(c) = &permit.credential {
        let name = http::HeaderName::from_bytes(c.header.as_bytes()).map_err(|e| {
            (
                SendError::InternalError(None),
                format!("credential header: {e}"),
            )
        })?;
        let mut value = http::HeaderValue::from_str(c.value.expose()).map_err(|_| {
            (
                SendError::InternalError(None),
                "credential value is not a valid header value".to_string(),
            )
        })?;
        value.set_sensitive(true);
        parts.headers.insert(name, value);
    }
    let request = http::Request::from_parts(parts, Full::new(body));

    let (mut sender, conn) = hyper::client::conn::http1::handshake(stream)
        .await
        .map_err(|e| (SendError::ConnectionTerminated, format!("handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| (SendError::ConnectionTerminated, format!("sending: {e}")))?;
        record.status = response.status().as_u16();
        if response.status().is_redirection() && !permit.redirects {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Err((
                SendError::HttpRequestDenied,
                format!(
                    "redirect {} to {location:?} refused (the rule does not allow redirects)",
                    response.status().as_u16()
                ),
            ));
        }
        let (parts, body) = response.into_parts();
        let body = collect(body, limits.max_response_bytes)
            .await
            .map_err(|e| match e {
                Collect::TooLarge => (
                    SendError::HttpResponseBodySize(Some(limits.max_response_bytes)),
                    format!(
                        "response body larger than the limit of {} bytes",
                        limits.max_response_bytes
                    ),
                ),
                Collect::Failed(m) => (
                    SendError::HttpResponseIncomplete,
                    format!("response body: {m}"),
                ),
            })?;
        record.response_bytes = body.len() as u64;
        record.response_hash = hex::encode(Sha256::digest(&body));
        let mut parts = parts;
        parts.headers.remove(http::header::TRANSFER_ENCODING);
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(body.len()),
        );
        Ok(http::Response::from_parts(
            parts,
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        ))
    }
    .await;
    conn.abort();
    result
}

enum Collect {
    TooLarge,
    Failed(String),
}

/// Reads a body whole, refusing it as soon as it passes `limit` bytes.
async fn collect<B>(body: B, limit: u64) -> Result<Bytes, Collect>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    if body.size_hint().lower() > limit {
        return Err(Collect::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Collect::Failed(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > limit {
                return Err(Collect::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// A byte stream hyper can drive: plain TCP or TLS.
trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Conn for T {}

/// A connection to the vetted address, as hyper's I/O.
type Stream = TokioIo<Box<dyn Conn>>;

/// Resolves the permit's host (or takes its literal), vets every address,
/// connects to the first that passes.
async fn connect(permit: &Permit, record: &mut Record) -> Result<Stream, Failure> {
    let addrs: Vec<SocketAddr> = match &permit.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, permit.port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), permit.port))
            .await
            .map_err(|e| {
                (
                    SendError::DnsError {
                        rcode: None,
                        info_code: None,
                    },
                    format!("resolving {name}: {e}"),
                )
            })?
            .collect(),
    };
    let mut refusal = None;
    let mut last_error = None;
    for addr in addrs {
        if let Err(r) = permit.vet(addr) {
            refusal.get_or_insert(r);
            continue;
        }
        record.address = addr.to_string();
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let conn: Box<dyn Conn> = if permit.tls {
                    Box::new(tls(permit, tcp).await?)
                } else {
                    Box::new(tcp)
                };
                return Ok(TokioIo::new(conn));
            }
            Err(e) => last_error = Some(format!("connecting to {addr}: {e}")),
        }
    }
    match (refusal, last_error) {
        (_, Some(e)) => Err((SendError::ConnectionRefused, e)),
        (Some(r), None) => Err((SendError::DestinationIpProhibited, r.to_string())),
        (None, None) => Err((
            SendError::DestinationNotFound,
            format!("{} has no address", permit.host),
        )),
    }
}

/// The TLS client configuration: the ring provider, Mozilla's roots.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Failure> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| {
            (
                SendError::TlsProtocolError,
                format!("TLS configuration: {e}"),
            )
        })
}

async fn tls(
    permit: &Permit,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Failure> {
    let name = match &permit.host {
        Host::Name(n) => rustls::pki_types::ServerName::try_from(n.clone()),
        Host::Ip(ip) => Ok(rustls::pki_types::ServerName::IpAddress((*ip).into())),
    }
    .map_err(|e| (SendError::TlsProtocolError, format!("TLS server name: {e}")))?;
    tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            (
                SendError::TlsCertificateError,
                format!("TLS handshake: {e}"),
            )
        })
}
