//! The one public error type. Every variant says what the caller should do about it.

use std::path::PathBuf;

/// Everything that can go wrong in palimpsest.
///
/// Input errors (`Invalid*`, tool pairing) are raised before anything is written: the stored state
/// is unchanged. Storage errors after a write started poison the engine (see [`Error::Poisoned`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The session id breaks the id rules. Fix the input.
    #[error("invalid session id {id:?}: {reason}")]
    InvalidSessionId {
        /// The id as given, truncated if long.
        id: String,
        /// Which rule it breaks.
        reason: String,
    },

    /// A message breaks a rule (size, empty content, role/field mismatch). `index` is its position
    /// in the call (0 for a single append). Fix the input; nothing was written.
    #[error("invalid message {index}: {reason}")]
    InvalidMessage {
        /// The message's position in the call, 0-based.
        index: usize,
        /// Which rule it breaks.
        reason: String,
    },

    /// A tool result names a call id that is not open in this session (never made, or made in
    /// another session). Fix the input; nothing was written.
    #[error("message {index}: tool result for call {call_id:?}, which is not an open tool call of this session")]
    UnknownToolCall {
        /// The tool result's position in the call, 0-based.
        index: usize,
        /// The call id the result names.
        call_id: String,
    },

    /// A second result for a call that already has one. Fix the input; nothing was written.
    #[error("message {index}: tool call {call_id:?} already has a result")]
    ToolCallAlreadyAnswered {
        /// The second result's position in the call, 0-based.
        index: usize,
        /// The call id that already has a result.
        call_id: String,
    },

    /// A tool call id that is already open in this session, or repeated within one message.
    /// Fix the input; nothing was written.
    #[error("message {index}: duplicate tool call id {call_id:?}")]
    DuplicateToolCallId {
        /// The position in the call of the message that repeats the id, 0-based.
        index: usize,
        /// The repeated call id.
        call_id: String,
    },

    /// Any other argument out of its range (a read limit, a seq past the end, a hash).
    /// Fix the input.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The argument at fault, such as `upto`.
        what: &'static str,
        /// Why its value is refused.
        reason: String,
    },

    /// Line `line` (1-based) of an import is malformed or breaks a rule; nothing was imported.
    /// Fix the file.
    #[error("import line {line}: {reason}")]
    InvalidImport {
        /// The malformed line, 1-based.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// A configuration value is missing, of the wrong type, or out of range. Fix the config.
    #[error("invalid config: {field}: {reason}")]
    InvalidConfig {
        /// The path of the value at fault, such as `compaction.chunk_bytes`; `(document)` or `(file)`
        /// when the whole text or file is at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The session has no events. Check the id, or create it by appending.
    #[error("session {session:?} not found")]
    NotFound {
        /// The session id that was looked up.
        session: String,
    },

    /// A bounded wait ran out (a session lock, the group-commit queue, a summarizer call).
    /// Retry later; the operation did not take effect unless the variant's context says otherwise.
    #[error("timed out after {after_ms} ms waiting for {what}")]
    Timeout {
        /// What was waited for, such as `a chunk summary`.
        what: &'static str,
        /// The bound that ran out, in milliseconds.
        after_ms: u64,
    },

    /// A namespace lock stayed held by someone else through `attempts` attempts and `waited_ms`
    /// ms (the `locks` bounds) and `locks.on_timeout` is `error`. Retry later; nothing was written.
    #[error("namespace {namespace:?} stayed locked through {attempts} attempts ({waited_ms} ms)")]
    LockTimeout {
        /// The memory namespace whose lock stayed held.
        namespace: String,
        /// How many times the lock was tried.
        attempts: u64,
        /// How long the attempts took in all, in milliseconds.
        waited_ms: u64,
    },

    /// The storage layer failed. If it failed during a write the engine is now poisoned.
    /// Surface it; reopen the engine once the cause (disk full, I/O error) is fixed.
    ///
    /// The text ends with the cause's own text, so one line tells the whole story; `source()`
    /// returns the cause itself (a `fjall::Error`, a `std::io::Error`, ...) for callers that
    /// inspect or downcast it.
    #[error("storage error during {op}: {source}")]
    Storage {
        /// The operation that failed, such as `group commit`.
        op: &'static str,
        /// What went wrong: the storage layer's own error where there is one, else the engine's
        /// account of the failure (a panic, a thread that could not start).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A stored record does not decode or breaks an invariant. Run `palimpsest audit`;
    /// restore the session from an export or a backup.
    #[error("corrupt record{}{}: {detail}", session.as_ref().map(|s| format!(" in session {s:?}")).unwrap_or_default(), seq.map(|s| format!(" at seq {s}")).unwrap_or_default())]
    Corrupt {
        /// The session the record belongs to, if known.
        session: Option<String>,
        /// The seq of the event concerned, if known.
        seq: Option<u64>,
        /// What does not decode or which invariant is broken.
        detail: String,
    },

    /// An earlier write failed to persist; writes are refused until the engine is reopened,
    /// because what reached the disk is no longer known.
    #[error("engine is poisoned by an earlier failed write; reopen it")]
    Poisoned,

    /// Another process (or another engine in this process) has the database open.
    /// Stop it, or work on a copy.
    #[error("database at {} is locked by another process", path.display())]
    Locked {
        /// The database path that was opened.
        path: PathBuf,
    },

    /// The path exists but does not hold a palimpsest database (or holds a newer format).
    #[error("{} is not a usable palimpsest database: {reason}", path.display())]
    NotADatabase {
        /// The path that was opened.
        path: PathBuf,
        /// Why it is not usable.
        reason: String,
    },

    /// The summarizer or model provider failed. `status` is the HTTP status when there was one;
    /// `message` is the provider's text, truncated. Surface it; retry if the provider says so.
    #[error("summarizer failed{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Summarizer {
        /// The provider's HTTP status, if a reply came.
        status: Option<u16>,
        /// What failed: the provider's text (truncated) or the engine's account of the failure.
        message: String,
    },

    /// The session changed since the caller read it: a write made against what it read (an expected
    /// last seq, `SessionUpdate::expect_last_seq`; on the JetStream backend, the version of the
    /// session's last record) found another. Nothing was written; read the session again and retry.
    #[error(
        "session {session} changed since it was read (expected {expected}{})",
        found.map(|f| format!(", found {f}")).unwrap_or_default()
    )]
    Conflict {
        /// The session written to.
        session: String,
        /// The last seq (or, on the JetStream backend, the version) the writer expected.
        expected: u64,
        /// What the session held when the write was tried, when known.
        found: Option<u64>,
    },

    /// The engine is shutting down or was closed.
    #[error("engine is closed")]
    Closed,

    /// The operation does not run on this storage backend yet (SPEC.md 11a lists what does).
    /// Nothing was written.
    #[error("{what} does not run on storage.kind = {backend:?} yet")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// The configured `storage.kind`.
        backend: &'static str,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::Storage`] for `op`, caused by `cause` (an error, or a message when the failure
    /// has no error of its own).
    pub(crate) fn storage(
        op: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Storage { op, source: cause.into() }
    }
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn error_is_send_and_sync() {
        assert_send_sync::<Error>();
    }

    #[test]
    fn storage_errors_keep_their_cause_as_source() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
        let e = Error::storage("group commit", io);
        assert_eq!(e.to_string(), "storage error during group commit: disk full");
        let source = std::error::Error::source(&e).expect("a storage error has a source");
        let io = source.downcast_ref::<std::io::Error>().expect("the cause is the io::Error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
    }

    #[test]
    fn a_storage_error_wrapping_another_keeps_the_whole_chain() {
        let inner = Error::storage("commit", std::io::Error::other("EIO"));
        let outer = Error::storage("group commit", inner);
        assert_eq!(outer.to_string(), "storage error during group commit: storage error during commit: EIO");
        let mut chain = Vec::new();
        let mut next = std::error::Error::source(&outer);
        while let Some(e) = next {
            chain.push(e.to_string());
            next = e.source();
        }
        assert_eq!(chain, ["storage error during commit: EIO", "EIO"]);
    }
}
