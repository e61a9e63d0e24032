//! Pure compaction planning: where a compaction may cut. No I/O, no clock.
//!
//! The rule: a cut at `upto` is *pair-safe* when every tool call at or before `upto` has its
//! result at or before `upto`. A call whose result comes later (or has not come yet) pulls the cut
//! back to just before the call; that can expose another call in the same way, so the planner
//! repeats until the cut is stable. A [`CompactionPlan`] can only be made here, so holding one
//! proves the check was done.

use crate::log::event::Event;
use crate::log::ids::Seq;

/// A checked plan: summarize the messages in `(base, upto]` and splice at `upto`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionPlan {
    base: Seq,
    upto: Seq,
    requested_upto: Seq,
}

impl CompactionPlan {
    /// The previous splice's `upto` (the summary being extended ends there).
    pub fn base(&self) -> Seq {
        self.base
    }
    /// The pair-safe cut.
    pub fn upto(&self) -> Seq {
        self.upto
    }
    /// The cut asked for (by the caller or the policy), before the pair-safe adjustment.
    pub fn requested_upto(&self) -> Seq {
        self.requested_upto
    }
}

/// Why there is no plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoPlan {
    /// The requested cut is at or before the current splice.
    AlreadyCompacted,
    /// Moving the cut back to keep tool calls with their results left nothing to compact.
    OnlyOpenToolPairs {
        /// The first call that blocked the cut.
        blocking_call: Seq,
    },
}

/// Plans a compaction of `span` (the events in `(base, requested]`, in seq order, as read from
/// the log) up to `requested`, moving the cut back until it is pair-safe.
pub fn plan(base: Seq, requested: Seq, span: &[Event]) -> Result<CompactionPlan, NoPlan> {
    debug_assert!(span.windows(2).all(|w| w[0].seq < w[1].seq), "span must be in seq order");
    debug_assert!(span.iter().all(|e| e.seq > base && e.seq <= requested), "span must lie in (base, requested]");
    if requested <= base {
        return Err(NoPlan::AlreadyCompacted);
    }
    let mut upto = requested;
    let mut first_blocker = None;
    loop {
        let blocker = first_unanswered_call(span, upto);
        match blocker {
            None => break,
            Some(call_seq) => {
                first_blocker.get_or_insert(call_seq);
                // The cut must precede the call; everything from the call on stays verbatim.
                upto = Seq::new(call_seq.get() - 1);
                if upto <= base {
                    return Err(NoPlan::OnlyOpenToolPairs { blocking_call: first_blocker.unwrap_or(call_seq) });
                }
            }
        }
    }
    debug_assert!(is_pair_safe(span, upto), "the planner's postcondition");
    Ok(CompactionPlan { base, upto, requested_upto: requested })
}

/// The seq of the earliest message at or before `upto` that makes a tool call whose result is
/// not also at or before `upto`.
fn first_unanswered_call(span: &[Event], upto: Seq) -> Option<Seq> {
    let mut open: Vec<(&str, Seq)> = Vec::new();
    for event in span.iter().take_while(|e| e.seq <= upto) {
        let Some(m) = event.message() else { continue };
        if let Some(id) = &m.tool_call_id {
            open.retain(|(open_id, _)| open_id != id);
        }
        open.extend(m.tool_calls.iter().map(|c| (c.id.as_str(), event.seq)));
    }
    open.iter().map(|(_, seq)| *seq).min()
}

/// True when no tool call at or before `upto` in `span` lacks its result at or before `upto`.
pub fn is_pair_safe(span: &[Event], upto: Seq) -> bool {
    first_unanswered_call(span, upto).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{EventKind, Message, ToolCall};

    fn log(messages: Vec<Message>) -> Vec<Event> {
        messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| Event { seq: Seq::new(i as u64 + 1), at_ms: 0, kind: EventKind::MessageAppended(m) })
            .collect()
    }

    #[test]
    fn the_cut_moves_back_before_a_call_whose_result_comes_later() {
        let span = log(vec![
            Message::user("go"),                                                  // 1
            Message::assistant_tool_calls("", vec![ToolCall::new("a", "t", "")]), // 2
            Message::tool_result("a", "ra"),                                      // 3
            Message::assistant_tool_calls("", vec![ToolCall::new("b", "t", "")]), // 4
            Message::assistant_tool_calls("", vec![ToolCall::new("c", "t", "")]), // 5
            Message::tool_result("c", "rc"),                                      // 6
            Message::tool_result("b", "rb"),                                      // 7
        ]);
        assert_eq!(plan(Seq::ZERO, Seq::new(3), &span[..3]).map(|p| p.upto()), Ok(Seq::new(3)));
        // At 6, call b (4) is unanswered: the cut goes to 3.
        assert_eq!(plan(Seq::ZERO, Seq::new(6), &span[..6]).map(|p| p.upto()), Ok(Seq::new(3)));
        assert_eq!(plan(Seq::ZERO, Seq::new(7), &span).map(|p| p.upto()), Ok(Seq::new(7)));
        assert_eq!(
            plan(Seq::new(3), Seq::new(5), &span[3..5]),
            Err(NoPlan::OnlyOpenToolPairs { blocking_call: Seq::new(4) })
        );
        assert_eq!(plan(Seq::new(7), Seq::new(7), &[]), Err(NoPlan::AlreadyCompacted));
    }
}
