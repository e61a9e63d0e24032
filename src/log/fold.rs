//! The pure core: a session's [`Head`] is the fold of its events by [`apply`]. The head is what
//! the engine stores next to each event (in the same batch), and what audit rebuilds to compare.
//!
//! Nothing here touches fjall, tokio or a clock. `apply` is deterministic and cannot fail: every
//! rule is checked before an event is written ([`check_message`] for the state-dependent ones,
//! `Message::validate` for the rest), so replaying a valid log never has anything to refuse.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::log::event::{Event, EventKind, Message, Role};
use crate::log::ids::{Seq, SummaryHash};

/// How many answered call ids a head remembers, so a second result for one of them gets the
/// precise [`Error::ToolCallAlreadyAnswered`] instead of [`Error::UnknownToolCall`].
pub const RECENTLY_ANSWERED: usize = 16;

/// A call id as the head remembers it once answered: the first 8 bytes of its blake3 hash. Fixed
/// width keeps the head's decode, clone and drop free of per-id allocations on every append; a
/// collision could only turn one refusal into the other (both refuse the message).
fn answered_tag(id: &str) -> u64 {
    let hash = blake3::hash(id.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("a blake3 hash has 32 bytes"))
}

/// The latest splice, as the view sees it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SpliceRef {
    /// Messages with seq <= `upto` are replaced by the summary.
    pub upto: Seq,
    /// The summary's hash (its text is in the blobs keyspace).
    pub summary_hash: SummaryHash,
    /// Seq of the `CompactionSpliced` event.
    pub at: Seq,
}

/// A tool call that has no result yet.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct OpenCall {
    /// The call id.
    pub id: String,
    /// Seq of the assistant message that made it.
    pub seq: Seq,
}

/// A session's fold state: everything needed to validate the next append and to serve working
/// memory without reading the log. Its size depends on open tool calls, never on session length.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Head {
    pub(crate) last_seq: Seq,
    pub(crate) n_messages: u64,
    pub(crate) splice: Option<SpliceRef>,
    pub(crate) open_calls: Vec<OpenCall>,
    pub(crate) recently_answered: Vec<u64>,
    pub(crate) episode: u64,
    pub(crate) episode_turns: u64,
    pub(crate) base: Seq,
    pub(crate) deleted: bool,
    /// Seq of the latest `MetadataSet` since the last deletion. Added after format 1's first
    /// release: heads written before it decode with `None` (the positional array is shorter).
    #[serde(default)]
    pub(crate) metadata: Option<Seq>,
    /// Where the stored log starts when a `MessagesReset` moved `base` past it: the last deletion's
    /// seq (0: never deleted). `None` means `base` (no reset since the last deletion); heads
    /// written before resets existed decode as `None`, which is right for them.
    #[serde(default)]
    pub(crate) log_start: Option<Seq>,
}

impl Head {
    /// Seq of the last event (0 for an empty session).
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }
    /// Messages appended since the session began (or was last deleted), including compacted ones.
    pub fn n_messages(&self) -> u64 {
        self.n_messages
    }
    /// The latest splice, if any.
    pub fn splice(&self) -> Option<&SpliceRef> {
        self.splice.as_ref()
    }
    /// Where the summary ends: messages at or before this seq are summarized.
    pub fn upto(&self) -> Seq {
        self.splice.as_ref().map_or(Seq::ZERO, |s| s.upto)
    }
    /// Tool calls still waiting for their result, oldest first.
    pub fn open_calls(&self) -> &[OpenCall] {
        &self.open_calls
    }
    /// The current episode (0-based).
    pub fn episode(&self) -> u64 {
        self.episode
    }
    /// User turns in the current episode.
    pub fn episode_turns(&self) -> u64 {
        self.episode_turns
    }
    /// Seq of the last deletion or messages reset (0 if neither): messages at or before it are out
    /// of the working memory (a deletion's events are purged; a reset's stay in the log).
    pub fn base(&self) -> Seq {
        self.base
    }
    /// Seq the session's stored log starts at: its last deletion (whose earlier events are dead),
    /// or 0 when it was never deleted. Events from here on are all stored, resets included.
    pub fn log_start(&self) -> Seq {
        self.log_start.unwrap_or(self.base)
    }
    /// Seq of the latest `MetadataSet` since the last deletion, if any.
    pub fn metadata_seq(&self) -> Option<Seq> {
        self.metadata
    }
    /// True when the last thing that happened to the session was its deletion.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }
}

