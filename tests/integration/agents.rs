//! Every example agent, hostile ones included, in every ring where its outcome differs.

use std::time::{Duration, Instant};

use ahv_core::{Capability, Ring, RingLimits, RingPolicy};
use ahv_runtime::{AfterTrap, AgentError, AgentSpec, LogSource, TrapCause};
use ahv_tests::{Harness, SENTINEL, Sandbox, answer, trap};

use crate::cache_dir;

// The session agents' tests live with the other session tests.
pub use crate::sessions::{editor, researcher, scripted};
// The saga participants' tests live with the other saga-step tests.
pub use crate::saga_agents::{drafter, noop_participant, publisher, reviewer};
// The data-abusing agent's tests live with the other containment tests.
pub use crate::containment::abuser;

/// A runtime whose pool has one instance slot, so every agent reuses it.
fn one_slot_runtime() -> ahv_runtime::Runtime {
    ahv_runtime::Runtime::builder()
        .max_instances(1)
        .build()
        .unwrap()
}

/// The default ring table with ring 3's fuel and deadline replaced.
fn policy(fuel: u64, deadline: Duration) -> RingPolicy {
    let mut l = RingLimits::default_for(Ring::Sandbox);
    l.fuel_per_call = fuel;
    l.deadline = deadline;
    RingPolicy::default().with_limits(Ring::Sandbox, l).unwrap()
}

/// `model-caller`'s tests are the `net` capability's (`crate::net`).
pub(crate) use crate::net as model_caller;

pub mod hello {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn answers_with_the_greeting_file_in_the_sandbox_ring() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        std::fs::write(sb.dir.join("greeting.txt"), "Howdy\n").unwrap();
        let mut a = h
            .spawn(ahv_agents::HELLO, "did:test:hello", Ring::Sandbox, &sb)
            .await;
        let out = a.run("Ada").await.unwrap();
        assert_eq!(
            out.result.as_deref(),
            Ok("Howdy, Ada! (agent did:test:hello, ring 3)")
        );
        let logs: Vec<_> = out
            .logs
            .iter()
            .map(|l| (l.source, l.message.as_str()))
            .collect();
        assert!(
            logs.contains(&(LogSource::Log, "greeting Ada from did:test:hello in ring 3")),
            "{logs:?}"
        );
        assert!(
            logs.contains(&(LogSource::Stdout, "hello says hi on stdout")),
            "stdout is captured: {logs:?}"
        );
        assert!(out.fuel_used > 0);
        std::fs::remove_file(sb.dir.join("greeting.txt")).unwrap();
        assert_eq!(
            answer(a.run("").await),
            "Hello, world! (agent did:test:hello, ring 3)"
        );
        assert!(h.breaches().is_empty());
    }
}

pub mod note_taker {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn writes_and_updates_notes_in_ring_2() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(
                ahv_agents::NOTE_TAKER,
                "did:test:notes",
                Ring::Standard,
                &sb,
            )
            .await;
        let first = a.run("buy milk").await;
        let mut changes = first
            .as_ref()
            .map(|o| o.changes.clone())
            .unwrap_or_default();
        assert_eq!(answer(first), "1 note(s) in notes/today.md");
        let second = a.run("call Bob").await;
        changes.extend(
            second
                .as_ref()
                .map(|o| o.changes.clone())
                .unwrap_or_default(),
        );
        assert_eq!(answer(second), "2 note(s) in notes/today.md");
        let note = std::fs::read_to_string(sb.dir.join("notes/today.md")).unwrap();
        assert_eq!(note, "# Today\n- buy milk\n- call Bob\n");
        assert_eq!(
            std::fs::read_to_string(sb.dir.join("notes/index.txt")).unwrap(),
            "today.md\n"
        );
        let journal = std::fs::read_to_string(sb.dir.join("journal/notes.log")).unwrap();
        assert_eq!(
            journal,
            "did:test:notes: buy milk\ndid:test:notes: call Bob\n"
        );
        let performed: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                ahv_governance::journal::Change::Action { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            performed,
            ["note.append", "note.append"],
            "each note.append left an undo record in its call's changes"
        );
        assert!(matches!(a.run("").await.unwrap().result, Err(ref m) if m.contains("empty")));
    }

    #[tokio::test]
    async fn is_a_breach_in_ring_3_and_writes_nothing() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::NOTE_TAKER, "did:test:notes", Ring::Sandbox, &sb)
            .await;
        let TrapCause::RingBreach(b) = trap(a.run("buy milk").await) else {
            panic!("not a breach")
        };
        assert_eq!(
            (b.capability, b.function.as_str(), b.ring),
            (Capability::VfsWrite, "write", Ring::Sandbox)
        );
        assert_eq!(h.breaches(), [b]);
        assert!(!sb.dir.join("notes").exists());
    }
}

