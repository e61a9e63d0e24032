//! Replay and audit: rebuild every session's head from its log, without calling any model, and
//! check the invariants of SPEC.md section 7. The per-session checker ([`Replayer`]) is pure: it
//! takes decoded events one by one and reports violations; [`Engine::audit`] feeds it from the
//! store and adds the checks that need other keyspaces (stored heads, the splice index, blobs).
//!
//! Audit reads lazily and keeps per-session state bounded by the session's open tool calls plus
//! the answered calls since its last splice, so a database of millions of events audits in
//! bounded memory.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

use crate::engine::Engine;
use crate::engine::writer::Hold;
use crate::error::Error;
use crate::log::codec;
use crate::log::event::{Event, EventKind};
use crate::log::fold::{self, Head};
use crate::log::ids::{Seq, SessionId, SummaryHash};
use crate::storage::fjall::Bytes;
use crate::storage::keys;
use crate::storage::{Ks, Kv, Op, Read, View};

mod gc;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "testing")]
pub use gc::GcStage;

/// How often (in events) audit reports progress.
pub const AUDIT_PROGRESS_EVERY: u64 = 65_536;

/// What kind of thing is wrong. The names are stable: they appear in `--json` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ViolationKind {
    /// A key in the events keyspace is not `session 0x00 seq`.
    MalformedKey,
    /// An event value does not decode (damaged bytes, unknown format).
    Undecodable,
    /// An event decodes but breaks a structural rule (its seq is not its key's, a message breaks
    /// the message rules).
    InvalidEvent,
    /// Seqs are not dense: a gap, or a log that does not start at 1 (or at a deletion).
    SeqGap,
    /// A splice does not start where the previous one ended, or does not move forward.
    SpliceNotForward,
    /// A splice covers up to or past its own position.
    SplicePastEnd,
    /// A splice separates a tool call from its result.
    SpliceCutsToolPair,
    /// A splice's summary blob is missing.
    MissingBlob,
    /// A blob's content does not hash to its key.
    BlobHashMismatch,
    /// A tool result answers no open call.
    ToolResultWithoutCall,
    /// The stored head differs from the replayed one.
    HeadMismatch,
    /// A session has events but no stored head.
    MissingHead,
    /// A stored head does not decode.
    UndecodableHead,
    /// A stored head has no events behind it.
    HeadWithoutLog,
    /// The splice index disagrees with the splice events.
    SpliceIndexMismatch,
    /// A record readers decode is damaged: a memory record that does not decode, a referenced
    /// summary blob that is not UTF-8 (readers would refuse either as `Corrupt`), or on JetStream a
    /// session record that does not decode or whose `prev` link names the wrong record (window reads
    /// walk those links).
    UndecodableRecord,
}

impl ViolationKind {
    /// The stable snake_case name used in reports and `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::MalformedKey => "malformed_key",
            ViolationKind::Undecodable => "undecodable",
            ViolationKind::InvalidEvent => "invalid_event",
            ViolationKind::SeqGap => "seq_gap",
            ViolationKind::SpliceNotForward => "splice_not_forward",
            ViolationKind::SplicePastEnd => "splice_past_end",
            ViolationKind::SpliceCutsToolPair => "splice_cuts_tool_pair",
            ViolationKind::MissingBlob => "missing_blob",
            ViolationKind::BlobHashMismatch => "blob_hash_mismatch",
            ViolationKind::ToolResultWithoutCall => "tool_result_without_call",
            ViolationKind::HeadMismatch => "head_mismatch",
            ViolationKind::MissingHead => "missing_head",
            ViolationKind::UndecodableHead => "undecodable_head",
            ViolationKind::HeadWithoutLog => "head_without_log",
            ViolationKind::SpliceIndexMismatch => "splice_index_mismatch",
            ViolationKind::UndecodableRecord => "undecodable_record",
        }
    }
}

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The session, when the violation belongs to one.
    pub session: Option<String>,
    /// The seq, when the violation is at one event.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: ViolationKind,
    /// Human detail.
    pub detail: String,
}

/// What to audit.
#[derive(Clone, Debug, Default)]
pub struct AuditOptions {
    /// Only this session (orphan blobs are then not computed: that needs every session).
    pub session: Option<SessionId>,
}

