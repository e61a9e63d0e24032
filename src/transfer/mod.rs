//! Sessions as JSON lines: export every event of a session, import OpenAI chat messages or
//! exported events.
//!
//! One JSON object per line. A message line is an OpenAI chat message (`role`, `content` as a
//! string or null, `tool_calls` with `id` and `function.{name,arguments}`, `tool_call_id`), with
//! optional `created_at_ms`, `metadata` (string to string) and `seq`; unknown fields (such as
//! `name` or `refusal`) are ignored. Other events carry a `type`: `compaction_spliced` (with the
//! summary's full text, so the blob travels with it), `episode_boundary`, `memories_extracted`,
//! `session_deleted`. Export writes `seq` and `at_ms` on every line.
//!
//! Import validates every line the way the library validates appends, replays it with audit's
//! checks, and pushes it through the write path's checks (one rule set: a file that imports is one
//! that readers read and audit passes), then applies the whole file in one atomic batch or not at
//! all; a bad line is [`Error::InvalidImport`] with its line number. Splice and deletion lines are
//! accepted only into an empty session (where the whole log is in the file, so they can be
//! checked), which is what a round trip needs; seqs must leave [`IMPORT_HEADROOM_EVENTS`] of room.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::audit::Replayer;
use crate::engine::{Consumed, Session};
use crate::error::Error;
use crate::log::event::{BoundaryReason, Event, EventKind, Message, Role, Splice, ToolCall};
use crate::log::fold::{self, Head};
use crate::log::ids::{Seq, SummaryHash};
use crate::storage::keys;
use crate::storage::{Ks, Kv, Op, Read};

/// Most lines one import may hold.
pub const MAX_IMPORT_LINES: usize = 100_000;
/// Room an imported log must leave for the session to grow: its seqs stay at or below
/// `Seq::MAX` minus this many.
pub const IMPORT_HEADROOM_EVENTS: u64 = 1 << 32;
/// Events read per page while exporting.
const EXPORT_PAGE: usize = 1_000;

/// What an import appended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    /// Events appended.
    pub n_events: u64,
    /// Seq of the first one.
    pub first_seq: Seq,
    /// Seq of the last one.
    pub last_seq: Seq,
}

/// One parsed line.
#[derive(Clone)]
struct Line {
    number: usize,
    seq: Option<Seq>,
    at_ms: Option<u64>,
    kind: EventKind,
    /// The summary text of a splice line.
    summary: Option<String>,
}

impl Session {
    /// Writes every event of the session, one JSON object per line, in seq order. Returns the
    /// number of events written. Reads in pages, so memory stays bounded, all from one snapshot,
    /// so the file is the session as of one instant even while it is written to.
    ///
    /// # Cancel safety
    ///
    /// Only reads: dropping the future changes nothing stored, and leaves `out` holding the
    /// lines written so far (whole lines up to the last completed page).
    pub async fn export_jsonl(&self, out: &mut dyn Write) -> Result<u64, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine().inner().backend.nats() {
            return self.export_nats(log, out).await;
        }
        let view = self.engine().store("export")?.view();
        let head = view.head(self.id())?.ok_or_else(|| Error::NotFound { session: self.id().to_string() })?;
        let mut pages = ExportPages::new(self, &head);
        while let Some((from, to)) = pages.next_range() {
            let page = view.events(self.id(), from, to, EXPORT_PAGE)?;
            for event in pages.take(page)? {
                let summary = match &event.kind {
                    EventKind::CompactionSpliced(s) => Some(self.summary(&view, s.upto, &s.summary_hash)?.text),
                    _ => None,
                };
                write_line(out, &event_to_json(event, summary))?;
            }
        }
        pages.finish(out)
    }

    /// [`Session::export_jsonl`] on JetStream: the head from the stream leader, then pages of
    /// events up to it (the log below it never changes, so the file is the session as of that head).
    #[cfg(feature = "nats")]
    async fn export_nats(&self, log: &crate::storage::nats::NatsLog, out: &mut dyn Write) -> Result<u64, Error> {
        let view = self.nats_view(log, false).await?;
        let mut pages = ExportPages::new(self, &view.head);
        while let Some((from, to)) = pages.next_range() {
            // Lines are already out: a deletion purging the rest is a conflict, not a retry.
            let page = match view.events(self.id(), from, to, EXPORT_PAGE).await {
                Ok(page) => page,
                Err(e) => return Err(self.deleted_since(log, view.head.log_start(), view.version, e).await),
            };
            for event in pages.take(page)? {
                let summary = match &event.kind {
                    EventKind::CompactionSpliced(s) => {
                        Some(self.summary_nats(&view, s.upto, &s.summary_hash).await?.text)
                    }
                    _ => None,
                };
                write_line(out, &event_to_json(event, summary))?;
            }
        }
        pages.finish(out)
    }
}

