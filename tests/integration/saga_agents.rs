//! Saga steps inside agents, through `ahv_runtime` directly: the
//! draft → review → publish trio on real session files, the `scripted`
//! instrument made to spin, write or fail inside a step, the benches'
//! `noop-participant`, and the admission of the `saga-participant` export.

use std::sync::Arc;
use std::time::Duration;

use ahv_core::event::EventBus;
use ahv_core::{AgentId, Capability, FakeClock, Ring, RingLimits, RingPolicy, SessionId};
use ahv_governance::files::{Caller, FileSpace};
use ahv_governance::session_core::{SessionCore, SessionCoreConfig};
use ahv_runtime::{
    Agent, AgentError, AgentSpec, LoadError, RunOutput, SAGA_PARTICIPANT, StepCall, TrapCause,
};
use ahv_tests::{Harness, Sandbox, trap, within};

use crate::cache_dir;

/// Longest any one step may take to come back here (a cold cache compiles).
const LIMIT: Duration = Duration::from_secs(60);

/// A step deadline that never binds: the ring's deadline decides.
const NO_STEP_DEADLINE: Duration = Duration::from_secs(3600);

/// One shared session (its files in a temporary directory), as the
/// hypervisor builds it for its participants.
struct Session {
    core: Arc<SessionCore>,
    _dir: tempfile::TempDir,
}

impl Session {
    fn new() -> Session {
        let dir = tempfile::tempdir().unwrap();
        let handle =
            cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap();
        let events = Arc::new(EventBus::new(1024, Arc::new(FakeClock::new())));
        let core = Arc::new(SessionCore::new(
            SessionId::new("saga-agents").unwrap(),
            Arc::new(handle),
            &SessionCoreConfig::default(),
            events,
        ));
        Session { core, _dir: dir }
    }

    /// A shared file as the host sees it; `None` if it does not exist.
    fn file(&self, path: &str) -> Option<String> {
        let host = AgentId::new("did:test:host").unwrap();
        self.core
            .read(Caller::untraced(&host, Ring::Root), path)
            .ok()
            .map(|b| String::from_utf8(b).unwrap())
    }

    async fn spawn(&self, h: &Harness, bytes: &[u8], id: &str, ring: Ring) -> Agent {
        let c = h.runtime.load(bytes).unwrap();
        let spec = AgentSpec::new(AgentId::new(id).unwrap(), ring, self.core.clone())
            .in_session(self.core.clone());
        h.runtime.spawn(&c, spec).await.unwrap()
    }
}

fn step(step_id: &str, action: &str) -> StepCall {
    StepCall {
        saga_id: "saga-1".into(),
        step_id: step_id.into(),
        action: action.into(),
        attempt: 1,
    }
}

/// The step's own answer (or failure message) of a call that must not trap.
fn outcome(r: Result<RunOutput, AgentError>) -> Result<String, String> {
    match r {
        Ok(out) => out.result,
        Err(e) => panic!("the step trapped: {e}"),
    }
}

/// The log lines of a call that must not trap, one per line.
fn logs(r: &Result<RunOutput, AgentError>) -> String {
    match r {
        Ok(out) => out
            .logs
            .iter()
            .map(|l| l.message.clone())
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => panic!("the step trapped: {e}"),
    }
}

pub mod noop_participant {
    use super::*;
    pub const TESTED: () = ();

    /// The saga bench's least participant: its steps and undos succeed with
    /// nothing in them (no log line, no change), and admission sees the
    /// `saga-participant` export.
    #[tokio::test]
    async fn steps_and_undos_succeed_with_no_log_line_and_no_change() {
        let h = Harness::new(&cache_dir());
        let s = Session::new();
        let c = h.runtime.load(ahv_agents::NOOP_PARTICIPANT).unwrap();
        assert!(c.saga_participant(), "it exports {SAGA_PARTICIPANT}");
        let mut a = s
            .spawn(
                &h,
                ahv_agents::NOOP_PARTICIPANT,
                "did:test:noop",
                Ring::Sandbox,
            )
            .await;
        let empty = |r: Result<RunOutput, AgentError>, what: &str| {
            assert_eq!(logs(&r), "", "{what}: no log line");
            let out = r.unwrap();
            assert_eq!(out.result, Ok(String::new()), "{what}");
            assert_eq!(out.dropped_log_lines, 0, "{what}");
            assert!(
                out.changes.is_empty(),
                "{what}: no change: {:?}",
                out.changes
            );
        };
        for attempt in 1..=3 {
            let call = StepCall {
                attempt,
                ..step("s", "anything")
            };
            let r = within(
                LIMIT,
                "noop step",
                a.execute_step(&call, "in", NO_STEP_DEADLINE),
            )
            .await;
            empty(r, "step");
        }
        let undo = within(
            LIMIT,
            "noop undo",
            a.compensate_step(&step("s", "anything"), "in", "", NO_STEP_DEADLINE),
        )
        .await;
        empty(undo, "undo");
        empty(within(LIMIT, "noop run", a.run("x")).await, "run");
        assert!(s.file("anything").is_none(), "no file appeared");
    }
}

