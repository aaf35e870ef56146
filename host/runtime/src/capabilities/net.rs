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
use std::sync::atomic::{AtomicUsize, Ordering};
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
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS);
        Ctx {
            access,
            http,
            hooks: Hooks {
                next: None,
                reporter: Arc::new(Reporter { agent, shared, log }),
                in_flight: Arc::new(AtomicUsize::new(0)),
            },
        }
    }
}

/// The `net` capability's context as a store holds it: made at the
/// instance's first use of `net` (most agents never use it, and every
/// instantiation makes a store).
pub(crate) struct LazyCtx {
    access: Arc<NetAccess>,
    ctx: Option<Box<Ctx>>,
}

impl LazyCtx {
    /// Nothing made yet; `access` is the agent's allow-list and limits.
    pub(crate) fn new(access: Arc<NetAccess>) -> LazyCtx {
        LazyCtx { access, ctx: None }
    }

    /// The context, made by `make` (given the access) on first use.
    pub(crate) fn get_or_make(&mut self, make: impl FnOnce(Arc<NetAccess>) -> Ctx) -> &mut Ctx {
        let access = &self.access;
        self.ctx
            .get_or_insert_with(|| Box::new(make(access.clone())))
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
    /// A line in the agent's log (the current call's: a request that ends
    /// after its call did lands in the next call's log).
    fn log(&self, method: &str, url: &str, outcome: &str) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(
            LogLevel::Warn,
            LogSource::Host,
            &format!("net: {method} {url}: {outcome}"),
        );
    }

