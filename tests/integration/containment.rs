//! Containment against guests that hand the host too much, too many or
//! malformed data, or components of shapes no toolchain emits: every case is
//! a typed refusal or a typed guest trap, never a host error, and the host
//! copies nothing before checking its size.

use ahv_core::{AgentId, Ring};
use ahv_runtime::state::{MAX_LOG_BYTES_PER_CALL, MAX_LOG_LINE, MAX_LOG_LINES_PER_CALL};
use ahv_runtime::{AgentSpec, LogSource, TrapCause};
use ahv_tests::{Harness, Sandbox, answer, trap};

use crate::alloc_probe::largest_allocation_during;
use crate::cache_dir;

/// Allocations above this during a call mean the host copied bulk guest data.
const NO_BULK_COPY: usize = 8 << 20;

async fn run(ring: Ring, input: &str) -> Result<ahv_runtime::RunOutput, ahv_runtime::AgentError> {
    let h = Harness::new(&cache_dir());
    let sb = Sandbox::new();
    let mut a = h
        .spawn(ahv_agents::ABUSER, "did:test:abuser", ring, &sb)
        .await;
    a.run(input).await
}

pub mod abuser {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn wasi_exit_is_its_own_guest_trap_even_with_status_zero() {
        // WASI 0.2's `exit` carries only success or failure: any non-zero status is 1.
        for (status, code) in [(0, 0), (3, 1)] {
            let cause = trap(run(Ring::Sandbox, &format!("exit:{status}")).await);
            assert_eq!(cause, TrapCause::Exited { code }, "{cause}");
        }
    }

    #[tokio::test]
    async fn strings_that_are_not_utf8_are_invalid_guest_data() {
        for input in ["bad-utf8", "bad-utf8-log"] {
            let cause = trap(run(Ring::Sandbox, input).await);
            assert!(
                matches!(&cause, TrapCause::InvalidGuestData(g) if g.message.contains("UTF-8")),
                "{input}: {cause}"
            );
        }
    }

    #[tokio::test]
    async fn random_requests_are_capped_per_ring_before_allocating() {
        assert_eq!(
            answer(run(Ring::Sandbox, "random:32").await),
            "got 32 random bytes"
        );
        let limit = 64 << 10;
        assert_eq!(
            answer(run(Ring::Sandbox, &format!("random:{limit}")).await),
            format!("got {limit} random bytes")
        );
        let (r, largest) =
            largest_allocation_during(run(Ring::Sandbox, &format!("random:{}", 64 << 20))).await;
        let TrapCause::RequestTooLarge(t) = trap(r) else {
            panic!("not a request-too-large trap")
        };
        assert_eq!((t.requested, t.limit), (64 << 20, limit));
        assert!(largest < NO_BULK_COPY, "the host allocated {largest} bytes");
        let TrapCause::RequestTooLarge(t) = trap(run(Ring::Standard, "random:300000").await) else {
            panic!("not a request-too-large trap at ring 2")
        };
        assert_eq!(t.limit, 256 << 10);
    }

    #[tokio::test]
    async fn a_full_resource_table_is_a_resource_limit() {
        assert_eq!(
            answer(run(Ring::Sandbox, "handles:100").await),
            "holding 100 handles"
        );
        let cause = trap(run(Ring::Sandbox, "handles:100000").await);
        assert_eq!(cause, TrapCause::ResourceLimit { limit: 256 }, "{cause}");
    }

