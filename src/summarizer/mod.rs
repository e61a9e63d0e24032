//! Summarizers: one trait, [`Summarizer`], behind which sit the embedded extractive default
//! (`extractive`, offline and deterministic) and an OpenAI-compatible client (`openai`).
//! Prompts for model-based summarizers live in `prompt`; `text` cleans content (escape
//! sequences, control characters) on every path into a summary.
//!
//! A summarizer is asked for one of three tasks ([`SummaryTask`]): a whole span in one pass, one
//! chunk of a long span, or the merge of chunk summaries. The compaction driver decides which,
//! bounds concurrency and time, and cleans and checks every reply ([`accept_reply`]) before using
//! it: content is never a reason to fail a compaction, only an empty or over-long reply is.

use std::future::Future;
use std::pin::Pin;

use crate::error::Error;
use crate::log::view::StoredMessage;

pub(crate) mod adaptive;
pub(crate) mod chunked;
pub(crate) mod extractive;
pub(crate) mod openai;

pub(crate) mod prompt;
pub(crate) mod retry;
pub(crate) mod text;

pub use extractive::ExtractiveSummarizer;
pub use openai::OpenAiSummarizer;
pub(crate) use text::sanitize;

/// A boxed, sendable future (the trait must be usable as `dyn Summarizer`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Longest provider error text carried in [`Error::Summarizer`], bytes.
pub const MAX_PROVIDER_ERROR_BYTES: usize = 512;

/// What a summarizer is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryTask {
    /// Summarize the whole span (with the previous summary) in one pass.
    Whole,
    /// Summarize chunk `index` (0-based) of `n_chunks` of a long span.
    Chunk {
        /// Which chunk.
        index: usize,
        /// How many chunks the span was cut into.
        n_chunks: usize,
    },
    /// Merge the chunk summaries in `partials` (and the previous summary) into one.
    Merge,
}

/// One summarization request.
#[derive(Clone, Debug)]
pub struct SummaryInput {
    /// Which task this is.
    pub task: SummaryTask,
    /// The summary being extended (from the previous splice), for `Whole` and `Merge`.
    pub previous_summary: Option<String>,
    /// The messages to summarize, oldest first, for `Whole` and `Chunk`.
    pub messages: Vec<StoredMessage>,
    /// Chunk summaries in order, for `Merge`.
    pub partials: Vec<String>,
    /// Free text steering what to keep (from the compaction request); in every prompt.
    pub focus: Option<String>,
    /// The reply must not exceed this many bytes.
    pub max_summary_bytes: usize,
}

/// Turns messages into a summary. Implementations must be cancel-safe: the driver drops the
/// future on timeout or cancellation, and nothing may be left half-done.
pub trait Summarizer: Send + Sync + 'static {
    /// A short name recorded in the splice event (for audit).
    fn name(&self) -> &str;

    /// Runs one task. Provider failures are [`Error::Summarizer`] with the HTTP status and the
    /// provider's message truncated to [`MAX_PROVIDER_ERROR_BYTES`].
    fn summarize(&self, input: SummaryInput) -> BoxFuture<'_, Result<String, Error>>;
}

/// Renders messages as a plain transcript, one line per message (`[seq] role: content`, tool
/// calls as `-> name(args) #id`, results as `<- #id: content`). Used for prompts and for sizing chunks.
/// Content and arguments are cleaned first (escape sequences removed, control characters
/// replaced), so a model reads what a person would see in the log, not its terminal codes.
pub fn render_transcript(messages: &[StoredMessage]) -> String {
    let mut out = String::new();
    for m in messages {
        render_message(m, &mut out);
    }
    out
}

/// Appends one message's transcript line(s) to `out`.
pub(crate) fn render_message(m: &StoredMessage, out: &mut String) {
    use std::fmt::Write as _;
    let msg = &m.message;
    let content = sanitize(&msg.content);
    match &msg.tool_call_id {
        Some(id) => {
            let _ = writeln!(out, "[{}] tool <- #{id}: {content}", m.seq);
        }
        None if !content.is_empty() || msg.tool_calls.is_empty() => {
            let _ = writeln!(out, "[{}] {}: {content}", m.seq, msg.role);
        }
        None => {}
    }
    // Names and ids are validated free of control characters on append; arguments are free text.
    for call in &msg.tool_calls {
        let _ = writeln!(out, "[{}] {} -> {}({}) #{}", m.seq, msg.role, call.name, sanitize(&call.arguments), call.id);
    }
}

/// Accepts a summarizer's reply only if it is usable text: not empty after trimming, within
/// `max_bytes`, and free of NUL and other control characters (except newline and tab).
/// Returns the trimmed text.
///
/// The compaction driver cleans every reply before this check (`accept_reply`), so for it this
/// is the final guard: a cleaned text never fails the control-character rule.
pub fn check_summary(reply: &str, max_bytes: usize) -> Result<String, Error> {
    let text = reply.trim();
    let reason = if text.is_empty() {
        "the summary is empty".to_string()
    } else if text.len() > max_bytes {
        format!("the summary is {} bytes, over compaction.max_summary_bytes ({max_bytes})", text.len())
    } else if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        "the summary contains control characters (not text)".to_string()
    } else {
        return Ok(text.to_string());
    };
    Err(Error::Summarizer { status: None, message: format!("rejected reply: {reason}") })
}

/// Cleans a summarizer's reply ([`sanitize`]) and checks it ([`check_summary`]): escape
/// sequences and control characters are removed or replaced, not refused, and a reply over
/// `max_bytes` (a model that ignored "stay under N characters") is cut to the bound on a char
/// boundary, marked with `...`, rather than failing the compaction. So only a reply that is empty
/// once cleaned fails. Content is never a reason to fail a compaction.
pub(crate) fn accept_reply(reply: &str, max_bytes: usize) -> Result<String, Error> {
    let clean = sanitize(reply);
    let text = clean.trim();
    if text.len() > max_bytes && max_bytes > 3 {
        tracing::warn!(bytes = text.len(), max_bytes, "summary over compaction.max_summary_bytes: cut to the bound");
        return check_summary(&truncate_bytes(text, max_bytes), max_bytes);
    }
    check_summary(text, max_bytes)
}

/// Cuts `text` to at most `max` bytes on a char boundary, marking the cut.
pub(crate) fn truncate_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    format!("{}...", &text[..text.floor_char_boundary(max.saturating_sub(3))])
}
