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

use serde::{Deserialize, Serialize};

use super::queue::Job;
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
    match clear_op(job) {
        Some(op) => engine.writer("memory extraction")?.write(vec![op], Hold::nothing()).await,
        None => Ok(()),
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
    let key = keys::extraction_key(EXTRACTION_PENDING, &job.session, at);
    let Some(mut marker) = read(engine, &key)? else { return Ok(Attempt::Go) };
    if marker.attempts >= MAX_EXTRACTION_ATTEMPTS {
        let attempts = marker.attempts;
        give_up(engine, &job.session, at, marker).await?;
        return Ok(Attempt::GaveUp { attempts });
    }
    marker.attempts += 1;
    engine
        .writer("memory extraction")?
        .write(vec![Op::Put(Ks::Extractions, key, encode(&marker))], Hold::nothing())
        .await?;
    Ok(Attempt::Go)
}

/// Records a failure of `job` (error, timeout, panic) in its marker; the failure that uses the last
/// attempt gives the extraction up. Returns whether it was given up.
pub(crate) async fn record_failure(engine: &Engine, job: &Job, message: &str) -> Result<bool, Error> {
    let Some(at) = job.marker else { return Ok(false) };
    let key = keys::extraction_key(EXTRACTION_PENDING, &job.session, at);
    let Some(mut marker) = read(engine, &key)? else { return Ok(false) };
    marker.last_error = Some(truncate_bytes(message, super::MAX_EXTRACTION_ERROR_BYTES));
    if marker.attempts >= MAX_EXTRACTION_ATTEMPTS {
        give_up(engine, &job.session, at, marker).await?;
        return Ok(true);
    }
    engine
        .writer("memory extraction")?
        .write(vec![Op::Put(Ks::Extractions, key, encode(&marker))], Hold::nothing())
        .await?;
    Ok(false)
}

fn read(engine: &Engine, key: &[u8]) -> Result<Option<Marker>, Error> {
    let Some(value) = engine.store("memory extraction")?.get(Ks::Extractions, key)? else { return Ok(None) };
    decode(&value).map(Some).map_err(|detail| Error::Corrupt { session: None, seq: None, detail })
}

/// Moves a marker to the given-up range, in one batch, and says so.
async fn give_up(engine: &Engine, session: &SessionId, at: Seq, marker: Marker) -> Result<(), Error> {
    tracing::error!(%session, %at, upto = %marker.upto, attempts = marker.attempts, last_error = ?marker.last_error,
        "memory extraction given up after {MAX_EXTRACTION_ATTEMPTS} attempts; see Engine::given_up_extractions");
    add(&engine.inner().guards.counters.extractions_given_up, 1);
    let ops = vec![
        Op::Delete(Ks::Extractions, keys::extraction_key(EXTRACTION_PENDING, session, at)),
        Op::Put(Ks::Extractions, keys::extraction_key(EXTRACTION_GIVEN_UP, session, at), encode(&marker)),
    ];
    engine.writer("memory extraction")?.write(ops, Hold::nothing()).await
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

impl Engine {
    /// Extractions given up after [`MAX_EXTRACTION_ATTEMPTS`] attempts, in (session, seq) order,
    /// at most `limit` (within [`MAX_GIVEN_UP_READ`]). To try one again, schedule its span with
    /// [`crate::Session::schedule_extraction`].
    pub fn given_up_extractions(&self, limit: usize) -> Result<Vec<GivenUpExtraction>, Error> {
        if limit > MAX_GIVEN_UP_READ {
            return Err(Error::InvalidArgument {
                what: "read limit",
                reason: format!("{limit} is over {MAX_GIVEN_UP_READ}"),
            });
        }
        let mut out = Vec::new();
        for row in self.store("memories")?.iter_prefix(Ks::Extractions, &[EXTRACTION_GIVEN_UP]).take(limit) {
            let (key, value) = row?;
            let corrupt = |detail: String| Error::Corrupt { session: None, seq: None, detail };
            let (_, session, at) =
                keys::parse_extraction_key(&key).ok_or_else(|| corrupt("a malformed extraction key".to_string()))?;
            let marker = decode(&value).map_err(corrupt)?;
            out.push(GivenUpExtraction {
                session: session.to_string(),
                at,
                from: marker.from,
                upto: marker.upto,
                attempts: marker.attempts,
                last_error: marker.last_error,
            });
        }
        Ok(out)
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
