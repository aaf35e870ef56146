//! `ahv policy check FILE`: loads a policy file as `ahv run --policy` and the
//! hypervisor do, and prints the effective ring table, or refuses the file
//! (exit 2) naming the file, the field and the value.

use std::path::PathBuf;

use ahv_security::policy::PolicyFile;
use clap::Subcommand;

use crate::exit::Exit;
use crate::out::{Failure, outln};

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCmd {
    /// Load a TOML policy file and print the effective table: per ring its
    /// capabilities, budgets, rate limits and breach rule; then the breach
    /// detector, the elevation rules and the per-agent grants. A file with an
    /// unknown field, a widening of a ring or a bad value is refused (exit 2).
    /// The format: docs/policy.md.
    #[command(after_help = crate::exit::help())]
    Check {
        /// The policy file (TOML).
        file: PathBuf,
    },
}

pub(crate) fn policy(cmd: PolicyCmd) -> Result<Exit, Failure> {
    match cmd {
        PolicyCmd::Check { file } => {
            let policy = PolicyFile::load(&file).map_err(|e| Failure::usage("policy", e))?;
            outln!("{}: accepted; the effective policy:\n", file.display())?;
            outln!("{}", policy.render_table().trim_end())?;
            Ok(Exit::Ok)
        }
    }
}
