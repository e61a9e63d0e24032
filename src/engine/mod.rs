//! [`Engine`] and [`Session`]: the public async API, and the only place that combines the pure
//! core (`fold`, `view`) with the effects (`store`, `writer`, the clock).
//!
//! Every write follows one path, [`Engine::write_events`]: take the session's lock (bounded wait),
//! read its head into a [`Batch`], let the caller check each event against the batch's head and push
//! it (each push folds it, once), and commit events + head (+ index entries) as one atomic batch. Appends to one session are
//! therefore totally ordered; different sessions only share the group-commit thread. On JetStream
//! (`backend`) the commit is one conditional publish, and a batch built on a head another engine has
//! moved past is built again on the fresh one.

pub(crate) mod backend;
mod cache;
mod guards;
pub(crate) mod metadata;
pub(crate) mod purge;
pub(crate) mod writer;

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::engine::backend::Backend;
use crate::engine::cache::Caches;
use crate::engine::purge::Purger;
use crate::engine::writer::{Hold, Writer};
use crate::error::Error;
use crate::guard::{Guards, KeyedLocks};
use crate::log::codec;
use crate::log::event::{BoundaryReason, Event, EventKind, Message, Role};
use crate::log::fold::{self, Head};
use crate::log::ids::{Seq, SessionId};
use crate::log::view::{self, Summary, WorkingMemory};
use crate::storage::keys;
use crate::storage::{Ks, Kv, Op, Read, Store, View};

/// Most views a JetStream read takes of a session deleted under it again and again (see
/// `Session::read_nats`): each retry follows a deletion that purged what the last one read.
#[cfg(feature = "nats")]
const MAX_VIEW_READS: usize = 4;

/// The smallest range read when paging backwards for a window; keeps the number of reads low
/// when many non-message events sit among the messages.
const MIN_WINDOW_PAGE: u64 = 16;

/// The first read of a window takes this many events more per 16 asked for (plus 2): episode
/// boundaries and splices sit among the messages, and without the slack a window that holds one
/// of them needs a second range scan for its last message.
const WINDOW_SLACK_PER_16: u64 = 1;

/// An open palimpsest database. Cheap to clone; all clones share one database.
///
/// ```no_run
/// # async fn demo() -> Result<(), palimpsest::Error> {
/// use palimpsest::{Config, Engine, Message};
/// let engine = Engine::open(Config::new("/tmp/agent-memory"))?;
/// let session = engine.session("user-42")?;
/// session.append(Message::user("Find flights to Oslo")).await?;
/// let memory = session.working_memory(50).await?;
/// assert_eq!(memory.messages.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// Where the logs live, with what writes to them (see `backend`).
    pub(crate) backend: Backend,
    pub(crate) locks: KeyedLocks<SessionId>,
    /// Compactions and imports hold it shared from storing their blob to splicing; orphan
    /// collection holds it exclusively, so a blob about to be referenced is never collected.
    pub(crate) blob_gate: tokio::sync::RwLock<()>,
    /// Namespace locks, the background model budget, and their counters.
    pub(crate) guards: Guards,
    /// Heads for the write path and working-memory windows for readers (see `cache`).
    pub(crate) caches: Arc<Caches>,
    /// What the layers above attached (compaction, episodes, extraction), seen here only through
    /// the write path's hooks.
    pub(crate) features: Arc<dyn Features>,
}

/// What the engine asks of the features standing on it: the write path's two hooks and the
/// features' gauges. The engine knows nothing else of them; each feature reaches its own state
/// with [`Engine::feature`].
pub(crate) trait Features: Send + Sync {
    /// The attached state of type `of`, if there is one (`crate::open` attaches each feature's).
    fn state(&self, of: std::any::TypeId) -> Option<&dyn std::any::Any>;

    /// An episode boundary was pushed at `at` into `batch` (the turn cap in an append): adds the
    /// ops that must land in the same batch (the pending marker of the episode's extraction).
    fn boundary_pushed(&self, engine: &Engine, batch: &mut Batch, session: &SessionId, at: Seq);

    /// A write with episode boundaries at `boundaries` has landed: starts what they schedule.
    fn boundaries_landed(&self, engine: &Engine, session: &SessionId, boundaries: &[Seq]);

    /// Adds the features' gauges to the guards' counters.
    fn gauges(&self, stats: &mut crate::guard::GuardStats);
}

impl Engine {
    /// An engine on `backend` with the parts above it (`features`, see [`Features`]); the layer
    /// that opens engines (`crate::open`) is the only caller.
    pub(crate) fn assemble(
        config: Config,
        backend: Backend,
        features: impl FnOnce(&Config, &Guards) -> Arc<dyn Features>,
    ) -> Self {
        let guards = Guards::new(&config);
        let features = features(&config, &guards);
        let caches = Arc::new(Caches::new(config.cache.heads, config.cache.window_bytes));
        Self {
            inner: Arc::new(Inner {
                config,
                backend,
                locks: KeyedLocks::default(),
                blob_gate: tokio::sync::RwLock::new(()),
                guards,
                caches,
                features,
            }),
        }
    }

