//! Background memory extraction: one at a time per session and in order, sessions in parallel,
//! a hard timeout, drain with and without cancellation, a registry that never grows with the
//! sessions seen, and no lost or duplicated memories when extractions race into one namespace.
//! The background budget bounds every background model call, however many jobs burst at once.
//!
//! What depends on storage (the records, the events counting them, spans read from the log) runs
//! on both backends (`on_both_backends!`); the queue's timing is pinned on tokio's paused clock,
//! which only the embedded backend can run under (a network client's timeouts would fire at once),
//! and those tests stay on fjall.

mod backends;
mod common;
mod guards_common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backends::{Store, extracted_events};
use guards_common::{FnExtractor, engine_with_parts};
use palimpsest::{AuditOptions, CompactionOutcome, CompactionRequest, Components, Config, Engine, Message, Seq};
use tokio::time::Instant;

fn with_extractor(extractor: Arc<FnExtractor>, tune: impl FnOnce(&mut Config)) -> (Engine, tempfile::TempDir) {
    engine_with_parts(Components { extractor: Some(extractor), ..Components::default() }, tune)
}

/// Appends `n` user messages `"{prefix} {i}"` and returns the last seq.
async fn fill(engine: &Engine, id: &str, prefix: &str, n: usize) -> Seq {
    let s = engine.session(id).expect("id");
    let batch = (0..n).map(|i| Message::user(format!("{prefix} {i}"))).collect();
    s.append_many(batch).await.expect("append").end.get().checked_sub(1).map(Seq::new).expect("non-empty")
}

#[tokio::test(start_paused = true)]
async fn extractions_of_one_session_run_one_at_a_time_in_order() {
    let extractor = FnExtractor::echo_after(100);
    let (engine, _dir) = with_extractor(Arc::clone(&extractor), |_| {});
    fill(&engine, "alice:1", "fact", 10).await;
    let s = engine.session("alice:1").expect("id");
    for upto in [2, 4, 6, 8, 10] {
        assert!(s.schedule_extraction(Seq::new(upto - 2), Seq::new(upto)).expect("valid span"));
    }
    let start = Instant::now();
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert_eq!(start.elapsed(), Duration::from_millis(500), "five 100 ms jobs back to back");
    assert_eq!(extractor.peak.load(Ordering::SeqCst), 1, "never two at once for one session");
    let order: Vec<u64> = extractor.calls.lock().iter().map(|(_, upto)| *upto).collect();
    assert_eq!(order, [2, 4, 6, 8, 10]);
    assert_eq!(engine.memories("alice", 100).expect("memories").len(), 10);
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_scheduled, stats.extractions_done, stats.memories_written), (5, 5, 10));
    assert_eq!((stats.extractions_pending, stats.extractions_running, stats.extraction_sessions), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn sessions_extract_in_parallel() {
    let extractor = FnExtractor::echo_after(1_000);
    let (engine, _dir) = with_extractor(Arc::clone(&extractor), |c| c.background.model_concurrency = 2);
    for id in ["alice:1", "bob:1"] {
        let upto = fill(&engine, id, "fact", 3).await;
        engine.session(id).expect("id").schedule_extraction(Seq::ZERO, upto).expect("span");
    }
    let start = Instant::now();
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert_eq!(start.elapsed(), Duration::from_millis(1_000), "both ran at once");
    assert_eq!(extractor.peak.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_100_background_jobs_never_exceeds_the_budget() {
    let extractor = FnExtractor::echo_after(50);
    let (engine, _dir) = with_extractor(Arc::clone(&extractor), |c| c.background.model_concurrency = 3);
    for i in 0..100 {
        let id = format!("user{i}:chat");
        let upto = fill(&engine, &id, "fact", 1).await;
        engine.session(id.as_str()).expect("id").schedule_extraction(Seq::ZERO, upto).expect("span");
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let stats = engine.guard_stats();
    assert_eq!((stats.background_permits, stats.background_permits_in_use), (3, 3));
    assert_eq!(stats.background_waiters, 97, "every other job waits for a permit");
    assert_eq!(engine.drain(Duration::from_secs(600), false).await.left, 0);
    assert_eq!(extractor.peak.load(Ordering::SeqCst), 3, "the peak is the budget, never more");
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_done, stats.memories_written, stats.background_waiters), (100, 100, 0));
}

#[tokio::test(start_paused = true)]
async fn background_compactions_share_the_budget_and_foreground_ones_do_not_wait() {
    let in_flight = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let summarizer = {
        let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
        common::FnSummarizer::new(move |_| {
            let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
            Box::pin(async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok("summary".to_string())
            })
        })
    };
    let components = Components { summarizer: Some(summarizer), ..Components::default() };
    let (engine, _dir) = engine_with_parts(components, |c| {
        c.background.model_concurrency = 2;
        c.compaction.keep_last_messages = 1;
    });
    let mut handles = Vec::new();
    for i in 0..100 {
        let id = format!("s{i}");
        fill(&engine, &id, "step", 3).await;
        handles.push(
            engine
                .session(id.as_str())
                .expect("id")
                .compact_in_background(CompactionRequest::default())
                .expect("runtime"),
        );
    }
    // A foreground compaction runs alongside the background ones, without a permit.
    fill(&engine, "fg", "step", 3).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let start = Instant::now();
    let fg = engine.session("fg").expect("id").compact(CompactionRequest::default()).await.expect("compacts");
    assert!(matches!(fg, CompactionOutcome::Spliced { .. }));
    assert_eq!(start.elapsed(), Duration::from_millis(100), "the foreground did not queue behind the background");
    for handle in handles {
        let outcome = handle.await.expect("joins").expect("compacts");
        assert!(matches!(outcome, CompactionOutcome::Spliced { .. }), "{outcome:?}");
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3, "two background calls and the foreground one");
    // Every splice scheduled an extraction of its span, under the same budget.
    assert_eq!(engine.drain(Duration::from_secs(600), false).await.left, 0);
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_done, stats.background_permits_in_use), (101, 0));
}

