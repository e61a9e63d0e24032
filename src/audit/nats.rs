//! Audit on the JetStream backend (SPEC.md 11a, "Audit"): every session's records replayed in
//! order with the same [`Replayer`] as on fjall, plus what only this backend has: each record's
//! head must equal the replay up to it (time travel reads those heads), each record's `prev` must
//! name the record before it, and every splice's blob must be stored and hash to its name.

use std::collections::HashSet;

use super::{AUDIT_PROGRESS_EVERY, AuditOptions, AuditReport, Replayer, Violation, ViolationKind};
use crate::error::Error;
use crate::log::ids::{Seq, SessionId, SummaryHash};
use crate::storage::nats::NatsLog;

/// Audits every session (or `options.session`) of `log`.
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
        let Some((stored, version)) = log.head(id).await? else { continue };
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
            let page = log.records(id, cursor, version).await?;
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
            let problem = match log.blob(hash).await {
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
    report.blobs = checked.len() as u64;
    progress(report.events);
    report.ok = report.violations.is_empty();
    Ok(report)
}
