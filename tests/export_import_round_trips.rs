//! Sessions as JSON lines: export then import into an empty database round-trips every event
//! (messages, splices with their summary text, deletions); plain OpenAI chat messages import; a bad
//! line is refused with its number and nothing of the file is applied; random lines never panic.

mod common;

use common::{FnSummarizer, engine_with, snapshot, turn};
use palimpsest::{AuditOptions, CompactionOutcome, CompactionRequest, Error, Seq};

#[tokio::test]
async fn export_then_import_into_an_empty_database_round_trips() {
    let (engine, _dir) =
        engine_with(FnSummarizer::constant("so far: builds pass"), |c| c.compaction.keep_last_messages = 3);
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

    let (target, _dir2) = engine_with(FnSummarizer::constant("unused"), |_| {});
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
    assert!(target.audit(&AuditOptions::default(), &mut |_| {}).unwrap().ok);
}

#[tokio::test]
async fn plain_openai_messages_import_and_bad_lines_are_refused_whole() {
    let (engine, _dir) = engine_with(FnSummarizer::constant("s"), |_| {});
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

#[tokio::test]
async fn random_import_lines_are_errors_never_panics() {
    let (engine, _dir) = engine_with(FnSummarizer::constant("s"), |_| {});
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
    let ok = engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap();
    assert!(ok.ok, "{:?}", ok.violations);
}
