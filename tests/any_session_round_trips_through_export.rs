//! Export then import restores any session: a property over random operation sequences (user and
//! assistant turns, tool calls answered in any order, compactions up to any seq, deletions at any
//! point and appends after them, explicit episode ends, turn-cap boundaries, memory markers). The
//! copy, imported into a fresh session of another database, has the same history (every event, its
//! seq and store time), the same head, the same working memory now and at every seq, and audits clean.
//! On fjall, and on a 3-node JetStream cluster (a twentieth of the cases: every case reads every
//! seq's working memory over the network).

mod common;
#[cfg(feature = "nats")]
mod nats_common;
#[cfg(feature = "nats")]
mod nats_properties;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use palimpsest::{AuditOptions, CompactionRequest, Config, Durability, Engine, Error, Message, Seq, Session, ToolCall};
use quickcheck::{Arbitrary, Gen, QuickCheck};

/// Operations per case: enough for deletions, splices after them and turn caps, small enough that
/// 1,000 cases take seconds.
const MAX_OPS: usize = 40;

#[derive(Clone, Debug)]
enum Op {
    User,
    Assistant,
    Calls(u8),
    Result(u8),
    Compact(Option<u8>),
    Delete,
    CloseEpisode,
    MemoryMarker,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 16 {
            0..=3 => Op::User,
            4..=5 => Op::Assistant,
            6..=7 => Op::Calls(u8::arbitrary(g) % 3 + 1),
            8..=9 => Op::Result(u8::arbitrary(g)),
            10..=11 => Op::Compact(Option::<u8>::arbitrary(g)),
            12 => Op::Delete,
            13 => Op::CloseEpisode,
            _ => Op::MemoryMarker,
        }
    }
}

/// Summaries that name the seqs they cover, so every splice has its own blob. (The content of
/// summaries is another test's subject; random text here must not decide whether a compaction runs.)
fn seq_summarizer() -> std::sync::Arc<common::FnSummarizer> {
    common::FnSummarizer::new(|input| {
        let seqs: Vec<String> = input.messages.iter().map(|m| m.seq.to_string()).collect();
        Box::pin(async move { Ok(format!("summary of {}", seqs.join(","))) })
    })
}

struct Fixture {
    source: Engine,
    target: Engine,
    runtime: tokio::runtime::Runtime,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// The settings of every engine of the property, on either backend.
fn tune(config: &mut Config) {
    config.durability = Durability::Buffered;
    config.compaction.keep_last_messages = 2;
    config.episodes.max_turns_per_episode = 5;
    // Markers come from the operations, so the log is decided by the case alone.
    config.extraction.enabled = false;
}

fn open(dir: &tempfile::TempDir) -> Engine {
    let mut config = Config::new(dir.path().join("db"));
    tune(&mut config);
    Engine::open_with_summarizer(config, seq_summarizer()).expect("open")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (a, b) = (common::fast_tempdir(), common::fast_tempdir());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Fixture { source: open(&a), target: open(&b), runtime, _dirs: (a, b) }
    })
}

/// The JetStream fixture: a source and a target engine on two sets of streams of one cluster.
/// Dropped in field order: the engines, their runtime, then the cluster (killed by pid).
#[cfg(feature = "nats")]
struct NatsFixture {
    source: Engine,
    target: Engine,
    runtime: tokio::runtime::Runtime,
    _cluster: nats_common::Cluster,
}

/// The JetStream fixture, set by its test for the length of its quickcheck run.
#[cfg(feature = "nats")]
static NATS_FIXTURE: parking_lot::Mutex<Option<std::sync::Arc<NatsFixture>>> = parking_lot::Mutex::new(None);

#[cfg(feature = "nats")]
fn nats_fixture() -> NatsFixture {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (source, target, cluster) = runtime.block_on(async {
        let (cluster, source) = nats_properties::streams("rt_source").await;
        let target = nats_common::config(&cluster, "rt_target", 3);
        let source = nats_properties::connect(&source, seq_summarizer(), tune).await;
        let target_engine = nats_properties::connect(&target, seq_summarizer(), tune).await;
        let js = async_nats::jetstream::new(cluster.raw_client().await);
        nats_common::wait_stream_leader(&cluster, &js, "rt_target_s0").await;
        nats_common::wait_stream_leader(&cluster, &js, "rt_target_meta").await;
        (source, target_engine, cluster)
    });
    NatsFixture { source, target, runtime, _cluster: cluster }
}

