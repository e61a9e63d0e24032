//! Durable background extraction: a span whose extraction did not finish (a timeout, a panic, a
//! cancelling drain, the process stopping mid-extraction) is queued again by the next open and
//! its memories then exist exactly once; a finished one is never redone; one that keeps failing
//! is given up after `MAX_EXTRACTION_ATTEMPTS` attempts and recorded; an open queues at most a
//! session's queue depth and leaves (and reports) the rest. Every test but one runs on both
//! backends (`on_both_backends!`): on JetStream a reopen is a new connection, as another process's.

mod backends;
mod guards_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backends::{Store, extracted};
use guards_common::FnExtractor;
use palimpsest::{
    AuditOptions, CompactionOutcome, CompactionRequest, Components, Config, Engine, MAX_EXTRACTION_ATTEMPTS, Message,
    Seq, SessionId,
};

on_both_backends!(
    a_timed_out_extraction_is_extracted_by_the_next_open_exactly_once,
    a_panicked_extraction_is_extracted_by_the_next_open,
    a_cancelling_drain_leaves_the_span_for_the_next_open,
    repeated_failures_stop_after_the_bound_and_are_recorded,
    interrupted_attempts_count_toward_the_bound,
    an_open_queues_at_most_the_queue_depth_and_reports_the_rest,
    a_manual_extraction_and_a_disabled_engine_write_no_marker,
    turn_cap_and_classified_boundaries_are_durable_too,
    a_deleted_sessions_pending_extraction_ends_without_memories,
);

/// An engine on `store` (a reopen when one was opened before: drop the earlier one first) with
/// extraction on and `extractor`. A job's timeout stays long (20 s): on a loaded machine a job on
/// JetStream (a dozen round trips) must not be cut short where a test does not mean it to be.
async fn open(store: &Store, extractor: &Arc<FnExtractor>, tune: impl FnOnce(&mut Config)) -> Engine {
    let components = Components { extractor: Some(Arc::clone(extractor) as _), ..Components::default() };
    store
        .open_with(components, |config| {
            config.extraction.enabled = true;
            config.background.extraction_timeout_ms = 20_000;
            tune(config);
        })
        .await
}

/// A job timeout of 1 s, for the test whose extraction must time out.
fn short_jobs(config: &mut Config) {
    config.background.extraction_timeout_ms = 1_000;
    // The namespace lock's wait serves the extraction job, so it may not outlast it.
    config.locks.timeout_ms = Some(1_000);
}

fn echo() -> Arc<FnExtractor> {
    FnExtractor::echo_after(1)
}

fn failing() -> Arc<FnExtractor> {
    FnExtractor::new(|_| {
        Box::pin(async { Err(palimpsest::Error::Summarizer { status: Some(503), message: "overloaded".into() }) })
    })
}

fn hanging() -> Arc<FnExtractor> {
    FnExtractor::new(|_| Box::pin(std::future::pending()))
}

/// Waits (bounded) until `extractor` has `n` calls in flight: the workers have started them.
async fn running(extractor: &FnExtractor, n: u64) {
    for _ in 0..6_000 {
        if extractor.in_flight.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} extractor calls did not start within 30 s");
}

/// Appends three user facts, each new, and closes the episode: one durable extraction scheduled.
async fn close_an_episode(engine: &Engine, id: &str) -> Seq {
    static NEXT_FACT: AtomicU64 = AtomicU64::new(0);
    let s = engine.session(id).expect("id");
    let facts =
        (0..3).map(|_| Message::user(format!("{id} fact {}", NEXT_FACT.fetch_add(1, Ordering::SeqCst)))).collect();
    s.append_many(facts).await.expect("append");
    s.close_episode().await.expect("close").expect("the episode had turns")
}

async fn drained(engine: &Engine) {
    assert_eq!(engine.drain(Duration::from_secs(600), false).await.left, 0);
}

async fn memories(engine: &Engine, namespace: &str) -> usize {
    engine.memories_async(namespace, 100).await.expect("read").len()
}

