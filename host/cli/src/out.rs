//! Where `ahv` writes, and how a command that stops early says why.
//!
//! Every line for standard output goes through [`outln!`], which returns the
//! write's error instead of panicking as `println!` does; `?` carries it up to
//! [`crate::main`], where [`Failure::from`] turns a closed pipe (`| head`)
//! into a quiet [`Exit::OutputClosed`]. That is the one place a broken pipe is
//! handled. We do not restore the default `SIGPIPE` action instead: it would
//! kill the process in the middle of whatever it was doing (the demo's audit
//! log would be left unsealed), for every pipe and socket the process will
//! ever write to, not only standard output.
//!
//! Diagnostics go to standard error through [`errln!`], which drops them if
//! standard error is closed: nobody is left to read them.

use std::fmt;
use std::io::{self, Write};

use crate::exit::Exit;

/// Writes one line to standard output; evaluates to `io::Result<()>`.
macro_rules! outln {
    () => {
        $crate::out::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes one line to standard error, dropping it if standard error is closed.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::write_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, outln};

/// Writes to standard output.
///
/// # Errors
/// The write's error (a closed pipe is `BrokenPipe`).
pub(crate) fn write_out(args: fmt::Arguments<'_>) -> io::Result<()> {
    io::stdout().lock().write_fmt(args)
}

/// Writes to standard error; errors are dropped.
pub(crate) fn write_err(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Writes bytes to standard output as they are.
///
/// # Errors
/// The write's error.
pub(crate) fn write_out_bytes(bytes: &[u8]) -> io::Result<()> {
    let mut o = io::stdout().lock();
    o.write_all(bytes)?;
    o.flush()
}

/// Why a command stopped without its normal outcome.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A bad command line found after parsing (exit 2), in clap's words.
    Usage(clap::Error),
    /// The component was refused (exit 3).
    Refused(String),
    /// The host could not set up what the command needs (exit 4).
    Setup(anyhow::Error),
    /// The liability ledger refused an agent at join (exit 6).
    Denied(String),
    /// The API server refused the request (exit 7): its status and detail.
    Api(String),
    /// Standard output was closed by its reader (exit 141).
    OutputClosed,
}

impl Failure {
    /// A usage error in clap's format, naming the command it belongs to.
    pub(crate) fn usage(command: &str, message: impl fmt::Display) -> Failure {
        use clap::CommandFactory;
        use clap::error::ErrorKind::ValueValidation;
        let mut top = crate::Cli::command();
        let error = match top.find_subcommand_mut(command) {
            Some(sub) => sub
                .clone()
                .bin_name(format!("ahv {command}"))
                .error(ValueValidation, message),
            None => top.error(ValueValidation, message),
        };
        Failure::Usage(error)
    }

    /// The exit code.
    pub(crate) fn exit(&self) -> Exit {
        match self {
            Failure::Usage(_) => Exit::Usage,
            Failure::Refused(_) => Exit::Refused,
            Failure::Setup(_) => Exit::Setup,
            Failure::Denied(_) => Exit::Denied,
            Failure::Api(_) => Exit::ApiRefused,
            Failure::OutputClosed => Exit::OutputClosed,
        }
    }

    /// The message for standard error; `None` when nothing should be said.
    pub(crate) fn message(&self) -> Option<String> {
        match self {
            Failure::Usage(e) => Some(e.render().to_string().trim_end().to_string()),
            Failure::Refused(m) => Some(format!("refused: {m}")),
            Failure::Setup(e) => Some(format!("error: {e:#}")),
            Failure::Denied(m) => Some(format!("denied: {m}")),
            Failure::Api(m) => Some(format!("refused by the server: {m}")),
            Failure::OutputClosed => None,
        }
    }

    /// Says why on standard error and gives the exit code.
    pub(crate) fn report(self) -> Exit {
        if let Some(m) = self.message() {
            errln!("{m}");
        }
        self.exit()
    }
}

/// Whether `e`, or any error in its chain, is a closed pipe.
fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        next = e.source();
    }
    false
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::OutputClosed
        } else {
            Failure::Setup(e.into())
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        if e.chain().any(is_broken_pipe) {
            Failure::OutputClosed
        } else {
            Failure::Setup(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_closed_pipe_anywhere_in_the_chain_is_a_quiet_exit() {
        let e = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(matches!(Failure::from(e), Failure::OutputClosed));
        let wrapped = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("printing the report")
            .unwrap_err();
        let f = Failure::from(wrapped);
        assert_eq!(f.exit(), Exit::OutputClosed);
        assert_eq!(f.message(), None);
        let other = Failure::from(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(other.exit(), Exit::Setup);
    }

    #[test]
    fn usage_errors_name_the_subcommand_and_exit_2() {
        let f = Failure::usage("run", "--input-file x: no such file");
        assert_eq!(f.exit(), Exit::Usage);
        let m = f.message().unwrap();
        assert!(m.contains("--input-file x: no such file"), "{m}");
        assert!(m.contains("ahv run"), "{m}");
    }
}
