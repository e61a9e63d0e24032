//! `Session::update`: a reset, messages and a metadata document land in one atomic batch, the reset
//! keeps the old messages in the log (audit, export and import see them) while the working memory
//! starts after it, a stale `expect_last_seq` writes nothing, and metadata reads cost the head plus
//! one event.

mod backends;
mod common;

use backends::Store;
use common::{FnSummarizer, snapshot, turn};
use palimpsest::{AuditOptions, CompactionOutcome, CompactionRequest, Error, EventKind, Message, Seq, SessionUpdate};

async fn a_reset_replaces_the_window_and_keeps_the_old_messages_in_the_log(store: Store) {
    let engine =
        store.open_with_summarizer(FnSummarizer::constant("so far"), |c| c.compaction.keep_last_messages = 2).await;
    let s = engine.session("ns:replace").unwrap();
    for i in 0..3 {
        s.append_many(turn(i)).await.unwrap();
    }
    assert!(matches!(s.compact(CompactionRequest::default()).await.unwrap(), CompactionOutcome::Spliced { .. }));
    let before = s.head().await.unwrap().unwrap();
    let out = s
        .update(SessionUpdate {
            expect_last_seq: Some(before.last_seq()),
            reset: true,
            messages: vec![Message::user("fresh start"), Message::assistant("ok")],
            metadata: Some(r#"{"v":1}"#.to_string()),
        })
        .await
        .unwrap();
    let reset = out.reset.expect("a live session is reset");
    assert_eq!(reset, before.last_seq().next());
    assert_eq!(out.message_seqs.len(), 2);
    let state = s.read_state(50).await.unwrap();
    let texts: Vec<_> = state.memory.messages.iter().map(|m| m.message.content.as_str()).collect();
    assert_eq!(texts, ["fresh start", "ok"]);
    assert!(state.memory.summary.is_none(), "the old summary left with the old messages");
    assert_eq!(state.metadata.as_ref().map(|m| m.document.as_str()), Some(r#"{"v":1}"#));
    assert_eq!(s.metadata().await.unwrap(), state.metadata);
    assert_eq!(state.head.base(), reset);
    assert_eq!(state.head.log_start(), Seq::ZERO);
    // Compaction after a reset continues from it.
    s.append_many(turn(7)).await.unwrap();
    match s.compact(CompactionRequest::default()).await.unwrap() {
        CompactionOutcome::Spliced { upto, .. } => assert!(upto > reset),
        other => panic!("{other:?}"),
    }
    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.unwrap();
    assert!(report.ok, "{:?}", report.violations);

    // Export holds the whole log (the messages before the reset too); import restores it exactly.
    let mut lines = Vec::new();
    let n = s.export_jsonl(&mut lines).await.unwrap();
    assert_eq!(n, s.head().await.unwrap().unwrap().last_seq().get());
    let text = String::from_utf8(lines).unwrap();
    assert!(text.contains(r#""type":"messages_reset""#) && text.contains(r#""type":"metadata_set""#));
    let target_store = store.sibling().await;
    let target = target_store.open_with_summarizer(FnSummarizer::constant("unused"), |_| {}).await;
    let copy = target.session("ns:replace").unwrap();
    copy.import_jsonl(&text).await.unwrap();
    assert_eq!(snapshot(&s).await, snapshot(&copy).await);
    assert_eq!(s.read_state(50).await.unwrap(), copy.read_state(50).await.unwrap());
    assert!(target.audit_async(AuditOptions::default(), |_| {}).await.unwrap().ok);
    // Rebuild finds nothing to fix. On JetStream there is nothing to rebuild and it is refused:
    // SPEC.md 11a, "Audit": "`rebuild` stays `Unsupported` on this backend".
    let rebuilt = engine.rebuild(None).await;
    if store.is_nats() {
        assert!(matches!(rebuilt, Err(Error::Unsupported { backend: "nats", .. })), "{rebuilt:?}");
    } else {
        let rebuilt = rebuilt.unwrap();
        assert_eq!(rebuilt.heads_rewritten, 0, "{rebuilt:?}");
    }
}

async fn a_stale_expected_seq_writes_nothing(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("x"), |_| {}).await;
    let s = engine.session("stale").unwrap();
    s.append(Message::user("one")).await.unwrap();
    let before = snapshot(&s).await;
    let err = s
        .update(SessionUpdate {
            expect_last_seq: Some(Seq::ZERO),
            reset: true,
            messages: vec![Message::user("two")],
            metadata: Some("{}".to_string()),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { expected: 0, found: Some(1), .. }), "{err:?}");
    assert_eq!(snapshot(&s).await, before);
    // A bad message anywhere in the update writes nothing either, metadata included.
    let err = s
        .update(SessionUpdate {
            messages: vec![Message::user("fine"), Message::user("")],
            metadata: Some("{}".to_string()),
            ..SessionUpdate::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidMessage { index: 1, .. }), "{err:?}");
    assert_eq!(snapshot(&s).await, before);
    assert!(matches!(s.update(SessionUpdate::default()).await, Err(Error::InvalidArgument { .. })));
}

async fn metadata_is_bounded_and_forgotten_by_a_deletion(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("x"), |c| c.limits.max_metadata_bytes = 8).await;
    let s = engine.session("meta").unwrap();
    assert!(matches!(s.metadata().await, Err(Error::NotFound { .. })));
    let seq = s.set_metadata("12345678").await.unwrap();
    assert_eq!(s.metadata().await.unwrap().map(|m| (m.seq, m.document)), Some((seq, "12345678".to_string())));
    let err = s.set_metadata("123456789").await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { what: "metadata", .. }), "{err:?}");
    s.append(Message::user("hi")).await.unwrap();
    s.delete().await.unwrap();
    s.append(Message::user("again")).await.unwrap();
    assert_eq!(s.metadata().await.unwrap(), None, "a deletion forgets the metadata");
    let events = s.history(Seq::new(1), 100).await.unwrap();
    assert!(events.iter().all(|e| !matches!(e.kind, EventKind::MetadataSet { .. })));
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.unwrap().ok);
}

async fn a_conditional_delete_deletes_only_the_state_it_read(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("x"), |_| {}).await;
    let s = engine.session("cond").unwrap();
    s.append(Message::user("one")).await.unwrap();
    s.update(SessionUpdate { reset: true, messages: vec![Message::user("two")], ..SessionUpdate::default() })
        .await
        .unwrap();
    let last = s.head().await.unwrap().unwrap().last_seq();
    let before = snapshot(&s).await;
    let err = s.delete_expecting(Seq::new(last.get() - 1)).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(snapshot(&s).await, before, "a stale conditional delete writes nothing");
    let seq = s.delete_expecting(last).await.unwrap();
    let events = s.history(Seq::new(1), 10).await.unwrap();
    // The count covers the events before the reset too: the purge removes them all.
    assert!(matches!(events[0].kind, EventKind::SessionDeleted { n_events_removed: 3 }), "{events:?}");
    assert_eq!(events[0].seq, seq);
    assert!(matches!(s.delete_expecting(seq).await, Err(Error::NotFound { .. })));
    assert!(engine.wait_for_purges(std::time::Duration::from_secs(30)));
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.unwrap().ok);
}

on_both_backends!(
    a_reset_replaces_the_window_and_keeps_the_old_messages_in_the_log,
    a_stale_expected_seq_writes_nothing,
    metadata_is_bounded_and_forgotten_by_a_deletion,
    a_conditional_delete_deletes_only_the_state_it_read,
);
