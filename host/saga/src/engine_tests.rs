use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::definition::Backoff;
use crate::retry::{FixedJitter, SeededJitter};

/// What a scripted step attempt does.
#[derive(Clone)]
enum Outcome {
    Ok,
    Fail(FailureKind),
    /// Fails with this message.
    FailWith(FailureKind, String),
    /// Never finishes; records its id in `dropped` when its future is dropped.
    Hang,
    /// Waits until `n` attempts are inside the barrier together, then succeeds.
    Meet(Arc<tokio::sync::Barrier>),
    Panic,
}

#[derive(Default)]
struct FakeRunner {
    script: Mutex<HashMap<String, VecDeque<Outcome>>>,
    calls: Mutex<Vec<(String, u32, Duration)>>,
    compensations: Mutex<Vec<(String, String, Value)>>,
    failing_compensations: HashSet<String>,
    dropped: Arc<Mutex<Vec<String>>>,
    /// Steps whose abandoned attempt was cleaned up, with whether its
    /// future had been dropped by then.
    abandoned: Mutex<Vec<(String, bool)>>,
    /// Steps whose abandoned attempt leaves changes behind.
    residue_on_abandon: HashSet<String>,
    /// The message of a failing compensation, if not the default.
    compensation_message: Option<String>,
}

impl FakeRunner {
    fn new() -> FakeRunner {
        FakeRunner::default()
    }

    fn script(self, step: &str, outcomes: Vec<Outcome>) -> FakeRunner {
        lock(&self.script).insert(step.to_owned(), outcomes.into());
        self
    }

    fn residue_on_abandon(mut self, step: &str) -> FakeRunner {
        self.residue_on_abandon.insert(step.to_owned());
        self
    }

    fn failing_compensation(mut self, step: &str) -> FakeRunner {
        self.failing_compensations.insert(step.to_owned());
        self
    }

    fn compensation_message(mut self, message: String) -> FakeRunner {
        self.compensation_message = Some(message);
        self
    }

    fn executed(&self) -> Vec<String> {
        lock(&self.calls).iter().map(|c| c.0.clone()).collect()
    }

    fn compensated(&self) -> Vec<String> {
        lock(&self.compensations)
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }
}

struct DropFlag(String, Arc<Mutex<Vec<String>>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        lock(&self.1).push(self.0.clone());
    }
}

impl StepRunner for FakeRunner {
    fn execute(&self, call: StepCall) -> BoxFuture<Result<StepDone, StepFailure>> {
        let id = call.step.id.clone();
        lock(&self.calls).push((id.clone(), call.attempt, call.deadline));
        let outcome = lock(&self.script)
            .get_mut(&id)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Outcome::Ok);
        let done = StepDone {
            output: format!("{id}#{}", call.attempt),
            undo: json!({ "step": id, "input": call.step.undo_input() }),
        };
        let dropped = Arc::clone(&self.dropped);
        Box::pin(async move {
            match outcome {
                Outcome::Ok => Ok(done),
                Outcome::Fail(kind) => Err(StepFailure {
                    message: format!("{id} failed ({kind:?})"),
                    kind,
                }),
                Outcome::FailWith(kind, message) => Err(StepFailure { message, kind }),
                Outcome::Hang => {
                    let _flag = DropFlag(id, dropped);
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Outcome::Meet(b) => {
                    b.wait().await;
                    Ok(done)
                }
                Outcome::Panic => panic!("scripted panic in {id}"),
            }
        })
    }

    fn abandoned(&self, call: StepCall) -> BoxFuture<Result<(), String>> {
        let id = call.step.id.clone();
        let was_dropped = lock(&self.dropped).contains(&id);
        lock(&self.abandoned).push((id.clone(), was_dropped));
        let residue = self.residue_on_abandon.contains(&id);
        Box::pin(async move {
            if residue {
                Err(format!("{id}'s half-written file stays"))
            } else {
                Ok(())
            }
        })
    }

