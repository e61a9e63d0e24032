//! Everything the tool prints on stdout: the writers (which turn a closed pipe into a quiet stop)
//! and the two documented forms of a working memory, human and JSON.
//!
//! The JSON comes from structs of this module, not from the library types' own `Serialize`, so the
//! shape the help text documents is the shape printed even if a library type gains or renames a field.

use std::fmt::Write as _;
use std::io::Write as _;

use palimpsest::{Message, StoredMessage, WorkingMemory};
use serde::Serialize;

use crate::exit::CliError;

/// Writes `text` to stdout as is.
pub fn print_text(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| CliError::stdout(&e))
}

/// Writes `value` to stdout as one line of compact JSON.
pub fn print_json(value: &impl Serialize) -> Result<(), CliError> {
    let line = serde_json::to_string(value).map_err(|e| CliError::failed(format!("cannot render JSON: {e}")))?;
    print_text(&format!("{line}\n"))
}

/// The documented JSON form of a working memory (see `show --help`), fields in documented order.
#[derive(Serialize)]
pub struct MemoryJson<'a> {
    session: &'a str,
    last_seq: u64,
    n_messages: Option<u64>,
    summary: Option<SummaryJson<'a>>,
    messages: Vec<MessageJson<'a>>,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    upto: u64,
    hash: String,
    text: &'a str,
}

#[derive(Serialize)]
pub struct MessageJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    created_at_ms: u64,
}

#[derive(Serialize)]
struct ToolCallJson<'a> {
    id: &'a str,
    name: &'a str,
    arguments: &'a str,
}

impl<'a> MemoryJson<'a> {
    pub fn new(memory: &'a WorkingMemory) -> Self {
        Self {
            session: memory.session.as_str(),
            last_seq: memory.last_seq.get(),
            n_messages: memory.n_messages,
            summary: memory.summary.as_ref().map(|s| SummaryJson {
                upto: s.upto.get(),
                hash: s.hash.to_hex(),
                text: &s.text,
            }),
            messages: memory.messages.iter().map(MessageJson::new).collect(),
        }
    }
}

impl<'a> MessageJson<'a> {
    fn new(stored: &'a StoredMessage) -> Self {
        Self { seq: Some(stored.seq.get()), ..Self::of(&stored.message) }
    }

    /// A message without its seq (the event that carries it has the seq).
    pub fn of(m: &'a Message) -> Self {
        Self {
            seq: None,
            role: m.role.as_str(),
            content: &m.content,
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| ToolCallJson { id: &c.id, name: &c.name, arguments: &c.arguments })
                .collect(),
            tool_call_id: m.tool_call_id.as_deref(),
            created_at_ms: m.created_at_ms,
        }
    }
}

/// The human form of a working memory: a header, the summary if any, then one block per message.
///
/// ```text
/// session demo-1-coding, last seq 47, 47 messages
/// summary up to #20, blake3 9f2c...:
///     <summary text>
/// 20 messages in working memory, #28..#47:
/// #28 user: Please fix it.
/// #29 assistant: I'll patch the parser first.
///     -> apply_patch({"path":"src/amount.rs"}) [call_1_07]
/// #30 tool: <- [call_1_07] patch applied
/// ```
pub fn memory_human(memory: &WorkingMemory) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = write!(out, "session {}, ", memory.session);
    let _ = match memory.n_messages {
        Some(n) => writeln!(out, "last seq {}, {n} message{}", memory.last_seq, plural(n)),
        None => writeln!(out, "as of seq {} (message count not known for a past seq)", memory.last_seq),
    };
    if let Some(summary) = &memory.summary {
        let _ = writeln!(out, "summary up to #{}, blake3 {}:", summary.upto, summary.hash.to_hex());
        for line in clean(&summary.text).lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    match (memory.messages.first(), memory.messages.last()) {
        (Some(first), Some(last)) => {
            let n = memory.messages.len() as u64;
            let _ = writeln!(out, "{n} message{} in working memory, #{}..#{}:", plural(n), first.seq, last.seq);
        }
        _ => out.push_str("no messages in working memory\n"),
    }
    for stored in &memory.messages {
        let _ = write!(out, "#{} {}:", stored.seq, stored.message.role);
        push_message_body(&mut out, &stored.message);
    }
    out
}

