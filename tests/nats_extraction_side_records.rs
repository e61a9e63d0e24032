//! Memory extraction's records beside the log on JetStream (SPEC.md 11a, "Memories and extraction
//! markers"): each is published before the session record that refers to it, so a record that
//! never lands leaves a harmless extra, never a reference to something missing. The JetStream
//! equivalents of fjall's kill points inside its one atomic batch:
//! - a marker whose splice or boundary never landed: the next connect waits while the record may
//!   still be in flight, and removes the marker once the log has moved past its seq;
//! - memories whose `MemoriesExtracted` never landed: they stay, counted by no event, and the
//!   extraction's retry neither stores them twice nor counts them;
//! - two engines resuming one extraction: every memory stored once, counted once between them.

mod backends;
mod guards_common;

use std::sync::Arc;
use std::time::Duration;

use backends::{Backend, Store, extracted};
use futures_util::StreamExt;
use guards_common::FnExtractor;
use palimpsest::{AuditOptions, Components, Engine, Fault, FaultMode, FaultPoint, Message, Seq};

async fn open(store: &Store, extractor: &Arc<FnExtractor>) -> Engine {
    let components = Components { extractor: Some(Arc::clone(extractor) as _), ..Components::default() };
    store
        .open_with(components, |config| {
            config.extraction.enabled = true;
            config.background.extraction_timeout_ms = 20_000;
        })
        .await
}

/// The pending extraction markers on the meta stream (their subjects).
async fn markers(store: &Store) -> Vec<String> {
    let cluster = store.cluster().expect("a JetStream store");
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    let stream = js.get_stream(format!("{}_meta", store.prefix())).await.expect("meta stream");
    let mut subjects = stream.info_with_subjects(format!("{}.m.e.>", store.prefix())).await.expect("subjects");
    let mut out = Vec::new();
    while let Some(entry) = subjects.next().await {
        out.push(entry.expect("a subject").0);
    }
    out
}

