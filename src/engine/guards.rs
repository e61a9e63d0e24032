//! The guards' public API on [`Engine`]: counters, namespace locks (the services themselves are
//! `crate::guard`, which knows nothing of the engine).

use crate::engine::Engine;
use crate::error::Error;
use crate::guard::{GuardStats, LockOutcome, check_namespace};
use crate::log::ids::SessionId;

impl Engine {
    /// A snapshot of the guards' counters and gauges: namespace locks, the background budget,
    /// extraction and episode classification. See [`GuardStats`].
    pub fn guard_stats(&self) -> GuardStats {
        let inner = self.inner();
        let mut stats = inner.guards.counters.snapshot();
        stats.background_permits = inner.guards.budget.permits();
        stats.background_permits_in_use = inner.guards.budget.in_use();
        stats.background_waiters = inner.guards.budget.waiters();
        stats.background_permit_timeouts = inner.guards.budget.timeouts();
        stats.span_load_permits = inner.guards.span_loads.permits();
        stats.span_loads_in_use = inner.guards.span_loads.in_use();
        stats.span_load_waiters = inner.guards.span_loads.waiters();
        stats.span_loads_peak = inner.guards.span_loads.peak();
        stats.span_load_timeouts = inner.guards.span_loads.timeouts();
        inner.features.gauges(&mut stats);
        stats
    }

    /// Namespaces whose lock is held or awaited right now.
    pub fn namespaces_locked(&self) -> usize {
        self.inner().guards.namespaces.len()
    }

    /// Takes `namespace`'s lock for `session` under the `locks` policy: the lock memory
    /// extraction holds while it writes into the namespace. Returns [`LockOutcome::Held`], or
    /// [`LockOutcome::Skipped`] when the bounds ran out and `locks.on_timeout` is `skip`; with
    /// `error` that is [`Error::LockTimeout`]. An empty namespace is [`Error::InvalidArgument`].
    ///
    /// Cancel safety: cancel safe; a dropped wait holds nothing, and a lock taken is released when
    /// its guard drops.
    pub async fn lock_namespace(&self, namespace: &str, session: &SessionId) -> Result<LockOutcome, Error> {
        check_namespace(namespace)?;
        let guards = &self.inner().guards;
        guards.namespaces.acquire(namespace, session, &guards.counters).await
    }
}
