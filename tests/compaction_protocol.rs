//! The compaction protocol through the public API: single flight with no leaked registry entries,
//! appends that keep completing while a summarizer is busy, splices that readers fold over,
//! abandoned compactions that leave the session byte-identical, and the outcomes of each path.

mod backends;
mod common;

use std::sync::Arc;
use std::time::Duration;

use backends::Store;
use common::{FnSummarizer, snapshot, turn};
use palimpsest::{CompactionOutcome, CompactionRequest, Error, EventKind, Message, Seq, Stage, ToolCall};
use tokio::sync::Notify;

/// A summarizer that waits for `gate` before answering.
fn gated(gate: Arc<Notify>) -> Arc<FnSummarizer> {
    FnSummarizer::new(move |input| {
        let gate = Arc::clone(&gate);
        Box::pin(async move {
            gate.notified().await;
            Ok(format!("summary of {} messages", input.messages.len()))
        })
    })
}

/// Waits until a compaction has chosen its strategy, i.e. is about to call the summarizer.
async fn wait_for_strategy(progress: &mut tokio::sync::broadcast::Receiver<palimpsest::Progress>) {
    loop {
        if let Stage::Strategy { .. } = progress.recv().await.unwrap().stage {
            return;
        }
    }
}

async fn appends_keep_completing_while_the_summarizer_is_busy(store: Store) {
    let gate = Arc::new(Notify::new());
    // 35 turns in one episode: this test counts seqs of messages and the splice only.
    let engine = store.open_with_summarizer(gated(Arc::clone(&gate)), |c| c.episodes.max_turns_per_episode = 200).await;
    let s = engine.session("busy").unwrap();
    for i in 0..10 {
        s.append_many(turn(i)).await.unwrap();
    }
    let mut progress = engine.subscribe_progress();
    let compaction = tokio::spawn({
        let s = s.clone();
        async move { s.compact(CompactionRequest::upto(Seq::new(20))).await }
    });
    wait_for_strategy(&mut progress).await;
    // 100 messages are appended while the summarizer has not answered.
    for i in 10..35 {
        s.append_many(turn(i)).await.unwrap();
    }
    assert!(!compaction.is_finished());
    assert_eq!(engine.compactions_in_flight(), 1);
    gate.notify_one();
    let outcome = compaction.await.unwrap().unwrap();
    let CompactionOutcome::Spliced { upto, seq, n_messages, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!((upto, seq, n_messages), (Seq::new(20), Seq::new(141), 20));
    assert_eq!(engine.compactions_in_flight(), 0);

    let wm = s.working_memory(1000).await.unwrap();
    let summary = wm.summary.expect("spliced");
    assert_eq!((summary.upto, summary.text.as_str()), (Seq::new(20), "summary of 20 messages"));
    // Every message after upto is served, including those appended during the compaction.
    assert_eq!(wm.messages.first().unwrap().seq, Seq::new(21));
    assert_eq!(wm.messages.len(), 120);
    assert_eq!(wm.n_messages, Some(140));
    // The originals stay in the log.
    assert_eq!(s.history(Seq::new(1), 1).await.unwrap()[0].message().unwrap().content, "step 0: check the build");
}

async fn a_second_request_while_one_is_in_flight_says_so_and_changes_nothing(store: Store) {
    let gate = Arc::new(Notify::new());
    let engine = store.open_with_summarizer(gated(Arc::clone(&gate)), |_| {}).await;
    let s = engine.session("single").unwrap();
    for i in 0..10 {
        s.append_many(turn(i)).await.unwrap();
    }
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.compact(CompactionRequest::default()).await }
    });
    while engine.compactions_in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let before = snapshot(&s).await;
    assert_eq!(s.compact(CompactionRequest::default()).await.unwrap(), CompactionOutcome::AlreadyRunning);
    assert_eq!(snapshot(&s).await, before);
    // Another session is independent.
    let other = engine.session("other").unwrap();
    other.append_many(turn(0)).await.unwrap();
    gate.notify_waiters();
    gate.notify_one();
    assert!(matches!(first.await.unwrap().unwrap(), CompactionOutcome::Spliced { .. }));
    assert_eq!(engine.compactions_in_flight(), 0);
}

