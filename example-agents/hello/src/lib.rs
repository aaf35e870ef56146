//! `hello` — a Ring 3 (sandbox) agent: reads its input and a file, logs, answers.
//!
//! It only observes: `context`, `log` and `vfs-read`. It reads `greeting.txt`
//! if present (a missing file is handled as a value, not a crash) and answers
//! `"<greeting>, <input>! (agent <id>, ring <n>)"`.

use agent_sdk::{Agent, context, export_agent, log, vfs};

struct Hello;

impl Agent for Hello {
    fn run(input: String) -> Result<String, String> {
        let me = context::whoami();
        let name = if input.trim().is_empty() {
            "world"
        } else {
            input.trim()
        };
        let greeting = match vfs::read_to_string("greeting.txt") {
            Ok(text) => text.trim().to_string(),
            Err(vfs::Error::NotFound(_)) => {
                log::debug!("no greeting.txt, using the default");
                "Hello".to_string()
            }
            Err(e) => return Err(format!("cannot read greeting.txt: {e}")),
        };
        log::info!("greeting {name} from {} in ring {}", me.agent_id, me.ring);
        println!("hello says hi on stdout");
        Ok(format!(
            "{greeting}, {name}! (agent {}, ring {})",
            me.agent_id, me.ring
        ))
    }
}

export_agent!(Hello);

#[cfg(test)]
mod tests {
    use super::Hello;
    use agent_sdk::Agent;
    use agent_sdk::log::Level;
    use agent_sdk::testing::{self, FakeHost};

    #[test]
    fn greets_with_the_greeting_file_and_its_identity() {
        FakeHost::new()
            .agent_id("did:ahv:hello")
            .file("greeting.txt", "Bonjour\n")
            .install();
        let answer = Hello::run(" Ada ".to_string()).unwrap();
        assert_eq!(answer, "Bonjour, Ada! (agent did:ahv:hello, ring 3)");
        assert_eq!(
            testing::logs(),
            vec![(
                Level::Info,
                "greeting Ada from did:ahv:hello in ring 3".to_string()
            )]
        );
    }

    #[test]
    fn a_missing_greeting_file_is_the_default_not_a_failure() {
        FakeHost::new().install();
        let answer = Hello::run(String::new()).unwrap();
        assert_eq!(answer, "Hello, world! (agent did:ahv:test-agent, ring 3)");
        assert_eq!(testing::logs()[0].0, Level::Debug);
    }

    #[test]
    fn a_bad_greeting_file_is_its_failure() {
        FakeHost::new().file("greeting.txt", [0xff, 0xfe]).install();
        let err = Hello::run("x".to_string()).unwrap_err();
        assert!(err.starts_with("cannot read greeting.txt: "), "{err}");
    }
}
