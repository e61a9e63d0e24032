//! Durable extraction: a **pending marker** for every extraction the engine schedules, so a span
//! whose extraction did not finish (crash, exit, timeout, panic, a cancelling drain) is found again
//! on the next open and queued, without the open reading the log.
//!
//! - The marker is written in the same atomic batch as the event that schedules the extraction
//!   (a `CompactionSpliced`, or an `EpisodeBoundary`), keyed by the session and that event's seq,
//!   so an acknowledged splice or boundary always has its marker and a lost one never does.
//! - It is removed in the batch that records `MemoriesExtracted`, or on its own when the job ends
//!   with nothing to write (an empty span, no memories, nothing new, the session deleted, the
//!   namespace lock skipped under `locks.on_timeout = skip`).
//! - Each attempt is counted in the marker before the job does anything else, so every way a job
//!   can end without finishing counts, a crash included. An attempt that starts with
//!   [`MAX_EXTRACTION_ATTEMPTS`] already counted, or a failure that brings the count there, gives
//!   the extraction up: the marker moves, with its last error, to the given-up range of the same
//!   keyspace ([`crate::Engine::given_up_extractions`]), which no open ever scans.
//! - On open, [`resume`] reads at most [`MAX_RESUMED_PER_OPEN`] pending markers (one bounded range
//!   scan of the pending range, whatever the size of the log) and queues them, at most
//!   `background.extraction_queue_depth` per session. What does not fit stays pending for a later
//!   open and is reported (a `warn` trace and `GuardStats::extractions_deferred`).
//! - On JetStream the markers are messages on the meta stream (SPEC.md 11a): a marker is published
//!   before the record of its splice or boundary, so a record that fails leaves a marker without
//!   its event, which [`resume_nats`] drops once the log shows the event will never be there.

use serde::{Deserialize, Serialize};

use super::queue::Job;
use crate::engine::backend::Backend;
use crate::engine::writer::Hold;
use crate::engine::{Batch, Engine};
use crate::error::Error;
use crate::guard::stats::add;
use crate::log::ids::{Seq, SessionId};
use crate::storage::keys::{self, EXTRACTION_GIVEN_UP, EXTRACTION_PENDING};
use crate::storage::{Ks, Op, Read};
use crate::summarizer::truncate_bytes;

/// Attempts an extraction gets (each counted before the job does anything) before it is given up.
pub const MAX_EXTRACTION_ATTEMPTS: u32 = 3;
/// Most pending markers one open reads and queues; the rest wait for a later open.
pub const MAX_RESUMED_PER_OPEN: usize = 4_096;
/// Most given-up records one read returns.
pub const MAX_GIVEN_UP_READ: usize = 10_000;

/// Format version byte of a stored marker.
const MARKER_FORMAT: u8 = 1;

/// The stored form of a marker (value of the `extractions` keyspace after the version byte).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    /// Exclusive start of the span; `None`: the start of the episode that ends at `upto`.
    from: Option<Seq>,
    upto: Seq,
    /// Attempts started so far.
    attempts: u32,
    /// The last failure seen, at most `MAX_EXTRACTION_ERROR_BYTES`.
    last_error: Option<String>,
}

fn encode(marker: &Marker) -> Vec<u8> {
    let mut out = vec![MARKER_FORMAT];
    // Encoding integers and strings into a Vec cannot fail.
    out.extend(rmp_serde::to_vec(marker).expect("a marker always encodes"));
    out
}

fn decode(value: &[u8]) -> Result<Marker, String> {
    let (&version, body) = value.split_first().ok_or("an empty extraction marker")?;
    if version != MARKER_FORMAT {
        return Err(format!("extraction marker of unknown format {version}"));
    }
    let marker: Marker =
        rmp_serde::from_slice(body).map_err(|e| format!("an extraction marker does not decode: {e}"))?;
    if marker.from.is_some_and(|from| from >= marker.upto) {
        return Err(format!("an extraction marker's span ({:?}, {}] is empty", marker.from, marker.upto));
    }
    Ok(marker)
}

