//! Removal of a deleted session's dead events, in bounded chunks, beside the writers.
//!
//! `Session::delete` records a deletion in one small batch whatever the session's length: the
//! `SessionDeleted` event, the head (whose `base` is now the deletion's seq) and a purge marker
//! `meta/purge 0x00 session 0x00 base`. From then on the events below `base` are dead: readers start
//! at the head's base, and audit and rebuild skip the events below the highest marker of a session.
//! The purger thread then removes the dead events and their splice-index entries in batches of at
//! most [`PURGE_CHUNK_EVENTS`] keys, oldest first, and removes the marker with the last batch.
//!
//! A crash, a full queue or a closing engine leaves the marker in place; open queues every marker
//! again (at most [`PURGE_QUEUE_DEPTH`]; the rest wait for a later open), and deleting a key twice is
//! harmless, so a purge resumes where it stopped. Purge batches are not fsynced on their own: one
//! lost to a power cut leaves its marker too, and is redone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::engine::writer::Committer;
use crate::error::Error;
use crate::log::ids::{Seq, SessionId};
use crate::storage::keys;
use crate::storage::{Ks, Kv, Op, Read, Store, View};

/// Most event keys (plus as many splice-index keys) one purge batch removes: bounds the batch's
/// size and the memory a purge holds, whatever the session's length.
pub(crate) const PURGE_CHUNK_EVENTS: usize = 4_096;

/// Most purges waiting for the purger thread; a deletion that finds the queue full leaves its
/// marker for the next open.
pub(crate) const PURGE_QUEUE_DEPTH: usize = 1_024;

/// One deletion whose dead events (seq below `base`) are to be removed.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) session: SessionId,
    pub(crate) base: Seq,
}

/// The purger thread and its queue.
pub(crate) struct Purger {
    queue: Option<Sender<Job>>,
    stop: Arc<AtomicBool>,
    pending: Arc<Pending>,
    thread: Option<JoinHandle<()>>,
}

/// Purges queued or running, and a condition variable to wait for none.
#[derive(Default)]
struct Pending {
    n: Mutex<u64>,
    idle: Condvar,
}

impl Pending {
    fn add(&self) {
        *self.n.lock() += 1;
    }

    fn done(&self) {
        let mut n = self.n.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.idle.notify_all();
        }
    }
}

impl Purger {
    /// Starts the thread and queues the purges that `store`'s markers say are unfinished.
    pub(crate) fn start(store: Arc<Store>, committer: Committer) -> Result<Self, Error> {
        let (tx, rx) = crossbeam_channel::bounded(PURGE_QUEUE_DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let mut unfinished = Vec::new();
        for row in store.iter_prefix(Ks::Meta, keys::META_PURGE_PREFIX).take(PURGE_QUEUE_DEPTH) {
            let (key, _) = row?;
            match keys::parse_purge_key(&key).and_then(|(id, base)| Some((SessionId::new(id).ok()?, base))) {
                Some((session, base)) => unfinished.push(Job { session, base }),
                None => tracing::warn!(key = ?String::from_utf8_lossy(&key), "malformed purge marker left alone"),
            }
        }
        let pending = Arc::new(Pending::default());
        let thread = {
            let (stop, pending) = (Arc::clone(&stop), Arc::clone(&pending));
            std::thread::Builder::new()
                .name("palimpsest-purge".to_string())
                .spawn(move || purge_loop(&store, &committer, &rx, &stop, &pending))
                .map_err(|e| Error::storage("start purge thread", e))?
        };
        let purger = Self { queue: Some(tx), stop, pending, thread: Some(thread) };
        if !unfinished.is_empty() {
            tracing::info!(n = unfinished.len(), "resuming interrupted purges of deleted sessions");
        }
        for job in unfinished {
            purger.enqueue(job);
        }
        Ok(purger)
    }

    /// Queues a purge; when the queue is full it is left to the next open (its marker stays).
    pub(crate) fn enqueue(&self, job: Job) {
        let Some(queue) = &self.queue else { return };
        self.pending.add();
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = queue.try_send(job) {
            self.pending.done();
            tracing::warn!(session = %job.session, base = %job.base, "purge queue full; the purge resumes at the next open");
        }
    }

    /// Purges queued or running now.
    pub(crate) fn pending(&self) -> u64 {
        *self.pending.n.lock()
    }

    /// Blocks until no purge is queued or running, at most `timeout`; true if none is left.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.pending.n.lock();
        while *n > 0 {
            if self.pending.idle.wait_until(&mut n, deadline).timed_out() {
                return *n == 0;
            }
        }
        true
    }
}

