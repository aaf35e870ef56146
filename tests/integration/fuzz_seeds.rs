//! The fuzz targets' inputs as tests: every file under
//! `host/fuzz/seeds/<target>/` and `host/fuzz/regressions/<target>/` runs
//! through the target's own check (the fuzz crate's `checks/`, included
//! here), so an input that once crashed or broke an invariant stays a test.
//! Add a crash found by `cargo fuzz` by copying its input into
//! `regressions/<target>/`.
//!
//! The generated seeds (a real audit directory, components built from WAT
//! and copied from the example agents) are written again by
//! `AHV_BLESS=1 cargo test -p ahv-tests --test integration fuzz_seeds`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ahv_audit::signing::FakeWallClock;
use ahv_audit::{AuditConfig, Auditor, Durability, LogKind, read_log};
use ahv_core::{AgentId, EventBus, EventPayload, FakeClock, Ring, SessionId, TraceId};

#[path = "../../host/fuzz/checks/mod.rs"]
// `path::check` and `Fixture::shared` are the fuzz target's entry points.
#[allow(dead_code)]
mod checks;

use checks::audit_records as audit;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/fuzz")
}

/// Every input file of `target`: its seeds, then its regressions.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// Runs `check` on every input of `target`; fails naming each input whose
/// check panicked.
fn replay(target: &str, min_seeds: usize, check: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= min_seeds,
        "{target}: {} input file(s) under {}, expected at least {min_seeds}",
        files.len(),
        fuzz_dir().display()
    );
    let mut failed = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if std::panic::catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: the check fails on (see the panics above):\n{}",
        failed.join("\n")
    );
}

#[test]
fn fuzz_seeds_and_regressions_of_path_pass_its_check() {
    let fixture = checks::path::Fixture::new();
    replay("path", 10, |b| checks::path::check_with(&fixture, b));
}

#[test]
fn fuzz_seeds_and_regressions_of_audit_records_pass_its_check() {
    replay("audit_records", 5, audit::check);
}

#[test]
fn fuzz_seeds_and_regressions_of_admission_pass_its_check() {
    replay("admission", 5, checks::admission::check);
}

/// The `ok-*` audit seeds describe directories that verify: if one stops
/// verifying, the format changed under it and the seeds need `AHV_BLESS=1`.
#[test]
fn audit_seeds_named_ok_describe_directories_that_verify() {
    let ok: Vec<PathBuf> = inputs("audit_records")
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ok-"))
        })
        .collect();
    assert!(ok.len() >= 3, "ok-* seeds: {ok:?}");
    for p in ok {
        let outcome = audit::run(&std::fs::read(&p).unwrap());
        let report = outcome
            .report
            .unwrap_or_else(|| panic!("{}: verification did not run", p.display()));
        assert!(report.ok(), "{}:\n{report}", p.display());
        assert!(
            report.sessions.iter().any(|s| s.records > 0),
            "{}: no deltas verified",
            p.display()
        );
    }
}

