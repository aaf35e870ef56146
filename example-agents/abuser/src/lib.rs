//! `abuser` — hostile: hands the host data that is too big, too many or
//! malformed, and leaves by the back door. One mode per input:
//!
//! - `exit:N` — calls WASI `exit(N)` (even 0) instead of answering;
//! - `bad-utf8` — answers with bytes that are not UTF-8;
//! - `bad-utf8-log` — logs a line that is not UTF-8;
//! - `random:N` — asks WASI for N random bytes at once;
//! - `handles:N` — keeps N WASI pollables alive (fills the resource table);
//! - `log-lines:N` — logs N empty lines;
//! - `newlines:KIB` — writes KIB KiB of bare newlines to stdout, 64 KiB per write;
//! - `big-log:MIB` — logs one line of MIB MiB;
//! - `write:BYTES` — writes a file of BYTES bytes (`big.bin`), answers what the host said;
//! - `put:BYTES` — writes a state value of BYTES bytes (in a session);
//! - `answer:BYTES` — answers with BYTES bytes;
//! - `hoard N URL` — sends N `GET`s to `http://…` URL one after the other
//!   and keeps every response without reading or dropping it (they stay in
//!   the instance for later calls); answers one line per request;
//! - `release` — drops the responses `hoard` kept.

// Producing strings that are not UTF-8 is this test instrument's point.
#![allow(unsafe_code)]

use std::io::Write;

use agent_sdk::{Agent, export_agent, log, state, vfs};

struct Abuser;

fn number(s: &str) -> Result<u64, String> {
    s.trim().parse().map_err(|e| format!("{s:?}: {e}"))
}

/// A `String` holding `bytes` as they are, valid UTF-8 or not: the lie a
/// hostile guest tells the canonical ABI.
fn raw_string(bytes: Vec<u8>) -> String {
    // SAFETY: not safe in Rust terms: the string is only handed to the host
    // (which must refuse it) and never inspected here.
    unsafe { String::from_utf8_unchecked(bytes) }
}

thread_local! {
    /// The responses `hoard` keeps, unread.
    static HOARD: std::cell::RefCell<Vec<wasip2::http::types::IncomingResponse>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends `n` `GET`s to `url` and keeps each response unread.
fn hoard(n: u64, url: &str) -> Result<String, String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let rest = url.strip_prefix("http://").ok_or("an http:// URL")?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let mut lines = Vec::new();
    for i in 0..n {
        let request = OutgoingRequest::new(Fields::new());
        let set = request.set_method(&Method::Get).is_ok()
            && request.set_scheme(Some(&Scheme::Http)).is_ok()
            && request.set_authority(Some(authority)).is_ok()
            && request.set_path_with_query(Some(&path)).is_ok();
        if !set {
            return Err(format!("{url:?}: refused by the request builder"));
        }
        let body = request.body().map_err(|()| "the body was taken")?;
        let future = match outgoing_handler::handle(request, None) {
            Ok(f) => f,
            Err(e) => {
                lines.push(format!("{i}: refused {e:?}"));
                continue;
            }
        };
        OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(response))) => {
                lines.push(format!("{i}: status {}", response.status()));
                HOARD.with(|h| h.borrow_mut().push(response));
            }
            other => lines.push(format!("{i}: failed {other:?}")),
        }
    }
    Ok(lines.join("\n"))
}

impl Agent for Abuser {
    fn run(input: String) -> Result<String, String> {
        if let Some(rest) = input.strip_prefix("hoard ") {
            let (n, url) = rest.split_once(' ').ok_or("hoard N URL")?;
            return hoard(number(n)?, url);
        }
        if input == "release" {
            let n = HOARD.with(|h| std::mem::take(&mut *h.borrow_mut()).len());
            return Ok(format!("dropped {n} responses"));
        }
        let (mode, arg) = input.split_once(':').unwrap_or((input.as_str(), "0"));
        let n = number(arg)?;
        let size = usize::try_from(n).map_err(|e| e.to_string())?;
        match mode {
            "exit" => std::process::exit(i32::try_from(n).map_err(|e| e.to_string())?),
            "bad-utf8" => Ok(raw_string(vec![b'o', b'k', 0xff, 0xfe])),
            "bad-utf8-log" => {
                log::write(log::Level::Info, &raw_string(vec![0xc3, 0x28]));
                Ok("logged".into())
            }
            "random" => {
                let bytes = wasip2::random::random::get_random_bytes(n);
                Ok(format!("got {} random bytes", bytes.len()))
            }
            "handles" => {
                for _ in 0..n {
                    let p = wasip2::clocks::monotonic_clock::subscribe_duration(1_000_000_000);
                    std::mem::forget(p);
                }
                Ok(format!("holding {n} handles"))
            }
            "log-lines" => {
                for _ in 0..n {
                    log::write(log::Level::Info, "");
                }
                Ok(format!("logged {n} empty lines"))
            }
            "newlines" => {
                let chunk = vec![b'\n'; 64 << 10];
                let mut out = std::io::stdout();
                for _ in 0..n / 64 {
                    out.write_all(&chunk).map_err(|e| e.to_string())?;
                }
                out.flush().map_err(|e| e.to_string())?;
                Ok(format!("wrote {n} KiB of newlines"))
            }
            "big-log" => {
                log::write(log::Level::Info, &"x".repeat(size << 20));
                Ok("logged one big line".into())
            }
            "write" => Ok(match vfs::write("big.bin", vec![7u8; size]) {
                Ok(()) => format!("wrote {size} bytes"),
                Err(e) => format!("refused: {e:?}"),
            }),
            "put" => Ok(match state::put("big", vec![7u8; size], 0) {
                Ok(v) => format!("put version {v}"),
                Err(e) => format!("refused: {e:?}"),
            }),
            "answer" => Ok("a".repeat(size)),
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export_agent!(Abuser);
