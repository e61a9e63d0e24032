//! The exit-code contract, in one place. Every command returns an [`Outcome`]; `main` turns it into
//! the process's exit code and, for errors, one line on stderr:
//!
//! - `0`: [`Status::Ok`].
//! - `1`: the command ran and found or produced a failure: [`Status::Failed`] (the command already
//!   printed its report) or [`CliError::Failed`] (for example, the session does not exist).
//! - `2`: the tool could not run: [`CliError::Unusable`] (bad arguments, bad config, a missing,
//!   unreadable or locked database), and clap's own usage errors.

use std::process::ExitCode;

use palimpsest::Error;

/// What a command returns.
pub type Outcome = Result<Status, CliError>;

/// How a command that ran to the end went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    /// Exit 0.
    Ok,
    /// Exit 1, with nothing more printed: the command reported the failure itself (for example a
    /// check that printed its findings).
    Failed,
}

/// Why a command stopped early.
#[derive(Debug)]
pub enum CliError {
    /// Exit 1: the command ran and hit a failure, such as a session that does not exist.
    Failed(String),
    /// Exit 2: the tool could not do its job at all (bad input, config or database).
    Unusable(String),
    /// Whoever read stdout went away (`palimpsest show ... | head`): stop quietly, exit 0, as
    /// other command-line tools do.
    BrokenPipe,
}

impl CliError {
    /// Exit 1 with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// Exit 2 with `message`.
    pub fn unusable(message: impl Into<String>) -> Self {
        Self::Unusable(message.into())
    }

    /// Writing to stdout failed.
    pub fn stdout(e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Self::BrokenPipe
        } else {
            Self::unusable(format!("cannot write to stdout: {e}"))
        }
    }
}

/// The default classification of library errors raised while a command runs. Input and
/// configuration errors mean the tool was asked something it cannot do (2); everything else
/// means it ran and met a failure (1). Errors raised while opening the database are all 2:
/// `db::DbArgs::open` classifies those itself.
impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidConfig { .. }
            | Error::InvalidArgument { .. }
            | Error::InvalidSessionId { .. }
            | Error::Locked { .. }
            | Error::NotADatabase { .. } => Self::Unusable(message),
            _ => Self::Failed(message),
        }
    }
}

/// Prints an error (if any) to stderr and returns the exit code.
pub fn report(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(Status::Ok) | Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Ok(Status::Failed) => ExitCode::from(1),
        Err(CliError::Failed(message)) => {
            eprintln!("palimpsest: error: {}", one_line(&message));
            ExitCode::from(1)
        }
        Err(CliError::Unusable(message)) => {
            eprintln!("palimpsest: error: {}", one_line(&message));
            ExitCode::from(2)
        }
    }
}

/// Handles a clap parse error: help and version go to stdout with exit 0; a missing command
/// prints the help to stderr with exit 2; any other usage error becomes one line on stderr with
/// exit 2.
pub fn clap_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // Nothing useful to do if stdout is gone.
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            // clap's text is "error: <what>\n[  <detail lines>]\n\nUsage: ...\n\nFor more ...".
            // Keep the first paragraph, drop its "error: " prefix, and point at --help.
            let text = e.to_string();
            let first = text.split("\n\n").next().unwrap_or_default();
            let what = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("palimpsest: error: {} (see --help)", one_line(what));
            ExitCode::from(2)
        }
    }
}

/// Collapses a message onto one line, so each error is exactly one line of stderr.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_are_classified_by_who_must_act() {
        let not_found = CliError::from(Error::NotFound { session: "s".to_string() });
        assert!(matches!(not_found, CliError::Failed(_)));
        let bad_config =
            CliError::from(Error::InvalidConfig { field: "limits.x".to_string(), reason: "0".to_string() });
        assert!(matches!(bad_config, CliError::Unusable(m) if m.contains("limits.x")));
        let locked = CliError::from(Error::Locked { path: "/tmp/x".into() });
        assert!(matches!(locked, CliError::Unusable(_)));
        let past_end = CliError::from(Error::InvalidArgument { what: "upto", reason: "past the end".to_string() });
        assert!(matches!(past_end, CliError::Unusable(_)));
        let bad_line = CliError::from(Error::InvalidImport { line: 3, reason: "not JSON".to_string() });
        assert!(matches!(bad_line, CliError::Failed(m) if m.contains("line 3")));
        let model = CliError::from(Error::Summarizer { status: Some(503), message: "overloaded".to_string() });
        assert!(matches!(model, CliError::Failed(_)));
    }

    #[test]
    fn messages_are_collapsed_to_one_line() {
        assert_eq!(one_line("a\n  b\tc \n"), "a b c");
    }
}
