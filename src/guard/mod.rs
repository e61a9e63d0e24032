//! Guards for busy deployments: bounded waits on locks, and one budget for background model calls.
//!
//! [`KeyedLocks`] hands out one async mutex per key (a session, a namespace), waits for it
//! at most a given time, and forgets a key as soon as nobody holds or waits for it, so the
//! registry never grows with the number of keys ever seen.
//!
//! - `lock`: namespace locks acquired under the `locks` policy (retry interval, retries, timeout,
//!   error or skip), with telemetry.
//! - `budget`: the one semaphore every background model call takes a permit from, and the one
//!   every background span load does.
//! - `stats`: the counters behind [`crate::Engine::guard_stats`] (`engine::guards`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::config::Config;
use crate::error::Error;
use crate::log::ids::SessionId;

pub(crate) mod budget;
pub(crate) mod lock;
pub(crate) mod stats;

pub use lock::{LockOutcome, NamespaceGuard};
pub use stats::GuardStats;

/// The engine's guards: namespace locks, the background budgets, and their counters.
pub(crate) struct Guards {
    pub(crate) namespaces: lock::NamespaceLocks,
    pub(crate) budget: budget::Budget,
    /// Background span loads (`background.span_load_concurrency`; see `budget`).
    pub(crate) span_loads: budget::Budget,
    pub(crate) counters: Arc<stats::Counters>,
}

impl Guards {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            namespaces: lock::NamespaceLocks::new(config.locks.clone()),
            budget: budget::Budget::new(config.background.model_concurrency, "a background model permit"),
            span_loads: budget::Budget::new(config.background.span_load_concurrency, "a span-load permit"),
            counters: Arc::new(stats::Counters::default()),
        }
    }
}

/// A namespace follows the session-id rules (it is a session id's prefix), so its keys are bounded
/// and never contain the separator byte.
pub(crate) fn check_namespace(namespace: &str) -> Result<(), Error> {
    SessionId::new(namespace).map(drop).map_err(|e| Error::InvalidArgument { what: "namespace", reason: e.to_string() })
}

type Slots<K> = Arc<Mutex<HashMap<K, Arc<AsyncMutex<()>>>>>;

/// One lock per key, created on demand and dropped when idle.
pub(crate) struct KeyedLocks<K: Eq + Hash + Clone> {
    slots: Slots<K>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self { slots: Arc::new(Mutex::new(HashMap::new())) }
    }
}

/// Holds one key's lock; releasing it removes the key's slot if nobody else wants it.
pub(crate) struct KeyedGuard<K: Eq + Hash + Clone> {
    // Field order matters: the mutex guard drops before the slot reference checks for idleness.
    _guard: OwnedMutexGuard<()>,
    _slot: SlotRef<K>,
}

/// A counted reference to a slot. Every clone of the slot's `Arc` outside the map lives in one of
/// these (or in a mutex guard that drops first), so when a `SlotRef` drops and the count is
/// "the map plus me", nobody holds or awaits the lock and the slot can go.
struct SlotRef<K: Eq + Hash + Clone> {
    key: K,
    slot: Arc<AsyncMutex<()>>,
    slots: Slots<K>,
}

impl<K: Eq + Hash + Clone> Drop for SlotRef<K> {
    fn drop(&mut self) {
        let mut slots = self.slots.lock();
        // Clones are only made under this map lock, so the count cannot rise while we look.
        if Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.key);
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// Waits at most `timeout` for `key`'s lock; `None` when the wait ran out.
    pub(crate) async fn lock(&self, key: &K, timeout: Duration) -> Option<KeyedGuard<K>> {
        let slot_ref = {
            let mut slots = self.slots.lock();
            let slot = Arc::clone(slots.entry(key.clone()).or_default());
            SlotRef { key: key.clone(), slot, slots: Arc::clone(&self.slots) }
        };
        let guard = tokio::time::timeout(timeout, Arc::clone(&slot_ref.slot).lock_owned()).await.ok()?;
        Some(KeyedGuard { _guard: guard, _slot: slot_ref })
    }

    /// Takes `key`'s lock if it is free right now, without waiting.
    pub(crate) fn try_lock(&self, key: &K) -> Option<KeyedGuard<K>> {
        let slot_ref = {
            let mut slots = self.slots.lock();
            let slot = Arc::clone(slots.entry(key.clone()).or_default());
            SlotRef { key: key.clone(), slot, slots: Arc::clone(&self.slots) }
        };
        let guard = Arc::clone(&slot_ref.slot).try_lock_owned().ok()?;
        Some(KeyedGuard { _guard: guard, _slot: slot_ref })
    }

    /// Keys with a holder or a waiter right now.
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_are_bounded_and_idle_keys_are_forgotten() {
        let locks = KeyedLocks::<u32>::default();
        let held = locks.lock(&1, Duration::from_secs(1)).await.expect("free lock");
        assert!(locks.lock(&1, Duration::from_millis(50)).await.is_none(), "held lock must time out");
        assert_eq!(locks.len(), 1);
        let other = locks.lock(&2, Duration::from_secs(1)).await.expect("other key is independent");
        drop((held, other));
        assert_eq!(locks.len(), 0);
        for key in 0..1000 {
            drop(locks.lock(&key, Duration::from_secs(1)).await);
        }
        assert_eq!(locks.len(), 0);
    }
}