async fn a_timed_out_extraction_is_extracted_by_the_next_open_exactly_once(store: Store) {
    let first = open(&store, &FnExtractor::echo_after(10_000), short_jobs).await;
    let boundary = close_an_episode(&first, "alice:1").await;
    drained(&first).await;
    let error = first.last_extraction_error(&SessionId::new("alice:1").expect("id")).expect("recorded");
    assert!(error.message.contains("timed out"), "{error:?}");
    assert_eq!(memories(&first, "alice").await, 0);
    drop(first);

    let extractor = echo();
    let second = open(&store, &extractor, |_| {}).await;
    assert_eq!(second.guard_stats().extractions_resumed, 1);
    drained(&second).await;
    assert_eq!(memories(&second, "alice").await, 3);
    assert_eq!(extracted(&second, "alice:1").await, [(Seq::ZERO, boundary, 3)]);
    drop(second);

    // Done is done: a third open finds nothing to resume and writes nothing.
    let third = open(&store, &extractor, |_| {}).await;
    drained(&third).await;
    assert_eq!((third.guard_stats().extractions_resumed, extractor.calls.lock().len()), (0, 1));
    assert_eq!(memories(&third, "alice").await, 3, "every memory once");
    assert_eq!(extracted(&third, "alice:1").await.len(), 1);
    assert!(third.audit_async(AuditOptions::default(), |_| {}).await.expect("audit").ok);
}

async fn a_panicked_extraction_is_extracted_by_the_next_open(store: Store) {
    let panicking = FnExtractor::new(|_| Box::pin(async { panic!("extractor bug") }));
    let first = open(&store, &panicking, |c| c.compaction.keep_last_messages = 1).await;
    let s = first.session("bob:1").expect("id");
    let facts = (0..4).map(|i| Message::user(format!("bob fact {i}"))).collect();
    s.append_many(facts).await.expect("append");
    let outcome = s.compact(CompactionRequest::default()).await.expect("compacts");
    assert!(matches!(outcome, CompactionOutcome::Spliced { upto, .. } if upto == Seq::new(3)), "{outcome:?}");
    drained(&first).await;
    assert_eq!(first.guard_stats().extractions_failed, 1);
    drop((s, first));

    let second = open(&store, &echo(), |_| {}).await;
    drained(&second).await;
    let texts: Vec<_> = second.memories_async("bob", 10).await.expect("read").into_iter().map(|m| m.text).collect();
    assert_eq!(texts.len(), 3, "the spliced span (0, 3]: {texts:?}");
    assert_eq!(extracted(&second, "bob:1").await, [(Seq::ZERO, Seq::new(3), 3)]);
}

async fn a_cancelling_drain_leaves_the_span_for_the_next_open(store: Store) {
    let hanging = hanging();
    let first = open(&store, &hanging, |_| {}).await;
    close_an_episode(&first, "carol:1").await;
    close_an_episode(&first, "carol:1").await;
    running(&hanging, 1).await;
    let report = first.drain(Duration::from_millis(10), true).await;
    assert_eq!((report.left, report.cancelled), (0, 2), "one running, one queued");
    drop(first);

    let second = open(&store, &echo(), |_| {}).await;
    assert_eq!(second.guard_stats().extractions_resumed, 2);
    drained(&second).await;
    assert_eq!(memories(&second, "carol").await, 6);
    assert_eq!(extracted(&second, "carol:1").await.len(), 2);
}

