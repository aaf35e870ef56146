//! `editor` — a session agent (ring 2): turns the findings in shared state into `shared/report.md`, under a write lock.
//!
//! Input: the report's title. It takes a WRITE lock on `shared/report.md`
//! (waiting up to 2 s), reads every `findings/*` key, writes the report (one
//! section per source), records the report's hash under the state key
//! `report/sha256`, and releases the lock. Answers with the number of
//! findings and the report's hash.

use agent_sdk::{Agent, export_agent, locks, log, state, vfs};

struct Editor;

const REPORT: &str = "shared/report.md";

fn build(title: &str) -> Result<(String, usize), String> {
    let keys = state::keys("findings/").map_err(|e| format!("cannot list findings: {e}"))?;
    let topic = state::get("findings/_topic")
        .map_err(|e| format!("cannot read the topic: {e}"))?
        .map(|v| String::from_utf8_lossy(&v.value).into_owned())
        .unwrap_or_else(|| "(no topic)".to_string());
    let mut doc = format!("# {title}\n\nTopic: {topic}\n");
    let mut count = 0;
    for key in keys.iter().filter(|k| *k != "findings/_topic") {
        let Some(v) = state::get(key).map_err(|e| format!("cannot read {key}: {e}"))? else {
            continue;
        };
        let text = String::from_utf8_lossy(&v.value);
        let source = key.trim_start_matches("findings/");
        doc.push_str(&format!(
            "\n## {source} (by {}, v{})\n\n",
            v.writer, v.version
        ));
        for line in text.lines() {
            doc.push_str(&format!("- {line}\n"));
            count += 1;
        }
    }
    Ok((doc, count))
}

impl Agent for Editor {
    fn run(input: String) -> Result<String, String> {
        let title = match input.trim() {
            "" => "Findings",
            t => t,
        };
        let target = locks::Target::Path(REPORT.to_string());
        locks::acquire(&target, locks::Mode::Write, 2000)
            .map_err(|e| format!("cannot lock {REPORT}: {e}"))?;
        let result = (|| {
            let (doc, count) = build(title)?;
            vfs::write(REPORT, &doc).map_err(|e| format!("cannot write {REPORT}: {e}"))?;
            let hash = vfs::hash(REPORT).map_err(|e| format!("cannot hash {REPORT}: {e}"))?;
            let version = state::get("report/sha256")
                .map_err(|e| format!("{e}"))?
                .map_or(0, |v| v.version);
            state::put("report/sha256", &hash, version)
                .map_err(|e| format!("cannot record the hash: {e}"))?;
            log::info!("wrote {REPORT}: {count} finding(s), {} bytes", doc.len());
            Ok(format!(
                "{REPORT}: {count} finding(s), sha256 {}",
                &hash[..16]
            ))
        })();
        locks::release(&target).map_err(|e| format!("cannot unlock {REPORT}: {e}"))?;
        result
    }
}

export_agent!(Editor);