    fn compensate(&self, call: CompensateCall) -> BoxFuture<Result<(), CompensationFailure>> {
        let id = call.step.id.clone();
        lock(&self.compensations).push((id.clone(), call.output, call.undo));
        let fail = self.failing_compensations.contains(&id);
        let message = self.compensation_message.clone();
        Box::pin(async move {
            if fail {
                Err(CompensationFailure {
                    message: message.unwrap_or_else(|| format!("cannot undo {id}")),
                })
            } else {
                Ok(())
            }
        })
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    escalations: Mutex<Vec<Vec<EscalatedStep>>>,
}

impl SagaObserver for Recorder {
    fn record(&self, _saga: &SagaId, record: &SagaRecord) {
        lock(&self.events).push(record.event_type().to_owned());
    }
    fn escalated(&self, _saga: &SagaId, failures: &[EscalatedStep]) {
        lock(&self.escalations).push(failures.to_vec());
    }
}

struct Harness {
    store: Arc<MemoryStore>,
    runner: Arc<FakeRunner>,
    observer: Arc<Recorder>,
    sleeper: Arc<FakeSleeper>,
    clock: FakeClock,
    engine: Engine,
}

fn harness_with(store: MemoryStore, runner: FakeRunner, jitter: Arc<dyn Jitter>) -> Harness {
    let clock = FakeClock::new();
    let store = Arc::new(store);
    let runner = Arc::new(runner);
    let observer = Arc::new(Recorder::default());
    let sleeper = Arc::new(FakeSleeper::new(clock.clone()));
    let engine = Engine::new(
        store.clone(),
        runner.clone(),
        observer.clone(),
        sleeper.clone(),
        jitter,
        Arc::new(clock.clone()),
    );
    Harness {
        store,
        runner,
        observer,
        sleeper,
        clock,
        engine,
    }
}

fn harness(runner: FakeRunner) -> Harness {
    harness_with(MemoryStore::new(), runner, Arc::new(FixedJitter(0.5)))
}

fn id() -> SagaId {
    SagaId::new("saga-1").unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn step(id: &str, deps: &[&str]) -> StepDef {
    StepDef {
        id: id.to_owned(),
        agent: format!("agent-{id}"),
        action: "work".to_owned(),
        via: Default::default(),
        execute: format!("in-{id}"),
        undo: None,
        timeout_secs: 300,
        retries: 0,
        checkpoint: None,
        depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
    }
}

fn saga(steps: Vec<StepDef>) -> SagaDefinition {
    SagaDefinition {
        agents: Vec::new(),
        name: "test".to_owned(),
        isolation: Default::default(),
        on_crash: Default::default(),
        backoff: Default::default(),
        steps,
        fanout: Vec::new(),
    }
}

fn chain() -> SagaDefinition {
    saga(vec![step("a", &[]), step("b", &["a"]), step("c", &["b"])])
}

fn group(id: &str, policy: FanoutPolicy, branches: &[&str]) -> crate::definition::FanoutDef {
    crate::definition::FanoutDef {
        id: id.to_owned(),
        policy,
        branches: branches.iter().map(|b| (*b).to_owned()).collect(),
        cancel_rest: true,
    }
}

/// A and then a fan-out of x, y, z, then d after the group.
fn fanout_saga(policy: FanoutPolicy) -> SagaDefinition {
    let mut d = saga(vec![
        step("a", &[]),
        step("x", &["a"]),
        step("y", &["a"]),
        step("z", &["a"]),
        step("d", &["g"]),
    ]);
    d.fanout.push(group("g", policy, &["x", "y", "z"]));
    d
}

fn states(r: &SagaReport) -> Vec<(String, StepState)> {
    r.steps.iter().map(|s| (s.id.clone(), s.state)).collect()
}

#[test]
fn a_successful_saga_reaches_completed_in_dependency_order() {
    let mut def = saga(vec![step("c", &["b"]), step("a", &[]), step("b", &["a"])]);
    def.steps[1].checkpoint = Some("goal".to_owned());
    let h = harness(FakeRunner::new());
    let r = rt().block_on(h.engine.run(id(), def)).unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(h.runner.executed(), ["a", "b", "c"]);
    assert!(r.steps.iter().all(|s| s.state == StepState::Committed));
    assert_eq!(r.step("b").unwrap().output.as_deref(), Some("b#1"));
    let events = lock(&h.observer.events).clone();
    assert_eq!(events.first().map(String::as_str), Some("saga.created"));
    assert_eq!(events.last().map(String::as_str), Some("saga.completed"));
    assert!(events.contains(&"saga.checkpoint_saved".to_owned()));
    let recs = h.store.load(&id()).unwrap();
    assert!(recs.contains(&SagaRecord::CheckpointSaved {
        step: "a".into(),
        hash: checkpoint_hash("goal", "a"),
    }));
    assert!(h.runner.compensated().is_empty());
}

#[test]
fn step_started_is_recorded_before_the_runner_and_committed_before_the_next_step() {
    let h = harness(FakeRunner::new());
    rt().block_on(h.engine.run(id(), chain())).unwrap();
    let kinds: Vec<&str> = h
        .store
        .load(&id())
        .unwrap()
        .iter()
        .map(SagaRecord::event_type)
        .collect();
    assert_eq!(
        kinds,
        [
            "saga.created",
            "saga.step_started",
            "saga.step_committed",
            "saga.step_started",
            "saga.step_committed",
            "saga.step_started",
            "saga.step_committed",
            "saga.completed"
        ]
    );
}

#[test]
fn the_runner_gets_the_step_deadline_and_attempt() {
    let mut def = chain();
    def.steps[0].timeout_secs = 7;
    let h = harness(FakeRunner::new());
    rt().block_on(h.engine.run(id(), def)).unwrap();
    let calls = lock(&h.runner.calls).clone();
    assert_eq!(calls[0], ("a".to_owned(), 1, Duration::from_secs(7)));
    assert_eq!(calls[1].2, Duration::from_secs(300));
}

#[test]
fn the_runner_gets_the_saga_isolation() {
    let mut def = chain();
    def.isolation = crate::definition::Isolation::Serializable;
    let seen = Arc::new(Mutex::new(Vec::new()));
    struct Spy(Arc<Mutex<Vec<crate::definition::Isolation>>>);
    impl StepRunner for Spy {
        fn execute(&self, call: StepCall) -> BoxFuture<Result<StepDone, StepFailure>> {
            lock(&self.0).push(call.isolation);
            Box::pin(async {
                Ok(StepDone {
                    output: String::new(),
                    undo: Value::Null,
                })
            })
        }
        fn compensate(&self, _: CompensateCall) -> BoxFuture<Result<(), CompensationFailure>> {
            Box::pin(async { Ok(()) })
        }
    }
    let clock = FakeClock::new();
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(Spy(seen.clone())),
        Arc::new(NoopObserver),
        Arc::new(FakeSleeper::new(clock.clone())),
        Arc::new(FixedJitter(0.0)),
        Arc::new(clock),
    );
    rt().block_on(engine.run(id(), def)).unwrap();
    assert_eq!(
        *lock(&seen),
        [crate::definition::Isolation::Serializable; 3]
    );
}

/// A runner's failure messages (a guest's own text, up to its ring's answer
/// limit) are cut to `MAX_ERROR_BYTES` in the records. Whole, 4 MiB of
/// control characters made a 24 MiB JSON record, past the file journal's
/// 16 MiB limit: the saga stopped before compensating, and nothing escalated.
#[test]
fn a_huge_failure_message_is_cut_and_the_saga_still_compensates_and_escalates() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "\u{1}".repeat(4 << 20);
    let runner = Arc::new(
        FakeRunner::new()
            .script(
                "c",
                vec![Outcome::FailWith(FailureKind::Failed, huge.clone())],
            )
            .failing_compensation("a")
            .compensation_message(huge),
    );
    let store = Arc::new(crate::store::FileStore::open(dir.path()).unwrap());
    let observer = Arc::new(Recorder::default());
    let clock = FakeClock::new();
    let engine = Engine::new(
        store.clone(),
        runner.clone(),
        observer.clone(),
        Arc::new(FakeSleeper::new(clock.clone())),
        Arc::new(FixedJitter(0.5)),
        Arc::new(clock),
    );
    let report = rt().block_on(engine.run(id(), chain())).unwrap();
    assert_eq!(report.state, SagaState::Escalated);
    assert_eq!(runner.compensated(), ["b", "a"]);
    assert_eq!(
        lock(&observer.escalations).len(),
        1,
        "the escalation hook ran"
    );
    let cut = |text: &str| {
        assert!(text.len() <= MAX_ERROR_BYTES, "{} bytes", text.len());
        assert!(
            text.ends_with(&format!("({} bytes in all)", 4 << 20)),
            "{}",
            &text[text.len() - 40..]
        );
    };
    let mut seen = 0;
    for r in store.load(&id()).unwrap() {
        match r {
            SagaRecord::StepFailed { error, .. }
            | SagaRecord::StepCompensationFailed { error, .. } => {
                cut(&error);
                seen += 1;
            }
            SagaRecord::Compensating { reason } => assert!(reason.len() <= MAX_ERROR_BYTES),
            _ => {}
        }
    }
    assert_eq!(seen, 2);
    assert_eq!(capped("short".into()), "short");
}

