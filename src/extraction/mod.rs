//! Long-term memory extraction: after a splice lands, and when an episode closes, the messages of
//! the compacted span (or of the episode) are handed to a [`MemoryExtractor`] in the background,
//! and what it returns is stored as [`Memory`] records in the `memories` keyspace of the session's
//! namespace, next to a `MemoriesExtracted` event in the session's log.
//!
//! - A session's **namespace** is the part of its id before the first `:` (the whole id when there
//!   is no `:`, or nothing before it): sessions `alice:chat-1` and `alice:chat-2` share the
//!   namespace `alice`, so what one learns the other can read.
//! - A memory's id is blake3 of its namespace and text, so writing is idempotent: a retried or
//!   repeated extraction of the same span never duplicates a memory. Under the namespace's lock
//!   (bounded, see `guard::lock`) the extraction reads which of its memories exist and writes the
//!   new ones with the event in one atomic batch; concurrent extractions into one namespace
//!   therefore neither lose nor duplicate anything, and a crash leaves all or nothing.
//! - `queue` runs the extractions: one at a time per session in order, sessions in parallel, each
//!   under `background.extraction_timeout_ms` and one permit of the background budget, with
//!   [`crate::Engine::drain`] for shutdown.
//! - On JetStream the records are messages on the meta stream, each created once (SPEC.md 11a),
//!   published before the `MemoriesExtracted` event that counts those the job created.
//! - `pending` makes the engine's own extractions durable: a marker written with the splice or
//!   boundary that schedules one, removed with its result, read again by the next open; a span
//!   that keeps failing is given up after [`MAX_EXTRACTION_ATTEMPTS`] attempts and recorded.
//!
//! Extractors sit behind one trait: the embedded [`RuleExtractor`] (deterministic, offline: the
//! user's statements of preference, fact and decision) and [`OpenAiExtractor`] (a model).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Session};
use crate::error::Error;
use crate::log::ids::{Seq, SessionId};
use crate::log::view::StoredMessage;
use crate::storage::keys;
use crate::storage::{Ks, Read};
use crate::summarizer::{BoxFuture, OpenAiSummarizer, render_transcript, truncate_bytes};

pub(crate) mod pending;
pub(crate) mod queue;

/// What extraction keeps per engine (attached by `crate::open`, reached through [`state`]).
pub(crate) struct State {
    /// Extracts the memories.
    pub(crate) extractor: Arc<dyn MemoryExtractor>,
    /// The per-session queues and their workers.
    pub(crate) extractions: Arc<queue::Extractions>,
}

/// `engine`'s extraction state.
pub(crate) fn state(engine: &Engine) -> &State {
    engine.feature::<State>()
}

pub use pending::{GivenUpExtraction, MAX_EXTRACTION_ATTEMPTS, MAX_GIVEN_UP_READ, MAX_RESUMED_PER_OPEN};
pub use queue::{DrainReport, ExtractionError, MAX_EXTRACTION_ERROR_BYTES};

/// Longest memory text kept, bytes; longer ones are cut.
pub const MAX_MEMORY_BYTES: usize = 1_024;
/// Most memories kept from one extraction.
pub const MAX_MEMORIES_PER_EXTRACTION: usize = 64;
/// Longest transcript sent to a model-based extractor, bytes (the newest part is kept).
const MAX_EXTRACT_PROMPT_BYTES: usize = 64 << 10;

/// The namespace of a session: its id up to the first `:`, or the whole id when that is empty.
pub fn namespace_of(session: &SessionId) -> &str {
    match session.as_str().split_once(':') {
        Some((ns, _)) if !ns.is_empty() => ns,
        _ => session.as_str(),
    }
}

/// blake3 of `namespace`, a zero byte and `text`: a memory's id.
pub(crate) fn memory_id(namespace: &str, text: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(namespace.as_bytes());
    hasher.update(&[0]);
    hasher.update(text.as_bytes());
    *hasher.finalize().as_bytes()
}

/// One long-term memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// blake3 of (namespace, text), hex.
    pub id: String,
    /// The namespace it belongs to.
    pub namespace: String,
    /// The memory.
    pub text: String,
    /// The session it was first extracted from.
    pub session: String,
    /// The span it came from: messages in (`from`, `upto`] of `session`.
    pub from: Seq,
    /// See `from`.
    pub upto: Seq,
    /// When it was written, ms since the Unix epoch.
    pub at_ms: u64,
}

/// The stored form of a memory (value of the `memories` keyspace after the version byte).
#[derive(Serialize, Deserialize)]
struct StoredMemory {
    text: String,
    session: String,
    from: Seq,
    upto: Seq,
    at_ms: u64,
}

