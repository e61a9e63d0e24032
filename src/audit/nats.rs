//! Audit on the JetStream backend (SPEC.md 11a, "Audit"): every session's records replayed in
//! order with the same [`Replayer`] as on fjall, plus what only this backend has: each record's
//! head must equal the replay up to it (time travel reads those heads), each record's `prev` must
//! name the record before it, and every splice's blob must be stored and hash to its name.
//! A whole-database audit also lists the blobs no splice references (`orphan_blobs`), which
//! orphan collection (`gc`, below) removes once they are older than `storage.nats.orphan_grace_ms`;
//! `stats` walks the same records. Every read here is an operator's: one the cluster does not
//! answer (a stream electing its leader) is asked again, bounded by the write timeout
//! (`NatsLog::answered`), where the engine's own reads fail fast for their caller to decide.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use super::gc::{GcStage, Pause};
use super::{AUDIT_PROGRESS_EVERY, AuditOptions, AuditReport, Replayer, Stats, Violation, ViolationKind};
use crate::error::Error;
use crate::log::event::EventKind;
use crate::log::ids::{Seq, SessionId, SummaryHash};
use crate::storage::nats::NatsLog;

/// Audits every session (or `options.session`) of `log`; a whole-database audit also lists the
/// orphan blobs.
pub(super) async fn audit(
    log: &NatsLog,
    options: &AuditOptions,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<AuditReport, Error> {
    let ids: Vec<SessionId> = match &options.session {
        Some(id) => vec![id.clone()],
        None => log.session_ids().await?.into_iter().collect(),
    };
    let mut report = AuditReport::default();
    let mut checked: HashSet<SummaryHash> = HashSet::new();
    for id in &ids {
        let Some((stored, version)) = log.answered("read a session's head", || log.head(id)).await? else { continue };
        report.sessions += 1;
        // Events before the last deletion are dead; a reset's earlier events stay in the log.
        let base = stored.log_start();
        let violation = |seq: Option<Seq>, kind, detail| Violation {
            session: Some(id.to_string()),
            seq: seq.map(Seq::get),
            kind,
            detail,
        };
        let mut replayer = Replayer::new(id.as_str());
        let (mut cursor, mut prev) = (1_u64, None::<u64>);
        'records: while cursor <= version.get() {
            let page = log.answered("read a session's records", || log.records(id, cursor, version)).await?;
            if page.is_empty() {
                report.violations.push(violation(
                    None,
                    ViolationKind::UndecodableRecord,
                    format!("records end at stream seq {} before the head's record at {}", cursor - 1, version.get()),
                ));
                break;
            }
            for (at, record) in page {
                cursor = at + 1;
                let record = match record {
                    Ok(record) => record,
                    Err(e) => {
                        // Nothing after an unreadable record can be replayed.
                        report.violations.push(violation(None, ViolationKind::UndecodableRecord, e.to_string()));
                        break 'records;
                    }
                };
                // Records wholly before the last deletion are dead (their purge may not have run).
                if record.head.last_seq() < base {
                    prev = Some(at);
                    continue;
                }
                if let Some(before) = prev
                    && record.prev != before
                {
                    report.violations.push(violation(
                        Some(record.first_seq()),
                        ViolationKind::UndecodableRecord,
                        format!(
                            "the record at stream seq {at} names {} as the one before it, not {before}",
                            record.prev
                        ),
                    ));
                }
                prev = Some(at);
                for event in record.events.iter().filter(|e| e.seq >= base) {
                    replayer.event(event.seq, event);
                    report.events += 1;
                    if report.events.is_multiple_of(AUDIT_PROGRESS_EVERY) {
                        progress(report.events);
                    }
                }
                if *replayer.head() != record.head {
                    report.violations.push(violation(
                        Some(record.head.last_seq()),
                        ViolationKind::HeadMismatch,
                        format!(
                            "the head stored with the record at stream seq {at}: {}",
                            super::describe_head_difference(&record.head, replayer.head())
                        ),
                    ));
                }
            }
        }
        let result = replayer.finish();
        report.splices += result.splice_seqs.len() as u64;
        report.violations.extend(result.violations);
        for (at, hash) in &result.referenced {
            // Each blob is read (and its hash checked by the read) once.
            if !checked.insert(*hash) {
                continue;
            }
            let problem = match log.answered("read a blob", || log.blob(hash)).await {
                Ok(Some(_)) => None,
                Ok(None) => Some((ViolationKind::MissingBlob, format!("summary blob {hash} is missing"))),
                Err(Error::Corrupt { detail, .. }) => Some((ViolationKind::BlobHashMismatch, detail)),
                Err(e) => return Err(e),
            };
            if let Some((kind, detail)) = problem {
                report.violations.push(violation(Some(*at), kind, detail));
            }
        }
    }
    if options.session.is_none() {
        let stored = log.blob_hashes().await?;
        report.blobs = stored.len() as u64;
        report.orphan_blobs = stored.iter().filter(|h| !checked.contains(*h)).map(SummaryHash::to_hex).collect();
        audit_memories(log, &mut report).await?;
    } else {
        report.blobs = checked.len() as u64;
    }
    progress(report.events);
    report.ok = report.violations.is_empty();
    Ok(report)
}