pub mod deployer {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn sends_its_effect_in_ring_1() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        std::fs::create_dir(sb.dir.join("deploy")).unwrap();
        std::fs::write(sb.dir.join("deploy/manifest.txt"), "billing\n").unwrap();
        let mut a = h
            .spawn(
                ahv_agents::DEPLOYER,
                "did:test:deployer",
                Ring::Privileged,
                &sb,
            )
            .await;
        assert_eq!(
            answer(a.run("v1.2").await),
            "deployed billing v1.2; notification #1 sent"
        );
        let outbox = std::fs::read_to_string(sb.dir.join("outbox/notifications.log")).unwrap();
        assert_eq!(outbox, "did:test:deployer: deployed billing v1.2\n");
        assert_eq!(
            std::fs::read_to_string(sb.dir.join("deploy/history.log")).unwrap(),
            "billing v1.2\n"
        );
    }

    #[tokio::test]
    async fn effect_is_a_breach_in_ring_2_and_nothing_is_sent() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(
                ahv_agents::DEPLOYER,
                "did:test:deployer",
                Ring::Standard,
                &sb,
            )
            .await;
        let TrapCause::RingBreach(b) = trap(a.run("v1.2").await) else {
            panic!("not a breach")
        };
        assert_eq!(
            (b.capability, b.function.as_str()),
            (Capability::Effects, "invoke")
        );
        assert!(!sb.dir.join("outbox").exists(), "the effect never ran");
        assert_eq!(
            std::fs::read_to_string(sb.dir.join("deploy/history.log")).unwrap(),
            "service v1.2\n",
            "its in-ring write before the breach stands"
        );
    }
}