#[test]
fn a_crash_before_the_escalated_record_escalates_again_on_resume() {
    let runner = || {
        FakeRunner::new()
            .script("c", vec![Outcome::Fail(FailureKind::Failed)])
            .failing_compensation("a")
    };
    let h = harness(runner());
    rt().block_on(h.engine.run(id(), chain())).unwrap();
    let mut recs = h.store.load(&id()).unwrap();
    assert_eq!(
        recs.pop(),
        Some(SagaRecord::Finished {
            state: SagaState::Escalated
        })
    );
    let h2 = harness_with(
        MemoryStore::with_records(id(), recs),
        runner(),
        Arc::new(FixedJitter(0.0)),
    );
    let r = rt().block_on(h2.engine.resume(&id())).unwrap();
    assert_eq!(r.state, SagaState::Escalated);
    assert!(
        h2.runner.compensated().is_empty(),
        "nothing is compensated twice"
    );
    assert_eq!(lock(&h2.observer.escalations).len(), 1);
}

#[test]
fn a_failure_compensates_committed_steps_in_reverse_order() {
    let mut def = chain();
    def.steps.push(step("d", &["c"]));
    def.steps[0].undo = Some("undo-a".to_owned());
    let runner = FakeRunner::new().script("d", vec![Outcome::Fail(FailureKind::Failed)]);
    let h = harness(runner);
    let r = rt().block_on(h.engine.run(id(), def)).unwrap();
    assert_eq!(r.state, SagaState::Failed);
    assert_eq!(h.runner.compensated(), ["c", "b", "a"]);
    let comps = lock(&h.runner.compensations).clone();
    assert_eq!(comps[2].1, "a#1", "compensation gets the committed output");
    assert_eq!(comps[2].2, json!({"step": "a", "input": "undo-a"}));
    assert_eq!(r.step("d").unwrap().state, StepState::Failed);
    assert_eq!(r.step("a").unwrap().state, StepState::Compensated);
    let events = lock(&h.observer.events).clone();
    let comp = events
        .iter()
        .position(|e| e == "saga.compensating")
        .unwrap();
    let first_undo = events
        .iter()
        .position(|e| e == "saga.step_compensating")
        .unwrap();
    assert!(
        comp < first_undo,
        "Compensating is recorded before any compensation"
    );
    assert_eq!(events.last().map(String::as_str), Some("saga.failed"));
}

#[test]
fn a_first_step_failure_fails_without_compensating() {
    let runner = FakeRunner::new().script("a", vec![Outcome::Fail(FailureKind::Failed)]);
    let h = harness(runner);
    let r = rt().block_on(h.engine.run(id(), chain())).unwrap();
    assert_eq!(r.state, SagaState::Failed);
    assert!(h.runner.compensated().is_empty());
    assert!(!lock(&h.observer.events).contains(&"saga.compensating".to_owned()));
    assert_eq!(r.step("b").unwrap().state, StepState::Pending);
}

#[test]
fn a_failed_compensation_escalates_and_the_others_still_run() {
    let runner = FakeRunner::new()
        .script("c", vec![Outcome::Fail(FailureKind::Failed)])
        .failing_compensation("b");
    let h = harness(runner);
    let r = rt().block_on(h.engine.run(id(), chain())).unwrap();
    assert_eq!(r.state, SagaState::Escalated);
    assert_eq!(h.runner.compensated(), ["b", "a"]);
    assert_eq!(r.step("b").unwrap().state, StepState::CompensationFailed);
    assert_eq!(r.step("a").unwrap().state, StepState::Compensated);
    let esc = lock(&h.observer.escalations).clone();
    assert_eq!(
        esc,
        vec![vec![EscalatedStep {
            step: "b".into(),
            agent: "agent-b".into(),
            error: "cannot undo b".into()
        }]]
    );
    assert_eq!(
        lock(&h.observer.events).last().map(String::as_str),
        Some("saga.escalated")
    );
}

