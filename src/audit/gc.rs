//! Orphan collection (`gc`): summary blobs no splice references are found by a full audit, with
//! no lock held, then re-checked and removed under the engine's blob gate held exclusively, so a
//! blob that a compaction or an import referenced in the meantime is kept (SPEC 6a). Both scans
//! run on tokio's blocking pool, off the async workers.

use std::collections::HashSet;
use std::time::SystemTime;

use crate::engine::Engine;
use crate::engine::writer::Hold;
use crate::error::Error;
use crate::log::event::{Event, EventKind};
use crate::log::ids::{SessionId, SummaryHash};
use crate::storage::keys;
use crate::storage::{Ks, Kv, Op, Read};
use crate::summarizer::BoxFuture;

use super::AuditOptions;

/// Where [`Engine::collect_orphan_blobs`] stands, for tests that pause it (feature `testing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcStage {
    /// The audit found candidates; the blob gate is not held yet. On JetStream: the candidates are
    /// judged (listed, older than the grace), nothing is removed yet, and no other stage follows.
    CandidatesFound,
    /// The gate is held exclusively and the candidates were re-checked; nothing is removed yet.
    GateHeld,
}

/// Runs blocking store work (scans, audits) on tokio's blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::storage("orphan-blob scan", e))?
}

/// A test's hook, awaited at each [`GcStage`].
pub(super) type Pause<'a> = &'a mut (dyn FnMut(GcStage) -> BoxFuture<'static, ()> + Send);

impl Engine {
    /// Lists summary blobs no splice references and, unless `dry_run`, removes them. Returns the
    /// blobs removed (or, with `dry_run`, those that would be).
    ///
    /// Two phases (SPEC 6a). First a full audit, on a blocking thread and without the blob gate,
    /// finds the candidates, so compactions and imports keep splicing meanwhile. Then, holding the
    /// gate exclusively (waiting at most `writes.timeout_ms` for the compactions and imports
    /// between storing a blob and committing its splice), it re-reads every splice through the
    /// splice index, again off the async workers, and removes only the candidates still
    /// unreferenced. A blob referenced by a splice that landed after the audit is kept.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the removal batch is handed to the writer removes nothing (a
    /// scan already running on the blocking pool finishes and is discarded, and the gate is
    /// released with the future); after that the removal commits whole or not at all. Either way
    /// only blobs that were unreferenced under the gate can be gone.
    ///
    /// On JetStream (SPEC 11a, "Orphan blobs") engines on other machines may be splicing, so no
    /// lock can keep them out: a blob is removed only once the servers stored it more than
    /// `storage.nats.orphan_grace_ms` ago, which no splice naming it can land after, and only up
    /// to the message judged (the same blob published again since stays).
    pub async fn collect_orphan_blobs(&self, dry_run: bool) -> Result<Vec<SummaryHash>, Error> {
        self.collect_orphans(dry_run, SystemTime::now(), &mut |_| Box::pin(async {})).await
    }

    /// [`Engine::collect_orphan_blobs`], awaiting `pause` at each [`GcStage`], so a test can
    /// land a write at exactly that point. Test builds only (feature `testing`).
    #[cfg(feature = "testing")]
    pub async fn collect_orphan_blobs_pausing(
        &self,
        dry_run: bool,
        pause: Pause<'_>,
    ) -> Result<Vec<SummaryHash>, Error> {
        self.collect_orphans(dry_run, SystemTime::now(), pause).await
    }

    /// [`Engine::collect_orphan_blobs_pausing`] as if the wall clock read `now`: on JetStream, a
    /// test ages the blobs past `storage.nats.orphan_grace_ms` without waiting for it (fjall
    /// ignores `now`). Test builds only (feature `testing`).
    #[cfg(feature = "testing")]
    pub async fn collect_orphan_blobs_as_of(
        &self,
        dry_run: bool,
        now: SystemTime,
        pause: Pause<'_>,
    ) -> Result<Vec<SummaryHash>, Error> {
        self.collect_orphans(dry_run, now, pause).await
    }

    async fn collect_orphans(
        &self,
        dry_run: bool,
        now: SystemTime,
        pause: Pause<'_>,
    ) -> Result<Vec<SummaryHash>, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.inner().backend.nats() {
            let grace = std::time::Duration::from_millis(self.config().storage.nats.orphan_grace_ms);
            return super::nats::collect_orphans(log, grace, now, dry_run, pause).await;
        }
        #[cfg(not(feature = "nats"))]
        let _ = now;
        let engine = self.clone();
        let candidates = blocking(move || {
            let report = engine.audit(&AuditOptions::default(), &mut |_| {})?;
            report.orphan_blobs.iter().map(|h| SummaryHash::from_hex(h)).collect::<Result<Vec<_>, _>>()
        })
        .await?;
        if candidates.is_empty() {
            return Ok(candidates);
        }
        pause(GcStage::CandidatesFound).await;
        let timeout_ms = self.config().writes.timeout_ms;
        let _exclusive =
            tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), self.inner().blob_gate.write())
                .await
                .map_err(|_| Error::Timeout {
                    what: "compactions and imports to finish splicing",
                    after_ms: timeout_ms,
                })?;
        let engine = self.clone();
        let orphans = blocking(move || engine.still_unreferenced(candidates)).await?;
        pause(GcStage::GateHeld).await;
        if !dry_run && !orphans.is_empty() {
            let ops = orphans.iter().map(|h| Op::Delete(Ks::Blobs, keys::blob_key(h).to_vec())).collect();
            self.writer("gc")?.write(ops, Hold::nothing()).await?;
        }
        Ok(orphans)
    }

    /// The candidates that still exist and that no splice in the splice index references. Run
    /// under the exclusive blob gate: every splice written since the candidates were found was
    /// written with its index entry, so it is among those read here.
    fn still_unreferenced(&self, candidates: Vec<SummaryHash>) -> Result<Vec<SummaryHash>, Error> {
        let view = self.store("gc")?.view();
        let store = &view;
        let mut referenced = HashSet::new();
        for row in store.iter_from(Ks::Splices, None) {
            let (key, _) = row?;
            let Some((id, seq)) = keys::parse_seq_key(&key) else { continue };
            let Ok(id) = SessionId::new(id) else { continue };
            if let Some(Event { kind: EventKind::CompactionSpliced(s), .. }) = store.event(&id, seq)? {
                referenced.insert(s.summary_hash);
            }
        }
        let mut out = Vec::new();
        for hash in candidates {
            if !referenced.contains(&hash) && store.get(Ks::Blobs, keys::blob_key(&hash))?.is_some() {
                out.push(hash);
            }
        }
        Ok(out)
    }
}