/// An extraction given up after [`MAX_EXTRACTION_ATTEMPTS`] attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GivenUpExtraction {
    /// The session.
    pub session: String,
    /// Seq of the event that scheduled it (the splice or the episode boundary).
    pub at: Seq,
    /// The span: messages in (`from`, `upto`]; `from` is `None` for an episode.
    pub from: Option<Seq>,
    /// See `from`.
    pub upto: Seq,
    /// Attempts started.
    pub attempts: u32,
    /// The last failure seen, if one was (a crash leaves none).
    pub last_error: Option<String>,
}

/// Adds the pending marker of the extraction scheduled by event `at` to `batch`, unless
/// extraction is disabled. Call it in the batch that writes event `at`.
pub(crate) fn mark(engine: &Engine, batch: &mut Batch, session: &SessionId, at: Seq, from: Option<Seq>, upto: Seq) {
    if !engine.config().extraction.enabled {
        return;
    }
    let marker = Marker { from, upto, attempts: 0, last_error: None };
    batch.op(Op::Put(Ks::Extractions, keys::extraction_key(EXTRACTION_PENDING, session, at), encode(&marker)));
}

/// The op that removes `job`'s marker, for the batch that records its memories.
pub(crate) fn clear_op(job: &Job) -> Option<Op> {
    job.marker.map(|at| Op::Delete(Ks::Extractions, keys::extraction_key(EXTRACTION_PENDING, &job.session, at)))
}

/// Removes `job`'s marker on its own (the job ended with nothing to write).
pub(crate) async fn clear(engine: &Engine, job: &Job) -> Result<(), Error> {
    let Some(at) = job.marker else { return Ok(()) };
    match &engine.inner().backend {
        Backend::Fjall { writer, .. } => {
            let key = keys::extraction_key(EXTRACTION_PENDING, &job.session, at);
            writer.write(vec![Op::Delete(Ks::Extractions, key)], Hold::nothing()).await
        }
        #[cfg(feature = "nats")]
        Backend::Nats(log) => log.remove_marker(&job.session, at).await,
    }
}

/// What [`begin_attempt`] decided.
pub(crate) enum Attempt {
    /// Run it (the attempt is counted).
    Go,
    /// It had used its attempts and is now given up.
    GaveUp { attempts: u32 },
}

/// Counts an attempt of `job` in its marker before the job does anything else, or gives it up
/// when its attempts are used. A job without a marker (scheduled by hand) or whose marker is gone
/// just runs.
pub(crate) async fn begin_attempt(engine: &Engine, job: &Job) -> Result<Attempt, Error> {
    let Some(at) = job.marker else { return Ok(Attempt::Go) };
    let Some((mut marker, version)) = read(engine, &job.session, at).await? else { return Ok(Attempt::Go) };
    if marker.attempts >= MAX_EXTRACTION_ATTEMPTS {
        let attempts = marker.attempts;
        give_up(engine, &job.session, at, marker).await?;
        return Ok(Attempt::GaveUp { attempts });
    }
    marker.attempts += 1;
    rewrite(engine, &job.session, at, version, &marker).await?;
    Ok(Attempt::Go)
}

/// Records a failure of `job` (error, timeout, panic) in its marker; the failure that uses the last
/// attempt gives the extraction up. Returns whether it was given up.
pub(crate) async fn record_failure(engine: &Engine, job: &Job, message: &str) -> Result<bool, Error> {
    let Some(at) = job.marker else { return Ok(false) };
    let Some((mut marker, version)) = read(engine, &job.session, at).await? else { return Ok(false) };
    marker.last_error = Some(truncate_bytes(message, super::MAX_EXTRACTION_ERROR_BYTES));
    if marker.attempts >= MAX_EXTRACTION_ATTEMPTS {
        give_up(engine, &job.session, at, marker).await?;
        return Ok(true);
    }
    rewrite(engine, &job.session, at, version, &marker).await?;
    Ok(false)
}

