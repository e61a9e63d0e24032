//! The wire shapes of the agent-memory-server API (requests and responses), the session document
//! kept as the library session's metadata, how an AMS message maps onto a library [`Message`],
//! timestamps and token counts. Pure: no I/O.
//!
//! Message mapping: `role` `user`, `assistant`, `system` are the library roles; any other role
//! (AMS accepts any string, `tool` included, with no tool call id) is stored as an assistant
//! message with metadata `ams.role` = the role. `id` is kept in metadata `ams.id` (a ULID is made
//! when the request has none), `persisted_at` in `ams.persisted_at` (as given) and a
//! `discrete_memory_extracted` of `t` in `ams.discrete_memory_extracted`. `created_at` is the
//! library's `created_at_ms` (millisecond precision: the microseconds of a given time are cut).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use palimpsest::{Message, Role, StoredMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Metadata key of the AMS message id.
pub const META_ID: &str = "ams.id";
/// Metadata key of an AMS role that is not a library role.
pub const META_ROLE: &str = "ams.role";
/// Metadata key of `persisted_at`.
pub const META_PERSISTED_AT: &str = "ams.persisted_at";
/// Metadata key of `discrete_memory_extracted` when it is `t`.
pub const META_EXTRACTED: &str = "ams.discrete_memory_extracted";
/// How far in the future a message's `created_at` may be, as upstream (seconds).
pub const MAX_FUTURE_SECONDS: i64 = 300;
/// The window upstream assumes when neither `model_name` nor `context_window_max` is given.
pub const DEFAULT_CONTEXT_WINDOW: u64 = 16_000;
/// Summarization starts when messages pass this share of the window (upstream's threshold).
pub const SUMMARIZATION_THRESHOLD: f64 = 0.7;
/// After summarization, the newest messages fitting this share of the window stay verbatim.
pub const KEEP_SHARE: f64 = 0.4;

/// A message as a request carries it. Unknown fields are ignored.
#[derive(Deserialize, Debug, Clone)]
pub struct MessageIn {
    /// Any string.
    pub role: String,
    /// The text (blank is refused with 400, as upstream).
    pub content: String,
    /// The AMS id; a ULID is made when absent.
    pub id: Option<String>,
    /// ISO-8601; now when absent (with the deprecation header).
    pub created_at: Option<String>,
    /// Kept as given.
    pub persisted_at: Option<String>,
    /// `t` or `f`.
    pub discrete_memory_extracted: Option<String>,
}

/// `long_term_memory_strategy`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct Strategy {
    /// `discrete`, `summary`, `preferences` or `custom`.
    pub strategy: StrategyKind,
    /// Free configuration.
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// The strategies upstream knows.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    /// The default.
    Discrete,
    /// Summaries.
    Summary,
    /// Preferences.
    Preferences,
    /// The caller's prompt.
    Custom,
}

impl Default for Strategy {
    fn default() -> Self {
        Self { strategy: StrategyKind::Discrete, config: Map::new() }
    }
}

/// A long-term memory record inside working memory: `id` and `text` are required; every other
/// field is kept as given.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct MemoryIn {
    /// Required.
    pub id: String,
    /// Required.
    pub text: String,
    /// Everything else, round-tripped.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The body of `PUT /v1/working-memory/{id}` (`UpdateWorkingMemory`). Unknown fields are ignored.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct UpdateBody {
    /// The session's messages.
    #[serde(default)]
    pub messages: Vec<MessageIn>,
    /// Structured memories.
    #[serde(default)]
    pub memories: Vec<MemoryIn>,
    /// Free data (object or null).
    pub data: Option<Map<String, Value>>,
    /// The running summary.
    pub context: Option<String>,
    /// The user.
    pub user_id: Option<String>,
    /// Tokens used so far.
    #[serde(default)]
    pub tokens: u64,
    /// The namespace.
    pub namespace: Option<String>,
    /// The long-term strategy.
    pub long_term_memory_strategy: Option<Strategy>,
    /// Expiry after the last write, seconds.
    pub ttl_seconds: Option<u64>,
}