#[test]
fn retry_delays_follow_the_backoff_formula() {
    let mut def = saga(vec![step("a", &[])]);
    def.steps[0].retries = 4;
    def.backoff = Backoff {
        base_ms: 100,
        cap_ms: 500,
    };
    let fail = Outcome::Fail(FailureKind::Failed);
    let runner =
        FakeRunner::new().script("a", vec![fail.clone(), fail.clone(), fail.clone(), fail]);
    let h = harness_with(MemoryStore::new(), runner, Arc::new(SeededJitter::new(42)));
    let r = rt().block_on(h.engine.run(id(), def.clone())).unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(r.step("a").unwrap().attempts, 5);
    let expect = SeededJitter::new(42);
    let want: Vec<Duration> = (1..=4)
        .map(|n| Duration::from_millis(def.backoff.delay_ms(n, expect.sample())))
        .collect();
    assert_eq!(h.sleeper.delays(), want);
    // Ceilings 100, 200, 400, 500: each delay in [ceiling/2, ceiling].
    for (d, c) in want.iter().zip([100u64, 200, 400, 500]) {
        let ms = d.as_millis() as u64;
        assert!(ms >= c / 2 && ms <= c, "{ms} vs {c}");
    }
    assert_eq!(h.clock.now(), want.iter().sum::<Duration>());
    assert_eq!(r.step("a").unwrap().elapsed, h.clock.now());
    let retry: Vec<Option<u64>> = h
        .store
        .load(&id())
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            SagaRecord::StepFailed { retry_in_ms, .. } => Some(*retry_in_ms),
            _ => None,
        })
        .collect();
    let want_ms: Vec<Option<u64>> = want.iter().map(|d| Some(d.as_millis() as u64)).collect();
    assert_eq!(retry, want_ms);
}

#[test]
fn retries_run_out() {
    let mut def = saga(vec![step("a", &[])]);
    def.steps[0].retries = 2;
    let fail = Outcome::Fail(FailureKind::Failed);
    let runner = FakeRunner::new().script("a", vec![fail.clone(), fail.clone(), fail]);
    let h = harness(runner);
    let r = rt().block_on(h.engine.run(id(), def)).unwrap();
    assert_eq!(r.state, SagaState::Failed);
    assert_eq!(r.step("a").unwrap().attempts, 3);
    assert_eq!(h.sleeper.delays().len(), 2);
}

#[test]
fn timeouts_are_retried() {
    let mut def = saga(vec![step("a", &[])]);
    def.steps[0].retries = 1;
    let runner = FakeRunner::new().script("a", vec![Outcome::Fail(FailureKind::Timeout)]);
    let h = harness(runner);
    let r = rt().block_on(h.engine.run(id(), def)).unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(h.runner.executed(), ["a", "a"]);
}

#[test]
fn a_breach_is_not_retried() {
    let mut def = chain();
    def.steps[1].retries = 5;
    let runner = FakeRunner::new().script("b", vec![Outcome::Fail(FailureKind::Breach)]);
    let h = harness(runner);
    let r = rt().block_on(h.engine.run(id(), def)).unwrap();
    assert_eq!(r.state, SagaState::Failed);
    assert_eq!(h.runner.executed(), ["a", "b"]);
    assert!(h.sleeper.delays().is_empty());
    assert_eq!(h.runner.compensated(), ["a"]);
}

#[test]
fn fanout_all_succeeds_and_branches_run_concurrently() {
    let meet = Arc::new(tokio::sync::Barrier::new(3));
    let runner = FakeRunner::new()
        .script("x", vec![Outcome::Meet(meet.clone())])
        .script("y", vec![Outcome::Meet(meet.clone())])
        .script("z", vec![Outcome::Meet(meet)]);
    let h = harness(runner);
    // The barrier only opens if all three branches are in flight at once.
    let r = rt()
        .block_on(h.engine.run(id(), fanout_saga(FanoutPolicy::All)))
        .unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(h.runner.executed().last().map(String::as_str), Some("d"));
    let recs = h.store.load(&id()).unwrap();
    assert!(recs.iter().any(|r| matches!(r,
        SagaRecord::FanoutResolved { group, satisfied: true, succeeded, .. }
            if group == "g" && succeeded.len() == 3)));
    let events = lock(&h.observer.events).clone();
    assert!(events.contains(&"saga.fanout_started".to_owned()));
    assert!(events.contains(&"saga.fanout_resolved".to_owned()));
}

#[test]
fn fanout_all_with_a_failure_compensates_branches_then_earlier_steps() {
    let runner = FakeRunner::new().script("y", vec![Outcome::Fail(FailureKind::Failed)]);
    let h = harness(runner);
    let r = rt()
        .block_on(h.engine.run(id(), fanout_saga(FanoutPolicy::All)))
        .unwrap();
    assert_eq!(r.state, SagaState::Failed);
    let comp = h.runner.compensated();
    assert_eq!(comp.len(), 3);
    assert_eq!(comp.last().map(String::as_str), Some("a"));
    let mut branches = comp[..2].to_vec();
    branches.sort();
    assert_eq!(branches, ["x", "z"]);
    assert!(!h.runner.executed().contains(&"d".to_owned()));
}

