//! `publisher` — a Ring 2 saga participant: publishes a reviewed draft to a channel.
//!
//! The last of the draft → review → publish trio. Input: one header line of
//! space-separated `key=value` pairs (as for `drafter`): `slug=<slug>` and an
//! optional `channel=<channel>`, one of `site` (the default), `blog` or
//! `newsletter`, for example `slug=release-notes channel=blog`.
//!
//! `execute` fails (`Err`) for a channel it does not know (so a demo can make
//! the publish step fail with `channel=nowhere`) and for a draft without a
//! review in `shared/reviews/<slug>.md`; otherwise it copies
//! `shared/drafts/<slug>.md` to `shared/published/<slug>.md` and answers
//! `published <slug> to <channel>`. `compensate` only logs: the host removes
//! the published copy it recorded. `run` publishes outside a saga.

use agent_sdk::{Agent, SagaParticipant, Step, export_agent, log, vfs};

struct Publisher;

/// The channels this publisher knows.
const CHANNELS: &[&str] = &["site", "blog", "newsletter"];

/// The header's `slug` (checked) and `channel` (known, `site` by default).
fn parse(input: &str) -> Result<(String, String), String> {
    let header = input.lines().next().unwrap_or("");
    let value = |key: &str| {
        header
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let slug = value("slug").ok_or_else(|| format!("no slug=… in the header line {header:?}"))?;
    let valid = !slug.is_empty()
        && slug.len() <= 64
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(format!("bad slug {slug:?}: use 1 to 64 of a-z, 0-9 and -"));
    }
    let channel = value("channel").unwrap_or("site");
    if !CHANNELS.contains(&channel) {
        return Err(format!(
            "unknown channel {channel:?}: this publisher knows {}",
            CHANNELS.join(", ")
        ));
    }
    Ok((slug.to_string(), channel.to_string()))
}

fn publish(input: &str) -> Result<String, String> {
    let (slug, channel) = parse(input)?;
    let review = format!("shared/reviews/{slug}.md");
    match vfs::stat(&review) {
        Ok(_) => {}
        Err(vfs::Error::NotFound(_)) => {
            return Err(format!("{slug} is not reviewed: {review} does not exist"));
        }
        Err(e) => return Err(format!("cannot stat {review}: {e}")),
    }
    let draft_path = format!("shared/drafts/{slug}.md");
    let draft = vfs::read(&draft_path).map_err(|e| format!("cannot read {draft_path}: {e}"))?;
    let target = format!("shared/published/{slug}.md");
    vfs::write(&target, &draft).map_err(|e| format!("cannot write {target}: {e}"))?;
    log::info!("published {draft_path} to {channel} as {target}");
    Ok(format!("published {slug} to {channel}"))
}

impl Agent for Publisher {
    fn run(input: String) -> Result<String, String> {
        publish(&input)
    }
}

impl SagaParticipant for Publisher {
    fn execute(step: &Step, input: &str) -> Result<String, String> {
        log::info!("saga {} step {}: publishing", step.saga_id, step.step_id);
        publish(input)
    }

    fn compensate(step: &Step, input: &str, output: &str) -> Result<(), String> {
        let slug = parse(input).map_or_else(|_| "?".to_string(), |(slug, _)| slug);
        log::info!(
            "saga {} step {}: unpublishing {slug} ({output}); the host removes shared/published/{slug}.md",
            step.saga_id,
            step.step_id
        );
        Ok(())
    }
}

export_agent!(Publisher, saga);