pub mod escalator {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn may_write_in_ring_2() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::ESCALATOR, "did:test:esc", Ring::Standard, &sb)
            .await;
        assert_eq!(answer(a.run("fine").await), "wrote escalated.txt");
        assert_eq!(
            std::fs::read(sb.dir.join("escalated.txt")).unwrap(),
            b"fine"
        );
        assert!(h.breaches().is_empty());
    }

    #[tokio::test]
    async fn state_and_locks_are_breaches_in_ring_3_and_denied_outside_a_session() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        for (input, cap, function) in [
            ("state:x", Capability::StateWrite, "put"),
            ("lock:k", Capability::Locks, "acquire"),
        ] {
            let mut a = h
                .spawn(ahv_agents::ESCALATOR, "did:test:esc", Ring::Sandbox, &sb)
                .await;
            let TrapCause::RingBreach(b) = trap(a.run(input).await) else {
                panic!("{input}: not a breach")
            };
            assert_eq!((b.capability, b.function.as_str()), (cap, function));
        }
        // In ring 2 both are in-ring, but a standalone agent has no session:
        // a refusal value, not a trap.
        let mut a = h
            .spawn(ahv_agents::ESCALATOR, "did:test:esc2", Ring::Standard, &sb)
            .await;
        let out = a.run("state:x").await.unwrap();
        let msg = out.result.unwrap_err();
        assert!(
            msg.starts_with("state write refused: ") && msg.contains("outside a shared session"),
            "{msg}"
        );
        let msg = a.run("lock:k").await.unwrap().result.unwrap_err();
        assert!(msg.contains("outside a shared session"), "{msg}");
        assert_eq!(h.breaches().len(), 2);
    }

    #[tokio::test]
    async fn breaches_in_ring_3_is_recorded_and_stays_dead() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let component = h.runtime.load(ahv_agents::ESCALATOR).unwrap();
        let spec = AgentSpec::new(
            ahv_core::AgentId::new("did:test:esc").unwrap(),
            Ring::Sandbox,
            sb.vfs.clone(),
        )
        .after_trap(AfterTrap::Recreate);
        let mut a = h.runtime.spawn(&component, spec).await.unwrap();
        let err = a.run("pwned").await.unwrap_err();
        let AgentError::Trapped {
            cause: TrapCause::RingBreach(b),
            logs,
            ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(
            b.to_string(),
            "ring breach: vfs-write/write called from ring 3 (sandbox) by agent did:test:esc in session standalone"
        );
        assert_eq!(
            logs[0].message, "escalator trying to write",
            "logs before the trap are kept"
        );
        assert_eq!(
            h.breaches(),
            std::slice::from_ref(b),
            "recorded exactly once"
        );
        assert!(!sb.dir.join("escalated.txt").exists());
        // A breach is never forgiven by re-instantiation, whatever the policy.
        let again = a.run("again").await.unwrap_err();
        assert!(
            matches!(
                again,
                AgentError::Poisoned {
                    cause: TrapCause::RingBreach(_),
                    ..
                }
            ),
            "{again}"
        );
        assert_eq!(h.breaches().len(), 1);
    }
    /// Every out-of-ring capability, from a real guest, in every ring where it differs.
    #[tokio::test]
    async fn actions_and_effects_are_breaches_below_their_ring() {
        let h = Harness::new(&cache_dir());
        let cases = [
            (
                "action:x",
                Ring::Sandbox,
                Some((Capability::Actions, "invoke")),
            ),
            ("action:x", Ring::Standard, None),
            (
                "effect:x",
                Ring::Sandbox,
                Some((Capability::Effects, "invoke")),
            ),
            (
                "effect:x",
                Ring::Standard,
                Some((Capability::Effects, "invoke")),
            ),
            ("effect:x", Ring::Privileged, None),
            ("effect:x", Ring::Root, None),
        ];
        for (input, ring, breach) in cases {
            let sb = Sandbox::new();
            let mut a = h
                .spawn(ahv_agents::ESCALATOR, "did:test:esc", ring, &sb)
                .await;
            let r = a.run(input).await;
            match breach {
                Some((capability, function)) => {
                    let TrapCause::RingBreach(b) = trap(r) else {
                        panic!("{input} in {ring}: not a breach")
                    };
                    assert_eq!(
                        (b.capability, b.function.as_str(), b.ring),
                        (capability, function, ring)
                    );
                    assert!(
                        !sb.dir.join("journal").exists() && !sb.dir.join("outbox").exists(),
                        "nothing ran"
                    );
                }
                None => {
                    let out = answer(r);
                    assert!(
                        out.starts_with(if input.starts_with("action") {
                            "action ran"
                        } else {
                            "effect ran"
                        }),
                        "{out}"
                    );
                }
            }
        }
        assert_eq!(h.breaches().len(), 3);
    }
}