#[test]
fn fanout_majority_holds_with_two_of_three_and_the_failed_branch_stays_failed() {
    let runner = FakeRunner::new().script("z", vec![Outcome::Fail(FailureKind::Failed)]);
    let h = harness(runner);
    let r = rt()
        .block_on(h.engine.run(id(), fanout_saga(FanoutPolicy::Majority)))
        .unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(r.step("z").unwrap().state, StepState::Failed);
    assert_eq!(r.step("d").unwrap().state, StepState::Committed);
    assert!(h.runner.compensated().is_empty());
}

#[test]
fn fanout_majority_fails_with_one_of_three() {
    let f = || vec![Outcome::Fail(FailureKind::Failed)];
    let runner = FakeRunner::new().script("y", f()).script("z", f());
    let h = harness(runner);
    let r = rt()
        .block_on(h.engine.run(id(), fanout_saga(FanoutPolicy::Majority)))
        .unwrap();
    assert_eq!(r.state, SagaState::Failed);
    assert_eq!(h.runner.compensated(), ["x", "a"]);
}

#[test]
fn fanout_any_cancels_the_rest_once_one_succeeds() {
    let runner = FakeRunner::new()
        .script("y", vec![Outcome::Hang])
        .script("z", vec![Outcome::Hang]);
    let h = harness(runner);
    let r = rt()
        .block_on(h.engine.run(id(), fanout_saga(FanoutPolicy::Any)))
        .unwrap();
    assert_eq!(r.state, SagaState::Completed);
    let mut dropped = lock(&h.runner.dropped).clone();
    dropped.sort();
    assert_eq!(
        dropped,
        ["y", "z"],
        "the hanging branches' futures were dropped"
    );
    // ... before the runner was asked to clean up after each, and the
    // engine waited for that before resolving the group.
    let mut abandoned = lock(&h.runner.abandoned).clone();
    abandoned.sort();
    assert_eq!(abandoned, [("y".to_owned(), true), ("z".to_owned(), true)]);
    for b in ["y", "z"] {
        assert_eq!(r.step(b).unwrap().state, StepState::Failed);
    }
    let recs = h.store.load(&id()).unwrap();
    let cancelled = recs
        .iter()
        .filter(|r| {
            matches!(
                r,
                SagaRecord::StepFailed {
                    kind: FailureKind::Cancelled,
                    ..
                }
            )
        })
        .count();
    assert_eq!(cancelled, 2);
    assert!(recs.iter().any(|r| matches!(r,
        SagaRecord::FanoutResolved { satisfied: true, cancelled, .. } if cancelled.len() == 2)));
}

#[test]
fn a_cancelled_branch_that_leaves_changes_escalates_the_saga_although_its_group_won() {
    let runner = FakeRunner::new()
        .script("y", vec![Outcome::Hang])
        .script("z", vec![Outcome::Hang])
        .residue_on_abandon("y");
    let h = harness(runner);
    let r = rt()
        .block_on(h.engine.run(id(), fanout_saga(FanoutPolicy::Any)))
        .unwrap();
    assert_eq!(r.state, SagaState::Escalated);
    let y = r.step("y").unwrap();
    assert_eq!(y.state, StepState::Failed);
    assert!(
        y.error.as_deref().unwrap().contains("half-written"),
        "{y:?}"
    );
    // The winner and the step before the group are compensated; d never ran.
    let mut compensated = h.runner.compensated();
    compensated.sort();
    assert_eq!(compensated, ["a", "x"]);
    assert!(!h.runner.executed().contains(&"d".to_owned()));
    let escalations = lock(&h.observer.escalations).clone();
    assert_eq!(escalations.len(), 1);
    assert!(
        escalations[0].iter().any(|e| e.step == "y"),
        "{escalations:?}"
    );
    let recs = h.store.load(&id()).unwrap();
    assert!(recs.iter().any(|r| matches!(r,
        SagaRecord::StepFailed { step, kind: FailureKind::Residue, .. } if step == "y")));
}

#[test]
fn fanout_any_without_cancel_rest_waits_for_every_branch() {
    let mut def = fanout_saga(FanoutPolicy::Any);
    def.fanout[0].cancel_rest = false;
    let runner = FakeRunner::new().script("y", vec![Outcome::Fail(FailureKind::Failed)]);
    let h = harness(runner);
    let r = rt().block_on(h.engine.run(id(), def)).unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(r.step("x").unwrap().state, StepState::Committed);
    assert_eq!(r.step("z").unwrap().state, StepState::Committed);
    assert_eq!(r.step("y").unwrap().state, StepState::Failed);
}

#[test]
fn fanout_any_fails_when_every_branch_fails() {
    let f = || vec![Outcome::Fail(FailureKind::Breach)];
    let runner = FakeRunner::new()
        .script("x", f())
        .script("y", f())
        .script("z", f());
    let h = harness(runner);
    let r = rt()
        .block_on(h.engine.run(id(), fanout_saga(FanoutPolicy::Any)))
        .unwrap();
    assert_eq!(r.state, SagaState::Failed);
    assert_eq!(h.runner.compensated(), ["a"]);
}

#[test]
fn a_panicking_branch_fails_without_taking_the_host_down() {
    let runner = FakeRunner::new().script("x", vec![Outcome::Panic]);
    let h = harness(runner);
    let r = rt()
        .block_on(h.engine.run(id(), fanout_saga(FanoutPolicy::Majority)))
        .unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(r.step("x").unwrap().state, StepState::Failed);
    assert_eq!(
        r.step("x").unwrap().error.as_deref(),
        Some("the step runner panicked")
    );
}