/// Runs the operations; every one either succeeds or is refused for a reason the case allows.
async fn run(s: &Session, ops: &[Op]) {
    let (mut open_calls, mut next_call) = (Vec::<String>::new(), 0u32);
    for (i, op) in ops.iter().take(MAX_OPS).enumerate() {
        let head = s.head().await.expect("head");
        let live = head.as_ref().is_some_and(|h| !h.is_deleted());
        match op {
            Op::User => drop(s.append(Message::user(format!("user {i}"))).await.expect("user")),
            Op::Assistant => drop(s.append(Message::assistant(format!("assistant {i}"))).await.expect("assistant")),
            Op::Calls(n) => {
                let calls: Vec<ToolCall> = (0..*n)
                    .map(|_| {
                        next_call += 1;
                        open_calls.push(format!("c{next_call}"));
                        ToolCall::new(format!("c{next_call}"), "run", format!("{{\"n\":{next_call}}}"))
                    })
                    .collect();
                s.append(Message::assistant_tool_calls("", calls)).await.expect("calls");
            }
            Op::Result(pick) if !open_calls.is_empty() => {
                let id = open_calls.remove(usize::from(*pick) % open_calls.len());
                s.append(Message::tool_result(&id, format!("result of {id}"))).await.expect("result");
            }
            Op::Result(_) => {}
            Op::Compact(upto) => {
                let last = head.as_ref().map_or(0, |h| h.last_seq().get());
                let request = match upto {
                    Some(pick) if last > 0 => CompactionRequest::upto(Seq::new(u64::from(*pick) % last + 1)),
                    _ => CompactionRequest::default(),
                };
                match s.compact(request).await {
                    Ok(_) => {}
                    Err(Error::NotFound { .. }) if !live => {}
                    Err(e) => panic!("compaction: {e}"),
                }
            }
            Op::Delete if live => {
                s.delete().await.expect("delete");
                open_calls.clear();
            }
            Op::Delete => {}
            Op::CloseEpisode => match s.close_episode().await {
                Ok(_) => {}
                Err(Error::NotFound { .. }) if !live => {}
                Err(e) => panic!("close episode: {e}"),
            },
            Op::MemoryMarker => {
                // Markers arrive the way an import brings them: a span of the live log.
                if let Some(h) = &head {
                    let line = format!(
                        "{{\"type\":\"memories_extracted\",\"namespace\":\"ns\",\"from\":{},\"upto\":{},\"n_memories\":1}}",
                        h.base(),
                        h.last_seq()
                    );
                    s.import_jsonl(&line).await.expect("a marker of the live span imports");
                }
            }
        }
    }
}

/// Everything a reader can see: working memory now and at every seq of the log, as text.
async fn views(s: &Session, limit: usize, shapes: &Shapes) -> Vec<String> {
    let head = s.head().await.expect("head").expect("exists");
    let mut out = vec![format!("{:?}", s.working_memory(limit).await)];
    for seq in head.base().get() + 1..=head.last_seq().get() {
        shapes.seqs_compared.fetch_add(1, Ordering::Relaxed);
        out.push(format!("{seq}: {:?}", s.working_memory_at(Seq::new(seq), limit).await));
    }
    out
}

/// Cases whose log holds a deletion followed by a splice, and cases with a memory marker: the
/// shapes the property exists for must actually be generated. One set of counters per backend
/// (their tests run at once).
struct Shapes {
    splice_after_deletion: AtomicU64,
    with_marker: AtomicU64,
    cases: AtomicU64,
    seqs_compared: AtomicU64,
}

static ON_FJALL: Shapes = Shapes::new();
#[cfg(feature = "nats")]
static ON_NATS: Shapes = Shapes::new();

impl Shapes {
    const fn new() -> Shapes {
        Shapes {
            splice_after_deletion: AtomicU64::new(0),
            with_marker: AtomicU64::new(0),
            cases: AtomicU64::new(0),
            seqs_compared: AtomicU64::new(0),
        }
    }

