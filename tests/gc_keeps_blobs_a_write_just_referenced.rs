//! Orphan collection (`gc`) racing the writes that reference blobs (feature `testing`, which lets
//! the test land a write at each stage of a collection). A blob that a splice references once
//! the collection ends is never removed: an import or compaction that referenced it after gc's
//! audit is seen by the re-check under the blob gate, and one that starts while gc holds the gate
//! waits for it and stores the blob again.

mod common;

use std::sync::Arc;

use common::{FnSummarizer, engine_with};
use palimpsest::{AuditOptions, BoxFuture, Engine, GcStage, SummaryHash};

const TEXT: &str = "an orphan summary that an import brings back";

/// An import into an empty session of a log whose splice's summary is `TEXT`.
fn import_text(session: &str) -> String {
    format!(
        "{{\"role\":\"user\",\"content\":\"hi {session}\"}}\n{{\"role\":\"assistant\",\"content\":\"hello\"}}\n\
         {{\"type\":\"compaction_spliced\",\"upto\":2,\"previous_upto\":0,\"summary\":\"{TEXT}\"}}\n"
    )
}

/// An engine with an orphan blob holding `TEXT`: a session spliced with it, then deleted.
async fn with_orphan() -> (Engine, tempfile::TempDir) {
    let (engine, dir) = engine_with(FnSummarizer::constant("unused"), |_| {});
    let s = engine.session("old").unwrap();
    s.import_jsonl(&import_text("old")).await.unwrap();
    s.delete().await.unwrap();
    let report = engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(report.orphan_blobs, vec![SummaryHash::of(TEXT).to_hex()]);
    (engine, dir)
}

async fn assert_clean_and_blob_present(engine: &Engine) {
    let report = engine.audit(&AuditOptions::default(), &mut |_| {}).unwrap();
    assert!(report.ok, "{:?}", report.violations);
    assert!(report.orphan_blobs.is_empty(), "the blob is referenced again: {:?}", report.orphan_blobs);
    let wm = engine.session("new").unwrap().working_memory(10).await.unwrap();
    assert_eq!(wm.summary.map(|s| s.text).as_deref(), Some(TEXT));
}

#[tokio::test]
async fn a_blob_an_import_references_after_gcs_audit_is_kept() {
    let (engine, _dir) = with_orphan().await;
    let writer = engine.clone();
    let mut pause = move |stage: GcStage| -> BoxFuture<'static, ()> {
        let writer = writer.clone();
        Box::pin(async move {
            if stage == GcStage::CandidatesFound {
                writer.session("new").unwrap().import_jsonl(&import_text("new")).await.unwrap();
            }
        })
    };
    let removed = engine.collect_orphan_blobs_pausing(false, &mut pause).await.unwrap();
    assert!(removed.is_empty(), "the candidate became referenced before the gate: {removed:?}");
    assert_clean_and_blob_present(&engine).await;
}

#[tokio::test]
async fn an_import_that_starts_while_gc_holds_the_gate_waits_and_its_blob_survives() {
    let (engine, _dir) = with_orphan().await;
    let writer = engine.clone();
    let import: Arc<parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let slot = Arc::clone(&import);
    let mut pause = move |stage: GcStage| -> BoxFuture<'static, ()> {
        let (writer, slot) = (writer.clone(), Arc::clone(&slot));
        Box::pin(async move {
            if stage != GcStage::GateHeld {
                return;
            }
            let task = tokio::spawn(async move {
                writer.session("new").unwrap().import_jsonl(&import_text("new")).await.unwrap();
            });
            // Give the import every chance to run to completion: without the gate it commits
            // here, and the removal that follows would take its blob.
            for _ in 0..1_000 {
                if task.is_finished() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(!task.is_finished(), "the import must wait for the exclusive gate");
            *slot.lock() = Some(task);
        })
    };
    let removed = engine.collect_orphan_blobs_pausing(false, &mut pause).await.unwrap();
    assert_eq!(removed, vec![SummaryHash::of(TEXT)], "the orphan was unreferenced when the gate was taken");
    let task = import.lock().take().expect("the import was started");
    task.await.unwrap();
    assert_clean_and_blob_present(&engine).await;
}

#[tokio::test]
async fn a_blob_a_compaction_splices_after_gcs_audit_is_kept() {
    // The compaction's summarizer writes the orphan's text again, so its splice references it.
    let (engine, _dir) = engine_with(FnSummarizer::constant(TEXT), |c| c.compaction.keep_last_messages = 1);
    let old = engine.session("old").unwrap();
    old.import_jsonl(&import_text("old")).await.unwrap();
    old.delete().await.unwrap();
    let s = engine.session("new").unwrap();
    s.append_many(common::turn(0)).await.unwrap();
    let writer = s.clone();
    let mut pause = move |stage: GcStage| -> BoxFuture<'static, ()> {
        let writer = writer.clone();
        Box::pin(async move {
            if stage == GcStage::CandidatesFound {
                let outcome = writer.compact(palimpsest::CompactionRequest::default()).await.unwrap();
                assert!(matches!(outcome, palimpsest::CompactionOutcome::Spliced { .. }), "{outcome:?}");
            }
        })
    };
    let removed = engine.collect_orphan_blobs_pausing(false, &mut pause).await.unwrap();
    assert!(removed.is_empty(), "the candidate was spliced before the gate: {removed:?}");
    assert_clean_and_blob_present(&engine).await;
}