#[test]
fn a_finished_saga_resumes_to_its_report_without_running_anything() {
    let h = harness(FakeRunner::new());
    let done = rt().block_on(h.engine.run(id(), chain())).unwrap();
    let before = h.store.load(&id()).unwrap().len();
    let again = rt().block_on(h.engine.resume(&id())).unwrap();
    assert_eq!(again.state, SagaState::Completed);
    assert_eq!(states(&again), states(&done));
    assert_eq!(h.runner.executed().len(), 3);
    assert_eq!(h.store.load(&id()).unwrap().len(), before);
}

#[test]
fn an_unfinished_saga_cannot_be_run_again() {
    let recs = vec![
        SagaRecord::Created {
            saga: id(),
            definition: Arc::new(chain()),
            at_ms: 0,
        },
        SagaRecord::StepStarted {
            step: "a".into(),
            attempt: 1,
        },
    ];
    let h = harness_with(
        MemoryStore::with_records(id(), recs),
        FakeRunner::new(),
        Arc::new(FixedJitter(0.0)),
    );
    let e = rt().block_on(h.engine.run(id(), chain())).unwrap_err();
    assert!(matches!(
        e,
        EngineError::Unfinished {
            state: SagaState::Running,
            ..
        }
    ));
}

#[test]
fn resume_of_an_unknown_saga_is_not_found() {
    let h = harness(FakeRunner::new());
    let e = rt().block_on(h.engine.resume(&id())).unwrap_err();
    assert!(matches!(e, EngineError::NotFound { .. }));
}

#[test]
fn an_interrupted_step_is_retried_without_using_up_a_retry() {
    // retries = 0: only a free retry can run it again.
    let recs = vec![
        SagaRecord::Created {
            saga: id(),
            definition: Arc::new(chain()),
            at_ms: 0,
        },
        SagaRecord::StepStarted {
            step: "a".into(),
            attempt: 1,
        },
        SagaRecord::StepCommitted {
            step: "a".into(),
            attempt: 1,
            output: "a#1".into(),
            undo: Value::Null,
        },
        SagaRecord::StepStarted {
            step: "b".into(),
            attempt: 1,
        },
    ];
    let h = harness_with(
        MemoryStore::with_records(id(), recs),
        FakeRunner::new(),
        Arc::new(FixedJitter(0.0)),
    );
    let r = rt().block_on(h.engine.resume(&id())).unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert_eq!(h.runner.executed(), ["b", "c"]);
    assert_eq!(r.step("b").unwrap().attempts, 2);
    let recs = h.store.load(&id()).unwrap();
    assert!(recs.iter().any(|r| matches!(r,
        SagaRecord::StepFailed { step, error, interrupted: true, retry_in_ms: Some(0), .. }
            if step == "b" && error == INTERRUPTED)));
}

#[test]
fn on_crash_compensate_compensates_instead_of_resuming() {
    let mut def = chain();
    def.on_crash = CrashPolicy::Compensate;
    let recs = vec![
        SagaRecord::Created {
            saga: id(),
            definition: Arc::new(def),
            at_ms: 0,
        },
        SagaRecord::StepStarted {
            step: "a".into(),
            attempt: 1,
        },
        SagaRecord::StepCommitted {
            step: "a".into(),
            attempt: 1,
            output: "a#1".into(),
            undo: json!(7),
        },
        SagaRecord::StepStarted {
            step: "b".into(),
            attempt: 1,
        },
    ];
    let h = harness_with(
        MemoryStore::with_records(id(), recs),
        FakeRunner::new(),
        Arc::new(FixedJitter(0.0)),
    );
    let r = rt().block_on(h.engine.resume(&id())).unwrap();
    assert_eq!(r.state, SagaState::Failed);
    assert!(h.runner.executed().is_empty());
    assert_eq!(h.runner.compensated(), ["a"]);
    assert_eq!(lock(&h.runner.compensations)[0].2, json!(7));
    assert_eq!(r.step("b").unwrap().state, StepState::Failed);
    assert_eq!(r.step("b").unwrap().error.as_deref(), Some(INTERRUPTED));
}

#[test]
fn an_operator_can_compensate_a_stuck_saga() {
    let h = harness(FakeRunner::new().script("c", vec![Outcome::Fail(FailureKind::Failed)]));
    // Build the records of a saga stopped after b committed.
    let full = {
        let h2 = harness(FakeRunner::new());
        rt().block_on(h2.engine.run(id(), chain())).unwrap();
        h2.store.load(&id()).unwrap()
    };
    for r in &full[..5] {
        h.store.append(&id(), r).unwrap();
    }
    let r = rt().block_on(h.engine.compensate(&id(), "stop")).unwrap();
    assert_eq!(r.state, SagaState::Failed);
    assert_eq!(h.runner.compensated(), ["b", "a"]);
    assert!(h.store.load(&id()).unwrap().iter().any(|r| matches!(r,
        SagaRecord::Compensating { reason } if reason == "operator: stop")));
}

#[test]
fn a_replay_skips_steps_with_a_valid_checkpoint_and_reruns_a_changed_goal() {
    let mut def = chain();
    def.steps[0].checkpoint = Some("g1".into());
    def.steps[1].checkpoint = Some("g1".into());
    let h = harness(FakeRunner::new());
    rt().block_on(h.engine.run(id(), def.clone())).unwrap();
    assert_eq!(h.runner.executed(), ["a", "b", "c"]);
    def.steps[1].checkpoint = Some("g2".into());
    let r = rt().block_on(h.engine.run(id(), def)).unwrap();
    assert_eq!(r.state, SagaState::Completed);
    // a skipped (same goal); b re-run (goal changed); c has no checkpoint.
    assert_eq!(h.runner.executed(), ["a", "b", "c", "b", "c"]);
    assert!(r.step("a").unwrap().skipped);
    assert_eq!(r.step("a").unwrap().output.as_deref(), Some("a#1"));
    assert!(!r.step("b").unwrap().skipped);
    assert!(lock(&h.observer.events).contains(&"saga.step_skipped".to_owned()));
}

