//! The exit codes of every `ahv` command: one table.
//!
//! The table below is the only place a code is chosen. `--help` of every
//! command prints it ([`help`]), the README's "Exit codes" section is checked
//! against it (a test fails when they differ), and [`Exit::for_trap`] is
//! generated from it: a new [`TrapCause`] variant does not compile until it has
//! its own line here.

use ahv_runtime::TrapCause;

/// Generates [`Exit`] and its tables from one list of rows.
macro_rules! exit_codes {
    (
        $( $code:literal $variant:ident $name:literal $meaning:literal; )*
        traps {
            $( $tcode:literal $tvariant:ident $tname:literal $pat:pat => $tmeaning:literal; )*
        }
    ) => {
        /// How an `ahv` command ended. Its process exit code is [`Exit::code`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Exit {
            $( #[doc = $meaning] $variant, )*
            $( #[doc = $tmeaning] $tvariant, )*
        }

        impl Exit {
            /// Every row of the table, in the order of the table.
            pub const ALL: &'static [Exit] = &[ $( Exit::$variant, )* $( Exit::$tvariant, )* ];

            /// The process exit code.
            pub const fn code(self) -> u8 {
                match self {
                    $( Exit::$variant => $code, )*
                    $( Exit::$tvariant => $tcode, )*
                }
            }

            /// A short stable name (`answered`, `ring-breach`, …); for a trap,
            /// the cause's [`TrapCause::kind`].
            pub const fn name(self) -> &'static str {
                match self {
                    $( Exit::$variant => $name, )*
                    $( Exit::$tvariant => $tname, )*
                }
            }

            /// What the code means, in one line.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $( Exit::$variant => $meaning, )*
                    $( Exit::$tvariant => $tmeaning, )*
                }
            }

            /// The exit code of a call that trapped with `cause`.
            pub fn for_trap(cause: &TrapCause) -> Exit {
                // Exhaustive on purpose: a new cause needs its own row.
                match cause {
                    $( $pat => Exit::$tvariant, )*
                }
            }
        }
    };
}

