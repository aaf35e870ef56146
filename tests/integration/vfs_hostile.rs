//! The session VFS against a hostile environment, with real guest calls:
//! FIFOs, sockets and device nodes planted in a session's directory, hard
//! links planted from outside it, and trees nested to deny snapshots.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::sessions::{Hv, id};

/// The report line for `command`.
fn line<'a>(report: &'a str, command: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{command} -> ")))
        .unwrap_or_else(|| panic!("no line for {command:?} in:\n{report}"))
}

fn assert_err(report: &str, command: &str, kind: &str) {
    let l = line(report, command);
    assert!(
        l.contains(&format!("-> err {kind}:")),
        "{command} must fail with {kind}:\n{report}"
    );
}

fn assert_ok(report: &str, command: &str) -> String {
    let l = line(report, command);
    let rest = &l[command.len() + 4..];
    assert!(rest.starts_with("ok"), "{command} must succeed:\n{report}");
    rest.trim_start_matches("ok").trim().to_string()
}

/// Makes a FIFO at `at`.
fn mkfifo(at: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        at,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
}

/// Makes a character device node (1, 3, as `/dev/null`) at `at`; `false`,
/// with the reason printed, when the OS refuses `mknod` with EPERM.
fn mkdev(at: &Path) -> bool {
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        at,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    ) {
        Ok(()) => true,
        Err(e) if e == rustix::io::Errno::PERM => {
            eprintln!("skipping the device-node case: mknod refused with EPERM (not root)");
            false
        }
        Err(e) => panic!("mknod {}: {e}", at.display()),
    }
}

/// What the worker thread reports.
enum Stage {
    /// The session is set up; the script that meets the planted entries
    /// runs next. The FIFOs, to unblock a host that waits on them.
    Ready(Vec<PathBuf>),
    /// The script's report and how long it took.
    Done(Result<(String, Duration), String>),
}

/// A guest reads, hashes, appends to, writes and stats FIFOs (one planted at
/// a new path, one where a shared file of the session was), a socket and a
/// device node; every call answers `denied` at once. The calls run on their
/// own thread and the test waits a bounded time: a host that blocked in
/// `open` on a FIFO would stop the call where neither its deadline nor the
/// kill switch reaches, and the test fails with a message instead of hanging.
#[test]
fn a_guest_meets_fifos_sockets_and_devices_and_gets_denied_at_once() {
    const SCRIPT: &str = "\
read shared/fifo
hash shared/fifo
append shared/fifo x
write shared/fifo x
stat shared/fifo
delete shared/fifo
read shared/known
append shared/known x
write shared/known x
read private-fifo
append private-fifo x
read shared/sock
append shared/sock x
read shared/dev
append shared/dev x
list shared
read shared/plain";
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let h = Hv::new();
            let s = h.session();
            h.join(&s, "did:test:a", 0.8, ahv_agents::SCRIPTED).await;
            h.hv.activate_session(&s).unwrap();
            h.put_shared(&s, "known", "known");
            h.put_shared(&s, "plain", "plain");
            // The agent has seen the shared files (strict consistency).
            h.script(
                &s,
                "did:test:a",
                "hash shared/known\nhash shared/plain\nwrite mine x",
            )
            .await;
            let files = h.dir(&s).join("files");
            let shared = files.join("shared");
            let fifos = vec![
                shared.join("fifo"),
                shared.join("known"),
                files.join("agents/did:test:a/private-fifo"),
            ];
            std::fs::remove_file(shared.join("known")).unwrap();
            for f in &fifos {
                mkfifo(f);
            }
            let _socket = std::os::unix::net::UnixListener::bind(shared.join("sock")).unwrap();
            if !mkdev(&shared.join("dev")) {
                // Something else that is not a file of the session stands in.
                mkfifo(&shared.join("dev"));
            }
            let _ = tx.send(Stage::Ready(fifos));
            let start = Instant::now();
            let r = match h.hv.run_agent(&s, &id("did:test:a"), SCRIPT).await {
                Ok(out) => out.result.map(|r| (r, start.elapsed())),
                Err(e) => Err(format!("the agent trapped: {e}")),
            };
            let _ = tx.send(Stage::Done(r));
        });
    });
    let fifos = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(Stage::Ready(f)) => f,
        Ok(Stage::Done(r)) => panic!("the set-up ended early: {:?}", r.err()),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the set-up failed (see its panic)"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("setting up the session did not finish within 300 s")
        }
    };
    let bound = Duration::from_secs(20);
    let (report, took) = match rx.recv_timeout(bound) {
        Ok(Stage::Done(r)) => r.unwrap_or_else(|e| panic!("the script failed: {e}")),
        Ok(Stage::Ready(_)) => unreachable!("sent once"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the script's thread panicked"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // Unblock the host (O_RDWR on a FIFO never waits) so the thread
            // can end, then fail.
            for f in &fifos {
                let _ = std::fs::OpenOptions::new().read(true).write(true).open(f);
            }
            panic!(
                "the guest's vfs calls on FIFOs, sockets and devices did not answer within \
                 {bound:?}: the host waits on them"
            );
        }
    };
    for command in SCRIPT
        .lines()
        .filter(|l| !l.starts_with("list") && !l.ends_with("plain"))
    {
        assert_err(&report, command, "denied");
    }
    assert!(
        line(&report, "read shared/fifo").contains("FIFO"),
        "the refusal says why:\n{report}"
    );
    assert_eq!(
        assert_ok(&report, "list shared"),
        "plain",
        "listings hide them"
    );
    assert_eq!(assert_ok(&report, "read shared/plain"), "plain");
    assert!(
        took < Duration::from_secs(10),
        "the script took {took:?}:\n{report}"
    );
}

