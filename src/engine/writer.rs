//! The write path below the session lock: durability, group commit, poisoning.
//!
//! - `buffered`: the caller commits its batch inline; fjall hands the bytes to the OS before
//!   returning, which survives kill -9. No thread hop, so a lone writer pays no queueing cost.
//! - `sync`: the caller queues its batch on a bounded crossbeam channel and awaits the ack. One
//!   writer thread drains everything queued (up to `writes.group_max_events`), commits it as one
//!   atomic batch with one fsync, then acks every request in the group. Concurrent appends from
//!   many sessions therefore share fsyncs.
//!
//! Any failed commit or fsync poisons the writer: what reached the disk is unknown, so every
//! later write is refused with [`Error::Poisoned`] until the engine is reopened and recovery
//! re-reads the truth. A write whose ack does not arrive in time poisons it too, for the same
//! reason (the write may still land), and so does a panic on the writer thread.
//!
//! Cancellation: once a batch is queued it is committed (or the writer is poisoned) whatever the
//! caller does. What the batch was built under (the session's lock guard, passed in as `hold`)
//! and its place in the queue (the admission permit) travel inside the queued request and are
//! released only after the commit and its fsync, so a caller that drops its future cannot let the
//! next writer read a head older than the batch still in flight. The writer thread hands them
//! back with the outcome, and the waiting caller settles the caches, releases the lock and frees
//! the batch on its own task, off the one thread every durable write goes through; a reply whose
//! caller has gone does the same wherever it is dropped.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::config::{Durability, Writes};
use crate::error::Error;
use crate::storage::{Kv, Op, Store};

/// What a write was built under and must keep until it is committed (a session's lock guard), and
/// what must happen, still under it, once the outcome is known (the head cache's update).
///
/// Once the commit's outcome is recorded in it (`settled_as`), dropping the hold anywhere runs
/// the settle step before releasing the guard: the group-commit thread hands the hold back to the
/// waiting caller, and if that caller has gone (cancelled, timed out) the hold is dropped with the
/// undelivered reply, on whichever thread drops it last, and still settles first.
pub(crate) struct Hold {
    _guard: Box<dyn Any + Send>,
    settle: Option<Box<dyn FnOnce(bool) + Send>>,
    /// The commit's outcome, once known; `None` drops the guard without settling (nothing was
    /// written, or the engine is poisoned and refuses every later write).
    committed: Option<bool>,
}

impl Hold {
    /// Holds nothing (a write that is not built under a session's lock).
    pub(crate) fn nothing() -> Self {
        Self { _guard: Box::new(()), settle: None, committed: None }
    }

    /// Holds `guard` until the batch is committed.
    pub(crate) fn guard(guard: impl Any + Send) -> Self {
        Self { _guard: Box::new(guard), settle: None, committed: None }
    }

    /// Also runs `settle(committed)` once the commit's outcome is known, before the guard is
    /// released, wherever that happens (the caller's task or the writer thread): so whatever it
    /// updates is exact for the next holder of the guard even if the caller's future was dropped.
    pub(crate) fn then(mut self, settle: impl FnOnce(bool) + Send + 'static) -> Self {
        self.settle = Some(Box::new(settle));
        self
    }

    /// Records the commit's outcome: the settle step runs with it when the hold is dropped.
    fn settled_as(mut self, committed: bool) -> Self {
        self.committed = Some(committed);
        self
    }

    /// Runs the settle step with the commit's outcome, then releases the guard.
    fn release(self, committed: bool) {
        drop(self.settled_as(committed));
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let (Some(settle), Some(committed)) = (self.settle.take(), self.committed) {
            settle(committed);
        }
        // The guard is a field: it is released after this body, so after the settle step.
    }
}

struct Request {
    ops: Vec<Op>,
    ack: oneshot::Sender<Reply>,
    /// Released after the commit, never before (see the module docs). A request dropped
    /// unanswered (the thread died, the queue closed before it was sent) releases it without
    /// settling: either nothing was written, or the engine is poisoned.
    hold: Hold,
    permit: OwnedSemaphorePermit,
}

