//! Long spans are summarized in chunks: concurrently under `compaction.chunk_concurrency` (the
//! peak in flight never exceeds it), each chunk with its own timeout, then merged under the
//! shorter merge timeout whose fallback is the concatenated chunk summaries. The focus text
//! reaches every call; garbage replies fail the compaction. On fjall all on tokio's paused clock;
//! on JetStream on the real clock (see `on_both_backends!`).

mod backends;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backends::Store;
use common::{FnSummarizer, engine_with, snapshot};
use palimpsest::{CompactionOutcome, CompactionRequest, Error, Message, Seq, Session, Stage, SummaryTask};

const CHUNK_BYTES: u64 = 4_096;

async fn long_session(engine: &palimpsest::Engine) -> Session {
    let s = engine.session("long").unwrap();
    for i in 0..60 {
        s.append(Message::user(format!("request {i}: {}", "lorem ipsum ".repeat(40)))).await.unwrap();
    }
    s
}

fn tune(c: &mut palimpsest::Config) {
    // The long session's 60 user turns stay one episode, so seqs are those of the messages.
    c.episodes.max_turns_per_episode = 200;
    c.compaction.chunk_bytes = CHUNK_BYTES;
    c.compaction.chunk_concurrency = 3;
    c.compaction.chunk_timeout_ms = 10_000;
    c.compaction.merge_timeout_ms = 2_000;
    c.compaction.keep_last_messages = 0;
}

async fn chunks_run_concurrently_but_never_above_the_bound(store: Store) {
    let (in_flight, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let summarizer = FnSummarizer::new({
        let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
        move |input| {
            let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
            Box::pin(async move {
                if let SummaryTask::Chunk { index, .. } = input.task {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Later chunks finish first, so results arrive out of order.
                    tokio::time::sleep(Duration::from_millis(1_000 - 10 * index as u64)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    return Ok(format!("chunk {index}"));
                }
                Ok(format!("merged {}", input.partials.join(",")))
            })
        }
    });
    let engine = store.open_with_summarizer(summarizer.clone(), tune).await;
    let s = long_session(&engine).await;
    let mut progress = engine.subscribe_progress();
    let outcome = s.compact(CompactionRequest::default().with_focus("budget")).await.unwrap();
    assert!(matches!(outcome, CompactionOutcome::Spliced { upto, .. } if upto == Seq::new(60)), "{outcome:?}");

    let calls = summarizer.calls.lock().clone();
    let n_chunks = calls.iter().filter(|c| matches!(c.task, SummaryTask::Chunk { .. })).count();
    assert!(n_chunks >= 6, "60 messages of ~500 bytes in 4 KiB chunks: {n_chunks}");
    assert_eq!(peak.load(Ordering::SeqCst), 3, "the bound is reached and never exceeded");
    // The merge sees the partials in chunk order, and everything carries the focus.
    let merge = calls.iter().find(|c| c.task == SummaryTask::Merge).expect("a merge call");
    let expected: Vec<String> = (0..n_chunks).map(|i| format!("chunk {i}")).collect();
    assert_eq!(merge.partials, expected);
    assert!(calls.iter().all(|c| c.focus.as_deref() == Some("budget")));
    // No chunk splits a message; chunks cover the span in order.
    let seqs: Vec<u64> = calls.iter().flat_map(|c| c.messages.iter().map(|m| m.seq.get())).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    let text = s.working_memory(10).await.unwrap().summary.unwrap().text;
    assert!(text.starts_with("merged chunk 0,chunk 1"), "{text}");

    let stages: Vec<Stage> = std::iter::from_fn(|| progress.try_recv().ok()).map(|p| p.stage).collect();
    assert!(matches!(&stages[0], Stage::Loaded { n_messages: 60, .. }), "{stages:?}");
    assert!(matches!(&stages[1], Stage::Strategy { n_chunks: n, .. } if *n == n_chunks as u64));
    assert_eq!(stages.iter().filter(|s| matches!(s, Stage::ChunkDone { ok: true, .. })).count(), n_chunks);
    assert!(stages.iter().any(|s| matches!(s, Stage::MergeDone { fell_back: false, .. })));
    assert!(matches!(stages.last(), Some(Stage::Spliced { .. })));
}

// fjall-only: it asserts the merge's duration exactly, which only tokio's paused clock gives, and
// a JetStream test waits on the network on the real clock.
#[tokio::test(start_paused = true)]
async fn a_merge_that_times_out_falls_back_to_the_concatenated_chunk_summaries() {
    let summarizer = FnSummarizer::new(|input| {
        Box::pin(async move {
            match input.task {
                SummaryTask::Merge => std::future::pending().await,
                SummaryTask::Chunk { index, .. } => Ok(format!("part {index}")),
                SummaryTask::Whole => unreachable!("the span is long"),
            }
        })
    });
    let (engine, _dir) = engine_with(summarizer, tune);
    let s = long_session(&engine).await;
    let mut progress = engine.subscribe_progress();
    let outcome = s.compact(CompactionRequest::default()).await.unwrap();
    assert!(matches!(outcome, CompactionOutcome::Spliced { .. }), "{outcome:?}");
    let text = s.working_memory(1).await.unwrap().summary.unwrap().text;
    assert!(text.starts_with("part 0\n\npart 1\n\npart 2"), "{text}");
    let stages: Vec<Stage> = std::iter::from_fn(|| progress.try_recv().ok()).map(|p| p.stage).collect();
    assert!(stages.iter().any(|s| matches!(s, Stage::MergeDone { fell_back: true, duration_ms: 2_000 })), "{stages:?}");
}

async fn a_chunk_that_times_out_fails_the_compaction_cleanly(store: Store) {
    let summarizer = FnSummarizer::new(|input| {
        Box::pin(async move {
            match input.task {
                SummaryTask::Chunk { index: 2, .. } => std::future::pending().await,
                _ => Ok("ok".to_string()),
            }
        })
    });
    let engine = store.open_with_summarizer(summarizer, tune).await;
    let s = long_session(&engine).await;
    let before = snapshot(&s).await;
    let err = s.compact(CompactionRequest::default()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { after_ms: 10_000, .. }), "{err:?}");
    assert_eq!(snapshot(&s).await, before);
    assert_eq!(engine.compactions_in_flight(), 0);
}

async fn garbage_from_the_summarizer_is_a_failed_compaction_not_a_summary(store: Store) {
    // Control characters and escape sequences are cleaned, not refused (content_never_fails_compaction.rs);
    // a reply that is nothing else is empty once cleaned, and that is garbage.
    for garbage in ["", "   \n ", "\u{7}\0\x1b[0m\r\n"] {
        let reply = garbage.to_string();
        let summarizer = FnSummarizer::new(move |_| {
            let reply = reply.clone();
            Box::pin(async move { Ok(reply) })
        });
        let fresh = store.sibling().await;
        let engine = fresh.open_with_summarizer(summarizer, |c| c.compaction.keep_last_messages = 0).await;
        let s = engine.session("g").unwrap();
        s.append(Message::user("hello")).await.unwrap();
        let before = snapshot(&s).await;
        let err = s.compact(CompactionRequest::default()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Summarizer { status: None, message } if message.starts_with("rejected reply")),
            "{err:?}"
        );
        assert_eq!(snapshot(&s).await, before);
    }
}

