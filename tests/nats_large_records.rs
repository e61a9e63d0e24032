//! Records larger than one message on JetStream (SPEC.md 11a, "Large records"): on a 3-node
//! cluster whose `max_payload` is 64 KB, an import, a batch of appends and a single message too
//! large for one message are published as atomic batches of chunks, and every read (working
//! memory, history from any seq, time travel into the middle of a large record, export, audit,
//! stats, compaction, deletion) sees them exactly as it sees small records. Two engines racing
//! large writes to one session stay dense with nothing lost or doubled, and a large write dropped
//! at any await lands whole or not at all.
//!
//! Needs `PALIMPSEST_NATS_SERVER` (scripts/test sets it).

mod nats_common;

use nats_common::{Cluster, ClusterOptions, wait_stream_leader};
use palimpsest::{
    AuditOptions, CompactionOutcome, CompactionRequest, Components, Config, Engine, Message, Seq, StorageKind,
};

/// Every node's `max_payload`: a record above about 63 KB takes more than one message.
const MAX_PAYLOAD: &str = "64KB";

async fn cluster() -> Cluster {
    Cluster::start_with(3, ClusterOptions { max_payload: MAX_PAYLOAD.to_string(), ..ClusterOptions::default() }).await
}

/// Two engines (two connections) on fresh streams of `cluster` named by `prefix`.
async fn engines(cluster: &Cluster, dir: &tempfile::TempDir, prefix: &str) -> (Engine, Engine) {
    let mut config = Config::new(dir.path().join(prefix));
    config.storage.kind = StorageKind::Nats;
    config.storage.nats = nats_common::config(cluster, prefix, 3);
    config.extraction.enabled = false;
    let a = Engine::connect(config.clone(), Components::default()).await.expect("connect");
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    wait_stream_leader(cluster, &js, &format!("{prefix}_s0")).await;
    wait_stream_leader(cluster, &js, &format!("{prefix}_meta")).await;
    let b = Engine::connect(config, Components::default()).await.expect("connect a second engine");
    (a, b)
}

/// A message text of about `bytes` bytes that names its number.
fn text(label: &str, i: usize, bytes: usize) -> String {
    let mut t = format!("{label} {i}: ");
    while t.len() < bytes {
        t.push_str("the quick brown fox jumps over the lazy dog; ");
    }
    t
}