    fn count(&self, text: &str) {
        self.cases.fetch_add(1, Ordering::Relaxed);
        let deletion = text.find("\"type\":\"session_deleted\"");
        if deletion.is_some_and(|at| text[at..].contains("\"type\":\"compaction_spliced\"")) {
            self.splice_after_deletion.fetch_add(1, Ordering::Relaxed);
        }
        if text.contains("\"type\":\"memories_extracted\"") {
            self.with_marker.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prints what the run generated and asserts it reached both shapes.
    fn report(&self, backend: &str) {
        let (cases, spliced, marked) = (
            self.cases.load(Ordering::Relaxed),
            self.splice_after_deletion.load(Ordering::Relaxed),
            self.with_marker.load(Ordering::Relaxed),
        );
        let seqs = self.seqs_compared.load(Ordering::Relaxed) / 2;
        println!(
            "round trips on {backend}: {cases} sessions, {seqs} seqs compared, {spliced} with a splice after a deletion, {marked} with memory markers"
        );
        // With quickcheck's default 100 cases or more, both shapes come up many times over.
        assert!(cases < 100 || (spliced > 0 && marked > 0), "{backend}: the generator must reach these shapes");
    }
}

fn prop_export_then_import_restores_the_session(ops: Vec<Op>, limit: u8) -> bool {
    let f = fixture();
    round_trip(&f.source, &f.target, &f.runtime, &ON_FJALL, ops, limit)
}

#[cfg(feature = "nats")]
fn prop_export_then_import_restores_the_session_on_nats(ops: Vec<Op>, limit: u8) -> bool {
    let f = NATS_FIXTURE.lock().clone().expect("the test sets the JetStream fixture");
    round_trip(&f.source, &f.target, &f.runtime, &ON_NATS, ops, limit)
}

fn round_trip(
    source: &Engine,
    target: &Engine,
    runtime: &tokio::runtime::Runtime,
    shapes: &Shapes,
    ops: Vec<Op>,
    limit: u8,
) -> bool {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = format!("rt-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let (from, to) = (source.session(id.as_str()).expect("id"), target.session(id.as_str()).expect("id"));
    let limit = usize::from(limit % 8) + 1;
    runtime.block_on(async {
        run(&from, &ops).await;
        if from.head().await.expect("head").is_none() {
            return true;
        }
        let mut file = Vec::new();
        let n = from.export_jsonl(&mut file).await.expect("export");
        let text = String::from_utf8(file).expect("utf-8");
        shapes.count(&text);
        let report = to.import_jsonl(&text).await.unwrap_or_else(|e| panic!("{e}\n{text}"));
        let audit = target.audit_async(AuditOptions { session: Some(to.id().clone()) }, |_| {}).await.expect("audit");
        assert!(audit.ok, "{:?}\n{text}", audit.violations);
        report.n_events == n
            && common::snapshot(&from).await == common::snapshot(&to).await
            && views(&from, limit, shapes).await == views(&to, limit, shapes).await
    })
}

#[test]
fn export_then_import_restores_history_and_working_memory_at_every_seq() {
    QuickCheck::new().quickcheck(prop_export_then_import_restores_the_session as fn(Vec<Op>, u8) -> bool);
    ON_FJALL.report("fjall");
}

#[cfg(feature = "nats")]
#[test]
fn export_then_import_restores_history_and_working_memory_at_every_seq_on_jetstream() {
    let fixture = std::sync::Arc::new(nats_fixture());
    *NATS_FIXTURE.lock() = Some(fixture);
    // Every case reads each seq's working memory from both engines: a twentieth of the cases.
    let cases = nats_properties::cluster_cases() / 2;
    let outcome = std::panic::catch_unwind(|| {
        QuickCheck::new()
            .tests(cases)
            .quickcheck(prop_export_then_import_restores_the_session_on_nats as fn(Vec<Op>, u8) -> bool);
    });
    // The cluster stops before a failure is reported.
    drop(NATS_FIXTURE.lock().take());
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    ON_NATS.report("nats");
}