/// Writes the generated seeds under `AHV_BLESS=1`; otherwise checks that
/// they are all there (their contents are judged by the replays above).
#[test]
fn generated_fuzz_seeds_are_committed() {
    let bless = std::env::var_os("AHV_BLESS").is_some();
    let mut missing = Vec::new();
    for (target, name, bytes) in generated_seeds() {
        let path = fuzz_dir().join("seeds").join(target).join(name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else if !path.is_file() {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "generated seeds missing (write them with AHV_BLESS=1):\n{}",
        missing.join("\n")
    );
}

fn generated_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in audit_seeds() {
        out.push(("audit_records", name.to_string(), bytes));
    }
    for (name, wat) in wat_seeds() {
        let bytes = wat::parse_str(&wat).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push(("admission", format!("{name}.wasm"), bytes));
    }
    // Two small real agents: one with no capability imports, one that
    // needs ring 1.
    out.push((
        "admission",
        "agent-spinner.wasm".into(),
        ahv_agents::SPINNER.to_vec(),
    ));
    out.push((
        "admission",
        "agent-deployer.wasm".into(),
        ahv_agents::DEPLOYER.to_vec(),
    ));
    out
}

/// A `run` export with the contract's type over a bump allocator: the
/// smallest component admission accepts.
const RUN_EXPORT: &str = r#"
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    (func (export "run") (param i32 i32) (result i32)
      (i32.store (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (i32.const 0))
      (i32.store (i32.const 24) (i32.const 0))
      (i32.const 16)))
  (core instance $i (instantiate $m))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc"))))
"#;

/// Components of shapes admission must tell apart, as WAT.
fn wat_seeds() -> Vec<(&'static str, String)> {
    vec![
        ("empty-component", "(component)".into()),
        ("core-module", r#"(module (func (export "run")))"#.into()),
        ("run-only", format!("(component {RUN_EXPORT})")),
        (
            // Serving HTTP is not something an agent does: refused.
            "refused-http-import",
            format!(
                r#"(component (import "wasi:http/incoming-handler@0.2.0" (instance)) {RUN_EXPORT})"#
            ),
        ),
        (
            // Outbound HTTP is the `net` capability: admitted by its name.
            "net-import",
            format!(
                r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)) {RUN_EXPORT})"#
            ),
        ),
        (
            // Linked, every use denied: admitted.
            "denied-socket-import",
            format!(r#"(component (import "wasi:sockets/tcp@0.2.0" (instance)) {RUN_EXPORT})"#),
        ),
        (
            // Admitted by its name; linking in a ring that has `vfs-write`
            // must refuse its type.
            "capability-of-the-wrong-type",
            format!(
                r#"(component
                     (import "agent-hypervisor:agent/vfs-write@0.1.0"
                       (instance (export "write" (func (param "x" u32)))))
                     {RUN_EXPORT})"#
            ),
        ),
        (
            "run-of-the-wrong-type",
            r#"(component
                 (core module $m (func (export "run")))
                 (core instance $i (instantiate $m))
                 (func (export "run") (canon lift (core func $i "run"))))"#
                .into(),
        ),
    ]
}