/// The pending marker of the extraction scheduled at `at`, with its version on JetStream (the
/// meta stream's sequence of its message, read from the leader).
async fn read(engine: &Engine, session: &SessionId, at: Seq) -> Result<Option<(Marker, Option<u64>)>, Error> {
    let corrupt = |detail: String| Error::Corrupt { session: Some(session.to_string()), seq: Some(at.get()), detail };
    match &engine.inner().backend {
        Backend::Fjall { writer, .. } => {
            let key = keys::extraction_key(EXTRACTION_PENDING, session, at);
            let Some(value) = writer.store().get(Ks::Extractions, &key)? else { return Ok(None) };
            decode(&value).map(|m| Some((m, None))).map_err(corrupt)
        }
        #[cfg(feature = "nats")]
        Backend::Nats(log) => {
            let Some(stored) = log.marker(false, session, at).await? else { return Ok(None) };
            decode(&stored.value).map(|m| Some((m, Some(stored.sequence)))).map_err(corrupt)
        }
    }
}

/// Writes `marker` back over the one read at `version`. On JetStream the rewrite is conditional on
/// that version: another engine running the same extraction (both resumed its marker) may have
/// counted an attempt or removed the marker since; then this write is dropped (the attempt goes
/// on uncounted, and memories are created once whichever engine writes them).
async fn rewrite(
    engine: &Engine,
    session: &SessionId,
    at: Seq,
    version: Option<u64>,
    marker: &Marker,
) -> Result<(), Error> {
    match &engine.inner().backend {
        Backend::Fjall { writer, .. } => {
            let _ = version;
            let key = keys::extraction_key(EXTRACTION_PENDING, session, at);
            writer.write(vec![Op::Put(Ks::Extractions, key, encode(marker))], Hold::nothing()).await
        }
        #[cfg(feature = "nats")]
        Backend::Nats(log) => {
            let version = version.ok_or_else(|| Error::storage("rewrite an extraction marker", "no version read"))?;
            if !log.rewrite_marker(session, at, version, &encode(marker)).await? {
                tracing::debug!(%session, %at, "an extraction marker moved meanwhile (another engine); not rewritten");
            }
            Ok(())
        }
    }
}

/// Moves a marker to the given-up range, in one batch (on JetStream: the given-up record, then the
/// pending marker's removal), and says so.
async fn give_up(engine: &Engine, session: &SessionId, at: Seq, marker: Marker) -> Result<(), Error> {
    tracing::error!(%session, %at, upto = %marker.upto, attempts = marker.attempts, last_error = ?marker.last_error,
        "memory extraction given up after {MAX_EXTRACTION_ATTEMPTS} attempts; see Engine::given_up_extractions");
    add(&engine.inner().guards.counters.extractions_given_up, 1);
    match &engine.inner().backend {
        Backend::Fjall { writer, .. } => {
            let ops = vec![
                Op::Delete(Ks::Extractions, keys::extraction_key(EXTRACTION_PENDING, session, at)),
                Op::Put(Ks::Extractions, keys::extraction_key(EXTRACTION_GIVEN_UP, session, at), encode(&marker)),
            ];
            writer.write(ops, Hold::nothing()).await
        }
        #[cfg(feature = "nats")]
        Backend::Nats(log) => log.give_up_marker(session, at, &encode(&marker)).await,
    }
}

