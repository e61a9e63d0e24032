//! Bounded acquisition of namespace locks.
//!
//! Memory extraction writes into a namespace shared by several sessions (see `extract`), and
//! holds that namespace's lock while it reads the memories already there and writes the new ones.
//! Acquisition never waits without bound unless the configuration spells that out
//! (`locks.allow_unlimited` with both bounds null): the first attempt is a try; each retry waits
//! up to `locks.retry_interval_ms` for the holder to let go (so a released lock is taken at once,
//! not at the next poll); after `locks.max_retries` retries or `locks.timeout_ms`, whichever comes
//! first, `locks.on_timeout` decides between an error and a skip. Zero retries means "try once".
//!
//! The locks live in this process (fjall allows one process per database), and a lock is an owned
//! guard in its holder's task: a holder that panics or is cancelled drops the guard while
//! unwinding or being dropped, so a lock can never outlive its holder and no lease is needed.

use std::time::Duration;

use tokio::time::Instant;

use super::stats::{Counters, add};
use super::{KeyedGuard, KeyedLocks};
use crate::config::{Locks, OnLockTimeout};
use crate::error::Error;
use crate::log::ids::SessionId;

/// Holds one namespace's lock; dropping it releases the lock.
pub struct NamespaceGuard {
    _guard: KeyedGuard<String>,
    namespace: String,
}

impl NamespaceGuard {
    /// The namespace held.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl std::fmt::Debug for NamespaceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceGuard").field("namespace", &self.namespace).finish()
    }
}

/// How an acquisition ended when it did not fail.
#[derive(Debug)]
pub enum LockOutcome {
    /// The lock is held until the guard drops.
    Held(NamespaceGuard),
    /// The bounds ran out and `locks.on_timeout` is `skip`: the caller must skip its work.
    Skipped {
        /// Attempts made (the first try plus the retries).
        attempts: u64,
        /// Time spent waiting, ms.
        waited_ms: u64,
    },
}

/// One lock per namespace, acquired under the `locks` policy.
pub(crate) struct NamespaceLocks {
    locks: KeyedLocks<String>,
    policy: Locks,
}

impl NamespaceLocks {
    pub(crate) fn new(policy: Locks) -> Self {
        Self { locks: KeyedLocks::default(), policy }
    }

    /// Namespaces whose lock is held or awaited right now.
    pub(crate) fn len(&self) -> usize {
        self.locks.len()
    }

    /// Acquires `namespace`'s lock for `session` under the configured bounds; see the module docs.
    /// Gives [`Error::LockTimeout`] when the bounds run out and `locks.on_timeout` is `error`.
    pub(crate) async fn acquire(
        &self,
        namespace: &str,
        session: &SessionId,
        counters: &Counters,
    ) -> Result<LockOutcome, Error> {
        let key = namespace.to_string();
        let policy = &self.policy;
        let interval = Duration::from_millis(policy.retry_interval_ms);
        let start = Instant::now();
        let deadline = policy.timeout_ms.map(|ms| start + Duration::from_millis(ms));
        let waited_ms = |start: Instant| u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);

        let mut attempts = 1;
        add(&counters.lock_attempts, 1);
        let mut got = self.locks.try_lock(&key);
        while got.is_none() {
            let out_of_retries = policy.max_retries.is_some_and(|max| attempts > max);
            let wait = match deadline {
                Some(deadline) => interval.min(deadline.saturating_duration_since(Instant::now())),
                None => interval,
            };
            if out_of_retries || wait.is_zero() {
                break;
            }
            tracing::debug!(namespace, session = %session, attempt = attempts + 1, wait_ms = wait.as_millis() as u64, "namespace lock busy; retrying");
            attempts += 1;
            add(&counters.lock_attempts, 1);
            add(&counters.lock_retries, 1);
            got = self.locks.lock(&key, wait).await;
        }
        let waited = waited_ms(start);
        add(&counters.lock_wait_ms, waited);
        if let Some(guard) = got {
            add(&counters.lock_acquired, 1);
            if attempts > 1 {
                tracing::debug!(namespace, session = %session, attempts, waited_ms = waited, "namespace lock acquired after retries");
            }
            return Ok(LockOutcome::Held(NamespaceGuard { _guard: guard, namespace: key }));
        }
        add(&counters.lock_timeouts, 1);
        tracing::warn!(
            namespace,
            session = %session,
            attempts,
            waited_ms = waited,
            on_timeout = ?policy.on_timeout,
            "namespace lock not acquired within locks.max_retries / locks.timeout_ms"
        );
        match policy.on_timeout {
            OnLockTimeout::Error => Err(Error::LockTimeout { namespace: key, attempts, waited_ms: waited }),
            OnLockTimeout::Skip => {
                add(&counters.lock_skips, 1);
                Ok(LockOutcome::Skipped { attempts, waited_ms: waited })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::stats::get;

    fn policy(max_retries: Option<u64>, timeout_ms: Option<u64>, on_timeout: OnLockTimeout) -> Locks {
        Locks { retry_interval_ms: 200, max_retries, timeout_ms, on_timeout, allow_unlimited: false }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_shortens_the_last_wait() {
        let locks = NamespaceLocks::new(policy(None, Some(500), OnLockTimeout::Error));
        let counters = Counters::default();
        let session = SessionId::new("u:1").expect("valid");
        let _held = match locks.acquire("u", &session, &counters).await {
            Ok(LockOutcome::Held(g)) => g,
            other => panic!("free lock: {other:?}"),
        };
        let start = Instant::now();
        let err = locks.acquire("u", &session, &counters).await.expect_err("held");
        // Tries at 0, then waits of 200, 200 and 100 ms: four attempts, exactly the timeout.
        assert!(matches!(err, Error::LockTimeout { attempts: 4, waited_ms: 500, .. }), "{err:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(get(&counters.lock_retries), 3);
    }
}