    /// A reference that does not keep the database open: background workers hold one between
    /// jobs, so dropping the last handle closes the database even with work queued.
    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// The engine behind `weak`, if it is still open.
    pub(crate) fn upgrade(weak: &Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    /// Sessions whose write lock is held or awaited right now.
    pub fn sessions_locked(&self) -> usize {
        self.inner.locks.len()
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The state a feature keeps per engine (`compaction::State`, `episodes::State`,
    /// `extraction::State`). Every engine is assembled by `crate::open` with all of them, so a
    /// missing one is a bug in that one place.
    pub(crate) fn feature<T: std::any::Any>(&self) -> &T {
        self.inner
            .features
            .state(std::any::TypeId::of::<T>())
            .and_then(|state| state.downcast_ref::<T>())
            .expect("the top layer (open.rs) attaches every feature's state")
    }

    /// The configuration the engine was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A handle on one session (it need not exist yet: the first append creates it).
    pub fn session<I>(&self, id: I) -> Result<Session, Error>
    where
        I: TryInto<SessionId>,
        I::Error: Into<Error>,
    {
        Ok(Session { engine: self.clone(), id: id.try_into().map_err(Into::into)? })
    }

    /// Live (not deleted) sessions in id order, starting after `after`, at most `limit`.
    ///
    /// Cancel safety: cancel safe; a read changes nothing, and dropping it loses nothing.
    pub async fn list_sessions(&self, after: Option<&SessionId>, limit: usize) -> Result<Vec<SessionId>, Error> {
        self.check_read_limit(limit)?;
        #[cfg(feature = "nats")]
        if let Some(log) = self.inner.backend.nats() {
            return log.sessions(after, limit).await;
        }
        let mut out = Vec::new();
        for row in self.store("listing sessions")?.iter_from(Ks::Heads, after.map(keys::head_key)) {
            if out.len() == limit {
                break;
            }
            let (key, value) = row?;
            let id = String::from_utf8(key.to_vec()).ok().and_then(|k| SessionId::new(k).ok()).ok_or_else(|| {
                Error::Corrupt { session: None, seq: None, detail: "a session head has a malformed key".to_string() }
            })?;
            if !codec::decode_head(id.as_str(), &value)?.is_deleted() {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Deletions whose dead events are still being removed in the background (queued or running).
    pub fn purges_pending(&self) -> u64 {
        self.inner.backend.purger().map_or(0, Purger::pending)
    }

    /// Blocks until every queued deletion purge has finished, at most `timeout`; true when none is
    /// left. An operator's tool or a test calls it before measuring space; nothing depends on it
    /// for correctness (dead events are invisible to readers and audit from the deletion on).
    pub fn wait_for_purges(&self, timeout: Duration) -> bool {
        self.inner.backend.purger().is_none_or(|p| p.wait_idle(timeout))
    }

    /// True after a failed write: every later write fails until the engine is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.inner.backend.is_poisoned()
    }

    /// Arms (or, with `None`, disarms) a storage fault. Test builds only (feature `testing`).
    /// On JetStream only `FaultPoint::Commit` fires: the append is refused before anything is
    /// published.
    #[cfg(feature = "testing")]
    pub fn inject_fault(&self, fault: Option<crate::testing::Fault>) {
        self.faults().arm(fault);
    }

    /// How many injected faults have fired. Test builds only (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn faults_fired(&self) -> u64 {
        self.faults().fired()
    }

    /// The backend's fault switch.
    #[cfg(feature = "testing")]
    fn faults(&self) -> &crate::testing::Faults {
        match &self.inner.backend {
            crate::engine::backend::Backend::Fjall { writer, .. } => &writer.store().faults,
            #[cfg(feature = "nats")]
            crate::engine::backend::Backend::Nats(log) => &log.faults,
        }
    }

    /// The fjall store, for `what`; [`Error::Unsupported`] on another backend.
    pub(crate) fn store(&self, what: &'static str) -> Result<&Store, Error> {
        self.inner.backend.store(what)
    }

    /// The fjall writer, for `what`; [`Error::Unsupported`] on another backend.
    pub(crate) fn writer(&self, what: &'static str) -> Result<&Writer, Error> {
        self.inner.backend.writer(what)
    }

    fn check_read_limit(&self, limit: usize) -> Result<(), Error> {
        let max = self.inner.config.limits.max_read_messages;
        if u64::try_from(limit).is_ok_and(|l| l <= max) {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                what: "read limit",
                reason: format!("{limit} is over limits.max_read_messages ({max})"),
            })
        }
    }

    /// The one write path; see the module docs. Under the session's lock, `build` gets a [`Batch`]
    /// holding the current head and pushes the events to append (and any extra ops), or returns an
    /// error that leaves everything untouched. Returns the new head.
    ///
    /// On JetStream a write built on a head another engine has since moved past is refused by the
    /// version check and `build` runs again on the fresh head (at most `MAX_WRITE_BUILDS` times,
    /// after a jittered wait that doubles from 2 ms to 128 ms), so a builder must start from the
    /// batch alone each time it runs.
    pub(crate) async fn write_events(
        &self,
        session: &SessionId,
        build: impl FnMut(&mut Batch) -> Result<(), Error>,
    ) -> Result<Head, Error> {
        match &self.inner.backend {
            Backend::Fjall { writer, .. } => self.write_fjall(writer, session, build).await,
            #[cfg(feature = "nats")]
            Backend::Nats(log) => self.write_nats(log, session, build).await,
        }
    }

    async fn write_fjall(
        &self,
        writer: &Writer,
        session: &SessionId,
        mut build: impl FnMut(&mut Batch) -> Result<(), Error>,
    ) -> Result<Head, Error> {
        if writer.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let lock = self.lock_session(session).await?;
        // Under the lock the cached head is exact (see `cache`); a miss reads storage, where every
        // committed write of the session is visible by now.
        let head = match self.inner.caches.head(session) {
            Some(head) => head,
            None => writer.store().head(session)?.unwrap_or_default(),
        };
        let before = head.last_seq();
        let mut batch = Batch::on(head);
        build(&mut batch)?;
        let Batch { head, events, mut ops, purge, .. } = batch;
        if events.is_empty() {
            return Ok(head);
        }
        for event in &events {
            match event.kind {
                EventKind::CompactionSpliced(_) => {
                    ops.push(Op::Put(Ks::Splices, keys::seq_key(session, event.seq), Vec::new()));
                }
                // The purger's marker, in the deletion's own batch (see `engine::purge`).
                EventKind::SessionDeleted { .. } if purge => {
                    ops.push(Op::Put(Ks::Meta, keys::purge_key(session, event.seq), Vec::new()));
                }
                _ => {}
            }
            ops.push(Op::Put(Ks::Events, keys::seq_key(session, event.seq), codec::encode_event(event)));
        }
        ops.push(Op::Put(Ks::Heads, keys::head_key(session).to_vec(), codec::encode_head(&head)));
        let change = self.inner.caches.window_change(session, &events);
        let (caches, id, settled) = (Arc::clone(&self.inner.caches), session.clone(), head.clone());
        // The lock travels with the batch and is released once it is committed (after the caches
        // are settled), even if this future is dropped while the batch waits for its group commit.
        let hold = Hold::guard(lock).then(move |committed| caches.settle(&id, committed, before, settled, 0, change));
        crate::testing::kill_point("write:before_commit");
        writer.write(ops, hold).await?;
        crate::testing::kill_point("write:after_commit");
        Ok(head)
    }

    /// The write path on JetStream (module docs of `backend`): one conditional publish of the
    /// session's record. The cached head and version are taken out for the write and put back
    /// only once the publish is acknowledged, so a write that fails, times out or is dropped
    /// mid-publish leaves the next one to read the head from the cluster. Only that session is
    /// fenced; the engine is never poisoned.
    #[cfg(feature = "nats")]
    async fn write_nats(
        &self,
        log: &crate::storage::nats::NatsLog,
        session: &SessionId,
        mut build: impl FnMut(&mut Batch) -> Result<(), Error>,
    ) -> Result<Head, Error> {
        use crate::storage::nats::Version;
        let _lock = self.lock_session(session).await?;
        let caches = &self.inner.caches;
        let mut cached = caches.take_head(session);
        let (mut last_conflict, mut rebuild_wait) = (None, FIRST_REBUILD_WAIT / 2);
        for _ in 0..MAX_WRITE_BUILDS {
            let (head, version) = match cached.take() {
                Some((head, version)) => (head, Version::at(version)),
                None => log.head(session).await?.unwrap_or((Head::default(), Version::NONE)),
            };
            let before = head.last_seq();
            let mut batch = Batch::on(head.clone());
            // `true`: a record to publish. Otherwise (nothing to write, a refused build or record, an
            // unpublished blob) the head read or taken from the cache is still the session's: it goes
            // back for the next write.
            let ready = match build(&mut batch) {
                Err(e) => Err(e),
                Ok(()) if batch.events.is_empty() => Ok(false),
                Ok(()) => publish_side_records(log, &batch.ops).await.map(|()| true),
            };
            if !matches!(ready, Ok(true)) {
                caches.put_head(session, head, version.get());
                return ready.map(|_| batch.head);
            }
            let Batch { head, events, ops, .. } = batch;
            let change = caches.window_change(session, &events);
            match log.append(session, version, &events, &head).await {
                Ok(version) => {
                    caches.settle(session, true, before, head.clone(), version.get(), change);
                    remove_side_records(log, &ops).await;
                    return Ok(head);
                }
                // Another engine moved the session: build again on its head, read fresh, after a
                // jittered wait that grows with each loss, so a writer that keeps losing to a
                // faster one (whose head is cached: it needs no read) lets that burst pass.
                Err(e @ Error::Conflict { .. }) => {
                    last_conflict = Some(e);
                    rebuild_wait = (rebuild_wait * 2).min(MAX_REBUILD_WAIT);
                    tokio::time::sleep(rebuild_wait.mul_f64(fastrand::f64())).await;
                }
                Err(e) => {
                    caches.forget(session);
                    return Err(e);
                }
            }
        }
        Err(last_conflict.unwrap_or(Error::Conflict { session: session.to_string(), expected: 0, found: None }))
    }

    /// The session's write lock, waited for at most `writes.timeout_ms`.
    pub(crate) async fn lock_session(&self, session: &SessionId) -> Result<crate::guard::KeyedGuard<SessionId>, Error> {
        let timeout_ms = self.inner.config.writes.timeout_ms;
        self.inner
            .locks
            .lock(session, Duration::from_millis(timeout_ms))
            .await
            .ok_or(Error::Timeout { what: "the session's write lock", after_ms: timeout_ms })
    }
}

/// Publishes the records beside the log among a JetStream write's `ops` before its record, each
/// idempotently (SPEC.md 11a): summary blobs (a compaction's or an import's splice), content-
/// addressed; pending extraction markers (a splice's or an episode boundary's), under a message id
/// derived from their content, so a rebuilt write publishes the same marker as a duplicate. A
/// record that then fails leaves a harmless extra (an orphan blob for `gc`, a marker the next
/// connect finds without its event and removes), never a record naming something missing.
/// Removals (an extraction's marker, in the write that records its memories) wait for the record:
/// [`remove_side_records`]. Any other op has no home on this backend: refused before anything is
/// published.
#[cfg(feature = "nats")]
async fn publish_side_records(log: &crate::storage::nats::NatsLog, ops: &[Op]) -> Result<(), Error> {
    let marker = |key: &[u8]| {
        keys::parse_extraction_key(key)
            .filter(|(tag, ..)| *tag == keys::EXTRACTION_PENDING)
            .and_then(|(_, id, at)| Some((SessionId::new(id).ok()?, at)))
    };
    let supported = |op: &Op| match op {
        Op::Put(Ks::Blobs, ..) => true,
        Op::Put(Ks::Extractions, key, _) | Op::Delete(Ks::Extractions, key) => marker(key).is_some(),
        _ => false,
    };
    if !ops.iter().all(supported) {
        return Err(Error::Unsupported { what: "a write with records beside the log", backend: "nats" });
    }
    for op in ops {
        match op {
            Op::Put(Ks::Blobs, _, text) => {
                let text = std::str::from_utf8(text)
                    .map_err(|e| Error::InvalidArgument { what: "summary", reason: format!("not UTF-8: {e}") })?;
                log.put_blob(text).await?;
            }
            Op::Put(Ks::Extractions, key, value) => {
                if let Some((session, at)) = marker(key) {
                    log.put_marker(&session, at, value).await?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The removals among a landed JetStream write's `ops` (an extraction's pending marker, removed
/// once the `MemoriesExtracted` that finishes it is stored). The write has landed, so a removal
/// that fails is not the write's failure: the marker stays, and the extraction it names, run
/// again by a later connect, finds its memories stored and removes it.
#[cfg(feature = "nats")]
async fn remove_side_records(log: &crate::storage::nats::NatsLog, ops: &[Op]) {
    for op in ops {
        if let Op::Delete(Ks::Extractions, key) = op
            && let Some((_, id, at)) = keys::parse_extraction_key(key)
            && let Ok(session) = SessionId::new(id)
            && let Err(e) = log.remove_marker(&session, at).await
        {
            tracing::warn!(%session, %at, error = %e, "a finished extraction's marker was not removed; a later connect will");
        }
    }
}

/// Most times a JetStream write is built: a session that other engines keep moving gets this many
/// chances, then the write fails with [`Error::Conflict`] (nothing of it stored).
#[cfg(feature = "nats")]
pub(crate) const MAX_WRITE_BUILDS: usize = 16;

/// The first wait before a JetStream write is built again after a conflict (full jitter), doubled
/// per conflict up to [`MAX_REBUILD_WAIT`]: at most about 1.5 s over all the builds.
#[cfg(feature = "nats")]
const FIRST_REBUILD_WAIT: Duration = Duration::from_millis(2);
/// The longest wait between two builds of one JetStream write.
#[cfg(feature = "nats")]
const MAX_REBUILD_WAIT: Duration = Duration::from_millis(128);

/// A value a write builder consumes: moved out when the builder runs once (fjall), cloned each
/// time when it may run again after a conflict (JetStream, `MAX_WRITE_BUILDS`).
pub(crate) struct Consumed<T> {
    value: Option<T>,
    again: bool,
}

impl<T: Clone> Consumed<T> {
    /// `value` for the builders of `engine`'s writes.
    pub(crate) fn new(engine: &Engine, value: T) -> Self {
        Self { value: Some(value), again: engine.inner.backend.rebuilds_writes() }
    }

    /// The value, for one run of the builder.
    pub(crate) fn take(&mut self) -> Result<T, Error> {
        let value = if self.again { self.value.clone() } else { self.value.take() };
        // fjall runs a builder once; a second run there would be a bug of the write path.
        value.ok_or_else(|| Error::storage("build a write", "a builder ran twice on a backend that builds once"))
    }
}

/// The events of one write, prepared under the session's lock. Each push folds its event into the
/// batch's head at once, so a builder checks the next event against the state the previous ones
/// left, and every event is folded exactly once.
pub(crate) struct Batch {
    head: Head,
    events: Vec<Event>,
    ops: Vec<Op>,
    now_ms: u64,
    /// A deletion in this batch leaves a purge to do (`Batch::purge_dead_events`).
    purge: bool,
}

impl Batch {
    /// A batch over `head`, stamped now.
    fn on(head: Head) -> Self {
        Self { head, events: Vec::new(), ops: Vec::new(), now_ms: now_ms(), purge: false }
    }

    /// Asks the backend to remove the events a `SessionDeleted` pushed into this batch made dead:
    /// fjall writes the purger's marker into the batch, JetStream purges as part of the deletion.
    pub(crate) fn purge_dead_events(&mut self) {
        self.purge = true;
    }

    /// The head as it will be after the events pushed so far.
    pub(crate) fn head(&self) -> &Head {
        &self.head
    }

    /// The seq the next pushed event gets, or an error when the session is full ([`Seq::MAX`]).
    pub(crate) fn next_seq(&self) -> Result<Seq, Error> {
        self.head.last_seq().checked_next()
    }

    /// Appends an event stamped now; returns its seq.
    pub(crate) fn push(&mut self, kind: EventKind) -> Result<Seq, Error> {
        self.push_at(kind, self.now_ms)
    }

    /// Appends an event with the given store time (an import keeps the original times). Every
    /// write path's events pass here, so here, in every build, each is checked against the
    /// structural rules readers apply (`codec::check_event`) and the rules that need the head
    /// (`fold::check_message`, `fold::check_marker`); a refusal leaves the batch as it was.
    pub(crate) fn push_at(&mut self, kind: EventKind, at_ms: u64) -> Result<Seq, Error> {
        let event = Event { seq: self.next_seq()?, at_ms, kind };
        let refused = |reason: String| Error::InvalidArgument { what: "event", reason };
        codec::check_event(&event, event.seq).map_err(refused)?;
        match &event.kind {
            EventKind::MessageAppended(m) => fold::check_message(&self.head, m, 0, usize::MAX)?,
            _ => fold::check_marker(&self.head, &event).map_err(refused)?,
        }
        fold::apply(&mut self.head, &event);
        let seq = event.seq;
        self.events.push(event);
        Ok(seq)
    }

    /// Makes the next event start at `first`, past the head: only an import into an empty session
    /// uses it, to restore a log that begins with a deletion. An event must be pushed next.
    pub(crate) fn start_at(&mut self, first: Seq) -> Result<(), Error> {
        if !self.events.is_empty() || first <= self.head.last_seq() || first > Seq::MAX {
            return Err(Error::InvalidArgument {
                what: "seq",
                reason: format!(
                    "a batch can only start past its head ({}) and at most at {}",
                    self.head.last_seq(),
                    Seq::MAX
                ),
            });
        }
        self.head.last_seq = Seq::new(first.get() - 1);
        Ok(())
    }

    /// Adds a write that goes in the same atomic batch (deletions, blobs, memory records).
    pub(crate) fn op(&mut self, op: Op) {
        self.ops.push(op);
    }
}

/// A handle on one session. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    engine: Engine,
    id: SessionId,
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The engine this handle belongs to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Appends one message; returns its seq once it is acknowledged (see `Durability`).
    /// A message with `created_at_ms == 0` is stamped with the append time.
    ///
    /// Cancel safety: dropping the future never leaves a partial write. Dropped while it waits for
    /// the session's lock or a place in the group-commit queue, nothing is written; once its batch
    /// is queued, the batch lands whole (or the engine is poisoned) and the session's lock is held
    /// until it has, so later writes see it. The caller then does not learn the seqs: read the
    /// session (`history`, `working_memory`) to find out whether it landed.
    pub async fn append(&self, message: Message) -> Result<Seq, Error> {
        let seqs = self.append_many(vec![message]).await?;
        Ok(seqs.start)
    }

    /// Appends messages atomically, in order: either all are stored or none. Returns the range
    /// from the first message's seq to just past the last one's. A user message that would pass
    /// `episodes.max_turns_per_episode` gets a `TurnCap` episode boundary written just before it
    /// in the same batch, so the range may include boundaries (and the first message may follow one).
    ///
    /// Cancel safety: dropping the future never leaves a partial write. Dropped while it waits for
    /// the session's lock or a place in the group-commit queue, nothing is written; once its batch
    /// is queued, the batch lands whole (or the engine is poisoned) and the session's lock is held
    /// until it has, so later writes see it. The caller then does not learn the seqs: read the
    /// session (`history`, `working_memory`) to find out whether it landed.
    pub async fn append_many(&self, mut messages: Vec<Message>) -> Result<std::ops::Range<Seq>, Error> {
        let limits = &self.engine.inner.config.limits;
        if messages.is_empty() || messages.len() as u64 > limits.max_batch_messages {
            return Err(Error::InvalidArgument {
                what: "batch size",
                reason: format!(
                    "{} messages; 1..={} (limits.max_batch_messages)",
                    messages.len(),
                    limits.max_batch_messages
                ),
            });
        }
        self.prepare_messages(&mut messages)?;
        let (mut first, mut boundaries) = (Seq::ZERO, Vec::new());
        let mut messages = Consumed::new(&self.engine, messages);
        let head = self
            .engine
            .write_events(&self.id, |batch| {
                boundaries.clear();
                self.push_messages(batch, messages.take()?, &mut boundaries, |idx, seq| {
                    if idx == 0 {
                        first = seq;
                    }
                })
            })
            .await?;
        if !boundaries.is_empty() {
            self.engine.inner.features.boundaries_landed(&self.engine, &self.id, &boundaries);
        }
        Ok(first..head.last_seq().next())
    }

    /// Validates `messages` against `limits` and stamps those without a creation time (one stamp
    /// for the batch). Runs before the session's lock is taken.
    pub(crate) fn prepare_messages(&self, messages: &mut [Message]) -> Result<(), Error> {
        let max_bytes = usize::try_from(self.engine.inner.config.limits.max_message_bytes).unwrap_or(usize::MAX);
        let stamp = now_ms();
        for (idx, m) in messages.iter_mut().enumerate() {
            m.validate(idx, max_bytes)?;
            if m.created_at_ms == 0 {
                m.created_at_ms = stamp;
            }
        }
        Ok(())
    }

    /// Pushes `messages` into `batch`, each checked against the head the earlier ones left. A user
    /// message that would pass `episodes.max_turns_per_episode` gets a `TurnCap` boundary just before
    /// it in the same batch (its seq goes into `boundaries`, for extraction once the batch landed).
    /// `on_seq(index, seq)` learns each message's seq.
    pub(crate) fn push_messages(
        &self,
        batch: &mut Batch,
        messages: Vec<Message>,
        boundaries: &mut Vec<Seq>,
        mut on_seq: impl FnMut(usize, Seq),
    ) -> Result<(), Error> {
        let config = &self.engine.inner.config;
        let max_open = usize::try_from(config.limits.max_open_tool_calls).unwrap_or(usize::MAX);
        let cap = config.episodes.max_turns_per_episode;
        for (idx, m) in messages.into_iter().enumerate() {
            fold::check_message(batch.head(), &m, idx, max_open)?;
            if m.role == Role::User && fold::turn_cap_reached(batch.head(), cap) {
                let episode = batch.head().episode();
                let at = batch.push(EventKind::EpisodeBoundary { episode, reason: BoundaryReason::TurnCap })?;
                self.engine.inner.features.boundary_pushed(&self.engine, batch, &self.id, at);
                boundaries.push(at);
            }
            on_seq(idx, batch.push(EventKind::MessageAppended(m))?);
        }
        Ok(())
    }

    /// The session's head (fold state), or `None` if it has no events.
    ///
    /// Cancel safety: cancel safe; a read changes nothing, and dropping it loses nothing.
    pub async fn head(&self) -> Result<Option<Head>, Error> {
        // Other engines may write the session too: its cluster's head is the one to trust.
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine.inner.backend.nats() {
            return Ok(log.head(&self.id).await?.map(|(head, _)| head));
        }
        match self.engine.inner.caches.head(&self.id) {
            Some(head) => Ok(Some(head)),
            None => self.engine.store("reads")?.head(&self.id),
        }
    }

    /// The current working memory: the latest summary plus the last `limit` messages after it
    /// (oldest first). Costs one head read, one blob read and range reads of about `limit` events,
    /// whatever the session's length. A session with no events, or deleted, is [`Error::NotFound`].
    /// Every lookup comes from one snapshot, so a concurrent write cannot tear the answer.
    ///
    /// Cancel safety: cancel safe; a read changes nothing, and dropping it loses nothing.
    pub async fn working_memory(&self, limit: usize) -> Result<WorkingMemory, Error> {
        self.engine.check_read_limit(limit)?;
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine.inner.backend.nats() {
            return self.working_memory_nats(log, limit).await;
        }
        let caches = &self.engine.inner.caches;
        // The agent loop's read: the head of the last committed write and the window kept for it.
        if let Some((last_seq, deleted)) = caches.last_seq(&self.id) {
            if deleted {
                return Err(self.not_found());
            }
            if let Some(memory) = caches.window(&self.id, limit, last_seq) {
                return Ok(memory);
            }
        }
        let view = self.engine.store("reads")?.view();
        let head = self.live_head(&view)?;
        if let Some(memory) = caches.window(&self.id, limit, head.last_seq()) {
            return Ok(memory);
        }
        let summary = match head.splice() {
            Some(s) => Some(self.summary(&view, s.upto, &s.summary_hash)?),
            None => None,
        };
        let last = self.last_messages_at_head(&view, &head, limit)?;
        Ok(self.memory_at_head(&head, limit, summary, last, true))
    }

    /// The working memory at `head` from its summary and the last (up to) `limit` messages after
    /// it, before the window rule; with `offer`, also offered to the window cache.
    pub(crate) fn memory_at_head(
        &self,
        head: &Head,
        limit: usize,
        summary: Option<Summary>,
        last: Vec<view::StoredMessage>,
        offer: bool,
    ) -> WorkingMemory {
        let caches = &self.engine.inner.caches;
        if offer && caches.windows_enabled() {
            caches.offer_window(&self.id, limit, head.last_seq(), head.n_messages(), summary.as_ref(), &last);
        }
        WorkingMemory {
            session: self.id.clone(),
            last_seq: head.last_seq(),
            n_messages: Some(head.n_messages()),
            summary,
            messages: view::window(last, limit),
        }
    }

    /// The working memory as it was right after event `at` (time travel). `n_messages` is `None`
    /// for a past seq: counting would walk the log. `last_seq` is `at` exactly; seqs at or before the
    /// latest deletion are refused.
    ///
    /// Cancel safety: cancel safe; a read changes nothing, and dropping it loses nothing.
    pub async fn working_memory_at(&self, at: Seq, limit: usize) -> Result<WorkingMemory, Error> {
        self.engine.check_read_limit(limit)?;
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine.inner.backend.nats() {
            return self.working_memory_at_nats(log, at, limit).await;
        }
        let view = self.engine.store("reads")?.view();
        let head = self.live_head(&view)?;
        check_travel(&head, at)?;
        if at == head.last_seq() {
            // The head is the fold up to `at`: no index lookup, and the message count is known.
            let summary = match head.splice() {
                Some(s) => Some(self.summary(&view, s.upto, &s.summary_hash)?),
                None => None,
            };
            let messages = self.window(&view, head.upto().max(head.base()), at, limit)?;
            let n_messages = Some(head.n_messages());
            return Ok(WorkingMemory { session: self.id.clone(), last_seq: at, n_messages, summary, messages });
        }
        // Splices below the latest deletion are dead (their index entries may not be purged yet).
        let first = keys::seq_key(&self.id, head.base());
        let latest = view.scan_rev(Ks::Splices, &first, &keys::seq_key(&self.id, at), 1)?;
        let splice = match latest.first().and_then(|(k, _)| keys::parse_seq_key(k)) {
            Some((_, splice_seq)) => match view.event(&self.id, splice_seq)?.map(|e| e.kind) {
                Some(EventKind::CompactionSpliced(s)) => Some(s),
                _ => {
                    return Err(Error::Corrupt {
                        session: Some(self.id.to_string()),
                        seq: Some(splice_seq.get()),
                        detail: "the splice index names an event that is not a splice".to_string(),
                    });
                }
            },
            None => None,
        };
        let summary = match &splice {
            Some(s) => Some(self.summary(&view, s.upto, &s.summary_hash)?),
            None => None,
        };
        let lower = splice.as_ref().map_or(Seq::ZERO, |s| s.upto).max(head.base());
        let messages = self.window(&view, lower, at, limit)?;
        Ok(WorkingMemory { session: self.id.clone(), last_seq: at, n_messages: None, summary, messages })
    }

    /// Events with seq in `[from, from + limit)`, all kinds, in order. Compacted messages are
    /// still here: compaction hides them from working memory only. Events before the latest deletion
    /// are not (history starts at the deletion event).
    ///
    /// Cancel safety: cancel safe; a read changes nothing, and dropping it loses nothing.
    pub async fn history(&self, from: Seq, limit: usize) -> Result<Vec<Event>, Error> {
        self.engine.check_read_limit(limit)?;
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine.inner.backend.nats() {
            return self
                .read_nats(log, false, |view| async move {
                    match history_range(&view.head, from, limit) {
                        Some((from, to)) => view.events(&self.id, from, to, limit).await,
                        None => Ok(Vec::new()),
                    }
                })
                .await;
        }
        let view = self.engine.store("reads")?.view();
        let head = view.head(&self.id)?.ok_or_else(|| self.not_found())?;
        match history_range(&head, from, limit) {
            Some((from, to)) => view.events(&self.id, from, to, limit),
            None => Ok(Vec::new()),
        }
    }

    /// Deletes the session. One small batch records the deletion whatever the session's length: the
    /// `SessionDeleted` event (so audit sees it), the head, and a purge marker. From then on the
    /// session reads as not found and its earlier events are dead; a background thread removes them
    /// in bounded chunks (see SPEC.md section 5, "Deletion"). Appending afterwards starts the session
    /// afresh (numbering continues). Summary blobs become orphans for `gc`. Returns the deletion's seq.
    ///
    /// Cancel safety: dropping the future before the deletion is queued deletes nothing; after, the
    /// deletion lands (and its purge then waits for the next open, which resumes it from the marker).
    pub async fn delete(&self) -> Result<Seq, Error> {
        self.delete_if(None).await
    }

    /// [`Session::delete`], and with `expect_last_seq` only if the session's last seq is still that
    /// (checked under the session's lock; [`Error::Conflict`] otherwise, and nothing is written).
    pub(crate) async fn delete_if(&self, expect_last_seq: Option<Seq>) -> Result<Seq, Error> {
        let id = &self.id;
        let head = self
            .engine
            .write_events(id, |batch| {
                let head = batch.head();
                if let Some(expected) = expect_last_seq.filter(|e| *e != head.last_seq()) {
                    return Err(Error::Conflict {
                        session: id.to_string(),
                        expected: expected.get(),
                        found: Some(head.last_seq().get()),
                    });
                }
                if head.last_seq() == Seq::ZERO || head.is_deleted() {
                    return Err(Error::NotFound { session: id.to_string() });
                }
                // The events still stored: from the log's start (the previous deletion, itself
                // one, or seq 1) to the last, the events before a messages reset included.
                let start = head.log_start();
                let n_events_removed = head.last_seq().get() - start.get() + u64::from(start > Seq::ZERO);
                batch.push(EventKind::SessionDeleted { n_events_removed })?;
                batch.purge_dead_events();
                Ok(())
            })
            .await?;
        let base = head.last_seq();
        if let Some(purger) = self.engine.inner.backend.purger() {
            purger.enqueue(purge::Job { session: id.clone(), base });
        }
        Ok(base)
    }

    fn not_found(&self) -> Error {
        Error::NotFound { session: self.id.to_string() }
    }

    /// The head in `view`, unless the session has no events or is deleted ([`Error::NotFound`]).
    pub(crate) fn live_head(&self, view: &View<'_>) -> Result<Head, Error> {
        match view.head(&self.id)? {
            Some(head) if !head.is_deleted() => Ok(head),
            _ => Err(self.not_found()),
        }
    }

    /// The summary a splice up to `upto` names, from `view`; a missing blob is corrupt.
    pub(crate) fn summary(
        &self,
        view: &View<'_>,
        upto: Seq,
        hash: &crate::log::ids::SummaryHash,
    ) -> Result<Summary, Error> {
        let text = view.blob(hash)?.ok_or_else(|| self.missing_blob(upto, hash))?;
        Ok(Summary { upto, hash: *hash, text })
    }

    /// The error for a splice up to `upto` whose summary blob `hash` is not stored.
    fn missing_blob(&self, upto: Seq, hash: &crate::log::ids::SummaryHash) -> Error {
        Error::Corrupt {
            session: Some(self.id.to_string()),
            seq: None,
            detail: format!("summary blob {hash} (splice up to {upto}) is missing"),
        }
    }

    /// The last `limit` messages with seq in `(lower, end]`, after the window rule.
    fn window(&self, view: &View<'_>, lower: Seq, end: Seq, limit: usize) -> Result<Vec<view::StoredMessage>, Error> {
        Ok(view::window(self.last_messages(view, lower, end, limit)?, limit))
    }

    /// The last (up to) `n` messages with seq in `(lower, end]`, oldest first. Reads forward from
    /// `end - n + 1` (forward scans beat reverse ones in fjall's memtable) and pages back only
    /// when non-message events took some of the range, so the cost is O(n), not O(session).
    pub(crate) fn last_messages(
        &self,
        view: &View<'_>,
        lower: Seq,
        end: Seq,
        n: usize,
    ) -> Result<Vec<view::StoredMessage>, Error> {
        self.read_pages(view, LastMessages::new(lower, end, n))
    }

    /// [`Session::last_messages`] after `head`'s summary and base, up to its last event: the first
    /// range read takes no more slack than `head` allows non-message events there. Its events since
    /// its base are `last_seq - base`, of which `n_messages` are messages, so a session with none
    /// reads exactly its window.
    fn last_messages_at_head(&self, view: &View<'_>, head: &Head, n: usize) -> Result<Vec<view::StoredMessage>, Error> {
        let events = head.last_seq().get().saturating_sub(head.base().get());
        let pager = LastMessages::new(head.upto().max(head.base()), head.last_seq(), n)
            .non_messages_at_most(events.saturating_sub(head.n_messages()));
        self.read_pages(view, pager)
    }

    fn read_pages(&self, view: &View<'_>, mut pager: LastMessages) -> Result<Vec<view::StoredMessage>, Error> {
        while let Some((from, to)) = pager.next_range() {
            pager.add(view.events(&self.id, from, to, usize::MAX)?);
        }
        Ok(pager.finish())
    }
}

/// A session on JetStream as of one head read from its stream's leader (so other engines'
/// acknowledged writes are seen): the analog of fjall's snapshot [`View`]. Every read through it
/// stops at that head, so the parts of one answer agree, and none pays a head read of its own.
#[cfg(feature = "nats")]
pub(crate) struct NatsView<'a> {
    log: &'a crate::storage::nats::NatsLog,
    pub(crate) head: Head,
    pub(crate) version: crate::storage::nats::Version,
}

#[cfg(feature = "nats")]
impl NatsView<'_> {
    /// Up to `limit` events of `session` with `from <= seq <= to`, as of the view's head.
    pub(crate) async fn events(
        &self,
        session: &SessionId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        self.log.events_as_of(session, &self.head, self.version, from, to, limit).await
    }

    /// The head as it was right after event `seq` (at most the view's head).
    async fn head_at(&self, session: &SessionId, seq: Seq) -> Result<Head, Error> {
        self.log.head_at_as_of(session, self.head.clone(), self.version, seq).await
    }
}

/// The JetStream reads of a session: the same answers as fjall's, each from the cluster.
#[cfg(feature = "nats")]
impl Session {
    /// The session as of its head on the stream's leader: [`Error::NotFound`] when it has no
    /// records, or (with `live`) when it is deleted.
    pub(crate) async fn nats_view<'a>(
        &self,
        log: &'a crate::storage::nats::NatsLog,
        live: bool,
    ) -> Result<NatsView<'a>, Error> {
        match log.head(&self.id).await? {
            Some((head, version)) if !(live && head.is_deleted()) => Ok(NatsView { log, head, version }),
            _ => Err(self.not_found()),
        }
    }

    /// Runs `read` on a view of the session (as [`Session::nats_view`]), and again on a fresh
    /// view when it fails and a deletion has landed since the view was taken: a read pages
    /// through the records below the head it took, and a deletion purges them (a stream keeps no
    /// snapshot), so such a read meets missing events. It then answers as of the fresh head (not
    /// found, or the session started afresh), as fjall's snapshot reads answer as of one state.
    /// Any other failure is the read's answer. At most [`MAX_VIEW_READS`] views; past that the
    /// error is [`Error::Conflict`].
    pub(crate) async fn read_nats<'a, T, F, Fut>(
        &self,
        log: &'a crate::storage::nats::NatsLog,
        live: bool,
        read: F,
    ) -> Result<T, Error>
    where
        F: Fn(NatsView<'a>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut views = 0;
        loop {
            let view = self.nats_view(log, live).await?;
            let (start, version) = (view.head.log_start(), view.version);
            views += 1;
            match read(view).await {
                Ok(answer) => return Ok(answer),
                Err(e) => match self.deleted_since(log, start, version, e).await {
                    Error::Conflict { .. } if views < MAX_VIEW_READS => {
                        tracing::debug!(session = %self.id, views, "a read met a deletion's purge; reading again");
                    }
                    e => return Err(e),
                },
            }
        }
    }

    /// `e`, the error of a read made as of the session at `version` (its log starting at `start`);
    /// [`Error::Conflict`] instead when a deletion has landed since, which purges what such a
    /// read pages through (see [`Session::read_nats`]).
    pub(crate) async fn deleted_since(
        &self,
        log: &crate::storage::nats::NatsLog,
        start: Seq,
        version: crate::storage::nats::Version,
        e: Error,
    ) -> Error {
        match log.head(&self.id).await {
            Ok(Some((now, found))) if now.log_start() > start => {
                Error::Conflict { session: self.id.to_string(), expected: version.get(), found: Some(found.get()) }
            }
            _ => e,
        }
    }

    /// The summary a splice up to `upto` names; a missing blob is corrupt (as [`Session::summary`]).
    pub(crate) async fn summary_nats(
        &self,
        view: &NatsView<'_>,
        upto: Seq,
        hash: &crate::log::ids::SummaryHash,
    ) -> Result<Summary, Error> {
        let text = view.log.blob(hash).await?.ok_or_else(|| self.missing_blob(upto, hash))?;
        Ok(Summary { upto, hash: *hash, text })
    }

    /// The summary of the view's head, if it has a splice.
    pub(crate) async fn head_summary_nats(&self, view: &NatsView<'_>, head: &Head) -> Result<Option<Summary>, Error> {
        match head.splice() {
            Some(s) => Ok(Some(self.summary_nats(view, s.upto, &s.summary_hash).await?)),
            None => Ok(None),
        }
    }

    /// [`Session::last_messages`] through `view`.
    pub(crate) async fn last_messages_nats(
        &self,
        view: &NatsView<'_>,
        lower: Seq,
        end: Seq,
        n: usize,
    ) -> Result<Vec<view::StoredMessage>, Error> {
        let mut pager = LastMessages::new(lower, end, n);
        while let Some((from, to)) = pager.next_range() {
            pager.add(view.events(&self.id, from, to, usize::MAX).await?);
        }
        Ok(pager.finish())
    }

    async fn working_memory_nats(
        &self,
        log: &crate::storage::nats::NatsLog,
        limit: usize,
    ) -> Result<WorkingMemory, Error> {
        self.read_nats(log, true, |view| async move {
            let head = &view.head;
            if let Some(memory) = self.engine.inner.caches.window(&self.id, limit, head.last_seq()) {
                return Ok(memory);
            }
            let summary = self.head_summary_nats(&view, head).await?;
            let last = self.last_messages_nats(&view, head.upto().max(head.base()), head.last_seq(), limit).await?;
            Ok(self.memory_at_head(head, limit, summary, last, true))
        })
        .await
    }

    async fn working_memory_at_nats(
        &self,
        log: &crate::storage::nats::NatsLog,
        at: Seq,
        limit: usize,
    ) -> Result<WorkingMemory, Error> {
        self.read_nats(log, true, |view| async move {
            check_travel(&view.head, at)?;
            // As on fjall, the message count is given only at the head (elsewhere it is not kept).
            let (then, n_messages) = if at == view.head.last_seq() {
                (view.head.clone(), Some(view.head.n_messages()))
            } else {
                (view.head_at(&self.id, at).await?, None)
            };
            let summary = self.head_summary_nats(&view, &then).await?;
            let lower = then.upto().max(then.base());
            let messages = view::window(self.last_messages_nats(&view, lower, at, limit).await?, limit);
            Ok(WorkingMemory { session: self.id.clone(), last_seq: at, n_messages, summary, messages })
        })
        .await
    }
}

/// Refuses time travel to a seq outside the session's log as `head` holds it.
fn check_travel(head: &Head, at: Seq) -> Result<(), Error> {
    if at > head.last_seq() || at <= head.base() {
        return Err(Error::InvalidArgument {
            what: "seq",
            reason: format!("{at} is outside the session's log ({}..={})", head.base().next(), head.last_seq()),
        });
    }
    Ok(())
}

/// The seqs `history(from, limit)` reads given the session's head: from the latest deletion on
/// (events below it are dead), at most `limit`; `None` when there is nothing to read.
fn history_range(head: &Head, from: Seq, limit: usize) -> Option<(Seq, Seq)> {
    let from = from.max(head.base()).max(Seq::new(1));
    if limit == 0 || from > head.last_seq() {
        return None;
    }
    Some((from, Seq::new(from.get().saturating_add(limit as u64 - 1).min(head.last_seq().get()))))
}

/// The range reads of the last (up to) `n` messages with seq in `(lower, end]`, on any backend:
/// forward reads from `end - n + 1` (forward scans beat reverse ones in fjall's memtable), paging
/// back only when non-message events took some of the range, so the cost is O(n), not O(session).
struct LastMessages {
    lower: u64,
    end: u64,
    n: usize,
    got: usize,
    span: u64,
    /// At most this many events of the range are not messages (`u64::MAX`: unknown).
    non_messages: u64,
    pages: Vec<Vec<view::StoredMessage>>,
}

impl LastMessages {
    fn new(lower: Seq, end: Seq, n: usize) -> Self {
        Self { lower: lower.get(), end: end.get(), n, got: 0, span: 0, non_messages: u64::MAX, pages: Vec::new() }
    }

