//! The runtime around the agents: admission, inspection, caches, limits.

use std::sync::Arc;

use ahv_core::{AgentId, Capability, Ring};
use ahv_runtime::{AgentError, AgentSpec, ImportKind, LoadError, Runtime};
use ahv_tests::{Harness, Sandbox, answer};

use crate::cache_dir;

#[test]
fn inspect_reports_the_lowest_ring_covering_the_imports() {
    let h = Harness::new(&cache_dir());
    let expected = [
        (ahv_agents::HELLO, Ring::Sandbox),
        // Its VFS bench mode writes.
        (ahv_agents::PINGER, Ring::Standard),
        (ahv_agents::NOTE_TAKER, Ring::Standard),
        (ahv_agents::ESCALATOR, Ring::Privileged),
        (ahv_agents::DEPLOYER, Ring::Privileged),
    ];
    for (bytes, ring) in expected {
        let m = h.runtime.inspect(bytes).unwrap();
        assert_eq!(m.lowest_ring, Some(ring));
        assert!(m.exports.iter().any(|e| e == "run"));
        assert_eq!(m.refused().count(), 0);
    }
    let m = h.runtime.inspect(ahv_agents::DEPLOYER).unwrap();
    let caps: Vec<Capability> = m.capabilities.iter().collect();
    assert!(caps.contains(&Capability::Effects) && caps.contains(&Capability::VfsWrite));
    assert!(
        !caps.contains(&Capability::Actions),
        "unused imports are not in the manifest"
    );
    assert!(m.imports.iter().any(|i| i.kind == ImportKind::Wasi));
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let h = Harness::new(&cache_dir());
    assert!(
        matches!(
            h.runtime.load(b"\0asm\x01\0\0\0"),
            Err(LoadError::Invalid { .. })
        ),
        "a core module"
    );
    assert!(matches!(
        h.runtime.load(b"not wasm at all"),
        Err(LoadError::Invalid { .. })
    ));
    assert!(matches!(
        h.runtime.inspect(&[]),
        Err(LoadError::Invalid { .. })
    ));
}

#[tokio::test]
async fn strict_admission_refuses_a_ring_below_the_imports() {
    let runtime = Runtime::builder()
        .strict_admission(true)
        .max_instances(4)
        .build()
        .unwrap();
    let sb = Sandbox::new();
    let c = runtime.load(ahv_agents::NOTE_TAKER).unwrap();
    let spec = AgentSpec::new(
        AgentId::new("did:test:notes").unwrap(),
        Ring::Sandbox,
        sb.vfs.clone(),
    );
    let err = runtime.spawn(&c, spec).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Load(LoadError::RingTooLow {
                capability: Capability::VfsWrite,
                given: Ring::Sandbox,
                ..
            })
        ),
        "{err}"
    );
    let spec = AgentSpec::new(
        AgentId::new("did:test:notes").unwrap(),
        Ring::Standard,
        sb.vfs.clone(),
    );
    let mut ok = runtime.spawn(&c, spec).await.unwrap();
    assert_eq!(answer(ok.run("x").await), "1 note(s) in notes/today.md");
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk_and_bad_entries_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let first = Harness::new(dir.path());
    let c = first.runtime.load(ahv_agents::PINGER).unwrap();
    let artifacts: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1);
    let name = artifacts[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&c.hash_hex()),
        "keyed by the component's SHA-256: {name}"
    );
    let good = std::fs::read(&artifacts[0]).unwrap();

    // A corrupted artifact is detected by its checksum, recompiled and rewritten.
    std::fs::write(&artifacts[0], b"garbage").unwrap();
    let second = Harness::new(dir.path());
    let sb = Sandbox::new();
    let mut a = second
        .spawn(ahv_agents::PINGER, "did:test:ping", Ring::Sandbox, &sb)
        .await;
    assert_eq!(answer(a.run("").await), "pong");
    assert_eq!(std::fs::read(&artifacts[0]).unwrap().len(), good.len());
}

#[tokio::test]
async fn many_agents_share_one_component_and_runtime() {
    let h = Harness::new(&cache_dir());
    let sb = Sandbox::new();
    let c = h.runtime.load(ahv_agents::PINGER).unwrap();
    let again = h.runtime.load(ahv_agents::PINGER).unwrap();
    assert_eq!(c.hash_hex(), again.hash_hex());
    let mut agents = Vec::new();
    for i in 0..20 {
        let spec = AgentSpec::new(
            AgentId::new(format!("did:test:p{i}")).unwrap(),
            Ring::Sandbox,
            sb.vfs.clone(),
        );
        agents.push(h.runtime.spawn(&c, spec).await.unwrap());
    }
    for a in &mut agents {
        assert_eq!(
            answer(a.run("calls").await),
            "1",
            "instances do not share state"
        );
    }
    let _ = Arc::new(());
}

#[tokio::test]
async fn oversized_input_is_refused_before_the_guest_runs() {
    let h = Harness::new(&cache_dir());
    let sb = Sandbox::new();
    let mut a = h
        .spawn(ahv_agents::PINGER, "did:test:ping", Ring::Sandbox, &sb)
        .await;
    let big = "x".repeat(ahv_runtime::MAX_INPUT_BYTES + 1);
    assert!(matches!(
        a.run(&big).await,
        Err(AgentError::InputTooLarge { .. })
    ));
    assert_eq!(
        answer(a.run("calls").await),
        "1",
        "the refused call never reached the guest"
    );
}

#[tokio::test]
async fn hostcall_budget_limits_what_a_guest_can_pass_to_the_host() {
    let mut limits = ahv_core::RingLimits::default_for(Ring::Standard);
    limits.hostcall_bytes = 1024;
    let policy = ahv_core::RingPolicy::default()
        .with_limits(Ring::Standard, limits)
        .unwrap();
    let h = Harness::with_policy(&cache_dir(), policy);
    // A ring that may write gets its file quota plus 64 KiB per call at least,
    // so that a write one byte over the quota is refused, not trapped.
    let sb = Sandbox::with_limits(ahv_governance::vfs::VfsLimits {
        max_file_bytes: 512,
        ..Default::default()
    });
    let budget = 512 + (64 << 10);
    let mut small = h
        .spawn(ahv_agents::ESCALATOR, "did:test:esc", Ring::Standard, &sb)
        .await;
    assert_eq!(
        answer(small.run(&"x".repeat(512)).await),
        "wrote escalated.txt"
    );
    let mut big = h
        .spawn(ahv_agents::ESCALATOR, "did:test:esc2", Ring::Standard, &sb)
        .await;
    let cause = ahv_tests::trap(big.run(&"y".repeat(budget + 1)).await);
    assert_eq!(
        cause,
        ahv_runtime::TrapCause::HostcallTooLarge { limit: budget }
    );
    assert_eq!(
        std::fs::read(sb.dir.join("escalated.txt")).unwrap().len(),
        512,
        "the oversized write never happened"
    );
}

#[test]
fn zero_guest_turns_are_refused_by_the_runtime_and_the_hypervisor() {
    let e = Runtime::builder().guest_turns(0).build().unwrap_err();
    assert!(e.to_string().contains("guest_turns"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = ahv_hypervisor::Hypervisor::builder()
        .state_dir(dir.path())
        .guest_turns(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("guest_turns"), "{e}");
    // One turn is enough for agents to run.
    Runtime::builder().guest_turns(1).build().unwrap();
}
