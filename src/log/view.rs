//! The working-memory view: the latest summary plus a bounded window of the most recent messages
//! after it. Pure: the engine reads the events, this module decides what the agent sees.
//!
//! Window rule: the last `limit` messages after the splice, oldest first, from which any tool
//! result whose call is not also in the window is dropped. A model API rejects a tool result
//! without its call, so the window never hands one out; it may therefore hold fewer than `limit`.

use serde::Serialize;

use crate::log::event::{Event, Message};
use crate::log::ids::{Seq, SessionId, SummaryHash};

/// A message with its place in the log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct StoredMessage {
    /// Its seq.
    pub seq: Seq,
    /// When the engine stored it (ms since the Unix epoch).
    pub at_ms: u64,
    /// The message.
    pub message: Message,
}

/// The summary that replaces messages up to `upto`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Summary {
    /// The last seq it covers.
    pub upto: Seq,
    /// blake3 of `text`.
    pub hash: SummaryHash,
    /// The summary itself.
    pub text: String,
}

/// What an agent puts in front of the model: summary + recent messages.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct WorkingMemory {
    /// Whose memory this is.
    pub session: SessionId,
    /// Seq of the last event the view includes.
    pub last_seq: Seq,
    /// Messages in the session (compacted or not) up to `last_seq`; `None` for a view as of a
    /// past seq, where counting would walk the log.
    pub n_messages: Option<u64>,
    /// The latest summary, if the session was compacted.
    pub summary: Option<Summary>,
    /// The most recent messages after the summary, oldest first.
    pub messages: Vec<StoredMessage>,
}

/// The messages of `events` (in seq order) as a stored message each.
pub(crate) fn messages_of(events: impl IntoIterator<Item = Event>) -> impl Iterator<Item = StoredMessage> {
    events.into_iter().filter_map(|e| match e.kind {
        crate::log::event::EventKind::MessageAppended(message) => {
            Some(StoredMessage { seq: e.seq, at_ms: e.at_ms, message })
        }
        _ => None,
    })
}

/// Applies the window rule to the last messages after the splice (oldest first, at most `limit`).
pub(crate) fn window(mut last: Vec<StoredMessage>, limit: usize) -> Vec<StoredMessage> {
    if last.len() > limit {
        last.drain(..last.len() - limit);
    }
    let mut calls_seen: Vec<&str> = Vec::new();
    let mut keep = vec![true; last.len()];
    for (idx, m) in last.iter().enumerate() {
        calls_seen.extend(m.message.tool_calls.iter().map(|c| c.id.as_str()));
        if let Some(id) = &m.message.tool_call_id {
            keep[idx] = calls_seen.contains(&id.as_str());
        }
    }
    let mut keep = keep.into_iter();
    last.retain(|_| keep.next().unwrap_or(true));
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::ToolCall;

    fn sm(seq: u64, message: Message) -> StoredMessage {
        StoredMessage { seq: Seq::new(seq), at_ms: 0, message }
    }

    #[test]
    fn a_window_never_starts_with_a_result_whose_call_fell_outside() {
        let all = vec![
            sm(1, Message::assistant_tool_calls("", vec![ToolCall::new("a", "t", ""), ToolCall::new("b", "t", "")])),
            sm(2, Message::tool_result("a", "ra")),
            sm(3, Message::tool_result("b", "rb")),
            sm(4, Message::user("next")),
        ];
        let w = window(all.clone(), 3);
        assert_eq!(w.iter().map(|m| m.seq.get()).collect::<Vec<_>>(), vec![4]);
        assert_eq!(window(all, 4).len(), 4);
    }
}