/// A model that ignores "stay under N characters" does not fail the compaction: its reply is
/// text, so it is cut to `compaction.max_summary_bytes` on a char boundary (marked `...`).
async fn an_over_long_reply_is_cut_to_the_bound_not_refused(store: Store) {
    let summarizer = FnSummarizer::new(move |_| Box::pin(async move { Ok("é".repeat(20_000)) }));
    let engine = store
        .open_with_summarizer(summarizer, |c| {
            c.compaction.keep_last_messages = 0;
            c.compaction.max_summary_bytes = 1_001;
        })
        .await;
    let s = engine.session("long").unwrap();
    s.append(Message::user("hello")).await.unwrap();
    let outcome = s.compact(CompactionRequest::default()).await.expect("an over-long reply is cut, not refused");
    assert!(matches!(outcome, palimpsest::CompactionOutcome::Spliced { .. }), "{outcome:?}");
    let summary = s.working_memory(10).await.unwrap().summary.expect("a summary").text;
    assert!(summary.len() <= 1_001 && summary.ends_with("...") && summary.starts_with("éé"), "{} bytes", summary.len());
}

async fn the_embedded_summarizer_keeps_goals_tools_and_open_questions(store: Store) {
    let engine = store
        .open_with_summarizer(Arc::new(palimpsest::ExtractiveSummarizer), |c| c.compaction.keep_last_messages = 1)
        .await;
    let s = engine.session("ex").unwrap();
    s.append(Message::user("Book a flight to Oslo under 300 EUR. Can you also check hotels?")).await.unwrap();
    s.append(Message::assistant_tool_calls(
        "",
        vec![palimpsest::ToolCall::new("f1", "search_flights", r#"{"to":"OSL","max_eur":300}"#)],
    ))
    .await
    .unwrap();
    s.append(Message::tool_result("f1", "SK4411 at 249 EUR")).await.unwrap();
    s.append(Message::assistant("Booked SK4411 for 249 EUR.")).await.unwrap();
    s.append(Message::user("Which terminal does it leave from?")).await.unwrap();
    s.append(Message::user("thanks")).await.unwrap();
    let outcome = s.compact(CompactionRequest::default().with_focus("price")).await.unwrap();
    assert!(matches!(outcome, CompactionOutcome::Spliced { .. }), "{outcome:?}");
    let text = s.working_memory(5).await.unwrap().summary.unwrap().text;
    for needle in ["Oslo", "search_flights", "SK4411 at 249 EUR", "Booked SK4411", "Focus: price"] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // A question the assistant answered is not open; the one after the last answer is.
    let open = &text[text.find("Open questions:").expect("an open question")..];
    assert!(open.contains("user asked: Which terminal does it leave from?"), "{text}");
    assert!(!open.contains("check hotels?"), "an answered question is listed as open:\n{text}");
}

on_both_backends!(
    paused: chunks_run_concurrently_but_never_above_the_bound,
    a_chunk_that_times_out_fails_the_compaction_cleanly,
    garbage_from_the_summarizer_is_a_failed_compaction_not_a_summary,
    an_over_long_reply_is_cut_to_the_bound_not_refused,
);
on_both_backends!(the_embedded_summarizer_keeps_goals_tools_and_open_questions);