/// The pages of an export: from the log's start (the last deletion; a messages reset keeps the
/// events before it, so they are exported too) to the head's last seq, each checked to go on
/// where the previous one ended.
struct ExportPages<'a> {
    session: &'a Session,
    from: Seq,
    last: Seq,
    written: u64,
}

impl<'a> ExportPages<'a> {
    fn new(session: &'a Session, head: &Head) -> Self {
        Self { session, from: head.log_start().max(Seq::new(1)), last: head.last_seq(), written: 0 }
    }

    /// The next range to read, or `None` when the log is exported.
    fn next_range(&self) -> Option<(Seq, Seq)> {
        (self.from <= self.last)
            .then(|| (self.from, Seq::new(self.from.get().saturating_add(EXPORT_PAGE as u64 - 1).min(self.last.get()))))
    }

    /// The events a range read; an empty page before the head's last seq is corrupt.
    fn take(&mut self, page: Vec<Event>) -> Result<Vec<Event>, Error> {
        let Some(last) = page.last() else {
            return Err(Error::Corrupt {
                session: Some(self.session.id().to_string()),
                seq: Some(self.from.get()),
                detail: format!("no event at seq {}, before the head's last seq {}", self.from, self.last),
            });
        };
        self.from = last.seq.next();
        self.written += page.len() as u64;
        Ok(page)
    }

    fn finish(self, out: &mut dyn Write) -> Result<u64, Error> {
        out.flush().map_err(|e| Error::storage("export write", e))?;
        Ok(self.written)
    }
}

/// One line of an export.
fn write_line(out: &mut dyn Write, line: &Value) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::storage("export write", e);
    serde_json::to_writer(&mut *out, line).map_err(|e| io(e.into()))?;
    out.write_all(b"\n").map_err(io)
}

/// The export line of `event`; `summary` is the text of a splice's blob.
fn event_to_json(event: Event, summary: Option<String>) -> Value {
    let mut line = match &event.kind {
        EventKind::MessageAppended(m) => message_to_json(m),
        EventKind::CompactionSpliced(s) => {
            let text = summary.unwrap_or_default();
            json!({
                "type": "compaction_spliced", "upto": s.upto.get(), "previous_upto": s.previous_upto.get(),
                "summary_hash": s.summary_hash.to_hex(), "summary": text, "n_messages": s.n_messages,
                "summarizer": s.summarizer,
            })
        }
        EventKind::EpisodeBoundary { episode, reason } => {
            json!({ "type": "episode_boundary", "episode": episode, "reason": reason })
        }
        EventKind::MemoriesExtracted { namespace, from, upto, n_memories } => json!({
            "type": "memories_extracted", "namespace": namespace, "from": from.get(), "upto": upto.get(),
            "n_memories": n_memories,
        }),
        EventKind::SessionDeleted { n_events_removed } => {
            json!({ "type": "session_deleted", "n_events_removed": n_events_removed })
        }
        EventKind::MetadataSet { document } => json!({ "type": "metadata_set", "document": document }),
        EventKind::MessagesReset { n_messages_dropped } => {
            json!({ "type": "messages_reset", "n_messages_dropped": n_messages_dropped })
        }
    };
    if let Value::Object(map) = &mut line {
        map.insert("seq".to_string(), json!(event.seq.get()));
        map.insert("at_ms".to_string(), json!(event.at_ms));
    }
    line
}

