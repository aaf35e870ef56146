//! `reviewer` — a Ring 2 saga participant: reviews a draft and writes the review.
//!
//! The second of the draft → review → publish trio. Input: a header line of
//! space-separated `key=value` pairs with `slug=<slug>` (as for `drafter`);
//! any following lines are the reviewer's notes, copied into the review.
//!
//! `execute` reads `shared/drafts/<slug>.md` and fails (`Err`) when the draft
//! is missing, empty (only whitespace) or still contains `TODO`; otherwise it
//! writes `shared/reviews/<slug>.md` (verdict, word and line counts, the
//! draft's SHA-256, the notes) and answers `approved <slug> (<n> words)`.
//! `compensate` only logs: the host removes the review it recorded.
//! `run` reviews outside a saga, the same way.

use agent_sdk::{Agent, SagaParticipant, Step, export_agent, log, vfs};

struct Reviewer;

/// The header's `slug`, checked, and the notes.
fn parse(input: &str) -> Result<(String, &str), String> {
    let (header, notes) = input.split_once('\n').unwrap_or((input, ""));
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
    Ok((slug.to_string(), notes))
}

fn review(input: &str) -> Result<String, String> {
    let (slug, notes) = parse(input)?;
    let draft_path = format!("shared/drafts/{slug}.md");
    let draft = vfs::read_to_string(&draft_path).map_err(|e| match e {
        vfs::Error::NotFound(_) => format!("no draft to review: {draft_path} does not exist"),
        e => format!("cannot read {draft_path}: {e}"),
    })?;
    if draft.trim().is_empty() {
        return Err(format!("rejected {slug}: {draft_path} is empty"));
    }
    if let Some(n) = draft.lines().position(|l| l.contains("TODO")) {
        return Err(format!(
            "rejected {slug}: {draft_path} line {} still says TODO",
            n + 1
        ));
    }
    let words = draft.split_whitespace().count();
    let lines = draft.lines().count();
    let digest = vfs::hash(&draft_path).map_err(|e| format!("cannot hash {draft_path}: {e}"))?;
    let mut text = format!(
        "# Review of {slug}\n\nverdict: approved\nwords: {words}\nlines: {lines}\ndraft sha256: {digest}\n"
    );
    if !notes.trim().is_empty() {
        text.push_str(&format!("\n## Notes\n{}\n", notes.trim_end()));
    }
    let review_path = format!("shared/reviews/{slug}.md");
    vfs::write(&review_path, &text).map_err(|e| format!("cannot write {review_path}: {e}"))?;
    log::info!("reviewed {draft_path}: approved, {words} words");
    Ok(format!("approved {slug} ({words} words)"))
}

impl Agent for Reviewer {
    fn run(input: String) -> Result<String, String> {
        review(&input)
    }
}

impl SagaParticipant for Reviewer {
    fn execute(step: &Step, input: &str) -> Result<String, String> {
        log::info!("saga {} step {}: reviewing", step.saga_id, step.step_id);
        review(input)
    }

    fn compensate(step: &Step, input: &str, output: &str) -> Result<(), String> {
        let slug = parse(input).map_or_else(|_| "?".to_string(), |(slug, _)| slug);
        log::info!(
            "saga {} step {}: withdrawing the review of {slug} ({output}); the host removes shared/reviews/{slug}.md",
            step.saga_id,
            step.step_id
        );
        Ok(())
    }
}

export_agent!(Reviewer, saga);