/// The group-commit thread's answer to one request: the outcome, and what the request carried,
/// handed back so that the waiting caller, not the one thread every durable write goes through,
/// settles the caches, releases the session's lock and frees the batch. Dropped undelivered (the
/// caller has gone), it does the same wherever it is dropped (see [`Hold`]).
struct Reply {
    outcome: Result<(), Error>,
    /// The hold with the outcome recorded; the ops emptied, kept for their allocation to be freed
    /// off the commit thread; the place in the queue, given back once the caller is done.
    _carried: (Hold, Vec<Op>, OwnedSemaphorePermit),
}

/// Commits batches according to the configured durability.
pub(crate) struct Writer {
    store: Arc<Store>,
    durability: Durability,
    poisoned: Arc<AtomicBool>,
    /// Present in `sync` mode only; dropped first on shutdown so the thread drains and exits.
    queue: Option<Sender<Request>>,
    /// Bounds how many requests are queued or being committed, so the channel's send never blocks.
    admission: Arc<Semaphore>,
    timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn start(store: Arc<Store>, durability: Durability, cfg: &Writes) -> Result<Self, Error> {
        let poisoned = Arc::new(AtomicBool::new(false));
        let depth = usize::try_from(cfg.queue_depth).unwrap_or(usize::MAX);
        let (queue, thread) = match durability {
            Durability::Buffered => (None, None),
            Durability::Sync => {
                let (tx, rx) = crossbeam_channel::bounded(depth);
                let (store, poisoned) = (Arc::clone(&store), Arc::clone(&poisoned));
                let max_ops = usize::try_from(cfg.group_max_events).unwrap_or(usize::MAX);
                let thread = std::thread::Builder::new()
                    .name("palimpsest-group-commit".to_string())
                    .spawn(move || group_commit_loop(&store, &rx, &poisoned, max_ops))
                    .map_err(|e| Error::storage("start writer thread", e))?;
                (Some(tx), Some(thread))
            }
        };
        Ok(Self {
            store,
            durability,
            poisoned,
            queue,
            admission: Arc::new(Semaphore::new(depth.min(Semaphore::MAX_PERMITS))),
            timeout: Duration::from_millis(cfg.timeout_ms),
            thread,
        })
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn poison(&self, why: &str) {
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            tracing::error!(why, "write failed: engine poisoned until reopened");
        }
    }

    /// Commits `ops` atomically with the configured durability. On `Ok` the batch is acknowledged.
    /// `hold` (the session's lock guard, or `()`) is released only once the batch is committed.
    ///
    /// Cancel safety: not cancel safe in the sense that dropping the future undoes nothing. Once
    /// the batch is queued (`sync`) or committing (`buffered`, which commits inline without a
    /// suspension point), it lands or the writer is poisoned, and `hold` is kept until then.
    /// Dropped before it was queued (while waiting for a place in the queue), nothing is written.
    pub(crate) async fn write(&self, ops: Vec<Op>, hold: Hold) -> Result<(), Error> {
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let Some(queue) = &self.queue else {
            let result = guarded_commit(&self.store, &ops, false).inspect_err(|e| self.poison(&e.to_string()));
            hold.release(result.is_ok());
            return result;
        };
        debug_assert_eq!(self.durability, Durability::Sync);
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let full = || Error::Timeout { what: "a place in the group-commit queue", after_ms: timeout_ms };
        let permit = tokio::time::timeout(self.timeout, Arc::clone(&self.admission).acquire_owned())
            .await
            .map_err(|_| full())?
            .map_err(|_| Error::Closed)?;
        let (ack, done) = oneshot::channel();
        // Cannot be full: the semaphore admits at most `queue_depth` requests, the channel's capacity.
        queue.try_send(Request { ops, ack, hold, permit }).map_err(|e| match e {
            TrySendError::Full(_) => full(),
            TrySendError::Disconnected(_) => Error::Closed,
        })?;
        match tokio::time::timeout(self.timeout, done).await {
            // Dropping the reply settles the caches, then releases the session's lock.
            Ok(Ok(reply)) => reply.outcome,
            Ok(Err(_)) => {
                // The thread drops a request unanswered only when it died (a panic outside the
                // guarded commit): what reached the disk is unknown.
                self.poison("the group-commit thread died");
                Err(Error::Poisoned)
            }
            Err(_) => {
                self.poison("group commit did not acknowledge in time");
                Err(Error::Timeout { what: "the group commit to acknowledge", after_ms: timeout_ms })
            }
        }
    }