/// The process stops (its runtime is shut down, every task dropped) while the extractor runs.
/// fjall only: it opens the same directory from two runtimes of its own, one after the other,
/// where the JetStream harness's cluster lives on the test's runtime.
#[test]
fn an_engine_dropped_mid_extraction_leaves_the_span_for_the_next_open() {
    let dir = tempfile::tempdir().expect("dir");
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let hanging = hanging();
    let open = |extractor: &Arc<FnExtractor>| {
        let mut config = Config::new(dir.path().join("db"));
        // Buffered: the yields below must not wait on the group-commit thread's fsync.
        config.durability = palimpsest::Durability::Buffered;
        config.background.extraction_timeout_ms = 1_000;
        config.locks.timeout_ms = Some(1_000);
        let components = Components { extractor: Some(Arc::clone(extractor) as _), ..Components::default() };
        Engine::open_with(config, components).expect("open")
    };
    runtime().block_on(async {
        let engine = open(&hanging);
        close_an_episode(&engine, "dave:1").await;
        for _ in 0..1_000 {
            if hanging.in_flight.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(hanging.in_flight.load(Ordering::SeqCst), 1, "the extractor is running");
    });
    // The runtime is gone and with it the worker: the database is closed.
    runtime().block_on(async {
        let engine = open(&echo());
        drained(&engine).await;
        assert_eq!(engine.memories("dave", 10).expect("read").len(), 3);
        assert_eq!(extracted(&engine, "dave:1").await.len(), 1);
    });
}

async fn repeated_failures_stop_after_the_bound_and_are_recorded(store: Store) {
    let extractor = failing();
    let boundary = {
        let engine = open(&store, &extractor, |_| {}).await;
        let boundary = close_an_episode(&engine, "erin:1").await;
        drained(&engine).await;
        boundary
    };
    for open_idx in 1..MAX_EXTRACTION_ATTEMPTS {
        let engine = open(&store, &extractor, |_| {}).await;
        assert_eq!(engine.guard_stats().extractions_resumed, 1, "open {open_idx}");
        drained(&engine).await;
        let given_up = engine.guard_stats().extractions_given_up;
        assert_eq!(given_up, u64::from(open_idx + 1 == MAX_EXTRACTION_ATTEMPTS), "open {open_idx}");
    }
    assert_eq!(extractor.calls.lock().len(), MAX_EXTRACTION_ATTEMPTS as usize);
    let engine = open(&store, &extractor, |_| {}).await;
    drained(&engine).await;
    assert_eq!(engine.guard_stats().extractions_resumed, 0, "given up: no open retries it");
    assert_eq!(extractor.calls.lock().len(), MAX_EXTRACTION_ATTEMPTS as usize);
    let given_up = engine.given_up_extractions_async(10).await.expect("read");
    assert_eq!(given_up.len(), 1);
    let record = &given_up[0];
    assert_eq!((record.session.as_str(), record.at, record.from, record.upto), ("erin:1", boundary, None, boundary));
    assert_eq!(record.attempts, MAX_EXTRACTION_ATTEMPTS);
    assert!(record.last_error.as_deref().is_some_and(|e| e.contains("overloaded")), "{record:?}");
    assert!(engine.given_up_extractions_async(palimpsest::MAX_GIVEN_UP_READ + 1).await.is_err(), "a bounded read");
}

async fn interrupted_attempts_count_toward_the_bound(store: Store) {
    let hanging = hanging();
    for round in 0..=u64::from(MAX_EXTRACTION_ATTEMPTS) {
        let engine = open(&store, &hanging, |_| {}).await;
        if engine.guard_stats().extractions_resumed == 0 {
            close_an_episode(&engine, "fay:1").await;
        }
        if round < u64::from(MAX_EXTRACTION_ATTEMPTS) {
            running(&hanging, 1).await;
        }
        engine.drain(Duration::from_millis(10), true).await;
    }
    assert_eq!(hanging.calls.lock().len(), MAX_EXTRACTION_ATTEMPTS as usize, "the last open gave it up unrun");
    let engine = open(&store, &hanging, |_| {}).await;
    assert_eq!(engine.guard_stats().extractions_resumed, 0);
    let given_up = engine.given_up_extractions_async(10).await.expect("read");
    assert_eq!((given_up.len(), given_up[0].last_error.as_deref()), (1, None), "a crash leaves no error text");
}

async fn an_open_queues_at_most_the_queue_depth_and_reports_the_rest(store: Store) {
    {
        // A queue too small to take the jobs when their markers are written: every marker is
        // written all the same, and what was not queued waits for an open.
        let hanging = hanging();
        let engine = open(&store, &hanging, |c| c.background.extraction_queue_depth = 1).await;
        for _ in 0..5 {
            close_an_episode(&engine, "gus:1").await;
        }
        assert!(engine.guard_stats().extractions_skipped >= 3, "the queue was full while they were written");
        running(&hanging, 1).await;
        engine.drain(Duration::from_millis(10), true).await;
    }
    let engine = open(&store, &echo(), |c| c.background.extraction_queue_depth = 2).await;
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_resumed, stats.extractions_deferred), (2, 3));
    drained(&engine).await;
    assert_eq!(memories(&engine, "gus").await, 6);
    drop(engine);
    // The rest is found by the next opens.
    let engine = open(&store, &echo(), |c| c.background.extraction_queue_depth = 2).await;
    assert_eq!((engine.guard_stats().extractions_resumed, engine.guard_stats().extractions_deferred), (2, 1));
    drained(&engine).await;
    drop(engine);
    let engine = open(&store, &echo(), |c| c.background.extraction_queue_depth = 2).await;
    assert_eq!((engine.guard_stats().extractions_resumed, engine.guard_stats().extractions_deferred), (1, 0));
    drained(&engine).await;
    assert_eq!(memories(&engine, "gus").await, 15);
    assert_eq!(extracted(&engine, "gus:1").await.len(), 5);
}

