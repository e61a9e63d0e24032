//! The engine's backend-neutral behaviour as one suite, run on both storage backends
//! (`on_both_backends!`): fjall (a temp directory) and NATS JetStream (a real 3-node cluster on
//! loopback, with `sync_interval: always`). Every scenario gets a fresh store (a new directory, or
//! new streams) and two engines on it: on JetStream two connections, as two processes would have;
//! on fjall, where a second open of one directory is `Locked`, the same engine twice. Then the
//! store audits clean. What only JetStream has (refusals, damage written past the engine, moving a
//! session between backends) is `the_engine_suite_passes_on_nats`.
//!
//! Needs `PALIMPSEST_NATS_SERVER` (scripts/test sets it); fails loudly without it.

mod backends;

use std::collections::BTreeSet;

use backends::{Store, nats_common};
use nats_common::{Cluster, wait_stream_leader};
use palimpsest::{
    AuditOptions, CompactionOutcome, CompactionRequest, Components, Config, Engine, Error, Event, EventKind, Message,
    Seq, SessionUpdate, Splice, StorageKind, SummaryHash, ToolCall, ViolationKind,
};

/// Where the JetStream-only test's stores live (its own cluster, and a fjall directory to move a
/// session into).
enum Rig {
    Fjall(tempfile::TempDir),
    Nats { cluster: Cluster, dir: tempfile::TempDir },
}

impl Rig {
    fn fjall() -> Self {
        Rig::Fjall(tempfile::tempdir().expect("temp dir"))
    }

    async fn nats() -> Self {
        Rig::Nats { cluster: Cluster::start(3).await, dir: tempfile::tempdir().expect("temp dir") }
    }

    fn config(&self, scenario: &str) -> Config {
        match self {
            Rig::Fjall(dir) => {
                let mut config = Config::new(dir.path().join(scenario));
                config.extraction.enabled = false;
                config
            }
            Rig::Nats { cluster, dir } => {
                let mut config = Config::new(dir.path().join(scenario));
                config.storage.kind = StorageKind::Nats;
                config.storage.nats = nats_common::config(cluster, scenario, 3);
                config.extraction.enabled = false;
                config
            }
        }
    }

    /// Two engines on a fresh store for `scenario`.
    async fn engines(&self, scenario: &str) -> (Engine, Engine) {
        let config = self.config(scenario);
        let a = Engine::connect(config.clone(), Components::default()).await.expect("connect");
        match self {
            Rig::Fjall(_) => (a.clone(), a),
            Rig::Nats { cluster, .. } => {
                // A new stream refuses publishes until its first leader is elected.
                let js = async_nats::jetstream::new(cluster.raw_client().await);
                wait_stream_leader(cluster, &js, &format!("{scenario}_s0")).await;
                wait_stream_leader(cluster, &js, &format!("{scenario}_meta")).await;
                let b = Engine::connect(config, Components::default()).await.expect("connect a second engine");
                (a, b)
            }
        }
    }
}

fn text(m: &palimpsest::StoredMessage) -> &str {
    &m.message.content
}

/// Appends, then every read: head, working memory, time travel, history, and their errors.
async fn appends_read_back_through(a: &Engine, _b: &Engine, backend: &str) {
    let s = a.session("reader").expect("id");
    assert!(s.head().await.expect("head").is_none(), "{backend}: a new session has no head");
    assert!(matches!(s.working_memory(5).await, Err(Error::NotFound { .. })), "{backend}");
    assert!(matches!(s.history(Seq::new(1), 5).await, Err(Error::NotFound { .. })), "{backend}");
    let pair = vec![
        Message::user("find flights"),
        Message::assistant_tool_calls("", vec![ToolCall::new("c1", "search", "{\"to\":\"OSL\"}")]),
        Message::tool_result("c1", "3 flights"),
    ];
    let range = s.append_many(pair).await.expect("append a tool pair");
    assert_eq!((range.start, range.end), (Seq::new(1), Seq::new(4)), "{backend}");
    for i in 0..20 {
        assert_eq!(s.append(Message::user(format!("turn {i}"))).await.expect("append"), Seq::new(4 + i), "{backend}");
    }
    let head = s.head().await.expect("head").expect("exists");
    assert_eq!((head.last_seq(), head.n_messages()), (Seq::new(23), 23), "{backend}");

    let wm = s.working_memory(5).await.expect("working memory");
    assert_eq!(wm.last_seq, Seq::new(23), "{backend}");
    assert_eq!(wm.n_messages, Some(23), "{backend}");
    let texts: Vec<&str> = wm.messages.iter().map(text).collect();
    assert_eq!(texts, ["turn 15", "turn 16", "turn 17", "turn 18", "turn 19"], "{backend}");
    // Read again (a cache may answer now): the same.
    let again = s.working_memory(5).await.expect("working memory");
    assert_eq!(again.messages.iter().map(text).collect::<Vec<_>>(), texts, "{backend}");

    let then = s.working_memory_at(Seq::new(3), 10).await.expect("time travel");
    assert_eq!((then.last_seq, then.n_messages), (Seq::new(3), None), "{backend}");
    assert_eq!(then.messages.iter().map(text).collect::<Vec<_>>(), ["find flights", "", "3 flights"], "{backend}");
    let now = s.working_memory_at(Seq::new(23), 2).await.expect("time travel to the head");
    assert_eq!((now.n_messages, now.messages.len()), (Some(23), 2), "{backend}");
    assert!(matches!(s.working_memory_at(Seq::new(24), 2).await, Err(Error::InvalidArgument { .. })), "{backend}");

    let first = s.history(Seq::new(1), 10).await.expect("history");
    assert_eq!(first.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>(), "{backend}");
    let tail = s.history(Seq::new(20), 100).await.expect("history");
    assert_eq!(tail.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), [20, 21, 22, 23], "{backend}");
    assert!(s.history(Seq::new(24), 10).await.expect("past the end").is_empty(), "{backend}");
    let over = usize::try_from(a.config().limits.max_read_messages).expect("fits") + 1;
    assert!(matches!(s.working_memory(over).await, Err(Error::InvalidArgument { .. })), "{backend}");
}