impl Drop for Purger {
    /// Stops after the batch in progress; unfinished purges keep their markers.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.queue = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("purge thread panicked");
        }
    }
}

fn purge_loop(store: &Store, committer: &Committer, rx: &Receiver<Job>, stop: &AtomicBool, pending: &Pending) {
    while let Ok(job) = rx.recv() {
        let outcome = purge(store, committer, &job, stop);
        pending.done();
        match outcome {
            Ok(true) => tracing::debug!(session = %job.session, base = %job.base, "purged a deleted session"),
            Ok(false) => return,
            Err(e) => tracing::warn!(session = %job.session, error = %e, "purge stopped; it resumes at the next open"),
        }
    }
}

/// Removes `job`'s dead events chunk by chunk. Returns false when asked to stop first.
fn purge(store: &Store, committer: &Committer, job: &Job, stop: &AtomicBool) -> Result<bool, Error> {
    // A marker is written with its deletion event, which has seq >= 1, so `base - 1` cannot wrap.
    let Some(last_dead) = job.base.get().checked_sub(1).map(Seq::new) else { return Ok(true) };
    let last = keys::seq_key(&job.session, last_dead);
    // Each chunk starts past the previous one: scanning from the start again would wade through
    // the tombstones just written, making a purge quadratic in the session's length.
    let mut from_seq = Seq::ZERO;
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(false);
        }
        let first = keys::seq_key(&job.session, from_seq);
        let events = store.keys_in(Ks::Events, &first, &last, PURGE_CHUNK_EVENTS)?;
        let events_done = events.len() < PURGE_CHUNK_EVENTS;
        // The index entries up to the chunk's last event go with it, so the index and the log
        // agree after every batch.
        let upto = if events_done { last.clone() } else { events.last().cloned().expect("a full chunk is not empty") };
        let index = store.keys_in(Ks::Splices, &first, &upto, PURGE_CHUNK_EVENTS)?;
        let done = events_done && index.len() < PURGE_CHUNK_EVENTS;
        let mut ops: Vec<Op> = events.into_iter().map(|k| Op::Delete(Ks::Events, k)).collect();
        ops.extend(index.into_iter().map(|k| Op::Delete(Ks::Splices, k)));
        if done {
            ops.push(Op::Delete(Ks::Meta, keys::purge_key(&job.session, job.base)));
        }
        committer.commit(&ops)?;
        if done {
            return Ok(true);
        }
        if !events_done && let Some((_, seq)) = keys::parse_seq_key(&upto) {
            // Below `base`, so `seq + 1` cannot wrap.
            from_seq = seq.next();
        }
    }
}

/// The highest deletion seq among `session`'s purge markers (`Seq::ZERO` without one): the
/// session's events below it are dead, and audit and rebuild skip them.
pub(crate) fn floor(view: &View<'_>, session: &SessionId) -> Result<Seq, Error> {
    let mut floor = Seq::ZERO;
    for row in view.iter_prefix(Ks::Meta, &keys::purge_prefix(session)) {
        let (key, _) = row?;
        if let Some((_, base)) = keys::parse_purge_key(&key) {
            floor = floor.max(base);
        }
    }
    Ok(floor)
}