    /// A component that makes handles of a resource type of its own
    /// (`resource.new`, no host call in the loop; as many as its input has
    /// bytes, all kept) is stopped at its ring's component-handle limit
    /// (twice its resource-table capacity), a resource limit: before, every
    /// ring allowed wasmtime's default of 100,000, and the trap was
    /// reported as a host error.
    #[tokio::test]
    async fn handles_of_a_guest_defined_resource_are_bounded_by_the_ring() {
        let wasm = wat::parse_str(
            r#"(component
  (type $r (resource (rep i32)))
  (core func $new (canon resource.new $r))
  (core instance $imports (export "new" (func $new)))
  (core module $main
    (import "r" "new" (func $new (param i32) (result i32)))
    (memory (export "memory") 1)
    (data (i32.const 64) "ok")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "run") (param $input i32) (param $n i32) (result i32)
      (local $i i32)
      (block $done
        (loop $again
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (drop (call $new (i32.const 7)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $again)))
      (i32.store (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (i32.const 64))
      (i32.store (i32.const 24) (i32.const 2))
      i32.const 16))
  (core instance $m (instantiate $main (with "r" (instance $imports))))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "run") (memory (core memory $m "memory")) (realloc (core func $m "realloc")))))"#,
        )
        .expect("the handle-making component parses");
        let h = Harness::new(&cache_dir());
        for (ring, limit) in [(Ring::Sandbox, 512), (Ring::Standard, 2048)] {
            let sb = Sandbox::new();
            let mut a = h.spawn(&wasm, "did:test:handles", ring, &sb).await;
            assert_eq!(answer(a.run(&"x".repeat(limit)).await), "ok", "{ring:?}");
            // A fresh instance: the first one's handles are still live.
            let mut a = h.spawn(&wasm, "did:test:handles", ring, &sb).await;
            let cause = trap(a.run(&"x".repeat(limit + 1)).await);
            assert_eq!(
                cause,
                TrapCause::ResourceLimit { limit },
                "{ring:?}: {cause}"
            );
        }
    }

    #[tokio::test]
    async fn empty_log_lines_are_counted_and_reported_once() {
        // Few enough calls to finish well inside ring 3's 2 s deadline on a
        // loaded machine with a debug build (each is a host call).
        let out = run(Ring::Sandbox, "log-lines:20000").await.unwrap();
        assert_eq!(out.result.as_deref(), Ok("logged 20000 empty lines"));
        assert_eq!(out.dropped_log_lines, 20_000 - MAX_LOG_LINES_PER_CALL);
        assert_eq!(out.logs.len(), MAX_LOG_LINES_PER_CALL + 1);
        let reports: Vec<_> = out
            .logs
            .iter()
            .filter(|l| l.message.contains("log line(s) dropped"))
            .collect();
        assert_eq!(reports.len(), 1, "reported once");
        assert!(
            reports[0]
                .message
                .starts_with("[ahv] 15904 log line(s) dropped")
        );
    }

    #[tokio::test]
    async fn newline_floods_on_stdout_are_bounded() {
        // 16 MiB of newlines at ring 2: 16 million lines, 4096 kept.
        let out = run(Ring::Standard, "newlines:16384").await.unwrap();
        assert_eq!(out.result.as_deref(), Ok("wrote 16384 KiB of newlines"));
        let stdout = out
            .logs
            .iter()
            .filter(|l| l.source == LogSource::Stdout)
            .count();
        assert_eq!(stdout, MAX_LOG_LINES_PER_CALL);
        assert_eq!(out.dropped_log_lines, (16 << 20) - MAX_LOG_LINES_PER_CALL);
        let bytes: usize = out.logs.iter().map(|l| l.message.len()).sum();
        assert!(bytes <= MAX_LOG_BYTES_PER_CALL);
    }

    #[tokio::test]
    async fn a_huge_log_line_is_cut_in_guest_memory_not_copied() {
        let (r, largest) = largest_allocation_during(run(Ring::Root, "big-log:100")).await;
        let out = r.unwrap();
        assert_eq!(out.result.as_deref(), Ok("logged one big line"));
        let line = &out.logs[0].message;
        assert!(line.len() < MAX_LOG_LINE + 32 && line.ends_with("[truncated]"));
        assert!(largest < NO_BULK_COPY, "the host allocated {largest} bytes");
    }

    #[tokio::test]
    async fn a_write_over_the_quota_is_refused_before_it_is_copied() {
        let (r, largest) =
            largest_allocation_during(run(Ring::Root, &format!("write:{}", 100 << 20))).await;
        let said = answer(r);
        assert!(said.starts_with("refused: Error::Quota"), "{said}");
        assert!(largest < NO_BULK_COPY, "the host allocated {largest} bytes");
    }

    /// The file quota (16 MiB) used to equal ring 2's host-call budget, so a
    /// write one byte over it trapped instead of being refused.
    #[tokio::test]
    async fn the_file_quota_is_reachable_from_ring_2() {
        let limit: usize = 16 << 20;
        assert_eq!(
            answer(run(Ring::Standard, &format!("write:{limit}")).await),
            format!("wrote {limit} bytes")
        );
        let said = answer(run(Ring::Standard, &format!("write:{}", limit + 1)).await);
        assert!(said.starts_with("refused: Error::Quota"), "{said}");
    }

    #[tokio::test]
    async fn answers_are_capped_per_ring() {
        let limit = 1usize << 20;
        assert_eq!(
            answer(run(Ring::Sandbox, &format!("answer:{limit}")).await),
            "a".repeat(limit),
            "the whole answer, intact"
        );
        let TrapCause::RequestTooLarge(t) =
            trap(run(Ring::Sandbox, &format!("answer:{}", limit + 1)).await)
        else {
            panic!("not a request-too-large trap")
        };
        assert_eq!((t.what.as_str(), t.limit), ("run result", limit as u64));
    }
}