/// The result of an audit.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    /// True when no violation was found.
    pub ok: bool,
    /// Sessions audited (with events or a head).
    pub sessions: u64,
    /// Events read.
    pub events: u64,
    /// Splice events seen.
    pub splices: u64,
    /// Summary blobs checked.
    pub blobs: u64,
    /// Everything found wrong, in key order.
    pub violations: Vec<Violation>,
    /// Hashes (hex) of blobs no splice references; harmless, collected by `gc`. Empty for a
    /// single-session audit.
    pub orphan_blobs: Vec<String>,
}

/// Replays one session's log event by event and checks it. Pure: no I/O.
pub struct Replayer {
    session: String,
    head: Head,
    next_seq: u64,
    n_events: u64,
    /// True until the first event: only the log's first event may be a deletion at any seq.
    at_start: bool,
    /// `max(splice upto, deletion or reset base)`: messages at or before it are summarized or gone.
    lower: Seq,
    /// (call seq, result seq) of calls answered after `lower`, for the pair check at a splice.
    answered: Vec<(Seq, Seq)>,
    splice_seqs: Vec<Seq>,
    referenced: Vec<(Seq, SummaryHash)>,
    violations: Vec<Violation>,
}

impl Replayer {
    /// Starts replaying `session`.
    pub fn new(session: &str) -> Self {
        Self {
            session: session.to_string(),
            head: Head::default(),
            next_seq: 1,
            n_events: 0,
            at_start: true,
            lower: Seq::ZERO,
            answered: Vec::new(),
            splice_seqs: Vec::new(),
            referenced: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Continues replaying `session` after a log whose fold is `head`, for an import into a
    /// session that already has events. Only messages and markers may follow (an import refuses
    /// splices and deletions there), so the pairs answered before are not needed.
    pub(crate) fn resume(session: &str, head: Head) -> Self {
        let lower = head.upto().max(head.base());
        Self { next_seq: head.last_seq().get().saturating_add(1), at_start: false, lower, head, ..Self::new(session) }
    }

    fn violation(&mut self, seq: Option<Seq>, kind: ViolationKind, detail: String) {
        self.violations.push(Violation { session: Some(self.session.clone()), seq: seq.map(Seq::get), kind, detail });
    }

    /// Notes an event at `seq` that could not be decoded: it counts for density, not for the fold.
    pub fn undecodable(&mut self, seq: Seq, detail: String) {
        self.check_density(seq, false);
        self.violation(Some(seq), ViolationKind::Undecodable, detail);
    }

    fn check_density(&mut self, seq: Seq, is_deletion: bool) {
        self.n_events += 1;
        let starts_after_deletion = std::mem::replace(&mut self.at_start, false) && is_deletion;
        if seq.get() != self.next_seq && !starts_after_deletion {
            let detail = format!("expected seq {}, found {seq}", self.next_seq);
            self.violation(Some(seq), ViolationKind::SeqGap, detail);
        }
        self.next_seq = seq.get().saturating_add(1);
    }

    /// Checks and folds one decoded event stored under `key_seq`. The rules are the readers'
    /// (`codec::check_position`, `codec::check_kind`) and the write path's (`fold::check_marker`,
    /// tool pairing), so nothing audit passes is refused by a reader; splices get the finer
    /// violation kinds below, which cover their payload rules.
    pub fn event(&mut self, key_seq: Seq, event: &Event) {
        self.check_density(key_seq, matches!(event.kind, EventKind::SessionDeleted { .. }));
        if let Err(detail) = codec::check_position(event, key_seq) {
            self.violation(Some(key_seq), ViolationKind::InvalidEvent, detail);
            return;
        }
        if !matches!(event.kind, EventKind::CompactionSpliced(_))
            && let Err(detail) = codec::check_kind(event)
        {
            self.violation(Some(key_seq), ViolationKind::InvalidEvent, detail);
        }
        match &event.kind {
            EventKind::MessageAppended(m) => {
                if let Some(id) = &m.tool_call_id {
                    match self.head.open_calls().iter().find(|c| &c.id == id) {
                        Some(call) => self.answered.push((call.seq, key_seq)),
                        None => self.violation(
                            Some(key_seq),
                            ViolationKind::ToolResultWithoutCall,
                            format!("tool result for {id:?}, which is not an open call"),
                        ),
                    }
                }
            }
            EventKind::CompactionSpliced(s) => self.splice(key_seq, s),
            // A reset ends the window like a deletion (its calls are dropped with it), without a purge.
            EventKind::SessionDeleted { .. } | EventKind::MessagesReset { .. } => {
                self.lower = key_seq;
                self.answered.clear();
            }
            EventKind::MetadataSet { .. } => {}
            EventKind::EpisodeBoundary { .. } | EventKind::MemoriesExtracted { .. } => {
                if let Err(detail) = fold::check_marker(&self.head, event) {
                    self.violation(Some(key_seq), ViolationKind::InvalidEvent, detail);
                }
            }
        }
        fold::apply(&mut self.head, event);
    }

    fn splice(&mut self, at: Seq, s: &crate::log::event::Splice) {
        self.splice_seqs.push(at);
        self.referenced.push((at, s.summary_hash));
        if s.upto >= at {
            self.violation(Some(at), ViolationKind::SplicePastEnd, format!("splice at {at} covers up to {}", s.upto));
        }
        if s.previous_upto != self.lower || s.upto <= self.lower {
            let detail = format!(
                "splice ({}, {}] does not continue from {} (the previous splice or deletion)",
                s.previous_upto, s.upto, self.lower
            );
            self.violation(Some(at), ViolationKind::SpliceNotForward, detail);
        }
        let open_cut = self.head.open_calls().iter().find(|c| c.seq <= s.upto).map(|c| (c.seq, None));
        let answered_cut = self
            .answered
            .iter()
            .find(|(call, result)| *call <= s.upto && *result > s.upto)
            .map(|(c, r)| (*c, Some(*r)));
        if let Some((call, result)) = open_cut.or(answered_cut) {
            let detail = match result {
                Some(r) => format!("splice up to {} separates the call at {call} from its result at {r}", s.upto),
                None => format!("splice up to {} cuts the call at {call}, which has no result yet", s.upto),
            };
            self.violation(Some(at), ViolationKind::SpliceCutsToolPair, detail);
        }
        self.lower = self.lower.max(s.upto);
        let lower = self.lower;
        self.answered.retain(|(call, _)| *call > lower);
    }

    /// The head rebuilt so far.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Events seen.
    pub fn n_events(&self) -> u64 {
        self.n_events
    }

    /// Ends the replay: the rebuilt head, the seqs of splice events, the blobs they reference,
    /// and the violations found.
    pub fn finish(self) -> ReplayResult {
        ReplayResult {
            head: self.head,
            splice_seqs: self.splice_seqs,
            referenced: self.referenced,
            violations: self.violations,
        }
    }
}

/// What a finished replay produced.
pub struct ReplayResult {
    /// The head rebuilt from the log.
    pub head: Head,
    /// Seqs of the splice events.
    pub splice_seqs: Vec<Seq>,
    /// (splice seq, blob) referenced by splices.
    pub referenced: Vec<(Seq, SummaryHash)>,
    /// What was found wrong.
    pub violations: Vec<Violation>,
}

/// Sizes and counts of a database.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Live (not deleted) sessions.
    pub sessions: u64,
    /// Their ids, in order.
    pub session_ids: Vec<String>,
    /// Events stored.
    pub events: u64,
    /// Bytes of stored event values.
    pub event_bytes: u64,
    /// Splice events.
    pub splices: u64,
    /// Summary blobs.
    pub blobs: u64,
    /// On-disk size per keyspace, as fjall accounts it: flushed tables only, so data still in the
    /// journal (a small or freshly written database) counts as 0. On JetStream: the bytes of each
    /// stream (`{prefix}_s0`.., `{prefix}_meta`), as the servers account them (one replica's).
    pub keyspace_bytes: Vec<(String, u64)>,
}

/// What `rebuild` changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RebuildReport {
    /// Sessions replayed.
    pub sessions: u64,
    /// Heads rewritten because they differed from the log.
    pub heads_rewritten: u64,
    /// Splice-index entries added or removed.
    pub index_entries_fixed: u64,
}

