//! Budgets for background work: one for background model calls, one for background span loads.
//!
//! Every model call made in the background (memory extraction, background compaction) first takes
//! a permit from one shared semaphore of `background.model_concurrency` permits, so background
//! work can never open more than that many model calls at once, however many sessions splice or
//! close episodes together. Foreground calls (a compaction the caller awaits, an episode
//! classification on the caller's turn) take no permit: the budget keeps background storms from
//! starving them instead of making them queue behind background work.
//!
//! The same type bounds background span loads (`background.span_load_concurrency`): a compaction
//! reading and decoding its span, an extraction reading its span, each CPU-bound for up to hundreds
//! of milliseconds. On a small machine two of them at once, beside the agent's own appends, leave
//! the agent's thread waiting for a core; one at a time leaves it one.
//!
//! Waiting for a permit is bounded by the caller's own timeout; the waiters are counted (with a
//! guard, so a cancelled waiter is uncounted too) for the stats snapshot, and so is the most
//! permits ever held at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::stats::{add, get};
use crate::error::Error;

/// A shared background budget.
pub(crate) struct Budget {
    semaphore: Arc<Semaphore>,
    /// What a permit is, for the timeout error and log ("a background model permit").
    what: &'static str,
    permits: u64,
    waiters: Arc<AtomicU64>,
    /// The most permits held at once since the engine opened.
    peak: AtomicU64,
    /// Waits that ran out since the engine opened.
    timeouts: AtomicU64,
}

/// A held background permit; dropping it returns the permit.
pub(crate) struct BudgetPermit {
    _permit: OwnedSemaphorePermit,
}

/// Counts one waiter while it lives (dropped on success, timeout or cancellation alike).
struct Waiting(Arc<AtomicU64>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Budget {
    pub(crate) fn new(permits: u64, what: &'static str) -> Self {
        // Validation bounds the knob to 1..=8; the clamp keeps a hand-built config harmless.
        let permits = permits.clamp(1, Semaphore::MAX_PERMITS as u64);
        let n = usize::try_from(permits).unwrap_or(1);
        let waiters = Arc::new(AtomicU64::new(0));
        let semaphore = Arc::new(Semaphore::new(n));
        Self { semaphore, what, permits, waiters, peak: AtomicU64::new(0), timeouts: AtomicU64::new(0) }
    }

    /// Waits at most `timeout` (the waiting job's own bound) for a permit.
    pub(crate) async fn acquire(&self, timeout: Duration) -> Result<BudgetPermit, Error> {
        if let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() {
            return Ok(self.held(permit));
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(Arc::clone(&self.waiters));
        match tokio::time::timeout(timeout, Arc::clone(&self.semaphore).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.held(permit)),
            // The semaphore is never closed; treat it like the engine shutting down if it were.
            Ok(Err(_closed)) => Err(Error::Closed),
            Err(_) => {
                add(&self.timeouts, 1);
                let (what, after_ms) = (self.what, u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
                tracing::warn!(what, after_ms, "no permit within the job's timeout");
                Err(Error::Timeout { what, after_ms })
            }
        }
    }

    fn held(&self, permit: OwnedSemaphorePermit) -> BudgetPermit {
        self.peak.fetch_max(self.in_use(), Ordering::Relaxed);
        BudgetPermit { _permit: permit }
    }

    /// The most permits held at once since the engine opened.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Waits that ran out since the engine opened.
    pub(crate) fn timeouts(&self) -> u64 {
        get(&self.timeouts)
    }

    /// The budget's size.
    pub(crate) fn permits(&self) -> u64 {
        self.permits
    }

    /// Permits held right now.
    pub(crate) fn in_use(&self) -> u64 {
        self.permits.saturating_sub(self.semaphore.available_permits() as u64)
    }

    /// Jobs waiting for a permit right now.
    pub(crate) fn waiters(&self) -> u64 {
        self.waiters.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiters_are_counted_and_waits_are_bounded() {
        let budget = Arc::new(Budget::new(1, "a test permit"));
        let held = budget.acquire(Duration::from_secs(1)).await.expect("free permit");
        assert_eq!((budget.in_use(), budget.waiters(), budget.peak()), (1, 0, 1));
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.acquire(Duration::from_millis(100)).await.map(drop) })
        };
        tokio::task::yield_now().await;
        assert_eq!(budget.waiters(), 1);
        let result = waiter.await.expect("joins");
        assert!(matches!(result, Err(Error::Timeout { what: "a test permit", after_ms: 100 })));
        assert_eq!(budget.timeouts(), 1);
        assert_eq!(budget.waiters(), 0);
        drop(held);
        assert_eq!((budget.in_use(), budget.peak()), (0, 1));
    }
}