/// Queues the pending extractions found in the store; see the module docs. Called once by
/// `Engine::open`, before anything else can schedule; an error (a failed read) is logged there and
/// never refuses the open. Without a tokio runtime, or with extraction disabled, it queues
/// nothing: the markers wait for an open that can run them.
pub(crate) fn resume(engine: &Engine) -> Result<(), Error> {
    if !engine.config().extraction.enabled {
        return Ok(());
    }
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::debug!("no tokio runtime at open: pending memory extractions wait for a later open");
        return Ok(());
    }
    let depth = usize::try_from(engine.config().background.extraction_queue_depth).unwrap_or(usize::MAX);
    let counters = &engine.inner().guards.counters;
    let (mut resumed, mut deferred, mut seen) = (0u64, 0u64, 0usize);
    let mut per_session: Option<(SessionId, usize)> = None;
    for row in engine.store("memory extraction")?.iter_prefix(Ks::Extractions, &[EXTRACTION_PENDING]) {
        if seen == MAX_RESUMED_PER_OPEN {
            // At least one more: reported, left for a later open.
            deferred += 1;
            break;
        }
        seen += 1;
        let (key, value) = row?;
        let parsed = keys::parse_extraction_key(&key).and_then(|(_, id, at)| Some((SessionId::new(id).ok()?, at)));
        let (Some((session, at)), Ok(marker)) = (parsed, decode(&value)) else {
            // A damaged marker is left in place and named; it never stops an open.
            tracing::warn!(key = ?key, "an extraction marker is damaged; it is left in place and skipped");
            deferred += 1;
            continue;
        };
        // Keys sort by session, so one running count per session suffices.
        let count = match &mut per_session {
            Some((s, n)) if *s == session => n,
            _ => &mut per_session.insert((session.clone(), 0)).1,
        };
        if *count == depth {
            deferred += 1;
            continue;
        }
        *count += 1;
        if engine.schedule_job(&session, marker.from, marker.upto, Some(at)) {
            resumed += 1;
        } else {
            deferred += 1;
        }
    }
    add(&counters.extractions_resumed, resumed);
    add(&counters.extractions_deferred, deferred);
    if resumed > 0 {
        tracing::info!(resumed, "pending memory extractions queued again at open");
    }
    if deferred > 0 {
        tracing::warn!(
            deferred,
            max_per_open = MAX_RESUMED_PER_OPEN,
            "pending memory extractions left for a later open (a session's queue depth, the per-open bound, or damage)"
        );
    }
    Ok(())
}

/// [`resume`] on JetStream, awaited by `Engine::connect`: the pending markers are listed (at most
/// [`MAX_RESUMED_PER_OPEN`], in (session, seq) order) and each is checked against its session's
/// log before it is queued, because a marker is published before the record of the splice or
/// boundary it belongs to, and that record may never have landed (a conflict rebuilt it at another
/// seq, the publish failed, the process stopped). A marker whose event is in the log is queued
/// (as is one of a deleted session: its job finds nothing to do and removes it). One whose seq the
/// log has passed with another event, or older than `storage.nats.orphan_grace_ms` with no event
/// (a record is sent within 2 x `write_timeout_ms` of its marker or never, SPEC.md 11a), is
/// removed: its extraction was never scheduled. Any other, whose record may still be in flight,
/// stays for a later open and counts as deferred. Costs, per session with markers, one head read,
/// and per marker one marker read and one event read.
#[cfg(feature = "nats")]
pub(crate) async fn resume_nats(engine: &Engine, log: &crate::storage::nats::NatsLog) -> Result<(), Error> {
    if !engine.config().extraction.enabled {
        return Ok(());
    }
    let depth = usize::try_from(engine.config().background.extraction_queue_depth).unwrap_or(usize::MAX);
    let grace = std::time::Duration::from_millis(engine.config().storage.nats.orphan_grace_ms);
    let old_before = std::time::SystemTime::now().checked_sub(grace).unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let (markers, more) = log.markers(false, MAX_RESUMED_PER_OPEN).await?;
    let (mut resumed, mut deferred, mut dropped) = (0u64, u64::from(more), 0u64);
    type Current = (SessionId, usize, Result<Option<(crate::log::fold::Head, crate::storage::nats::Version)>, Error>);
    let mut current: Option<Current> = None;
    for (session, at) in markers {
        if current.as_ref().is_none_or(|(s, ..)| *s != session) {
            let head = log.head(&session).await;
            current = Some((session.clone(), 0, head));
        }
        let (_, count, head) = current.as_mut().expect("set just above");
        // One session's failed read (a damaged record, a stream electing) defers its markers only.
        let checked = match head {
            Ok(head) => check(log, &session, head.as_ref(), at, old_before).await,
            Err(e) => Err(Error::storage("read the head of a session with a pending extraction", e.to_string())),
        };
        let marker = match checked {
            Ok(Checked::Queue(marker)) => marker,
            Ok(Checked::Gone) => continue,
            Ok(Checked::Removed) => {
                dropped += 1;
                continue;
            }
            Ok(Checked::Wait) => {
                deferred += 1;
                continue;
            }
            Err(e) => {
                tracing::warn!(%session, %at, error = %e, "a pending extraction could not be checked; left for a later open");
                deferred += 1;
                continue;
            }
        };
        if *count == depth {
            deferred += 1;
            continue;
        }
        *count += 1;
        if engine.schedule_job(&session, marker.from, marker.upto, Some(at)) {
            resumed += 1;
        } else {
            deferred += 1;
        }
    }
    let counters = &engine.inner().guards.counters;
    add(&counters.extractions_resumed, resumed);
    add(&counters.extractions_deferred, deferred);
    if resumed > 0 || dropped > 0 {
        tracing::info!(resumed, dropped, "pending memory extractions queued again at connect");
    }
    if deferred > 0 {
        tracing::warn!(
            deferred,
            max_per_open = MAX_RESUMED_PER_OPEN,
            "pending memory extractions left for a later open (a session's queue depth, the per-open bound, \
             damage, or a record that may still land)"
        );
    }
    Ok(())
}

