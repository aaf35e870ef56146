//! `researcher` — a session agent (ring 2): reads the sources in the shared area and leaves findings in shared state.
//!
//! Input: a topic word. For every file under `shared/sources/` it keeps the
//! sentences that mention the topic (case-insensitive) and stores them under
//! the state key `findings/<file name>`, with a compare-and-set on the version
//! it read (retrying when another agent wrote in between). It also keeps
//! `findings/_topic`. Answers with how many findings it left.

use agent_sdk::{Agent, export_agent, log, state, vfs};

struct Researcher;

/// Sentences of `text` mentioning `topic`.
fn findings(text: &str, topic: &str) -> Vec<String> {
    let topic = topic.to_lowercase();
    text.split(['.', '!', '?', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.to_lowercase().contains(&topic))
        .map(|s| format!("{s}."))
        .collect()
}

/// Writes `value` under `key`, re-reading the version after a conflict.
fn store(key: &str, value: &str) -> Result<u64, String> {
    for _ in 0..8 {
        let version = state::get(key)
            .map_err(|e| format!("cannot read {key}: {e}"))?
            .map_or(0, |v| v.version);
        match state::put(key, value, version) {
            Ok(v) => return Ok(v),
            Err(state::Error::Conflict(why)) => log::warn!("{key}: conflict ({why}); retrying"),
            Err(e) => return Err(format!("cannot write {key}: {e}")),
        }
    }
    Err(format!("{key}: gave up after 8 conflicts"))
}

impl Agent for Researcher {
    fn run(input: String) -> Result<String, String> {
        let topic = input.trim();
        if topic.is_empty() {
            return Err("no topic given".to_string());
        }
        let sources = vfs::list("shared/sources").map_err(|e| format!("no sources: {e}"))?;
        let mut total = 0;
        for name in &sources {
            let path = format!("shared/sources/{name}");
            let text = match vfs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    log::warn!("skipping {path}: {e}");
                    continue;
                }
            };
            let found = findings(&text, topic);
            if found.is_empty() {
                continue;
            }
            total += found.len();
            let v = store(&format!("findings/{name}"), &found.join("\n"))?;
            log::info!("{} finding(s) from {path} (version {v})", found.len());
        }
        store("findings/_topic", topic)?;
        Ok(format!(
            "{total} finding(s) on {topic:?} from {} source(s)",
            sources.len()
        ))
    }
}

export_agent!(Researcher);
