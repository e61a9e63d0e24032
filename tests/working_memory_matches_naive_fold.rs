//! Properties of the view: for random conversations (user turns, assistant turns with tool calls,
//! tool results in any order), the engine's working memory equals a naive fold over the whole
//! history; folding a log in two parts equals folding it at once; the stored head equals a replay
//! of the log; and every event reads back exactly as written (codec round trip through fjall).

mod common;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use palimpsest::{Durability, Engine, Event, Message, Seq, ToolCall, apply, replay};
use quickcheck::{Arbitrary, Gen, QuickCheck};

#[derive(Clone, Debug)]
enum Step {
    User(String),
    Assistant(String),
    Calls(u8),
    Result(u8),
}

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 4 {
            0 => Step::User(String::arbitrary(g)),
            1 => Step::Assistant(String::arbitrary(g)),
            2 => Step::Calls(u8::arbitrary(g) % 3 + 1),
            _ => Step::Result(u8::arbitrary(g)),
        }
    }
    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        match self {
            Step::User(s) => Box::new(s.shrink().map(Step::User)),
            Step::Assistant(s) => Box::new(s.shrink().map(Step::Assistant)),
            _ => Box::new(std::iter::empty()),
        }
    }
}

/// Turns random steps into a valid conversation: results answer a random open call.
fn conversation(steps: &[Step]) -> Vec<Message> {
    let (mut open, mut next_id, mut out) = (Vec::<String>::new(), 0, Vec::new());
    for step in steps {
        match step {
            Step::User(s) => out.push(Message::user(format!("u{s}"))),
            Step::Assistant(s) => out.push(Message::assistant(format!("a{s}"))),
            Step::Calls(n) => {
                let calls: Vec<ToolCall> = (0..*n)
                    .map(|_| {
                        next_id += 1;
                        open.push(format!("c{next_id}"));
                        ToolCall::new(format!("c{next_id}"), "tool", format!("{{\"n\":{next_id}}}"))
                    })
                    .collect();
                out.push(Message::assistant_tool_calls("", calls));
            }
            Step::Result(pick) if !open.is_empty() => {
                let id = open.remove(usize::from(*pick) % open.len());
                out.push(Message::tool_result(&id, format!("result of {id}")));
            }
            Step::Result(_) => {}
        }
    }
    out
}

/// The view computed the slow, obvious way from the whole history.
fn naive_window(history: &[Event], limit: usize) -> Vec<(u64, Message)> {
    let all: Vec<(u64, Message)> =
        history.iter().filter_map(|e| e.message().map(|m| (e.seq.get(), m.clone()))).collect();
    let last = &all[all.len().saturating_sub(limit)..];
    let mut out = Vec::new();
    for (idx, (seq, m)) in last.iter().enumerate() {
        let orphan = m
            .tool_call_id
            .as_ref()
            .is_some_and(|id| !last[..idx].iter().any(|(_, earlier)| earlier.tool_calls.iter().any(|c| &c.id == id)));
        if !orphan {
            out.push((*seq, m.clone()));
        }
    }
    out
}

struct Fixture {
    engine: Engine,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (engine, dir) = common::engine(Durability::Buffered);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Fixture { engine, runtime, _dir: dir }
    })
}

fn fresh_session() -> palimpsest::Session {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    fixture().engine.session(format!("qc-{}", NEXT.fetch_add(1, Ordering::Relaxed))).expect("valid id")
}

fn prop_view_equals_naive_fold(steps: Vec<Step>, limit: u8, batch: u8) -> bool {
    let messages = conversation(&steps);
    if messages.is_empty() {
        return true;
    }
    let s = fresh_session();
    let limit = usize::from(limit);
    fixture().runtime.block_on(async {
        // Append in random-sized batches, so single and batched appends are both covered.
        for chunk in messages.chunks(usize::from(batch % 7) + 1) {
            s.append_many(chunk.to_vec()).await.expect("valid conversation appends");
        }
        let history = s.history(Seq::new(1), 10_000).await.expect("history");
        let wm = s.working_memory(limit).await.expect("working memory");
        let got: Vec<(u64, Message)> = wm.messages.into_iter().map(|m| (m.seq.get(), m.message)).collect();
        let stored_head = s.head().await.expect("head").expect("exists");
        let read_back: Vec<Message> = history.iter().filter_map(|e| e.message().cloned()).collect();
        let stamped: Vec<Message> =
            messages.iter().zip(&read_back).map(|(m, r)| m.clone().with_created_at_ms(r.created_at_ms)).collect();
        got == naive_window(&history, limit) && stored_head == replay(&history) && read_back == stamped
    })
}

fn prop_fold_in_two_parts_equals_fold_at_once(steps: Vec<Step>, cut: u8) -> bool {
    let events: Vec<Event> = conversation(&steps)
        .into_iter()
        .enumerate()
        .map(|(i, m)| Event { seq: Seq::new(i as u64 + 1), at_ms: 7, kind: palimpsest::EventKind::MessageAppended(m) })
        .collect();
    let cut = usize::from(cut).min(events.len());
    let mut head = replay(&events[..cut]);
    for e in &events[cut..] {
        apply(&mut head, e);
    }
    head == replay(&events)
}

#[test]
fn working_memory_equals_a_naive_fold_over_the_whole_history() {
    QuickCheck::new().quickcheck(prop_view_equals_naive_fold as fn(Vec<Step>, u8, u8) -> bool);
}

#[test]
fn folding_in_two_parts_equals_folding_at_once() {
    QuickCheck::new().quickcheck(prop_fold_in_two_parts_equals_fold_at_once as fn(Vec<Step>, u8) -> bool);
}
