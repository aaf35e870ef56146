//! `deployer` — a Ring 1 (privileged) agent: calls a non-reversible effect.
//!
//! Input: a version string. It reads `deploy/manifest.txt` if present, records
//! the deployment in `deploy/history.log` (a VFS write), then announces it with
//! the host's non-reversible `notify.send` effect and answers with the effect's
//! receipt. In ring 2 the effect call is a ring breach.

use agent_sdk::{Agent, effects, export_agent, log, vfs};

struct Deployer;

impl Agent for Deployer {
    fn run(input: String) -> Result<String, String> {
        let version = input.trim();
        if version.is_empty() {
            return Err("no version given".to_string());
        }
        let service = match vfs::read_to_string("deploy/manifest.txt") {
            Ok(text) => text.trim().to_string(),
            Err(vfs::Error::NotFound(_)) => "service".to_string(),
            Err(e) => return Err(format!("cannot read the manifest: {e}")),
        };
        vfs::append("deploy/history.log", format!("{service} {version}\n"))
            .map_err(|e| format!("cannot record the deployment: {e}"))?;
        log::info!("deploying {service} {version}");
        let receipt = effects::invoke("notify.send", &format!("deployed {service} {version}"))
            .map_err(|e| format!("notify.send failed: {e}"))?;
        Ok(format!("deployed {service} {version}; {receipt}"))
    }
}

export_agent!(Deployer);