pub mod drafter {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn drafts_reviews_and_publishes_a_document_on_real_files() {
        let h = Harness::new(&cache_dir());
        let s = Session::new();
        let mut drafter = s
            .spawn(&h, ahv_agents::DRAFTER, "did:test:drafter", Ring::Standard)
            .await;
        let mut reviewer = s
            .spawn(
                &h,
                ahv_agents::REVIEWER,
                "did:test:reviewer",
                Ring::Standard,
            )
            .await;
        let mut publisher = s
            .spawn(
                &h,
                ahv_agents::PUBLISHER,
                "did:test:publisher",
                Ring::Standard,
            )
            .await;
        let body = "# Release notes\nFaster joins.\n";

        let draft = within(LIMIT, "draft", async {
            drafter
                .execute_step(
                    &step("draft", "draft"),
                    &format!("slug=notes\n{body}"),
                    NO_STEP_DEADLINE,
                )
                .await
        })
        .await;
        assert_eq!(outcome(draft), Ok("shared/drafts/notes.md".into()));
        assert_eq!(s.file("shared/drafts/notes.md").as_deref(), Some(body));
        let key = s
            .core
            .state()
            .get(&AgentId::new("did:test:host").unwrap(), "draft/notes")
            .unwrap()
            .expect("the drafter put draft/notes");
        assert_eq!(key.value.len(), 64, "the draft's SHA-256 in hex");

        let review = reviewer
            .execute_step(&step("review", "review"), "slug=notes", NO_STEP_DEADLINE)
            .await;
        assert_eq!(outcome(review), Ok("approved notes (5 words)".into()));
        let text = s.file("shared/reviews/notes.md").unwrap();
        assert!(text.contains("verdict: approved"), "{text}");

        let publish = publisher
            .execute_step(
                &step("publish", "publish"),
                "slug=notes channel=blog",
                NO_STEP_DEADLINE,
            )
            .await;
        assert_eq!(outcome(publish), Ok("published notes to blog".into()));
        assert_eq!(s.file("shared/published/notes.md").as_deref(), Some(body));
    }

    #[tokio::test]
    async fn compensating_a_draft_only_says_what_the_host_undoes() {
        let h = Harness::new(&cache_dir());
        let s = Session::new();
        let mut drafter = s
            .spawn(&h, ahv_agents::DRAFTER, "did:test:drafter", Ring::Standard)
            .await;
        let out = drafter
            .compensate_step(
                &step("draft", "draft"),
                "slug=notes\ntext",
                "shared/drafts/notes.md",
                NO_STEP_DEADLINE,
            )
            .await;
        let said = logs(&out);
        assert_eq!(outcome(out), Ok(String::new()));
        assert!(
            said.contains("undoing the draft shared/drafts/notes.md and state key draft/notes"),
            "{said}"
        );
    }

    #[tokio::test]
    async fn a_bad_slug_fails_the_step_without_writing() {
        let h = Harness::new(&cache_dir());
        let s = Session::new();
        let mut drafter = s
            .spawn(&h, ahv_agents::DRAFTER, "did:test:drafter", Ring::Standard)
            .await;
        let out = drafter
            .execute_step(&step("draft", "draft"), "slug=../x\nbody", NO_STEP_DEADLINE)
            .await;
        let err = outcome(out).unwrap_err();
        assert!(err.contains("bad slug"), "{err}");
        assert_eq!(s.file("shared/drafts/x.md"), None);
    }
}

pub mod reviewer {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn rejects_a_missing_an_empty_or_an_unfinished_draft() {
        let h = Harness::new(&cache_dir());
        let s = Session::new();
        let mut drafter = s
            .spawn(&h, ahv_agents::DRAFTER, "did:test:drafter", Ring::Standard)
            .await;
        let mut reviewer = s
            .spawn(
                &h,
                ahv_agents::REVIEWER,
                "did:test:reviewer",
                Ring::Standard,
            )
            .await;
        let review = step("review", "review");

        let missing = outcome(
            reviewer
                .execute_step(&review, "slug=a", NO_STEP_DEADLINE)
                .await,
        );
        assert!(missing.unwrap_err().contains("does not exist"));

