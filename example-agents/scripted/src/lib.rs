//! `scripted` — a test instrument: runs a script of capability calls, one per line, and reports each outcome.
//!
//! Lets real-guest tests drive every session capability, interleave two agents
//! (through `await`), and provoke conflicts, deadlocks and breaches. Commands
//! (arguments separated by single spaces; text runs to the end of the line):
//!
//! - `read P`, `list P`, `stat P`, `hash P`, `acl P`
//! - `write P TEXT`, `append P TEXT`, `delete P`, `rename A B`, `mkdir P`
//! - `setacl P OWNER READ WRITE` where READ/WRITE are `everyone`, `owner` or `a,b,c`
//! - `get K` (remembers the version), `keys PREFIX`
//! - `put K VALUE` (names the version last seen for K, 0 if none), `putv K VERSION VALUE`, `del K`
//! - `lock key:K|path:P read|write|exclusive WAIT_MS`, `unlock key:K|path:P`, `held`
//! - `await K`: polls until key K exists (1 ms sleeps; bounded by the call deadline)
//! - `ring` (the current ring), `elevate RING TTL_SECS JUSTIFICATION`,
//!   `elevate-sponsored RING TTL_SECS ATTESTATION JUSTIFICATION`, `relinquish`, `elevation`
//! - `effect NAME ARGS` (a non-reversible effect, ring 1)
//! - `spawn COMPONENT`, `spawn-run CHILD SCRIPT` (`;` separates the child's
//!   lines; its report comes back with `;` for newlines), `spawn-stop CHILD`, `children`
//! - `admin-list`, `admin-inspect A`, `admin-kill A REASON`, `admin-quarantine A SECS REASON`,
//!   `admin-release A`
//! - `sleep MS`, `spin` (loops forever), `fail TEXT` (stops the script with an error)
//!
//! It is also a saga participant: `execute` runs its input as a script and
//! answers the report (a line `@N command` runs only on attempt `N`, so a
//! first attempt can spin and its retry succeed); `compensate` runs its *input* (the step's `undo`
//! script, as the test or saga hands it over) the same way, and fails with the
//! script's failure (`fail TEXT`) if it fails. So a step can be made to spin,
//! write, breach or fail on demand.
//!
//! Output: one line per command, `<command> -> ok[ detail]` or
//! `<command> -> err <kind>: <message>`. A command that traps (a breach)
//! ends the call, so its line is never written.

use std::collections::HashMap;

use agent_sdk::{
    Agent, Error, SagaParticipant, Step, admin, context, effects, elevation, export_agent, json,
    locks, log, spawn, state, vfs,
};

struct Scripted;

fn kind(e: &Error) -> &'static str {
    agent_sdk::error_kind(e)
}

fn access(s: &str) -> vfs::Access {
    match s {
        "everyone" => vfs::Access::Everyone,
        "owner" => vfs::Access::Owner,
        list => vfs::Access::Agents(list.split(',').map(str::to_string).collect()),
    }
}

fn show_access(a: &vfs::Access) -> String {
    match a {
        vfs::Access::Everyone => "everyone".into(),
        vfs::Access::Owner => "owner".into(),
        vfs::Access::Agents(l) => l.join(","),
    }
}

fn target(s: &str) -> Result<locks::Target, String> {
    if let Some(k) = s.strip_prefix("key:") {
        Ok(locks::Target::Key(k.to_string()))
    } else if let Some(p) = s.strip_prefix("path:") {
        Ok(locks::Target::Path(p.to_string()))
    } else {
        Err(format!("bad lock target {s:?}: use key:K or path:P"))
    }
}

fn mode(s: &str) -> Result<locks::Mode, String> {
    match s {
        "read" => Ok(locks::Mode::Read),
        "write" => Ok(locks::Mode::Write),
        "exclusive" => Ok(locks::Mode::Exclusive),
        other => Err(format!("bad lock mode {other:?}")),
    }
}

/// A JSON state value (`tally`, `double`).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Tally {
    runs: u64,
}