fn refuse_next_append() -> Option<Fault> {
    Some(Fault { point: FaultPoint::Commit, after: 0, mode: FaultMode::Once })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_whose_boundary_never_landed_is_removed_once_the_log_passes_it() {
    let store = Store::new(Backend::Nats).await;
    let extractor = FnExtractor::echo_after(1);
    let engine = open(&store, &extractor).await;
    let s = engine.session("kim:1").expect("id");
    s.append_many((0..3).map(|i| Message::user(format!("kim fact {i}"))).collect()).await.expect("append");
    // The boundary's marker is published, then its record is refused: nothing refers to the marker.
    engine.inject_fault(refuse_next_append());
    assert!(s.close_episode().await.is_err(), "the record was refused");
    engine.inject_fault(None);
    assert_eq!(markers(&store).await.len(), 1, "the marker went out before its record");
    drop((s, engine));

    // The log has not reached the marker's seq: its record could still be in flight, so the
    // marker waits (and is reported).
    let engine = open(&store, &extractor).await;
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_resumed, stats.extractions_deferred), (0, 1));
    // Another event takes that seq: the marker's record can never land, and the next connect removes it.
    let s = engine.session("kim:1").expect("id");
    s.append(Message::assistant("noted")).await.expect("append");
    drop((s, engine));
    let engine = open(&store, &extractor).await;
    let stats = engine.guard_stats();
    assert_eq!((stats.extractions_resumed, stats.extractions_deferred), (0, 0));
    assert!(markers(&store).await.is_empty(), "removed");
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert!(extractor.calls.lock().is_empty(), "no extraction of an episode that was never closed");
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit").ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_whose_event_never_landed_stay_once_and_uncounted() {
    let store = Store::new(Backend::Nats).await;
    // The extractor waits for the test to arm the fault, so the refused append is the job's.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let extractor = {
        let gate = Arc::clone(&gate);
        FnExtractor::new(move |input| {
            let gate = Arc::clone(&gate);
            Box::pin(async move {
                gate.acquire().await.expect("open").forget();
                Ok(input.messages.iter().map(|m| m.message.content.clone()).collect())
            })
        })
    };
    let engine = open(&store, &extractor).await;
    let s = engine.session("lou:1").expect("id");
    s.append_many((0..3).map(|i| Message::user(format!("lou fact {i}"))).collect()).await.expect("append");
    s.close_episode().await.expect("close").expect("a boundary");
    engine.inject_fault(refuse_next_append());
    gate.add_permits(1);
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert_eq!(engine.faults_fired(), 1, "the job's MemoriesExtracted was refused");
    let error = engine.last_extraction_error(s.id()).expect("recorded");
    assert!(error.message.contains("injected"), "{error:?}");
    assert_eq!(engine.memories_async("lou", 10).await.expect("read").len(), 3, "published before the event");
    assert!(extracted(&engine, "lou:1").await.is_empty());
    assert_eq!(markers(&store).await.len(), 1, "the marker keeps the failure for the next connect");
    drop((s, engine));

    // The retry finds every memory stored: nothing new, nothing counted, the marker removed.
    let engine = open(&store, &extractor).await;
    assert_eq!(engine.guard_stats().extractions_resumed, 1);
    gate.add_permits(1);
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert_eq!(engine.memories_async("lou", 10).await.expect("read").len(), 3, "each memory once");
    assert!(extracted(&engine, "lou:1").await.is_empty(), "no event counts memories it did not create");
    assert_eq!(engine.guard_stats().memories_written, 0);
    assert!(markers(&store).await.is_empty());
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit").ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_resuming_one_extraction_store_and_count_each_memory_once() {
    let store = Store::new(Backend::Nats).await;
    {
        let hanging = FnExtractor::new(|_| Box::pin(std::future::pending()));
        let engine = open(&store, &hanging).await;
        for round in 0..2 {
            let s = engine.session("max:1").expect("id");
            let facts = (0..10).map(|i| Message::user(format!("max fact {round} {i}"))).collect();
            s.append_many(facts).await.expect("append");
            s.close_episode().await.expect("close").expect("a boundary");
        }
        engine.drain(Duration::from_millis(10), true).await;
    }
    // Both connect before either runs a job, so both queue both extractions.
    let slow = FnExtractor::echo_after(200);
    let (a, b) = tokio::join!(open(&store, &slow), open(&store, &slow));
    assert_eq!(a.guard_stats().extractions_resumed + b.guard_stats().extractions_resumed, 4);
    let (left_a, left_b) =
        tokio::join!(a.drain(Duration::from_secs(60), false), b.drain(Duration::from_secs(60), false));
    assert_eq!((left_a.left, left_b.left), (0, 0));
    let memories = a.memories_async("max", 100).await.expect("read");
    assert_eq!(memories.len(), 20, "every memory once");
    let counted: u64 = extracted(&a, "max:1").await.iter().map(|(_, _, n)| n).sum();
    assert_eq!(counted, 20, "counted once between the two engines");
    let written = a.guard_stats().memories_written + b.guard_stats().memories_written;
    assert_eq!(written, 20);
    assert!(markers(&store).await.is_empty(), "both extractions finished");
    assert!(a.audit_async(AuditOptions::default(), |_| {}).await.expect("audit").ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_names_a_memory_record_that_does_not_decode() {
    let store = Store::new(Backend::Nats).await;
    let engine = open(&store, &FnExtractor::echo_after(1)).await;
    let s = engine.session("ned:1").expect("id");
    s.append(Message::user("ned fact")).await.expect("append");
    s.schedule_extraction(Seq::ZERO, Seq::new(1)).expect("span");
    assert_eq!(engine.drain(Duration::from_secs(60), false).await.left, 0);
    assert!(engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit").ok, "a stored memory decodes");
    // A record written past the engine, under a well-formed subject, with bytes that are not one.
    let hex = |text: &str| text.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let subject = format!("{}.m.n.{}.{}", store.prefix(), hex("ned"), hex(&"ab".repeat(32)));
    let js = async_nats::jetstream::new(store.cluster().expect("cluster").raw_client().await);
    js.publish(subject, "not a memory".into()).await.expect("publish").await.expect("stored");
    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.expect("audit");
    assert!(!report.ok);
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    let violation = &report.violations[0];
    assert_eq!(violation.kind, palimpsest::ViolationKind::UndecodableRecord);
    assert!(violation.detail.contains("namespace \"ned\""), "{violation:?}");
}