/// Components written by hand, of shapes a hostile toolchain could emit.
mod shapes {
    use super::*;

    /// A `run` export over a core module whose answer is whatever `RESULT`
    /// stores at address 16 (discriminant, pointer, length), plus `EXTRA`
    /// component items.
    fn component(result: (u32, u32, u32), extra: &str) -> Vec<u8> {
        let (disc, ptr, len) = result;
        let text = format!(
            r#"(component
  {extra}
  (core module $main
    (memory (export "memory") 1)
    (data (i32.const 64) "hello")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "run") (param i32 i32) (result i32)
      (i32.store (i32.const 16) (i32.const {disc}))
      (i32.store (i32.const 20) (i32.const {ptr}))
      (i32.store (i32.const 24) (i32.const {len}))
      i32.const 16))
  (core instance $m (instantiate $main))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "run") (memory (core memory $m "memory")) (realloc (core func $m "realloc"))))
)"#
        );
        wat::parse_str(text).expect("the test component parses")
    }

    async fn spawn_and_run(
        bytes: &[u8],
        ring: Ring,
    ) -> Result<ahv_runtime::RunOutput, ahv_runtime::AgentError> {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let component = h.runtime.load(bytes).expect("admitted");
        let spec = AgentSpec::new(
            AgentId::new("did:test:shape").unwrap(),
            ring,
            sb.vfs.clone(),
        );
        let mut agent = h.runtime.spawn(&component, spec).await?;
        agent.run("x").await
    }

    #[tokio::test]
    async fn a_hand_made_component_answers_when_well_formed() {
        let out = spawn_and_run(&component((0, 64, 5), ""), Ring::Sandbox)
            .await
            .unwrap();
        assert_eq!(out.result.as_deref(), Ok("hello"));
    }

    #[tokio::test]
    async fn an_answer_pointing_outside_memory_is_invalid_guest_data() {
        for (ptr, len) in [(0x7fff_0000, 100), (65_530, 100), (0, u32::MAX)] {
            let cause = trap(spawn_and_run(&component((0, ptr, len), ""), Ring::Sandbox).await);
            assert!(
                matches!(&cause, TrapCause::InvalidGuestData(g) if g.message.contains("out of bounds")),
                "{ptr}+{len}: {cause}"
            );
        }
        let cause = trap(spawn_and_run(&component((7, 64, 5), ""), Ring::Sandbox).await);
        assert!(
            matches!(&cause, TrapCause::InvalidGuestData(g) if g.message.contains("discriminant")),
            "bad discriminant: {cause}"
        );
    }

    /// Seven core instances of 30 MiB each against ring 3's 32 MiB: the
    /// budget is for the whole instance, not per linear memory.
    #[tokio::test]
    async fn the_memory_budget_bounds_every_memory_of_the_component_together() {
        let hogs: String = (0..7)
            .map(|i| format!("(core instance $hog{i} (instantiate $hog))\n"))
            .collect();
        let extra = format!("(core module $hog (memory (export \"m\") 480))\n{hogs}");
        let bytes = component((0, 64, 5), &extra);
        let err = spawn_and_run(&bytes, Ring::Sandbox).await.unwrap_err();
        let Some(TrapCause::MemoryLimit(m)) = err.cause() else {
            panic!("expected a memory-limit trap at instantiation, got {err}")
        };
        assert_eq!(m.limit, 32 << 20);
        assert_eq!(m.requested, 60 << 20, "the second 30 MiB memory is refused");
        // One such memory fits.
        let extra =
            "(core module $hog (memory (export \"m\") 480))\n(core instance $h (instantiate $hog))";
        let out = spawn_and_run(&component((0, 64, 5), extra), Ring::Sandbox)
            .await
            .unwrap();
        assert_eq!(out.result.as_deref(), Ok("hello"));
    }
}
