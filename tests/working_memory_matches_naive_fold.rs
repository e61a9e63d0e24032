//! Properties of the view: for random sessions (user turns, assistant turns with tool calls, tool
//! results in any order, compactions up to any seq, deletions and appends after them), the
//! engine's working memory, now and as of a past seq, equals a naive fold over the whole history;
//! the stored head equals a replay of the log; every message reads back exactly as written (codec
//! round trip through fjall); and the fold, with its head stored between two parts of a log,
//! agrees field by field with a model computed directly from the whole log.
//!
//! The view property runs on both backends: fjall (1,000 cases), and JetStream (a 3-node cluster
//! started here, a tenth of the cases: every step reads over the network), where the reads take
//! the head from the stream leader and the rest as of it, the window cache is kept per record, and
//! splices, deletions and time travel go through the records' heads instead of keyspaces.

mod common;
#[cfg(feature = "nats")]
mod nats_common;
#[cfg(feature = "nats")]
mod nats_properties;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use palimpsest::{
    BoundaryReason, CompactionRequest, Config, Durability, Engine, Error, Event, EventKind, Head, Message, Seq, Splice,
    SummaryHash, ToolCall, apply, check_message, replay,
};
use quickcheck::{Arbitrary, Gen, QuickCheck};

/// Steps per case, so 1,000 cases take seconds.
const MAX_STEPS: usize = 60;

#[derive(Clone, Debug)]
enum Step {
    User(String),
    Assistant(String),
    Calls(u8),
    Result(u8),
    Compact(Option<u8>),
    Delete,
    Boundary,
}

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 12 {
            0..=2 => Step::User(String::arbitrary(g)),
            3 => Step::Assistant(String::arbitrary(g)),
            4..=5 => Step::Calls(u8::arbitrary(g) % 3 + 1),
            6..=8 => Step::Result(u8::arbitrary(g)),
            9 => Step::Compact(Option::<u8>::arbitrary(g)),
            10 => Step::Delete,
            _ => Step::Boundary,
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

/// The message a step appends, given the open calls (results answer a random open one).
fn message(step: &Step, open: &mut Vec<String>, next_id: &mut u32) -> Option<Message> {
    match step {
        Step::User(s) => Some(Message::user(format!("u{s}"))),
        Step::Assistant(s) => Some(Message::assistant(format!("a{s}"))),
        Step::Calls(n) => {
            let calls: Vec<ToolCall> = (0..*n)
                .map(|_| {
                    *next_id += 1;
                    open.push(format!("c{next_id}"));
                    ToolCall::new(format!("c{next_id}"), "tool", format!("{{\"n\":{next_id}}}"))
                })
                .collect();
            Some(Message::assistant_tool_calls("", calls))
        }
        Step::Result(pick) if !open.is_empty() => {
            let id = open.remove(usize::from(*pick) % open.len());
            Some(Message::tool_result(&id, format!("result of {id}")))
        }
        _ => None,
    }
}

/// What a reader sees: the summary (its `upto` and hash), and the messages with their seqs.
type View = (Option<(Seq, SummaryHash)>, Vec<(u64, Message)>);

/// The window computed the slow, obvious way from the whole history as of `at`: the latest
/// deletion and splice at or before `at`, the messages after both, the last `limit` of them, and
/// no tool result whose call is not among them.
fn naive_view(history: &[Event], at: Seq, limit: usize) -> View {
    let log: Vec<&Event> = history.iter().filter(|e| e.seq <= at).collect();
    let base = log.iter().filter(|e| matches!(e.kind, EventKind::SessionDeleted { .. })).map(|e| e.seq).max();
    let splice = log.iter().rev().find_map(|e| match &e.kind {
        EventKind::CompactionSpliced(s) if base.is_none_or(|b| e.seq > b) => Some((s.upto, s.summary_hash)),
        _ => None,
    });
    let lower = splice.map_or(Seq::ZERO, |s| s.0).max(base.unwrap_or(Seq::ZERO));
    let all: Vec<(u64, Message)> =
        log.iter().filter(|e| e.seq > lower).filter_map(|e| e.message().map(|m| (e.seq.get(), m.clone()))).collect();
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
    (splice, out)
}

/// Summaries that name the seqs they cover, so every splice has its own blob. (The content of
/// summaries is another test's subject; random text here must not decide whether a compaction runs.)
fn seq_summarizer() -> std::sync::Arc<common::FnSummarizer> {
    common::FnSummarizer::new(|input| {
        let seqs: Vec<String> = input.messages.iter().map(|m| m.seq.to_string()).collect();
        Box::pin(async move { Ok(format!("summary of {}", seqs.join(","))) })
    })
}

/// An engine and the runtime its reads run on; dropped in this order (the directory last).
struct Fixture {
    engine: Engine,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// The engine config both fixtures share.
fn tuned(mut config: Config) -> Config {
    config.compaction.keep_last_messages = 2;
    // Background extraction would add markers between the reads of one case.
    config.extraction.enabled = false;
    config
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = common::fast_tempdir();
        let mut config = tuned(Config::new(dir.path().join("db")));
        config.durability = Durability::Buffered;
        let engine = Engine::open_with_summarizer(config, seq_summarizer()).expect("open");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Fixture { engine, runtime, _dir: dir }
    })
}

