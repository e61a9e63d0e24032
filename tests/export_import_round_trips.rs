//! Sessions as JSON lines: export then import into an empty database round-trips every event
//! (messages, splices with their summary text, deletions); plain OpenAI chat messages import; a bad
//! line is refused with its number and nothing of the file is applied; random lines never panic.

mod backends;
mod common;

use backends::Store;
use common::{FnSummarizer, snapshot, turn};
use palimpsest::{AuditOptions, CompactionOutcome, CompactionRequest, Error, Seq};

async fn export_then_import_into_an_empty_database_round_trips(store: Store) {
    let engine = store
        .open_with_summarizer(FnSummarizer::constant("so far: builds pass"), |c| c.compaction.keep_last_messages = 3)
        .await;
    let s = engine.session("src").unwrap();
    for i in 0..4 {
        s.append_many(turn(i)).await.unwrap();
    }
    assert!(matches!(s.compact(CompactionRequest::default()).await.unwrap(), CompactionOutcome::Spliced { .. }));
    s.append(palimpsest::Message::user("after").with_metadata("k", "v")).await.unwrap();
    let gone = engine.session("gone").unwrap();
    gone.append_many(turn(9)).await.unwrap();
    gone.delete().await.unwrap();
    gone.append(palimpsest::Message::user("reborn")).await.unwrap();

    let target_store = store.sibling().await;
    let target = target_store.open_with_summarizer(FnSummarizer::constant("unused"), |_| {}).await;
    for id in ["src", "gone"] {
        let mut out = Vec::new();
        let n = engine.session(id).unwrap().export_jsonl(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count() as u64, n);
        let copy = target.session(id).unwrap();
        let report = copy.import_jsonl(&text).await.unwrap();
        assert_eq!(report.n_events, n);
        let (from, to) = (engine.session(id).unwrap(), copy);
        assert_eq!(snapshot(&from).await, snapshot(&to).await, "{id}: events, times and head are restored");
        assert_eq!(from.working_memory(50).await.ok(), to.working_memory(50).await.ok());
    }
    assert!(target.audit_async(AuditOptions::default(), |_| {}).await.unwrap().ok);
}

async fn plain_openai_messages_import_and_bad_lines_are_refused_whole(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("s"), |_| {}).await;
    let s = engine.session("chat").unwrap();
    let good = r#"{"role":"system","content":"be brief"}
{"role":"user","content":"list files","name":"ann"}
{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"ls","arguments":"{}"}}]}
{"role":"tool","tool_call_id":"c1","content":"a.txt"}

{"role":"assistant","content":"one file: a.txt"}
"#;
    let report = s.import_jsonl(good).await.unwrap();
    assert_eq!((report.n_events, report.first_seq, report.last_seq), (5, Seq::new(1), Seq::new(5)));
    let wm = s.working_memory(10).await.unwrap();
    assert_eq!(wm.messages[2].message.tool_calls[0].name, "ls");
    let before = snapshot(&s).await;

    let cases = [
        ("{\"role\":\"user\",\"content\":\"ok\"}\nnot json\n", 2),
        ("{\"role\":\"robot\",\"content\":\"x\"}", 1),
        ("{\"role\":\"user\",\"content\":\"\"}", 1),
        ("{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}", 1),
        (
            "{\"role\":\"user\",\"content\":\"a\"}\n{\"role\":\"user\",\"content\":\"b\"}\n{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"again\"}",
            3,
        ),
        ("{\"role\":\"tool\",\"tool_call_id\":\"nope\",\"content\":\"x\"}", 1),
        ("{\"role\":\"user\",\"content\":\"x\",\"seq\":3}", 1),
        ("{\"type\":\"compaction_spliced\",\"upto\":1,\"previous_upto\":0,\"summary\":\"s\"}", 1),
        ("{\"type\":\"warp\"}", 1),
        ("[1,2]", 1),
        ("", 1),
    ];
    for (text, line) in cases {
        match s.import_jsonl(text).await {
            Err(Error::InvalidImport { line: got, .. }) => assert_eq!(got, line, "{text}"),
            other => panic!("{text:?} gave {other:?}"),
        }
    }
    assert_eq!(snapshot(&s).await, before, "refused imports change nothing");
}

async fn random_import_lines_are_errors_never_panics(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("s"), |_| {}).await;
    let s = engine.session("fuzz").unwrap();
    let mut rng = common::Rng(42);
    let pieces = [
        "{",
        "}",
        "\"role\"",
        ":",
        "\"user\"",
        ",",
        "\"content\"",
        "null",
        "\"tool_calls\"",
        "[",
        "]",
        "\"x\"",
        "1",
        "-5",
        "\"type\"",
        "\"compaction_spliced\"",
        "\"seq\"",
        "\u{0}",
        "\"\\ud800\"",
        "1e400",
        "true",
        "\n",
    ];
    for _ in 0..2_000 {
        let n = rng.below(24) as usize;
        let line: String = (0..n).map(|_| pieces[rng.below(pieces.len() as u64) as usize]).collect();
        let _ = s.import_jsonl(&line).await;
        let bytes: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
        let _ = s.import_jsonl(&String::from_utf8_lossy(&bytes)).await;
    }
    let ok = engine.audit_async(AuditOptions::default(), |_| {}).await.unwrap();
    assert!(ok.ok, "{:?}", ok.violations);
}