    /// Known: at most `k` events of the range are not messages, so the first read's slack need
    /// not be larger. A wrong bound (a damaged log) only costs another page, never an answer.
    fn non_messages_at_most(mut self, k: u64) -> Self {
        self.non_messages = k;
        self
    }

    /// The next range to read (newest first), or `None` when enough messages are in.
    fn next_range(&mut self) -> Option<(Seq, Seq)> {
        if self.got >= self.n || self.end <= self.lower {
            return None;
        }
        let need = (self.n - self.got) as u64;
        // The first read is the window plus a little slack; later ones make up for non-message
        // events beyond it, at least doubling each time, so a long run of other events (or a
        // seq gap in a damaged log) costs a logarithmic number of reads, not one per 16 seqs.
        self.span = if self.span == 0 {
            need + (need / 16 * WINDOW_SLACK_PER_16 + 2).min(self.non_messages)
        } else {
            need.max(MIN_WINDOW_PAGE).max(self.span.saturating_mul(2))
        };
        let start = self.end.saturating_sub(self.span - 1).max(self.lower + 1);
        let range = (Seq::new(start), Seq::new(self.end));
        self.end = start - 1;
        Some(range)
    }

    /// The events the last range read.
    fn add(&mut self, events: Vec<Event>) {
        let mut page = Vec::with_capacity(events.len());
        page.extend(view::messages_of(events));
        self.got += page.len();
        if !page.is_empty() {
            self.pages.push(page);
        }
    }

