//! Outbound HTTP: the `net` capability (feature `http`).
//!
//! Requests go through WASI's `wasi:http/outgoing-handler`, which the host
//! governs: the agent needs a ring that has `net` (ring 1 by default, ring 2
//! when the policy grants it to the agent; from ring 3 a request is a ring
//! breach), and every destination must be on the agent's allow-list in the
//! host's policy (`[[net.allow]]`). A refused destination, a body over its
//! limit or a timeout is an [`HttpError`] value; credentials the policy
//! attaches to a destination are added by the host and never seen here.
//!
//! ```no_run
//! use agent_sdk::http;
//!
//! fn ask(prompt: &str) -> Result<String, String> {
//!     let response = http::post(
//!         "http://127.0.0.1:8080/v1/complete",
//!         "application/json",
//!         format!("{{\"prompt\": {prompt:?}}}").into_bytes(),
//!     )?;
//!     if response.status != 200 {
//!         return Err(format!("the model answered {}", response.status));
//!     }
//!     Ok(response.text()?)
//! }
//! ```
//!
//! Bodies are whole byte vectors (the host buffers them too, up to the
//! policy's limits); the call blocks until the response has arrived or the
//! host's timeout ends it.

use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// `http://host[:port]/path?query` or `https://…`.
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (empty for none).
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sends it.
    ///
    /// # Errors
    /// An [`HttpError`]: a malformed URL or header, a refusal by the host
    /// (not on the allow-list, a private address, a limit, a timeout), or a
    /// failure of the connection.
    pub fn send(&self) -> Result<Response, HttpError> {
        send(self)
    }
}

/// A response, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, in order, names lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as UTF-8 text.
    ///
    /// # Errors
    /// [`HttpError`] (`invalid-body`) when it is not UTF-8.
    pub fn text(&self) -> Result<String, HttpError> {
        String::from_utf8(self.body.clone())
            .map_err(|e| HttpError::new("invalid-body", format!("the body is not UTF-8: {e}")))
    }
}

/// Why a request failed: a short code and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// `invalid-url`, `invalid-header`, or the WASI `error-code` case the
    /// host answered (`HTTP-request-denied` for a destination not on the
    /// allow-list, `destination-IP-prohibited`, `HTTP-response-body-size`,
    /// `connection-timeout`, …).
    pub code: String,
    /// More about it.
    pub detail: String,
}

impl HttpError {
    fn new(code: &str, detail: impl Into<String>) -> HttpError {
        HttpError {
            code: code.to_string(),
            detail: detail.into(),
        }
    }

    fn from_code(e: &ErrorCode) -> HttpError {
        let (code, detail) = match e {
            ErrorCode::HttpRequestDenied => (
                "HTTP-request-denied",
                "the host refused the request (see the agent's log for why)".to_string(),
            ),
            ErrorCode::DestinationIpProhibited => (
                "destination-IP-prohibited",
                "the destination's address is not allowed".to_string(),
            ),
            ErrorCode::HttpRequestBodySize(n) => (
                "HTTP-request-body-size",
                format!("the request body is over the limit ({n:?} bytes)"),
            ),
            ErrorCode::HttpResponseBodySize(n) => (
                "HTTP-response-body-size",
                format!("the response body is over the limit ({n:?} bytes)"),
            ),
            ErrorCode::ConnectionTimeout => ("connection-timeout", String::new()),
            ErrorCode::HttpResponseTimeout => ("HTTP-response-timeout", String::new()),
            ErrorCode::ConnectionRefused => ("connection-refused", String::new()),
            ErrorCode::InternalError(Some(m)) => ("internal-error", m.clone()),
            other => ("error-code", format!("{other:?}")),
        };
        HttpError::new(code, detail)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "http: {}", self.code)
        } else {
            write!(f, "http: {}: {}", self.code, self.detail)
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for String {
    fn from(e: HttpError) -> String {
        e.to_string()
    }
}

/// `GET url`.
///
/// # Errors
/// As [`Request::send`].
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::new("GET", url).send()
}

/// `POST url` with a body of `content_type`.
///
/// # Errors
/// As [`Request::send`].
pub fn post(url: &str, content_type: &str, body: Vec<u8>) -> Result<Response, HttpError> {
    Request::new("POST", url)
        .header("content-type", content_type)
        .body(body)
        .send()
}

/// Splits `scheme://authority/path?query`.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let bad = |why: &str| HttpError::new("invalid-url", format!("{url:?}: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(bad("the scheme is neither http nor https")),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

fn send(request: &Request) -> Result<Response, HttpError> {
    let (scheme, authority, path) = split_url(&request.url)?;
    let entries: Vec<(String, Vec<u8>)> = request.headers.clone();
    let headers = Fields::from_list(&entries)
        .map_err(|e| HttpError::new("invalid-header", format!("{e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    let invalid = |what: &str| HttpError::new("invalid-url", format!("{what} refused"));
    outgoing
        .set_method(&method)
        .map_err(|()| invalid("the method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("the scheme"))?;
    outgoing
        .set_authority(Some(authority))
        .map_err(|()| invalid("the authority"))?;
    outgoing
        .set_path_with_query(Some(path))
        .map_err(|()| invalid("the path"))?;
    let body = outgoing
        .body()
        .map_err(|()| HttpError::new("internal-error", "the request body was taken"))?;
    // Send first, then write the body: the host reads it while it arrives.
    let future = outgoing_handler::handle(outgoing, None).map_err(|e| HttpError::from_code(&e))?;
    {
        let stream = body
            .write()
            .map_err(|()| HttpError::new("internal-error", "the body stream was taken"))?;
        for chunk in request.body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| HttpError::new("request-body", stream_error(e)))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| HttpError::from_code(&e))?;
    future.subscribe().block();
    let incoming = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(HttpError::from_code(&e)),
        Some(Err(())) | None => {
            return Err(HttpError::new(
                "internal-error",
                "the response was not ready after waiting for it",
            ));
        }
    };
    let status = incoming.status();
    let headers = incoming.headers().entries();
    let body = incoming
        .consume()
        .map_err(|()| HttpError::new("internal-error", "the response body was taken"))?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| HttpError::new("internal-error", "the body stream was taken"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(HttpError::new("response-body", stream_error(e))),
            }
        }
    }
    let _trailers = IncomingBody::finish(body);
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "the stream closed".to_string(),
        StreamError::LastOperationFailed(err) => err.to_debug_string(),
    }
}
