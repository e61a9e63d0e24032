//! Episodes: a classifier that times out or fails makes the turn a new task, the turn cap forces a
//! boundary on every write path and holds across reopen, and boundaries are events audit replays.
//! Everything but the timeout (pinned on tokio's paused clock, which only the embedded backend can
//! run under) runs on both backends (`on_both_backends!`).

mod backends;
mod guards_common;

use std::sync::Arc;
use std::time::Duration;

use backends::Store;
use guards_common::{FnClassifier, engine_with_parts};
use palimpsest::{
    AuditOptions, BoundaryReason, Components, Config, Engine, EpisodeDecision, Error, EventKind, Message, Seq,
};

on_both_backends!(
    a_classifier_that_fails_makes_the_turn_a_new_task,
    a_new_task_writes_its_boundary_and_message_in_one_batch,
    continuing_turns_write_no_boundary,
    the_classifier_sees_the_current_episode_only,
    the_turn_cap_forces_a_boundary_and_survives_reopen,
    close_episode_writes_an_explicit_boundary_once,
);

async fn open_classifying(store: &Store, classifier: Arc<FnClassifier>, tune: impl FnOnce(&mut Config)) -> Engine {
    store.open_with(Components { classifier: Some(classifier), ..Components::default() }, tune).await
}
use tokio::time::Instant;

fn with_classifier(classifier: Arc<FnClassifier>, tune: impl FnOnce(&mut Config)) -> (Engine, tempfile::TempDir) {
    engine_with_parts(Components { classifier: Some(classifier), ..Components::default() }, tune)
}

async fn kinds(engine: &Engine, id: &str) -> Vec<EventKind> {
    let s = engine.session(id).expect("id");
    s.history(Seq::new(1), 1_000).await.expect("history").into_iter().map(|e| e.kind).collect()
}