    /// A handle for background work that commits beside the writers (the purger): its commits are
    /// not acknowledged to anyone and not fsynced on their own, but they poison the engine on failure
    /// and are refused once it is poisoned, like every other write.
    pub(crate) fn committer(&self) -> Committer {
        Committer { store: Arc::clone(&self.store), poisoned: Arc::clone(&self.poisoned) }
    }

    /// The store this writer commits to.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("group-commit thread panicked");
        }
    }
}

fn group_commit_loop(store: &Store, rx: &Receiver<Request>, poisoned: &AtomicBool, max_ops: usize) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut n_ops = group[0].ops.len();
        while n_ops < max_ops {
            match rx.try_recv() {
                Ok(next) => {
                    n_ops += next.ops.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let result = if poisoned.load(Ordering::Acquire) {
            Err(Error::Poisoned)
        } else {
            // The group's ops in one vector; each request keeps its emptied vector, whose
            // allocation goes back with the reply.
            let mut ops: Vec<Op> = Vec::with_capacity(n_ops);
            group.iter_mut().for_each(|r| ops.append(&mut r.ops));
            let result = guarded_commit(store, &ops, true);
            // The committed ops are freed with the first request's reply, by its caller.
            group[0].ops = ops;
            result
        };
        if let Err(e) = &result
            && !poisoned.swap(true, Ordering::AcqRel)
        {
            tracing::error!(error = %e, "group commit failed: engine poisoned until reopened");
        }
        tracing::trace!(requests = group.len(), n_ops, ok = result.is_ok(), "group committed");
        // Every request of the group fails with the one cause, shared.
        let failure = result.err().map(Arc::new);
        for req in group {
            let outcome = match &failure {
                None => Ok(()),
                Some(e) if matches!(**e, Error::Poisoned) => Err(Error::Poisoned),
                Some(e) => Err(Error::storage("group commit", SharedCause(Arc::clone(e)))),
            };
            let Request { ack, hold, ops, permit } = req;
            let hold = hold.settled_as(outcome.is_ok());
            // The caller settles and releases on receipt, before it learns the outcome. If it has
            // gone (timed out or cancelled), the reply comes back here and dropping it settles and
            // releases; the outcome then stands on the disk and, if it failed, in the poison.
            drop(ack.send(Reply { outcome, _carried: (hold, ops, permit) }));
        }
    }
}

/// One failed commit's error, shared by every request of its group. It reads as the error itself
/// and its `source()` is the error's own source, so the chain below it (down to fjall's or the OS's
/// error) is whole.
#[derive(Debug)]
struct SharedCause(Arc<Error>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// See [`Writer::committer`].
pub(crate) struct Committer {
    store: Arc<Store>,
    poisoned: Arc<AtomicBool>,
}

impl Committer {
    /// Commits `ops` as one atomic batch without an fsync of its own.
    pub(crate) fn commit(&self, ops: &[Op]) -> Result<(), Error> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        guarded_commit(&self.store, ops, false).inspect_err(|e| {
            if !self.poisoned.swap(true, Ordering::AcqRel) {
                tracing::error!(error = %e, "background commit failed: engine poisoned until reopened");
            }
        })
    }
}

/// Commits `ops`, turning a panic below the engine into a failed commit: it must not leave callers
/// waiting, kill the writer thread, or leave the engine writable.
fn guarded_commit(store: &Store, ops: &[Op], sync: bool) -> Result<(), Error> {
    catch_unwind(AssertUnwindSafe(|| store.commit(ops, sync))).unwrap_or_else(|panic| {
        let what = panic_message(panic.as_ref());
        Err(Error::storage("commit", format!("the commit panicked: {what}")))
    })
}

/// The text of a panic payload, for the poison message and a panicked extraction's error.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a non-string panic".to_string(),
    }
}
