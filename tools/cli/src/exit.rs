//! The exit-code contract, in one place. Every command returns an [`Outcome`]; `main` turns it into
//! the process's exit code and, for errors, one line on stderr:
//!
//! - `0`: [`Status::Ok`].
//! - `1`: the command ran and found or produced a failure: [`Status::Failed`] (the command already
//!   printed its report) or [`CliError::Failed`] (for example, the session does not exist).
//! - `2`: the tool could not run: [`CliError::Unusable`] (bad arguments, bad config, a missing,
//!   unreadable or locked database), and clap's own usage errors.
//!
//! With `--json`, an error is also one object on stdout, `{"error": {"kind", "message"}}`, so a
//! script reading stdout never has to parse stderr.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use palimpsest::Error;
use serde::Serialize;

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

/// Why a command stopped early. `kind` is a stable snake_case name for scripts (the `kind` of the
/// `--json` error object): the library error's variant (`not_found`, `invalid_config`, `locked`,
/// ...), or `failed` / `unusable` for the tool's own errors.
#[derive(Debug)]
pub enum CliError {
    /// Exit 1: the command ran and hit a failure, such as a session that does not exist.
    Failed { kind: &'static str, message: String },
    /// Exit 2: the tool could not do its job at all (bad input, config or database).
    Unusable { kind: &'static str, message: String },
    /// Whoever read stdout went away (`palimpsest show ... | head`): stop quietly, exit 0, as
    /// other command-line tools do.
    BrokenPipe,
}

impl CliError {
    /// Exit 1 with `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed { kind: "failed", message: message.into() }
    }

    /// Exit 1 with `message`, kind `not_found`: a session (or other named thing) is not there.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::Failed { kind: "not_found", message: message.into() }
    }

    /// Exit 2 with `message`.
    pub fn unusable(message: impl Into<String>) -> Self {
        Self::Unusable { kind: "unusable", message: message.into() }
    }

    /// Writing to stdout failed.
    pub fn stdout(e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Self::BrokenPipe
        } else {
            Self::unusable(format!("cannot write to stdout: {e}"))
        }
    }

    /// Like `From<Error>`, naming the database in a "not found" message, which the library
    /// cannot know.
    pub fn in_db(e: Error, db: &Path) -> Self {
        match e {
            Error::NotFound { .. } => Self::not_found(format!("{e} in {}", db.display())),
            other => Self::from(other),
        }
    }
}

/// The stable name of a library error's variant, the `kind` of the `--json` error object.
fn kind_of(e: &Error) -> &'static str {
    match e {
        Error::InvalidSessionId { .. } => "invalid_session_id",
        Error::InvalidMessage { .. } => "invalid_message",
        Error::UnknownToolCall { .. } => "unknown_tool_call",
        Error::ToolCallAlreadyAnswered { .. } => "tool_call_already_answered",
        Error::DuplicateToolCallId { .. } => "duplicate_tool_call_id",
        Error::InvalidArgument { .. } => "invalid_argument",
        Error::InvalidImport { .. } => "invalid_import",
        Error::InvalidConfig { .. } => "invalid_config",
        Error::NotFound { .. } => "not_found",
        Error::Timeout { .. } => "timeout",
        Error::LockTimeout { .. } => "lock_timeout",
        Error::Storage { .. } => "storage",
        Error::Corrupt { .. } => "corrupt",
        Error::Poisoned => "poisoned",
        Error::Locked { .. } => "locked",
        Error::NotADatabase { .. } => "not_a_database",
        Error::Summarizer { .. } => "summarizer",
        Error::Closed => "closed",
        Error::Conflict { .. } => "conflict",
        Error::Unsupported { .. } => "unsupported",
        // The library may add variants; they read as the tool's generic failure until named here.
        _ => "failed",
    }
}

/// The default classification of library errors raised while a command runs. Input and
/// configuration errors mean the tool was asked something it cannot do (2); everything else
/// means it ran and met a failure (1). Errors raised while opening the database are all 2:
/// `db::DbArgs::open` classifies those itself.
impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let kind = kind_of(&e);
        match e {
            Error::InvalidConfig { .. }
            | Error::InvalidArgument { .. }
            | Error::InvalidSessionId { .. }
            | Error::Locked { .. }
            | Error::Unsupported { .. }
            | Error::NotADatabase { .. } => Self::Unusable { kind, message },
            _ => Self::Failed { kind, message },
        }
    }
}

/// The `--json` form of an error, printed on stdout (the one line on stderr is printed too):
/// `{"error": {"kind": "<kind>", "message": "<one line>"}}`.
#[derive(Serialize)]
struct ErrorJson<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: &'a str,
    message: &'a str,
}

/// Prints the `--json` error object on stdout; a stdout that is gone is not worth more noise.
fn print_json_error(kind: &str, message: &str) {
    let line = ErrorJson { error: ErrorBody { kind, message } };
    if let Ok(text) = serde_json::to_string(&line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    }
}

/// Prints an error (if any) to stderr, and with `json` also as one JSON object on stdout, and
/// returns the exit code.
pub fn report(outcome: Outcome, json: bool) -> ExitCode {
    let (code, kind, message) = match outcome {
        Ok(Status::Ok) | Err(CliError::BrokenPipe) => return ExitCode::SUCCESS,
        Ok(Status::Failed) => return ExitCode::from(1),
        Err(CliError::Failed { kind, message }) => (1, kind, one_line(&message)),
        Err(CliError::Unusable { kind, message }) => (2, kind, one_line(&message)),
    };
    eprintln!("palimpsest: error: {message}");
    if json {
        print_json_error(kind, &message);
    }
    ExitCode::from(code)
}

/// Handles a clap parse error: help and version go to stdout with exit 0; a missing command
/// prints the help to stderr with exit 2; any other usage error becomes one line on stderr with
/// exit 2 (and, when the arguments hold `--json`, the JSON error object, kind `usage`, on stdout).
pub fn clap_error(e: &clap::Error, json: bool) -> ExitCode {
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
            let message = format!("{} (see --help)", one_line(what));
            eprintln!("palimpsest: error: {message}");
            if json {
                print_json_error("usage", &message);
            }
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
        assert!(matches!(not_found, CliError::Failed { kind: "not_found", .. }));
        let bad_config =
            CliError::from(Error::InvalidConfig { field: "limits.x".to_string(), reason: "0".to_string() });
        assert!(
            matches!(bad_config, CliError::Unusable { kind: "invalid_config", message } if message.contains("limits.x"))
        );
        let locked = CliError::from(Error::Locked { path: "/tmp/x".into() });
        assert!(matches!(locked, CliError::Unusable { kind: "locked", .. }));
        let past_end = CliError::from(Error::InvalidArgument { what: "upto", reason: "past the end".to_string() });
        assert!(matches!(past_end, CliError::Unusable { .. }));
        let bad_line = CliError::from(Error::InvalidImport { line: 3, reason: "not JSON".to_string() });
        assert!(matches!(bad_line, CliError::Failed { kind: "invalid_import", message } if message.contains("line 3")));
        let model = CliError::from(Error::Summarizer { status: Some(503), message: "overloaded".to_string() });
        assert!(matches!(model, CliError::Failed { kind: "summarizer", .. }));
    }

    #[test]
    fn messages_are_collapsed_to_one_line() {
        assert_eq!(one_line("a\n  b\tc \n"), "a b c");
    }
}
