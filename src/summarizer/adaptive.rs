//! How many chunk summaries run at once, adapted to the provider (additive increase,
//! multiplicative decrease, as TCP does for its window). The limit starts at
//! `compaction.chunk_concurrency` and never exceeds it. A rate-limited reply (HTTP 429) halves it,
//! floor 1, once per congestion event: 429s from calls that started before the last decrease were
//! caused by the old limit and do not cut again. After as many successes in a row as the current
//! limit (one round at that level), it grows by one. Calls already in flight are never
//! interrupted: a lower limit holds back new chunks until enough of them finish.

use std::pin::pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The adaptive limit of chunks in flight.
pub(crate) struct AdaptiveLimit {
    state: Mutex<State>,
    /// Woken when a slot frees or the limit grows.
    changed: Notify,
    max: usize,
}

struct State {
    limit: usize,
    in_flight: usize,
    /// Bumped at each decrease; a slot remembers the epoch it was taken in.
    epoch: u64,
    successes: usize,
}

/// One chunk in flight; dropping it frees the slot.
pub(crate) struct Slot {
    owner: Arc<AdaptiveLimit>,
    epoch: Mutex<u64>,
}

impl AdaptiveLimit {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            state: Mutex::new(State { limit: max, in_flight: 0, epoch: 0, successes: 0 }),
            changed: Notify::new(),
            max,
        })
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.state.lock().limit
    }

    /// Waits for room under the current limit.
    ///
    /// Cancel safety: dropping the future takes no slot.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            // Registered before the check, so a wake between the check and the wait is not lost.
            let mut woken = pin!(self.changed.notified());
            woken.as_mut().enable();
            {
                let mut state = self.state.lock();
                if state.in_flight < state.limit {
                    state.in_flight += 1;
                    return Slot { owner: Arc::clone(self), epoch: Mutex::new(state.epoch) };
                }
            }
            woken.await;
        }
    }

    fn release(&self) {
        self.state.lock().in_flight -= 1;
        self.changed.notify_waiters();
    }
}

impl Slot {
    /// A 429 seen by this slot's call. Halves the limit unless another 429 already did since this
    /// call started; returns the limit now.
    pub(crate) fn throttled(&self) -> usize {
        let mut state = self.owner.state.lock();
        let mut epoch = self.epoch.lock();
        if *epoch == state.epoch {
            state.limit = (state.limit / 2).max(1);
            state.epoch += 1;
            state.successes = 0;
            tracing::info!(limit = state.limit, "rate limited: fewer chunks in flight");
        }
        // Later tries of this call start under the new limit, so their 429s count again.
        *epoch = state.epoch;
        state.limit
    }

    /// This slot's call succeeded: one step towards raising the limit.
    pub(crate) fn succeeded(&self) {
        let mut state = self.owner.state.lock();
        state.successes += 1;
        if state.successes >= state.limit && state.limit < self.owner.max {
            state.limit += 1;
            state.successes = 0;
            drop(state);
            self.owner.changed.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_429_halves_once_per_round_and_successes_climb_back() {
        let limit = AdaptiveLimit::new(8);
        let mut slots = Vec::new();
        for _ in 0..8 {
            slots.push(limit.acquire().await);
        }
        // Eight calls of the same round all hit 429: one halving, not eight.
        for slot in &slots {
            slot.throttled();
        }
        assert_eq!(limit.limit(), 4);
        // A retry of a call that saw the decrease counts again.
        assert_eq!(slots[0].throttled(), 2);
        assert_eq!(slots[0].throttled(), 1);
        assert_eq!(slots[0].throttled(), 1, "floor 1");
        slots.clear();
        // One success at limit 1 raises it to 2, two more to 3.
        let slot = limit.acquire().await;
        slot.succeeded();
        assert_eq!(limit.limit(), 2);
        slot.succeeded();
        slot.succeeded();
        assert_eq!(limit.limit(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_limit_holds_back_new_calls_until_enough_finish() {
        let limit = AdaptiveLimit::new(2);
        let first = limit.acquire().await;
        let second = limit.acquire().await;
        first.throttled();
        drop(first);
        // One in flight, limit 1: no room.
        let waiting = tokio::time::timeout(std::time::Duration::from_secs(1), limit.acquire()).await;
        assert!(waiting.is_err(), "a third call started over the lowered limit");
        drop(second);
        let _third = limit.acquire().await;
        assert_eq!(limit.limit(), 1);
    }
}