/// Bad writes are refused with their typed error and change nothing.
async fn bad_writes_change_nothing_through(a: &Engine, _b: &Engine, backend: &str) {
    let s = a.session("strict").expect("id");
    s.append(Message::assistant_tool_calls("", vec![ToolCall::new("c1", "grep", "{}")])).await.expect("a call");
    let before = s.head().await.expect("head");
    let unknown = s.append(Message::tool_result("nope", "?")).await;
    assert!(matches!(unknown, Err(Error::UnknownToolCall { .. })), "{backend}: {unknown:?}");
    let dup = s.append(Message::assistant_tool_calls("", vec![ToolCall::new("c1", "grep", "{}")])).await;
    assert!(matches!(dup, Err(Error::DuplicateToolCallId { .. })), "{backend}: {dup:?}");
    // A batch is atomic: its valid first message is not stored either.
    let half = s.append_many(vec![Message::user("ok"), Message::tool_result("nope", "?")]).await;
    assert!(matches!(half, Err(Error::UnknownToolCall { .. })), "{backend}: {half:?}");
    assert!(matches!(s.append_many(Vec::new()).await, Err(Error::InvalidArgument { .. })), "{backend}");
    assert_eq!(s.head().await.expect("head"), before, "{backend}: nothing was written");
    s.append(Message::tool_result("c1", "found")).await.expect("the real answer");
    let twice = s.append(Message::tool_result("c1", "again")).await;
    assert!(matches!(twice, Err(Error::ToolCallAlreadyAnswered { .. })), "{backend}: {twice:?}");
    assert_eq!(s.head().await.expect("head").expect("exists").last_seq(), Seq::new(2), "{backend}");
}

/// Deletion: reads say not found, history starts at the deletion, numbering goes on, listing
/// skips the session until it is written again.
async fn deletion_and_listing_through(a: &Engine, _b: &Engine, backend: &str) {
    for id in ["b", "a", "c"] {
        a.session(id).expect("id").append(Message::user(format!("hello {id}"))).await.expect("append");
    }
    let names = |ids: Vec<palimpsest::SessionId>| ids.iter().map(|i| i.as_str().to_string()).collect::<Vec<_>>();
    assert_eq!(names(a.list_sessions(None, 10).await.expect("list")), ["a", "b", "c"], "{backend}");
    let after_a = a.session("a").expect("id");
    assert_eq!(names(a.list_sessions(Some(after_a.id()), 1).await.expect("page")), ["b"], "{backend}");

    let b = a.session("b").expect("id");
    b.append(Message::user("second")).await.expect("append");
    assert_eq!(b.delete().await.expect("delete"), Seq::new(3), "{backend}");
    assert!(matches!(b.delete().await, Err(Error::NotFound { .. })), "{backend}");
    assert!(matches!(b.working_memory(5).await, Err(Error::NotFound { .. })), "{backend}");
    let left = b.history(Seq::new(1), 10).await.expect("history of a deleted session");
    assert_eq!(left.len(), 1, "{backend}: only the deletion is left");
    assert!(matches!(left[0].kind, EventKind::SessionDeleted { n_events_removed: 2 }), "{backend}: {left:?}");
    assert_eq!(names(a.list_sessions(None, 10).await.expect("list")), ["a", "c"], "{backend}");
    assert_eq!(b.append(Message::user("fresh start")).await.expect("append after"), Seq::new(4), "{backend}");
    let wm = b.working_memory(10).await.expect("working memory");
    assert_eq!(wm.messages.iter().map(text).collect::<Vec<_>>(), ["fresh start"], "{backend}");
    assert_eq!(names(a.list_sessions(None, 10).await.expect("list")), ["a", "b", "c"], "{backend}");
}

