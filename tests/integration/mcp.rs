//! `ahv mcp` with a real MCP client (rmcp's, over the child process's
//! standard input and output): agents as tools, each call governed by the
//! agent's ring and audited.

use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ContentBlock};
use rmcp::transport::TokioChildProcess;

const AHV: &str = env!("CARGO_BIN_EXE_ahv-under-test");
const LIMIT: Duration = Duration::from_secs(120);

fn path_of(name: &str) -> &'static str {
    ahv_agents::PATHS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
}

/// The tool name `ahv mcp` gives an agent id.
fn tool(id: &str) -> String {
    ahv_api::mcp::tool_name(&ahv_core::AgentId::new(id).unwrap())
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| match c {
            ContentBlock::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

#[tokio::test]
async fn an_mcp_client_calls_agents_as_tools_each_under_its_ring() {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(AHV);
    cmd.arg("mcp")
        .arg("--state-dir")
        .arg(state.path())
        .args(["--agent", &format!("did:ex:hello={}", path_of("hello"))])
        .args([
            "--agent",
            &format!("did:ex:writer={}", path_of("note-taker")),
        ])
        .args(["--sigma", "did:ex:writer=0.8"])
        .args(["--agent", &format!("did:ex:low={}", path_of("note-taker"))])
        .arg("--cache-dir")
        .arg(crate::cache_dir())
        .stderr(std::process::Stdio::null());
    let client = within("the MCP handshake", async {
        ().serve(TokioChildProcess::new(cmd).unwrap())
            .await
            .unwrap()
    })
    .await;
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "agent-hypervisor");
    let mut names: Vec<String> = within("tools/list", client.list_all_tools())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    let mut expected = [
        tool("did:ex:hello"),
        tool("did:ex:low"),
        tool("did:ex:writer"),
    ];
    expected.sort();
    assert_eq!(names, expected);
    assert!(names[0].starts_with("did_ex_"), "{names:?}");

    let call = |name: &str, input: &str| {
        let mut args = serde_json::Map::new();
        args.insert("input".into(), serde_json::Value::String(input.into()));
        CallToolRequestParams::new(name.to_string()).with_arguments(args)
    };
    let r = within(
        "hello",
        client.call_tool(call(&tool("did:ex:hello"), "Ada")),
    )
    .await
    .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(text(&r).contains("Ada"), "{r:?}");
    let trace = r.meta.as_ref().and_then(|m| m.get("ahv/trace")).cloned();
    assert!(
        trace.is_some_and(|t| t.as_str().is_some_and(|t| t.len() == 32)),
        "{r:?}"
    );
    // Ring 2 may write.
    let r = within(
        "writer",
        client.call_tool(call(&tool("did:ex:writer"), "from mcp")),
    )
    .await
    .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(text(&r).contains("1 note(s)"), "{r:?}");
    // Ring 3 may not: a breach, reported to the client as a tool error; the
    // agent is expelled and its tool gone.
    let r = within("low", client.call_tool(call(&tool("did:ex:low"), "sneaky")))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert!(text(&r).contains("ring breach"), "{r:?}");
    let names: Vec<String> = within("tools/list", client.list_all_tools())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!names.contains(&tool("did:ex:low")), "{names:?}");
    assert!(
        within(
            "a call of a gone tool",
            client.call_tool(call(&tool("did:ex:low"), "x"))
        )
        .await
        .is_err()
    );
    // Arguments other than `input` are refused.
    let mut bad = serde_json::Map::new();
    bad.insert(
        "path".into(),
        serde_json::Value::String("/etc/passwd".into()),
    );
    let refused = within(
        "a call with a stray argument",
        client.call_tool(CallToolRequestParams::new(tool("did:ex:hello")).with_arguments(bad)),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // Closing the connection ends the server: the session is sealed and the log verifies.
    within("closing", client.cancel()).await.unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        let out = std::process::Command::new(AHV)
            .args(["audit", "verify"])
            .arg(state.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success()
            && stdout.contains("commitment #0 covers")
            && stdout.contains("1 covered by a signed head")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log did not verify within {LIMIT:?}: {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ahv_mcp_listen_serves_the_agents_over_streamable_http_to_token_holders() {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use tokio::io::AsyncBufReadExt;
    let state = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(AHV)
        .arg("mcp")
        .arg("--state-dir")
        .arg(state.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(["--agent", &format!("did:ex:hello={}", path_of("hello"))])
        .arg("--cache-dir")
        .arg(crate::cache_dir())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = within("the server's address on its standard error", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, url)) = line.split_once(" over MCP at ") {
                return url.to_string();
            }
        }
        panic!("ahv mcp --listen ended without saying where it listens");
    })
    .await;
    // Drain the rest so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let token = std::fs::read_to_string(state.path().join("mcp.token")).unwrap();
    let connect = |token: Option<String>| {
        let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
        if let Some(t) = token {
            config = config.auth_header(t);
        }
        ().serve(StreamableHttpClientTransport::with_client(
            reqwest::Client::new(),
            config,
        ))
    };
    let client = within("the MCP handshake", connect(Some(token.clone())))
        .await
        .unwrap();
    let tools = within("tools/list", client.list_all_tools()).await.unwrap();
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert_eq!(tools[0].name, tool("did:ex:hello"));
    let mut args = serde_json::Map::new();
    args.insert("input".into(), serde_json::Value::String("Grace".into()));
    let r = within(
        "hello",
        client.call_tool(CallToolRequestParams::new(tool("did:ex:hello")).with_arguments(args)),
    )
    .await
    .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(text(&r).contains("Grace"), "{r:?}");
    for bad in [None, Some(format!("{token}x"))] {
        let refused = within("a handshake with a bad token", connect(bad.clone())).await;
        let e = refused
            .err()
            .unwrap_or_else(|| panic!("token {bad:?} was let in"))
            .to_string();
        assert!(e.contains("HTTP 401 Unauthorized"), "{bad:?}: {e}");
    }
    within("closing", client.cancel()).await.unwrap();
    // SIGTERM: the session is sealed, the head signed, and the log verifies.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = within("ahv mcp --listen to stop on SIGTERM", child.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let out = std::process::Command::new(AHV)
        .args(["audit", "verify"])
        .arg(state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 covered by a signed head"),
        "{stdout}"
    );
}

#[tokio::test]
async fn ahv_mcp_listen_on_a_busy_port_fails_before_creating_anything() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = within(
        "ahv mcp --listen on a busy port",
        tokio::process::Command::new(AHV)
            .arg("mcp")
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &busy.local_addr().unwrap().to_string()])
            .args(["--agent", &format!("did:ex:hello={}", path_of("hello"))])
            .arg("--cache-dir")
            .arg(crate::cache_dir())
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(
        !state.exists(),
        "a failed start left a state directory (and an unsealed session) behind"
    );
}