/// Format version byte of a stored memory.
const MEMORY_FORMAT: u8 = 1;

pub(crate) fn encode_memory(text: &str, session: &SessionId, from: Seq, upto: Seq, at_ms: u64) -> Vec<u8> {
    let stored = StoredMemory { text: text.to_string(), session: session.as_str().to_string(), from, upto, at_ms };
    let mut out = vec![MEMORY_FORMAT];
    // Encoding plain strings and integers into a Vec cannot fail.
    out.extend(rmp_serde::to_vec(&stored).expect("a memory record always encodes"));
    out
}

pub(crate) fn decode_memory(namespace: &str, id: &[u8], value: &[u8]) -> Result<Memory, Error> {
    let corrupt = |detail: String| Error::Corrupt { session: None, seq: None, detail };
    let (&version, body) = value.split_first().ok_or_else(|| corrupt("an empty memory record".to_string()))?;
    if version != MEMORY_FORMAT {
        return Err(corrupt(format!("memory record of unknown format {version}")));
    }
    let stored: StoredMemory =
        rmp_serde::from_slice(body).map_err(|e| corrupt(format!("a memory record does not decode: {e}")))?;
    Ok(Memory {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        namespace: namespace.to_string(),
        text: stored.text,
        session: stored.session,
        from: stored.from,
        upto: stored.upto,
        at_ms: stored.at_ms,
    })
}

/// The 32 bytes of a memory id written as 64 lowercase hex digits (a JetStream subject's key).
#[cfg(feature = "nats")]
pub(crate) fn memory_id_bytes(hex: &str) -> Result<[u8; 32], Error> {
    let corrupt = || Error::Corrupt { session: None, seq: None, detail: format!("memory key {hex:?} is not an id") };
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(corrupt());
    }
    let mut id = [0u8; 32];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| corrupt())?;
    }
    Ok(id)
}

/// What an extractor is given.
#[derive(Clone, Debug)]
pub struct ExtractInput {
    /// The session the span belongs to.
    pub session: SessionId,
    /// Its namespace.
    pub namespace: String,
    /// The span's messages, oldest first.
    pub messages: Vec<StoredMessage>,
}

/// Turns a span of messages into memory texts. Implementations must be cancel-safe: the queue
/// drops the future at `background.extraction_timeout_ms` or on a cancelling drain.
pub trait MemoryExtractor: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// The memories found, one text each. The engine trims them, drops empty ones, cuts each to
    /// [`MAX_MEMORY_BYTES`], removes duplicates and keeps at most [`MAX_MEMORIES_PER_EXTRACTION`].
    fn extract(&self, input: ExtractInput) -> BoxFuture<'_, Result<Vec<String>, Error>>;
}

/// Cleans an extractor's answer; see [`MemoryExtractor::extract`].
pub(crate) fn normalize(texts: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for text in texts {
        // Any extractor's text is cleaned the same way (escape sequences, control characters).
        let clean: String = crate::summarizer::sanitize(&text).split_whitespace().collect::<Vec<_>>().join(" ");
        if clean.is_empty() {
            continue;
        }
        let clean = truncate_bytes(&clean, MAX_MEMORY_BYTES);
        if !out.contains(&clean) {
            out.push(clean);
        }
        if out.len() == MAX_MEMORIES_PER_EXTRACTION {
            break;
        }
    }
    out
}

/// Phrases that mark a statement worth remembering, with the label the memory gets.
const RULES: &[(&str, &[&str])] = &[
    (
        "preference",
        &[
            "i prefer",
            "i'd rather",
            "i would rather",
            "i like",
            "i love",
            "i hate",
            "i dislike",
            "i don't like",
            "i do not like",
        ],
    ),
    (
        "fact",
        &[
            "my name is",
            "i live in",
            "i work at",
            "i work as",
            "i work for",
            "my email is",
            "my timezone is",
            "i am a ",
            "i'm a ",
        ],
    ),
    ("decision", &["we decided", "i decided", "let's go with", "we will use", "we'll use", "decision:"]),
    ("remember", &["remember that", "remember:", "always ", "never "]),
];

/// The embedded extractor: deterministic and offline. It keeps each sentence of a user message
/// that states a preference, a fact about the user, a decision, or something to remember
/// ("I prefer aisle seats", "my name is Ada", "we decided to use Postgres", "always answer in
/// French"), labelled, e.g. `preference: I prefer aisle seats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleExtractor;