/// Two engines append to one session at once: every append lands once, seqs dense.
async fn two_writers_share_a_session_through(a: &Engine, b: &Engine, backend: &str) {
    const EACH: usize = 100;
    let write = |engine: Engine, who: &'static str| async move {
        let s = engine.session("shared").expect("id");
        let mut seqs = Vec::new();
        for i in 0..EACH {
            seqs.push(s.append(Message::user(format!("{who}-{i}"))).await.expect("append").get());
        }
        seqs
    };
    let (left, right) = tokio::join!(tokio::spawn(write(a.clone(), "a")), tokio::spawn(write(b.clone(), "b")));
    let mut seqs: Vec<u64> = left.expect("writer a").into_iter().chain(right.expect("writer b")).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 2 * EACH, "{backend}: every append its own seq");
    let events = a.session("shared").expect("id").history(Seq::new(1), 1_000).await.expect("history");
    // Dense: the appends, and the turn cap's episode boundaries among them (every 30 user turns).
    let all: Vec<u64> = events.iter().map(|e| e.seq.get()).collect();
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>(), "{backend}: dense");
    let messages: Vec<String> = events.iter().filter_map(|e| e.message().map(|m| m.content.clone())).collect();
    let texts: BTreeSet<&String> = messages.iter().collect();
    assert_eq!((messages.len(), texts.len()), (2 * EACH, 2 * EACH), "{backend}: no append lost or doubled");
    let from_b = b.session("shared").expect("id").working_memory(3).await.expect("read through b");
    let from_a = a.session("shared").expect("id").working_memory(3).await.expect("read through a");
    assert_eq!(from_a.last_seq, Seq::new(all.len() as u64), "{backend}");
    assert_eq!(from_a.messages, from_b.messages, "{backend}: both engines read the same");
}

/// A write built on a head another engine has moved past is built again on the fresh head, and
/// re-checked there: a tool call already answered through the other engine cannot be answered
/// twice, and the next append lands after the other engine's.
async fn a_stale_head_is_built_again_through(a: &Engine, b: &Engine, backend: &str) {
    let through_a = a.session("stale").expect("id");
    let through_b = b.session("stale").expect("id");
    through_a.append(Message::assistant_tool_calls("", vec![ToolCall::new("c9", "ls", "{}")])).await.expect("call");
    through_b.append(Message::tool_result("c9", "answered by b")).await.expect("b answers");
    let again = through_a.append(Message::tool_result("c9", "answered by a")).await;
    assert!(matches!(again, Err(Error::ToolCallAlreadyAnswered { .. })), "{backend}: {again:?}");
    assert_eq!(through_a.append(Message::user("next")).await.expect("append"), Seq::new(3), "{backend}");
    let events = through_b.history(Seq::new(1), 10).await.expect("history");
    assert_eq!(events.len(), 3, "{backend}: {events:?}");
}