async fn the_registry_is_empty_after_every_way_a_compaction_can_end(store: Store) {
    let engine = store
        .open_with_summarizer(
            FnSummarizer::new(|input| {
                Box::pin(async move {
                    match input.focus.as_deref() {
                        Some("error") => Err(Error::Summarizer { status: Some(503), message: "overloaded".into() }),
                        Some("hang") => std::future::pending().await,
                        Some("panic") => panic!("summarizer bug"),
                        Some("garbage") => Ok("\0\0".to_string()),
                        _ => Ok("fine".to_string()),
                    }
                })
            }),
            |c| {
                c.compaction.keep_last_messages = 2;
                c.compaction.chunk_timeout_ms = 5_000;
            },
        )
        .await;
    let s = engine.session("ends").unwrap();
    for i in 0..5 {
        s.append_many(turn(i)).await.unwrap();
    }
    let before = snapshot(&s).await;
    let req = |focus: &str| CompactionRequest::default().with_focus(focus);

    let err = s.compact(req("error")).await.unwrap_err();
    assert!(matches!(&err, Error::Summarizer { status: Some(503), message } if message == "overloaded"), "{err:?}");
    assert!(matches!(s.compact(req("hang")).await, Err(Error::Timeout { .. })));
    assert!(matches!(s.compact(req("panic")).await, Err(Error::Summarizer { .. })));
    assert!(matches!(s.compact(req("garbage")).await, Err(Error::Summarizer { .. })));
    // Cancellation: drop the future mid-flight.
    let cancelled = tokio::time::timeout(Duration::from_millis(10), s.compact(req("hang"))).await;
    assert!(cancelled.is_err());
    assert_eq!(engine.compactions_in_flight(), 0);
    assert_eq!(snapshot(&s).await, before, "abandoned compactions leave the session byte-identical");

    assert!(matches!(s.compact(req("fine")).await.unwrap(), CompactionOutcome::Spliced { .. }));
    assert_eq!(engine.compactions_in_flight(), 0);
}