#[tokio::test(start_paused = true)]
async fn an_extraction_past_its_timeout_is_stopped_and_recorded() {
    let extractor = FnExtractor::echo_after(10_000);
    let (engine, _dir) = with_extractor(extractor, |c| {
        c.background.extraction_timeout_ms = 1_000;
        // The namespace lock waits inside the job, so its bound may not exceed the job's (SPEC.md section 8).
        c.locks.timeout_ms = Some(1_000);
    });
    let upto = fill(&engine, "alice:1", "fact", 2).await;
    let s = engine.session("alice:1").expect("id");
    s.schedule_extraction(Seq::ZERO, upto).expect("span");
    let start = Instant::now();
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert_eq!(start.elapsed(), Duration::from_millis(1_000));
    let error = engine.last_extraction_error(s.id()).expect("recorded");
    assert!(error.message.contains("timed out after 1000 ms"), "{error:?}");
    assert_eq!((error.duration_ms, error.upto), (1_000, upto));
    assert!(engine.memories("alice", 10).expect("read").is_empty());
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_timed_out, stats.extractions_done, stats.background_permits_in_use), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn failures_are_recorded_bounded_in_length() {
    let extractor = FnExtractor::new(|_| {
        Box::pin(async { Err(palimpsest::Error::Summarizer { status: Some(500), message: "x".repeat(5_000) }) })
    });
    let (engine, _dir) = with_extractor(extractor, |_| {});
    let upto = fill(&engine, "alice:1", "fact", 2).await;
    let s = engine.session("alice:1").expect("id");
    s.schedule_extraction(Seq::ZERO, upto).expect("span");
    engine.drain(Duration::from_secs(60), false).await;
    let error = engine.last_extraction_error(s.id()).expect("recorded");
    assert!(error.message.len() <= palimpsest::MAX_EXTRACTION_ERROR_BYTES, "{} bytes", error.message.len());
    assert_eq!(engine.guard_stats().extractions_failed, 1);
    assert!(engine.last_extraction_error(&palimpsest::SessionId::new("other").expect("id")).is_none());
}

