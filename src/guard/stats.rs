//! Counters of the guards (namespace locks, the background budget, extraction, episodes) and
//! the [`GuardStats`] snapshot the engine hands out.
//!
//! Counters are plain relaxed atomics: they are telemetry, read as a snapshot that may mix
//! values from slightly different instants, and never drive a decision. Gauges that must be
//! exact (permits in use, the registry's size) are read from their owners when the snapshot is
//! taken instead of being counted here.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A snapshot of the guards' counters, from [`crate::Engine::guard_stats`]. Totals count since
/// the engine was opened; gauges (`*_in_use`, `*_waiters`, `*_running`, `*_pending`,
/// `extraction_sessions`) are the state when the snapshot was taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuardStats {
    /// Namespace lock attempts (the first try and every retry).
    pub lock_attempts: u64,
    /// Namespace lock retries (attempts after the first).
    pub lock_retries: u64,
    /// Namespace locks acquired.
    pub lock_acquired: u64,
    /// Acquisitions that gave up (`locks.max_retries` or `locks.timeout_ms` ran out).
    pub lock_timeouts: u64,
    /// Of `lock_timeouts`, those whose outcome was `skip` (`locks.on_timeout`).
    pub lock_skips: u64,
    /// Total time spent waiting for namespace locks, ms (acquired or not).
    pub lock_wait_ms: u64,
    /// Size of the background budget (`background.model_concurrency`).
    pub background_permits: u64,
    /// Background permits held right now.
    pub background_permits_in_use: u64,
    /// Background jobs waiting for a permit right now.
    pub background_waiters: u64,
    /// Background jobs that gave up waiting for a permit (their own timeout ran out).
    pub background_permit_timeouts: u64,
    /// Background span loads allowed at once (`background.span_load_concurrency`).
    pub span_load_permits: u64,
    /// Background span loads running right now.
    pub span_loads_in_use: u64,
    /// Background span loads waiting for their turn right now.
    pub span_load_waiters: u64,
    /// The most background span loads that ran at once since the engine opened.
    pub span_loads_peak: u64,
    /// Background jobs that gave up waiting to load their span (their own timeout ran out).
    pub span_load_timeouts: u64,
    /// Extractions ever scheduled (accepted into a session's queue).
    pub extractions_scheduled: u64,
    /// Extractions waiting in their session's queue right now.
    pub extractions_pending: u64,
    /// Extractions running right now.
    pub extractions_running: u64,
    /// Extractions that finished (memories written, or nothing new to write).
    pub extractions_done: u64,
    /// Extractions that failed (extractor error, storage error, lock timeout with `on_timeout = error`).
    pub extractions_failed: u64,
    /// Extractions stopped by `background.extraction_timeout_ms`.
    pub extractions_timed_out: u64,
    /// Extractions skipped: a full queue, a lock timeout with `on_timeout = skip`, a session deleted
    /// or an engine closed before they ran.
    pub extractions_skipped: u64,
    /// Extractions cancelled by [`crate::Engine::drain`].
    pub extractions_cancelled: u64,
    /// Memory records written (new ones only; duplicates are not rewritten).
    pub memories_written: u64,
    /// Sessions in the extraction registry right now (with work queued or running).
    pub extraction_sessions: u64,
    /// Episode classifications that fell back to "new task" (timeout or error).
    pub classifier_fallbacks: u64,
    /// Pending extractions found at open and queued again (they had not finished before).
    pub extractions_resumed: u64,
    /// Pending extractions found at open but left for a later open (a session's queue depth, the
    /// per-open bound, or a damaged marker); at least this many.
    pub extractions_deferred: u64,
    /// Extractions given up after their attempts (`MAX_EXTRACTION_ATTEMPTS`).
    pub extractions_given_up: u64,
}

/// The totals behind [`GuardStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) lock_attempts: AtomicU64,
    pub(crate) lock_retries: AtomicU64,
    pub(crate) lock_acquired: AtomicU64,
    pub(crate) lock_timeouts: AtomicU64,
    pub(crate) lock_skips: AtomicU64,
    pub(crate) lock_wait_ms: AtomicU64,
    pub(crate) extractions_scheduled: AtomicU64,
    pub(crate) extractions_done: AtomicU64,
    pub(crate) extractions_failed: AtomicU64,
    pub(crate) extractions_timed_out: AtomicU64,
    pub(crate) extractions_skipped: AtomicU64,
    pub(crate) extractions_cancelled: AtomicU64,
    pub(crate) memories_written: AtomicU64,
    pub(crate) classifier_fallbacks: AtomicU64,
    pub(crate) extractions_resumed: AtomicU64,
    pub(crate) extractions_deferred: AtomicU64,
    pub(crate) extractions_given_up: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    /// The totals; the caller fills in the gauges.
    pub(crate) fn snapshot(&self) -> GuardStats {
        GuardStats {
            lock_attempts: get(&self.lock_attempts),
            lock_retries: get(&self.lock_retries),
            lock_acquired: get(&self.lock_acquired),
            lock_timeouts: get(&self.lock_timeouts),
            lock_skips: get(&self.lock_skips),
            lock_wait_ms: get(&self.lock_wait_ms),
            extractions_scheduled: get(&self.extractions_scheduled),
            extractions_done: get(&self.extractions_done),
            extractions_failed: get(&self.extractions_failed),
            extractions_timed_out: get(&self.extractions_timed_out),
            extractions_skipped: get(&self.extractions_skipped),
            extractions_cancelled: get(&self.extractions_cancelled),
            memories_written: get(&self.memories_written),
            classifier_fallbacks: get(&self.classifier_fallbacks),
            extractions_resumed: get(&self.extractions_resumed),
            extractions_deferred: get(&self.extractions_deferred),
            extractions_given_up: get(&self.extractions_given_up),
            ..GuardStats::default()
        }
    }
}