exit_codes! {
    0 Ok "ok" "success: the agent answered; the audit log or proof verified";
    1 Failed "failed"
        "the agent reported its own failure (`run` returned `Err`); `audit verify`: verification failed; `saga run/resume/compensate`: the saga failed and was compensated";
    2 Usage "usage"
        "bad command line: unknown or missing option, bad value, conflicting options, an input file that cannot be read or is too large, a policy file that is refused, `new`: a bad project name or a directory that is not empty";
    3 Refused "refused"
        "component refused: cannot be read, not a component, an import outside the contract, no `run` of the contract's type, a function the contract lacks, strict admission";
    4 Setup "setup-error" "setup error: a directory, the component cache, the runtime, the audit log, `new`: the Rust SDK not found";
    5 Escalated "escalated"
        "`saga run/resume/compensate`: the saga escalated: a compensation failed, so some of its changes remain";
    6 Denied "denied"
        "`saga run/resume/compensate`, `session join`: the liability ledger refused an agent at join (its risk is 0.60 or more)";
    7 ApiRefused "api-refused"
        "`session`, `liability`: the server answered with a problem (printed): unknown session or agent, a rule that refuses it, a role that does not allow it";
    141 OutputClosed "output-closed"
        "standard output was closed early (a reader such as `head` stopped reading): the command stops quietly, with the status of a program stopped by SIGPIPE";
    traps {
        10 RingBreach "ring-breach" TrapCause::RingBreach(_) => "ring breach: a capability outside the ring was called";
        11 OutOfFuel "out-of-fuel" TrapCause::OutOfFuel { .. } => "out of fuel";
        12 MemoryLimit "memory-limit" TrapCause::MemoryLimit(_) => "memory limit";
        13 DeadlineExceeded "deadline-exceeded" TrapCause::DeadlineExceeded(_) => "deadline exceeded";
        14 Killed "killed" TrapCause::Killed(_) => "killed (Ctrl-C)";
        15 StackOverflow "stack-overflow" TrapCause::StackOverflow => "stack overflow";
        16 GuestTrap "guest-trap" TrapCause::GuestTrap { .. } => "other guest trap";
        17 HostError "host-error" TrapCause::Host { .. } => "host error";
        18 HostcallTooLarge "hostcall-too-large" TrapCause::HostcallTooLarge { .. }
            => "host call too large: more data passed to one host call than the ring allows";
        19 Exited "exited" TrapCause::Exited { .. }
            => "the agent called WASI `exit` (even `exit(0)`) instead of answering";
        20 ResourceLimit "resource-limit" TrapCause::ResourceLimit { .. }
            => "resource limit: the agent filled its resource table, or its component-model handles";
        21 RequestTooLarge "request-too-large" TrapCause::RequestTooLarge(_)
            => "request too large: random bytes or an answer beyond the ring's limit";
        22 InvalidGuestData "invalid-guest-data" TrapCause::InvalidGuestData(_)
            => "invalid guest data: not UTF-8, a pointer outside its memory, a bad handle";
        23 InstanceLimit "instance-limit" TrapCause::InstanceLimit { .. }
            => "instance limit: the component needs more core instances, memories or tables than the ring allows";
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// The rows sorted by code.
fn sorted() -> Vec<Exit> {
    let mut rows = Exit::ALL.to_vec();
    rows.sort_by_key(|e| e.code());
    rows
}

/// The table as `--help` shows it (every command's help ends with it).
pub fn help() -> String {
    let mut s = String::from("Exit codes (the same for every command):\n");
    for e in sorted() {
        s += &format!("  {:>3}  {}\n", e.code(), e.meaning());
    }
    s
}

/// The table as the README shows it, in Markdown.
pub fn markdown() -> String {
    let mut s = String::from("| Code | Meaning |\n|---|---|\n");
    for e in sorted() {
        s += &format!("| {} | {} |\n", e.code(), e.meaning());
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use ahv_core::{AgentId, Ring};
    use ahv_runtime::{DeadlineExceeded, Killed, MemoryLimitExceeded, RingBreach};

    use super::*;

    fn every_cause() -> Vec<TrapCause> {
        vec![
            TrapCause::RingBreach(RingBreach {
                agent: AgentId::new("a").unwrap(),
                session: ahv_core::SessionId::new("s").unwrap(),
                ring: Ring::Sandbox,
                capability: ahv_core::Capability::VfsWrite,
                function: "write".into(),
                trace: ahv_core::TraceId(1),
            }),
            TrapCause::OutOfFuel { limit: 1 },
            TrapCause::MemoryLimit(MemoryLimitExceeded {
                limit: 1,
                requested: 2,
            }),
            TrapCause::DeadlineExceeded(DeadlineExceeded {
                deadline: Duration::from_secs(1),
            }),
            TrapCause::Killed(Killed { reason: "x".into() }),
            TrapCause::StackOverflow,
            TrapCause::GuestTrap {
                message: "x".into(),
            },
            TrapCause::Host {
                message: "x".into(),
            },
            TrapCause::HostcallTooLarge { limit: 1 },
            TrapCause::InstanceLimit {
                what: "core instance",
                needed: 15,
                limit: 14,
            },
        ]
    }

    #[test]
    fn codes_and_names_are_distinct() {
        let codes: BTreeSet<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        let names: BTreeSet<&str> = Exit::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(codes.len(), Exit::ALL.len());
        assert_eq!(names.len(), Exit::ALL.len());
    }

    #[test]
    fn every_trap_cause_has_its_own_row_named_by_its_kind() {
        let causes = every_cause();
        let rows: BTreeSet<u8> = causes.iter().map(|c| Exit::for_trap(c).code()).collect();
        assert_eq!(rows.len(), causes.len());
        for c in &causes {
            let e = Exit::for_trap(c);
            assert_eq!(e.name(), c.kind(), "{c}");
            assert!(e.code() >= 10 && e.code() < 128, "{c}");
        }
    }

    #[test]
    fn the_readme_shows_this_table() {
        let readme = include_str!("../../../README.md");
        let table = markdown();
        assert!(
            readme.contains(&table),
            "README.md's exit-code table differs from host/cli/src/exit.rs; it should read:\n{table}"
        );
    }

    #[test]
    fn help_lists_every_code() {
        let h = help();
        for e in Exit::ALL {
            assert!(h.contains(&format!("{:>3}  {}", e.code(), e.meaning())));
        }
    }
}
