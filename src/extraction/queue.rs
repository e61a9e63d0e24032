//! The background extraction queue.
//!
//! Each session with work has one registry entry: a queue of jobs (at most
//! `background.extraction_queue_depth`; a job beyond that is skipped and recorded) and one worker
//! task that runs them one at a time, in order. Different sessions have different workers, so they
//! run in parallel, bounded only by the background budget each job's extractor call takes a permit
//! from. A worker that finds its queue empty removes the entry under the registry lock and ends,
//! so the registry holds only sessions with work and never grows with the sessions ever seen.
//!
//! Every job runs under `background.extraction_timeout_ms` (the permit wait, the extractor call,
//! the namespace lock and the write together). Workers hold the engine weakly between jobs: a
//! dropped engine closes its database even with work queued (that work is then skipped).
//! [`crate::Engine::drain`] waits for the queue to empty, and on timeout can cancel what is left:
//! it aborts the workers and waits (one bound for all of them) until they are gone. A worker that
//! unwinds hands its queue on (see `WorkerGuard`), so a panic never leaves an entry behind.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt as _;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ExtractInput, encode_memory, memory_id, namespace_of, normalize, pending};
use crate::engine::backend::Backend;
use crate::engine::writer::panic_message;
use crate::engine::{Engine, Inner, now_ms};
use crate::error::Error;
use crate::guard::LockOutcome;
use crate::guard::stats::{Counters, add};
use crate::log::event::{Event, EventKind};
use crate::log::fold::Head;
use crate::log::ids::{Seq, SessionId};
use crate::log::view::messages_of;
use crate::storage::keys;
use crate::storage::{Ks, Op, Read};
use crate::summarizer::truncate_bytes;

/// Sessions whose last extraction error is kept; the oldest is forgotten first.
pub const MAX_ERRORS_KEPT: usize = 1_024;
/// Longest error message kept, bytes.
pub const MAX_EXTRACTION_ERROR_BYTES: usize = 512;
/// Most events scanned back from an episode's boundary to find where the episode began.
pub const MAX_EPISODE_SCAN_EVENTS: u64 = 4_096;
/// How long a cancelling drain waits for aborted workers to be gone.
const ABORT_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What one drain left behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Extractions still queued or running when the drain returned (0 after a cancellation,
    /// unless new work was scheduled meanwhile).
    pub left: u64,
    /// Extractions the drain cancelled.
    pub cancelled: u64,
}

/// The last failed (or timed-out, or dropped) extraction of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExtractionError {
    /// The session.
    pub session: String,
    /// The span: messages in (`from`, `upto`]; `from` is `None` for an episode whose start was
    /// not found yet.
    pub from: Option<Seq>,
    /// See `from`.
    pub upto: Seq,
    /// What went wrong, at most [`MAX_EXTRACTION_ERROR_BYTES`].
    pub message: String,
    /// Time the job waited in its queue, ms.
    pub queue_wait_ms: u64,
    /// Time it ran, ms.
    pub duration_ms: u64,
    /// When it ended, ms since the Unix epoch.
    pub at_ms: u64,
}

/// One extraction to run.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) session: SessionId,
    /// Exclusive start of the span; `None`: the start of the episode that ends at `upto`.
    pub(crate) from: Option<Seq>,
    pub(crate) upto: Seq,
    /// Seq of the event whose batch wrote this job's pending marker; `None` for a job scheduled
    /// by hand, which has none (see `pending`).
    pub(crate) marker: Option<Seq>,
    pub(crate) enqueued_at: Instant,
}

struct Entry {
    jobs: VecDeque<Job>,
    worker: u64,
    handle: Option<JoinHandle<()>>,
}

/// How a job ended (errors aside).
enum Ended {
    Done {
        n_new: u64,
    },
    Skipped(String),
    /// Its attempts were used (see `pending`); it was given up without running.
    GaveUp {
        attempts: u32,
    },
}

/// The registry of per-session queues and the telemetry around it.
pub(crate) struct Extractions {
    registry: Mutex<HashMap<SessionId, Entry>>,
    next_worker: AtomicU64,
    pending: AtomicU64,
    running: AtomicU64,
    idle: Notify,
    errors: Mutex<VecDeque<ExtractionError>>,
    counters: Arc<Counters>,
    depth: usize,
    timeout: Duration,
}