#[test]
fn a_compensated_step_checkpoint_is_not_reused() {
    let mut def = chain();
    def.steps[0].checkpoint = Some("g".into());
    let h = harness(FakeRunner::new().script("c", vec![Outcome::Fail(FailureKind::Failed)]));
    let first = rt().block_on(h.engine.run(id(), def.clone())).unwrap();
    assert_eq!(first.state, SagaState::Failed);
    let r = rt().block_on(h.engine.run(id(), def)).unwrap();
    assert_eq!(r.state, SagaState::Completed);
    assert!(!r.step("a").unwrap().skipped);
    assert_eq!(h.runner.executed(), ["a", "b", "c", "a", "b", "c"]);
}

#[test]
fn an_invalid_definition_is_refused_before_anything_is_recorded() {
    let h = harness(FakeRunner::new());
    let e = rt().block_on(h.engine.run(id(), saga(vec![]))).unwrap_err();
    assert!(matches!(
        e,
        EngineError::Definition(DefinitionError::Empty { .. })
    ));
    assert!(h.store.list().unwrap().is_empty());
}

#[test]
fn inconsistent_records_are_reported_not_obeyed() {
    let recs = vec![
        SagaRecord::Created {
            saga: id(),
            definition: Arc::new(chain()),
            at_ms: 0,
        },
        SagaRecord::StepCommitted {
            step: "a".into(),
            attempt: 1,
            output: String::new(),
            undo: Value::Null,
        },
    ];
    let h = harness_with(
        MemoryStore::with_records(id(), recs),
        FakeRunner::new(),
        Arc::new(FixedJitter(0.0)),
    );
    let e = rt().block_on(h.engine.resume(&id())).unwrap_err();
    assert!(e.to_string().contains("pending -> committed"), "{e}");
    let h = harness_with(
        MemoryStore::with_records(
            id(),
            vec![SagaRecord::Finished {
                state: SagaState::Completed,
            }],
        ),
        FakeRunner::new(),
        Arc::new(FixedJitter(0.0)),
    );
    assert!(matches!(
        rt().block_on(h.engine.resume(&id())),
        Err(EngineError::Corrupt { .. })
    ));
}