/// An update (reset, messages, metadata; conditional on the last seq) and an import land whole,
/// and a stale condition writes nothing.
async fn updates_and_imports_land_whole_through(a: &Engine, b: &Engine, backend: &str) {
    let s = a.session("updated").expect("id");
    s.append_many(vec![Message::user("old 1"), Message::user("old 2")]).await.expect("append");
    let update = SessionUpdate {
        expect_last_seq: Some(Seq::new(2)),
        reset: true,
        messages: vec![Message::user("new 1")],
        metadata: Some("{\"topic\":\"flights\"}".to_string()),
    };
    let outcome = s.update(update.clone()).await.expect("update");
    assert_eq!((outcome.reset, outcome.message_seqs.clone()), (Some(Seq::new(3)), vec![Seq::new(4)]), "{backend}");
    assert_eq!(outcome.head.last_seq(), Seq::new(5), "{backend}: reset, message, metadata");
    // The same update again expects seq 2, which is gone: refused, nothing written.
    let stale = b.session("updated").expect("id").update(update).await;
    assert!(matches!(stale, Err(Error::Conflict { expected: 2, .. })), "{backend}: {stale:?}");
    let wm = s.working_memory(10).await.expect("working memory");
    assert_eq!((wm.last_seq, wm.messages.iter().map(text).collect::<Vec<_>>()), (Seq::new(5), vec!["new 1"]));
    let kinds: Vec<bool> = s
        .history(Seq::new(3), 10)
        .await
        .expect("history")
        .iter()
        .map(|e| matches!(e.kind, EventKind::MetadataSet { .. }))
        .collect();
    assert_eq!(kinds, [false, false, true], "{backend}");
    let metadata = b.session("updated").expect("id").metadata().await.expect("metadata").expect("set");
    assert_eq!((metadata.seq, metadata.document.as_str()), (Seq::new(5), "{\"topic\":\"flights\"}"), "{backend}");
    let state = s.read_state(10).await.expect("state");
    assert_eq!(state.metadata, Some(metadata), "{backend}");
    assert_eq!((state.head.last_seq(), state.memory.messages.len()), (Seq::new(5), 1), "{backend}");

    let i = b.session("imported").expect("id");
    let lines = "{\"role\":\"user\",\"content\":\"q\"}\n\
                 {\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"t1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}\n\
                 {\"role\":\"tool\",\"tool_call_id\":\"t1\",\"content\":\"r\"}\n";
    let report = i.import_jsonl(lines).await.expect("import");
    assert_eq!((report.first_seq, report.last_seq), (Seq::new(1), Seq::new(3)), "{backend}");
    let bad = i.import_jsonl("{\"role\":\"tool\",\"tool_call_id\":\"t1\",\"content\":\"again\"}\n").await;
    assert!(matches!(bad, Err(Error::InvalidImport { line: 1, .. })), "{backend}: {bad:?}");
    let through_a = a.session("imported").expect("id").working_memory(10).await.expect("read through a");
    assert_eq!(through_a.messages.iter().map(text).collect::<Vec<_>>(), ["q", "", "r"], "{backend}");
}

/// Compaction: the cut moves back so a tool call keeps its result, the splice lands, working memory
/// is the summary plus what follows (the same through the other engine), time travel before the
/// splice sees no summary, and compacting the same span again finds nothing to do.
async fn compaction_splices_keeping_tool_pairs_through(a: &Engine, b: &Engine, backend: &str) {
    let s = a.session("compacted").expect("id");
    for i in 0..10 {
        s.append(Message::user(format!("fact {i}: the meeting moved to room {i}"))).await.expect("append");
    }
    s.append(Message::assistant_tool_calls("", vec![ToolCall::new("k1", "grep", "{}")])).await.expect("call");
    s.append(Message::tool_result("k1", "found it")).await.expect("result");
    s.append(Message::user("after the tool")).await.expect("append");
    let outcome = s.compact(CompactionRequest::upto(Seq::new(11))).await.expect("compact");
    let CompactionOutcome::Spliced { upto, seq, n_messages, .. } = outcome else {
        panic!("{backend}: not spliced: {outcome:?}")
    };
    assert_eq!((upto, seq, n_messages), (Seq::new(10), Seq::new(14), 10), "{backend}: cut before the call");
    let wm = s.working_memory(50).await.expect("working memory");
    let summary = wm.summary.clone().expect("a summary");
    assert_eq!(summary.upto, Seq::new(10), "{backend}");
    assert!(!summary.text.is_empty(), "{backend}");
    assert_eq!(wm.messages.iter().map(|m| m.seq.get()).collect::<Vec<_>>(), [11, 12, 13], "{backend}");
    assert_eq!((wm.last_seq, wm.n_messages), (Seq::new(14), Some(13)), "{backend}");
    let other = b.session("compacted").expect("id").working_memory(50).await.expect("through b");
    assert_eq!((other.summary, other.messages), (wm.summary.clone(), wm.messages.clone()), "{backend}");
    let before = s.working_memory_at(Seq::new(13), 50).await.expect("time travel");
    assert!(before.summary.is_none(), "{backend}: the splice came later");
    assert_eq!(before.messages.len(), 13, "{backend}");
    let at = s.working_memory_at(Seq::new(14), 50).await.expect("time travel to the splice");
    assert_eq!(at.summary.map(|s| s.upto), Some(Seq::new(10)), "{backend}");
    let again = s.compact(CompactionRequest::upto(Seq::new(10))).await.expect("compact again");
    assert!(matches!(again, CompactionOutcome::NothingToCompact { .. }), "{backend}: {again:?}");
    assert_eq!(s.head().await.expect("head").expect("exists").last_seq(), Seq::new(14), "{backend}");
}