impl Session {
    /// Parses JSON lines (see the module docs), validates them all against the session, and appends
    /// them in one atomic batch. Any bad line refuses the whole import with
    /// [`Error::InvalidImport`] naming the line; nothing is applied.
    ///
    /// # Cancel safety
    ///
    /// The import is one write of the write path (SPEC section 5): dropping the future before its
    /// batch is handed to the writer leaves nothing written; after that the batch, blobs
    /// included, commits whole or not at all, and `head` or `history` tells which.
    pub async fn import_jsonl(&self, text: &str) -> Result<ImportReport, Error> {
        let limits = &self.engine().config().limits;
        let max_bytes = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
        let max_open = usize::try_from(limits.max_open_tool_calls).unwrap_or(usize::MAX);
        let mut lines = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let number = idx + 1;
            if raw.trim().is_empty() {
                continue;
            }
            if lines.len() == MAX_IMPORT_LINES {
                return Err(invalid(number, format!("more than {MAX_IMPORT_LINES} lines; split the file")));
            }
            let line = parse_line(number, raw)?;
            if let EventKind::MessageAppended(m) = &line.kind {
                m.validate(0, max_bytes).map_err(|e| invalid(number, strip_index(&e)))?;
            }
            if let EventKind::MetadataSet { document } = &line.kind {
                crate::engine::metadata::check_metadata(document, limits)
                    .map_err(|e| invalid(number, e.to_string()))?;
            }
            lines.push(line);
        }
        if lines.is_empty() {
            return Err(invalid(1, "no lines to import".to_string()));
        }
        let n = lines.len() as u64;
        let stamp = crate::engine::now_ms();
        // A splice line stores its summary blob: like a compaction, hold the blob gate shared from
        // storing it to committing the splice (both in the one batch), so `gc` cannot judge the
        // blob unreferenced in between (SPEC 6a).
        let inner = self.engine().inner();
        let _blob_gate = if lines.iter().any(|l| matches!(l.kind, EventKind::CompactionSpliced(_))) {
            let timeout_ms = inner.config.writes.timeout_ms;
            let gate = tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), inner.blob_gate.read())
                .await
                .map_err(|_| Error::Timeout { what: "orphan-blob collection to finish", after_ms: timeout_ms })?;
            Some(gate)
        } else {
            None
        };
        let mut lines = Consumed::new(self.engine(), lines);
        let head = self
            .engine()
            .write_events(self.id(), |batch| {
                let lines = lines.take()?;
                let empty = batch.head().last_seq() == Seq::ZERO;
                let mut replayer = if empty {
                    Replayer::new(self.id().as_str())
                } else {
                    Replayer::resume(self.id().as_str(), batch.head().clone())
                };
                for (idx, line) in lines.into_iter().enumerate() {
                    let number = line.number;
                    let is_deletion = matches!(line.kind, EventKind::SessionDeleted { .. });
                    if !empty && (is_deletion || matches!(line.kind, EventKind::CompactionSpliced(_))) {
                        // Only there is the whole log in the file, so that they can be checked.
                        return Err(invalid(
                            number,
                            "splice and deletion lines can only be imported into an empty session".to_string(),
                        ));
                    }
                    if is_deletion && idx > 0 {
                        return Err(invalid(number, "a deletion can only be the first line".to_string()));
                    }
                    // A log that begins with a deletion starts at the deletion's seq.
                    if let (true, Some(first)) = (is_deletion, line.seq) {
                        check_headroom(number, first)?;
                        batch.start_at(first).map_err(|e| invalid(number, e.to_string()))?;
                    }
                    let seq = batch.next_seq().map_err(|e| invalid(number, e.to_string()))?;
                    check_headroom(number, seq)?;
                    if let Some(want) = line.seq
                        && want != seq
                    {
                        return Err(invalid(number, format!("seq {want}, but this line would be seq {seq}")));
                    }
                    let mut kind = line.kind;
                    if let EventKind::MessageAppended(m) = &mut kind {
                        fold::check_message(batch.head(), m, 0, max_open)
                            .map_err(|e| invalid(number, strip_index(&e)))?;
                        if m.created_at_ms == 0 {
                            m.created_at_ms = stamp;
                        }
                    }
                    let event = Event { seq, at_ms: line.at_ms.unwrap_or(stamp), kind };
                    // Replayed with audit's checks (splices forward and pair-safe, markers in
                    // order), so an import is refused exactly where audit would object.
                    let before = replayer.violations().len();
                    replayer.event(seq, &event);
                    if let Some(v) = replayer.violations().get(before) {
                        return Err(invalid(number, format!("{}: {}", v.kind.as_str(), v.detail)));
                    }
                    if let (EventKind::CompactionSpliced(s), Some(text)) = (&event.kind, line.summary) {
                        batch.op(Op::Put(Ks::Blobs, keys::blob_key(&s.summary_hash).to_vec(), text.into_bytes()));
                    }
                    batch.push_at(event.kind, event.at_ms).map_err(|e| invalid(number, strip_index(&e)))?;
                }
                Ok(())
            })
            .await?;
        let last_seq = head.last_seq();
        Ok(ImportReport { n_events: n, first_seq: Seq::new(last_seq.get() + 1 - n), last_seq })
    }
}