pub mod spinner {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn runs_out_of_fuel_in_ring_3() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::SPINNER, "did:test:spin", Ring::Sandbox, &sb)
            .await;
        assert_eq!(
            trap(a.run("").await),
            TrapCause::OutOfFuel { limit: 100_000_000 }
        );
    }

    #[tokio::test]
    async fn stops_within_twice_its_deadline() {
        let deadline = Duration::from_millis(300);
        let h = Harness::with_policy(&cache_dir(), policy(u64::MAX / 2, deadline));
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::SPINNER, "did:test:spin", Ring::Sandbox, &sb)
            .await;
        let start = Instant::now();
        let cause = trap(a.run("").await);
        let took = start.elapsed();
        assert_eq!(
            cause,
            TrapCause::DeadlineExceeded(ahv_runtime::DeadlineExceeded { deadline })
        );
        assert!(
            took >= deadline && took < 2 * deadline,
            "stopped after {took:?}"
        );
    }

    /// A standing killed without the kill handle (a session ended while
    /// the instance was being made) stops a busy guest at the next epoch
    /// tick, well before its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_standing_stops_a_tight_loop() {
        let h = Harness::with_policy(&cache_dir(), policy(u64::MAX / 2, Duration::from_secs(10)));
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::SPINNER, "did:test:spin", Ring::Sandbox, &sb)
            .await;
        let standing = a.standing().clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            standing.kill();
        });
        // Without the check, the deadline (10 s) would end it instead.
        let cause = trap(a.run("").await);
        killer.join().unwrap();
        assert_eq!(
            cause,
            TrapCause::Killed(ahv_runtime::Killed {
                reason: "killed".into()
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_handle_stops_a_tight_loop() {
        let h = Harness::with_policy(&cache_dir(), policy(u64::MAX / 2, Duration::from_secs(60)));
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::SPINNER, "did:test:spin", Ring::Sandbox, &sb)
            .await;
        let kill = a.kill_handle();
        let started = Instant::now();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let at = Instant::now();
            kill.kill("manual");
            at
        });
        let cause = trap(a.run("").await);
        let stopped = Instant::now();
        let killed_at = killer.join().unwrap();
        assert_eq!(
            cause,
            TrapCause::Killed(ahv_runtime::Killed {
                reason: "manual".into()
            })
        );
        let latency = stopped.duration_since(killed_at);
        assert!(
            latency < Duration::from_millis(500),
            "kill took {latency:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let later = a.run("").await.unwrap_err();
        assert!(
            matches!(
                later,
                AgentError::Poisoned {
                    cause: TrapCause::Killed(_),
                    ..
                }
            ),
            "{later}"
        );
    }
}