#[tokio::test(start_paused = true)]
async fn drain_without_cancellation_reports_what_is_left() {
    let extractor = FnExtractor::echo_after(5_000);
    let (engine, _dir) = with_extractor(extractor, |_| {});
    let upto = fill(&engine, "alice:1", "fact", 4).await;
    let s = engine.session("alice:1").expect("id");
    s.schedule_extraction(Seq::ZERO, Seq::new(2)).expect("span");
    s.schedule_extraction(Seq::new(2), upto).expect("span");
    let report = engine.drain(Duration::from_millis(1_000), false).await;
    assert_eq!((report.left, report.cancelled), (2, 0), "one running, one queued");
    // Left alone, they finish.
    let report = engine.drain(Duration::from_secs(60), false).await;
    assert_eq!((report.left, report.cancelled), (0, 0));
    assert_eq!(engine.memories("alice", 10).expect("read").len(), 4);
}

#[tokio::test(start_paused = true)]
async fn drain_with_cancellation_leaves_nothing_behind() {
    let extractor = FnExtractor::new(|_| Box::pin(std::future::pending()));
    let (engine, _dir) = with_extractor(Arc::clone(&extractor), |c| c.background.model_concurrency = 1);
    for id in ["alice:1", "alice:2", "bob:1"] {
        let upto = fill(&engine, id, "fact", 2).await;
        let s = engine.session(id).expect("id");
        s.schedule_extraction(Seq::ZERO, Seq::new(1)).expect("span");
        s.schedule_extraction(Seq::new(1), upto).expect("span");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_running, stats.extractions_pending, stats.background_waiters), (3, 3, 2));
    let report = engine.drain(Duration::from_millis(1_000), true).await;
    assert_eq!((report.left, report.cancelled), (0, 6));
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_running, stats.extractions_pending, stats.extraction_sessions), (0, 0, 0));
    assert_eq!((stats.extractions_cancelled, stats.background_permits_in_use, stats.background_waiters), (6, 0, 0));
    assert_eq!(extractor.in_flight.load(Ordering::SeqCst), 0, "no extractor call survives");
    assert_eq!(engine.namespaces_locked(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_registry_does_not_grow_with_the_sessions_seen() {
    let (engine, _dir) = with_extractor(FnExtractor::echo_after(1), |c| c.background.model_concurrency = 8);
    for round in 0..5 {
        for i in 0..200 {
            let id = format!("u{i}:r{round}");
            let upto = fill(&engine, &id, "fact", 1).await;
            engine.session(id.as_str()).expect("id").schedule_extraction(Seq::ZERO, upto).expect("span");
        }
        assert!(engine.guard_stats().extraction_sessions > 0);
        assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
        assert_eq!(engine.guard_stats().extraction_sessions, 0, "round {round}: idle sessions leave the registry");
    }
    assert_eq!(engine.guard_stats().extractions_done, 1_000);
}

#[tokio::test(start_paused = true)]
async fn the_queue_of_a_session_has_a_depth() {
    let extractor = FnExtractor::echo_after(1_000);
    let (engine, _dir) = with_extractor(extractor, |c| c.background.extraction_queue_depth = 2);
    let upto = fill(&engine, "alice:1", "fact", 2).await;
    let s = engine.session("alice:1").expect("id");
    let queued: Vec<bool> = (0..4).map(|_| s.schedule_extraction(Seq::ZERO, upto).expect("span")).collect();
    assert_eq!(queued, [true, true, false, false], "the worker has not started: two fit");
    assert_eq!(engine.guard_stats().extractions_skipped, 2);
    assert!(engine.last_extraction_error(s.id()).expect("recorded").message.contains("queue is full"));
    engine.drain(Duration::from_secs(60), false).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_unwound_by_its_extractor_leaves_the_registry_and_its_queue_goes_on() {
    // The panic is in the extractor's call itself, before any future exists: it unwinds the
    // session's worker, not just the job.
    let extractor = FnExtractor::new(|input| {
        let boom = input.messages.iter().any(|m| m.message.content.contains("boom"));
        assert!(!boom, "extractor bug");
        Box::pin(async move { Ok(input.messages.iter().map(|m| m.message.content.clone()).collect()) })
    });
    let (engine, _dir) = with_extractor(extractor, |_| {});
    // Alone in its queue: the entry goes. Followed by another job: that job still runs.
    let alone = engine.session("alice:1").expect("id");
    alone.append(Message::user("boom")).await.expect("append");
    alone.schedule_extraction(Seq::ZERO, Seq::new(1)).expect("span");
    let followed = engine.session("bob:1").expect("id");
    followed.append_many(vec![Message::user("boom"), Message::user("fact")]).await.expect("append");
    followed.schedule_extraction(Seq::ZERO, Seq::new(1)).expect("span");
    followed.schedule_extraction(Seq::new(1), Seq::new(2)).expect("span");
    let start = Instant::now();
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert_eq!(start.elapsed(), Duration::ZERO, "no drain waits on a dead worker");
    let stats = engine.guard_stats();
    assert_eq!((stats.extraction_sessions, stats.extractions_pending, stats.extractions_running), (0, 0, 0));
    assert_eq!((stats.extractions_failed, stats.extractions_done), (2, 1));
    assert_eq!(engine.memories("bob", 10).expect("read").len(), 1, "the queue went on");
    for s in [&alone, &followed] {
        assert!(engine.last_extraction_error(s.id()).expect("recorded").message.contains("panicked"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelling_drain_waits_for_stuck_workers_within_one_budget() {
    // The workers run on another runtime whose only thread the extractor blocks (blocking code):
    // aborted, they cannot end. The drain waits for them 5 s in total, not 5 s each.
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let extractor = {
        let (gate, started_tx) = (Arc::clone(&gate), std::sync::Mutex::new(started_tx));
        FnExtractor::new(move |_| {
            let (gate, started_tx) = (Arc::clone(&gate), started_tx.lock().expect("lock").clone());
            Box::pin(async move {
                let _ = started_tx.send(());
                let (open, wake) = &*gate;
                let mut open = open.lock().expect("lock");
                while !*open {
                    open = wake.wait(open).expect("lock");
                }
                Ok(Vec::new())
            })
        })
    };
    let (engine, _dir) = with_extractor(extractor, |c| c.background.model_concurrency = 8);
    let stuck = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    for id in ["a:1", "b:1", "c:1"] {
        let upto = fill(&engine, id, "fact", 1).await;
        let _on_stuck = stuck.enter();
        engine.session(id).expect("id").schedule_extraction(Seq::ZERO, upto).expect("span");
    }
    started_rx.recv_timeout(Duration::from_secs(60)).expect("the first extractor call started");
    let start = Instant::now();
    let report = engine.drain(Duration::from_millis(1_000), true).await;
    assert_eq!(start.elapsed(), Duration::from_millis(1_000 + 5_000), "the wait, then one 5 s budget for 3 workers");
    assert_eq!((report.left, report.cancelled), (1, 2), "the stuck job is reported, the queued ones cancelled");
    let (open, wake) = &*gate;
    *open.lock().expect("lock") = true;
    wake.notify_all();
    stuck.shutdown_background();
}

#[tokio::test(start_paused = true)]
async fn a_second_background_compaction_is_already_in_flight_while_the_first_waits_for_a_permit() {
    let summarizer = common::FnSummarizer::new(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok("summary".to_string())
        })
    });
    let components = Components { summarizer: Some(summarizer), ..Components::default() };
    let (engine, _dir) = engine_with_parts(components, |c| {
        c.background.model_concurrency = 1;
        c.compaction.keep_last_messages = 1;
    });
    fill(&engine, "holder", "step", 3).await;
    fill(&engine, "waiter", "step", 3).await;
    let holder = engine.session("holder").expect("id").compact_in_background(CompactionRequest::default());
    let holder = holder.expect("runtime");
    tokio::time::sleep(Duration::from_millis(1)).await;
    let waiter = engine.session("waiter").expect("id");
    let first = waiter.compact_in_background(CompactionRequest::default()).expect("runtime");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(engine.guard_stats().background_waiters, 1, "the first waits for the only permit");
    assert_eq!(engine.compactions_in_flight(), 2, "and is registered while it waits");
    let start = Instant::now();
    let second = waiter.compact_in_background(CompactionRequest::default()).expect("runtime");
    assert_eq!(second.await.expect("joins").expect("answers"), CompactionOutcome::AlreadyRunning);
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once, not after a permit");
    // Aborted while it waits, the first leaves the registry.
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());
    assert_eq!(engine.compactions_in_flight(), 1);
    assert!(matches!(holder.await.expect("joins").expect("compacts"), CompactionOutcome::Spliced { .. }));
    assert_eq!(engine.compactions_in_flight(), 0);
}

#[test]
fn background_knobs_are_validated() {
    let field = |json: &str| match Config::from_json_str(json) {
        Err(palimpsest::Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig for {json}, got {other:?}"),
    };
    assert_eq!(field(r#"{"background":{"model_concurrency":0}}"#), "background.model_concurrency");
    assert_eq!(field(r#"{"background":{"model_concurrency":9}}"#), "background.model_concurrency");
    assert_eq!(field(r#"{"background":{"extraction_timeout_ms":0}}"#), "background.extraction_timeout_ms");
    assert_eq!(field(r#"{"background":{"extraction_queue_depth":0}}"#), "background.extraction_queue_depth");
    assert_eq!(field(r#"{"extraction":{"extractor":"magic"}}"#), "extraction.extractor");
    let c = Config::default();
    assert_eq!((c.background.model_concurrency, c.background.extraction_timeout_ms), (2, 90_000));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_extractor_fails_its_job_and_the_queue_goes_on() {
    let extractor = FnExtractor::new(|input| {
        Box::pin(async move {
            if input.messages.iter().any(|m| m.message.content.contains("boom")) {
                panic!("extractor bug");
            }
            Ok(input.messages.iter().map(|m| m.message.content.clone()).collect())
        })
    });
    let (engine, _dir) = with_extractor(extractor, |_| {});
    let s = engine.session("alice:1").expect("id");
    s.append_many(vec![Message::user("boom"), Message::user("fact")]).await.expect("append");
    s.schedule_extraction(Seq::ZERO, Seq::new(1)).expect("span");
    s.schedule_extraction(Seq::new(1), Seq::new(2)).expect("span");
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    let error = engine.last_extraction_error(s.id()).expect("recorded");
    assert!(error.message.contains("the extractor panicked: extractor bug"), "{error:?}");
    assert_eq!(engine.memories("alice", 10).expect("read").len(), 1, "the next job ran");
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_failed, stats.extractions_done, stats.extraction_sessions), (1, 1, 0));
}

on_both_backends!(
    concurrent_extractions_into_one_namespace_lose_and_duplicate_nothing,
    a_splice_hands_the_compacted_span_to_extraction_without_waiting_for_it,
    an_episode_is_extracted_from_its_own_messages_only,
);

/// An engine on `store` with extraction on and `extractor`.
async fn open_extracting(store: &Store, extractor: Arc<FnExtractor>, tune: impl FnOnce(&mut Config)) -> Engine {
    let components = Components { extractor: Some(extractor), ..Components::default() };
    store
        .open_with(components, |c| {
            c.extraction.enabled = true;
            tune(c);
        })
        .await
}

async fn concurrent_extractions_into_one_namespace_lose_and_duplicate_nothing(store: Store) {
    // Each session states the same 20 shared facts plus 5 of its own; all extract at once.
    let extractor = FnExtractor::new(|input| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(input.messages.iter().map(|m| m.message.content.clone()).collect())
        })
    });
    let engine = open_extracting(&store, extractor, |c| {
        c.background.model_concurrency = 8;
        c.locks.retry_interval_ms = 1;
        c.locks.max_retries = Some(10_000);
    })
    .await;
    let n_sessions = 16;
    for i in 0..n_sessions {
        let id = format!("alice:{i}");
        let s = engine.session(id.as_str()).expect("id");
        let mut batch: Vec<Message> = (0..20).map(|k| Message::user(format!("shared fact {k}"))).collect();
        batch.extend((0..5).map(|k| Message::user(format!("own fact {k} of {i}"))));
        let seqs = s.append_many(batch).await.expect("append");
        // Twice: a retried extraction of the same span must not duplicate anything either.
        for _ in 0..2 {
            s.schedule_extraction(Seq::ZERO, Seq::new(seqs.end.get() - 1)).expect("span");
        }
    }
    assert_eq!(engine.drain(Duration::from_secs(600), false).await.left, 0);
    let memories = engine.memories_async("alice", 10_000).await.expect("read");
    let expected = 20 + 5 * n_sessions;
    assert_eq!(memories.len(), expected, "every memory once");
    assert!(memories.windows(2).all(|w| w[0].id < w[1].id), "in id order");
    let first = engine.memories_async("alice", 7).await.expect("read");
    assert_eq!(first, memories[..7], "a limit reads the first in id order");
    let mut texts: Vec<_> = memories.iter().map(|m| m.text.clone()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), expected);
    // The events agree with the records: each new memory was counted exactly once.
    let mut counted = 0;
    for i in 0..n_sessions {
        let s = engine.session(format!("alice:{i}").as_str()).expect("id");
        let history = s.history(Seq::new(1), 1_000).await.expect("history");
        counted += extracted_events(&history).iter().map(|(_, _, n)| n).sum::<u64>();
    }
    assert_eq!(counted, expected as u64);
    let stats = engine.guard_stats();
    assert_eq!((stats.memories_written, stats.extractions_done), (expected as u64, 2 * n_sessions as u64));
    assert_eq!(stats.lock_acquired, 2 * n_sessions as u64, "every extraction held the namespace lock");
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit").ok);
}

async fn a_splice_hands_the_compacted_span_to_extraction_without_waiting_for_it(store: Store) {
    let engine = store
        .open_with(Components::default(), |c| {
            c.extraction.enabled = true;
            c.compaction.keep_last_messages = 2;
        })
        .await;
    let s = engine.session("alice:trip").expect("id");
    s.append_many(vec![
        Message::user("I prefer aisle seats. Book a flight to Oslo."),
        Message::assistant("Booked."),
        Message::user("My name is Ada Lovelace."),
        Message::assistant("Noted."),
        Message::user("thanks"),
        Message::assistant("welcome"),
    ])
    .await
    .expect("append");
    let outcome = s.compact(CompactionRequest::default()).await.expect("compacts");
    assert!(matches!(outcome, CompactionOutcome::Spliced { upto, .. } if upto == Seq::new(4)), "{outcome:?}");
    assert_eq!(engine.guard_stats().extractions_scheduled, 1);
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    let texts: Vec<_> = engine.memories_async("alice", 10).await.expect("read").into_iter().map(|m| m.text).collect();
    assert_eq!(texts.len(), 2);
    assert!(texts.contains(&"preference: I prefer aisle seats".to_string()), "{texts:?}");
    assert!(texts.contains(&"fact: My name is Ada Lovelace".to_string()), "{texts:?}");
    let history = s.history(Seq::new(1), 100).await.expect("history");
    assert_eq!(extracted_events(&history), [(Seq::ZERO, Seq::new(4), 2)]);
    // Closing the episode extracts it too; nothing new is written twice.
    assert!(s.close_episode().await.expect("close").is_some());
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert_eq!(engine.memories_async("alice", 10).await.expect("read").len(), 2);
    assert_eq!(engine.guard_stats().extractions_done, 2);
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit").ok);
}

async fn an_episode_is_extracted_from_its_own_messages_only(store: Store) {
    let extractor = FnExtractor::echo_after(1);
    let engine = open_extracting(&store, Arc::clone(&extractor), |_| {}).await;
    let s = engine.session("alice:episodes").expect("id");
    // Episode 1 long enough that the backward search for its start reads more than one page (one
    // user turn, so the turn cap does not close it).
    let mut first = vec![Message::user("first question")];
    first.extend((0..299).map(|i| Message::assistant(format!("first {i}"))));
    s.append_many(first).await.expect("append");
    let b1 = s.close_episode().await.expect("close").expect("a boundary");
    fill(&engine, "alice:episodes", "second", 2).await;
    let b2 = s.close_episode().await.expect("close").expect("a boundary");
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    let history = s.history(Seq::new(1), 1_000).await.expect("history");
    let spans: Vec<(Seq, Seq)> = extracted_events(&history).into_iter().map(|(from, upto, _)| (from, upto)).collect();
    assert_eq!(spans, [(Seq::ZERO, b1), (b1, b2)]);
    let memories = engine.memories_async("alice", 1_000).await.expect("memories");
    let second: Vec<&str> = memories.iter().filter(|m| m.from == b1).map(|m| m.text.as_str()).collect();
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(second.iter().all(|t| t.starts_with("second")), "{second:?}");
    assert!(memories.iter().filter(|m| m.from == Seq::ZERO).all(|m| m.text.starts_with("first") && m.upto == b1));
    assert!(memories.iter().any(|m| m.text == "first question"), "the episode's first page was read too");
}
