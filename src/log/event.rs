//! What a session's log holds: [`Event`]s numbered by [`Seq`], each of one [`EventKind`].
//! A [`Message`] is shaped like an OpenAI chat message. This is the stored form (see `codec` for
//! the bytes); in-memory state lives in `fold`.
//!
//! Static validation (sizes, role/field agreement) lives here, next to the type it checks;
//! checks that need the session's state (tool-call pairing) live in `fold`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::log::ids::{Seq, SummaryHash, truncate_for_error};

/// Longest tool-call id, tool name, and metadata key, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most tool calls on one assistant message.
pub const MAX_TOOL_CALLS_PER_MESSAGE: usize = 128;
/// Most metadata entries on one message.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Who wrote a message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The person (or program) the agent works for.
    User,
    /// The model; may carry tool calls.
    Assistant,
    /// A tool's result; carries the `tool_call_id` it answers.
    Tool,
}

impl Role {
    /// The lower-case name used in the OpenAI format.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "tool" => Ok(Role::Tool),
            other => Err(Error::InvalidMessage {
                index: 0,
                reason: format!(
                    "unknown role {:?} (expected system, user, assistant or tool)",
                    truncate_for_error(other)
                ),
            }),
        }
    }
}

/// One tool call made by an assistant message.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ToolCall {
    /// Unique among the session's open calls; the result names it in `tool_call_id`.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as the model wrote them (usually JSON text).
    pub arguments: String,
}

impl ToolCall {
    /// A tool call with the given id, tool name and argument text.
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self { id: id.into(), name: name.into(), arguments: arguments.into() }
    }
}

/// One chat message, as an agent runtime hands it over.
///
/// ```
/// use palimpsest::{Message, ToolCall};
/// let ask = Message::user("What is the weather in Oslo?");
/// let call = Message::assistant_tool_calls("", vec![ToolCall::new("c1", "weather", r#"{"city":"Oslo"}"#)]);
/// let result = Message::tool_result("c1", "4 degrees, rain").with_metadata("source", "met.no");
/// assert!(result.tool_call_id.is_some());
/// # let _ = (ask, call);
/// ```
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text. Empty only on an assistant message that carries tool calls.
    pub content: String,
    /// Calls the assistant asks for; only on assistant messages.
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers; required on tool messages and only there.
    pub tool_call_id: Option<String>,
    /// When the message was created, in ms since the Unix epoch; 0 means "stamp it at append".
    pub created_at_ms: u64,
    /// Free key/value metadata, stored and returned as given.
    pub metadata: BTreeMap<String, String>,
}

impl Message {
    /// A message of any role with text content and nothing else.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            created_at_ms: 0,
            metadata: BTreeMap::new(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message without tool calls.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// An assistant message that calls tools; `content` may be empty.
    pub fn assistant_tool_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self { tool_calls: calls, ..Self::new(Role::Assistant, content) }
    }

    /// A tool's result for the call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { tool_call_id: Some(call_id.into()), ..Self::new(Role::Tool, content) }
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the creation time (ms since the Unix epoch).
    pub fn with_created_at_ms(mut self, ms: u64) -> Self {
        self.created_at_ms = ms;
        self
    }

    /// Bytes this message counts against `limits.max_message_bytes`: content, tool-call names and
    /// arguments, and metadata.
    pub fn size_bytes(&self) -> usize {
        self.content.len()
            + self.tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len()).sum::<usize>()
            + self.tool_call_id.as_ref().map_or(0, String::len)
            + self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }

    /// Checks everything that does not depend on the session: sizes, emptiness, and that each field
    /// appears only on the role it belongs to. `index` is the message's position in the caller's batch.
    pub fn validate(&self, index: usize, max_message_bytes: usize) -> Result<(), Error> {
        let fail = |reason: String| Err(Error::InvalidMessage { index, reason });
        let size = self.size_bytes();
        if size > max_message_bytes {
            return fail(format!("is {size} bytes, the limit (limits.max_message_bytes) is {max_message_bytes}"));
        }
        let may_be_empty = self.role == Role::Assistant && !self.tool_calls.is_empty();
        if self.content.is_empty() && !may_be_empty {
            return fail(format!(
                "{} message has empty content (only an assistant message with tool calls may)",
                self.role
            ));
        }
        if !self.tool_calls.is_empty() && self.role != Role::Assistant {
            return fail(format!("{} message carries tool calls; only assistant messages may", self.role));
        }
        if self.tool_calls.len() > MAX_TOOL_CALLS_PER_MESSAGE {
            return fail(format!(
                "has {} tool calls, the limit is {MAX_TOOL_CALLS_PER_MESSAGE}",
                self.tool_calls.len()
            ));
        }
        for call in &self.tool_calls {
            check_name("tool call id", &call.id, index)?;
            check_name("tool name", &call.name, index)?;
        }
        match (&self.tool_call_id, self.role) {
            (Some(id), Role::Tool) => check_name("tool_call_id", id, index)?,
            (None, Role::Tool) => return fail("tool message has no tool_call_id".to_string()),
            (Some(_), role) => return fail(format!("{role} message has a tool_call_id; only tool messages may")),
            (None, _) => {}
        }
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return fail(format!("has {} metadata entries, the limit is {MAX_METADATA_ENTRIES}", self.metadata.len()));
        }
        for key in self.metadata.keys() {
            check_name("metadata key", key, index)?;
        }
        Ok(())
    }
}