pub mod memory_hog {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn traps_at_the_ring_cap_and_the_host_stays_healthy() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let component = h.runtime.load(ahv_agents::MEMORY_HOG).unwrap();
        let spec = AgentSpec::new(
            ahv_core::AgentId::new("did:test:hog").unwrap(),
            Ring::Sandbox,
            sb.vfs.clone(),
        )
        .after_trap(AfterTrap::Recreate);
        let mut hog = h.runtime.spawn(&component, spec).await.unwrap();
        assert_eq!(
            answer(hog.run("4").await),
            "allocated 4 MiB",
            "a hog under the cap works"
        );
        let TrapCause::MemoryLimit(m) = trap(hog.run("").await) else {
            panic!("not a memory trap")
        };
        assert_eq!(m.limit, 32 << 20);
        assert!(m.requested > m.limit);
        // The same agent gets a fresh instance (policy Recreate) and the host runs others.
        assert_eq!(answer(hog.run("2").await), "allocated 2 MiB");
        let mut hello = h
            .spawn(ahv_agents::HELLO, "did:test:hello", Ring::Sandbox, &sb)
            .await;
        assert!(answer(hello.run("after").await).starts_with("Hello, after!"));
    }

    /// The hog as `did:test:hog` in ring 2, over `sb`'s directory.
    fn hog_spec(sb: &Sandbox) -> AgentSpec {
        AgentSpec::new(
            ahv_core::AgentId::new("did:test:hog").unwrap(),
            Ring::Standard,
            sb.vfs.clone(),
        )
    }

    /// Freed pool slots keep some memory resident and are reset by zeroing
    /// only the pages their agent dirtied: the next agent in the slot (one
    /// instance at a time, so the same slot) must see zeros, both below the
    /// resident size and far above it.
    #[tokio::test]
    async fn a_recycled_memory_slot_carries_nothing_over() {
        let runtime = one_slot_runtime();
        let sb = Sandbox::new();
        let component = runtime.load(ahv_agents::MEMORY_HOG).unwrap();
        let spec = || hog_spec(&sb);
        // The probe sees stale bytes when there are some: in one instance the
        // allocator hands the filled block back.
        let mut same = runtime.spawn(&component, spec()).await.unwrap();
        assert_eq!(answer(same.run("fill:64").await), "filled 64 KiB");
        let seen = answer(same.run("scan:64").await);
        assert_ne!(
            seen, "0 stale bytes in 64 KiB",
            "the scan cannot see stale bytes"
        );
        drop(same);
        // What a never-used slot shows: a few bytes of the allocator's own
        // bookkeeping can sit inside a large uninitialised block.
        let pristine = one_slot_runtime();
        let fresh = pristine.load(ahv_agents::MEMORY_HOG).unwrap();
        for kib in [16, 48, 8192, 16] {
            let mut reader = pristine.spawn(&fresh, spec()).await.unwrap();
            let expected = answer(reader.run(&format!("scan:{kib}")).await);
            drop(reader);
            let stale: usize = expected.split(' ').next().unwrap().parse().unwrap();
            assert!(stale < 16, "{expected}");
            let mut writer = runtime.spawn(&component, spec()).await.unwrap();
            assert_eq!(
                answer(writer.run(&format!("fill:{kib}")).await),
                format!("filled {kib} KiB")
            );
            drop(writer);
            let mut reader = runtime.spawn(&component, spec()).await.unwrap();
            assert_eq!(
                answer(reader.run(&format!("scan:{kib}")).await),
                expected,
                "a recycled slot shows the previous agent's bytes"
            );
        }
    }

    /// Initialised data starts as a copy-on-write mapping of the module's
    /// image: what one agent writes there must not reach the next instance
    /// of the same module in the same slot (the slot is reset to the image,
    /// not merely kept).
    #[tokio::test]
    async fn a_recycled_slot_s_initialised_data_is_the_module_s_again() {
        let runtime = one_slot_runtime();
        let sb = Sandbox::new();
        let component = runtime.load(ahv_agents::MEMORY_HOG).unwrap();
        let spec = || hog_spec(&sb);
        let mut first = runtime.spawn(&component, spec()).await.unwrap();
        assert_eq!(answer(first.run("peek").await), "0 changed bytes");
        // The instance's memory is mapped from the module's image (a sealed
        // memfd that wasmtime names so), which is what this test is about.
        #[cfg(target_os = "linux")]
        assert!(
            ahv_tests::memory_images_mapped() > 0,
            "no memory image is mapped: the engine copies data segments"
        );
        for byte in [0, 0xFF] {
            assert_eq!(
                answer(first.run(&format!("poke:{byte}")).await),
                "poked 12288 bytes"
            );
            // The probe sees a change when there is one.
            assert_eq!(answer(first.run("peek").await), "12288 changed bytes");
            drop(first);
            first = runtime.spawn(&component, spec()).await.unwrap();
            assert_eq!(
                answer(first.run("peek").await),
                "0 changed bytes",
                "a recycled slot shows the previous agent's writes to its data (poked {byte})"
            );
        }
    }

    #[tokio::test]
    async fn gets_more_memory_in_ring_2() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut hog = h
            .spawn(ahv_agents::MEMORY_HOG, "did:test:hog", Ring::Standard, &sb)
            .await;
        assert_eq!(
            answer(hog.run("64").await),
            "allocated 64 MiB",
            "over ring 3's cap, under ring 2's"
        );
    }
}

pub mod stack_bomb {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn traps_with_stack_overflow() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::STACK_BOMB, "did:test:bomb", Ring::Sandbox, &sb)
            .await;
        assert!(
            answer(a.run("1000").await).starts_with("bottom: "),
            "bounded recursion is fine"
        );
        let mut a = h
            .spawn(ahv_agents::STACK_BOMB, "did:test:bomb", Ring::Sandbox, &sb)
            .await;
        assert_eq!(trap(a.run("").await), TrapCause::StackOverflow);
        let mut b = h
            .spawn(ahv_agents::PINGER, "did:test:ping", Ring::Sandbox, &sb)
            .await;
        assert_eq!(
            answer(b.run("").await),
            "pong",
            "the host is fine afterwards"
        );
    }
}

pub mod pinger {
    use super::*;
    pub const TESTED: () = ();