        for (body, why) in [
            ("  \n", "is empty"),
            ("Intro\nTODO: the rest\n", "line 2 still says TODO"),
        ] {
            let input = format!("slug=a\n{body}");
            outcome(
                drafter
                    .execute_step(&step("draft", "draft"), &input, NO_STEP_DEADLINE)
                    .await,
            )
            .unwrap();
            let err = outcome(
                reviewer
                    .execute_step(&review, "slug=a", NO_STEP_DEADLINE)
                    .await,
            )
            .unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        assert_eq!(
            s.file("shared/reviews/a.md"),
            None,
            "no review of a rejected draft"
        );
    }
}

pub mod publisher {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn refuses_an_unknown_channel_and_an_unreviewed_draft() {
        let h = Harness::new(&cache_dir());
        let s = Session::new();
        let mut drafter = s
            .spawn(&h, ahv_agents::DRAFTER, "did:test:drafter", Ring::Standard)
            .await;
        let mut publisher = s
            .spawn(
                &h,
                ahv_agents::PUBLISHER,
                "did:test:publisher",
                Ring::Standard,
            )
            .await;
        let publish = step("publish", "publish");
        outcome(
            drafter
                .execute_step(&step("draft", "draft"), "slug=x\nDone.", NO_STEP_DEADLINE)
                .await,
        )
        .unwrap();

        let unreviewed = outcome(
            publisher
                .execute_step(&publish, "slug=x", NO_STEP_DEADLINE)
                .await,
        );
        assert!(unreviewed.unwrap_err().contains("x is not reviewed"));

        let nowhere = outcome(
            publisher
                .execute_step(&publish, "slug=x channel=nowhere", NO_STEP_DEADLINE)
                .await,
        );
        assert!(nowhere.unwrap_err().contains("unknown channel \"nowhere\""));
        assert_eq!(s.file("shared/published/x.md"), None);

        let undo = publisher
            .compensate_step(&publish, "slug=x", "published x to site", NO_STEP_DEADLINE)
            .await;
        assert!(logs(&undo).contains("unpublishing x"), "{}", logs(&undo));
    }
}

#[tokio::test]
async fn a_component_without_the_export_is_not_a_saga_participant() {
    let h = Harness::new(&cache_dir());
    let sb = Sandbox::new();
    assert!(
        !h.runtime
            .load(ahv_agents::HELLO)
            .unwrap()
            .saga_participant()
    );
    for bytes in [ahv_agents::DRAFTER, ahv_agents::SCRIPTED] {
        assert!(h.runtime.load(bytes).unwrap().saga_participant());
    }
    let mut hello = h
        .spawn(ahv_agents::HELLO, "did:test:hello", Ring::Sandbox, &sb)
        .await;
    let s = step("greet", "greet");
    let err = hello
        .execute_step(&s, "x", NO_STEP_DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::NotASagaParticipant { agent } if agent.as_str() == "did:test:hello"),
        "{err}"
    );
    let err = hello
        .compensate_step(&s, "x", "y", NO_STEP_DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::NotASagaParticipant { .. }),
        "{err}"
    );
    // The refusal does not spoil the agent.
    assert!(hello.run("world").await.unwrap().result.is_ok());
}

#[tokio::test]
async fn a_spinning_step_stops_at_its_own_deadline_not_the_rings() {
    // Ring 2's default fuel lasts ~100–170 ms of spinning, depending on the
    // machine; fuel for hours makes time the only thing that can stop it.
    let mut limits = RingLimits::default_for(Ring::Standard);
    limits.fuel_per_call = 1 << 50;
    let policy = RingPolicy::default()
        .with_limits(Ring::Standard, limits)
        .unwrap();
    let h = Harness::with_policy(&cache_dir(), policy);
    let sb = Sandbox::new();
    let mut agent = h
        .spawn(ahv_agents::SCRIPTED, "did:test:spin", Ring::Standard, &sb)
        .await;
    assert_eq!(
        h.runtime.policy().limits(Ring::Standard).deadline,
        Duration::from_secs(30),
        "the ring's deadline, which the step's must undercut"
    );
    let step_deadline = Duration::from_millis(40);
    let r = within(
        Duration::from_secs(10),
        "the spinning step to stop",
        agent.execute_step(&step("spin", "spin"), "spin", step_deadline),
    )
    .await;
    match trap(r) {
        TrapCause::DeadlineExceeded(d) => assert_eq!(d.deadline, step_deadline),
        other => panic!("expected the step's deadline, got {other}"),
    }
}

#[tokio::test]
async fn a_sandbox_step_that_writes_is_a_ring_breach() {
    let h = Harness::new(&cache_dir());
    let sb = Sandbox::new();
    let mut agent = h
        .spawn(ahv_agents::SCRIPTED, "did:test:sneaky", Ring::Sandbox, &sb)
        .await;
    let r = agent
        .execute_step(&step("w", "write"), "write x.txt hi", NO_STEP_DEADLINE)
        .await;
    match trap(r) {
        TrapCause::RingBreach(b) => {
            assert_eq!(
                (b.capability, b.function.as_str()),
                (Capability::VfsWrite, "write")
            );
        }
        other => panic!("expected a ring breach, got {other}"),
    }
    assert_eq!(h.breaches().len(), 1, "recorded before the trap");
    assert!(!sb.dir.join("x.txt").exists());
}