/// A hard link planted from outside where a shared file was: the guest's
/// append and truncating undo never reach the outside file.
#[tokio::test]
async fn a_guest_cannot_append_through_a_planted_hard_link() {
    let h = Hv::new();
    let s = h.session();
    h.join(&s, "did:test:a", 0.8, ahv_agents::SCRIPTED).await;
    h.hv.activate_session(&s).unwrap();
    h.put_shared(&s, "doc", "outside");
    h.script(&s, "did:test:a", "read shared/doc").await;
    let outside = h.state.path().join("outside.txt");
    std::fs::write(&outside, b"outside").unwrap();
    let doc = h.dir(&s).join("files/shared/doc");
    std::fs::remove_file(&doc).unwrap();
    std::fs::hard_link(&outside, &doc).unwrap();
    let out = h
        .script(
            &s,
            "did:test:a",
            "append shared/doc pwned\nread shared/doc\nwrite shared/doc mine\nappend shared/doc !",
        )
        .await;
    assert_err(&out, "append shared/doc pwned", "denied");
    assert!(
        line(&out, "append shared/doc pwned").contains("hard links"),
        "{out}"
    );
    assert_eq!(assert_ok(&out, "read shared/doc"), "outside");
    assert_ok(&out, "write shared/doc mine");
    assert_ok(&out, "append shared/doc !");
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        b"outside",
        "the outside file is unchanged"
    );
    assert_eq!(std::fs::read(&doc).unwrap(), b"mine!");
}

/// Three calls by a ring-2 agent (two deep trees, then a rename nesting one
/// into the other) used to make every later snapshot of the session fail.
/// The rename is refused as an invalid path, and the other agents'
/// snapshots and restores keep working.
#[tokio::test]
async fn nesting_trees_by_rename_cannot_deny_snapshots_to_the_others() {
    let h = Hv::new();
    let s = h.session();
    h.join(&s, "did:test:hostile", 0.8, ahv_agents::SCRIPTED)
        .await;
    h.join(&s, "did:test:other", 0.8, ahv_agents::SCRIPTED)
        .await;
    h.hv.activate_session(&s).unwrap();
    let deep = |p: &str| {
        (1..=32)
            .map(|i| format!("{p}{i}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let script = format!(
        "mkdir {a}\nmkdir {b}\nrename a1 {b}/x\nrename a1 shared/a1\nrename a1/a2 b1/b2/x",
        a = deep("a"),
        b = deep("b"),
    );
    let out = h.script(&s, "did:test:hostile", &script).await;
    assert_ok(&out, &format!("mkdir {}", deep("a")));
    assert_ok(&out, &format!("mkdir {}", deep("b")));
    let renames: Vec<_> = out.lines().filter(|l| l.starts_with("rename")).collect();
    assert_eq!(renames.len(), 3, "every rename was tried:\n{out}");
    for l in renames {
        assert!(
            l.contains("-> err invalid-path:"),
            "nesting must be refused:\n{out}"
        );
    }
    h.script(&s, "did:test:other", "write shared/doc v1").await;
    let snap = h.hv.snapshot(&s).expect("snapshots keep working");
    h.script(&s, "did:test:other", "read shared/doc\nwrite shared/doc v2")
        .await;
    h.hv.restore(&s, snap.id).expect("restores too");
    let out = h.script(&s, "did:test:other", "read shared/doc").await;
    assert_eq!(assert_ok(&out, "read shared/doc"), "v1");
}