/// Every memory record decodes as `Engine::memories_async` decodes it, under a well-formed
/// subject (as fjall's audit checks its `memories` keyspace).
async fn audit_memories(log: &NatsLog, report: &mut AuditReport) -> Result<(), Error> {
    for (namespace, key, value) in log.all_memory_records().await? {
        let decoded = crate::extraction::memory_id_bytes(&key)
            .and_then(|id| crate::extraction::decode_memory(&namespace, &id, &value));
        if let Err(e) = decoded {
            report.violations.push(Violation {
                session: None,
                seq: None,
                kind: ViolationKind::UndecodableRecord,
                detail: format!("memory {key} in namespace {namespace:?}: {e}"),
            });
        }
    }
    Ok(())
}

/// Removes (unless `dry_run`) the blobs no splice references that the server stored before
/// `now - grace`; returns them. SPEC.md 11a, "Orphan blobs", has the argument in full: a splice
/// lands within 2 x `write_timeout_ms` of its blob's publish or never, and the grace is at least
/// that, so every splice naming a blob this old was stored before the scan below began and is
/// seen by it. Each blob is removed only up to the message judged, so the same blob published
/// again meanwhile stays. Refuses while the audit finds a record it cannot read (its splices,
/// and so the blobs they name, are unknown).
pub(super) async fn collect_orphans(
    log: &NatsLog,
    grace: Duration,
    now: SystemTime,
    dry_run: bool,
    pause: Pause<'_>,
) -> Result<Vec<SummaryHash>, Error> {
    let cutoff = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let report = audit(log, &AuditOptions::default(), &mut |_| {}).await?;
    if let Some(v) = report.violations.iter().find(|v| v.kind == ViolationKind::UndecodableRecord) {
        return Err(Error::Corrupt {
            session: v.session.clone(),
            seq: v.seq,
            detail: format!(
                "gc needs every record readable to know which blobs are referenced, and this one is not \
                 (`palimpsest audit` names the damage): {}",
                v.detail
            ),
        });
    }
    let mut judged = Vec::new();
    for hex in &report.orphan_blobs {
        let hash = SummaryHash::from_hex(hex)?;
        if let Some(stored) = log.blob_stored(&hash).await?
            && stored.at < cutoff
        {
            judged.push((hash, stored.sequence));
        }
    }
    if judged.is_empty() {
        return Ok(Vec::new());
    }
    pause(GcStage::CandidatesFound).await;
    if dry_run {
        return Ok(judged.into_iter().map(|(hash, _)| hash).collect());
    }
    let mut removed = Vec::with_capacity(judged.len());
    for (hash, sequence) in judged {
        log.remove_blob(&hash, sequence).await?;
        // Published again since it was judged: that newer message stays, and the blob with it.
        if log.blob_stored(&hash).await?.is_none() {
            removed.push(hash);
        }
    }
    Ok(removed)
}

/// Counts and sizes: every session's records are read (as audit reads them).
pub(super) async fn stats(log: &NatsLog) -> Result<Stats, Error> {
    let mut stats = Stats::default();
    for id in log.session_ids().await? {
        let Some((head, version)) = log.answered("read a session's head", || log.head(&id)).await? else { continue };
        if !head.is_deleted() {
            stats.sessions += 1;
            stats.session_ids.push(id.to_string());
        }
        let mut cursor = 1_u64;
        while cursor <= version.get() {
            let page = log.answered("read a session's records", || log.records(&id, cursor, version)).await?;
            let Some((last, _)) = page.last() else { break };
            cursor = last + 1;
            for (_, record) in page {
                let record = record?;
                stats.events += record.events.len() as u64;
                stats.splices +=
                    record.events.iter().filter(|e| matches!(e.kind, EventKind::CompactionSpliced(_))).count() as u64;
                stats.event_bytes +=
                    record.events.iter().map(|e| crate::log::codec::encode_event(e).len() as u64).sum::<u64>();
            }
        }
    }
    let blobs: BTreeSet<SummaryHash> = log.blob_hashes().await?;
    stats.blobs = blobs.len() as u64;
    stats.keyspace_bytes = log.stream_bytes().await?;
    Ok(stats)
}
