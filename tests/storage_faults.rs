//! Storage faults injected at the engine's storage boundary (feature `testing`). As in SQLite's
//! I/O-error tests, a one-shot failure is moved forward through each operation, one storage call
//! at a time, at each fault point (before a batch is written, after it is written, at the fsync).
//! After every failure: the error is typed, the engine is poisoned for writes, and after reopen
//! every acknowledged event is intact, the failed operation is either wholly present or wholly
//! absent, and the audit is clean. Read faults fail reads without poisoning or changing anything.

mod common;

use common::{FnSummarizer, snapshot, turn};
use palimpsest::{
    AuditOptions, CompactionRequest, Config, Durability, Engine, Error, Event, Fault, FaultMode, FaultPoint, Message,
    Seq,
};

fn open(dir: &std::path::Path, durability: Durability) -> Engine {
    let mut config = Config::new(dir);
    config.durability = durability;
    config.compaction.keep_last_messages = 2;
    Engine::open_with_summarizer(config, FnSummarizer::constant("summary")).expect("open")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Append,
    Compact,
    Delete,
    Import,
}

async fn run(engine: &Engine, op: Op) -> Result<(), Error> {
    let s = engine.session("s").unwrap();
    match op {
        Op::Append => s.append_many(turn(100)).await.map(drop),
        Op::Compact => s.compact(CompactionRequest::default()).await.map(drop),
        Op::Delete => s.delete().await.map(drop),
        Op::Import => s.import_jsonl(IMPORT).await.map(drop),
    }
}

/// Three lines imported into the live session "s" (12 events before): two messages and a memory marker.
const IMPORT: &str = "{\"role\":\"user\",\"content\":\"imported\"}\n{\"role\":\"assistant\",\"content\":\"noted\"}\n\
    {\"type\":\"memories_extracted\",\"namespace\":\"s\",\"from\":0,\"upto\":12,\"n_memories\":1}\n";

/// The op's effect is all or nothing: the log after is the log before, or the log before plus
/// exactly what the op appends (checked through the op's own postcondition).
fn all_or_nothing(op: Op, before: &[Event], after: &[Event]) -> bool {
    if after == before {
        return true;
    }
    match op {
        Op::Append => after.len() == before.len() + 4 && after[..before.len()] == *before,
        Op::Compact => {
            after.len() == before.len() + 1
                && after[..before.len()] == *before
                && matches!(after[before.len()].kind, palimpsest::EventKind::CompactionSpliced(_))
        }
        Op::Delete => {
            after.len() == 1 && matches!(after[0].kind, palimpsest::EventKind::SessionDeleted { n_events_removed: 12 })
        }
        Op::Import => {
            let added: Vec<_> = after.iter().skip(before.len()).map(|e| &e.kind).collect();
            after.len() == before.len() + 3
                && after[..before.len()] == *before
                && matches!(added[0], palimpsest::EventKind::MessageAppended(m) if m.content == "imported")
                && matches!(added[1], palimpsest::EventKind::MessageAppended(m) if m.content == "noted")
                && matches!(added[2], palimpsest::EventKind::MemoriesExtracted { upto, .. } if *upto == Seq::new(12))
        }
    }
}