    #[tokio::test]
    async fn instance_is_reused_across_calls_and_sees_its_ring() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::PINGER, "did:test:ping", Ring::Standard, &sb)
            .await;
        assert_eq!(answer(a.run("").await), "pong");
        assert_eq!(
            answer(a.run("100").await),
            "200",
            "100 calls that each saw ring 2"
        );
        assert_eq!(
            answer(a.run("calls").await),
            "3",
            "one instance served all three calls"
        );
    }

    /// The metered-call bench mode: `locks.held` n times, admitted calls and
    /// rate-limit refusals counted apart.
    #[tokio::test]
    async fn held_mode_counts_admitted_metered_calls() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::PINGER, "did:test:ping", Ring::Standard, &sb)
            .await;
        assert_eq!(answer(a.run("held 7").await), "7 ok 0 rate-limited");
        assert_eq!(answer(a.run("held 0").await), "0 ok 0 rate-limited");
    }

    /// A gone agent's pool slot is free the moment it is dropped: a one-slot
    /// pool serves agents back to back. (Freeing instances on the epoch
    /// ticker instead took ~5 µs off terminate but made the next join
    /// 2-4x slower — a cold slot, cross-thread frees — so it is not done.)
    #[tokio::test]
    async fn a_one_slot_pool_serves_back_to_back_agents() {
        let runtime = one_slot_runtime();
        let sb = Sandbox::new();
        let component = runtime.load(ahv_agents::PINGER).unwrap();
        for i in 0..300 {
            let spec = AgentSpec::new(
                ahv_core::AgentId::new(format!("did:test:ping-{i}")).unwrap(),
                Ring::Standard,
                sb.vfs.clone(),
            );
            let mut a = runtime
                .spawn(&component, spec)
                .await
                .unwrap_or_else(|e| panic!("spawn #{i}: {e}"));
            assert_eq!(answer(a.run("").await), "pong");
        }
    }
}

pub mod net_sneak {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    pub const TESTED: () = ();

    /// Loopback sockets the guest is pointed at: a TCP listener and a UDP
    /// socket, both non-blocking, so looking for a connection or a datagram
    /// never waits.
    struct Bait {
        tcp: TcpListener,
        udp: UdpSocket,
    }

    impl Bait {
        fn new() -> Bait {
            let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            udp.set_nonblocking(true).unwrap();
            Bait { tcp, udp }
        }

        /// The guest's input: the TCP address, then the UDP one.
        fn targets(&self) -> String {
            format!(
                "{} {}",
                self.tcp.local_addr().unwrap(),
                self.udp.local_addr().unwrap()
            )
        }