/// Refuses a seq that would leave the session less than [`IMPORT_HEADROOM_EVENTS`] of room.
fn check_headroom(line: usize, seq: Seq) -> Result<(), Error> {
    let highest = Seq::MAX.get() - IMPORT_HEADROOM_EVENTS;
    if seq.get() > highest {
        return Err(invalid(
            line,
            format!("seq {seq} leaves no room for the session to grow (imported seqs stay at or below {highest})"),
        ));
    }
    Ok(())
}

fn invalid(line: usize, reason: String) -> Error {
    Error::InvalidImport { line, reason }
}

/// A message error's text without its "message 0" prefix (the line number replaces it).
fn strip_index(e: &Error) -> String {
    let text = e.to_string();
    for prefix in ["invalid message 0: ", "message 0: "] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text
}

fn message_to_json(m: &Message) -> Value {
    let mut map = Map::new();
    map.insert("role".to_string(), json!(m.role.as_str()));
    let content = if m.content.is_empty() && !m.tool_calls.is_empty() { Value::Null } else { json!(m.content) };
    map.insert("content".to_string(), content);
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(
                |c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }),
            )
            .collect();
        map.insert("tool_calls".to_string(), Value::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        map.insert("tool_call_id".to_string(), json!(id));
    }
    map.insert("created_at_ms".to_string(), json!(m.created_at_ms));
    if !m.metadata.is_empty() {
        map.insert("metadata".to_string(), json!(m.metadata));
    }
    Value::Object(map)
}

/// The `type` of a line. A line without one is an OpenAI chat message.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LineType {
    Message,
    CompactionSpliced,
    EpisodeBoundary,
    MemoriesExtracted,
    SessionDeleted,
    MetadataSet,
    MessagesReset,
}

/// The fields every line may carry.
#[derive(Deserialize)]
struct Stamp {
    seq: Option<u64>,
    at_ms: Option<u64>,
}

