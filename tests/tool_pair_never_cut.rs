//! Model-checked compaction: random conversations (tool calls answered in any order, some never)
//! interleaved with compactions at random cut points, some of which fail in the summarizer.
//! After every step: no splice separates a tool call from its result, `upto` only moves forward,
//! a failed compaction leaves the session byte-identical, and working memory equals the summary
//! plus the naive window of the messages after `upto`. On fjall, and on a 3-node JetStream
//! cluster (a twentieth of the cases: every step reads the whole history over the network).

mod common;
#[cfg(feature = "nats")]
mod nats_common;
#[cfg(feature = "nats")]
mod nats_properties;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{FnSummarizer, snapshot};
use palimpsest::{CompactionOutcome, CompactionRequest, Engine, Error, Event, EventKind, Message, Seq, ToolCall};
use quickcheck::{Arbitrary, Gen, QuickCheck};

#[derive(Clone, Debug)]
enum Op {
    User,
    Calls(u8),
    Result(u8),
    Compact(u8),
    FailedCompact(u8),
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 8 {
            0 | 1 => Op::User,
            2 | 3 => Op::Calls(u8::arbitrary(g) % 3 + 1),
            4 | 5 => Op::Result(u8::arbitrary(g)),
            6 => Op::Compact(u8::arbitrary(g)),
            _ => Op::FailedCompact(u8::arbitrary(g)),
        }
    }
}

struct Fixture {
    engine: Engine,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// Summaries that fail when the request's focus is "fail".
fn summarizer() -> std::sync::Arc<FnSummarizer> {
    FnSummarizer::new(|input| {
        Box::pin(async move {
            if input.focus.as_deref() == Some("fail") {
                return Err(Error::Summarizer { status: Some(500), message: "boom".into() });
            }
            Ok(format!("{} + {} messages", input.previous_summary.unwrap_or_default(), input.messages.len()))
        })
    })
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (engine, dir) = common::engine_with(summarizer(), |_| {});
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Fixture { engine, runtime, _dir: dir }
    })
}

/// Every call at or before `upto` has its result at or before `upto`.
fn pair_safe(history: &[Event], upto: Seq) -> bool {
    let calls = history.iter().filter(|e| e.seq <= upto).filter_map(|e| e.message()).flat_map(|m| &m.tool_calls);
    calls.into_iter().all(|c| {
        history
            .iter()
            .filter(|e| e.seq <= upto)
            .filter_map(|e| e.message())
            .any(|m| m.tool_call_id.as_ref() == Some(&c.id))
    })
}

fn check_invariants(history: &[Event], wm: &palimpsest::WorkingMemory) -> Result<(), String> {
    let mut last_upto = Seq::ZERO;
    for e in history {
        if let EventKind::CompactionSpliced(s) = &e.kind {
            if s.previous_upto != last_upto || s.upto <= last_upto || s.upto >= e.seq {
                return Err(format!("splice at {} moves {} -> {} after {last_upto}", e.seq, s.previous_upto, s.upto));
            }
            if !pair_safe(history, s.upto) {
                return Err(format!("splice at {} cuts a tool pair at {}", e.seq, s.upto));
            }
            last_upto = s.upto;
        }
    }
    if wm.summary.as_ref().map_or(Seq::ZERO, |s| s.upto) != last_upto {
        return Err(format!("view summary {:?} but last splice {last_upto}", wm.summary));
    }
    let after: Vec<(Seq, &Message)> =
        history.iter().filter(|e| e.seq > last_upto).filter_map(|e| e.message().map(|m| (e.seq, m))).collect();
    let window = &after[after.len().saturating_sub(1000)..];
    let expected: Vec<Seq> = window
        .iter()
        .enumerate()
        .filter(|(i, (_, m))| {
            m.tool_call_id
                .as_ref()
                .is_none_or(|id| window[..*i].iter().any(|(_, c)| c.tool_calls.iter().any(|t| &t.id == id)))
        })
        .map(|(_, (seq, _))| *seq)
        .collect();
    let got: Vec<Seq> = wm.messages.iter().map(|m| m.seq).collect();
    if got != expected {
        return Err(format!("window {got:?} != naive {expected:?}"));
    }
    Ok(())
}