/// Messages in session `stream`'s stream (records and chunks alike).
async fn stream_messages(cluster: &Cluster, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    let mut stream = js.get_stream(stream).await.expect("the stream");
    stream.info().await.expect("its info").state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_read_back_like_small_ones() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = engines(&cluster, &dir, "big").await;
    let s = a.session("big").expect("id");

    // 1. An import of 1,000 messages of about 400 bytes: one record of about 450 KB.
    let mut want: Vec<String> = (0..1_000).map(|i| text("imported", i, 400)).collect();
    let lines: String =
        want.iter().map(|t| format!("{}\n", serde_json::json!({"role": "user", "content": t}))).collect();
    s.import_jsonl(&lines).await.expect("import");
    let after_import = stream_messages(&cluster, "big_s0").await;
    assert!(after_import >= 7, "the import is one record of several chunks: {after_import} messages");
    // 2. Small appends between large records.
    for i in 0..3 {
        want.push(format!("small {i}"));
        s.append(Message::user(format!("small {i}"))).await.expect("append");
    }
    // 3. A batch of 300 messages of about 400 bytes through the other engine: one record of several chunks.
    let batch: Vec<String> = (0..300).map(|i| text("batched", i, 400)).collect();
    b.session("big").expect("id").append_many(batch.iter().map(Message::user).collect()).await.expect("append_many");
    want.extend(batch);
    // 4. One message larger than a message: a record of two chunks.
    let huge = text("huge", 0, 200 << 10);
    s.append(Message::user(huge.clone())).await.expect("a 200 KB message");
    want.push(huge);
    s.append(Message::user("the end")).await.expect("append");
    want.push("the end".to_string());
    // Appends also close an episode every 30 user turns (an event of its own): seqs count events,
    // `want` only messages.
    let n_messages = want.len() as u64;
    let all = s.history(Seq::new(1), 10_000).await.expect("history");
    let n = all.last().map_or(0, |e| e.seq.get());
    let message_at = |at: u64| -> String {
        let m = all.iter().filter(|e| e.seq.get() <= at).filter_map(|e| e.message()).next_back();
        m.map(|m| m.content.clone()).expect("a message at or before")
    };

    // Every read, through both engines (b's caches know nothing of a's writes).
    for (engine, name) in [(&a, "a"), (&b, "b")] {
        let s = engine.session("big").expect("id");
        let head = s.head().await.expect("head").expect("exists");
        assert_eq!((head.last_seq(), head.n_messages()), (Seq::new(n), n_messages), "{name}");
        let wm = s.working_memory(50).await.expect("working memory");
        let texts: Vec<&str> = wm.messages.iter().map(|m| m.message.content.as_str()).collect();
        let tail: Vec<&str> = want[want.len() - 50..].iter().map(String::as_str).collect();
        assert_eq!(texts, tail, "{name}: the newest 50 span three records, one of them chunked");
        let events = s.history(Seq::new(1), 10_000).await.expect("history");
        assert_eq!(
            events.iter().map(|e| e.seq.get()).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "{name}: dense"
        );
        let texts: Vec<&str> = events.iter().filter_map(|e| e.message()).map(|m| m.content.as_str()).collect();
        assert_eq!(texts, want.iter().map(String::as_str).collect::<Vec<_>>(), "{name}: every message once, in order");
        // From the middle of the imported record, and of the batched one.
        for from in [2_u64, 500, 999, 1_000, 1_001, 1_150, n - 1] {
            let page = s.history(Seq::new(from), 7).await.expect("history from the middle");
            assert_eq!(page.first().map(|e| e.seq.get()), Some(from), "{name}: from {from}");
            assert_eq!(page.len() as u64, 7.min(n - from + 1), "{name}: from {from}");
        }
        // Time travel into the middle of a chunked record.
        for at in [1_u64, 640, 1_000, 1_004, 1_200, n - 1] {
            let then = s.working_memory_at(Seq::new(at), 3).await.expect("time travel");
            assert_eq!(then.last_seq, Seq::new(at), "{name}: at {at}");
            let newest = then.messages.last().map(|m| m.message.content.clone());
            assert_eq!(newest, Some(message_at(at)), "{name}: at {at}");
        }
    }

    // Export and import into a fresh session: the same lines (the import is one large record again).
    let mut exported = Vec::new();
    s.export_jsonl(&mut exported).await.expect("export");
    let exported = String::from_utf8(exported).expect("utf-8");
    let copy = b.session("copy").expect("id");
    copy.import_jsonl(&exported).await.expect("import the export");
    let mut again = Vec::new();
    copy.export_jsonl(&mut again).await.expect("export the copy");
    assert_eq!(String::from_utf8(again).expect("utf-8"), exported, "the copy exports the same lines");

    // Compaction over the chunked records, then the audit and stats see every event once.
    let outcome = s.compact(CompactionRequest::upto(Seq::new(1_200))).await.expect("compact");
    assert!(matches!(outcome, CompactionOutcome::Spliced { .. }), "{outcome:?}");
    let wm = b.session("big").expect("id").working_memory(5).await.expect("working memory");
    assert_eq!(wm.summary.map(|s| s.upto), Some(Seq::new(1_200)));
    let report = a.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok, "{:?}", report.violations);
    let copied = copy.head().await.expect("head").expect("exists").last_seq().get();
    let total = n + 1 + copied;
    assert_eq!((report.sessions, report.events), (2, total), "both sessions, every event once, and the splice");
    let stats = b.stats_async().await.expect("stats");
    assert_eq!((stats.sessions, stats.events, stats.splices), (2, total, 1));

    // Deletion purges the chunks too; the session starts afresh.
    s.delete().await.expect("delete");
    s.append(Message::user("after the deletion")).await.expect("append after deletion");
    let wm = b.session("big").expect("id").working_memory(10).await.expect("working memory");
    assert_eq!(wm.messages.iter().map(|m| m.message.content.as_str()).collect::<Vec<_>>(), ["after the deletion"]);
    let report = a.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok, "{:?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_racing_large_writes_stay_dense() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = engines(&cluster, &dir, "race").await;
    const ROUNDS: usize = 8;
    const PER_BATCH: usize = 200;
    let write = |engine: Engine, label: &'static str| async move {
        let s = engine.session("raced").expect("id");
        for round in 0..ROUNDS {
            let batch: Vec<Message> =
                (0..PER_BATCH).map(|i| Message::user(text(label, round * PER_BATCH + i, 400))).collect();
            s.append_many(batch).await.expect("a large append lands, rebuilt on the other engine's head if need be");
        }
    };
    let (one, two) = tokio::join!(tokio::spawn(write(a.clone(), "a")), tokio::spawn(write(b.clone(), "b")));
    one.expect("writer a");
    two.expect("writer b");
    let events = a.session("raced").expect("id").history(Seq::new(1), 10_000).await.expect("history");
    let n = events.len() as u64;
    assert_eq!(events.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "dense");
    for label in ["a", "b"] {
        let texts: Vec<String> = events
            .iter()
            .filter_map(|e| e.message())
            .map(|m| m.content.clone())
            .filter(|t| t.starts_with(&format!("{label} ")))
            .collect();
        let want: Vec<String> = (0..ROUNDS * PER_BATCH).map(|i| text(label, i, 400)).collect();
        assert_eq!(texts, want, "writer {label}: every message once, in order");
    }
    let report = b.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok, "{:?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_large_write_lands_whole_or_not_at_all() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = engines(&cluster, &dir, "drop").await;
    let (through_a, through_b) = (a.session("dropped").expect("id"), b.session("dropped").expect("id"));
    const BATCH: usize = 250;
    for polls in 0..16_u32 {
        let batch: Vec<Message> = (0..BATCH).map(|i| Message::user(text(&format!("d{polls}"), i, 400))).collect();
        nats_common::poll_then_drop(through_a.append_many(batch), polls).await;
        let next = if polls % 2 == 0 { &through_a } else { &through_b };
        next.append(Message::user(format!("after {polls}"))).await.expect("an append after a dropped one");
    }
    let events = through_b.history(Seq::new(1), 10_000).await.expect("history");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.get()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "dense");
    let texts: Vec<String> = events.iter().filter_map(|e| e.message()).map(|m| m.content.clone()).collect();
    for polls in 0..16_u32 {
        let landed = texts.iter().filter(|t| t.starts_with(&format!("d{polls} "))).count();
        assert!(landed == 0 || landed == BATCH, "batch {polls}: {landed} of {BATCH} messages landed");
        assert_eq!(texts.iter().filter(|t| **t == format!("after {polls}")).count(), 1, "after {polls}");
    }
    let report = a.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(report.ok, "{:?}", report.violations);
}

/// A database made by a build that wrote no atomic batches (its session stream without
/// `allow_atomic`): connect allows them on the stream, and a large record then lands and reads
/// back. Without the update the batch is refused (`Storage`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_stream_is_allowed_atomic_batches_at_connect() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    nats_common::create_stream(
        &js,
        async_nats::jetstream::stream::Config {
            name: "old_s0".to_string(),
            subjects: vec!["old.s0.>".to_string()],
            num_replicas: 3,
            allow_direct: true,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
    .await;
    let (a, _) = engines(&cluster, &dir, "old").await;
    let mut stream = js.get_stream("old_s0").await.expect("the stream");
    assert!(stream.info().await.expect("its info").config.allow_atomic_publish, "allowed at connect");
    let big: Vec<Message> = (0..300).map(|i| Message::user(text("old", i, 400))).collect();
    let s = a.session("old").expect("id");
    s.append_many(big).await.expect("a large record on the updated stream");
    assert_eq!(s.working_memory(300).await.expect("working memory").messages.len(), 300);
}
