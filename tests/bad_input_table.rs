//! The bad-input table: every row is one bad input through the public API, the config loader,
//! import, or the database directory, with the exact error it must produce. After the rows run,
//! a check proves nothing stored changed. (The CLI's own rows are in tools/cli/tests.)

mod backends;
mod common;

use std::future::Future;
use std::pin::Pin;

use backends::Store;
use common::{FnSummarizer, snapshot, turn};
use palimpsest::{AuditOptions, CompactionRequest, Config, Engine, Error, Message, Role, Seq, SessionId, ToolCall};

type Run<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + 'a>>;

fn config_error(text: &'static str) -> Run<'static> {
    Box::pin(async move { Config::from_json_str(text).map(drop) })
}

async fn every_bad_input_gets_its_exact_error_and_changes_nothing(store: Store) {
    let engine = store.open_with_summarizer(FnSummarizer::constant("s"), |_| {}).await;
    let s = engine.session("agent-1").unwrap();
    s.append_many(turn(0)).await.unwrap();
    s.append(Message::assistant_tool_calls("", vec![ToolCall::new("open-1", "fetch", "{}")])).await.unwrap();
    let before = snapshot(&s).await;
    let e = &engine;
    let msg = |m: Message| -> Run<'_> { Box::pin(async move { e.session("agent-1")?.append(m).await.map(drop) }) };
    let big = "x".repeat((1 << 20) + 1);

    let rows: Vec<(&str, Run<'_>, &str)> = vec![
        // Session ids.
        (
            "empty session id",
            Box::pin(async { SessionId::new("").map(drop) }),
            r#"invalid session id "": must not be empty"#,
        ),
        (
            "session id too long",
            Box::pin(async { SessionId::new("a".repeat(129)).map(drop) }),
            "is 129 bytes, the limit is 128",
        ),
        (
            "space in session id",
            Box::pin(async { SessionId::new("a b").map(drop) }),
            "byte 1 (' ') is outside the allowed set",
        ),
        (
            "slash in session id",
            Box::pin(async { SessionId::new("../etc").map(drop) }),
            "byte 2 ('/') is outside the allowed set",
        ),
        (
            "unicode in session id",
            Box::pin(async { SessionId::new("café").map(drop) }),
            "byte 3 ('é') is outside the allowed set",
        ),
        (
            "NUL in session id",
            Box::pin(async { SessionId::new("a\0b").map(drop) }),
            r"byte 1 ('\0') is outside the allowed set",
        ),
        // Messages.
        ("empty user content", msg(Message::user("")), "invalid message 0: user message has empty content"),
        ("empty assistant content without calls", msg(Message::assistant("")), "assistant message has empty content"),
        (
            "oversized message",
            msg(Message::user(big)),
            "is 1048577 bytes, the limit (limits.max_message_bytes) is 1048576",
        ),
        ("unknown role", Box::pin(async { "robot".parse::<Role>().map(drop) }), r#"unknown role "robot""#),
        (
            "tool calls on a user message",
            msg(Message { tool_calls: vec![ToolCall::new("c", "t", "")], ..Message::user("x") }),
            "user message carries tool calls",
        ),
        (
            "tool message without tool_call_id",
            msg(Message { tool_call_id: None, ..Message::tool_result("c", "x") }),
            "tool message has no tool_call_id",
        ),
        (
            "tool_call_id on an assistant message",
            msg(Message { tool_call_id: Some("c".into()), ..Message::assistant("x") }),
            "assistant message has a tool_call_id",
        ),
        (
            "empty tool call id",
            msg(Message::assistant_tool_calls("", vec![ToolCall::new("", "t", "")])),
            "tool call id is empty",
        ),
        (
            "empty tool name",
            msg(Message::assistant_tool_calls("", vec![ToolCall::new("c9", "", "")])),
            "tool name is empty",
        ),
        (
            "control character in a call id",
            msg(Message::assistant_tool_calls("", vec![ToolCall::new("c\u{7}", "t", "")])),
            "contains a control character",
        ),
        (
            "tool name too long",
            msg(Message::assistant_tool_calls("", vec![ToolCall::new("c9", "n".repeat(257), "")])),
            "tool name is 257 bytes, the limit is 256",
        ),
        (
            "newline in a metadata key",
            msg(Message::user("x").with_metadata("a\nb", "v")),
            "metadata key \"a\\nb\" contains a control character",
        ),
        (
            "too many tool calls",
            msg(Message::assistant_tool_calls("", (0..129).map(|i| ToolCall::new(format!("m{i}"), "t", "")).collect())),
            "has 129 tool calls, the limit is 128",
        ),
        // Tool pairing.
        (
            "result for a call never made",
            msg(Message::tool_result("ghost", "x")),
            r#"message 0: tool result for call "ghost", which is not an open tool call of this session"#,
        ),
        (
            "second result for a call",
            msg(Message::tool_result("call-0", "again")),
            r#"message 0: tool call "call-0" already has a result"#,
        ),
        (
            "call id already open",
            msg(Message::assistant_tool_calls("", vec![ToolCall::new("open-1", "t", "")])),
            r#"message 0: duplicate tool call id "open-1""#,
        ),
        (
            "call id twice in one message",
            msg(Message::assistant_tool_calls("", vec![ToolCall::new("d", "t", ""), ToolCall::new("d", "t", "")])),
            r#"duplicate tool call id "d""#,
        ),
        (
            "bad second message of a batch",
            Box::pin(async { s.append_many(vec![Message::user("ok"), Message::user("")]).await.map(drop) }),
            "invalid message 1: user message has empty content",
        ),
        (
            "empty batch",
            Box::pin(async { s.append_many(vec![]).await.map(drop) }),
            "invalid batch size: 0 messages; 1..=1000",
        ),
        // Reads and compaction arguments.
        (
            "read limit over the maximum",
            Box::pin(async { s.working_memory(10_001).await.map(drop) }),
            "invalid read limit: 10001 is over limits.max_read_messages (10000)",
        ),
        (
            "time travel past the end",
            Box::pin(async { s.working_memory_at(Seq::new(99), 5).await.map(drop) }),
            "invalid seq: 99 is outside the session's log (1..=5)",
        ),
        (
            "working memory of an unknown session",
            Box::pin(async { e.session("nobody")?.working_memory(5).await.map(drop) }),
            r#"session "nobody" not found"#,
        ),
        (
            "compaction past the end",
            Box::pin(async { s.compact(CompactionRequest::upto(Seq::new(50))).await.map(drop) }),
            "invalid upto: 50 is past the session's last seq 5",
        ),
        (
            "focus too long",
            Box::pin(async { s.compact(CompactionRequest::default().with_focus("f".repeat(2049))).await.map(drop) }),
            "invalid focus: 2049 bytes, the limit is 2048",
        ),
        // Config.
        (
            "config: zero message limit",
            config_error(r#"{"limits":{"max_message_bytes":0}}"#),
            "invalid config: limits.max_message_bytes: 0 is out of range 1..=16777216",
        ),
        (
            "config: negative timeout",
            config_error(r#"{"writes":{"timeout_ms":-5}}"#),
            "invalid config: writes.timeout_ms: invalid value: integer `-5`, expected u64",
        ),
        (
            "config: write timeout below its floor",
            config_error(r#"{"writes":{"timeout_ms":999}}"#),
            "invalid config: writes.timeout_ms: 999 is out of range 1000..=600000",
        ),
        (
            "config: chunk timeout over the compaction's",
            config_error(r#"{"compaction":{"timeout_ms":100000}}"#),
            "invalid config: compaction.chunk_timeout_ms: 120000 is over compaction.timeout_ms (100000): \
             one call cannot outlast the compaction it is part of",
        ),
        (
            "config: merge timeout over the compaction's",
            config_error(r#"{"compaction":{"timeout_ms":150000,"merge_timeout_ms":150001}}"#),
            "invalid config: compaction.merge_timeout_ms: 150001 is over compaction.timeout_ms (150000): \
             one call cannot outlast the compaction it is part of",
        ),
        (
            "config: namespace lock timeout over the extraction's",
            config_error(r#"{"locks":{"timeout_ms":100000,"max_retries":null}}"#),
            "invalid config: locks.timeout_ms: 100000 is over background.extraction_timeout_ms (90000), the job the \
             namespace lock serves: the extraction would be stopped before locks.on_timeout could apply",
        ),
        (
            "config: namespace lock retries over the extraction's timeout",
            config_error(r#"{"background":{"extraction_timeout_ms":1000}}"#),
            "invalid config: locks.max_retries: 10 retries of locks.retry_interval_ms (200) wait up to 2000 ms, \
             which is over background.extraction_timeout_ms (1000), the job the namespace lock serves: \
             the extraction would be stopped before locks.on_timeout could apply",
        ),
        (
            "config: wrong type",
            config_error(r#"{"compaction":{"chunk_concurrency":"four"}}"#),
            "invalid config: compaction.chunk_concurrency: invalid type: string \"four\", expected u64",
        ),
        (
            "config: unknown field",
            config_error(r#"{"durabilty":"sync"}"#),
            "invalid config: durabilty: unknown field `durabilty`",
        ),
        (
            "config: out of range",
            config_error(r#"{"compaction":{"chunk_concurrency":33}}"#),
            "compaction.chunk_concurrency: 33 is out of range 1..=32",
        ),
        (
            "config: empty model",
            config_error(r#"{"summarizer":{"openai":{"model":" "}}}"#),
            "invalid config: summarizer.openai.model: must not be empty",
        ),
        (
            "config: bad base url",
            config_error(r#"{"summarizer":{"openai":{"base_url":"ftp://x"}}}"#),
            "must start with http:// or https://",
        ),
        (
            "config: not TOML",
            Box::pin(async { Config::from_toml_str("durability = ").map(drop) }),
            "invalid config: (document): not valid TOML",
        ),
        // Import lines.
        (
            "import: not JSON on line 2",
            Box::pin(async { s.import_jsonl("{\"role\":\"user\",\"content\":\"a\"}\n{oops").await.map(drop) }),
            "import line 2: not JSON",
        ),
        (
            "import: content parts array",
            Box::pin(async { s.import_jsonl(r#"{"role":"user","content":[]}"#).await.map(drop) }),
            "import line 1: content: invalid type: sequence, expected a string",
        ),
        (
            "import: splice into a live session",
            Box::pin(async {
                s.import_jsonl(r#"{"type":"compaction_spliced","upto":1,"previous_upto":0,"summary":"s"}"#)
                    .await
                    .map(drop)
            }),
            "import line 1: splice and deletion lines can only be imported into an empty session",
        ),
    ];
    assert!(rows.len() >= 30);
    for (what, run, expected) in rows {
        let err = run.await.expect_err(what);
        let text = err.to_string();
        assert!(text.contains(expected), "{what}: expected {expected:?}, got {text:?}");
    }
    assert_eq!(snapshot(&s).await, before, "no bad input changed the session");
    assert!(engine.list_sessions(None, 10).await.unwrap().iter().map(SessionId::as_str).eq(["agent-1"]));
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.unwrap().ok);
}

on_both_backends!(every_bad_input_gets_its_exact_error_and_changes_nothing);

// fjall-only: a second open of one directory is `Locked`, and a directory or file that is not a
// database is refused; the blocking `open` is fjall's.
#[tokio::test]
async fn the_database_directory_is_refused_when_locked_foreign_or_a_file() {
    // The database directory itself.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let holder = Engine::open(Config::new(&db)).unwrap();
    let locked = Engine::open(Config::new(&db)).err().expect("locked");
    assert_eq!(locked.to_string(), format!("database at {} is locked by another process", db.display()));
    drop(holder);
    let not_db = tempfile::tempdir().unwrap();
    std::fs::write(not_db.path().join("notes.txt"), "mine").unwrap();
    let refused = Engine::open(Config::new(not_db.path())).err().expect("refused");
    assert!(refused.to_string().contains("is not a usable palimpsest database"), "{refused}");
    // A JetStream config given to the blocking `open` (the cluster is reached by the async
    // `connect`) is refused, never served from a local fjall database instead (and nothing is
    // created at `path`).
    let nats_path = dir.path().join("would-be-nats");
    let mut nats = Config::from_json_str(
        r#"{"storage":{"kind":"nats","nats":{"urls":["nats://127.0.0.1:4222"],"sync_always_acknowledged":true}}}"#,
    )
    .expect("a valid config");
    nats.path = nats_path.clone();
    let err = Engine::open(nats).err().expect("refused");
    assert!(err.to_string().contains("storage.kind") && err.to_string().contains("Engine::connect"), "{err}");
    assert!(!nats_path.exists(), "nothing was created");
    let file = not_db.path().join("notes.txt");
    assert!(Engine::open(Config::new(&file)).err().expect("a file").to_string().contains("it is not a directory"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine", "nothing was written there");
}

// fjall-only: damage written into fjall's journal.
#[tokio::test]
async fn a_corrupted_journal_tail_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let engine = Engine::open(Config::new(&db)).unwrap();
        engine.session("j").unwrap().append_many(turn(0)).await.unwrap();
    }
    // Garbage after the last batch: a torn write, as a crash mid-append leaves.
    let journal = newest_journal(&db);
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&[0x5a; 37]);
    std::fs::write(&journal, bytes).unwrap();
    // fjall drops a torn last batch at recovery: the open succeeds and every acknowledged event is there.
    let engine = Engine::open(Config::new(&db)).expect("a torn tail is recovered from");
    let s = engine.session("j").unwrap();
    assert_eq!(s.history(Seq::new(1), 10).await.unwrap().len(), 4, "acknowledged events survive");
    assert!(engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap().ok);
}

/// A power cut can persist a journal entry's header only in part: here the on-disk value length of
/// the last batch's event is zero while its real length is not (the pattern a torn page leaves, seen
/// by the power-loss harness). fjall 3.1.13 `debug_assert`s that the two agree while it replays the
/// journal (`journal/entry.rs` 190): with debug assertions on, opening the database panics. The
/// workspace compiles fjall without them in every profile (Cargo.toml; SPEC 10), so the entry reads
/// as damage: the torn batch is dropped whole and everything before it opens and audits clean.
// fjall-only: damage written into fjall's journal.
#[tokio::test]
async fn a_journal_entry_torn_inside_its_header_is_dropped_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let last = {
        let engine = Engine::open(Config::new(&db)).unwrap();
        let s = engine.session("torn").unwrap();
        s.append_many(turn(0)).await.unwrap();
        s.append(Message::user("the batch a power cut tears")).await.unwrap()
    };
    let journal = newest_journal(&db);
    let mut bytes = std::fs::read(&journal).unwrap();
    let key = [b"torn\0".as_slice(), &last.get().to_be_bytes()].concat();
    let at = bytes.windows(key.len()).rposition(|w| w == key).expect("the last event's key is in the journal");
    // The entry's header ends with the value's real length, then its on-disk length (u32 LE each).
    let real = u32::from_le_bytes(bytes[at - 8..at - 4].try_into().unwrap());
    assert!(real > 0, "the event has a value");
    bytes[at - 4..at].copy_from_slice(&0u32.to_le_bytes());
    std::fs::write(&journal, bytes).unwrap();

    let engine = Engine::open(Config::new(&db)).expect("a torn entry is damage to drop, not a panic");
    let s = engine.session("torn").unwrap();
    let history = s.history(Seq::new(1), 10).await.unwrap();
    // The first batch is whole; the torn one is there whole (if a flush had persisted it before the
    // journal was read) or not at all.
    assert!(history.len() == 4 || history.len() == 5, "{} events", history.len());
    assert!(history.iter().take(4).zip(1..).all(|(e, seq)| e.seq == Seq::new(seq)));
    assert!(engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap().ok);
}

/// The newest journal file of the fjall database at `db` (the one recovery reads last).
fn newest_journal(db: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max()
        .expect("a journal file")
}
