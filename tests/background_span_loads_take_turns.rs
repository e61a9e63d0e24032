//! Background span loads take turns (`background.span_load_concurrency`, SPEC section 6b): a
//! compaction reading and decoding its span, and an extraction reading its span, each keep a core
//! busy; with the default of 1, at most one runs at a time however many sessions compact and
//! extract together, so on a small machine background work never takes more than one core from
//! the agent. With a larger limit several compactions load at once, which shows the peak gauge
//! sees loads that overlap.

mod guards_common;

use std::time::Duration;

use guards_common::engine_with_parts;
use palimpsest::{CompactionOutcome, CompactionRequest, Components, Config, Engine, GuardStats, Message, Seq};

const SESSIONS: usize = 8;
const MESSAGES: usize = 400;

fn ids() -> Vec<String> {
    (0..SESSIONS).map(|i| format!("team:{i}")).collect()
}

/// An engine whose `SESSIONS` sessions hold `MESSAGES` messages each.
async fn filled(tune: impl FnOnce(&mut Config)) -> (Engine, tempfile::TempDir) {
    let (engine, dir) = engine_with_parts(Components::default(), tune);
    for id in ids() {
        let turns = (0..MESSAGES).map(|i| {
            if i % 2 == 0 {
                Message::user(format!("I prefer window seats, note {i}"))
            } else {
                Message::assistant(format!("noted {i}"))
            }
        });
        engine.session(id.as_str()).expect("id").append_many(turns.collect()).await.expect("append");
    }
    (engine, dir)
}

/// Compacts every session at once, waits for every extraction, returns the guards' stats.
async fn compact_all_at_once(engine: &Engine) -> GuardStats {
    // Every compaction reaches its load's permit before the first load can finish: on this
    // single-threaded runtime a finished load's task is woken behind the ones already queued.
    let tasks: Vec<_> = ids()
        .into_iter()
        .map(|id| {
            let session = engine.session(id.as_str()).expect("id");
            tokio::spawn(async move { session.compact(CompactionRequest::default()).await })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.expect("the compaction task").expect("compacts");
        assert!(matches!(outcome, CompactionOutcome::Spliced { .. }), "{outcome:?}");
    }
    assert_eq!(engine.drain(Duration::from_secs(120), false).await.left, 0, "every extraction ran");
    engine.guard_stats()
}

fn nothing_left_held(stats: &GuardStats) {
    assert_eq!((stats.span_loads_in_use, stats.span_load_waiters, stats.span_load_timeouts), (0, 0, 0), "{stats:?}");
}

#[tokio::test]
async fn compactions_take_turns_loading_their_spans() {
    let (engine, _dir) = filled(|c| c.extraction.enabled = false).await;
    let stats = compact_all_at_once(&engine).await;
    assert_eq!(stats.span_load_permits, 1, "the default");
    assert_eq!(stats.span_loads_peak, 1, "one load at a time: {stats:?}");
    nothing_left_held(&stats);

    let (engine, _dir) = filled(|c| {
        c.extraction.enabled = false;
        c.background.span_load_concurrency = 4;
    })
    .await;
    let stats = compact_all_at_once(&engine).await;
    assert_eq!(stats.span_load_permits, 4);
    assert!((2..=4).contains(&stats.span_loads_peak), "several loads at once, never more than 4: {stats:?}");
    nothing_left_held(&stats);
}

#[tokio::test]
async fn extractions_read_their_spans_under_a_span_load_permit() {
    let (engine, _dir) = filled(|_| {}).await;
    for id in ids() {
        let session = engine.session(id.as_str()).expect("id");
        assert!(session.schedule_extraction(Seq::ZERO, Seq::new(MESSAGES as u64)).expect("a valid span"));
    }
    assert_eq!(engine.drain(Duration::from_secs(120), false).await.left, 0, "every extraction ran");
    let stats = engine.guard_stats();
    assert!(stats.extractions_done >= SESSIONS as u64, "{stats:?}");
    assert_eq!(stats.span_loads_peak, 1, "each read took the one permit: {stats:?}");
    nothing_left_held(&stats);
}

#[tokio::test]
async fn compactions_and_their_extractions_load_one_span_at_a_time_by_default() {
    let (engine, _dir) = filled(|_| {}).await;
    let stats = compact_all_at_once(&engine).await;
    assert!(stats.extractions_done >= SESSIONS as u64, "each splice's span was extracted: {stats:?}");
    assert_eq!(stats.span_loads_peak, 1, "never two span loads at once: {stats:?}");
    nothing_left_held(&stats);
}

#[test]
fn the_limit_is_validated() {
    for bad in [0, 9] {
        let mut config = Config::new("unused");
        config.background.span_load_concurrency = bad;
        let err = config.validate().expect_err("out of range");
        assert!(err.to_string().contains("background.span_load_concurrency"), "{err}");
    }
}