fn malformed(detail: String) -> Violation {
    Violation { session: None, seq: None, kind: ViolationKind::MalformedKey, detail }
}

impl Engine {
    /// Replays every session (or one) and checks every invariant; see the module docs.
    /// `progress` is called with the number of events read so far, every
    /// [`AUDIT_PROGRESS_EVERY`] events. Blocking: run it off the async runtime's workers.
    /// On JetStream use [`Engine::audit_async`] (this answers [`Error::Unsupported`] there).
    pub fn audit(&self, options: &AuditOptions, progress: &mut dyn FnMut(u64)) -> Result<AuditReport, Error> {
        // One snapshot for the whole audit: with the engine open, writers and the purger go on
        // committing, and the log, heads, index and markers must be read as of one instant.
        let view = self.store("the blocking `audit` (use `audit_async`)")?.view();
        let store = &view;
        let mut report = AuditReport::default();
        let mut referenced: HashSet<SummaryHash> = HashSet::new();
        let mut checked: HashSet<SummaryHash> = HashSet::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let rows: Box<dyn Iterator<Item = Result<_, Error>>> = match &options.session {
            Some(id) => Box::new(store.iter_prefix(Ks::Events, &keys::session_prefix(id))),
            None => Box::new(store.iter_from(Ks::Events, None)),
        };
        let mut current: Option<Replayer> = None;
        // Every event is decoded into this one, reusing its buffers (no allocation per event).
        let mut scratch = codec::EventBuf::new();
        // Events below a session's purge floor are dead (a deletion not yet purged): skipped.
        let mut floor = Seq::ZERO;
        for row in rows {
            let (key, value) = row?;
            // The id is checked once per session: a key of the session being replayed is its.
            let known = |id: &str| current.as_ref().is_some_and(|r| r.session == id);
            let Some((id, seq)) = keys::parse_seq_key(&key).filter(|(id, _)| known(id) || SessionId::new(*id).is_ok())
            else {
                report.violations.push(malformed(format!("event key {:?}", String::from_utf8_lossy(&key))));
                continue;
            };
            if current.as_ref().is_none_or(|r| r.session != id) {
                if let Some(done) = current.take() {
                    self.finish_session(store, done, floor, &mut report, &mut referenced, &mut checked)?;
                }
                seen.insert(id.to_string());
                current = Some(Replayer::new(id));
                floor = crate::engine::purge::floor(store, &SessionId::new(id)?)?;
            }
            report.events += 1;
            if seq < floor {
                continue;
            }
            let replayer = current.as_mut().expect("set just above");
            match codec::decode_event_into(id, seq, &value, &mut scratch) {
                Ok(()) => replayer.event(seq, &scratch.event),
                Err(e) => replayer.undecodable(seq, e.to_string()),
            }
            if report.events.is_multiple_of(AUDIT_PROGRESS_EVERY) {
                progress(report.events);
            }
        }
        if let Some(done) = current.take() {
            self.finish_session(store, done, floor, &mut report, &mut referenced, &mut checked)?;
        }
        self.heads_without_log(store, options, &seen, &mut report)?;
        if options.session.is_none() {
            for row in store.iter_from(Ks::Blobs, None) {
                let (key, value) = row?;
                let Ok(bytes) = <[u8; 32]>::try_from(key.as_slice()) else {
                    report.violations.push(malformed(format!("blob key of {} bytes", key.len())));
                    continue;
                };
                let hash = SummaryHash::from_bytes(bytes);
                report.blobs += 1;
                if !referenced.contains(&hash) {
                    if blake3::hash(&value).as_bytes() != hash.as_bytes() {
                        report.violations.push(Violation {
                            session: None,
                            seq: None,
                            kind: ViolationKind::BlobHashMismatch,
                            detail: format!("orphan blob {hash} does not hash to its key"),
                        });
                    }
                    report.orphan_blobs.push(hash.to_hex());
                }
            }
            self.audit_memories(&mut report)?;
        } else {
            report.blobs = checked.len() as u64;
        }
        progress(report.events);
        report.ok = report.violations.is_empty();
        Ok(report)
    }