/// What [`resume_nats`] does with one marker.
#[cfg(feature = "nats")]
enum Checked {
    /// Its event is in the log: queue it.
    Queue(Marker),
    /// Removed meanwhile (its job ran on another engine): nothing to do.
    Gone,
    /// Its record can no longer land, so it was removed.
    Removed,
    /// Damaged, or its record may still be in flight: left for a later open.
    Wait,
}

/// Reads the marker at `at` and checks it against the session's `head`; see [`resume_nats`].
#[cfg(feature = "nats")]
async fn check(
    log: &crate::storage::nats::NatsLog,
    session: &SessionId,
    head: Option<&(crate::log::fold::Head, crate::storage::nats::Version)>,
    at: Seq,
    old_before: std::time::SystemTime,
) -> Result<Checked, Error> {
    let Some(stored) = log.marker(false, session, at).await? else { return Ok(Checked::Gone) };
    let Ok(marker) = decode(&stored.value) else {
        tracing::warn!(%session, %at, "an extraction marker is damaged; it is left in place and skipped");
        return Ok(Checked::Wait);
    };
    match landed(log, session, head, at, &marker).await? {
        Landed::Yes => Ok(Checked::Queue(marker)),
        Landed::NotYet if stored.at >= old_before => Ok(Checked::Wait),
        Landed::NotYet | Landed::Never => {
            tracing::info!(%session, %at, "an extraction marker whose splice or boundary never landed is removed");
            log.remove_marker(session, at).await?;
            Ok(Checked::Removed)
        }
    }
}

/// Whether the splice or boundary a JetStream marker belongs to is in the log.
#[cfg(feature = "nats")]
enum Landed {
    /// It is (or the session was deleted past it: the job removes the marker).
    Yes,
    /// Its seq holds another event: it never will be.
    Never,
    /// The log has not reached its seq: its record may still be in flight.
    NotYet,
}

#[cfg(feature = "nats")]
async fn landed(
    log: &crate::storage::nats::NatsLog,
    session: &SessionId,
    head: Option<&(crate::log::fold::Head, crate::storage::nats::Version)>,
    at: Seq,
    marker: &Marker,
) -> Result<Landed, Error> {
    use crate::log::event::EventKind;
    let Some((head, version)) = head else { return Ok(Landed::NotYet) };
    // Checked first: past the end of a deleted session is a new life whose record may be in flight.
    if at > head.last_seq() {
        return Ok(Landed::NotYet);
    }
    if head.is_deleted() || at <= head.base() {
        return Ok(Landed::Yes);
    }
    let events = log.events_as_of(session, head, *version, at, at, 1).await?;
    let ours = events.first().is_some_and(|e| {
        e.seq == at
            && match (&e.kind, marker.from) {
                (EventKind::EpisodeBoundary { .. }, None) => marker.upto == at,
                (EventKind::CompactionSpliced(s), Some(from)) => s.previous_upto == from && s.upto == marker.upto,
                _ => false,
            }
    });
    Ok(if ours { Landed::Yes } else { Landed::Never })
}