    fn report(&self, trace: TraceId, record: Record) {
        if record.outcome != "ok" {
            self.log(&record.method, &record.url, &record.outcome);
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

/// Longest URL kept in a record (the rest is cut, with its length noted).
const MAX_RECORDED_URL: usize = 2048;

impl Record {
    fn new(method: &str, url: &str) -> Record {
        let empty = hex::encode(Sha256::digest(b""));
        let url = if url.len() > MAX_RECORDED_URL {
            let mut end = MAX_RECORDED_URL;
            while !url.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}… ({} bytes)", &url[..end], url.len())
        } else {
            url.to_string()
        };
        Record {
            method: method.to_string(),
            url,
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
    audit: Audit,
}

/// Most requests of one instance in flight at once, counting those whose
/// response the guest still holds: each may hold its request body (up to
/// the limit) and a connection until its timeout, and then its response
/// body (up to the limit) until the guest drops the response. So what
/// `net` keeps in host memory for one instance is bounded by this times
/// the policy's body limits, whatever the guest does.
pub(crate) const MAX_IN_FLIGHT: usize = 8;

/// One of an instance's [`MAX_IN_FLIGHT`] slots, given back when dropped:
/// with the request's audit record until the exchange ends, then with the
/// response's body until the guest drops it.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request's audit record from the moment it passed the allow-list:
/// reported when the exchange ends, or — if the guest drops the response
/// future, or its instance ends, before that — reported as abandoned when
/// the exchange is dropped. Holds one of the instance's in-flight slots
/// until the exchange ends (a response's body takes it over).
struct Audit {
    reporter: Arc<Reporter>,
    trace: TraceId,
    record: Option<Record>,
    started: Instant,
    slot: Option<Slot>,
}

impl Audit {
    fn record(&mut self) -> &mut Record {
        self.record.get_or_insert_with(|| Record::new("?", "?"))
    }

    fn finish(mut self, outcome: String) {
        if let Some(mut record) = self.record.take() {
            record.outcome = outcome;
            record.elapsed = self.started.elapsed();
            self.reporter.report(self.trace, record);
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.outcome =
                "abandoned: the guest dropped the response, or its instance ended, before the exchange finished"
                    .into();
            record.elapsed = self.started.elapsed();
            self.reporter.report(self.trace, record);
        }
    }
}

/// The wasi:http hooks of one instance: the sender.
pub(crate) struct Hooks {
    next: Option<Next>,
    reporter: Arc<Reporter>,
    in_flight: Arc<AtomicUsize>,
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
        // `handle` sets `next` right before it delegates; nothing else
        // calls this hook. Taken here, outside the future, so that the audit
        // record travels with the future even if it is never polled.
        let next = self.next.take();
        Box::new(async move {
            let Some(next) = next else {
                return Err(SendError::InternalError(Some(
                    "net: a request reached the sender without passing the allow-list".into(),
                )));
            };
            let response = send(next, request, options).await?;
            let done: Box<dyn Future<Output = Result<(), SendError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    /// Each write into a request body is at most this long, so a request
    /// body the host has not read yet holds at most one such chunk.
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        MAX_BODY_CHUNK
    }
}

/// Longest authority a request may name (a host name of 253 bytes, a port).
const MAX_AUTHORITY: usize = 261;
/// Longest method name.
const MAX_METHOD: usize = 32;
/// Longest path and query a request may carry (checked when it is set).
const MAX_PATH: usize = 8 * 1024;
/// Largest header section of a request or response object the guest
/// builds (wasi:http's field size limit; its default is 128 KiB).
const MAX_FIELDS: usize = 32 * 1024;
/// Largest single write into a request body.
const MAX_BODY_CHUNK: usize = 64 * 1024;

/// `outgoing-handler.handle`: the gate, the allow-list, then wasi:http's own
/// `handle` (which validates the request and hands it to [`Hooks`]).
/// Returns the guest's `result` (a refusal is an error value), or a trap.
/// The request (and its options) belong to the call: whatever the answer,
/// they leave the instance's resource table.
fn handle(
    s: &mut AgentState,
    request: Resource<HostOutgoingRequest>,
    options: Option<Resource<types::RequestOptions>>,
) -> wasmtime::Result<Result<Resource<HostFutureIncomingResponse>, ErrorCode>> {
    let (gate, ctx, table) = s.net_parts();
    let options_rep = options.as_ref().map(Resource::rep);
    let discard = |table: &mut wasmtime::component::ResourceTable,
                   request: Resource<HostOutgoingRequest>| {
        let _ = table.delete(request);
        if let Some(rep) = options_rep {
            let _ = table.delete(Resource::<types::RequestOptions>::new_own(rep));
        }
    };
    let (method, url, scheme, authority) = {
        let req = table.get(&request)?;
        let method = method_name(&req.method);
        let scheme = match &req.scheme {
            None | Some(Scheme::Https) => "https".to_string(),
            Some(Scheme::Http) => "http".to_string(),
            Some(Scheme::Other(s)) => s.clone(),
        };
        let authority = req.authority.clone().unwrap_or_default();
        let path = req.path_with_query.as_deref().unwrap_or_default();
        let url = format!("{scheme}://{authority}{path}");
        (method, url, scheme, authority)
    };
    let trace = gate.trace;
    match gate.admit(Capability::Net, "handle") {
        Ok(_) => {}
        Err(HostError::Trap(e)) => {
            discard(table, request);
            return Err(e);
        }
        // Refused by the gate (rate limit, quarantine): the gate reports
        // those itself, sparingly; here only the agent's log says so.
        Err(HostError::Refused(e)) => {
            discard(table, request);
            let (code, why) = match e {
                WitError::RateLimited(ms) => (
                    ErrorCode::InternalError(Some(format!("rate-limited: retry after {ms} ms"))),
                    format!("rate-limited (retry after {ms} ms)"),
                ),
                other => (ErrorCode::HttpRequestDenied, format!("{other:?}")),
            };
            ctx.hooks
                .reporter
                .log(&method, &Record::new(&method, &url).url, &why);
            return Ok(Err(code));
        }
    }
    let refuse = |ctx: &Ctx, code: ErrorCode, outcome: String| {
        let mut record = Record::new(&method, &url);
        record.outcome = outcome;
        ctx.hooks.reporter.report(trace, record);
        Ok(Err(code))
    };
    if authority.len() > MAX_AUTHORITY || method.len() > MAX_METHOD {
        discard(table, request);
        return refuse(
            ctx,
            ErrorCode::HttpRequestUriInvalid,
            format!(
                "an authority of {} bytes or a method of {} (at most {MAX_AUTHORITY} and {MAX_METHOD})",
                authority.len(),
                method.len()
            ),
        );
    }
    let permit = match ctx.access.check(&method, &scheme, &authority) {
        Ok(permit) => permit,
        Err(refusal) => {
            discard(table, request);
            let code = match refusal {
                NetRefusal::IpLiteral { .. } | NetRefusal::PrivateAddress { .. } => {
                    ErrorCode::DestinationIpProhibited
                }
                _ => ErrorCode::HttpRequestDenied,
            };
            return refuse(ctx, code, refusal.to_string());
        }
    };
    if ctx.hooks.in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
        discard(table, request);
        return refuse(
            ctx,
            ErrorCode::ConnectionLimitReached,
            format!(
                "{MAX_IN_FLIGHT} requests of this agent are in flight, or hold responses it has not dropped"
            ),
        );
    }
    ctx.hooks.in_flight.fetch_add(1, Ordering::AcqRel);
    let slot = Slot(ctx.hooks.in_flight.clone());
    ctx.hooks.next = Some(Next {
        permit,
        limits: *ctx.access.limits(),
        audit: Audit {
            reporter: ctx.hooks.reporter.clone(),
            trace,
            record: Some(Record::new(&method, &url)),
            started: Instant::now(),
            slot: Some(slot),
        },
    });
    let mut view = WasiHttpCtxView {
        ctx: &mut ctx.http,
        table,
        hooks: &mut ctx.hooks,
    };
    let result = outgoing_handler::Host::handle(&mut view, request, options);
    // wasi:http reads the options but leaves them in the table.
    if let Some(rep) = options_rep {
        let _ = table.delete(Resource::<types::RequestOptions>::new_own(rep));
    }
    // Refused before reaching the sender (a malformed request): nothing was
    // sent; the permit must not be left for another request.
    if let Some(next) = ctx.hooks.next.take() {
        next.audit
            .finish("malformed request (refused by wasi:http before sending)".into());
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

fn http_view<'a>(
    ctx: &'a mut Ctx,
    table: &'a mut wasmtime::component::ResourceTable,
) -> WasiHttpCtxView<'a> {
    WasiHttpCtxView {
        ctx: &mut ctx.http,
        table,
        hooks: &mut ctx.hooks,
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
    // Shadow the three setters that take a guest string without a bound,
    // so that requests a guest builds (in any ring: `types` is free) hold
    // little host memory: the method, the authority and the path.
    l.allow_shadowing(true);
    let mut inst = l.instance("wasi:http/types@0.2.12")?;
    inst.func_wrap(
        "[method]outgoing-request.set-method",
        |mut store: wasmtime::StoreContextMut<'_, AgentState>,
         (request, method): (Resource<HostOutgoingRequest>, types::Method)| {
            if method_name(&method).len() > MAX_METHOD {
                return Ok((Err(()),));
            }
            let (_, ctx, table) = store.data_mut().net_parts();
            types::HostOutgoingRequest::set_method(&mut http_view(ctx, table), request, method)
                .map(|r| (r,))
        },
    )?;
    inst.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store: wasmtime::StoreContextMut<'_, AgentState>,
         (request, authority): (Resource<HostOutgoingRequest>, Option<String>)| {
            if authority.as_ref().is_some_and(|a| a.len() > MAX_AUTHORITY) {
                return Ok((Err(()),));
            }
            let (_, ctx, table) = store.data_mut().net_parts();
            types::HostOutgoingRequest::set_authority(
                &mut http_view(ctx, table),
                request,
                authority,
            )
            .map(|r| (r,))
        },
    )?;
    inst.func_wrap(
        "[method]outgoing-request.set-path-with-query",
        |mut store: wasmtime::StoreContextMut<'_, AgentState>,
         (request, path): (Resource<HostOutgoingRequest>, Option<String>)| {
            if path.as_ref().is_some_and(|p| p.len() > MAX_PATH) {
                return Ok((Err(()),));
            }
            let (_, ctx, table) = store.data_mut().net_parts();
            types::HostOutgoingRequest::set_path_with_query(
                &mut http_view(ctx, table),
                request,
                path,
            )
            .map(|r| (r,))
        },
    )?;
    l.allow_shadowing(false);
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

/// Sends one allowed request; returns the response for the guest. The
/// audit record is reported whatever happens (see [`Audit`]).
async fn send(
    next: Next,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<http::Response<WasiBody>, SendError> {
    let Next {
        permit,
        limits,
        mut audit,
    } = next;
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .map_or(limits.connect_timeout, |t| t.min(limits.connect_timeout));
    let result = tokio::time::timeout(
        limits.timeout,
        exchange(&permit, &limits, connect_timeout, request, audit.record()),
    )
    .await;
    match result {
        Ok(Ok(response)) => {
            // The body holds the slot until the guest drops it.
            let slot = audit.slot.take();
            audit.finish("ok".into());
            Ok(response.map(|body| {
                body.map_frame(move |frame| {
                    let _held = &slot;
                    frame
                })
                .boxed_unsync()
            }))
        }
        Ok(Err((error, why))) => {
            audit.finish(why);
            Err(error)
        }
        Err(_) => {
            audit.finish(format!("timed out after {:?}", limits.timeout));
            Err(SendError::HttpResponseTimeout)
        }
    }
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
    let body = collect(
        body,
        limits.max_request_bytes,
        "request",
        SendError::HttpRequestBodySize(Some(limits.max_request_bytes)),
        SendError::HttpRequestBodySize(None),
    )
    .await?;
    record.request_bytes = body.len() as u64;
    record.request_hash = hex::encode(Sha256::digest(&body));

    // The request as it goes on the wire: origin-form URI (a bare query
    // gets its `/`), checked before any connection.
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    parts.uri = http::Uri::try_from(path).map_err(|e| {
        (
            SendError::HttpRequestUriInvalid,
            format!("request path: {e}"),
        )
    })?;

    // Resolve, vet, connect — within the connect timeout.
    let stream = tokio::time::timeout(connect_timeout, connect(permit, record))
        .await
        .map_err(|_| {
            (
                SendError::ConnectionTimeout,
                format!("no connection within {connect_timeout:?}"),
            )
        })??;

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
    // The connection's task ends with the exchange, however it ends (a
    // timeout or an abandoned request drops this future).
    let _conn = AbortOnDrop(tokio::spawn(conn));
    async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| (SendError::ConnectionTerminated, format!("sending: {e}")))?;
        record.status = response.status().as_u16();
        let redirect = matches!(record.status, 301 | 302 | 303 | 307 | 308);
        if redirect && !permit.redirects {
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
        let body = collect(
            body,
            limits.max_response_bytes,
            "response",
            SendError::HttpResponseBodySize(Some(limits.max_response_bytes)),
            SendError::HttpResponseIncomplete,
        )
        .await?;
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
    .await
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the `what` body ("request" or "response") whole, refusing it as
/// soon as it passes `limit` bytes (`too_large`); a body that fails to
/// arrive is `failed`. Each failure names the body and why.
async fn collect<B>(
    body: B,
    limit: u64,
    what: &str,
    too_large: SendError,
    failed: SendError,
) -> Result<Bytes, Failure>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let too_large = || {
        (
            too_large,
            format!("{what} body larger than the limit of {limit} bytes"),
        )
    };
    if body.size_hint().lower() > limit {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Err((failed, format!("{what} body: {e}"))),
        };
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > limit {
                return Err(too_large());
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
        // A dotted name is looked up as an absolute name (a trailing dot), so
        // the resolver's search list cannot turn `api.example.com` into
        // `api.example.com.<search domain>`; a single-label name (only ever
        // allowed by a rule naming it exactly, like `localhost`) is looked up
        // as it is, which is how the hosts file answers it.
        Host::Name(name) => tokio::net::lookup_host((
            if name.contains('.') {
                format!("{name}.")
            } else {
                name.clone()
            },
            permit.port,
        ))
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