    /// [`Engine::audit`] from async code, on either backend: on fjall the same audit on a blocking
    /// thread; on JetStream every session's records replayed from the cluster, each record's head
    /// checked against the replay up to it, each `prev` link and each splice's blob (SPEC.md 11a,
    /// "Audit"). A whole-database audit lists orphan blobs and checks every memory record, on both
    /// backends. `progress` is called
    /// as for [`Engine::audit`].
    ///
    /// Cancel safety: a read; dropped, it changes nothing (on fjall the blocking audit then runs
    /// to its end on its thread).
    pub async fn audit_async(
        &self,
        options: AuditOptions,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<AuditReport, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.inner().backend.nats() {
            return nats::audit(log, &options, &mut progress).await;
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.audit(&options, &mut progress))
            .await
            .map_err(|e| Error::storage("audit on a blocking thread", e))?
    }

    fn finish_session(
        &self,
        store: &View<'_>,
        replayer: Replayer,
        floor: Seq,
        report: &mut AuditReport,
        referenced: &mut HashSet<SummaryHash>,
        checked: &mut HashSet<SummaryHash>,
    ) -> Result<(), Error> {
        let session = replayer.session.clone();
        let id = SessionId::new(session.as_str())?;
        let result = replayer.finish();
        report.sessions += 1;
        report.splices += result.splice_seqs.len() as u64;
        report.violations.extend(result.violations);
        let violation = |seq: Option<Seq>, kind, detail| Violation {
            session: Some(session.clone()),
            seq: seq.map(Seq::get),
            kind,
            detail,
        };
        for (at, hash) in &result.referenced {
            referenced.insert(*hash);
            // Each blob is read and hashed once, however many splices share it.
            if !checked.insert(*hash) {
                continue;
            }
            let problem = match store.get(Ks::Blobs, keys::blob_key(hash))? {
                None => Some((ViolationKind::MissingBlob, format!("summary blob {hash} is missing"))),
                Some(bytes) if blake3::hash(&bytes).as_bytes() != hash.as_bytes() => {
                    Some((ViolationKind::BlobHashMismatch, format!("summary blob {hash} does not hash to its key")))
                }
                Some(bytes) if std::str::from_utf8(&bytes).is_err() => {
                    Some((ViolationKind::UndecodableRecord, format!("summary blob {hash} is not UTF-8")))
                }
                Some(_) => None,
            };
            if let Some((kind, detail)) = problem {
                report.violations.push(violation(Some(*at), kind, detail));
            }
        }
        match store.get(Ks::Heads, keys::head_key(&id))? {
            None => report.violations.push(violation(None, ViolationKind::MissingHead, "no stored head".to_string())),
            Some(bytes) => match codec::decode_head(&session, &bytes) {
                Err(e) => report.violations.push(violation(None, ViolationKind::UndecodableHead, e.to_string())),
                Ok(stored) if stored != result.head => report.violations.push(violation(
                    None,
                    ViolationKind::HeadMismatch,
                    describe_head_difference(&stored, &result.head),
                )),
                Ok(_) => {}
            },
        }
        let prefix = keys::session_prefix(&id);
        let mut indexed = Vec::new();
        for row in store.iter_prefix(Ks::Splices, &prefix) {
            let (key, _) = row?;
            match keys::parse_seq_key(&key) {
                Some((_, seq)) if seq < floor => {}
                Some((_, seq)) => indexed.push(seq),
                None => {
                    report.violations.push(malformed(format!("splice index key {:?}", String::from_utf8_lossy(&key))))
                }
            }
        }
        if indexed != result.splice_seqs {
            report.violations.push(violation(
                None,
                ViolationKind::SpliceIndexMismatch,
                format!("index lists splices at {indexed:?}, the log has them at {:?}", result.splice_seqs),
            ));
        }
        Ok(())
    }