/// Returns how many storage calls of the op failed in turn (one run each) before one run passed
/// all of them.
async fn move_the_fault_forward(point: FaultPoint, durability: Durability, op: Op) -> u64 {
    for after in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), durability);
        let s = engine.session("s").unwrap();
        for i in 0..3 {
            s.append_many(turn(i)).await.unwrap();
        }
        let (before, _) = snapshot(&s).await;
        engine.inject_fault(Some(Fault { point, after, mode: FaultMode::Once }));
        let result = run(&engine, op).await;
        // A deletion's purge commits beside the writers after the deletion returns: let it finish,
        // so whether the fault fired does not depend on timing.
        assert!(engine.wait_for_purges(std::time::Duration::from_secs(60)), "purges finish");
        if engine.faults_fired() == 0 {
            assert!(result.is_ok(), "{point:?}/{op:?}: no fault fired but {result:?}");
            return after;
        }
        match &result {
            // The fault hit the purge of an acknowledged deletion: the deletion stands, the engine is
            // poisoned, and the purge resumes at the next open (checked below by the reopen).
            Ok(()) if op == Op::Delete && point != FaultPoint::Persist => {}
            Err(e @ Error::Storage { .. }) => {
                // The error keeps its cause: its source chain ends at the injected fault itself,
                // through a group commit's wrapping too.
                let mut innermost: &dyn std::error::Error = e;
                while let Some(next) = innermost.source() {
                    innermost = next;
                }
                assert_eq!(innermost.to_string(), format!("{point:?}"), "{point:?}/{op:?}: {e}");
            }
            Err(Error::Poisoned) => {}
            other => panic!("{point:?}/{op:?} after {after}: expected a storage error, got {other:?}"),
        }
        assert!(engine.is_poisoned(), "{point:?}/{op:?}: a failed write poisons the engine");
        assert!(matches!(s.append(Message::user("x")).await, Err(Error::Poisoned)));
        drop((s, engine));

        let engine = open(dir.path(), durability);
        let s = engine.session("s").unwrap();
        let after_history = s.history(Seq::new(1), 1000).await.unwrap_or_default();
        assert!(all_or_nothing(op, &before, &after_history), "{point:?}/{op:?} after {after}: partial effect");
        let report = engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap();
        assert!(report.ok, "{point:?}/{op:?} after {after}: {:?}", report.violations);
        assert!(s.append(Message::user("after reopen")).await.is_ok(), "reopen clears the poison");
    }
    unreachable!("the loop returns once the fault no longer fires")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_storage_call_of_any_write_is_typed_atomic_and_recoverable() {
    let mut total = 0;
    for op in [Op::Append, Op::Compact, Op::Delete, Op::Import] {
        for (point, durability) in [
            (FaultPoint::Commit, Durability::Buffered),
            (FaultPoint::AfterCommit, Durability::Buffered),
            (FaultPoint::Commit, Durability::Sync),
            (FaultPoint::AfterCommit, Durability::Sync),
            (FaultPoint::Persist, Durability::Sync),
        ] {
            let n = move_the_fault_forward(point, durability, op).await;
            assert!(n >= 1, "{point:?}/{op:?}/{durability:?}: the fault never fired");
            total += n;
        }
    }
    assert!(total >= 20, "{total} failure points exercised");
    println!("storage faults: {total} failure points exercised, each followed by reopen and audit");
}

#[tokio::test]
async fn read_faults_fail_reads_without_poisoning_or_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Buffered);
    let s = engine.session("s").unwrap();
    s.append_many(turn(0)).await.unwrap();
    let before = snapshot(&s).await;
    // Reopened, so the head and window caches are cold and every read below reaches storage.
    drop(s);
    drop(engine);
    let engine = open(dir.path(), Durability::Buffered);
    let s = engine.session("s").unwrap();
    engine.inject_fault(Some(Fault { point: FaultPoint::Read, after: 0, mode: FaultMode::Always }));
    assert!(matches!(s.working_memory(10).await, Err(Error::Storage { .. })));
    assert!(matches!(s.history(Seq::new(1), 10).await, Err(Error::Storage { .. })));
    assert!(matches!(s.append(Message::user("x")).await, Err(Error::Storage { .. })), "appends read the head");
    assert!(matches!(s.compact(CompactionRequest::default()).await, Err(Error::Storage { .. })));
    assert!(engine.audit(&AuditOptions::default(), &mut |_| {}).is_err());
    assert!(!engine.is_poisoned());
    engine.inject_fault(None);
    assert_eq!(snapshot(&s).await, before);
    s.append(Message::user("fine again")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_never_lose_an_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(String, Seq, String)> = Vec::new();
    let mut engine = open(dir.path(), Durability::Sync);
    let mut reopens = 0;
    for round in 0..400u64 {
        if engine.is_poisoned() {
            // Background extraction jobs keep the database open while they run: drain them first (SPEC 6b).
            engine.drain(std::time::Duration::from_secs(30), true).await;
            drop(engine);
            engine = open(dir.path(), Durability::Sync);
            reopens += 1;
        }
        let point = [FaultPoint::Commit, FaultPoint::AfterCommit, FaultPoint::Persist][(round % 3) as usize];
        engine.inject_fault(Some(Fault { point, after: 0, mode: FaultMode::Random { one_in: 7, seed: round } }));
        let s = engine.session(format!("r{}", round % 5)).unwrap();
        let text = format!("message {round}");
        if let Ok(seq) = s.append(Message::user(&text)).await {
            acked.push((s.id().to_string(), seq, text));
        }
        if round % 25 == 0 {
            let _ = s.compact(CompactionRequest::default()).await;
        }
    }
    // Background extraction jobs keep the database open while they run: drain them first (SPEC 6b).
    engine.drain(std::time::Duration::from_secs(30), true).await;
    drop(engine);
    let engine = open(dir.path(), Durability::Sync);
    for (id, seq, text) in &acked {
        let events = engine.session(id.as_str()).unwrap().history(*seq, 1).await.unwrap();
        assert_eq!(events[0].message().map(|m| m.content.as_str()), Some(text.as_str()), "{id}#{seq} lost");
    }
    let report = engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap();
    assert!(report.ok, "{:?}", report.violations);
    assert!(reopens >= 10, "only {reopens} faults fired");
}
