//! `note-taker` — a Ring 2 (standard) agent: writes and updates notes.
//!
//! Input: one line of text. It appends the line to `notes/today.md` (creating
//! it with a title the first time), keeps `notes/index.txt` listing the note
//! files, records the line with the host's reversible `note.append` action when
//! the host offers it, and answers with how many lines the note now holds.

use agent_sdk::{Agent, actions, export_agent, log, vfs};

struct NoteTaker;

const NOTE: &str = "notes/today.md";

impl Agent for NoteTaker {
    fn run(input: String) -> Result<String, String> {
        let line = input.trim();
        if line.is_empty() {
            return Err("nothing to note: the input is empty".to_string());
        }
        let mut note = match vfs::read_to_string(NOTE) {
            Ok(text) => text,
            Err(vfs::Error::NotFound(_)) => "# Today\n".to_string(),
            Err(e) => return Err(format!("cannot read {NOTE}: {e}")),
        };
        note.push_str(&format!("- {line}\n"));
        vfs::write(NOTE, &note).map_err(|e| format!("cannot write {NOTE}: {e}"))?;

        let files = vfs::list("notes").map_err(|e| format!("cannot list notes: {e}"))?;
        let index: Vec<&str> = files
            .iter()
            .map(String::as_str)
            .filter(|f| *f != "index.txt")
            .collect();
        vfs::write("notes/index.txt", index.join("\n") + "\n")
            .map_err(|e| format!("cannot write the index: {e}"))?;

        let offered = actions::available().map_err(|e| format!("actions: {e}"))?;
        if offered.iter().any(|a| a == "note.append") {
            let receipt =
                actions::invoke("note.append", line).map_err(|e| format!("note.append: {e}"))?;
            log::info!("journal: {receipt}");
        }
        let lines = note.lines().filter(|l| l.starts_with("- ")).count();
        log::info!("noted {line:?}; {lines} line(s) in {NOTE}");
        Ok(format!("{lines} note(s) in {NOTE}"))
    }
}

export_agent!(NoteTaker);

#[cfg(test)]
mod tests {
    use super::NoteTaker;
    use agent_sdk::Agent;
    use agent_sdk::testing::{self, FakeHost};

    #[test]
    fn appends_the_line_keeps_the_index_and_journals_it() {
        FakeHost::new()
            .ring(2)
            .file("notes/today.md", "# Today\n- first\n")
            .file("notes/ideas.md", "")
            .action("note.append", |line| Ok(format!("journal#1 {line}")))
            .install();
        assert_eq!(
            NoteTaker::run("second\n".to_string()).unwrap(),
            "2 note(s) in notes/today.md"
        );
        assert_eq!(
            testing::file("notes/today.md").unwrap(),
            b"# Today\n- first\n- second\n"
        );
        assert_eq!(
            testing::file("notes/index.txt").unwrap(),
            b"ideas.md\ntoday.md\n"
        );
        assert!(
            testing::logs()
                .iter()
                .any(|(_, m)| m == "journal: journal#1 second")
        );
    }

    #[test]
    fn an_empty_input_writes_nothing() {
        FakeHost::new().ring(2).install();
        assert!(NoteTaker::run("  ".to_string()).is_err());
        assert!(testing::files().is_empty());
    }

    #[test]
    #[should_panic(expected = "ring breach: `vfs-write` is outside ring 3")]
    fn in_the_sandbox_ring_its_first_write_is_a_breach() {
        FakeHost::new().ring(3).install();
        let _ = NoteTaker::run("x".to_string());
    }
}