/// The body of the append extension: `{"messages": [...]}`.
#[derive(Deserialize, Debug, Clone)]
pub struct AppendBody {
    /// Messages to append, in order.
    pub messages: Vec<MessageIn>,
}

/// The session record kept as the library session's metadata document (JSON).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct SessionDoc {
    /// Version of this document's shape.
    pub v: u32,
    /// Structured memories.
    #[serde(default)]
    pub memories: Vec<MemoryIn>,
    /// Free data.
    pub data: Option<Map<String, Value>>,
    /// The context given by the last write (used while palimpsest has no summary of its own).
    pub context: Option<String>,
    /// Tokens as the client reports them.
    #[serde(default)]
    pub tokens: u64,
    /// The long-term strategy.
    #[serde(default)]
    pub long_term_memory_strategy: Strategy,
    /// Expiry after the last write, seconds.
    pub ttl_seconds: Option<u64>,
    /// When the session was created (first PUT), ms.
    pub created_at_ms: u64,
    /// The last PUT, ms.
    pub updated_at_ms: u64,
}

/// A message as responses carry it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MessageOut {
    /// As stored.
    pub role: String,
    /// As stored.
    pub content: String,
    /// The AMS id (`seq-N` for a message written without one, through the library).
    pub id: String,
    /// ISO-8601.
    pub created_at: String,
    /// As given, or null.
    pub persisted_at: Option<String>,
    /// `t` or `f`.
    pub discrete_memory_extracted: String,
}

/// `WorkingMemoryResponse`.
#[derive(Serialize, Debug, Clone)]
pub struct WorkingMemoryOut {
    /// Messages, oldest first.
    pub messages: Vec<MessageOut>,
    /// Structured memories.
    pub memories: Vec<MemoryIn>,
    /// `{}` when none.
    pub data: Map<String, Value>,
    /// The latest summary.
    pub context: Option<String>,
    /// The user.
    pub user_id: Option<String>,
    /// Tokens as reported.
    pub tokens: u64,
    /// The AMS session id.
    pub session_id: String,
    /// The namespace.
    pub namespace: Option<String>,
    /// The long-term strategy.
    pub long_term_memory_strategy: Strategy,
    /// Expiry after the last write, seconds.
    pub ttl_seconds: Option<u64>,
    /// The last write.
    pub last_accessed: String,
    /// The first PUT.
    pub created_at: String,
    /// The last PUT.
    pub updated_at: String,
    /// Null unless a model or window was given.
    pub context_percentage_total_used: Option<f64>,
    /// Null unless a model or window was given.
    pub context_percentage_until_summarization: Option<f64>,
    /// Present for upstream's shape; palimpsest never answers a GET with an unsaved session.
    pub new_session: Option<bool>,
    /// As above.
    pub unsaved: Option<bool>,
}