    /// Every memory record decodes as `Engine::memories` decodes it, under a well-formed key.
    fn audit_memories(&self, report: &mut AuditReport) -> Result<(), Error> {
        for row in self.store("audit")?.iter_from(Ks::Memories, None) {
            let (key, value) = row?;
            let split = key.iter().position(|&b| b == 0).map(|at| (&key[..at], &key[at + 1..]));
            let Some((namespace, id)) = split
                .and_then(|(ns, id)| Some((std::str::from_utf8(ns).ok()?, id)))
                .filter(|(ns, id)| id.len() == 32 && SessionId::new(*ns).is_ok())
            else {
                report.violations.push(malformed(format!("memory key {:?}", String::from_utf8_lossy(&key))));
                continue;
            };
            if let Err(e) = crate::extraction::decode_memory(namespace, id, &value) {
                report.violations.push(Violation {
                    session: None,
                    seq: None,
                    kind: ViolationKind::UndecodableRecord,
                    detail: format!("memory in namespace {namespace:?}: {e}"),
                });
            }
        }
        Ok(())
    }

    fn heads_without_log(
        &self,
        store: &View<'_>,
        options: &AuditOptions,
        seen: &BTreeSet<String>,
        report: &mut AuditReport,
    ) -> Result<(), Error> {
        let heads: Box<dyn Iterator<Item = Result<_, Error>>> = match &options.session {
            Some(id) => Box::new(
                store
                    .get(Ks::Heads, keys::head_key(id))?
                    .map(|v| Ok((Bytes::from(keys::head_key(id)), Bytes::from(v))))
                    .into_iter(),
            ),
            None => Box::new(store.iter_from(Ks::Heads, None)),
        };
        for row in heads {
            let (key, _) = row?;
            let id = String::from_utf8_lossy(&key).into_owned();
            if !seen.contains(&id) {
                report.sessions += 1;
                report.violations.push(Violation {
                    session: Some(id),
                    seq: None,
                    kind: ViolationKind::HeadWithoutLog,
                    detail: "a stored head with no events".to_string(),
                });
            }
        }
        Ok(())
    }