async fn the_cut_moves_back_to_keep_tool_calls_with_their_results(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("s"), |_| {}).await;
    let s = engine.session("pairs").unwrap();
    s.append(Message::user("start")).await.unwrap(); // 1
    s.append(Message::assistant_tool_calls("", vec![ToolCall::new("a", "ls", "{}")])).await.unwrap(); // 2
    s.append(Message::assistant("thinking")).await.unwrap(); // 3
    // Cutting at 3 would separate call a (2) from its future result.
    let outcome = s.compact(CompactionRequest::upto(Seq::new(3))).await.unwrap();
    let CompactionOutcome::Spliced { requested_upto, upto, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!((requested_upto, upto), (Seq::new(3), Seq::new(1)));
    s.append(Message::tool_result("a", "files")).await.unwrap(); // 5 (4 is the splice)
    let wm = s.working_memory(10).await.unwrap();
    assert_eq!(wm.messages.iter().map(|m| m.seq.get()).collect::<Vec<_>>(), vec![2, 3, 5]);

    // Nothing left to compact before an open call.
    s.append(Message::assistant_tool_calls("", vec![ToolCall::new("b", "ls", "{}")])).await.unwrap(); // 6
    let outcome = s.compact(CompactionRequest::upto(Seq::new(6))).await.unwrap();
    let CompactionOutcome::Spliced { upto, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(upto, Seq::new(5));
    let outcome = s.compact(CompactionRequest::upto(Seq::new(7))).await.unwrap();
    assert!(matches!(outcome, CompactionOutcome::NothingToCompact { requested_upto: Some(_), .. }), "{outcome:?}");
    assert!(matches!(s.compact(CompactionRequest::upto(Seq::new(99))).await, Err(Error::InvalidArgument { .. })));
}

async fn splices_extend_the_previous_summary_and_time_travel_sees_each(store: Store) {
    let engine = store
        .open_with_summarizer(
            FnSummarizer::new(|input| {
                Box::pin(async move {
                    let prev = input.previous_summary.unwrap_or_default();
                    Ok(format!("{prev}+{}", input.messages.len()))
                })
            }),
            |c| c.compaction.keep_last_messages = 4,
        )
        .await;
    let s = engine.session("twice").unwrap();
    for i in 0..3 {
        s.append_many(turn(i)).await.unwrap();
    }
    let first = s.compact(CompactionRequest::default()).await.unwrap();
    assert!(matches!(first, CompactionOutcome::Spliced { upto, .. } if upto == Seq::new(8)), "{first:?}");
    for i in 3..5 {
        s.append_many(turn(i)).await.unwrap();
    }
    let second = s.compact(CompactionRequest::default()).await.unwrap();
    assert!(matches!(second, CompactionOutcome::Spliced { upto, .. } if upto == Seq::new(17)), "{second:?}");
    let wm = s.working_memory(100).await.unwrap();
    assert_eq!(wm.summary.as_ref().unwrap().text, "+8+8");
    assert_eq!(wm.messages.len(), 4);
    let nothing = s.compact(CompactionRequest::default()).await.unwrap();
    assert!(matches!(nothing, CompactionOutcome::NothingToCompact { requested_upto: None, .. }), "{nothing:?}");

    // Time travel: just before the second splice, the first summary and everything after it.
    let past = s.working_memory_at(Seq::new(17), 100).await.unwrap();
    assert_eq!(past.summary.as_ref().map(|s| s.text.as_str()), Some("+8"));
    assert_eq!(past.messages.first().unwrap().seq, Seq::new(9));
    let before_any = s.working_memory_at(Seq::new(8), 100).await.unwrap();
    assert!(before_any.summary.is_none());
    let history = s.history(Seq::new(1), 100).await.unwrap();
    let splices: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CompactionSpliced(sp) => Some((e.seq.get(), sp.previous_upto.get(), sp.upto.get())),
            _ => None,
        })
        .collect();
    assert_eq!(splices, vec![(13, 0, 8), (22, 8, 17)]);
    drop((s, engine));

    // The view survives reopen.
    let engine =
        store.open_with(palimpsest::Components::default(), |c| c.durability = palimpsest::Durability::Buffered).await;
    let wm2 = engine.session("twice").unwrap().working_memory(100).await.unwrap();
    assert_eq!(wm2, wm);
}

async fn a_splice_is_abandoned_when_the_session_is_deleted_underneath(store: Store) {
    let gate = Arc::new(Notify::new());
    let engine = store.open_with_summarizer(gated(Arc::clone(&gate)), |c| c.compaction.keep_last_messages = 0).await;
    let s = engine.session("gone").unwrap();
    s.append_many(turn(0)).await.unwrap();
    let mut progress = engine.subscribe_progress();
    let task = tokio::spawn({
        let s = s.clone();
        async move { s.compact(CompactionRequest::default()).await }
    });
    wait_for_strategy(&mut progress).await;
    s.delete().await.unwrap();
    s.append(Message::user("new life")).await.unwrap();
    let before = snapshot(&s).await;
    gate.notify_one();
    let outcome = task.await.unwrap().unwrap();
    assert!(matches!(outcome, CompactionOutcome::Abandoned { .. }), "{outcome:?}");
    assert_eq!(snapshot(&s).await, before);
}

on_both_backends!(
    paused: appends_keep_completing_while_the_summarizer_is_busy,
    a_second_request_while_one_is_in_flight_says_so_and_changes_nothing,
    the_registry_is_empty_after_every_way_a_compaction_can_end,
    a_splice_is_abandoned_when_the_session_is_deleted_underneath,
);
on_both_backends!(
    the_cut_moves_back_to_keep_tool_calls_with_their_results,
    splices_extend_the_previous_summary_and_time_travel_sees_each,
);