fn prop_no_splice_cuts_a_tool_pair(ops: Vec<Op>) -> Result<(), String> {
    let f = fixture();
    no_splice_cuts_a_tool_pair(&f.engine, &f.runtime, ops)
}

/// The JetStream fixture, set by its test for the length of its quickcheck run.
#[cfg(feature = "nats")]
static NATS_FIXTURE: parking_lot::Mutex<Option<std::sync::Arc<nats_properties::EngineOnCluster>>> =
    parking_lot::Mutex::new(None);

#[cfg(feature = "nats")]
fn prop_no_splice_cuts_a_tool_pair_on_nats(ops: Vec<Op>) -> Result<(), String> {
    let f = NATS_FIXTURE.lock().clone().expect("the test sets the JetStream fixture");
    no_splice_cuts_a_tool_pair(&f.engine, &f.runtime, ops)
}

fn no_splice_cuts_a_tool_pair(engine: &Engine, runtime: &tokio::runtime::Runtime, ops: Vec<Op>) -> Result<(), String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let s = engine.session(format!("pair-{}", NEXT.fetch_add(1, Ordering::Relaxed))).expect("id");
    runtime.block_on(async {
        s.append(Message::user("start")).await.map_err(|e| e.to_string())?;
        let (mut open, mut next_id) = (Vec::<String>::new(), 0);
        for op in ops {
            let last = s.head().await.map_err(|e| e.to_string())?.map_or(0, |h| h.last_seq().get());
            let cut = |x: u8| Seq::new((u64::from(x) % last) + 1);
            match op {
                Op::User => drop(s.append(Message::user("more")).await.map_err(|e| e.to_string())?),
                Op::Calls(n) => {
                    let calls = (0..n)
                        .map(|_| {
                            next_id += 1;
                            open.push(format!("c{next_id}"));
                            ToolCall::new(format!("c{next_id}"), "t", "{}")
                        })
                        .collect();
                    s.append(Message::assistant_tool_calls("", calls)).await.map_err(|e| e.to_string())?;
                }
                Op::Result(pick) if !open.is_empty() => {
                    let id = open.remove(usize::from(pick) % open.len());
                    s.append(Message::tool_result(&id, "r")).await.map_err(|e| e.to_string())?;
                }
                Op::Result(_) => {}
                Op::Compact(x) => match s.compact(CompactionRequest::upto(cut(x))).await {
                    Ok(CompactionOutcome::Spliced { upto, requested_upto, .. }) if upto <= requested_upto => {}
                    Ok(CompactionOutcome::NothingToCompact { .. }) => {}
                    other => return Err(format!("compaction gave {other:?}")),
                },
                Op::FailedCompact(x) => {
                    let before = snapshot(&s).await;
                    let req = CompactionRequest::upto(cut(x)).with_focus("fail");
                    match s.compact(req).await {
                        Err(Error::Summarizer { .. }) | Ok(CompactionOutcome::NothingToCompact { .. }) => {}
                        other => return Err(format!("failing compaction gave {other:?}")),
                    }
                    if snapshot(&s).await != before {
                        return Err("a failed compaction changed the session".to_string());
                    }
                }
            }
            let history = s.history(Seq::new(1), 10_000).await.map_err(|e| e.to_string())?;
            let wm = s.working_memory(1000).await.map_err(|e| e.to_string())?;
            check_invariants(&history, &wm)?;
        }
        Ok(())
    })
}

#[test]
fn no_splice_ever_separates_a_tool_call_from_its_result() {
    QuickCheck::new().quickcheck(prop_no_splice_cuts_a_tool_pair as fn(Vec<Op>) -> Result<(), String>);
}

#[cfg(feature = "nats")]
#[test]
fn no_splice_ever_separates_a_tool_call_from_its_result_on_jetstream() {
    let fixture = nats_properties::EngineOnCluster::start("pairs", summarizer(), |_| {});
    nats_properties::quickcheck_on_cluster(
        &NATS_FIXTURE,
        fixture,
        // Every step reads the whole history back, so a case costs O(steps^2) round trips.
        nats_properties::cluster_cases() / 2,
        prop_no_splice_cuts_a_tool_pair_on_nats as fn(Vec<Op>) -> Result<(), String>,
    );
}