    /// Rewrites stored heads (and the splice index) from the log, for every session or one.
    /// Undecodable events cannot be repaired here; audit reports them. Each session is rewritten
    /// under its write lock in one batch.
    ///
    /// Cancel safety: dropping the future leaves every session either rewritten or untouched: a
    /// session's batch, once queued, lands with its lock held until it has; sessions not yet reached
    /// are untouched. Running it again finishes the job.
    pub async fn rebuild(&self, session: Option<&SessionId>) -> Result<RebuildReport, Error> {
        let ids: Vec<SessionId> = match session {
            Some(id) => vec![id.clone()],
            None => self.all_session_ids()?,
        };
        let mut report = RebuildReport::default();
        for id in ids {
            report.sessions += 1;
            let (head_fixed, index_fixed) = self.rebuild_session(&id).await?;
            report.heads_rewritten += u64::from(head_fixed);
            report.index_entries_fixed += index_fixed;
        }
        Ok(report)
    }

    async fn rebuild_session(&self, id: &SessionId) -> Result<(bool, u64), Error> {
        let lock = self.lock_session(id).await?;
        // Under the session's lock nothing else writes this session, but the purger may be removing
        // its dead events: read the log, head, index and markers as of one instant.
        let view = self.store("rebuild")?.view();
        let store = &view;
        let mut replayer = Replayer::new(id.as_str());
        // Dead events (below the purge floor) are the purger's, not part of the log to rebuild.
        let floor = crate::engine::purge::floor(store, id)?;
        for row in store.iter_prefix(Ks::Events, &keys::session_prefix(id)) {
            let (key, value) = row?;
            let Some((_, seq)) = keys::parse_seq_key(&key).filter(|(_, seq)| *seq >= floor) else { continue };
            match codec::decode_event_unchecked(id.as_str(), seq, &value) {
                Ok(event) => replayer.event(seq, &event),
                Err(e) => replayer.undecodable(seq, e.to_string()),
            }
        }
        let has_events = replayer.n_events() > 0;
        let result = replayer.finish();
        let mut ops = Vec::new();
        let stored = store.get(Ks::Heads, keys::head_key(id))?;
        let head_fixed = match (&stored, has_events) {
            (Some(_), false) => {
                ops.push(Op::Delete(Ks::Heads, keys::head_key(id).to_vec()));
                true
            }
            (_, true)
                if stored.as_deref().and_then(|b| codec::decode_head(id.as_str(), b).ok()).as_ref()
                    != Some(&result.head) =>
            {
                ops.push(Op::Put(Ks::Heads, keys::head_key(id).to_vec(), codec::encode_head(&result.head)));
                true
            }
            _ => false,
        };
        let mut indexed = HashSet::new();
        for row in store.iter_prefix(Ks::Splices, &keys::session_prefix(id)) {
            let (key, _) = row?;
            match keys::parse_seq_key(&key) {
                Some((_, seq)) if seq < floor || result.splice_seqs.contains(&seq) => {
                    indexed.insert(seq);
                }
                _ => ops.push(Op::Delete(Ks::Splices, key.to_vec())),
            }
        }
        for seq in &result.splice_seqs {
            if !indexed.contains(seq) {
                ops.push(Op::Put(Ks::Splices, keys::seq_key(id, *seq), Vec::new()));
            }
        }
        let index_fixed = (ops.len() - usize::from(head_fixed)) as u64;
        if !ops.is_empty() {
            // The cached head (if any) was the old one: forgotten before the lock is released.
            let (caches, session) = (std::sync::Arc::clone(&self.inner().caches), id.clone());
            let hold = Hold::guard(lock).then(move |_| caches.forget(&session));
            self.writer("rebuild")?.write(ops, hold).await?;
        }
        Ok((head_fixed, index_fixed))
    }