async fn a_manual_extraction_and_a_disabled_engine_write_no_marker(store: Store) {
    {
        let engine = open(&store, &hanging(), |c| c.extraction.enabled = false).await;
        close_an_episode(&engine, "hal:1").await;
    }
    let hanging = hanging();
    let engine = open(&store, &hanging, |_| {}).await;
    assert_eq!(engine.guard_stats().extractions_resumed, 0, "disabled: nothing was marked");
    let s = engine.session("hal:1").expect("id");
    assert!(s.schedule_extraction(Seq::ZERO, Seq::new(2)).expect("span"));
    running(&hanging, 1).await;
    engine.drain(Duration::from_millis(10), true).await;
    drop((s, engine));
    let engine = open(&store, &hanging, |_| {}).await;
    assert_eq!(engine.guard_stats().extractions_resumed, 0, "a job scheduled by hand is not durable");
}

async fn turn_cap_and_classified_boundaries_are_durable_too(store: Store) {
    let open = |extractor: &Arc<FnExtractor>| {
        let components = Components {
            extractor: Some(Arc::clone(extractor) as _),
            classifier: Some(guards_common::FnClassifier::always(palimpsest::EpisodeDecision::NewTask)),
            ..Components::default()
        };
        store.open_with(components, |config| {
            config.extraction.enabled = true;
            config.episodes.max_turns_per_episode = 5;
        })
    };
    {
        let hanging = hanging();
        let engine = open(&hanging).await;
        // Six user turns in one append: the sixth gets a turn-cap boundary before it.
        let s = engine.session("ivy:1").expect("id");
        s.append_many((0..6).map(|i| Message::user(format!("ivy cap fact {i}"))).collect()).await.expect("append");
        // A turn classified as a new task closes the episode it follows.
        let outcome = s.append_turn(Message::user("ivy new task")).await.expect("turn");
        assert!(outcome.boundary.is_some(), "{outcome:?}");
        running(&hanging, 1).await;
        engine.drain(Duration::from_millis(10), true).await;
    }
    let engine = open(&echo()).await;
    assert_eq!(engine.guard_stats().extractions_resumed, 2);
    drained(&engine).await;
    // (0, 6]: five facts, then (6, 8]: the sixth fact (the new task's boundary follows it).
    assert_eq!(memories(&engine, "ivy").await, 6);
    assert_eq!(extracted(&engine, "ivy:1").await.len(), 2);
}

async fn a_deleted_sessions_pending_extraction_ends_without_memories(store: Store) {
    {
        let hanging = hanging();
        let engine = open(&store, &hanging, |_| {}).await;
        close_an_episode(&engine, "ola:1").await;
        running(&hanging, 1).await;
        engine.drain(Duration::from_millis(10), true).await;
        engine.session("ola:1").expect("id").delete().await.expect("delete");
    }
    let extractor = echo();
    let engine = open(&store, &extractor, |_| {}).await;
    assert_eq!(engine.guard_stats().extractions_resumed, 1, "queued: its job finds the session deleted");
    drained(&engine).await;
    let error = engine.last_extraction_error(&SessionId::new("ola:1").expect("id")).expect("recorded");
    assert!(error.message.contains("deleted"), "{error:?}");
    assert!(extractor.calls.lock().is_empty());
    assert_eq!(memories(&engine, "ola").await, 0);
    drop(engine);
    let engine = open(&store, &extractor, |_| {}).await;
    assert_eq!(engine.guard_stats().extractions_resumed, 0, "the job removed the marker");
}