/// Copies a file with `?` on every host call (the SDK turns an `Error` into
/// the failure message).
fn copy(from: &str, to: &str) -> Result<usize, String> {
    let bytes = vfs::read(from)?;
    vfs::write(to, &bytes)?;
    Ok(bytes.len())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Machine {
    seen: HashMap<String, u64>,
}

impl Machine {
    fn step(&mut self, line: &str) -> Result<Result<String, Error>, String> {
        let mut it = line.splitn(2, ' ');
        let cmd = it.next().unwrap_or("");
        let rest = it.next().unwrap_or("");
        let two = || -> (&str, &str) { rest.split_once(' ').unwrap_or((rest, "")) };
        Ok(match cmd {
            "read" => vfs::read(rest).map(|b| text(&b)),
            "list" => vfs::list(rest).map(|l| l.join(",")),
            "stat" => vfs::stat(rest).map(|s| format!("{:?} {}", s.kind, s.size)),
            "hash" => vfs::hash(rest),
            "acl" => vfs::acl(rest).map(|a| {
                format!(
                    "owner={} read={} write={}",
                    a.owner,
                    show_access(&a.read),
                    show_access(&a.write)
                )
            }),
            "write" => {
                let (p, t) = two();
                vfs::write(p, t).map(|()| String::new())
            }
            "append" => {
                let (p, t) = two();
                vfs::append(p, t).map(|()| String::new())
            }
            "delete" => vfs::delete(rest).map(|()| String::new()),
            "rename" => {
                let (a, b) = two();
                vfs::rename(a, b).map(|()| String::new())
            }
            "mkdir" => vfs::create_dir(rest).map(|()| String::new()),
            "setacl" => {
                let parts: Vec<&str> = rest.split(' ').collect();
                let [p, owner, r, w] = parts[..] else {
                    return Err(format!("setacl needs 4 arguments: {line:?}"));
                };
                let acl = vfs::Acl {
                    owner: owner.to_string(),
                    read: access(r),
                    write: access(w),
                };
                vfs::set_acl(p, &acl).map(|()| String::new())
            }
            "get" => state::get(rest).map(|v| match v {
                Some(v) => {
                    self.seen.insert(rest.to_string(), v.version);
                    format!("v{} {} by {}", v.version, text(&v.value), v.writer)
                }
                None => {
                    self.seen.insert(rest.to_string(), 0);
                    "none".to_string()
                }
            }),
            "keys" => state::keys(rest).map(|k| k.join(",")),
            // The SDK's compare-and-set loop: add 1 to a decimal counter.
            "incr" => state::update(rest, |old| {
                let n: u64 = old
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
                (n + 1).to_string().into_bytes()
            })
            .map(|n| format!("v{n}")),
            // A JSON state value through the SDK's typed update.
            "tally" => state::update_json(rest, |old: Option<Tally>| {
                let mut t = old.unwrap_or_default();
                t.runs += 1;
                t
            })
            .map(|n| format!("v{n}")),
            // JSON input and answer: a tally in, the doubled tally out; bad
            // JSON fails the script with the SDK's message.
            "double" => {
                let t: Tally = json::input(rest)?;
                Ok(json::answer(&Tally { runs: t.runs * 2 })?)
            }
            // The same, with a rival write of "100" slipped in after the
            // first read (a race made certain): the loop must read again.
            "incr-raced" => {
                let mut raced = false;
                state::update(rest, |old| {
                    if !raced {
                        raced = true;
                        let version = state::get(rest).ok().flatten().map_or(0, |v| v.version);
                        let _ = state::put(rest, "100", version);
                    }
                    let n: u64 = old
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                        .unwrap_or(0);
                    (n + 1).to_string().into_bytes()
                })
                .map(|n| format!("v{n}"))
            }
            "put" => {
                let (k, v) = two();
                let expected = self.seen.get(k).copied().unwrap_or(0);
                state::put(k, v, expected).map(|n| {
                    self.seen.insert(k.to_string(), n);
                    format!("v{n}")
                })
            }
            "putv" => {
                let parts: Vec<&str> = rest.splitn(3, ' ').collect();
                let [k, ver, v] = parts[..] else {
                    return Err(format!("putv needs 3 arguments: {line:?}"));
                };
                let ver = ver.parse().map_err(|e| format!("bad version: {e}"))?;
                state::put(k, v, ver).map(|n| format!("v{n}"))
            }
            "del" => {
                let expected = self.seen.get(rest).copied().unwrap_or(0);
                state::delete(rest, expected).map(|()| String::new())
            }
            "lock" => {
                let parts: Vec<&str> = rest.split(' ').collect();
                let [t, m, w] = parts[..] else {
                    return Err(format!("lock needs 3 arguments: {line:?}"));
                };
                let wait = w.parse().map_err(|e| format!("bad wait: {e}"))?;
                locks::acquire(&target(t)?, mode(m)?, wait).map(|()| String::new())
            }
            "unlock" => locks::release(&target(rest)?).map(|()| String::new()),
            // A lock held by the SDK's guard for the rest of this command:
            // reports what is held inside the scope; the guard releases it.
            "guarded" => {
                let (t, m) = two();
                match locks::lock(&target(t)?, mode(m)?, 1_000) {
                    Ok(_guard) => locks::held().map(|h| format!("{} held", h.len())),
                    Err(e) => Err(e),
                }
            }
            // `?` on a host error inside a helper that fails with a String:
            // a failed copy fails the whole script with the error's description.
            "copy" => {
                let (from, to) = two();
                Ok(format!("{} bytes", copy(from, to)?))
            }
            "held" => locks::held().map(|held| {
                held.iter()
                    .map(|(t, m)| match t {
                        locks::Target::Key(k) => format!("key:{k}={m:?}"),
                        locks::Target::Path(p) => format!("path:{p}={m:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            "await" => loop {
                match state::get(rest) {
                    Ok(Some(v)) => break Ok(format!("v{}", v.version)),
                    Ok(None) => std::thread::sleep(std::time::Duration::from_millis(1)),
                    Err(e) => break Err(e),
                }
            },
            "ring" => Ok(context::ring().to_string()),
            "elevate" => {
                let parts: Vec<&str> = rest.splitn(3, ' ').collect();
                let [r, ttl, why] = parts[..] else {
                    return Err(format!("elevate needs 3 arguments: {line:?}"));
                };
                let r = r.parse().map_err(|e| format!("bad ring: {e}"))?;
                let ttl = ttl.parse().map_err(|e| format!("bad ttl: {e}"))?;
                elevation::request(r, ttl, why, None).map(|g| format!("ring {}", g.ring))
            }
            "elevate-sponsored" => {
                let parts: Vec<&str> = rest.splitn(4, ' ').collect();
                let [r, ttl, att, why] = parts[..] else {
                    return Err(format!("elevate-sponsored needs 4 arguments: {line:?}"));
                };
                let r = r.parse().map_err(|e| format!("bad ring: {e}"))?;
                let ttl = ttl.parse().map_err(|e| format!("bad ttl: {e}"))?;
                elevation::request(r, ttl, why, Some(att)).map(|g| format!("ring {}", g.ring))
            }
            "effect" => {
                let (name, args) = two();
                effects::invoke(name, args)
            }
            "spawn" => spawn::start(rest),
            "spawn-run" => {
                let (child, input) = two();
                spawn::run(child, &input.replace(';', "\n")).map(|r| match r {
                    Ok(answer) => answer.trim_end().replace('\n', ";"),
                    Err(failure) => format!("failed {failure}"),
                })
            }
            "spawn-stop" => spawn::stop(rest).map(|()| String::new()),
            "children" => spawn::children().map(|l| l.join(",")),
            "relinquish" => elevation::relinquish().map(|b| b.to_string()),
            "elevation" => elevation::current().map(|g| match g {
                Some(g) => format!("ring {}", g.ring),
                None => "none".to_string(),
            }),
            "admin-list" => admin::participants().map(|l| {
                l.iter()
                    .map(|p| format!("{}:{}", p.agent_id, p.effective_ring))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            "admin-inspect" => admin::inspect(rest).map(|p| {
                format!(
                    "base={} effective={} quarantined={}",
                    p.base_ring, p.effective_ring, p.quarantined
                )
            }),
            "admin-kill" => {
                let (a, why) = two();
                admin::kill(a, why).map(|()| String::new())
            }
            "admin-quarantine" => {
                let parts: Vec<&str> = rest.splitn(3, ' ').collect();
                let [a, secs, why] = parts[..] else {
                    return Err(format!("admin-quarantine needs 3 arguments: {line:?}"));
                };
                let secs = secs.parse().map_err(|e| format!("bad secs: {e}"))?;
                admin::quarantine(a, why, secs).map(|()| String::new())
            }
            "admin-release" => admin::release(rest).map(|b| b.to_string()),
            "sleep" => {
                let ms = rest.parse().map_err(|e| format!("bad sleep: {e}"))?;
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(String::new())
            }
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "fail" => return Err(rest.to_string()),
            other => return Err(format!("unknown command {other:?}")),
        })
    }
}

/// The script of one attempt: a line `@N command` runs only on attempt `N`
/// (so a test can make a first attempt spin and the retry succeed).
fn for_attempt(input: &str, attempt: u32) -> String {
    let mut out = String::new();
    for line in input.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix('@') {
            let (n, cmd) = rest.split_once(' ').unwrap_or((rest, ""));
            if n.parse::<u32>().ok() != Some(attempt) {
                continue;
            }
            out.push_str(cmd);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Runs `input` one command per line; the report, or the first `fail`'s text.
fn run_script(input: &str) -> Result<String, String> {
    let mut m = Machine {
        seen: HashMap::new(),
    };
    let mut out = String::new();
    for line in input.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match m.step(line)? {
            Ok(detail) if detail.is_empty() => out.push_str(&format!("{line} -> ok\n")),
            Ok(detail) => out.push_str(&format!("{line} -> ok {detail}\n")),
            Err(e) => out.push_str(&format!("{line} -> err {}: {e}\n", kind(&e))),
        }
    }
    Ok(out)
}

impl Agent for Scripted {
    fn run(input: String) -> Result<String, String> {
        run_script(&input)
    }
}

impl SagaParticipant for Scripted {
    fn execute(step: &Step, input: &str) -> Result<String, String> {
        log::info!(
            "saga {} step {} ({}) attempt {}",
            step.saga_id,
            step.step_id,
            step.action,
            step.attempt
        );
        run_script(&for_attempt(input, step.attempt))
    }

    fn compensate(step: &Step, input: &str, _output: &str) -> Result<(), String> {
        log::info!("saga {} step {}: undo", step.saga_id, step.step_id);
        let report = run_script(input)?;
        log::info!("undo report: {}", report.trim_end().replace('\n', "; "));
        Ok(())
    }
}

export_agent!(Scripted, saga);