    /// Every session id that has events or a head, deleted or not.
    fn all_session_ids(&self) -> Result<Vec<SessionId>, Error> {
        let store = self.store("rebuild")?;
        let mut ids = BTreeSet::new();
        let mut after: Option<Vec<u8>> = None;
        // Jump from session to session: after each id, seek past all of its keys.
        loop {
            let next = store.iter_from(Ks::Events, after.as_deref()).next().transpose()?;
            let Some((key, _)) = next else { break };
            match keys::parse_seq_key(&key).and_then(|(id, _)| SessionId::new(id).ok()) {
                Some(id) => {
                    let mut past = keys::session_prefix(&id);
                    past.extend_from_slice(&[0xff; 8]);
                    ids.insert(id);
                    after = Some(past);
                }
                None => after = Some(key.to_vec()),
            }
        }
        for row in store.iter_from(Ks::Heads, None) {
            let (key, _) = row?;
            if let Some(id) = String::from_utf8(key.to_vec()).ok().and_then(|k| SessionId::new(k).ok()) {
                ids.insert(id);
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// [`Engine::stats`] on either backend: on fjall run on tokio's blocking pool, off the async
    /// workers; on JetStream every session's records are read, and the sizes are the streams'.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn stats_async(&self) -> Result<Stats, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.inner().backend.nats() {
            return nats::stats(log).await;
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.stats()).await.map_err(|e| Error::storage("stats", e))?
    }

    /// Counts and sizes. Reads every key of the events and blobs keyspaces. Blocking, fjall only;
    /// [`Engine::stats_async`] runs on both backends.
    pub fn stats(&self) -> Result<Stats, Error> {
        let store = self.store("stats")?;
        let mut stats = Stats::default();
        for row in store.iter_from(Ks::Events, None) {
            let (_, value) = row?;
            stats.events += 1;
            stats.event_bytes += value.len() as u64;
        }
        for row in store.iter_from(Ks::Splices, None) {
            row?;
            stats.splices += 1;
        }
        for row in store.iter_from(Ks::Blobs, None) {
            row?;
            stats.blobs += 1;
        }
        for row in store.iter_from(Ks::Heads, None) {
            let (key, value) = row?;
            let id = String::from_utf8_lossy(&key).into_owned();
            if !codec::decode_head(&id, &value)?.is_deleted() {
                stats.sessions += 1;
                stats.session_ids.push(id);
            }
        }
        stats.keyspace_bytes = [
            (keys::EVENTS, Ks::Events),
            (keys::HEADS, Ks::Heads),
            (keys::SPLICES, Ks::Splices),
            (keys::BLOBS, Ks::Blobs),
            (keys::META, Ks::Meta),
            (keys::MEMORIES, Ks::Memories),
        ]
        .into_iter()
        .map(|(name, ks)| (name.to_string(), store.disk_space(ks)))
        .collect();
        Ok(stats)
    }
}

fn describe_head_difference(stored: &Head, rebuilt: &Head) -> String {
    let mut diffs = Vec::new();
    if stored.last_seq() != rebuilt.last_seq() {
        diffs.push(format!("last_seq stored {} rebuilt {}", stored.last_seq(), rebuilt.last_seq()));
    }
    if stored.n_messages() != rebuilt.n_messages() {
        diffs.push(format!("n_messages stored {} rebuilt {}", stored.n_messages(), rebuilt.n_messages()));
    }
    if stored.splice() != rebuilt.splice() {
        diffs.push(format!("splice stored {:?} rebuilt {:?}", stored.splice(), rebuilt.splice()));
    }
    if stored.open_calls() != rebuilt.open_calls() {
        diffs.push(format!("{} open calls stored, {} rebuilt", stored.open_calls().len(), rebuilt.open_calls().len()));
    }
    if diffs.is_empty() {
        diffs.push("episode, deletion or answered-call state differs".to_string());
    }
    format!("stored head differs from the log: {}", diffs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::ViolationKind;

    #[test]
    fn kind_names_match_their_json() {
        for kind in [ViolationKind::SeqGap, ViolationKind::SpliceCutsToolPair, ViolationKind::HeadWithoutLog] {
            assert_eq!(serde_json::to_value(kind).expect("serializes"), kind.as_str());
        }
    }
}