/// Counts a running job. Dropping it uncounts the job; dropped before `finished` is set, it was
/// dropped by a cancelling drain aborting its worker (counted as cancelled) or by a panic in the
/// extractor unwinding the worker (counted as failed).
struct Running {
    extractions: Arc<Extractions>,
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            add(&self.extractions.counters.extractions_failed, 1);
            tracing::error!("a memory extraction panicked; its session's next job starts a new worker");
        } else if !self.finished {
            add(&self.extractions.counters.extractions_cancelled, 1);
        }
        self.extractions.running.fetch_sub(1, Ordering::AcqRel);
        self.extractions.wake_if_idle();
    }
}

/// Lives as long as a session's worker. A worker that unwinds (a panic in the extractor's own
/// call, or any bug) would otherwise leave its registry entry behind with its queued jobs, which
/// nothing would run and every drain would wait for: on a panic the guard hands the queue to a new
/// worker, or removes the entry when there is nothing left or no runtime to run it on.
struct WorkerGuard {
    extractions: Arc<Extractions>,
    engine: Weak<Inner>,
    session: SessionId,
    worker: u64,
    /// The job running, for the error record.
    current: Option<Job>,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let this = &self.extractions;
        if let Some(job) = &self.current {
            this.record_error(job, "the extraction panicked".to_string(), Duration::ZERO, Duration::ZERO);
        }
        let mut registry = this.registry.lock();
        let Some(entry) = registry.get_mut(&self.session).filter(|e| e.worker == self.worker) else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !entry.jobs.is_empty() => {
                entry.worker = this.next_worker.fetch_add(1, Ordering::Relaxed);
                let work = Arc::clone(this).work(self.engine.clone(), self.session.clone(), entry.worker);
                entry.handle = Some(runtime.spawn(work));
            }
            _ => {
                let queued = entry.jobs.len() as u64;
                registry.remove(&self.session);
                drop(registry);
                this.pending.fetch_sub(queued, Ordering::AcqRel);
                add(&this.counters.extractions_cancelled, queued);
                this.wake_if_idle();
            }
        }
    }
}