fn boundary_reasons(kinds: &[EventKind]) -> Vec<BoundaryReason> {
    kinds
        .iter()
        .filter_map(|k| match k {
            EventKind::EpisodeBoundary { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_classifier_that_times_out_makes_the_turn_a_new_task() {
    let slow = FnClassifier::new(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            Ok(EpisodeDecision::Continue)
        })
    });
    let (engine, _dir) = with_classifier(slow, |c| c.episodes.classify_timeout_ms = 1_000);
    let s = engine.session("alice:1").expect("id");
    let first = s.append_turn(Message::user("book a flight to Oslo")).await.expect("first turn");
    assert_eq!((first.boundary, first.decision), (None, EpisodeDecision::Continue), "a first turn asks no model");
    let start = Instant::now();
    let second = s.append_turn(Message::user("and a hotel")).await.expect("second turn");
    assert_eq!(start.elapsed(), Duration::from_millis(1_000), "waited exactly episodes.classify_timeout_ms");
    assert_eq!(second.decision, EpisodeDecision::NewTask);
    let boundary = second.boundary.expect("a fallback closes the episode");
    assert_eq!((boundary.seq, boundary.episode, boundary.reason), (Seq::new(2), 0, BoundaryReason::ClassifierFallback));
    assert_eq!((second.seq, second.episode), (Seq::new(3), 1));
    assert_eq!(engine.guard_stats().classifier_fallbacks, 1);
}

async fn a_classifier_that_fails_makes_the_turn_a_new_task(store: Store) {
    let failing = FnClassifier::new(|_| {
        Box::pin(async { Err(Error::Summarizer { status: Some(503), message: "overloaded".to_string() }) })
    });
    let engine = open_classifying(&store, failing, |_| {}).await;
    let s = engine.session("alice:1").expect("id");
    s.append_turn(Message::user("one")).await.expect("turn");
    let turn = s.append_turn(Message::user("two")).await.expect("turn");
    assert_eq!(turn.boundary.map(|b| b.reason), Some(BoundaryReason::ClassifierFallback));
}

async fn a_new_task_writes_its_boundary_and_message_in_one_batch(store: Store) {
    let engine = open_classifying(&store, FnClassifier::always(EpisodeDecision::NewTask), |_| {}).await;
    let s = engine.session("alice:1").expect("id");
    s.append_turn(Message::user("one")).await.expect("turn");
    s.append(Message::assistant("done")).await.expect("reply");
    let turn = s.append_turn(Message::user("two")).await.expect("turn");
    assert_eq!(turn.boundary.map(|b| (b.seq, b.reason)), Some((Seq::new(3), BoundaryReason::Classified)));
    assert_eq!(turn.seq, Seq::new(4));
    let head = s.head().await.expect("head").expect("exists");
    assert_eq!((head.episode(), head.episode_turns()), (1, 1));
    assert!(s.append_turn(Message::assistant("not a user turn")).await.is_err());
}

async fn continuing_turns_write_no_boundary(store: Store) {
    let engine = open_classifying(&store, FnClassifier::always(EpisodeDecision::Continue), |_| {}).await;
    let s = engine.session("alice:1").expect("id");
    for i in 0..5 {
        let turn = s.append_turn(Message::user(format!("turn {i}"))).await.expect("turn");
        assert_eq!(turn.boundary, None);
    }
    assert!(boundary_reasons(&kinds(&engine, "alice:1").await).is_empty());
}

/// The classifier is shown the current episode's messages (read from the log, on either backend),
/// never the closed episode's.
async fn the_classifier_sees_the_current_episode_only(store: Store) {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let classifier = {
        let seen = Arc::clone(&seen);
        FnClassifier::new(move |input| {
            let texts: Vec<String> = input.recent.iter().map(|m| m.message.content.clone()).collect();
            let decision = if input.message.content.starts_with("new") {
                EpisodeDecision::NewTask
            } else {
                EpisodeDecision::Continue
            };
            seen.lock().push(texts);
            Box::pin(async move { Ok(decision) })
        })
    };
    let engine = open_classifying(&store, classifier, |_| {}).await;
    let s = engine.session("alice:1").expect("id");
    s.append_turn(Message::user("flight to Oslo")).await.expect("turn");
    s.append(Message::assistant("booked")).await.expect("reply");
    s.append_turn(Message::user("and a hotel")).await.expect("turn");
    let turn = s.append_turn(Message::user("new: a poem")).await.expect("turn");
    assert!(turn.boundary.is_some());
    s.append_turn(Message::user("about autumn")).await.expect("turn");
    let seen = seen.lock().clone();
    assert_eq!(
        seen,
        [
            vec!["flight to Oslo".to_string(), "booked".to_string()],
            vec!["flight to Oslo".to_string(), "booked".to_string(), "and a hotel".to_string()],
            vec!["new: a poem".to_string()],
        ],
        "the context of each classified turn"
    );
}

async fn the_turn_cap_forces_a_boundary_and_survives_reopen(store: Store) {
    let engine = store.open_with(Components::default(), |c| c.episodes.max_turns_per_episode = 5).await;
    let s = engine.session("alice:1").expect("id");
    for i in 0..5 {
        s.append(Message::user(format!("turn {i}"))).await.expect("append");
        s.append(Message::assistant(format!("reply {i}"))).await.expect("append");
    }
    assert!(boundary_reasons(&kinds(&engine, "alice:1").await).is_empty(), "five turns fit in the cap");
    drop((s, engine));

    let engine = store.open_with(Components::default(), |c| c.episodes.max_turns_per_episode = 5).await;
    let s = engine.session("alice:1").expect("id");
    let seq = s.append(Message::user("turn 5")).await.expect("append");
    let history = s.history(Seq::new(1), 100).await.expect("history");
    let boundary = &history[history.len() - 2];
    assert_eq!(boundary.kind, EventKind::EpisodeBoundary { episode: 0, reason: BoundaryReason::TurnCap });
    assert_eq!((boundary.seq, seq), (Seq::new(11), Seq::new(12)), "the boundary sits right before the sixth turn");
    let head = s.head().await.expect("head").expect("exists");
    assert_eq!((head.episode(), head.episode_turns()), (1, 1));

    // A batch crossing the cap twice gets a boundary before each sixth turn.
    let batch: Vec<_> = (0..10).map(|i| Message::user(format!("batch {i}"))).collect();
    let seqs = s.append_many(batch).await.expect("batch");
    let kinds = kinds(&engine, "alice:1").await;
    assert_eq!(
        boundary_reasons(&kinds),
        [BoundaryReason::TurnCap; 3],
        "one before turn 6 after reopen, two in the batch"
    );
    assert_eq!(seqs.end, Seq::new(kinds.len() as u64 + 1));
    drop((s, engine));
    // append_turn enforces the same cap.
    let engine = open_classifying(&store, FnClassifier::always(EpisodeDecision::Continue), |c| {
        c.episodes.max_turns_per_episode = 5;
    })
    .await;
    let t = engine.session("bob").expect("id");
    for i in 0..6 {
        let turn = t.append_turn(Message::user(format!("t {i}"))).await.expect("turn");
        assert_eq!(turn.boundary.map(|b| b.reason), (i == 5).then_some(BoundaryReason::TurnCap));
    }
    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok, "{:?}", report.violations);
}

async fn close_episode_writes_an_explicit_boundary_once(store: Store) {
    let engine = store.open().await;
    let s = engine.session("alice:1").expect("id");
    assert!(matches!(s.close_episode().await, Err(Error::NotFound { .. })));
    s.append(Message::user("hello")).await.expect("append");
    assert_eq!(s.close_episode().await.expect("close"), Some(Seq::new(2)));
    assert_eq!(s.close_episode().await.expect("nothing to close"), None);
    assert_eq!(boundary_reasons(&kinds(&engine, "alice:1").await), [BoundaryReason::Explicit]);
    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok, "{:?}", report.violations);
}

#[test]
fn episode_knobs_are_validated() {
    let field = |json: &str| match Config::from_json_str(json) {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig for {json}, got {other:?}"),
    };
    assert_eq!(field(r#"{"episodes":{"max_turns_per_episode":4}}"#), "episodes.max_turns_per_episode");
    assert_eq!(field(r#"{"episodes":{"max_turns_per_episode":201}}"#), "episodes.max_turns_per_episode");
    assert_eq!(field(r#"{"episodes":{"classify_timeout_ms":999}}"#), "episodes.classify_timeout_ms");
    assert_eq!(field(r#"{"episodes":{"classify_timeout_ms":30001}}"#), "episodes.classify_timeout_ms");
    assert_eq!(field(r#"{"episodes":{"classifier":"magic"}}"#), "episodes.classifier");
    let c = Config::default();
    assert_eq!((c.episodes.max_turns_per_episode, c.episodes.classify_timeout_ms), (30, 5_000));
}