/// Issue 10, item 3: each of these imported (and `audit` called the result ok) although a reader
/// then refused it or the next write panicked. Each is now refused with its line number.
async fn import_refuses_what_readers_refuse_or_what_would_overflow_later(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("s"), |_| {}).await;
    let user = "{\"role\":\"user\",\"content\":\"hello\"}";
    let cases = [
        (
            format!(
                "{user}\n{{\"type\":\"memories_extracted\",\"namespace\":\"n\",\"from\":5,\"upto\":2,\"n_memories\":1}}"
            ),
            2,
        ),
        (format!("{{\"type\":\"session_deleted\",\"seq\":{}}}", u64::MAX), 1),
        (format!("{{\"type\":\"session_deleted\",\"seq\":{}}}\n{user}", u64::MAX - 1), 1),
        (format!("{user}\n{{\"type\":\"episode_boundary\",\"episode\":{},\"reason\":\"explicit\"}}", u64::MAX), 2),
        (format!("{user}\n{{\"type\":\"episode_boundary\",\"episode\":7,\"reason\":\"explicit\"}}"), 2),
        (
            format!(
                "{user}\n{{\"type\":\"memories_extracted\",\"namespace\":\"n\",\"from\":0,\"upto\":9,\"n_memories\":1}}"
            ),
            2,
        ),
        (
            format!(
                "{user}\n{{\"type\":\"memories_extracted\",\"namespace\":\"a b\",\"from\":0,\"upto\":1,\"n_memories\":1}}"
            ),
            2,
        ),
    ];
    for (i, (text, line)) in cases.iter().enumerate() {
        let s = engine.session(format!("case-{i}")).unwrap();
        match s.import_jsonl(text).await {
            Err(Error::InvalidImport { line: got, .. }) => assert_eq!(got, *line, "{text}"),
            other => panic!("{text:?} gave {other:?}"),
        }
        assert!(s.head().await.unwrap().is_none(), "a refused import writes nothing");
        // The same lines appended to a session that already has events are refused too.
        let t = engine.session(format!("busy-{i}")).unwrap();
        t.append(palimpsest::Message::user("first")).await.unwrap();
        let before = snapshot(&t).await;
        assert!(t.import_jsonl(text).await.is_err(), "{text}");
        assert_eq!(snapshot(&t).await, before);
        t.append(palimpsest::Message::user("still writable")).await.unwrap();
    }
    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.unwrap();
    assert!(report.ok, "{:?}", report.violations);
}

/// Issue 10, item 4: export skipped a deletion that sat past its first page (seq 1,000), so
/// the file started mid-log and could not be imported.
async fn a_deletion_past_the_first_export_page_round_trips(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("s"), |_| {}).await;
    let s = engine.session("long").unwrap();
    for chunk in 0..3 {
        let batch: Vec<_> =
            (0..500).map(|i| palimpsest::Message::assistant(format!("line {}", chunk * 500 + i))).collect();
        s.append_many(batch).await.unwrap();
    }
    let deleted_at = s.delete().await.unwrap();
    assert_eq!(deleted_at, Seq::new(1501));
    s.append(palimpsest::Message::user("after")).await.unwrap();
    let mut out = Vec::new();
    assert_eq!(s.export_jsonl(&mut out).await.unwrap(), 2);
    let target_store = store.sibling().await;
    let target = target_store.open_with_summarizer(FnSummarizer::constant("unused"), |_| {}).await;
    let copy = target.session("long").unwrap();
    copy.import_jsonl(&String::from_utf8(out).unwrap()).await.unwrap();
    assert_eq!(snapshot(&s).await, snapshot(&copy).await);
    assert!(target.audit_async(AuditOptions::default(), |_| {}).await.unwrap().ok);
}

/// A memory marker imported into a deleted session is an ordinary commit after the tombstone: its
/// head stays deleted, but the deletion stays in the log, so export starts at it and the file
/// imports elsewhere. (On JetStream the marker's commit was once taken for a deletion and purged
/// the tombstone below it.)
async fn a_marker_imported_into_a_deleted_session_keeps_its_tombstone(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("s"), |c| c.extraction.enabled = false).await;
    let s = engine.session("gone").unwrap();
    s.append(palimpsest::Message::user("hello")).await.unwrap();
    let deleted_at = s.delete().await.unwrap();
    let marker = format!(
        r#"{{"type":"memories_extracted","namespace":"ns","from":{deleted_at},"upto":{deleted_at},"n_memories":1}}"#
    );
    s.import_jsonl(&marker).await.unwrap();
    let history = s.history(Seq::new(1), 10).await.unwrap();
    assert_eq!(history.iter().map(|e| e.seq).collect::<Vec<_>>(), [deleted_at, deleted_at.next()]);
    assert!(matches!(history[0].kind, palimpsest::EventKind::SessionDeleted { .. }), "{history:?}");
    let mut out = Vec::new();
    assert_eq!(s.export_jsonl(&mut out).await.unwrap(), 2);
    let target_store = store.sibling().await;
    let target = target_store.open_with_summarizer(FnSummarizer::constant("unused"), |_| {}).await;
    let copy = target.session("gone").unwrap();
    copy.import_jsonl(&String::from_utf8(out).unwrap()).await.unwrap();
    assert_eq!(snapshot(&s).await, snapshot(&copy).await);
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.unwrap().ok);
    assert!(target.audit_async(AuditOptions::default(), |_| {}).await.unwrap().ok);
}

on_both_backends!(
    a_marker_imported_into_a_deleted_session_keeps_its_tombstone,
    export_then_import_into_an_empty_database_round_trips,
    plain_openai_messages_import_and_bad_lines_are_refused_whole,
    random_import_lines_are_errors_never_panics,
    import_refuses_what_readers_refuse_or_what_would_overflow_later,
    a_deletion_past_the_first_export_page_round_trips,
);