/// A message's text after its `#<seq> <role>:` prefix, tool calls one per line.
pub fn push_message_body(out: &mut String, m: &Message) {
    let mut text = String::new();
    if let Some(id) = &m.tool_call_id {
        let _ = write!(text, "<- [{}] ", clean(id));
    }
    text.push_str(&clean(&m.content));
    let mut lines = text.lines();
    match lines.next() {
        Some(first) if !first.is_empty() => {
            let _ = writeln!(out, " {first}");
        }
        _ => out.push('\n'),
    }
    for line in lines {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "    {line}");
        }
    }
    for call in &m.tool_calls {
        let _ = writeln!(out, "    -> {}({}) [{}]", clean(&call.name), clean(&call.arguments), clean(&call.id));
    }
}

/// Escapes control characters other than newline and tab, so stored text cannot drive the
/// terminal (colours, cursor moves) when printed.
pub fn clean(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return text.to_string();
    }
    text.chars()
        .map(|c| if c.is_control() && c != '\n' && c != '\t' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use palimpsest::{Seq, SessionId, StoredMessage, Summary, SummaryHash, ToolCall};

    use super::*;

    fn memory() -> WorkingMemory {
        let call = Message::assistant_tool_calls(
            "",
            vec![ToolCall::new("c1", "weather", r#"{"city":"Oslo"}"#), ToolCall::new("c2", "time", "{}")],
        );
        let messages = vec![
            StoredMessage { seq: Seq::new(5), at_ms: 1, message: Message::user("Weather?\n\nIn Oslo.") },
            StoredMessage { seq: Seq::new(6), at_ms: 1, message: call },
            StoredMessage { seq: Seq::new(7), at_ms: 1, message: Message::tool_result("c1", "4 C\x1b[31m") },
        ];
        WorkingMemory {
            session: SessionId::new("s-1").expect("valid id"),
            last_seq: Seq::new(7),
            n_messages: Some(7),
            summary: Some(Summary { upto: Seq::new(4), hash: SummaryHash::of("sum"), text: "sum".to_string() }),
            messages,
        }
    }

    #[test]
    fn human_form_has_header_summary_and_one_block_per_message() {
        let text = memory_human(&memory());
        let hash = SummaryHash::of("sum").to_hex();
        let expected = format!(
            "session s-1, last seq 7, 7 messages\n\
             summary up to #4, blake3 {hash}:\n    sum\n\
             3 messages in working memory, #5..#7:\n\
             #5 user: Weather?\n\n    In Oslo.\n\
             #6 assistant:\n    -> weather({{\"city\":\"Oslo\"}}) [c1]\n    -> time({{}}) [c2]\n\
             #7 tool: <- [c1] 4 C\\u{{1b}}[31m\n"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn json_form_has_optional_fields_only_where_present() {
        let json = |m: &WorkingMemory| serde_json::to_value(MemoryJson::new(m)).expect("serializable");
        let value = json(&memory());
        let line = serde_json::to_string(&MemoryJson::new(&memory())).expect("serializable");
        assert!(line.starts_with(r#"{"session":"s-1","last_seq":7,"n_messages":7,"summary":{"upto":4,"#), "{line}");
        assert_eq!(value["session"], "s-1");
        assert_eq!(value["summary"]["upto"], 4);
        let messages = value["messages"].as_array().expect("messages is an array");
        assert!(messages[0].get("tool_calls").is_none() && messages[0].get("tool_call_id").is_none());
        assert_eq!(messages[1]["tool_calls"][1]["name"], "time");
        assert_eq!(messages[2]["tool_call_id"], "c1");
        let past = WorkingMemory { n_messages: None, summary: None, ..memory() };
        let value = json(&past);
        assert!(value["n_messages"].is_null() && value["summary"].is_null());
    }
}