/// The JetStream fixture, set by its test for the length of its quickcheck run.
#[cfg(feature = "nats")]
static NATS_FIXTURE: parking_lot::Mutex<Option<std::sync::Arc<nats_properties::EngineOnCluster>>> =
    parking_lot::Mutex::new(None);

fn fresh_session(engine: &Engine) -> palimpsest::Session {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    engine.session(format!("qc-{}", NEXT.fetch_add(1, Ordering::Relaxed))).expect("valid id")
}

/// Whether `working_memory(limit)` equals the naive fold of the history as it is now. Called after
/// every write, so the engine's window cache is read after every kind of write (a window kept from
/// the previous read, extended by appends, dropped by splices and deletions) and must stay exact.
async fn view_matches_now(s: &palimpsest::Session, limit: usize) -> bool {
    let Some(head) = s.head().await.expect("head") else { return true };
    let history = s.history(Seq::new(1), 10_000).await.expect("history");
    match s.working_memory(limit).await {
        Ok(wm) => {
            let summary = wm.summary.map(|s| (s.upto, s.hash));
            let view = (summary, wm.messages.into_iter().map(|m| (m.seq.get(), m.message)).collect::<Vec<_>>());
            !head.is_deleted() && view == naive_view(&history, head.last_seq(), limit)
        }
        Err(Error::NotFound { .. }) => head.is_deleted(),
        Err(_) => false,
    }
}

fn prop_view_equals_naive_fold(steps: Vec<Step>, limit: u8, batch: u8, at: u8) -> bool {
    let f = fixture();
    view_equals_naive_fold(&f.engine, &f.runtime, steps, limit, batch, at)
}

#[cfg(feature = "nats")]
fn prop_view_equals_naive_fold_on_nats(steps: Vec<Step>, limit: u8, batch: u8, at: u8) -> bool {
    let f = NATS_FIXTURE.lock().clone().expect("the test sets the JetStream fixture");
    view_equals_naive_fold(&f.engine, &f.runtime, steps, limit, batch, at)
}