/// Folds one event into the head. Deterministic, infallible; see the module docs.
pub fn apply(head: &mut Head, event: &Event) {
    head.last_seq = event.seq;
    match &event.kind {
        // Counters saturate rather than overflow: a valid log cannot reach the bound (each counts
        // events, and seqs stop at `Seq::MAX`), and a damaged one replayed by audit must not panic.
        EventKind::MessageAppended(m) => {
            head.n_messages = head.n_messages.saturating_add(1);
            head.deleted = false;
            if m.role == Role::User {
                head.episode_turns = head.episode_turns.saturating_add(1);
            }
            head.open_calls.extend(m.tool_calls.iter().map(|c| OpenCall { id: c.id.clone(), seq: event.seq }));
            if let Some(id) = &m.tool_call_id
                && let Some(idx) = head.open_calls.iter().position(|c| &c.id == id)
            {
                head.open_calls.remove(idx);
                if head.recently_answered.len() == RECENTLY_ANSWERED {
                    head.recently_answered.remove(0);
                }
                head.recently_answered.push(answered_tag(id));
            }
        }
        EventKind::CompactionSpliced(s) => {
            head.splice = Some(SpliceRef { upto: s.upto, summary_hash: s.summary_hash, at: event.seq });
        }
        EventKind::EpisodeBoundary { episode, .. } => {
            head.episode = episode.saturating_add(1);
            head.episode_turns = 0;
        }
        EventKind::MemoriesExtracted { .. } => {}
        EventKind::SessionDeleted { .. } => {
            *head = Head { last_seq: event.seq, base: event.seq, deleted: true, ..Head::default() };
        }
        EventKind::MetadataSet { .. } => head.metadata = Some(event.seq),
        // Like a deletion for the window (the messages before it leave it, with their summary and
        // open calls), but the log, the episode count and the metadata stay.
        EventKind::MessagesReset { .. } => {
            head.log_start = Some(head.log_start());
            head.base = event.seq;
            head.n_messages = 0;
            head.splice = None;
            head.open_calls.clear();
            head.recently_answered.clear();
        }
    }
}

/// True when the turn cap (`episodes.max_turns_per_episode`) demands an episode boundary before one
/// more user message: the append path writes one in the same batch.
pub fn turn_cap_reached(head: &Head, max_turns: u64) -> bool {
    head.episode_turns() >= max_turns
}

/// Checks the rules that depend on the session's state: a tool result must answer an open call,
/// and a new call id must not collide with an open one. `index` is the message's place in the
/// caller's batch (for the error); `max_open_calls` bounds the head's size.
pub fn check_message(head: &Head, message: &Message, index: usize, max_open_calls: usize) -> Result<(), Error> {
    if let Some(id) = &message.tool_call_id
        && !head.open_calls.iter().any(|c| &c.id == id)
    {
        let call_id = id.clone();
        return Err(if head.recently_answered.contains(&answered_tag(id)) {
            Error::ToolCallAlreadyAnswered { index, call_id }
        } else {
            Error::UnknownToolCall { index, call_id }
        });
    }
    for (idx, call) in message.tool_calls.iter().enumerate() {
        let repeated = message.tool_calls[..idx].iter().any(|c| c.id == call.id);
        if repeated || head.open_calls.iter().any(|c| c.id == call.id) {
            return Err(Error::DuplicateToolCallId { index, call_id: call.id.clone() });
        }
    }
    let open_after = head.open_calls.len() + message.tool_calls.len();
    if !message.tool_calls.is_empty() && open_after > max_open_calls {
        return Err(Error::InvalidMessage {
            index,
            reason: format!(
                "would leave {open_after} tool calls without results, the limit (limits.max_open_tool_calls) is {max_open_calls}"
            ),
        });
    }
    Ok(())
}

/// Checks the rules a marker event (splice, episode boundary, memories) must meet against the
/// head it is folded into: a splice continues from `max(splice upto, base)` and leaves no open
/// tool call at or before its `upto`; a boundary closes the current episode; a memory span does
/// not reach back past the last deletion. Messages have [`check_message`]; a deletion has no
/// state to agree with. The write path runs it on every push, audit's replay on every event.
pub fn check_marker(head: &Head, event: &Event) -> Result<(), String> {
    match &event.kind {
        EventKind::CompactionSpliced(s) => {
            let lower = head.upto().max(head.base());
            if s.previous_upto != lower {
                return Err(format!(
                    "splice ({}, {}] does not continue from {lower} (the previous splice or deletion)",
                    s.previous_upto, s.upto
                ));
            }
            match head.open_calls.iter().find(|c| c.seq <= s.upto) {
                Some(call) => Err(format!(
                    "splice up to {} cuts the tool call {:?} at {}, which has no result yet",
                    s.upto, call.id, call.seq
                )),
                None => Ok(()),
            }
        }
        EventKind::EpisodeBoundary { episode, .. } if *episode != head.episode => {
            Err(format!("boundary of episode {episode}, but the current episode is {}", head.episode))
        }
        EventKind::MemoriesExtracted { from, .. } if *from < head.base => {
            Err(format!("memory span starts at {from}, before the deletion at {}", head.base))
        }
        _ => Ok(()),
    }
}

