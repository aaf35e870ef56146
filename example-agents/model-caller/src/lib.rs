//! `model-caller`: asks a model over HTTP and writes the answer into the
//! session — an agent that needs the `net` capability (ring 1, or ring 2
//! with a policy grant) and a destination on its allow-list.
//!
//! Input (JSON): `{"url": "http://127.0.0.1:8080/v1/complete", "prompt":
//! "…", "save": "answers/a.txt"}`; `method` (default `POST`), `body` (the
//! request body as text; default `{"prompt": <prompt>}`) and `save` are
//! optional. It sends the request and answers `{"status": 200, "body":
//! "…"}`; with `save`, a 2xx body is also written to that session file. A
//! refusal by the host (a destination not on the allow-list, a private
//! address, a limit) is the agent's failure, naming the WASI error code.

use agent_sdk::{Agent, export_agent, http, json, log, vfs};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Ask {
    url: String,
    #[serde(default)]
    prompt: String,
    method: Option<String>,
    body: Option<String>,
    save: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

#[derive(Serialize)]
struct Reply {
    status: u16,
    body: String,
}

struct ModelCaller;

impl Agent for ModelCaller {
    fn run(input: String) -> Result<String, String> {
        let ask: Ask = json::input(&input)?;
        let body = ask
            .body
            .unwrap_or_else(|| json::json!({ "prompt": ask.prompt }).to_string());
        let mut request = http::Request::new(ask.method.as_deref().unwrap_or("POST"), &ask.url)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in ask.headers {
            request = request.header(&name, value);
        }
        log::info!("asking {}", ask.url);
        let response = request.send()?;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        if let Some(path) = ask.save
            && (200..300).contains(&response.status)
        {
            vfs::write(&path, text.as_bytes())?;
        }
        json::answer(&Reply {
            status: response.status,
            body: text,
        })
    }
}

export_agent!(ModelCaller);
