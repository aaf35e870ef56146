//! `drafter` — a Ring 2 saga participant: writes a draft into the session's shared area.
//!
//! The first of a draft → review → publish trio (`reviewer`, `publisher`).
//! Input (the same shape for all three): a header line of space-separated
//! `key=value` pairs, then the body on the following lines:
//!
//! ```text
//! slug=release-notes
//! # Release notes
//! Faster joins.
//! ```
//!
//! `slug` (1–64 of `a-z`, `0-9`, `-`) names the document. `execute` writes the
//! body to `shared/drafts/<slug>.md` and puts state key `draft/<slug>` (the
//! draft's SHA-256), answering `shared/drafts/<slug>.md`. An empty body is
//! drafted as it is: judging it is the reviewer's job. `compensate` only logs
//! what it undoes: the host undoes the step's recorded file and state changes
//! itself. `run` drafts outside a saga, the same way.

use agent_sdk::{Agent, SagaParticipant, Step, export_agent, log, state, vfs};

struct Drafter;

/// The header's `slug`, checked, and the body.
fn parse(input: &str) -> Result<(String, &str), String> {
    let (header, body) = input.split_once('\n').unwrap_or((input, ""));
    let slug = header
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("slug="))
        .ok_or_else(|| format!("no slug=… in the header line {header:?}"))?;
    let valid = !slug.is_empty()
        && slug.len() <= 64
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(format!("bad slug {slug:?}: use 1 to 64 of a-z, 0-9 and -"));
    }
    Ok((slug.to_string(), body))
}

fn draft(input: &str) -> Result<String, String> {
    let (slug, body) = parse(input)?;
    let path = format!("shared/drafts/{slug}.md");
    vfs::write(&path, body).map_err(|e| format!("cannot write {path}: {e}"))?;
    let digest = vfs::hash(&path).map_err(|e| format!("cannot hash {path}: {e}"))?;
    let key = format!("draft/{slug}");
    let seen = state::get(&key)
        .map_err(|e| format!("cannot read {key}: {e}"))?
        .map_or(0, |v| v.version);
    let version = state::put(&key, &digest, seen).map_err(|e| format!("cannot put {key}: {e}"))?;
    log::info!("drafted {path} ({} bytes); {key} is v{version}", body.len());
    Ok(path)
}

impl Agent for Drafter {
    fn run(input: String) -> Result<String, String> {
        draft(&input)
    }
}

impl SagaParticipant for Drafter {
    fn execute(step: &Step, input: &str) -> Result<String, String> {
        log::info!("saga {} step {}: drafting", step.saga_id, step.step_id);
        draft(input)
    }

    fn compensate(step: &Step, input: &str, output: &str) -> Result<(), String> {
        let slug = parse(input).map_or_else(|_| "?".to_string(), |(slug, _)| slug);
        log::info!(
            "saga {} step {}: undoing the draft {output} and state key draft/{slug} (the host restores them)",
            step.saga_id,
            step.step_id
        );
        Ok(())
    }
}

export_agent!(Drafter, saga);