impl Extractions {
    pub(crate) fn new(counters: Arc<Counters>, depth: u64, timeout_ms: u64) -> Self {
        Self {
            registry: Mutex::new(HashMap::new()),
            next_worker: AtomicU64::new(1),
            pending: AtomicU64::new(0),
            running: AtomicU64::new(0),
            idle: Notify::new(),
            errors: Mutex::new(VecDeque::new()),
            counters,
            depth: usize::try_from(depth).unwrap_or(usize::MAX).max(1),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// Jobs queued or running.
    fn outstanding(&self) -> u64 {
        self.pending.load(Ordering::Acquire) + self.running.load(Ordering::Acquire)
    }

    fn wake_if_idle(&self) {
        if self.outstanding() == 0 {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn sessions(&self) -> u64 {
        self.registry.lock().len() as u64
    }

    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// The last recorded error of `session`.
    pub(crate) fn last_error(&self, session: &SessionId) -> Option<ExtractionError> {
        self.errors.lock().iter().rev().find(|e| e.session == session.as_str()).cloned()
    }

    fn record_error(&self, job: &Job, message: String, queue_wait: Duration, duration: Duration) {
        let error = ExtractionError {
            session: job.session.as_str().to_string(),
            from: job.from,
            upto: job.upto,
            message: truncate_bytes(&message, MAX_EXTRACTION_ERROR_BYTES),
            queue_wait_ms: millis(queue_wait),
            duration_ms: millis(duration),
            at_ms: now_ms(),
        };
        let mut errors = self.errors.lock();
        errors.retain(|e| e.session != error.session);
        if errors.len() == MAX_ERRORS_KEPT {
            errors.pop_front();
        }
        errors.push_back(error);
    }

    /// Queues `job` and starts its session's worker if there is none. Returns false (and records
    /// why) when the job was not queued: a full queue, or no tokio runtime to run it on.
    pub(crate) fn schedule(self: &Arc<Self>, engine: Weak<Inner>, job: Job) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            add(&self.counters.extractions_skipped, 1);
            tracing::warn!(session = %job.session, "memory extraction skipped: no tokio runtime to run it on");
            self.record_error(&job, "skipped: no tokio runtime".to_string(), Duration::ZERO, Duration::ZERO);
            return false;
        };
        let mut registry = self.registry.lock();
        let entry = registry.entry(job.session.clone()).or_insert_with(|| Entry {
            jobs: VecDeque::new(),
            worker: 0, // set when its worker starts, just below
            handle: None,
        });
        if entry.jobs.len() >= self.depth {
            drop(registry);
            add(&self.counters.extractions_skipped, 1);
            tracing::warn!(session = %job.session, depth = self.depth, "memory extraction skipped: the session's queue is full (background.extraction_queue_depth)");
            self.record_error(
                &job,
                "skipped: the session's extraction queue is full".to_string(),
                Duration::ZERO,
                Duration::ZERO,
            );
            return false;
        }
        tracing::debug!(session = %job.session, from = ?job.from, upto = %job.upto, "memory extraction queued");
        let session = job.session.clone();
        entry.jobs.push_back(job);
        self.pending.fetch_add(1, Ordering::AcqRel);
        add(&self.counters.extractions_scheduled, 1);
        // An entry whose worker has finished lost it to a panic (a worker that ends normally
        // removes its entry first): a new worker takes over the queue.
        if entry.handle.as_ref().is_none_or(JoinHandle::is_finished) {
            entry.worker = self.next_worker.fetch_add(1, Ordering::Relaxed);
            entry.handle = Some(runtime.spawn(Arc::clone(self).work(engine, session, entry.worker)));
        }
        true
    }

    /// Takes the next job of `session` for worker `worker`, or removes the idle entry.
    fn next_job(self: &Arc<Self>, session: &SessionId, worker: u64) -> Option<(Job, Running)> {
        let mut registry = self.registry.lock();
        let entry = registry.get_mut(session).filter(|e| e.worker == worker)?;
        match entry.jobs.pop_front() {
            Some(job) => {
                // Running is counted before pending is uncounted, so the total never dips to zero
                // while work remains (a drain would wake too early).
                self.running.fetch_add(1, Ordering::AcqRel);
                self.pending.fetch_sub(1, Ordering::AcqRel);
                Some((job, Running { extractions: Arc::clone(self), finished: false }))
            }
            None => {
                registry.remove(session);
                None
            }
        }
    }

    /// The worker of one session: its jobs one at a time, then gone.
    async fn work(self: Arc<Self>, engine: Weak<Inner>, session: SessionId, worker: u64) {
        let mut guard =
            WorkerGuard { extractions: Arc::clone(&self), engine: engine.clone(), session, worker, current: None };
        while let Some((job, mut running)) = self.next_job(&guard.session, worker) {
            guard.current = Some(job.clone());
            let queue_wait = job.enqueued_at.elapsed();
            let started = Instant::now();
            // Held for the job only: between jobs the worker must not keep the database open.
            let strong = Engine::upgrade(&engine);
            let result = match &strong {
                Some(engine) => tokio::time::timeout(self.timeout, run(engine, &job)).await,
                None => Ok(Ok(Ended::Skipped("the engine was closed".to_string()))),
            };
            let duration = started.elapsed();
            let (c, id) = (&self.counters, &job.session);
            let (wait_ms, run_ms) = (millis(queue_wait), millis(duration));
            let failure = match result {
                Ok(Ok(Ended::Done { n_new })) => {
                    add(&c.extractions_done, 1);
                    tracing::debug!(session = %id, upto = %job.upto, n_new, queue_wait_ms = wait_ms, duration_ms = run_ms, "memory extraction done");
                    None
                }
                Ok(Ok(Ended::Skipped(why))) => {
                    add(&c.extractions_skipped, 1);
                    tracing::info!(session = %id, upto = %job.upto, %why, queue_wait_ms = wait_ms, duration_ms = run_ms, "memory extraction skipped");
                    self.record_error(&job, format!("skipped: {why}"), queue_wait, duration);
                    None
                }
                Ok(Ok(Ended::GaveUp { attempts })) => {
                    self.record_error(&job, format!("given up after {attempts} attempts"), queue_wait, duration);
                    None
                }
                Ok(Err(e)) => {
                    add(&c.extractions_failed, 1);
                    tracing::warn!(session = %id, upto = %job.upto, error = %e, queue_wait_ms = wait_ms, duration_ms = run_ms, "memory extraction failed");
                    Some(e.to_string())
                }
                Err(_) => {
                    add(&c.extractions_timed_out, 1);
                    let after_ms = millis(self.timeout);
                    tracing::warn!(session = %id, upto = %job.upto, after_ms, queue_wait_ms = wait_ms, duration_ms = run_ms, "memory extraction timed out (background.extraction_timeout_ms)");
                    Some(format!("timed out after {after_ms} ms"))
                }
            };
            if let (Some(message), Some(engine)) = (failure, &strong) {
                self.record_error(&job, message.clone(), queue_wait, duration);
                // The marker keeps the failure; the one that uses the last attempt gives it up.
                if let Err(e) = pending::record_failure(engine, &job, &message).await {
                    tracing::warn!(session = %id, error = %e, "could not record an extraction failure in its marker");
                }
            }
            drop(strong);
            guard.current = None;
            running.finished = true;
        }
    }

    /// See [`Engine::drain`].
    ///
    /// Not a `tokio_util` `TaskTracker` and `CancellationToken`: a drain is not a shutdown (work
    /// may be scheduled during and after it), while a tracker's `wait` needs it closed and a token
    /// cancels once for good, and the queued-and-running counts the report and the guards show
    /// would still be kept here.
    pub(crate) async fn drain(&self, timeout: Duration, cancel_on_timeout: bool) -> DrainReport {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake between the check and the wait is not lost.
            notified.as_mut().enable();
            if self.outstanding() == 0 {
                return DrainReport::default();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        if !cancel_on_timeout {
            return DrainReport { left: self.outstanding(), cancelled: 0 };
        }
        let cancelled_before = crate::guard::stats::get(&self.counters.extractions_cancelled);
        let (queued, handles) = {
            let mut registry = self.registry.lock();
            let (mut queued, mut handles) = (0, Vec::new());
            for (_, entry) in registry.drain() {
                queued += entry.jobs.len() as u64;
                handles.extend(entry.handle);
            }
            self.pending.fetch_sub(queued, Ordering::AcqRel);
            handles.iter().for_each(JoinHandle::abort);
            (queued, handles)
        };
        add(&self.counters.extractions_cancelled, queued);
        // One budget for all the aborted workers together, not one per worker: an aborted task
        // ends at its next await, and a job stuck in blocking code shows up in `left`.
        let join_deadline = Instant::now() + ABORT_JOIN_TIMEOUT;
        for handle in handles {
            let _ = tokio::time::timeout_at(join_deadline, handle).await;
        }
        self.wake_if_idle();
        let cancelled = crate::guard::stats::get(&self.counters.extractions_cancelled).saturating_sub(cancelled_before);
        tracing::warn!(cancelled, "drain cancelled background memory extractions");
        DrainReport { left: self.outstanding(), cancelled }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one job; see the module docs of `extract`. Every end but a give-up (its marker moved) and
/// a write of memories (its marker removed in that batch) removes the job's pending marker here.
async fn run(engine: &Engine, job: &Job) -> Result<Ended, Error> {
    let ended = run_span(engine, job).await?;
    if matches!(ended, Ended::Done { n_new: 0 } | Ended::Skipped(_)) {
        pending::clear(engine, job).await?;
    }
    Ok(ended)
}

async fn run_span(engine: &Engine, job: &Job) -> Result<Ended, Error> {
    // Counted before anything else, so every way an attempt can fail counts: a damaged span, the
    // extractor, a crash or a panic.
    if let pending::Attempt::GaveUp { attempts } = pending::begin_attempt(engine, job).await? {
        return Ok(Ended::GaveUp { attempts });
    }
    let inner = engine.inner();
    let id = &job.session;
    // Reading the span is CPU-bound (decoding up to `max_span_messages` events): it takes a
    // span-load permit like a compaction's load (`background.span_load_concurrency`), released
    // once the span's messages are in hand, before the extractor runs. The wait is bounded by
    // the job's timeout, which wraps this function.
    let timeout = super::state(engine).extractions.timeout;
    let permit = inner.guards.span_loads.acquire(timeout).await?;
    let log = SessionLog::read(engine, id).await?;
    let Some(head) = log.head.as_ref().filter(|h| !h.is_deleted()) else {
        return Ok(Ended::Skipped("the session was deleted".to_string()));
    };
    let max_span = inner.config.compaction.max_span_messages;
    let (from, events) = match job.from {
        Some(from) => {
            let from = from.max(head.base());
            if job.upto <= from {
                return Ok(Ended::Done { n_new: 0 });
            }
            let to = job.upto.min(Seq::new(from.get().saturating_add(max_span)));
            (from, log.events(from.next(), to).await?)
        }
        // The backward search for the episode's start reads the episode's events: keep them.
        None => episode_span(&log, job.upto, head.base(), inner.config.episodes.max_turns_per_episode).await?,
    };
    let to = job.upto.min(Seq::new(from.get().saturating_add(max_span)));
    let messages: Vec<_> = messages_of(events.into_iter().filter(|e| e.seq > from && e.seq <= to)).collect();
    drop(permit);
    if messages.is_empty() {
        return Ok(Ended::Done { n_new: 0 });
    }
    let namespace = namespace_of(id).to_string();
    let input = ExtractInput { session: id.clone(), namespace: namespace.clone(), messages };
    let texts = {
        let _permit = inner.guards.budget.acquire(timeout).await?;
        // A panic in the extractor (caller-supplied code) fails this job, not the session's worker.
        AssertUnwindSafe(super::state(engine).extractor.extract(input)).catch_unwind().await.map_err(|panic| {
            Error::Summarizer {
                status: None,
                message: format!("the extractor panicked: {}", panic_message(panic.as_ref())),
            }
        })??
    };
    let texts = normalize(texts);
    if texts.is_empty() {
        return Ok(Ended::Done { n_new: 0 });
    }

    let _lock = match inner.guards.namespaces.acquire(&namespace, id, &inner.guards.counters).await? {
        LockOutcome::Held(guard) => guard,
        LockOutcome::Skipped { attempts, waited_ms } => {
            return Ok(Ended::Skipped(format!(
                "namespace {namespace:?} stayed locked ({attempts} attempts, {waited_ms} ms; locks.on_timeout = skip)"
            )));
        }
    };
    let at_ms = now_ms();
    let n_new = match &inner.backend {
        Backend::Fjall { writer, .. } => {
            let store = writer.store();
            let mut n_new = 0;
            engine
                .write_events(id, |batch| {
                    n_new = 0;
                    if batch.head().is_deleted() || batch.head().base() > from {
                        return Ok(());
                    }
                    for text in &texts {
                        let key = keys::memory_key(&namespace, &memory_id(&namespace, text));
                        if store.get(Ks::Memories, &key)?.is_none() {
                            batch.op(Op::Put(Ks::Memories, key, encode_memory(text, id, from, to, at_ms)));
                            n_new += 1;
                        }
                    }
                    // Nothing new, nothing written: the ops alone would not be committed without an event.
                    if n_new > 0 {
                        let (namespace, upto) = (namespace.clone(), to);
                        batch.push(EventKind::MemoriesExtracted { namespace, from, upto, n_memories: n_new })?;
                        if let Some(op) = pending::clear_op(job) {
                            batch.op(op);
                        }
                    }
                    Ok(())
                })
                .await?;
            n_new
        }
        #[cfg(feature = "nats")]
        Backend::Nats(log) => {
            // The records go to the meta stream before the event that counts them, each created
            // only if its subject is empty: a memory is stored once however many engines and
            // attempts write it, and the event counts those this job created. A record that then
            // fails leaves memories no event counts (they belong to the namespace, as on fjall
            // after a deletion), never an event counting memories that are not stored.
            let mut n_new = 0;
            for text in &texts {
                let hex = hex_id(&memory_id(&namespace, text));
                if log.create_memory(&namespace, &hex, &encode_memory(text, id, from, to, at_ms)).await? {
                    n_new += 1;
                }
            }
            let mut written = 0;
            if n_new > 0 {
                engine
                    .write_events(id, |batch| {
                        written = 0;
                        if batch.head().is_deleted() || batch.head().base() > from {
                            return Ok(());
                        }
                        let (namespace, upto) = (namespace.clone(), to);
                        batch.push(EventKind::MemoriesExtracted { namespace, from, upto, n_memories: n_new })?;
                        // Removed once the record has landed (the write path runs removals after it).
                        if let Some(op) = pending::clear_op(job) {
                            batch.op(op);
                        }
                        written = n_new;
                        Ok(())
                    })
                    .await?;
            }
            written
        }
    };
    add(&inner.guards.counters.memories_written, n_new);
    Ok(Ended::Done { n_new })
}

/// Lowercase hex of a memory id.
#[cfg(feature = "nats")]
fn hex_id(id: &[u8; 32]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A session's log as one extraction reads it: its head, and events up to that head. On fjall
/// the reads go to the store; on JetStream the head comes from the stream's leader and every
/// event read stops at it (`NatsLog::events_as_of`), so a job sees one state of the log.
struct SessionLog<'a> {
    engine: &'a Engine,
    id: &'a SessionId,
    head: Option<Head>,
    #[cfg(feature = "nats")]
    version: crate::storage::nats::Version,
}

impl<'a> SessionLog<'a> {
    async fn read(engine: &'a Engine, id: &'a SessionId) -> Result<Self, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = engine.inner().backend.nats() {
            let (head, version) = match log.head(id).await? {
                Some((head, version)) => (Some(head), version),
                None => (None, crate::storage::nats::Version::NONE),
            };
            return Ok(Self { engine, id, head, version });
        }
        let head = engine.store("memory extraction")?.head(id)?;
        Ok(Self {
            engine,
            id,
            head,
            #[cfg(feature = "nats")]
            version: crate::storage::nats::Version::NONE,
        })
    }

    /// The events with `from <= seq <= to`, in order (at most the span: callers bound `to`).
    async fn events(&self, from: Seq, to: Seq) -> Result<Vec<Event>, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine.inner().backend.nats() {
            let Some(head) = &self.head else { return Ok(Vec::new()) };
            return log.events_as_of(self.id, head, self.version, from, to, usize::MAX).await;
        }
        self.engine.store("memory extraction")?.events(self.id, from, to, usize::MAX)
    }
}

/// Where the episode ending at `boundary` began (the seq of the previous boundary, or the deletion
/// base, searched at most [`MAX_EPISODE_SCAN_EVENTS`] events back), and the events after that start
/// up to just before `boundary`, in seq order: the search reads them anyway, so the span is not read
/// twice. Pages are sized for an episode at the turn cap (`max_turns`) of about four events a turn
/// (a user message, a tool call and its result, an answer), so a typical episode is one read and
/// the search reads at most one page more than the episode.
async fn episode_span(
    log: &SessionLog<'_>,
    boundary: Seq,
    base: Seq,
    max_turns: u64,
) -> Result<(Seq, Vec<Event>), Error> {
    let page = max_turns.saturating_mul(4).saturating_add(8).clamp(32, 256);
    let floor = boundary.get().saturating_sub(MAX_EPISODE_SCAN_EVENTS).max(base.get());
    let mut end = boundary.get().saturating_sub(1);
    let mut pages: Vec<Vec<Event>> = Vec::new();
    let mut start_at = Seq::new(floor);
    while end > floor {
        let start = end.saturating_sub(page - 1).max(floor + 1);
        let mut events = log.events(Seq::new(start), Seq::new(end)).await?;
        if let Some(pos) = events.iter().rposition(|e| matches!(e.kind, EventKind::EpisodeBoundary { .. })) {
            start_at = events[pos].seq;
            pages.push(events.split_off(pos + 1));
            break;
        }
        pages.push(events);
        end = start - 1;
    }
    Ok((start_at, pages.into_iter().rev().flatten().collect()))
}