/// An OpenAI chat message; unknown fields (`name`, `refusal`, ...) are ignored.
#[derive(Deserialize)]
struct MessageLine {
    role: String,
    content: Option<String>,
    tool_calls: Option<Vec<CallLine>>,
    tool_call_id: Option<String>,
    created_at_ms: Option<u64>,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct CallLine {
    id: String,
    function: FunctionLine,
}

#[derive(Deserialize)]
struct FunctionLine {
    name: String,
    /// Usually JSON text; some providers send an object, which is kept as JSON text.
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct SpliceLine {
    summary: String,
    /// Optional, but a string when present: it must be the hash of `summary`.
    #[serde(default, deserialize_with = "present")]
    summary_hash: Option<String>,
    upto: u64,
    previous_upto: u64,
    n_messages: Option<u64>,
    /// Anything but a string reads as `import`.
    summarizer: Option<Value>,
}

#[derive(Deserialize)]
struct BoundaryLine {
    episode: u64,
    reason: BoundaryReason,
}

#[derive(Deserialize)]
struct MemoriesLine {
    namespace: String,
    from: u64,
    upto: u64,
    n_memories: u64,
}

#[derive(Deserialize)]
struct DeletionLine {
    n_events_removed: Option<u64>,
}

#[derive(Deserialize)]
struct MetadataLine {
    document: String,
}

#[derive(Deserialize)]
struct ResetLine {
    n_messages_dropped: Option<u64>,
}

/// A field that may be absent but, when present, must hold a value (null is refused).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Deserializes `value` as `T`; an error names the field at fault (`tool_calls[0].id: ...`).
fn fields<'a, T: Deserialize<'a>>(value: &'a Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    })
}

fn parse_line(number: usize, raw: &str) -> Result<Line, Error> {
    let bad = |reason: String| invalid(number, reason);
    // Parsed to a `Value` first so a repeated key reads as its last value, as in any JSON object.
    let value: Value = serde_json::from_str(raw).map_err(|e| bad(format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad("not a JSON object".to_string()));
    }
    let Stamp { seq, at_ms } = fields(&value).map_err(&bad)?;
    let line_type = match value.get("type") {
        None => LineType::Message,
        Some(_) => fields(&value).map_err(&bad)?,
    };
    let mut summary = None;
    let kind = match line_type {
        LineType::Message => EventKind::MessageAppended(to_message(fields(&value).map_err(&bad)?).map_err(&bad)?),
        LineType::CompactionSpliced => {
            let line: SpliceLine = fields(&value).map_err(&bad)?;
            let hash = SummaryHash::of(&line.summary);
            if let Some(given) = line.summary_hash
                && SummaryHash::from_hex(&given).ok() != Some(hash)
            {
                return Err(bad(format!("summary_hash {given} is not the blake3 hash of the summary")));
            }
            let splice = Splice {
                upto: Seq::new(line.upto),
                previous_upto: Seq::new(line.previous_upto),
                summary_hash: hash,
                n_messages: line.n_messages.unwrap_or(0),
                summary_bytes: line.summary.len() as u64,
                summarizer: line.summarizer.as_ref().and_then(Value::as_str).unwrap_or("import").to_string(),
            };
            summary = Some(line.summary);
            EventKind::CompactionSpliced(splice)
        }
        LineType::EpisodeBoundary => {
            let BoundaryLine { episode, reason } = fields(&value).map_err(&bad)?;
            EventKind::EpisodeBoundary { episode, reason }
        }
        LineType::MemoriesExtracted => {
            let MemoriesLine { namespace, from, upto, n_memories } = fields(&value).map_err(&bad)?;
            EventKind::MemoriesExtracted { namespace, from: Seq::new(from), upto: Seq::new(upto), n_memories }
        }
        LineType::SessionDeleted => {
            let DeletionLine { n_events_removed } = fields(&value).map_err(&bad)?;
            EventKind::SessionDeleted { n_events_removed: n_events_removed.unwrap_or(0) }
        }
        LineType::MetadataSet => {
            let MetadataLine { document } = fields(&value).map_err(&bad)?;
            EventKind::MetadataSet { document }
        }
        LineType::MessagesReset => {
            let ResetLine { n_messages_dropped } = fields(&value).map_err(&bad)?;
            EventKind::MessagesReset { n_messages_dropped: n_messages_dropped.unwrap_or(0) }
        }
    };
    Ok(Line { number, seq: seq.map(Seq::new), at_ms, kind, summary })
}

fn to_message(line: MessageLine) -> Result<Message, String> {
    let role: Role = line.role.parse().map_err(|e: Error| strip_index(&e))?;
    let tool_calls = line
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|call| {
            let arguments = match call.function.arguments {
                None => String::new(),
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
            };
            ToolCall::new(call.id, call.function.name, arguments)
        })
        .collect();
    let mut message =
        Message { tool_calls, tool_call_id: line.tool_call_id, ..Message::new(role, line.content.unwrap_or_default()) };
    message.created_at_ms = line.created_at_ms.unwrap_or(0);
    message.metadata = line.metadata.unwrap_or_default();
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(raw: &str) -> String {
        match parse_line(7, raw) {
            Err(Error::InvalidImport { line: 7, reason }) => reason,
            Err(other) => panic!("{raw}: not an import error: {other}"),
            Ok(_) => panic!("{raw}: accepted"),
        }
    }

    fn message(raw: &str) -> Message {
        match parse_line(1, raw).unwrap_or_else(|e| panic!("{raw}: {e}")).kind {
            EventKind::MessageAppended(m) => m,
            other => panic!("{raw}: not a message: {other:?}"),
        }
    }