/// A session with every kind of event (tool pair, splice, reset, metadata), exported, imported
/// into an empty session through the other engine and exported again, reads back line for line.
async fn exports_round_trip_through(a: &Engine, b: &Engine, backend: &str) -> String {
    let s = a.session("original").expect("id");
    for i in 0..8 {
        s.append(Message::user(format!("turn {i}: plans for the week"))).await.expect("append");
    }
    s.append(Message::assistant_tool_calls("", vec![ToolCall::new("x1", "cal", "{}")])).await.expect("call");
    s.append(Message::tool_result("x1", "free on friday")).await.expect("result");
    let outcome = s.compact(CompactionRequest::upto(Seq::new(6))).await.expect("compact");
    assert!(matches!(outcome, CompactionOutcome::Spliced { .. }), "{backend}: {outcome:?}");
    let update = SessionUpdate {
        reset: true,
        messages: vec![Message::user("a fresh start")],
        metadata: Some("{\"k\":1}".to_string()),
        ..SessionUpdate::default()
    };
    s.update(update).await.expect("update");
    let mut exported = Vec::new();
    let n = s.export_jsonl(&mut exported).await.expect("export");
    let text = String::from_utf8(exported).expect("utf-8");
    assert_eq!(n, 14, "{backend}: 10 messages, a splice, a reset, a message and metadata: {text}");
    assert!(text.contains("\"type\":\"compaction_spliced\"") && text.contains("\"summary\":"), "{backend}");
    let copy = b.session("copy").expect("id");
    copy.import_jsonl(&text).await.expect("import the export");
    let mut again = Vec::new();
    copy.export_jsonl(&mut again).await.expect("export the copy");
    assert_eq!(String::from_utf8(again).expect("utf-8"), text, "{backend}: the copy exports the same lines");
    let (original, imported) = (s.working_memory(20).await.expect("wm"), copy.working_memory(20).await.expect("wm"));
    assert_eq!((original.summary, original.messages), (imported.summary, imported.messages), "{backend}");
    text
}

/// Appends dropped after 0, 1, 2, ... polls, so at each await of the write path in turn (the
/// session's lock, the head read, the queue or the publish, its acknowledgement): each lands whole
/// or not at all, the next append (through either engine) goes on right after whatever landed,
/// nothing lands twice, and both engines' working memory agrees with the log.
async fn dropped_writes_land_whole_or_not_at_all_through(a: &Engine, b: &Engine, backend: &str) {
    let (through_a, through_b) = (a.session("dropped").expect("id"), b.session("dropped").expect("id"));
    let mut after = Vec::new();
    for polls in 0..24_u32 {
        let text = format!("dropped after {polls} polls");
        let pair = vec![Message::user(text.clone()), Message::user(format!("{text}, second"))];
        nats_common::poll_then_drop(through_a.append_many(pair), polls).await;
        let next = if polls % 2 == 0 { &through_a } else { &through_b };
        let seq = next.append(Message::user(format!("after {polls}"))).await.expect("an append after a dropped one");
        after.push((seq, format!("after {polls}")));
    }
    let events = through_b.history(Seq::new(1), 1_000).await.expect("history");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.get()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "{backend}: dense");
    let texts: Vec<(Seq, String)> =
        events.iter().filter_map(|e| e.message().map(|m| (e.seq, m.content.clone()))).collect();
    for (seq, text) in &after {
        assert!(texts.contains(&(*seq, text.clone())), "{backend}: {text} is at {seq}: {texts:?}");
    }
    let mut landed = Vec::new();
    for polls in 0..24_u32 {
        let first = format!("dropped after {polls} polls");
        let n_first = texts.iter().filter(|(_, t)| *t == first).count();
        let n_second = texts.iter().filter(|(_, t)| *t == format!("{first}, second")).count();
        assert!(n_first <= 1 && n_first == n_second, "{backend}: {first} landed {n_first} and {n_second} times");
        landed.push(n_first == 1);
    }
    // Never polled, nothing was written; polled, a write is queued or published at once (and
    // then lands) unless it is still waiting for a head read or a rebuild.
    assert!(!landed[0] && landed.iter().any(|l| *l), "{backend}: landed {landed:?}");
    let (wm_a, wm_b) =
        (through_a.working_memory(100).await.expect("wm"), through_b.working_memory(100).await.expect("wm"));
    let last: Vec<&String> = texts.iter().map(|(_, t)| t).rev().take(100).rev().collect();
    assert_eq!(wm_a.messages.iter().map(|m| &m.message.content).collect::<Vec<_>>(), last, "{backend}");
    assert_eq!(wm_a.messages, wm_b.messages, "{backend}");
}

