//! The demo's conversations: a coding, a travel and an ops agent (`coding`, `travel`, `ops`), chosen
//! by session index, with names, places and numbers varied by index. Pure and deterministic: the same index always gives
//! the same messages, timestamps included.

use palimpsest::{Message, ToolCall};
use serde_json::Value;

use super::{coding, ops, travel};

/// 2026-01-01T00:00:00Z: the demo's clock starts here, so timestamps are the same on every run.
const DEMO_EPOCH_MS: u64 = 1_767_225_600_000;
/// Each session starts an hour after the previous one.
const SESSION_SPACING_MS: u64 = 3_600_000;
/// Messages of a session are this far apart.
const MESSAGE_SPACING_MS: u64 = 7_000;

/// One session's conversation, as the steps its agent appends: each step is one atomic batch.
pub struct Conversation {
    pub id: String,
    pub steps: Vec<Vec<Message>>,
    /// A few more turns after `steps`, stamped and numbered as their continuation: the demo appends
    /// them while the session is being compacted.
    pub follow_up: Vec<Vec<Message>>,
}

#[derive(Clone, Copy)]
enum Kind {
    Coding,
    Travel,
    Ops,
}

impl Kind {
    fn of(idx: u32) -> Self {
        match idx.wrapping_sub(1) % 3 {
            0 => Kind::Coding,
            1 => Kind::Travel,
            _ => Kind::Ops,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Coding => "coding",
            Kind::Travel => "travel",
            Kind::Ops => "ops",
        }
    }
}

/// `demo-<idx>-<kind>`.
pub fn session_id(idx: u32) -> String {
    format!("demo-{idx}-{}", Kind::of(idx).name())
}

/// Session `idx`'s conversation (idx starts at 1).
pub fn conversation(idx: u32) -> Conversation {
    let mut s = Script { idx, steps: Vec::new(), n_messages: 0, n_calls: 0 };
    // Variants cycle independently of the kind, so sessions 1, 4, 7 are three different repos.
    let variant = (idx.wrapping_sub(1) / 3 % 3) as usize;
    match Kind::of(idx) {
        Kind::Coding => coding::play(&mut s, &coding::REPOS[variant]),
        Kind::Travel => travel::play(&mut s, &travel::TRIPS[variant]),
        Kind::Ops => ops::play(&mut s, &ops::SERVICES[variant], idx),
    }
    let n_steps = s.steps.len();
    match Kind::of(idx) {
        Kind::Coding => coding::follow_up(&mut s, &coding::REPOS[variant]),
        Kind::Travel => travel::follow_up(&mut s, &travel::TRIPS[variant]),
        Kind::Ops => ops::follow_up(&mut s, &ops::SERVICES[variant]),
    }
    let follow_up = s.steps.split_off(n_steps);
    Conversation { id: session_id(idx), steps: s.steps, follow_up }
}

/// One tool call of a step, with the result its tool will return.
pub(super) struct Call {
    name: &'static str,
    arguments: Value,
    result: String,
}

pub(super) fn call(name: &'static str, arguments: Value, result: impl Into<String>) -> Call {
    Call { name, arguments, result: result.into() }
}

/// Builds a conversation step by step, stamping each message with the demo clock.
pub(super) struct Script {
    idx: u32,
    steps: Vec<Vec<Message>>,
    n_messages: u64,
    n_calls: u32,
}

impl Script {
    fn step(&mut self, messages: Vec<Message>) {
        let mut stamped = Vec::with_capacity(messages.len());
        for m in messages {
            let at_ms = DEMO_EPOCH_MS + u64::from(self.idx) * SESSION_SPACING_MS + self.n_messages * MESSAGE_SPACING_MS;
            self.n_messages += 1;
            stamped.push(m.with_created_at_ms(at_ms));
        }
        self.steps.push(stamped);
    }

    pub(super) fn system(&mut self, text: String) {
        self.step(vec![Message::system(text)]);
    }

    pub(super) fn user(&mut self, text: String) {
        self.step(vec![Message::user(text)]);
    }

    pub(super) fn answer(&mut self, text: String) {
        self.step(vec![Message::assistant(text)]);
    }

    /// An assistant turn calling every tool in `calls` at once (with `thought` as its text, which
    /// may be empty), then the tools' results, which arrive together as one step.
    pub(super) fn tools(&mut self, thought: &str, calls: Vec<Call>) {
        let mut tool_calls = Vec::with_capacity(calls.len());
        let mut results = Vec::with_capacity(calls.len());
        for c in calls {
            self.n_calls += 1;
            let id = format!("call_{}_{:02}", self.idx, self.n_calls);
            tool_calls.push(ToolCall::new(id.clone(), c.name, c.arguments.to_string()));
            results.push(Message::tool_result(id, c.result));
        }
        self.step(vec![Message::assistant_tool_calls(thought, tool_calls)]);
        self.step(results);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_variant_is_a_valid_conversation_of_40_to_60_messages() {
        for idx in 1..=9 {
            let c = conversation(idx);
            let main = c.steps.iter().flatten().count();
            assert!((40..=60).contains(&main), "{}: {main} messages", c.id);
            let n_follow_up = c.follow_up.iter().flatten().count();
            assert!((4..=8).contains(&n_follow_up), "{}: {n_follow_up} follow-up messages", c.id);
            let messages: Vec<&Message> = c.steps.iter().chain(&c.follow_up).flatten().collect();
            let stamps: Vec<u64> = messages.iter().map(|m| m.created_at_ms).collect();
            assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{}: the follow-up continues the clock", c.id);
            for (i, m) in messages.iter().enumerate() {
                m.validate(i, 1 << 20).unwrap_or_else(|e| panic!("{}: message {i}: {e}", c.id));
            }
            // Two parallel calls somewhere, and every call answered.
            assert!(messages.iter().any(|m| m.tool_calls.len() == 2), "{}", c.id);
            let calls: Vec<&str> = messages.iter().flat_map(|m| m.tool_calls.iter().map(|t| t.id.as_str())).collect();
            let results: Vec<&str> = messages.iter().filter_map(|m| m.tool_call_id.as_deref()).collect();
            assert_eq!(calls, results, "{}", c.id);
        }
    }

    #[test]
    fn conversations_are_deterministic_and_vary_by_index() {
        assert_eq!(conversation(4).steps, conversation(4).steps);
        assert_ne!(conversation(1).steps[1], conversation(4).steps[1]);
        assert_eq!(session_id(5), "demo-5-travel");
    }
}