    #[test]
    fn each_refused_line_names_the_field_at_fault() {
        let rows = [
            ("{oops", "not JSON: key must be a string at line 1 column 2"),
            ("[1]", "not a JSON object"),
            (r#"{"role":"user","content":[]}"#, "content: invalid type: sequence, expected a string"),
            (r#"{"content":"x"}"#, "missing field `role`"),
            (r#"{"role":null}"#, "role: invalid type: null, expected a string"),
            (r#"{"role":"robot"}"#, "unknown role \"robot\" (expected system, user, assistant or tool)"),
            (r#"{"role":"user","seq":-1}"#, "seq: invalid value: integer `-1`, expected u64"),
            (r#"{"role":"user","at_ms":1.5}"#, "at_ms: invalid type: floating point `1.5`, expected u64"),
            (
                r#"{"role":"assistant","tool_calls":[{"id":3,"function":{"name":"f"}}]}"#,
                "tool_calls[0].id: invalid type: integer `3`, expected a string",
            ),
            (r#"{"role":"assistant","tool_calls":[{"id":"c"}]}"#, "tool_calls[0]: missing field `function`"),
            (r#"{"role":"assistant","tool_calls":{}}"#, "tool_calls: invalid type: map, expected a sequence"),
            (r#"{"role":"user","metadata":{"k":1}}"#, "metadata.k: invalid type: integer `1`, expected a string"),
            (r#"{"type":7}"#, "type: invalid type: integer `7`, expected variant identifier"),
            (r#"{"type":null,"role":"user"}"#, "type: invalid type: null, expected variant identifier"),
            (
                r#"{"type":"nap"}"#,
                "type: unknown variant `nap`, expected one of `message`, `compaction_spliced`, `episode_boundary`, `memories_extracted`, `session_deleted`, `metadata_set`, `messages_reset`",
            ),
            (r#"{"type":"compaction_spliced","upto":1,"previous_upto":0}"#, "missing field `summary`"),
            (
                r#"{"type":"compaction_spliced","summary":"s","summary_hash":null,"upto":1,"previous_upto":0}"#,
                "summary_hash: invalid type: null, expected a string",
            ),
            (
                r#"{"type":"compaction_spliced","summary":"s","summary_hash":"00","upto":1,"previous_upto":0}"#,
                "summary_hash 00 is not the blake3 hash of the summary",
            ),
            (r#"{"type":"episode_boundary","episode":1}"#, "missing field `reason`"),
            (
                r#"{"type":"episode_boundary","episode":1,"reason":"bored"}"#,
                "reason: unknown variant `bored`, expected one of `classified`, `turn_cap`, `classifier_fallback`, `explicit`",
            ),
            (r#"{"type":"memories_extracted","namespace":"n","from":0,"upto":2}"#, "missing field `n_memories`"),
            (
                r#"{"type":"session_deleted","n_events_removed":"all"}"#,
                "n_events_removed: invalid type: string \"all\", expected u64",
            ),
            (r#"{"type":"metadata_set"}"#, "missing field `document`"),
            (r#"{"type":"metadata_set","document":{}}"#, "document: invalid type: map, expected a string"),
            (
                r#"{"type":"messages_reset","n_messages_dropped":-1}"#,
                "n_messages_dropped: invalid value: integer `-1`, expected u64",
            ),
        ];
        for (raw, expected) in rows {
            assert_eq!(refusal(raw), expected, "{raw}");
        }
    }

    #[test]
    fn plain_openai_messages_and_their_optional_fields_are_read() {
        let m = message(
            r#"{"role":"assistant","content":null,"refusal":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"ls","arguments":{"path":"/"}}},{"id":"c2","function":{"name":"pwd","arguments":null}}]}"#,
        );
        assert_eq!(m.role, Role::Assistant);
        assert_eq!(m.content, "");
        assert_eq!(m.tool_calls, [ToolCall::new("c1", "ls", r#"{"path":"/"}"#), ToolCall::new("c2", "pwd", "")]);
        let m = message(
            r#"{"type":"message","role":"tool","content":"ok","tool_call_id":"c1","created_at_ms":5,"metadata":{"k":"v"}}"#,
        );
        assert_eq!(
            (m.tool_call_id.as_deref(), m.created_at_ms, m.metadata.get("k").map(String::as_str)),
            (Some("c1"), 5, Some("v"))
        );
        // A repeated key reads as its last value, as in any JSON object.
        assert_eq!(message(r#"{"role":"robot","role":"user","content":"a","content":"b"}"#).content, "b");
        // Null optional fields read as absent.
        let m = message(
            r#"{"role":"user","content":"x","tool_calls":null,"tool_call_id":null,"metadata":null,"created_at_ms":null,"seq":null,"at_ms":null}"#,
        );
        assert!(m.tool_calls.is_empty() && m.tool_call_id.is_none() && m.metadata.is_empty());
    }

    #[test]
    fn event_lines_read_their_fields_and_defaults() {
        let line = parse_line(1, r#"{"type":"compaction_spliced","seq":4,"at_ms":9,"upto":3,"previous_upto":0,"summary":"s","summarizer":12}"#)
            .expect("a splice line");
        assert_eq!((line.seq, line.at_ms, line.summary.as_deref()), (Some(Seq::new(4)), Some(9), Some("s")));
        let EventKind::CompactionSpliced(splice) = line.kind else { panic!("not a splice") };
        assert_eq!(
            (splice.summarizer.as_str(), splice.n_messages, splice.summary_hash),
            ("import", 0, SummaryHash::of("s"))
        );
        let deleted = parse_line(1, r#"{"type":"session_deleted"}"#).expect("a deletion line").kind;
        assert_eq!(deleted, EventKind::SessionDeleted { n_events_removed: 0 });
    }
}