/// `stats_async` counts what was written: live sessions and their ids, events, splices, blobs,
/// and a size per keyspace (fjall) or stream (JetStream).
async fn stats_count_what_was_written_through(a: &Engine, b: &Engine, backend: &str) {
    let short = a.session("short").expect("id");
    for i in 0..5 {
        short.append(Message::user(format!("short {i}"))).await.expect("append");
    }
    let long = b.session("long").expect("id");
    for i in 0..12 {
        long.append(Message::user(format!("fact {i}: the archive is in building {i}"))).await.expect("append");
    }
    let outcome = long.compact(CompactionRequest::upto(Seq::new(8))).await.expect("compact");
    assert!(matches!(outcome, CompactionOutcome::Spliced { .. }), "{backend}: {outcome:?}");
    let stats = a.stats_async().await.expect("stats");
    assert_eq!(
        (stats.sessions, stats.session_ids.clone()),
        (2, vec!["long".to_string(), "short".to_string()]),
        "{backend}"
    );
    assert_eq!((stats.events, stats.splices, stats.blobs), (18, 1, 1), "{backend}: 17 messages and a splice");
    assert!(stats.event_bytes > 17 * 5, "{backend}: {}", stats.event_bytes);
    assert!(!stats.keyspace_bytes.is_empty(), "{backend}");
}

/// Waits (bounded) for the engine's background purges of deleted sessions.
async fn purged(engine: &Engine) {
    let engine = engine.clone();
    let idle = tokio::task::spawn_blocking(move || engine.wait_for_purges(std::time::Duration::from_secs(60)));
    assert!(idle.await.expect("the wait runs"), "purges finish within 60 s");
}

/// Orphan collection: the blob of a deleted session's splice is an orphan, a live splice's blob is
/// not; on JetStream an orphan younger than `orphan_grace_ms` is kept (engines elsewhere may be
/// about to splice it), and aged past it (the clock moved forward for the test) it is collected.
/// The same blob published again and spliced while gc is between judging and removing survives
/// (fjall: the gate and the re-check; JetStream: the removal stops at the message judged), then a
/// real orphan is removed and the store audits clean.
async fn orphans_are_collected_and_live_blobs_kept_through(a: &Engine, b: &Engine, backend: &str) {
    use palimpsest::{BoxFuture, GcStage};
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2 * 3_600);
    let mut no_pause = |_: GcStage| -> BoxFuture<'static, ()> { Box::pin(async {}) };
    let fill = |s: palimpsest::Session, topic: &'static str| async move {
        for i in 0..12 {
            s.append(Message::user(format!("{topic} {i}: notes for the review"))).await.expect("append");
        }
        match s.compact(CompactionRequest::upto(Seq::new(8))).await.expect("compact") {
            CompactionOutcome::Spliced { summary_hash, .. } => summary_hash,
            other => panic!("not spliced: {other:?}"),
        }
    };
    let kept = fill(a.session("kept").expect("id"), "kept").await;
    let orphan = fill(b.session("gone").expect("id"), "shared").await;
    assert_ne!(kept, orphan, "{backend}: two different summaries");
    a.session("gone").expect("id").delete().await.expect("delete");
    // fjall keeps a deleted session's splice in its index until the purge, and gc counts it (no-op on JetStream).
    purged(a).await;

    let now = a.collect_orphan_blobs(true).await.expect("gc dry run");
    let want_now = if backend == "nats" { Vec::new() } else { vec![orphan] };
    assert_eq!(now, want_now, "{backend}: an orphan younger than the grace is kept only on JetStream");
    let aged = a.collect_orphan_blobs_as_of(true, later, &mut no_pause).await.expect("gc dry run, later");
    assert_eq!(aged, vec![orphan], "{backend}: the deleted session's blob, and only it");

    // Between judging and removing, the same summary is written again and spliced (the default
    // summarizer is deterministic: the same messages give the same text, so the same blob).
    let writer = b.clone();
    let mut respliced = move |stage: GcStage| -> BoxFuture<'static, ()> {
        let writer = writer.clone();
        Box::pin(async move {
            if stage == GcStage::CandidatesFound {
                let again = fill(writer.session("again").expect("id"), "shared").await;
                assert_eq!(again, orphan, "the same blob");
            }
        })
    };
    let removed = a.collect_orphan_blobs_as_of(false, later, &mut respliced).await.expect("gc");
    assert!(removed.is_empty(), "{backend}: the blob was spliced again before its removal: {removed:?}");
    let wm = a.session("again").expect("id").working_memory(10).await.expect("its summary is readable");
    assert!(wm.summary.is_some(), "{backend}");

    a.session("again").expect("id").delete().await.expect("delete");
    purged(a).await;
    let removed = b.collect_orphan_blobs_as_of(false, later, &mut no_pause).await.expect("gc");
    assert_eq!(removed, vec![orphan], "{backend}");
    let removed = a.collect_orphan_blobs_as_of(true, later, &mut no_pause).await.expect("gc dry run");
    assert!(removed.is_empty(), "{backend}: nothing left: {removed:?}");
    let wm = b.session("kept").expect("id").working_memory(10).await.expect("the live splice's blob is there");
    assert_eq!(wm.summary.map(|s| s.upto), Some(Seq::new(8)), "{backend}");
    let report = a.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok && report.orphan_blobs.is_empty(), "{backend}: {report:?}");
}