impl Engine {
    /// Extractions given up after [`MAX_EXTRACTION_ATTEMPTS`] attempts, in (session, seq) order,
    /// at most `limit` (within [`MAX_GIVEN_UP_READ`]). To try one again, schedule its span with
    /// [`crate::Session::schedule_extraction`]. A read of the local database (fjall; on JetStream
    /// [`Error::Unsupported`]): [`Engine::given_up_extractions_async`] serves both backends.
    pub fn given_up_extractions(&self, limit: usize) -> Result<Vec<GivenUpExtraction>, Error> {
        check_given_up_limit(limit)?;
        let mut out = Vec::new();
        for row in self
            .store("the blocking `given_up_extractions` (use `given_up_extractions_async`)")?
            .iter_prefix(Ks::Extractions, &[EXTRACTION_GIVEN_UP])
            .take(limit)
        {
            let (key, value) = row?;
            let corrupt = |detail: String| Error::Corrupt { session: None, seq: None, detail };
            let (_, session, at) =
                keys::parse_extraction_key(&key).ok_or_else(|| corrupt("a malformed extraction key".to_string()))?;
            let marker = decode(&value).map_err(corrupt)?;
            out.push(given_up(session, at, marker));
        }
        Ok(out)
    }

    /// [`Engine::given_up_extractions`] from async code, on either backend (on JetStream the
    /// given-up records are listed from the meta stream, sorted, and the first `limit` read).
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn given_up_extractions_async(&self, limit: usize) -> Result<Vec<GivenUpExtraction>, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.inner().backend.nats() {
            check_given_up_limit(limit)?;
            let (listed, _) = log.markers(true, limit).await?;
            let mut out = Vec::with_capacity(listed.len());
            for (session, at) in listed {
                let Some(stored) = log.marker(true, &session, at).await? else { continue };
                let marker = decode(&stored.value).map_err(|detail| Error::Corrupt {
                    session: Some(session.to_string()),
                    seq: Some(at.get()),
                    detail,
                })?;
                out.push(given_up(session.as_str(), at, marker));
            }
            return Ok(out);
        }
        self.given_up_extractions(limit)
    }
}

fn check_given_up_limit(limit: usize) -> Result<(), Error> {
    if limit > MAX_GIVEN_UP_READ {
        return Err(Error::InvalidArgument {
            what: "read limit",
            reason: format!("{limit} is over {MAX_GIVEN_UP_READ}"),
        });
    }
    Ok(())
}

fn given_up(session: &str, at: Seq, marker: Marker) -> GivenUpExtraction {
    GivenUpExtraction {
        session: session.to_string(),
        at,
        from: marker.from,
        upto: marker.upto,
        attempts: marker.attempts,
        last_error: marker.last_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_refuse_damage() {
        let marker = Marker { from: Some(Seq::new(2)), upto: Seq::new(9), attempts: 1, last_error: Some("x".into()) };
        assert_eq!(decode(&encode(&marker)), Ok(marker));
        let episode = Marker { from: None, upto: Seq::new(4), attempts: 0, last_error: None };
        assert_eq!(decode(&encode(&episode)), Ok(episode));
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 0x90]).is_err());
        assert!(decode(&[MARKER_FORMAT, 0xc1]).is_err());
        let backwards = Marker { from: Some(Seq::new(9)), upto: Seq::new(9), attempts: 0, last_error: None };
        assert!(decode(&encode(&backwards)).is_err());
    }
}