/// Folds a whole log from an empty head.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Head {
    let mut head = Head::default();
    for event in events {
        apply(&mut head, event);
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::ToolCall;

    fn msg(seq: u64, m: Message) -> Event {
        Event { seq: Seq::new(seq), at_ms: 0, kind: EventKind::MessageAppended(m) }
    }

    #[test]
    fn tool_results_close_calls_and_second_results_are_named() {
        let mut head = Head::default();
        let call = Message::assistant_tool_calls("", vec![ToolCall::new("c1", "ls", "{}")]);
        check_message(&head, &call, 0, 8).expect("a fresh call");
        apply(&mut head, &msg(1, call.clone()));
        assert_eq!(head.open_calls().len(), 1);
        assert!(matches!(check_message(&head, &call, 0, 8), Err(Error::DuplicateToolCallId { .. })));

        let result = Message::tool_result("c1", "a b c");
        check_message(&head, &result, 0, 8).expect("answers an open call");
        apply(&mut head, &msg(2, result.clone()));
        assert!(head.open_calls().is_empty());
        assert!(matches!(check_message(&head, &result, 3, 8), Err(Error::ToolCallAlreadyAnswered { index: 3, .. })));
        let stray = Message::tool_result("nope", "x");
        assert!(matches!(check_message(&head, &stray, 0, 8), Err(Error::UnknownToolCall { .. })));
    }

    #[test]
    fn open_calls_are_bounded() {
        let head = Head::default();
        let calls = (0..3).map(|i| ToolCall::new(format!("c{i}"), "t", "")).collect();
        let m = Message::assistant_tool_calls("", calls);
        assert!(matches!(check_message(&head, &m, 0, 2), Err(Error::InvalidMessage { .. })));
        assert!(check_message(&head, &m, 0, 3).is_ok());
    }

    #[test]
    fn deletion_resets_the_view_but_keeps_numbering() {
        let mut head = replay(&[msg(1, Message::user("a")), msg(2, Message::assistant("b"))]);
        apply(
            &mut head,
            &Event { seq: Seq::new(3), at_ms: 0, kind: EventKind::SessionDeleted { n_events_removed: 2 } },
        );
        assert!(head.is_deleted());
        assert_eq!((head.last_seq(), head.base(), head.n_messages()), (Seq::new(3), Seq::new(3), 0));
        apply(&mut head, &msg(4, Message::user("again")));
        assert!(!head.is_deleted());
    }

    #[test]
    fn a_reset_moves_the_window_base_but_keeps_the_log_start_and_metadata() {
        let mut head = replay(&[
            msg(1, Message::user("a")),
            msg(2, Message::assistant_tool_calls("", vec![ToolCall::new("c1", "ls", "{}")])),
            Event { seq: Seq::new(3), at_ms: 0, kind: EventKind::MetadataSet { document: "{}".to_string() } },
        ]);
        assert_eq!(head.metadata_seq(), Some(Seq::new(3)));
        apply(
            &mut head,
            &Event { seq: Seq::new(4), at_ms: 0, kind: EventKind::MessagesReset { n_messages_dropped: 2 } },
        );
        assert_eq!((head.base(), head.log_start(), head.n_messages()), (Seq::new(4), Seq::ZERO, 0));
        assert!(head.open_calls().is_empty() && head.splice().is_none() && !head.is_deleted());
        assert_eq!(head.metadata_seq(), Some(Seq::new(3)));
        // A deletion resets the log start and forgets the metadata.
        apply(
            &mut head,
            &Event { seq: Seq::new(5), at_ms: 0, kind: EventKind::SessionDeleted { n_events_removed: 4 } },
        );
        assert_eq!((head.base(), head.log_start(), head.metadata_seq()), (Seq::new(5), Seq::new(5), None));
        apply(
            &mut head,
            &Event { seq: Seq::new(6), at_ms: 0, kind: EventKind::MessagesReset { n_messages_dropped: 0 } },
        );
        assert_eq!((head.base(), head.log_start()), (Seq::new(6), Seq::new(5)));
    }
}