/// The store a scenario left audits clean: every session replays to its stored head(s).
async fn audits_clean(engine: &Engine, backend: &str, sessions: u64, splices: u64) {
    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok, "{backend}: {:?}", report.violations);
    assert_eq!((report.sessions, report.splices), (sessions, splices), "{backend}");
    assert!(report.events > 0, "{backend}");
}

/// Two engines on `store`, extraction off (it writes events of its own, which the counts here do
/// not expect; on JetStream `connect` refuses it anyway): on JetStream two connections, on fjall
/// the same engine twice.
async fn engines(store: &Store) -> (Engine, Engine) {
    let open = || store.open_with(Components::default(), |config| config.extraction.enabled = false);
    let a = open().await;
    if store.is_nats() { (a, open().await) } else { (a.clone(), a) }
}

async fn appends_read_back(store: Store) {
    let (a, b) = engines(&store).await;
    appends_read_back_through(&a, &b, store.name()).await;
    audits_clean(&a, store.name(), 1, 0).await;
}

async fn bad_writes_change_nothing(store: Store) {
    let (a, b) = engines(&store).await;
    bad_writes_change_nothing_through(&a, &b, store.name()).await;
    audits_clean(&b, store.name(), 1, 0).await;
}

async fn deletion_and_listing(store: Store) {
    let (a, b) = engines(&store).await;
    deletion_and_listing_through(&a, &b, store.name()).await;
    audits_clean(&a, store.name(), 3, 0).await;
}

async fn two_writers_share_a_session(store: Store) {
    let (a, b) = engines(&store).await;
    two_writers_share_a_session_through(&a, &b, store.name()).await;
    audits_clean(&a, store.name(), 1, 0).await;
}

async fn a_stale_head_is_built_again(store: Store) {
    let (a, b) = engines(&store).await;
    a_stale_head_is_built_again_through(&a, &b, store.name()).await;
    audits_clean(&a, store.name(), 1, 0).await;
}

async fn updates_and_imports_land_whole(store: Store) {
    let (a, b) = engines(&store).await;
    updates_and_imports_land_whole_through(&a, &b, store.name()).await;
    audits_clean(&a, store.name(), 2, 0).await;
}

async fn compaction_splices_keeping_tool_pairs(store: Store) {
    let (a, b) = engines(&store).await;
    compaction_splices_keeping_tool_pairs_through(&a, &b, store.name()).await;
    audits_clean(&b, store.name(), 1, 1).await;
}

async fn exports_round_trip(store: Store) {
    let (a, b) = engines(&store).await;
    exports_round_trip_through(&a, &b, store.name()).await;
    audits_clean(&a, store.name(), 2, 2).await;
}

async fn dropped_writes_land_whole_or_not_at_all(store: Store) {
    let (a, b) = engines(&store).await;
    dropped_writes_land_whole_or_not_at_all_through(&a, &b, store.name()).await;
    audits_clean(&b, store.name(), 1, 0).await;
}

async fn stats_count_what_was_written(store: Store) {
    let (a, b) = engines(&store).await;
    stats_count_what_was_written_through(&a, &b, store.name()).await;
    audits_clean(&b, store.name(), 2, 1).await;
}

async fn orphans_are_collected_and_live_blobs_kept(store: Store) {
    let (a, b) = engines(&store).await;
    orphans_are_collected_and_live_blobs_kept_through(&a, &b, store.name()).await;
}