        /// A connection waiting to be accepted, or a datagram waiting to be read.
        fn visitor(&self) -> Option<String> {
            match self.tcp.accept() {
                Ok((mut stream, peer)) => {
                    let mut got = Vec::new();
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let _ = stream.read_to_end(&mut got);
                    return Some(format!(
                        "a TCP connection from {peer}, carrying {:?}",
                        String::from_utf8_lossy(&got)
                    ));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept on the bait listener: {e}"),
            }
            let mut buf = [0u8; 512];
            match self.udp.recv_from(&mut buf) {
                Ok((n, peer)) => Some(format!(
                    "a UDP datagram from {peer}: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                )),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => panic!("recv on the bait socket: {e}"),
            }
        }

        /// Fails the test if anything reached either socket. A guest's
        /// connect or send on loopback completes before the call returns, so
        /// what it sent is already queued; the short look covers a slow kernel.
        fn assert_untouched(&self) {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(100) {
                if let Some(v) = self.visitor() {
                    panic!("the guest reached the network: {v}");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        /// The check above can fail: the host's own connection and datagram
        /// are seen (within 5 s).
        fn assert_reachable(&self) {
            let mut c = TcpStream::connect(self.tcp.local_addr().unwrap()).unwrap();
            c.write_all(b"host").unwrap();
            drop(c);
            let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
            sender
                .send_to(b"host", self.udp.local_addr().unwrap())
                .unwrap();
            let (mut tcp, mut udp) = (false, false);
            let start = Instant::now();
            while !(tcp && udp) {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "timed out after 5 s waiting for the host's own connection (seen: {tcp}) \
                     and datagram (seen: {udp}) on the bait sockets"
                );
                match self.visitor() {
                    Some(v) if v.starts_with("a TCP") => tcp = true,
                    Some(_) => udp = true,
                    None => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }
    }

    /// Every ring, root included: no ring grants the network, and importing
    /// it is neither an admission failure nor a breach. Every attempt
    /// (connect, listen, UDP send, name lookup) is an error the guest sees,
    /// and nothing reaches the loopback sockets it was pointed at.
    #[tokio::test]
    async fn is_admitted_and_every_socket_attempt_fails_in_every_ring() {
        let h = Harness::new(&cache_dir());
        let manifest = h.runtime.inspect(ahv_agents::NET_SNEAK).unwrap();
        assert_eq!(manifest.refused().count(), 0, "{manifest:?}");
        assert!(
            manifest
                .imports
                .iter()
                .any(|i| i.name.starts_with("wasi:sockets/")
                    && i.kind == ahv_runtime::ImportKind::WasiDenied),
            "{manifest:?}"
        );
        assert_eq!(manifest.lowest_ring, Some(Ring::Sandbox));
        let bait = Bait::new();
        for ring in Ring::ALL {
            let sb = Sandbox::new();
            let mut a = h
                .spawn(ahv_agents::NET_SNEAK, "did:test:sneak", ring, &sb)
                .await;
            let out = a.run(&bait.targets()).await.unwrap();
            bait.assert_untouched();
            let report = out.result.unwrap_or_else(|e| panic!("{ring}: {e}"));
            let mut lines = report.lines();
            assert_eq!(
                lines.next(),
                Some("8 network attempts, 0 got through"),
                "{ring}:\n{report}"
            );
            let attempts: Vec<&str> = lines.collect();
            assert_eq!(attempts.len(), 8, "{ring}:\n{report}");
            // Denied before any packet: creating a socket is `access-denied`
            // (EACCES in the guest's libc), a lookup a permanent resolver
            // failure. "Connection refused" here would mean a socket was made.
            for line in &attempts {
                let expected = if line.starts_with("dns ") {
                    " -> err failed to lookup address information: Non-recoverable error"
                } else {
                    " -> err Permission denied"
                };
                assert!(line.contains(expected), "{ring}: {line}");
            }
            for what in ["tcp connect ", "tcp listen ", "udp send_to ", "dns lookup "] {
                assert!(
                    attempts.iter().any(|l| l.starts_with(what)),
                    "{ring}: no {what:?} attempt in\n{report}"
                );
            }
            // The guest's own log has each attempt, and nothing was a breach.
            assert_eq!(
                out.logs
                    .iter()
                    .filter(|l| l.source == LogSource::Log && l.message.contains(" -> err "))
                    .count(),
                8,
                "{ring}: {:?}",
                out.logs
            );
            assert!(h.breaches().is_empty(), "{ring}: {:?}", h.breaches());
            // The instance is healthy: a second round is refused the same way.
            let again = answer(a.run(&bait.targets()).await);
            assert!(
                again.starts_with("8 network attempts, 0 got through"),
                "{again}"
            );
            bait.assert_untouched();
        }
        bait.assert_reachable();
    }
}

pub mod path_escaper {
    use super::*;
    pub const TESTED: () = ();

    fn plant_links(sb: &Sandbox) {
        std::os::unix::fs::symlink(sb.outer(), sb.dir.join("escape-link")).unwrap();
        std::os::unix::fs::symlink(sb.outer().join("sentinel.txt"), sb.dir.join("file-link"))
            .unwrap();
    }

    fn assert_every_attempt_failed(report: &str, min_lines: usize) {
        let lines: Vec<&str> = report.lines().collect();
        assert!(
            lines.len() >= min_lines,
            "only {} attempts:\n{report}",
            lines.len()
        );
        let ok: Vec<&&str> = lines.iter().filter(|l| !l.contains(" -> err ")).collect();
        assert!(ok.is_empty(), "attempts that were not refused: {ok:#?}");
        for needle in [
            "read ../sentinel.txt -> err invalid-path",
            "read /etc/passwd -> err invalid-path",
            "read escape-link/sentinel.txt -> err denied",
            "read file-link -> err denied",
            "list escape-link -> err denied",
        ] {
            assert!(report.contains(needle), "missing {needle:?} in\n{report}");
        }
    }

    #[tokio::test]
    async fn cannot_read_outside_in_ring_3() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        plant_links(&sb);
        let before = sb.outside_snapshot();
        let atime = sb.sentinel_atime();
        let mut a = h
            .spawn(ahv_agents::PATH_ESCAPER, "did:test:esc", Ring::Sandbox, &sb)
            .await;
        let report = answer(a.run("read").await);
        assert_every_attempt_failed(&report, 60);
        assert_eq!(sb.outside_snapshot(), before, "nothing outside changed");
        assert_eq!(sb.sentinel_atime(), atime, "the sentinel was not read");
        assert!(
            h.breaches().is_empty(),
            "reads are in-ring refusals, not breaches"
        );
    }

    #[tokio::test]
    async fn cannot_write_outside_in_ring_2() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        plant_links(&sb);
        let before = sb.outside_snapshot();
        let mut a = h
            .spawn(
                ahv_agents::PATH_ESCAPER,
                "did:test:esc",
                Ring::Standard,
                &sb,
            )
            .await;
        let report = answer(a.run("all").await);
        assert_every_attempt_failed(&report, 150);
        for needle in [
            "write ../sentinel.txt -> err invalid-path",
            "write escape-link/new.txt -> err denied",
            "write file-link -> err denied",
            "rename-to escape-link/new.txt -> err denied",
            "delete escape-link -> err denied",
        ] {
            assert!(report.contains(needle), "missing {needle:?} in\n{report}");
        }
        assert_eq!(
            sb.outside_snapshot(),
            before,
            "nothing outside created or changed"
        );
        assert_eq!(
            std::fs::read(sb.outer().join("sentinel.txt")).unwrap(),
            SENTINEL
        );
        let mut inside: Vec<String> = std::fs::read_dir(&sb.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        inside.sort();
        assert_eq!(
            inside,
            ["escape-link", "file-link", "inside.txt"],
            "only its own file was created"
        );
    }
}

pub mod sleeper {
    use super::*;
    pub const TESTED: () = ();

    /// Fails the test (instead of hanging it) if the host lets the sleep run on.
    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("the host did not stop a sleeping agent")
    }

    fn policy(deadline: Duration) -> RingPolicy {
        super::policy(
            RingLimits::default_for(Ring::Sandbox).fuel_per_call,
            deadline,
        )
    }

    #[tokio::test]
    async fn short_sleep_is_fine() {
        let h = Harness::new(&cache_dir());
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::SLEEPER, "did:test:sleep", Ring::Sandbox, &sb)
            .await;
        assert_eq!(answer(a.run("5").await), "slept 5 ms");
    }

    #[tokio::test]
    async fn sleeping_in_the_host_cannot_outlive_the_deadline() {
        let deadline = Duration::from_millis(300);
        let h = Harness::with_policy(&cache_dir(), policy(deadline));
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::SLEEPER, "did:test:sleep", Ring::Sandbox, &sb)
            .await;
        let start = Instant::now();
        let cause = trap(bounded(a.run("")).await);
        let took = start.elapsed();
        assert_eq!(
            cause,
            TrapCause::DeadlineExceeded(ahv_runtime::DeadlineExceeded { deadline })
        );
        assert!(
            took >= deadline && took < 2 * deadline,
            "stopped after {took:?}"
        );
    }

    #[tokio::test]
    async fn kill_reaches_an_agent_sleeping_in_the_host() {
        let h = Harness::with_policy(&cache_dir(), policy(Duration::from_secs(60)));
        let sb = Sandbox::new();
        let mut a = h
            .spawn(ahv_agents::SLEEPER, "did:test:sleep", Ring::Sandbox, &sb)
            .await;
        let kill = a.kill_handle();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            kill.kill("manual");
        });
        let start = Instant::now();
        assert_eq!(
            trap(bounded(a.run("")).await),
            TrapCause::Killed(ahv_runtime::Killed {
                reason: "manual".into()
            })
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }
}