fn check_name(what: &str, value: &str, index: usize) -> Result<(), Error> {
    let reason = if value.is_empty() {
        format!("{what} is empty")
    } else if value.len() > MAX_NAME_BYTES {
        format!("{what} is {} bytes, the limit is {MAX_NAME_BYTES}", value.len())
    } else if value.chars().any(char::is_control) {
        format!("{what} {:?} contains a control character", truncate_for_error(value))
    } else {
        return Ok(());
    };
    Err(Error::InvalidMessage { index, reason })
}

/// Why an episode ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundaryReason {
    /// The classifier said the new turn starts a new task.
    Classified,
    /// The episode reached `episodes.max_turns_per_episode`.
    TurnCap,
    /// The classifier timed out or failed, so the turn was taken as a new task.
    ClassifierFallback,
    /// The caller closed the episode explicitly.
    Explicit,
}

/// A splice as recorded in the log: messages with seq <= `upto` are replaced, for readers, by
/// the summary stored under `summary_hash`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Splice {
    /// The last seq the summary covers. Always greater than `previous_upto`.
    pub upto: Seq,
    /// Where the splice before this one ended (`Seq::ZERO` for the first).
    pub previous_upto: Seq,
    /// blake3 of the summary text, which is stored in the blobs keyspace.
    pub summary_hash: SummaryHash,
    /// Messages in (previous_upto, upto] that the summary replaced.
    pub n_messages: u64,
    /// Length of the summary text in bytes.
    pub summary_bytes: u64,
    /// Which summarizer wrote it (for audit; not interpreted).
    pub summarizer: String,
}

/// What happened.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EventKind {
    /// One chat message.
    MessageAppended(Message),
    /// A compaction landed.
    CompactionSpliced(Splice),
    /// The episode `episode` ended here; the next user turn opens `episode + 1`.
    EpisodeBoundary {
        /// The episode that ended.
        episode: u64,
        /// Why it ended.
        reason: BoundaryReason,
    },
    /// Long-term memories were extracted from messages in (from, upto] into `namespace`.
    MemoriesExtracted {
        /// The memory namespace written to.
        namespace: String,
        /// The span's lower end, exclusive.
        from: Seq,
        /// The span's upper end, inclusive.
        upto: Seq,
        /// Memories stored that were not already in the namespace.
        n_memories: u64,
    },
    /// The session was deleted: every earlier event is dead from here on (readers and audit start at
    /// this event) and a background purge removes them in bounded chunks. A later append starts the
    /// session afresh, continuing the numbering.
    SessionDeleted {
        /// Events the session still stored when deleted: those from the previous deletion (itself
        /// one), if any, to the last.
        n_events_removed: u64,
    },
    /// The session's metadata document is now `document` (replacing the previous one whole). The
    /// engine does not interpret it: a server keeps its session record here (palimpsest serve keeps
    /// JSON). The head remembers the seq of the latest one, so reading it costs the head plus this
    /// event. At most `limits.max_metadata_bytes` bytes when written.
    MetadataSet {
        /// The caller's document, stored as given.
        document: String,
    },
    /// The session's messages were replaced: every message before this event leaves the working
    /// memory (and compaction's reach), as after a deletion, but the events stay in the log for
    /// audit, export and time travel up to here; nothing is purged. Messages written after it (in
    /// the same batch, typically) are the session's new content.
    MessagesReset {
        /// Messages the session held (since its last deletion or reset, compacted ones included)
        /// that left the window.
        n_messages_dropped: u64,
    },
}

impl EventKind {
    /// A short stable name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::MessageAppended(_) => "message_appended",
            EventKind::CompactionSpliced(_) => "compaction_spliced",
            EventKind::EpisodeBoundary { .. } => "episode_boundary",
            EventKind::MemoriesExtracted { .. } => "memories_extracted",
            EventKind::SessionDeleted { .. } => "session_deleted",
            EventKind::MetadataSet { .. } => "metadata_set",
            EventKind::MessagesReset { .. } => "messages_reset",
        }
    }
}

/// One entry of a session's log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Its place in the session, 1-based and dense.
    pub seq: Seq,
    /// When the engine wrote it, ms since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The message, if this event carries one.
    pub fn message(&self) -> Option<&Message> {
        match &self.kind {
            EventKind::MessageAppended(m) => Some(m),
            _ => None,
        }
    }
}