    /// The last `n` messages read, oldest first.
    fn finish(mut self) -> Vec<view::StoredMessage> {
        // One page (the usual case): it is the answer as is, not copied into a new vector.
        let mut all: Vec<_> = match self.pages.len() {
            1 => self.pages.pop().unwrap_or_default(),
            _ => self.pages.into_iter().rev().flatten().collect(),
        };
        if all.len() > self.n {
            all.drain(..all.len() - self.n);
        }
        all
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{BoundaryReason, EventKind, Message};

    /// Runs the pager over `log` (seqs 1..) as the range reads would, and returns what it found
    /// and the size of its first read.
    fn page(log: &[Event], n: usize, non_messages: u64) -> (Vec<u64>, u64) {
        let end = Seq::new(log.len() as u64);
        let mut pager = LastMessages::new(Seq::ZERO, end, n).non_messages_at_most(non_messages);
        let mut first = None;
        while let Some((from, to)) = pager.next_range() {
            first.get_or_insert(to.get() - from.get() + 1);
            pager.add(log[from.get() as usize - 1..to.get() as usize].to_vec());
        }
        (pager.finish().iter().map(|m| m.seq.get()).collect(), first.unwrap_or(0))
    }

    #[test]
    fn a_known_bound_on_non_messages_trims_the_first_read_and_a_wrong_one_still_finds_every_message() {
        let event = |seq: u64| Event {
            seq: Seq::new(seq),
            at_ms: 0,
            kind: if seq.is_multiple_of(10) {
                EventKind::EpisodeBoundary { episode: seq / 10 - 1, reason: BoundaryReason::TurnCap }
            } else {
                EventKind::MessageAppended(Message::user("m"))
            },
        };
        let log: Vec<Event> = (1..=100).map(event).collect();
        let want: Vec<u64> = (1..=100u64).filter(|s| !s.is_multiple_of(10)).skip(90 - 50).collect();
        // Unknown bound: the window plus the default slack.
        assert_eq!(page(&log, 50, u64::MAX), (want.clone(), 55));
        // The true bound (10 boundaries) is larger than the slack: the same reads.
        assert_eq!(page(&log, 50, 10), (want.clone(), 55));
        // A wrong bound (a damaged head) costs more reads, never a message.
        assert_eq!(page(&log, 50, 0), (want, 50));
        // No non-message events: exactly the window.
        let messages: Vec<Event> =
            (1..=100).map(|seq| Event { kind: EventKind::MessageAppended(Message::user("m")), ..event(seq) }).collect();
        assert_eq!(page(&messages, 50, 0), ((51..=100).collect(), 50));
    }
}