on_both_backends!(
    appends_read_back,
    bad_writes_change_nothing,
    deletion_and_listing,
    two_writers_share_a_session,
    a_stale_head_is_built_again,
    updates_and_imports_land_whole,
    compaction_splices_keeping_tool_pairs,
    exports_round_trip,
    dropped_writes_land_whole_or_not_at_all,
    stats_count_what_was_written,
    orphans_are_collected_and_live_blobs_kept,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_suite_passes_on_nats() {
    let rig = Rig::nats().await;

    // What does not run on JetStream yet says so, and writes nothing.
    let (a, _) = rig.engines("unsupported").await;
    let s = a.session("u").expect("id");
    s.append(Message::user("one")).await.expect("append");
    let refused = a.stats();
    assert!(matches!(refused, Err(Error::Unsupported { backend: "nats", .. })), "{refused:?}");
    let refused = a.rebuild(None).await;
    assert!(matches!(refused, Err(Error::Unsupported { backend: "nats", .. })), "{refused:?}");
    let refused = a.audit(&Default::default(), &mut |_| {});
    assert!(matches!(refused, Err(Error::Unsupported { backend: "nats", .. })), "{refused:?}");
    assert_eq!(s.head().await.expect("head").expect("exists").last_seq(), Seq::new(1), "nothing written");

    audit_names_damage_written_past_the_engine(&rig).await;

    // A session moves between backends through export and import, both ways.
    let (on_nats, _) = rig.engines("moving").await;
    let fjall = Rig::fjall();
    let (on_fjall, _) = fjall.engines("moved").await;
    let text = exports_round_trip_through(&on_nats, &on_nats, "nats").await;
    let moved = on_fjall.session("moved").expect("id");
    moved.import_jsonl(&text).await.expect("import into fjall");
    let mut back = Vec::new();
    moved.export_jsonl(&mut back).await.expect("export from fjall");
    assert_eq!(String::from_utf8(back).expect("utf-8"), text, "nats -> fjall keeps every line");
    let home = on_nats.session("home").expect("id");
    let mut from_fjall = Vec::new();
    moved.export_jsonl(&mut from_fjall).await.expect("export");
    home.import_jsonl(std::str::from_utf8(&from_fjall).expect("utf-8")).await.expect("import into nats");
    let mut round = Vec::new();
    home.export_jsonl(&mut round).await.expect("export from nats");
    assert_eq!(String::from_utf8(round).expect("utf-8"), text, "fjall -> nats keeps every line");

    // Extraction runs on JetStream too (its markers and memories on the meta stream; its suite
    // is tests/memory_extraction_runs_in_background.rs and tests/extraction_resumes_after_restart.rs).
    let mut config = rig.config("extraction");
    config.extraction.enabled = true;
    let extracting = Engine::connect(config.clone(), Components::default()).await.expect("extraction connects");
    drop(extracting);
    // The blocking `open` points at `connect`.
    config.extraction.enabled = false;
    let refused = Engine::open(config).err().expect("refused");
    assert!(refused.to_string().contains("Engine::connect"), "{refused}");
}

/// Records written past the engine (straight through `NatsLog`, as a bug or a foreign writer
/// could) with a head that is not the fold of the log, and a splice whose blob was never stored:
/// the audit names both, with the session and seq.
async fn audit_names_damage_written_past_the_engine(rig: &Rig) {
    let Rig::Nats { cluster, .. } = rig else { unreachable!("JetStream only") };
    let (engine, _) = rig.engines("damage").await;
    let log = nats_common::connect(&nats_common::config(cluster, "damage", 3)).await;
    let s = engine.session("lying").expect("id");
    s.append(Message::user("true")).await.expect("append");
    // Seq 2 is a user message, but the head stored with it has a tool call open.
    let (head, version) = log.head(s.id()).await.expect("head").expect("exists");
    let (events, _) = nats_common::commit(&head, &["a user message".to_string()]);
    let mut lie = head.clone();
    let call = Message::assistant_tool_calls("", vec![ToolCall::new("ghost", "f", "{}")]);
    palimpsest::apply(&mut lie, &Event { seq: Seq::new(2), at_ms: 1, kind: EventKind::MessageAppended(call) });
    log.append(s.id(), version, &events, &lie).await.expect("a record with a wrong head");

    let t = engine.session("blobless").expect("id");
    t.append_many((0..4).map(|i| Message::user(format!("m{i}"))).collect()).await.expect("append");
    let (head, version) = log.head(t.id()).await.expect("head").expect("exists");
    let splice = Splice {
        upto: Seq::new(2),
        previous_upto: Seq::ZERO,
        summary_hash: SummaryHash::of("a summary never stored"),
        n_messages: 2,
        summary_bytes: 23,
        summarizer: "test".to_string(),
    };
    let event = Event { seq: Seq::new(5), at_ms: 1, kind: EventKind::CompactionSpliced(splice) };
    let mut after = head.clone();
    palimpsest::apply(&mut after, &event);
    log.append(t.id(), version, &[event], &after).await.expect("a splice without its blob");

    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(!report.ok);
    let found: Vec<(Option<String>, Option<u64>, ViolationKind)> =
        report.violations.iter().map(|v| (v.session.clone(), v.seq, v.kind)).collect();
    assert!(found.contains(&(Some("lying".to_string()), Some(2), ViolationKind::HeadMismatch)), "{found:?}");
    assert!(found.contains(&(Some("blobless".to_string()), Some(5), ViolationKind::MissingBlob)), "{found:?}");
    let one =
        engine.audit_async(AuditOptions { session: Some(t.id().clone()) }, |_| {}).await.expect("audit of one session");
    assert_eq!(one.violations.iter().map(|v| v.kind).collect::<Vec<_>>(), [ViolationKind::MissingBlob]);
}