fn view_equals_naive_fold(
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    steps: Vec<Step>,
    limit: u8,
    batch: u8,
    at: u8,
) -> bool {
    let s = fresh_session(engine);
    let limit = usize::from(limit);
    runtime.block_on(async {
        let (mut open, mut next_id, mut pending) = (Vec::new(), 0, Vec::new());
        let mut written: Vec<Message> = Vec::new();
        for step in steps.iter().take(MAX_STEPS) {
            if let Some(m) = message(step, &mut open, &mut next_id) {
                pending.push(m);
                // Appended in random-sized batches, so single and batched appends are both covered.
                if pending.len() > usize::from(batch % 7) {
                    written.extend(pending.clone());
                    s.append_many(std::mem::take(&mut pending)).await.expect("valid conversation appends");
                    if !view_matches_now(&s, limit).await {
                        return false;
                    }
                }
                continue;
            }
            if !pending.is_empty() {
                written.extend(pending.clone());
                s.append_many(std::mem::take(&mut pending)).await.expect("valid conversation appends");
            }
            let last = s.head().await.expect("head").map_or(0, |h| h.last_seq().get());
            match step {
                Step::Compact(pick) => {
                    let request = match pick {
                        Some(p) if last > 0 => CompactionRequest::upto(Seq::new(u64::from(*p) % last + 1)),
                        _ => CompactionRequest::default(),
                    };
                    match s.compact(request).await {
                        Ok(_) | Err(Error::NotFound { .. }) => {}
                        Err(e) => panic!("compaction: {e}"),
                    }
                }
                Step::Delete | Step::Boundary if s.working_memory(1).await.is_ok() => {
                    if matches!(step, Step::Delete) {
                        s.delete().await.expect("delete");
                        open.clear();
                        written.clear();
                    } else {
                        s.close_episode().await.expect("close episode");
                    }
                }
                _ => {}
            }
            if !view_matches_now(&s, limit).await {
                return false;
            }
        }
        if !pending.is_empty() {
            written.extend(pending.clone());
            s.append_many(pending).await.expect("valid conversation appends");
        }
        let Some(stored_head) = s.head().await.expect("head") else { return true };
        let history = s.history(Seq::new(1), 10_000).await.expect("history");
        let read_back: Vec<Message> = history.iter().filter_map(|e| e.message().cloned()).collect();
        let stamped: Vec<Message> =
            written.iter().zip(&read_back).map(|(m, r)| m.clone().with_created_at_ms(r.created_at_ms)).collect();
        if stored_head != replay(&history) || read_back != stamped || read_back.len() != written.len() {
            return false;
        }
        let as_seen = |wm: Result<palimpsest::WorkingMemory, Error>| {
            wm.map(|wm| {
                let summary = wm.summary.map(|s| (s.upto, s.hash));
                (summary, wm.messages.into_iter().map(|m| (m.seq.get(), m.message)).collect::<Vec<_>>())
            })
        };
        let live = !stored_head.is_deleted();
        let now = as_seen(s.working_memory(limit).await);
        let now_ok = match now {
            Ok(view) => live && view == naive_view(&history, stored_head.last_seq(), limit),
            Err(Error::NotFound { .. }) => !live,
            Err(_) => false,
        };
        // And as of a past seq after the deletion (time travel).
        let (base, last) = (stored_head.base().get(), stored_head.last_seq().get());
        let past = Seq::new(base + 1 + u64::from(at) % (last - base).max(1));
        let past_ok = !live
            || past.get() > last
            || as_seen(s.working_memory_at(past, limit).await).is_ok_and(|v| v == naive_view(&history, past, limit));
        now_ok && past_ok
    })
}

/// A random log that obeys every rule, for the fold property.
fn log(steps: &[Step]) -> Vec<Event> {
    let (mut open, mut next_id, mut events) = (Vec::new(), 0, Vec::<Event>::new());
    let mut head = Head::default();
    for step in steps.iter().take(MAX_STEPS) {
        let seq = Seq::new(events.len() as u64 + 1);
        let kind = match (step, message(step, &mut open, &mut next_id)) {
            (_, Some(m)) => EventKind::MessageAppended(m),
            (Step::Compact(_), _) if open.is_empty() && head.last_seq() > head.upto().max(head.base()) => {
                let lower = head.upto().max(head.base());
                EventKind::CompactionSpliced(Splice {
                    upto: head.last_seq(),
                    previous_upto: lower,
                    summary_hash: SummaryHash::of(&format!("summary at {seq}")),
                    n_messages: 0,
                    summary_bytes: 0,
                    summarizer: "test".to_string(),
                })
            }
            (Step::Delete, _) => {
                open.clear();
                EventKind::SessionDeleted { n_events_removed: 0 }
            }
            (Step::Boundary, _) => {
                EventKind::EpisodeBoundary { episode: head.episode(), reason: BoundaryReason::Explicit }
            }
            _ => continue,
        };
        let event = Event { seq, at_ms: 7, kind };
        apply(&mut head, &event);
        events.push(event);
    }
    events
}

