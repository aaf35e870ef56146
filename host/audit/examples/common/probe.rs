//! What the audit crate's probes share (included by `#[path]`; not a probe
//! itself).
use std::path::PathBuf;

use ahv_core::{AgentId, EventBus, EventPayload, SessionId, TraceId};

/// Command-line argument `i` as a whole number, `default` when absent.
pub fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .map_or(default, |a| a.parse().expect("a whole number"))
}

/// A fresh directory under `PROBE_DIR` (default: the system's temporary
/// directory), removed when dropped, and the audit directory inside it.
pub fn probe_dir() -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let tmp = match std::env::var_os("PROBE_DIR") {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let audit = tmp.path().join("audit");
    Ok((tmp, audit))
}

/// Emits a file write `i` of `session` by `agent` on `bus`: one audited
/// delta of about 200 bytes.
pub fn emit_write(bus: &EventBus, session: &SessionId, agent: &AgentId, i: u64) {
    bus.emit(
        Some(session),
        Some(agent),
        TraceId(u128::from(i) + 1),
        None,
        EventPayload::VfsWrite {
            path: format!("shared/f{i}.txt"),
            op: "write".into(),
            size: i,
            before: None,
            after: Some([i as u8; 32]),
        },
    );
}