impl RuleExtractor {
    /// The memories of `messages`, synchronously.
    pub fn memories(messages: &[StoredMessage]) -> Vec<String> {
        let mut out = Vec::new();
        for m in messages.iter().filter(|m| m.message.role == crate::log::event::Role::User) {
            for sentence in m.message.content.split(['.', '!', '?', '\n']) {
                let sentence = sentence.trim();
                let lower = sentence.to_lowercase();
                let padded = format!("{lower} ");
                if let Some((label, _)) = RULES.iter().find(|(_, phrases)| phrases.iter().any(|p| padded.contains(p))) {
                    out.push(format!("{label}: {sentence}"));
                }
            }
        }
        out
    }
}

impl MemoryExtractor for RuleExtractor {
    fn name(&self) -> &str {
        "rules"
    }

    fn extract(&self, input: ExtractInput) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async move { Ok(Self::memories(&input.messages)) })
    }
}

const EXTRACT_SYSTEM: &str = "You extract long-term memories about the user from an AI agent's conversation: \
stable preferences, facts about the user, decisions taken, and instructions to remember. One memory per line, \
each line starting with \"- \", each a short self-contained sentence. Answer NONE if there is nothing worth \
remembering.";

/// An extractor that asks an OpenAI-compatible model (the `summarizer.openai` endpoint).
pub struct OpenAiExtractor {
    client: Arc<OpenAiSummarizer>,
}

impl OpenAiExtractor {
    /// An extractor using `client`'s endpoint, model and bounds.
    pub fn new(client: Arc<OpenAiSummarizer>) -> Self {
        Self { client }
    }
}

impl MemoryExtractor for OpenAiExtractor {
    fn name(&self) -> &str {
        "openai"
    }

    fn extract(&self, input: ExtractInput) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async move {
            let transcript = render_transcript(&input.messages);
            // Keep the newest part: a long span's latest statements supersede its earliest.
            let start = transcript.ceil_char_boundary(transcript.len().saturating_sub(MAX_EXTRACT_PROMPT_BYTES));
            let user = format!("Conversation:\n{}\n\nList the memories.", &transcript[start..]);
            let reply = self.client.complete(EXTRACT_SYSTEM, &user, "extract").await?;
            // A reply is text like any other: terminal codes and control characters are cleaned
            // rather than costing the memories they decorate (SPEC "Content handling").
            let reply = crate::summarizer::sanitize(&reply);
            if reply.trim().eq_ignore_ascii_case("none") {
                return Ok(Vec::new());
            }
            Ok(reply
                .lines()
                .filter_map(|l| l.trim().strip_prefix("- ").or_else(|| l.trim().strip_prefix("* ")))
                .map(str::to_string)
                .collect())
        })
    }
}

impl Engine {
    /// Memories of `namespace` in id order, at most `limit` (within `limits.max_read_messages`).
    /// A read of the local database (fjall; on JetStream [`Error::Unsupported`]):
    /// [`Engine::memories_async`] serves both backends.
    pub fn memories(&self, namespace: &str, limit: usize) -> Result<Vec<Memory>, Error> {
        self.check_memories_read(namespace, limit)?;
        let prefix = keys::memory_prefix(namespace);
        let mut out = Vec::new();
        for row in
            self.store("the blocking `memories` (use `memories_async`)")?.iter_prefix(Ks::Memories, &prefix).take(limit)
        {
            let (key, value) = row?;
            out.push(decode_memory(namespace, &key[prefix.len()..], &value)?);
        }
        Ok(out)
    }