#[tokio::test]
async fn a_scripted_step_fails_on_demand_and_compensates_with_its_undo_script() {
    let h = Harness::new(&cache_dir());
    let sb = Sandbox::new();
    let mut agent = h
        .spawn(ahv_agents::SCRIPTED, "did:test:steps", Ring::Standard, &sb)
        .await;
    let s = step("s", "script");
    let failed = agent
        .execute_step(&s, "fail not today", NO_STEP_DEADLINE)
        .await;
    assert_eq!(
        outcome(failed),
        Err("not today".into()),
        "a failure, not a trap"
    );

    let done = outcome(
        agent
            .execute_step(&s, "write a.txt one", NO_STEP_DEADLINE)
            .await,
    );
    assert_eq!(done, Ok("write a.txt one -> ok\n".into()));
    let undo = agent
        .compensate_step(
            &s,
            "delete a.txt",
            "write a.txt one -> ok",
            NO_STEP_DEADLINE,
        )
        .await;
    assert_eq!(outcome(undo), Ok(String::new()));
    assert!(!sb.dir.join("a.txt").exists(), "the undo script ran");

    let refused = agent
        .compensate_step(&s, "fail cannot undo", "", NO_STEP_DEADLINE)
        .await;
    assert_eq!(outcome(refused), Err("cannot undo".into()));
}

/// A hand-made component with a proper `run` and a `saga-participant`
/// instance whose two functions are `run`'s: `execute` has the wrong type.
fn wrong_saga_component() -> Vec<u8> {
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    (data (i32.const 16) "ok")
    (func (export "run") (param i32 i32) (result i32)
      (i32.store8 (i32.const 32) (i32.const 0))
      (i32.store (i32.const 36) (i32.const 16))
      (i32.store (i32.const 40) (i32.const 2))
      (i32.const 32)))
  (core instance $i (instantiate $m))
  (func $run (param "input" string) (result (result string (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "run" (func $run))
  (instance $saga (export "execute" (func $run)) (export "compensate" (func $run)))
  (export "{SAGA_PARTICIPANT}" (instance $saga)))"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn admission_refuses_a_saga_export_of_the_wrong_shape() {
    let h = Harness::new(&cache_dir());
    let bytes = wrong_saga_component();
    let err = h.runtime.load(&bytes).unwrap_err();
    match &err {
        LoadError::SagaExport { message } => {
            assert!(
                message.contains("`compensate`") || message.contains("`execute`"),
                "{message}"
            );
        }
        other => panic!("expected SagaExport, got {other}"),
    }
    assert!(err.to_string().contains(SAGA_PARTICIPANT), "{err}");
    // The manifest still shows the export, for `ahv inspect`.
    let m = h.runtime.inspect(&bytes).unwrap();
    assert!(m.exports.iter().any(|e| e == SAGA_PARTICIPANT));
}

#[tokio::test]
async fn an_abandoned_step_calls_changes_are_kept_for_that_step_whatever_runs_in_between() {
    let h = Harness::new(&cache_dir());
    let s = Session::new();
    let mut agent = s
        .spawn(&h, ahv_agents::SCRIPTED, "did:t:a", Ring::Standard)
        .await;
    let a = step("a", "slow");
    // The caller stops waiting mid-call (a cancelled fan-out branch): the
    // call's future is dropped while the guest sleeps.
    let dropped = tokio::time::timeout(
        Duration::from_millis(500),
        agent.execute_step(&a, "write shared/a.txt half\nsleep 60000", NO_STEP_DEADLINE),
    )
    .await;
    assert!(dropped.is_err(), "the sleeping step finished: {dropped:?}");
    assert_eq!(s.file("shared/a.txt").as_deref(), Some("half"));
    // Another step runs on the same agent before anyone collects.
    let b = step("b", "quick");
    let out = within(
        LIMIT,
        "step b",
        agent.execute_step(&b, "write shared/b.txt whole", NO_STEP_DEADLINE),
    )
    .await;
    assert_eq!(out.as_ref().map(|o| o.changes.len()).ok(), Some(1));
    assert!(outcome(out).is_ok());
    // b finished: nothing of it is abandoned; a's change is still a's.
    assert!(agent.take_abandoned_changes(&b).is_empty());
    let mut other_attempt = a.clone();
    other_attempt.attempt = 2;
    assert!(agent.take_abandoned_changes(&other_attempt).is_empty());
    let taken = agent.take_abandoned_changes(&a);
    assert_eq!(
        taken.iter().map(|c| c.summary()).collect::<Vec<_>>(),
        ["write shared/a.txt"]
    );
    // Taken once.
    assert!(agent.take_abandoned_changes(&a).is_empty());
}