/// Audit directories written by a real auditor, as `audit_records` inputs.
fn audit_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    std::fs::create_dir_all(&dir).unwrap();
    audit::write_signing_key(&dir).unwrap();
    let clock = Arc::new(FakeClock::new());
    let config = AuditConfig {
        durability: Durability::EveryRecord,
        sign_delay: Duration::from_millis(1),
        ..AuditConfig::default()
    };
    let (auditor, _) = Auditor::open(
        &dir,
        config,
        clock.clone(),
        Arc::new(FakeWallClock::new(1_700_000_000_000)),
    )
    .unwrap();
    let bus = Arc::new(EventBus::new(1000, clock));
    auditor.attach(&bus);
    let (s1, s2) = (
        SessionId::new("s-1").unwrap(),
        SessionId::new("s-2").unwrap(),
    );
    let (a, b) = (
        AgentId::new("did:ex:a").unwrap(),
        AgentId::new("did:ex:b").unwrap(),
    );
    // Every field type of FORMAT.md: text, unsigned, real, ring, duration,
    // no hash, hash, agents.
    let events = [
        EventPayload::SessionCreated {
            creator: a.clone(),
            max_participants: 4,
            max_duration: Duration::from_secs(60),
        },
        EventPayload::SessionJoined {
            ring: Ring::Standard,
            sigma: 0.8,
        },
        EventPayload::VfsWrite {
            path: "shared/plan.md".into(),
            op: "write".into(),
            size: 4,
            before: None,
            after: Some([9; 32]),
        },
        EventPayload::LockDeadlock {
            resource: "shared/plan.md".into(),
            cycle: vec![a.clone(), b.clone()],
        },
        EventPayload::StateWrite {
            key: "findings/a".into(),
            version: 1,
        },
    ];
    for (i, e) in events.into_iter().enumerate() {
        bus.emit(Some(&s1), Some(&a), TraceId(i as u128 + 1), None, e);
    }
    bus.emit(
        Some(&s2),
        None,
        TraceId(99),
        None,
        EventPayload::SessionLeft {
            reason: "done".into(),
        },
    );
    auditor.seal(&s1).unwrap();
    auditor.close().unwrap();
    drop(auditor);

    // The auditor wrote every delta to one segment; the seeds' parts 0 and
    // 3 are the same records as the per-session files of format 1.
    let segment = std::fs::read(ahv_audit::segments::segment_path(
        &ahv_audit::segments::segments_dir(&dir),
        1,
    ))
    .unwrap();
    let legacy = tmp.path().join("legacy");
    std::fs::create_dir_all(legacy.join("sessions")).unwrap();
    for s in ["s-1", "s-2"] {
        let mut w = ahv_audit::RecordWriter::create(
            ahv_audit::auditor::session_log_path(&legacy, s),
            LogKind::SESSION_DELTAS,
            Durability::OnClose,
        )
        .unwrap();
        for r in ahv_audit::auditor::read_session_log(&dir, s).unwrap() {
            w.append(&r.body, Duration::ZERO).unwrap();
        }
        w.close().unwrap();
    }
    let file = |p: &str| {
        let legacy_file = legacy.join(p);
        std::fs::read(if legacy_file.exists() {
            legacy_file
        } else {
            dir.join(p)
        })
        .unwrap()
    };
    let bodies = |p: &str, kind: LogKind| {
        let legacy_file = legacy.join(p);
        let rec = read_log(
            if legacy_file.exists() {
                legacy_file
            } else {
                dir.join(p)
            },
            kind,
        )
        .unwrap();
        assert!(rec.is_clean());
        let joined = rec
            .records
            .iter()
            .map(|r| r.body.clone())
            .collect::<Vec<_>>()
            .join(audit::RSEP);
        assert_eq!(
            joined
                .windows(audit::SEP.len())
                .filter(|w| *w == audit::SEP)
                .count(),
            0,
            "a record body holds the separator"
        );
        joined
    };
    let raw = vec![
        Some(file("sessions/s-1.log")),
        Some(file("commitments.log")),
        Some(file("heads.log")),
        Some(file("sessions/s-2.log")),
        Some(file("public-key")),
    ];
    let framed = vec![
        Some(bodies("sessions/s-1.log", LogKind::SESSION_DELTAS)),
        Some(bodies("commitments.log", LogKind::COMMITMENTS)),
        Some(bodies("heads.log", LogKind::SIGNED_HEADS)),
        Some(bodies("sessions/s-2.log", LogKind::SESSION_DELTAS)),
        Some(file("public-key")),
    ];
    // The same directory as the auditor left it: the deltas in a segment.
    let mut in_segment: Vec<Option<Vec<u8>>> = vec![
        None,
        Some(file("commitments.log")),
        Some(file("heads.log")),
        None,
        Some(file("public-key")),
        None,
        None,
    ];
    in_segment.push(Some(segment.clone()));
    let mut segment_framed = in_segment.clone();
    segment_framed[1] = Some(bodies("commitments.log", LogKind::COMMITMENTS));
    segment_framed[2] = Some(bodies("heads.log", LogKind::SIGNED_HEADS));
    segment_framed[7] = Some(
        read_log(
            ahv_audit::segments::segment_path(&ahv_audit::segments::segments_dir(&dir), 1),
            LogKind::SEGMENT,
        )
        .unwrap()
        .records
        .iter()
        .map(|r| r.body.clone())
        .collect::<Vec<_>>()
        .join(audit::RSEP),
    );
    // A crash inside a round: the segment cut short, s-2 open, no
    // commitment log.
    let mut segment_torn = vec![None; 7];
    segment_torn.push(Some(segment[..segment.len() - 5].to_vec()));
    let proof = ahv_audit::prove(&dir, "s-1", 2, None).unwrap();
    let mut with_proof = raw.clone();
    with_proof.push(Some(serde_json::to_vec_pretty(&proof).unwrap()));
    // The open session's log cut mid-record, with no commitment log: crash
    // recovery must still open the directory.
    let s2 = file("sessions/s-2.log");
    let torn = vec![
        Some(file("sessions/s-1.log")),
        None,
        None,
        Some(s2[..s2.len() - 3].to_vec()),
    ];
    let mut mark = framed.clone();
    mark.resize(6, None);
    // The retention mark: version 1, commitment 0 at byte 9.
    let mut body = vec![1u8];
    body.extend_from_slice(&0u64.to_be_bytes());
    body.extend_from_slice(&9u64.to_be_bytes());
    mark.push(Some(body));
    vec![
        ("ok-real-directory", audit::encode_input(0, &raw)),
        (
            "ok-real-directory-framed",
            audit::encode_input(audit::FRAME, &framed),
        ),
        ("ok-repaired", audit::encode_input(audit::REPAIR, &framed)),
        (
            "ok-own-key-one-session",
            audit::encode_input(audit::DIR_KEY | audit::ONE_SESSION, &raw),
        ),
        ("proof", audit::encode_input(0, &with_proof)),
        (
            "reopen-torn-tail",
            audit::encode_input(audit::REOPEN, &torn),
        ),
        (
            "reopen-retention-mark-signed",
            audit::encode_input(audit::REOPEN | audit::FRAME | audit::SIGN, &mark),
        ),
        ("ok-real-segment", audit::encode_input(0, &in_segment)),
        (
            "ok-real-segment-framed",
            audit::encode_input(audit::FRAME, &segment_framed),
        ),
        (
            "reopen-segment-cut-in-a-round",
            audit::encode_input(audit::REOPEN, &segment_torn),
        ),
    ]
}