    /// [`Engine::memories`] from async code, on either backend: on JetStream the namespace's
    /// memory subjects are listed from the meta stream, sorted by id, and the first `limit` read
    /// (O(the namespace's memories) to list, one read per memory returned).
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn memories_async(&self, namespace: &str, limit: usize) -> Result<Vec<Memory>, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.inner().backend.nats() {
            self.check_memories_read(namespace, limit)?;
            let mut out = Vec::new();
            for (key, value) in log.memory_records(namespace, limit).await? {
                out.push(decode_memory(namespace, &memory_id_bytes(&key)?, &value)?);
            }
            return Ok(out);
        }
        self.memories(namespace, limit)
    }

    fn check_memories_read(&self, namespace: &str, limit: usize) -> Result<(), Error> {
        crate::guard::check_namespace(namespace)?;
        let max = self.config().limits.max_read_messages;
        if !u64::try_from(limit).is_ok_and(|l| l <= max) {
            return Err(Error::InvalidArgument {
                what: "read limit",
                reason: format!("{limit} is over limits.max_read_messages ({max})"),
            });
        }
        Ok(())
    }

    /// Waits at most `timeout` for every queued and running memory extraction to finish. When
    /// the time runs out with work left and `cancel_on_timeout` is true, cancels it (queued jobs
    /// are dropped, running ones stopped at their next await, releasing their locks and permits)
    /// and waits until the workers are gone, at most 5 s for all of them together, so a drain
    /// returns within `timeout` + 5 s whatever the number of workers. Call it before dropping the
    /// engine at shutdown. A cancelled extraction keeps its pending marker: the next open queues
    /// it again (SPEC.md 6b).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future while it waits changes nothing: the extractions go on.
    /// Once the time has run out with `cancel_on_timeout`, the queued jobs are dropped and the
    /// workers aborted in one step before the future next waits, so dropping it afterwards only
    /// skips waiting for the aborted workers to be gone.
    pub async fn drain(&self, timeout: Duration, cancel_on_timeout: bool) -> DrainReport {
        state(self).extractions.drain(timeout, cancel_on_timeout).await
    }

    /// The last failed, timed-out or skipped extraction of `session`, if one is remembered
    /// (the last 1,024 sessions with one are: `MAX_ERRORS_KEPT`).
    pub fn last_extraction_error(&self, session: &SessionId) -> Option<ExtractionError> {
        state(self).extractions.last_error(session)
    }

    /// Queues extraction of the messages in (`from`, `upto`] of `session` unless extraction is
    /// disabled; `marker` is the seq of the event whose batch wrote the job's pending marker, if
    /// it has one (see `pending`). Returns whether it was queued.
    pub(crate) fn schedule_job(&self, session: &SessionId, from: Option<Seq>, upto: Seq, marker: Option<Seq>) -> bool {
        if !self.config().extraction.enabled {
            return false;
        }
        let job = queue::Job { session: session.clone(), from, upto, marker, enqueued_at: tokio::time::Instant::now() };
        state(self).extractions.schedule(self.downgrade(), job)
    }

    /// Queues extraction of the episode closed by the boundary at `boundary` (whose batch wrote
    /// the pending marker, see [`Engine::mark_extraction_pending`]).
    pub(crate) fn schedule_episode_extraction(&self, session: &SessionId, boundary: Seq) {
        self.schedule_job(session, None, boundary, Some(boundary));
    }

    /// Adds to `batch` the pending marker of the extraction that event `at` (a splice or an
    /// episode boundary, pushed into this same batch) schedules: if the process stops before the
    /// extraction records its memories, the next open queues it again.
    pub(crate) fn mark_extraction_pending(
        &self,
        batch: &mut crate::engine::Batch,
        session: &SessionId,
        at: Seq,
        from: Option<Seq>,
        upto: Seq,
    ) {
        pending::mark(self, batch, session, at, from, upto);
    }
}

impl Session {
    /// Queues background extraction of long-term memories from the messages in (`from`, `upto`]
    /// (the engine does this by itself after each splice and each closed episode, durably). A job
    /// queued here is not durable: it has no pending marker, so a process that stops before it
    /// runs forgets it. Returns false when it was not queued: extraction is disabled
    /// (`extraction.enabled`), the session's queue is full, or there is no tokio runtime. `from`
    /// must be below `upto`.
    pub fn schedule_extraction(&self, from: Seq, upto: Seq) -> Result<bool, Error> {
        if upto <= from {
            return Err(Error::InvalidArgument { what: "span", reason: format!("({from}, {upto}] is empty") });
        }
        Ok(self.engine().schedule_job(self.id(), Some(from), upto, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::Message;

    #[test]
    fn rules_keep_statements_and_namespaces_split_at_the_colon() {
        let messages: Vec<StoredMessage> = [
            Message::user("Book a table. I prefer window seats! My name is Ada."),
            Message::assistant("I like that too."),
            Message::user("check the build"),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, message)| StoredMessage { seq: Seq::new(i as u64 + 1), at_ms: 0, message })
        .collect();
        assert_eq!(RuleExtractor::memories(&messages), ["preference: I prefer window seats", "fact: My name is Ada"]);
        let id = |s: &str| SessionId::new(s).expect("valid");
        assert_eq!(namespace_of(&id("alice:chat-1")), "alice");
        assert_eq!(namespace_of(&id("bob")), "bob");
        assert_eq!(namespace_of(&id(":x")), ":x");
        let bytes = encode_memory("m", &id("a:b"), Seq::new(1), Seq::new(2), 3);
        let memory = decode_memory("a", &memory_id("a", "m"), &bytes).expect("decodes");
        assert_eq!((memory.text.as_str(), memory.upto, memory.at_ms), ("m", Seq::new(2), 3));
        assert!(decode_memory("a", &[0], &[9, 1]).is_err());
        assert_eq!(normalize(vec![" a  b ".into(), "".into(), "a b".into()]), ["a b"]);
    }
}