/// The head's fields computed directly from the whole log, without `apply`.
fn model_agrees(head: &Head, events: &[Event]) -> bool {
    let base = events.iter().rev().find(|e| matches!(e.kind, EventKind::SessionDeleted { .. })).map(|e| e.seq);
    let live: Vec<&Event> = events.iter().filter(|e| base.is_none_or(|b| e.seq > b)).collect();
    let messages: Vec<(Seq, &Message)> = live.iter().filter_map(|e| e.message().map(|m| (e.seq, m))).collect();
    let last_boundary = live.iter().rev().find(|e| matches!(e.kind, EventKind::EpisodeBoundary { .. })).map(|e| e.seq);
    let n_boundaries = live.iter().filter(|e| matches!(e.kind, EventKind::EpisodeBoundary { .. })).count() as u64;
    let turns = messages
        .iter()
        .filter(|(seq, m)| m.role == palimpsest::Role::User && last_boundary.is_none_or(|b| *seq > b))
        .count() as u64;
    let splice = live.iter().rev().find_map(|e| match &e.kind {
        EventKind::CompactionSpliced(s) => Some((s.upto, s.summary_hash, e.seq)),
        _ => None,
    });
    let answered: Vec<&str> = messages.iter().filter_map(|(_, m)| m.tool_call_id.as_deref()).collect();
    let open: Vec<(String, Seq)> = messages
        .iter()
        .flat_map(|(seq, m)| m.tool_calls.iter().map(move |c| (c.id.clone(), *seq)))
        .filter(|(id, _)| !answered.contains(&id.as_str()))
        .collect();
    // The last 16 answered calls get the precise refusal for a second result.
    let second_results_named = answered.iter().rev().take(16).all(|id| {
        matches!(
            check_message(head, &Message::tool_result(*id, "again"), 0, 64),
            Err(Error::ToolCallAlreadyAnswered { .. })
        )
    });
    head.last_seq() == events.last().map_or(Seq::ZERO, |e| e.seq)
        && head.base() == base.unwrap_or(Seq::ZERO)
        && head.is_deleted() == (base.is_some() && messages.is_empty())
        && head.n_messages() == messages.len() as u64
        && head.episode() == n_boundaries
        && head.episode_turns() == turns
        && head.splice().map(|s| (s.upto, s.summary_hash, s.at)) == splice
        && head.open_calls().iter().map(|c| (c.id.clone(), c.seq)).collect::<Vec<_>>() == open
        && second_results_named
}

fn prop_fold_with_a_stored_head_between_parts_agrees_with_the_model(steps: Vec<Step>, cut: u8) -> bool {
    let events = log(&steps);
    let cut = usize::from(cut).min(events.len());
    // The head is stored between writes: fold the first part, store and reload it, fold the rest.
    let stored = serde_json::to_string(&replay(&events[..cut])).expect("a head serializes");
    let mut head: Head = serde_json::from_str(&stored).expect("and deserializes");
    for e in &events[cut..] {
        apply(&mut head, e);
    }
    model_agrees(&head, &events)
}

#[test]
fn working_memory_equals_a_naive_fold_over_the_whole_history() {
    QuickCheck::new().quickcheck(prop_view_equals_naive_fold as fn(Vec<Step>, u8, u8, u8) -> bool);
}

/// The view property on a 3-node JetStream cluster (`nats_properties::cluster_cases` cases), each
/// case a fresh session on the same streams.
#[cfg(feature = "nats")]
#[test]
fn working_memory_equals_a_naive_fold_on_jetstream() {
    let fixture = nats_properties::EngineOnCluster::start("fold", seq_summarizer(), |c| *c = tuned(c.clone()));
    nats_properties::quickcheck_on_cluster(
        &NATS_FIXTURE,
        fixture,
        nats_properties::cluster_cases(),
        prop_view_equals_naive_fold_on_nats as fn(Vec<Step>, u8, u8, u8) -> bool,
    );
}

#[test]
fn the_fold_with_its_head_stored_midway_agrees_with_a_model_of_the_whole_log() {
    QuickCheck::new()
        .quickcheck(prop_fold_with_a_stored_head_between_parts_agrees_with_the_model as fn(Vec<Step>, u8) -> bool);
}