/// ISO-8601 UTC with `Z`, microseconds when non-zero (upstream's format).
pub fn format_time(ms: u64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default();
    if ms.is_multiple_of(1000) {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

/// Parses an ISO-8601 time; one without an offset is UTC (as pydantic reads it).
pub fn parse_time_ms(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
}

/// Tokens of one message as upstream counts them without tiktoken: `"{role}: {content}"`, then
/// `(bytes + 3) / 4`.
pub fn message_tokens(role: &str, content: &str) -> u64 {
    (role.len() as u64 + 2 + content.len() as u64).div_ceil(4)
}

/// The window upstream's `_get_effective_token_limit` gives: `context_window_max`, else the
/// model's, else 16,000. Unknown model names get the default (upstream refuses them with 422).
pub fn effective_window(model_name: Option<&str>, context_window_max: Option<u64>) -> u64 {
    if let Some(max) = context_window_max {
        return max;
    }
    match model_name {
        Some(name) => model_window(name).unwrap_or(DEFAULT_CONTEXT_WINDOW),
        None => DEFAULT_CONTEXT_WINDOW,
    }
}

fn model_window(name: &str) -> Option<u64> {
    Some(match name {
        "gpt-3.5-turbo" => 4_096,
        "gpt-3.5-turbo-16k" => 16_384,
        "gpt-4" => 8_192,
        "gpt-4-32k" => 32_768,
        "gpt-4o" | "gpt-4o-mini" | "gpt-4.1" | "gpt-4.1-mini" | "gpt-5" | "o1-mini" => 128_000,
        "gpt-5-mini" | "gpt-5-nano" => 400_000,
        "o1" | "o3-mini" => 200_000,
        n if n.starts_with("claude-") => 200_000,
        n if n.starts_with("text-embedding-") => 8_191,
        _ => return None,
    })
}

/// Upstream's context percentages: null without model information, 0 without messages, else
/// `tokens / window * 100` and `tokens / int(0.7 * window) * 100`, each capped at 100.
pub fn percentages(tokens: u64, n_messages: usize, window: Option<u64>) -> (Option<f64>, Option<f64>) {
    let Some(window) = window else { return (None, None) };
    if n_messages == 0 {
        return (Some(0.0), Some(0.0));
    }
    if window == 0 {
        return (None, None);
    }
    let total = (tokens as f64 / window as f64 * 100.0).min(100.0);
    let threshold = (window as f64 * SUMMARIZATION_THRESHOLD) as u64;
    let until = if threshold == 0 { 100.0 } else { (tokens as f64 / threshold as f64 * 100.0).min(100.0) };
    (Some(total), Some(until))
}

/// Why a message is refused before anything is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageError {
    /// Blank content: 400 `Message content cannot be empty (message ID: X)`.
    Blank(String),
    /// A bad field: 422, with the field's name and the reason.
    Invalid {
        /// The field under the message (`created_at`, ...).
        field: &'static str,
        /// Why.
        reason: String,
        /// The value as given.
        input: Value,
    },
}

/// Turns a request's message into a library message (see the module docs), with its AMS id.
/// `now_ms` stamps a message without `created_at`.
pub fn to_library(m: &MessageIn, now_ms: u64) -> Result<(String, Message), MessageError> {
    let id = m.id.clone().unwrap_or_else(|| ulid::Ulid::new().to_string());
    if m.content.trim().is_empty() {
        return Err(MessageError::Blank(id));
    }
    let created_at_ms = match &m.created_at {
        None => now_ms,
        Some(text) => {
            let bad = |reason: &str| MessageError::Invalid {
                field: "created_at",
                reason: reason.to_string(),
                input: Value::String(text.clone()),
            };
            let ms = parse_time_ms(text).ok_or_else(|| bad("Input should be a valid datetime"))?;
            if ms > now_ms as i64 + MAX_FUTURE_SECONDS * 1000 {
                return Err(bad("created_at cannot be more than 300 seconds in the future"));
            }
            // The library stamps 0 with the append time; the epoch itself becomes 1 ms.
            u64::try_from(ms).unwrap_or(0).max(1)
        }
    };
    let extracted = match m.discrete_memory_extracted.as_deref() {
        None | Some("f") => false,
        Some("t") => true,
        Some(other) => {
            return Err(MessageError::Invalid {
                field: "discrete_memory_extracted",
                reason: "Input should be 't' or 'f'".to_string(),
                input: Value::String(other.to_string()),
            });
        }
    };
    let (role, foreign) = match m.role.as_str() {
        "user" => (Role::User, false),
        "assistant" => (Role::Assistant, false),
        "system" => (Role::System, false),
        _ => (Role::Assistant, true),
    };
    let mut message =
        Message::new(role, m.content.clone()).with_created_at_ms(created_at_ms).with_metadata(META_ID, &id);
    if foreign {
        message.metadata.insert(META_ROLE.to_string(), m.role.clone());
    }
    if let Some(p) = &m.persisted_at {
        message.metadata.insert(META_PERSISTED_AT.to_string(), p.clone());
    }
    if extracted {
        message.metadata.insert(META_EXTRACTED.to_string(), "t".to_string());
    }
    Ok((id, message))
}

/// The AMS id of a stored message (`seq-N` when it has none: written through the library).
pub fn id_of(m: &StoredMessage) -> String {
    m.message.metadata.get(META_ID).cloned().unwrap_or_else(|| format!("seq-{}", m.seq))
}

/// The AMS role of a stored message.
pub fn role_of(m: &Message) -> &str {
    m.metadata.get(META_ROLE).map_or(m.role.as_str(), String::as_str)
}

/// A stored message in the response shape.
pub fn to_wire(m: &StoredMessage) -> MessageOut {
    let meta: &BTreeMap<String, String> = &m.message.metadata;
    MessageOut {
        role: role_of(&m.message).to_string(),
        content: m.message.content.clone(),
        id: id_of(m),
        created_at: format_time(m.message.created_at_ms),
        persisted_at: meta.get(META_PERSISTED_AT).cloned(),
        discrete_memory_extracted: if meta.contains_key(META_EXTRACTED) { "t" } else { "f" }.to_string(),
    }
}

/// Whether a request's message says the same as a stored one (role, content, and `created_at`
/// when the request gives one: `created_at_ms` 0 stands for "not given"), so a PUT that resends it
/// appends nothing.
pub fn same_message(given: &Message, stored: &Message) -> bool {
    given.role == stored.role
        && given.content == stored.content
        && given.metadata.get(META_ROLE) == stored.metadata.get(META_ROLE)
        && (given.created_at_ms == 0 || given.created_at_ms == stored.created_at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_upstream_format() {
        assert_eq!(format_time(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123000Z");
        assert_eq!(parse_time_ms("2023-11-14T22:13:20.123000Z"), Some(1_700_000_000_123));
        assert_eq!(parse_time_ms("2023-11-14T22:13:20.123456+00:00"), Some(1_700_000_000_123));
        assert_eq!(parse_time_ms("2023-11-14T22:13:20"), Some(1_700_000_000_000));
        assert_eq!(parse_time_ms("yesterday"), None);
    }

    #[test]
    fn percentages_follow_upstream() {
        assert_eq!(percentages(10, 1, None), (None, None));
        assert_eq!(percentages(0, 0, Some(100)), (Some(0.0), Some(0.0)));
        assert_eq!(percentages(35, 2, Some(100)), (Some(35.0), Some(50.0)));
        assert_eq!(percentages(1000, 2, Some(100)), (Some(100.0), Some(100.0)));
        assert_eq!(message_tokens("user", "hello"), 3);
    }

    #[test]
    fn foreign_roles_and_ids_survive_the_mapping() {
        let m = MessageIn {
            role: "tool".into(),
            content: "42".into(),
            id: Some("m1".into()),
            created_at: Some("2023-11-14T22:13:20Z".into()),
            persisted_at: None,
            discrete_memory_extracted: Some("t".into()),
        };
        let (id, lib) = to_library(&m, 1_700_000_000_000).expect("valid");
        assert_eq!((id.as_str(), lib.role), ("m1", Role::Assistant));
        let stored = StoredMessage { seq: palimpsest::Seq::new(3), at_ms: 0, message: lib };
        let out = to_wire(&stored);
        assert_eq!((out.role.as_str(), out.id.as_str(), out.discrete_memory_extracted.as_str()), ("tool", "m1", "t"));
        assert_eq!(out.created_at, "2023-11-14T22:13:20Z");
        let blank = MessageIn { content: "  ".into(), ..m.clone() };
        assert_eq!(to_library(&blank, 0), Err(MessageError::Blank("m1".into())));
        let future = MessageIn { created_at: Some("2099-01-01T00:00:00Z".into()), ..m };
        assert!(matches!(
            to_library(&future, 1_700_000_000_000),
            Err(MessageError::Invalid { field: "created_at", .. })
        ));
    }
}
