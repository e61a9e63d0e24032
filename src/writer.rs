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
//! reason (the write may still land).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{Semaphore, oneshot};

use crate::config::{Durability, Writes};
use crate::error::Error;
use crate::store::{Op, Store};

struct Request {
    ops: Vec<Op>,
    ack: oneshot::Sender<Result<(), Error>>,
}

/// Commits batches according to the configured durability.
pub(crate) struct Writer {
    store: Arc<Store>,
    durability: Durability,
    poisoned: Arc<AtomicBool>,
    /// Present in `sync` mode only; dropped first on shutdown so the thread drains and exits.
    queue: Option<Sender<Request>>,
    /// Bounds how many requests wait in the queue, so the channel's send never blocks.
    admission: Semaphore,
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
                    .map_err(|e| Error::Storage { op: "start writer thread", detail: e.to_string() })?;
                (Some(tx), Some(thread))
            }
        };
        Ok(Self {
            store,
            durability,
            poisoned,
            queue,
            admission: Semaphore::new(depth.min(Semaphore::MAX_PERMITS)),
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
    pub(crate) async fn write(&self, ops: Vec<Op>) -> Result<(), Error> {
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let Some(queue) = &self.queue else {
            return self.store.commit(&ops, false).inspect_err(|e| self.poison(&e.to_string()));
        };
        debug_assert_eq!(self.durability, Durability::Sync);
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let permit = tokio::time::timeout(self.timeout, self.admission.acquire())
            .await
            .map_err(|_| Error::Timeout { what: "a place in the group-commit queue", after_ms: timeout_ms })?
            .map_err(|_| Error::Closed)?;
        let (ack, done) = oneshot::channel();
        // Cannot block: the semaphore admits at most `queue_depth` requests, the channel's capacity.
        queue.try_send(Request { ops, ack }).map_err(|_| Error::Closed)?;
        let result = tokio::time::timeout(self.timeout, done).await;
        drop(permit);
        match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                self.poison("group commit did not acknowledge in time");
                Err(Error::Timeout { what: "the group commit to acknowledge", after_ms: timeout_ms })
            }
        }
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
            let ops: Vec<Op> = group.iter_mut().flat_map(|r| std::mem::take(&mut r.ops)).collect();
            store.commit(&ops, true)
        };
        if let Err(e) = &result
            && !poisoned.swap(true, Ordering::AcqRel)
        {
            tracing::error!(error = %e, "group commit failed: engine poisoned until reopened");
        }
        tracing::trace!(requests = group.len(), n_ops, ok = result.is_ok(), "group committed");
        for req in group {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(Error::Poisoned) => Err(Error::Poisoned),
                Err(e) => Err(Error::Storage { op: "group commit", detail: e.to_string() }),
            };
            // The caller may have timed out and gone; its outcome is then reported by the poison.
            let _ = req.ack.send(outcome);
        }
    }
}