#[test]
fn records_round_trip_through_json_with_a_type_tag() {
    let rec = SagaRecord::StepFailed {
        step: "a".into(),
        attempt: 2,
        kind: FailureKind::Timeout,
        error: "slow".into(),
        retry_in_ms: Some(150),
        interrupted: false,
    };
    let text = serde_json::to_string(&rec).unwrap();
    assert!(text.starts_with(r#"{"type":"step_failed""#), "{text}");
    assert_eq!(serde_json::from_str::<SagaRecord>(&text).unwrap(), rec);
    let bad = r#"{"type":"created","saga":"bad id","definition":{},"at_ms":0}"#;
    assert!(serde_json::from_str::<SagaRecord>(bad).is_err());
}

#[test]
fn saga_ids_are_validated() {
    assert!(SagaId::new("saga-1").is_ok());
    let e = SagaId::new("").unwrap_err();
    assert_eq!(e, IdError::Empty { kind: "saga" });
    assert!(SagaId::new("-x").is_err());
    assert!(SagaId::new("a".repeat(257)).is_err());
}

/// Which steps committed in `records` (the last generation only).
fn committed_in(records: &[SagaRecord]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match r {
            SagaRecord::StepCommitted { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect()
}

/// A runner whose outcome depends only on the step, so a resumed run behaves
/// like the original one.
fn steady_runner(fail: &[&str], failing_comp: &[&str]) -> FakeRunner {
    let mut r = FakeRunner::new();
    for f in fail {
        r = r.script(f, vec![Outcome::Fail(FailureKind::Breach); 8]);
    }
    for c in failing_comp {
        r = r.failing_compensation(c);
    }
    r
}

/// Runs `def` to the end, then for every prefix of its records resumes a
/// crash at that point and checks the outcome and that no committed step runs again.
fn check_every_crash_point(def: SagaDefinition, fail: &[&str], failing_comp: &[&str]) {
    let full = harness(steady_runner(fail, failing_comp));
    let want = rt().block_on(full.engine.run(id(), def.clone())).unwrap();
    let records = full.store.load(&id()).unwrap();
    for cut in 1..=records.len() {
        let prefix = records[..cut].to_vec();
        let h = harness_with(
            MemoryStore::with_records(id(), prefix.clone()),
            steady_runner(fail, failing_comp),
            Arc::new(FixedJitter(0.5)),
        );
        let got = rt().block_on(h.engine.resume(&id())).unwrap();
        assert_eq!(got.state, want.state, "cut at {cut}");
        assert_eq!(states(&got), states(&want), "cut at {cut}");
        let already = committed_in(&prefix);
        for s in h.runner.executed() {
            assert!(!already.contains(&s), "cut at {cut}: {s} ran again");
        }
        let mut all = committed_in(&h.store.load(&id()).unwrap());
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "cut at {cut}: a step committed twice");
        // The whole log replays through the state machines.
        assert_eq!(h.engine.report(&id()).unwrap().state, want.state);
    }
}

#[test]
fn every_crash_point_of_a_successful_saga_resumes_to_completed() {
    let mut def = fanout_saga(FanoutPolicy::All);
    def.steps[0].checkpoint = Some("goal".into());
    check_every_crash_point(def, &[], &[]);
}

#[test]
fn every_crash_point_of_a_failing_saga_resumes_to_the_same_compensation() {
    check_every_crash_point(fanout_saga(FanoutPolicy::Majority), &["y", "d"], &[]);
    check_every_crash_point(chain(), &["c"], &["a"]);
}

#[test]
fn every_crash_point_under_any_resumes_to_the_same_end() {
    let mut def = fanout_saga(FanoutPolicy::Any);
    def.fanout[0].cancel_rest = false;
    check_every_crash_point(def, &["x", "z"], &[]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random chains with random failures and failing compensations: every
    /// crash point resumes to the same end, the engine never breaks the state
    /// machine (the log always replays) and no committed step runs twice.
    #[test]
    fn resume_after_any_crash_matches_an_uninterrupted_run(
        n in 1usize..6,
        fail in proptest::option::of(0usize..6),
        bad_comp in proptest::collection::vec(0usize..6, 0..3),
        crash_compensate in any::<bool>(),
    ) {
        let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let steps = (0..n)
            .map(|i| {
                let deps: Vec<&str> = if i == 0 { vec![] } else { vec![ids[i - 1].as_str()] };
                step(&ids[i], &deps)
            })
            .collect();
        let mut def = saga(steps);
        if crash_compensate {
            def.on_crash = CrashPolicy::Compensate;
        }
        let fail: Vec<&str> = fail.filter(|&f| f < n).map(|f| ids[f].as_str()).into_iter().collect();
        let bad: Vec<&str> = bad_comp.iter().filter(|&&c| c < n).map(|&c| ids[c].as_str()).collect();
        if crash_compensate {
            // Under compensate a crash changes the ending, so check the
            // invariants only: no re-execution, a final state, a valid log.
            let full = harness(steady_runner(&fail, &bad));
            rt().block_on(full.engine.run(id(), def.clone())).unwrap();
            let records = full.store.load(&id()).unwrap();
            for cut in 1..=records.len() {
                let h = harness_with(
                    MemoryStore::with_records(id(), records[..cut].to_vec()),
                    steady_runner(&fail, &bad),
                    Arc::new(FixedJitter(0.5)),
                );
                let got = rt().block_on(h.engine.resume(&id())).unwrap();
                prop_assert!(got.state.is_final());
                let before = committed_in(&records[..cut]);
                let finished = records[..cut].iter().any(|r| matches!(r, SagaRecord::Finished { .. }));
                if !finished {
                    prop_assert!(h.runner.executed().is_empty(), "compensate never executes");
                }
                for s in h.runner.executed() {
                    prop_assert!(!before.contains(&s));
                }
                prop_assert_eq!(h.engine.report(&id()).unwrap().state, got.state);
            }
        } else {
            check_every_crash_point(def, &fail, &bad);
        }
    }
}

#[test]
fn the_tokio_sleeper_completes_a_zero_wait() {
    rt().block_on(TokioSleeper.sleep(Duration::ZERO));
}

#[test]
fn engine_and_store_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
    check::<MemoryStore>();
    check::<FakeSleeper>();
}

#[test]
fn a_shared_definition_is_planned_once_and_a_changed_one_again() {
    let plans = Arc::new(PlanCache::default());
    let h = harness(FakeRunner::new());
    let engine = h.engine.clone().with_plans(Arc::clone(&plans));
    let rt = rt();
    let mut def = Arc::new(chain());
    for n in 0..3 {
        let saga = SagaId::new(format!("saga-shared-{n}")).unwrap();
        let r = rt.block_on(engine.run(saga, Arc::clone(&def))).unwrap();
        assert_eq!(r.state, SagaState::Completed);
    }
    assert_eq!(plans.len(), 1, "three runs of one shared definition");
    assert_eq!(h.runner.executed(), ["a", "b", "c"].repeat(3));

    // Changing it (the cache's weak pointer makes `make_mut` move it to a
    // new allocation) must run the changed steps, not the cached plan.
    Arc::make_mut(&mut def).steps.push(step("d", &["c"]));
    let r = rt
        .block_on(engine.run(SagaId::new("saga-changed").unwrap(), Arc::clone(&def)))
        .unwrap();
    assert_eq!(r.steps.len(), 4);
    assert_eq!(h.runner.executed().last().map(String::as_str), Some("d"));

    // An equal definition in another allocation is planned on its own (the
    // store's records hold every definition run so far).
    rt.block_on(engine.run(SagaId::new("saga-other").unwrap(), chain()))
        .unwrap();
    assert_eq!(plans.len(), 3);
    drop(engine);
    drop(h);
    // A definition nobody holds any more is forgotten.
    let alone = PlanCache::default();
    alone.get(&Arc::new(chain())).unwrap();
    assert_eq!(alone.len(), 1);
    alone.get(&Arc::new(chain())).unwrap();
    assert_eq!(alone.len(), 1, "the first definition was dropped");
    let held: Vec<_> = (0..PLANS_KEPT + 4).map(|_| Arc::new(chain())).collect();
    for d in &held {
        alone.get(d).unwrap();
    }
    assert_eq!(alone.len(), PLANS_KEPT, "the cache is bounded");
    let engine = harness(FakeRunner::new())
        .engine
        .with_plans(Arc::clone(&plans));

    // An invalid definition is refused every time, never cached.
    let bad = Arc::new(saga(vec![step("a", &["missing"])]));
    for _ in 0..2 {
        let e = rt
            .block_on(engine.run(SagaId::new("saga-bad").unwrap(), Arc::clone(&bad)))
            .unwrap_err();
        assert!(matches!(e, EngineError::Definition(_)), "{e}");
    }
}