/// The hand-made admission seeds reach the answers they are named for, so
/// the fuzzer starts from every branch of admission.
#[test]
fn admission_seeds_reach_the_answer_they_are_named_for() {
    use ahv_runtime::{LoadError, Runtime};
    let rt = Runtime::builder().max_instances(1).build().unwrap();
    let seed = |name: &str| std::fs::read(fuzz_dir().join("seeds/admission").join(name)).unwrap();
    let load = |name: &str| rt.load(&seed(name));
    assert!(matches!(
        load("core-module.wasm"),
        Err(LoadError::Invalid { .. })
    ));
    assert!(matches!(
        load("empty-component.wasm"),
        Err(LoadError::MissingRun { .. })
    ));
    assert!(matches!(
        load("run-of-the-wrong-type.wasm"),
        Err(LoadError::MissingRun { .. })
    ));
    assert!(
        matches!(load("refused-http-import.wasm"), Err(LoadError::RefusedImport { name, .. }) if name == "wasi:http/incoming-handler@0.2.0")
    );
    let net = load("net-import.wasm").unwrap();
    assert_eq!(
        net.manifest().imports[0].kind,
        ahv_runtime::ImportKind::Capability(ahv_core::Capability::Net)
    );
    let sockets = load("denied-socket-import.wasm").unwrap();
    assert_eq!(
        sockets.manifest().imports[0].kind,
        ahv_runtime::ImportKind::WasiDenied
    );
    let run_only = load("run-only.wasm").unwrap();
    assert_eq!(run_only.manifest().lowest_ring, Some(Ring::Sandbox));
    // Admission links every component against the root ring, so a
    // capability imported with the wrong type is refused at load, in every
    // ring, instead of hiding behind a breach stub (which accepts any type).
    assert!(matches!(
        load("capability-of-the-wrong-type.wasm"),
        Err(LoadError::ContractTypes { .. })
    ));
    for agent in ["agent-spinner.wasm", "agent-deployer.wasm"] {
        if let Err(e) = load(agent) {
            panic!("{agent}: {e}");
        }
    }
}
