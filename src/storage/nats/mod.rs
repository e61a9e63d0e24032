//! The NATS JetStream backend (cargo feature `nats`): session logs on a replicated cluster.
//! SPEC.md, "The JetStream backend", is the contract; this module is its one implementation.
//!
//! - `names`: streams, subjects and the injective encoding of session ids (pure).
//! - `record`: the body of one message, one engine commit of one session (pure).
//! - `read`: the reads (head, forward events, the newest-first window, time travel, listing).
//! - `blobs`: summary blobs and what orphan collection needs of them.
//! - `memories`: memory records (created once) and extraction markers on the meta stream.
//! - here: connecting (with the config, durability and replica checks), the conditional append
//!   with its bounded retries, deletion, and the raw memory reader and writer for tools.
//!
//! The API is shaped like the engine's needs, not like a key-value store: a session's version is
//! the stream sequence of its last record, and an append names the version it was built on.

mod blobs;
mod chunked;
mod memories;
mod names;
mod read;
mod record;

pub use blobs::MAX_LISTED_BLOBS;
pub use read::{BATCH_RECORDS, MAX_LISTED_SESSIONS};

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio::time::Instant;

use crate::config::{Durability, NatsConfig};
use crate::error::Error;
use crate::log::event::{Event, EventKind};
use crate::log::fold::Head;
use crate::log::ids::SessionId;

use names::Names;

/// Most pending deletions finished at connect; more are finished by later connects (each is
/// idempotent), so a backlog cannot stall an open.
pub const MAX_RESUMED_DELETIONS: usize = 1_000;

/// The deduplication window of every stream: at least this, and at least the write timeout, so a
/// retry of an ambiguous publish always falls inside the window of the first attempt.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// First wait between two attempts of one publish; doubled each time up to [`MAX_RETRY_WAIT`],
/// with full jitter.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(50);
/// Longest wait between two attempts of one publish.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);

/// Room left in a message for its headers (id, version check, batch headers: under 300 bytes).
const HEADER_ALLOWANCE: usize = 1_024;
/// Least share of a record per message, whatever the server's `max_payload` says.
const MIN_MESSAGE: usize = 1_024;

/// A session's version: the stream sequence of its last record, [`Version::NONE`] before the first.
/// An append names the version it was built on and is refused (storing nothing) if the session
/// has moved on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u64);

impl Version {
    /// The version of a session without records.
    pub const NONE: Version = Version(0);

    /// The stream sequence (0 for [`Version::NONE`]).
    pub fn get(self) -> u64 {
        self.0
    }

    /// The version a [`Version::get`] returned (the engine's head cache keeps it as a number).
    pub(crate) const fn at(sequence: u64) -> Version {
        Version(sequence)
    }
}

/// A connection to the cluster holding one database's streams.
pub struct NatsLog {
    client: async_nats::Client,
    /// Publishing, with the per-attempt acknowledgement wait.
    publisher: jetstream::Context,
    names: Names,
    sessions: Vec<stream::Stream>,
    meta: stream::Stream,
    write_timeout: Duration,
    write_attempts: u32,
    read_timeout: Duration,
    /// Read every message from its stream's leader instead of by direct get (see
    /// [`NatsLog::with_leader_reads`]).
    leader_reads: bool,
    /// Random per connection: part of every commit's message id (`commit_id`).
    nonce: u128,
    /// Largest record published as one message: the server's `max_payload` less room for the
    /// headers. A larger one goes out in chunks, as one atomic batch (`chunked`).
    max_message: usize,
    /// Injected faults (feature `testing`): `FaultPoint::Commit` refuses an append before anything
    /// is published.
    #[cfg(feature = "testing")]
    pub(crate) faults: crate::testing::Faults,
}

impl std::fmt::Debug for NatsLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLog").field("names", &self.names).finish_non_exhaustive()
    }
}

impl NatsLog {
    /// Connects, checks the servers against `durability`, creates the streams that are missing,
    /// checks those that exist, and finishes up to [`MAX_RESUMED_DELETIONS`] interrupted deletions.
    ///
    /// Fails with [`Error::InvalidConfig`] for a bad value, for `sync` durability against a server
    /// that does not fsync every write (or without `monitor_urls` and without
    /// `sync_always_acknowledged`), and for an existing stream with fewer replicas than
    /// configured; [`Error::Timeout`] when no server answers within the connect bound; and
    /// [`Error::Storage`] when a server refuses the connection (wrong credentials among others).
    ///
    /// Cancel safety: dropping the future leaves at most some streams created, which the next
    /// connect finds and checks.
    pub async fn connect(cfg: &NatsConfig, durability: Durability) -> Result<Self, Error> {
        cfg.validate()?;
        if durability == Durability::Sync {
            check_sync_always(cfg).await?;
        }
        let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let read_timeout = Duration::from_millis(cfg.read_timeout_ms);
        let mut options = async_nats::ConnectOptions::new()
            .name("palimpsest")
            .connection_timeout(connect_timeout)
            .request_timeout(Some(read_timeout))
            // A server that stops answering without closing the connection (a frozen process, a
            // cut network) is noticed after two unanswered pings, and the client moves to
            // another server; the default interval (60 s) would stall writes far past the
            // write timeout.
            .ping_interval(read_timeout);
        if let Some(token) = &cfg.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &cfg.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| Error::InvalidConfig {
                field: "storage.nats.credentials_file".to_string(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
        }
        let mut addrs = Vec::with_capacity(cfg.urls.len());
        for url in &cfg.urls {
            let addr: async_nats::ServerAddr = url.parse().map_err(|e| Error::InvalidConfig {
                field: "storage.nats.urls".to_string(),
                reason: format!("{url:?} is not a NATS server URL: {e}"),
            })?;
            addrs.push(addr);
        }
        // The client tries each server once, each within the connect timeout; the outer bound
        // covers all of them plus the handshake.
        let bound = connect_timeout.saturating_mul(u32::try_from(addrs.len() + 1).unwrap_or(u32::MAX));
        let client = tokio::time::timeout(bound, options.connect(addrs))
            .await
            .map_err(|_| Error::Timeout { what: "a NATS server to accept the connection", after_ms: millis(bound) })?
            .map_err(|e| Error::storage("connect to the NATS servers", e))?;

        let max_message = client.server_info().max_payload.saturating_sub(HEADER_ALLOWANCE).max(MIN_MESSAGE);
        let mut js = jetstream::new(client.clone());
        js.set_timeout(read_timeout);
        let mut publisher = jetstream::new(client.clone());
        publisher.set_timeout(read_timeout);

        let names = Names::new(&cfg.stream_prefix, cfg.streams);
        let write_timeout = Duration::from_millis(cfg.write_timeout_ms);
        let duplicate_window = write_timeout.max(MIN_DUPLICATE_WINDOW);
        let replicas = usize::try_from(cfg.replicas).unwrap_or(usize::MAX);
        // Making the streams goes through the cluster's meta group, which may be electing: allowed
        // as long as a write (`write_timeout_ms`, above the election window).
        let streams_deadline = Instant::now() + write_timeout;
        let mut sessions = Vec::new();
        for index in 0..names.streams() {
            let config = stream::Config {
                name: names.stream(index),
                subjects: vec![names.stream_subjects(index)],
                num_replicas: replicas,
                allow_direct: true,
                // Records larger than one message are atomic batches of chunks.
                allow_atomic_publish: true,
                duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            sessions.push(ensure_stream(&js, config, streams_deadline).await?);
        }
        // The stream count decides where a session lives: a database made with more streams
        // must not be opened with fewer (its sessions would seem to vanish).
        let next = names.stream(names.streams());
        if js.get_stream(&next).await.is_ok() {
            return Err(Error::InvalidConfig {
                field: "storage.nats.streams".to_string(),
                reason: format!(
                    "stream {next} exists, so this database has more than the {} configured streams",
                    names.streams()
                ),
            });
        }
        let meta = ensure_stream(
            &js,
            stream::Config {
                name: names.meta_stream(),
                subjects: vec![names.meta_subjects()],
                num_replicas: replicas,
                allow_direct: true,
                duplicate_window,
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            },
            streams_deadline,
        )
        .await?;

        let log = Self {
            client,
            publisher,
            names,
            sessions,
            meta,
            write_timeout,
            write_attempts: u32::try_from(cfg.write_attempts).unwrap_or(u32::MAX),
            read_timeout,
            leader_reads: false,
            nonce: fastrand::u128(..),
            max_message,
            #[cfg(feature = "testing")]
            faults: crate::testing::Faults::default(),
        };
        log.resume_deletions().await?;
        Ok(log)
    }

    /// Reads every message from its stream's leader, never by direct get: slower (no batches, the
    /// leader answers all), but each read shows exactly what the leader holds, which is what a
    /// check of one node's copy needs (make that node the leader, then read).
    pub fn with_leader_reads(mut self) -> Self {
        self.leader_reads = true;
        self
    }

    /// Appends one commit of `session`: `events` (dense, in order) and the `head` after them, as
    /// one message (or, above the server's `max_payload`, one atomic batch of chunks), only if the
    /// session is still at `expected`. Returns the new version.
    ///
    /// A commit that carries a `SessionDeleted` event is a deletion: a marker is written first,
    /// then this record (the tombstone), then every earlier record of the session is purged and
    /// the marker removed; a connect finishes a deletion interrupted between those steps. A later
    /// commit on the deleted session (an imported memory marker) keeps its head deleted but is no
    /// deletion: it must not purge the tombstone before it.
    ///
    /// Errors: [`Error::Conflict`] when the session is not at `expected` (nothing was stored);
    /// [`Error::Timeout`] when no attempt was acknowledged within `write_timeout_ms` and
    /// `write_attempts` (the outcome is unknown); [`Error::Storage`] for a refusal that retrying
    /// cannot fix (the servers refusing an atomic batch). After `Timeout` (or a `Storage`
    /// error from the connection, or from learning a refused publish's outcome), call again with
    /// the same `expected`, `events` and `head`: the commit carries the same message id, so if the
    /// first call stored it the server answers with that record's version and does not store it
    /// again (within the duplicate window; past it, or under a new leader, the record right after
    /// `expected` is found to carry the id, even with other writers' records on top), and if it
    /// did not, this call stores it; a `Conflict` then means it was not stored. This needs no read,
    /// which matters because right after a leader change a deposed leader may still answer reads
    /// with an older head for some seconds.
    ///
    /// Cancel safety: not cancel safe in the sense that a dropped future may leave the record
    /// stored (it was handed to the server); it is never stored twice, and the session's head
    /// tells which happened.
    pub async fn append(
        &self,
        session: &SessionId,
        expected: Version,
        events: &[Event],
        head: &Head,
    ) -> Result<Version, Error> {
        self.append_until(session, expected, events, head, true).await
    }

    /// [`NatsLog::append`]; a deletion finishes with its purge only when `purge` (tests stop before it).
    async fn append_until(
        &self,
        session: &SessionId,
        expected: Version,
        events: &[Event],
        head: &Head,
        purge: bool,
    ) -> Result<Version, Error> {
        #[cfg(feature = "testing")]
        self.faults.check(crate::testing::FaultPoint::Commit)?;
        let payload = Bytes::from(record::encode(expected.0, events, head)?);
        let (stream_name, subject) = self.names.session(session);
        let deleting = is_deletion(events);
        if deleting {
            self.publish(&self.names.deletion(session), None, &message_id(), Bytes::new()).await?;
        }
        let (version, first) = match self.append_record(session, &subject, expected, payload).await {
            Ok(stored) => stored,
            Err(e) => {
                if deleting && matches!(e, Error::Conflict { .. }) {
                    // The tombstone was refused, so the marker marks nothing; a connect would
                    // remove it too, this only saves it the work.
                    let _ = self.meta.purge().filter(self.names.deletion(session)).await;
                }
                return Err(e);
            }
        };
        if deleting && purge {
            self.finish_deletion(session, &stream_name, &subject, first).await?;
        }
        Ok(version)
    }

    /// The connection itself (figures that compare this backend with raw publishing on the same
    /// connection).
    #[cfg(feature = "testing")]
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// A deletion that stops where a crash between its tombstone and its purge would: the marker
    /// and the tombstone are written, nothing is purged (tests of the resume at connect).
    #[cfg(feature = "testing")]
    pub async fn append_stopping_before_purge(
        &self,
        session: &SessionId,
        expected: Version,
        events: &[Event],
        head: &Head,
    ) -> Result<Version, Error> {
        assert!(is_deletion(events), "only a deletion has a purge to stop before");
        self.append_until(session, expected, events, head, false).await
    }

    /// The `Nats-Msg-Id` of a commit: blake3 of this connection's random nonce, the session, the
    /// expected version and the record's bytes, as 32 hex digits. The same commit appended again
    /// at the same version through this connection (the caller retrying after [`Error::Timeout`])
    /// carries the same id, so the server deduplicates it like an internal retry; another
    /// connection's commit never shares it, even with identical bytes.
    fn commit_id(&self, session: &SessionId, expected: Version, payload: &[u8]) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.nonce.to_be_bytes());
        hasher.update(&(session.as_str().len() as u64).to_be_bytes());
        hasher.update(session.as_str().as_bytes());
        hasher.update(&expected.0.to_be_bytes());
        hasher.update(payload);
        hasher.finalize().to_hex()[..32].to_string()
    }

    /// Publishes one record with the version check, retrying an ambiguous outcome with the same
    /// message id. Returns its version and the stream sequence of its first message (the same for
    /// a record of one message; a large record's chunks sit at consecutive sequences).
    async fn append_record(
        &self,
        session: &SessionId,
        subject: &str,
        expected: Version,
        payload: Bytes,
    ) -> Result<(Version, u64), Error> {
        let id = self.commit_id(session, expected, &payload);
        let chunks: Vec<Bytes>;
        let messages = if payload.len() <= self.max_message {
            std::slice::from_ref(&payload)
        } else {
            chunks = record::split(&payload, self.max_message)?.into_iter().map(Bytes::from).collect();
            chunks.as_slice()
        };
        let stored = |last: u64| (Version(last), last + 1 - messages.len() as u64);
        match self.publish_all(subject, Some(expected), &id, messages).await {
            Ok(Published::Stored(seq)) => Ok(stored(seq)),
            Ok(Published::WrongLast { found }) => {
                // The session moved, perhaps by this very commit: an earlier attempt (in this call, or
                // a caller's retry after a `Timeout`) may have been stored where the server no longer
                // answers it as a duplicate (a new leader after a frozen one, or past the window),
                // and other writers may have appended after it since. The version check stores this
                // commit only right after `expected`, so the record there tells: ours if its first
                // message carries our id, else this commit was refused for good. Not the session's
                // last record: with another writer's on top, a stored commit would be taken for a
                // refused one and built again (its messages stored twice).
                match self.record_after(session, expected).await? {
                    Some(next) => {
                        let ours =
                            next.headers.get(async_nats::header::NATS_MESSAGE_ID).is_some_and(|v| v.as_str() == id);
                        if ours {
                            // A batch's messages are stored at consecutive sequences.
                            return Ok(stored(next.sequence + messages.len() as u64 - 1));
                        }
                        Err(Error::Conflict { session: session.as_str().to_string(), expected: expected.0, found })
                    }
                    // "Wrong last sequence" with nothing after `expected`: the read was answered by a
                    // node that lags (a deposed leader), so whether this commit is stored is unknown.
                    None => Err(Error::storage(
                        "learn whether a refused JetStream publish was stored earlier",
                        "the leader refused the expected version but holds no record after it; outcome unknown",
                    )),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// One publish with bounded retries: at most `write_attempts` attempts within
    /// `write_timeout_ms`, each with the same `Nats-Msg-Id`, so an attempt whose first try was
    /// stored is acknowledged as a duplicate instead of stored again.
    async fn publish(
        &self,
        subject: &str,
        expected: Option<Version>,
        id: &str,
        payload: Bytes,
    ) -> Result<Published, Error> {
        self.publish_all(subject, expected, id, std::slice::from_ref(&payload)).await
    }

    /// [`NatsLog::publish`] of `messages` on `subject` as one unit: one message as it is, more as
    /// one atomic batch (all stored, at consecutive sequences, or none), with the id and the version
    /// check on its first message. A retried batch is a new batch with the same first message: if
    /// an earlier attempt was stored, the version check (or the id, within the duplicate window)
    /// refuses it, and the caller learns from the stored record that it was ours.
    async fn publish_all(
        &self,
        subject: &str,
        expected: Option<Version>,
        id: &str,
        messages: &[Bytes],
    ) -> Result<Published, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        if let Some(expected) = expected {
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.0.to_string().as_str());
        }
        let deadline = Instant::now() + self.write_timeout;
        let mut wait = FIRST_RETRY_WAIT;
        let mut last_error = String::new();
        for attempt in 0..self.write_attempts {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let outcome = tokio::time::timeout(left, self.attempt(subject, &headers, messages)).await;
            match outcome {
                Ok(Ok(ack)) => return Ok(Published::Stored(ack.sequence)),
                Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    let found = found_sequence(&e.to_string());
                    return Ok(Published::WrongLast { found });
                }
                Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    return Err(Error::storage("a JetStream publish (the record exceeds the server's max_payload)", e));
                }
                Ok(Err(e)) => match batch_refusal(&e) {
                    // An earlier attempt of this batch was stored (its id is known): as after a
                    // refused version check, the caller reads what is stored.
                    Some(BatchRefusal::Duplicate) => return Ok(Published::WrongLast { found: None }),
                    Some(BatchRefusal::Final) => {
                        return Err(Error::storage(
                            "an atomic batch publish (the stream or server refuses atomic batches of this size)",
                            e,
                        ));
                    }
                    // Anything else is ambiguous (a timeout, a broken connection, no responders
                    // during an election, a 503, a batch abandoned): the same id and the version
                    // check make a retry safe.
                    None => last_error = e.to_string(),
                },
                Err(_) => last_error = "no acknowledgement before the write timeout".to_string(),
            }
            tracing::debug!(subject, attempt, error = %last_error, "retrying an unacknowledged JetStream publish");
            let left = deadline.saturating_duration_since(Instant::now());
            let jittered = wait.mul_f64(fastrand::f64());
            tokio::time::sleep(jittered.min(left)).await;
            wait = (wait * 2).min(MAX_RETRY_WAIT);
        }
        tracing::warn!(subject, error = %last_error, "a JetStream publish stayed unacknowledged");
        Err(Error::Timeout {
            what: "a JetStream publish to be acknowledged (its outcome is unknown: re-read the session's head)",
            after_ms: millis(self.write_timeout),
        })
    }

    /// One attempt of [`NatsLog::publish_all`]: `first` are the first message's headers. The
    /// messages before the last of a batch go out without waiting for an answer; the server
    /// answers the last, which commits the batch, with the acknowledgement of all.
    async fn attempt(&self, subject: &str, first: &HeaderMap, messages: &[Bytes]) -> Result<PublishAck, PublishError> {
        if let [only] = messages {
            return self.publisher.publish_with_headers(subject.to_string(), first.clone(), only.clone()).await?.await;
        }
        let batch = message_id();
        let last = messages.len().saturating_sub(1);
        for (i, message) in messages.iter().enumerate() {
            let mut headers = if i == 0 { first.clone() } else { HeaderMap::new() };
            headers.insert(async_nats::header::NATS_BATCH_ID, batch.as_str());
            headers.insert(async_nats::header::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            if i == last {
                headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
                return self.publisher.publish_with_headers(subject.to_string(), headers, message.clone()).await?.await;
            }
            self.client
                .publish_with_headers(subject.to_string(), headers, message.clone())
                .await
                .map_err(|e| PublishError::with_source(PublishErrorKind::BrokenPipe, e))?;
        }
        Err(PublishError::new(PublishErrorKind::Other))
    }

    /// Purges `session`'s records before its tombstone, whose first message is at stream sequence
    /// `tombstone` (a tombstone too large for one message is chunks from there on, and they stay),
    /// and removes its marker. Idempotent: purging what is already gone purges nothing.
    async fn finish_deletion(
        &self,
        session: &SessionId,
        stream_name: &str,
        subject: &str,
        tombstone: u64,
    ) -> Result<(), Error> {
        let stream = self.session_stream(stream_name)?;
        stream
            .purge()
            .filter(subject)
            .sequence(tombstone)
            .await
            .map_err(|e| Error::storage("purge a deleted session's records", e))?;
        self.meta
            .purge()
            .filter(self.names.deletion(session))
            .await
            .map_err(|e| Error::storage("remove a finished deletion's marker", e))?;
        Ok(())
    }

    /// Finishes the deletions whose markers are still there: a session whose head is a tombstone
    /// is purged up to it; a marker whose tombstone never landed is just removed.
    async fn resume_deletions(&self) -> Result<(), Error> {
        let markers = self.scan(&self.meta, &self.names.deletions(), 1, MAX_RESUMED_DELETIONS).await?;
        for marker in markers {
            let session = self.names.session_of_deletion(marker.subject.as_str())?;
            let (stream_name, subject) = self.names.session(&session);
            let last = match self.last_record(&session).await? {
                Some(message) => Some(self.record_of(&session, &message).await?),
                None => None,
            };
            match last {
                Some(tombstone) if is_deletion(&tombstone.record.events) => {
                    self.finish_deletion(&session, &stream_name, &subject, tombstone.first).await?;
                }
                _ => {
                    self.meta
                        .purge()
                        .filter(marker.subject.as_str())
                        .await
                        .map_err(|e| Error::storage("remove an unused deletion marker", e))?;
                }
            }
        }
        Ok(())
    }

    /// Stores (or replaces) the memory `key` of `namespace`.
    ///
    /// Cancel safety: a dropped future may or may not have stored it.
    pub async fn put_memory(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), Error> {
        self.publish(&self.names.memory(namespace, key), None, &message_id(), Bytes::copy_from_slice(value)).await?;
        Ok(())
    }

    /// Up to `limit` memories of `namespace` as `(key, value)`, oldest write first. Read from the
    /// meta stream's leader, one request per memory: a memory [`NatsLog::put_memory`] just
    /// replaced reads back replaced, which a direct get (answered by any replica, possibly one
    /// that has not applied the write yet) does not promise.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn memories(&self, namespace: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let messages = self.scan_leader(&self.meta, &self.names.memories(namespace), 1, limit).await?;
        messages
            .into_iter()
            .map(|m| {
                let key = names::memory_key_of(m.subject.as_str()).ok_or_else(|| Error::Corrupt {
                    session: None,
                    seq: None,
                    detail: format!("memory subject {:?} does not decode", m.subject.as_str()),
                })?;
                Ok((key, m.payload.to_vec()))
            })
            .collect()
    }

    fn session_stream(&self, name: &str) -> Result<&stream::Stream, Error> {
        self.sessions.iter().find(|s| s.cached_info().config.name == name).ok_or_else(|| {
            // `names.session` only names streams made at connect.
            Error::storage("find a session stream", format!("stream {name} is not one of this database's"))
        })
    }
}

/// What a publish that got an answer learned.
enum Published {
    /// Stored (or found stored by an earlier attempt) at this stream sequence.
    Stored(u64),
    /// The subject's last sequence is not the expected one; nothing was stored by this attempt.
    WrongLast { found: Option<u64> },
}

/// Refusals of an atomic batch that are not ambiguous.
enum BatchRefusal {
    /// The batch holds a message id already stored: an earlier attempt of it was.
    Duplicate,
    /// Retrying cannot help (atomic batches disabled on the stream, too many messages, ...).
    Final,
}

/// What an error answering an atomic batch says, if it is one of its refusals.
fn batch_refusal(e: &PublishError) -> Option<BatchRefusal> {
    use async_nats::jetstream::ErrorCode;
    let code = std::error::Error::source(e)?.downcast_ref::<async_nats::jetstream::Error>()?.error_code();
    match code {
        ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE => Some(BatchRefusal::Duplicate),
        ErrorCode::ATOMIC_PUBLISH_DISABLED
        | ErrorCode::ATOMIC_PUBLISH_TOO_LARGE_BATCH
        | ErrorCode::ATOMIC_PUBLISH_UNSUPPORTED_HEADER
        | ErrorCode::ATOMIC_PUBLISH_INVALID_BATCH_ID
        | ErrorCode::ATOMIC_PUBLISH_INVALID_BATCH_COMMIT => Some(BatchRefusal::Final),
        _ => None,
    }
}

/// A fresh message id: 128 random bits in hex, unique across writers and processes.
fn message_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The sequence a "wrong last sequence: N (code 400, error code 10071)" error reports, if it does.
fn found_sequence(text: &str) -> Option<u64> {
    // The client's text repeats the server's ("wrong last sequence: wrong last sequence: 17 ..."):
    // the number follows the last occurrence.
    let (_, after) = text.rsplit_once("wrong last sequence: ")?;
    after.split(|c: char| !c.is_ascii_digit()).next().and_then(|t| t.parse().ok())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Gets `config.name`, checking its replicas, or creates it. A request the cluster does not answer
/// (its JetStream meta group electing a leader, as right after the servers start or lose a node) is
/// asked again, with the publish retries' backoff, until `deadline`; both steps are idempotent.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    deadline: Instant,
) -> Result<stream::Stream, Error> {
    let mut wait = FIRST_RETRY_WAIT;
    loop {
        match try_ensure_stream(js, &config).await {
            Ok(stream) => return Ok(stream),
            Err(Attempt::Final(e)) => return Err(e),
            Err(Attempt::Unanswered(e)) => {
                if Instant::now() + wait >= deadline {
                    return Err(e);
                }
                tracing::debug!(stream = %config.name, error = %e, "JetStream API unanswered at connect; asking again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
        }
    }
}

/// How one attempt of [`ensure_stream`] failed.
enum Attempt {
    /// The cluster did not answer (timeout, no responders, JetStream unavailable), or it has not yet
    /// seen enough servers to place the stream's replicas: may be asked again.
    Unanswered(Error),
    /// An answer that asking again will not change.
    Final(Error),
}

async fn try_ensure_stream(js: &jetstream::Context, config: &stream::Config) -> Result<stream::Stream, Attempt> {
    use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
    let wanted = config.num_replicas;
    match js.get_stream(&config.name).await {
        Ok(stream) => {
            let have = &stream.cached_info().config;
            if have.num_replicas < wanted {
                return Err(Attempt::Final(Error::InvalidConfig {
                    field: "storage.nats.replicas".to_string(),
                    reason: format!(
                        "stream {} exists with {} replica(s), fewer than the {wanted} configured: an acknowledged \
                         write would not survive the loss of a node; raise the stream's replicas or lower the setting",
                        config.name, have.num_replicas
                    ),
                }));
            }
            if !have.allow_direct || have.subjects != config.subjects {
                return Err(Attempt::Final(Error::InvalidConfig {
                    field: "storage.nats.stream_prefix".to_string(),
                    reason: format!(
                        "stream {} exists but was not made by palimpsest (subjects {:?}, allow_direct {})",
                        config.name, have.subjects, have.allow_direct
                    ),
                }));
            }
            if config.allow_atomic_publish && !have.allow_atomic_publish {
                // Made by a build that wrote no atomic batches: allow them (nothing else changes).
                let updated = stream::Config { allow_atomic_publish: true, ..have.clone() };
                js.update_stream(&updated).await.map_err(|e| {
                    Attempt::Unanswered(Error::storage("allow atomic batches on an existing stream", e))
                })?;
                return js
                    .get_stream(&config.name)
                    .await
                    .map_err(|e| Attempt::Unanswered(Error::storage("look up a JetStream stream", e)));
            }
            Ok(stream)
        }
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(config.clone()).await.map_err(|e| {
                // "No suitable peers for placement, peer offline": the meta group has not yet seen
                // enough servers up (right after a start or restart); asking again can succeed.
                let unanswered =
                    matches!(e.kind(), CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable)
                        || matches!(e.kind(), CreateStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS);
                let e = Error::storage("create a JetStream stream", e);
                if unanswered { Attempt::Unanswered(e) } else { Attempt::Final(e) }
            })
        }
        Err(e) => {
            let unanswered = matches!(e.kind(), GetStreamErrorKind::Request);
            let e = Error::storage("look up a JetStream stream", e);
            Err(if unanswered { Attempt::Unanswered(e) } else { Attempt::Final(e) })
        }
    }
}

/// In `sync` durability: every monitoring endpoint must report `sync_always`, or the operator
/// must have acknowledged it (a NATS client cannot see the server's fsync policy).
async fn check_sync_always(cfg: &NatsConfig) -> Result<(), Error> {
    if cfg.monitor_urls.is_empty() {
        if cfg.sync_always_acknowledged {
            return Ok(());
        }
        return Err(Error::InvalidConfig {
            field: "storage.nats.monitor_urls".to_string(),
            reason: "sync durability needs servers that fsync every write (`sync_interval: always`), which a NATS \
                     client cannot see: list every server's monitoring endpoint here so it is checked, or set \
                     storage.nats.sync_always_acknowledged = true once you have checked it yourself, or use \
                     buffered durability"
                .to_string(),
        });
    }
    // reqwest is built with `rustls-no-provider`; an error only means a provider is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .timeout(Duration::from_millis(cfg.read_timeout_ms))
        .build()
        .map_err(|e| Error::storage("build the HTTP client for the NATS monitoring endpoints", e))?;
    for base in &cfg.monitor_urls {
        let url = format!("{}/varz", base.trim_end_matches('/'));
        let body = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| Error::storage("read a NATS server's /varz", e))?
            .bytes()
            .await
            .map_err(|e| Error::storage("read a NATS server's /varz", e))?;
        let varz: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::storage("read a NATS server's /varz", e))?;
        let server = varz.get("server_name").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let always = varz.pointer("/jetstream/config/sync_always").and_then(serde_json::Value::as_bool);
        if always != Some(true) {
            return Err(Error::InvalidConfig {
                field: "storage.nats.monitor_urls".to_string(),
                reason: format!(
                    "server {server} ({url}) does not fsync every write (its JetStream config lacks \
                     `sync_interval: always`), so an acknowledged write could be lost to a power cut; sync \
                     durability refuses it: set `sync_interval: always` on every server, or use buffered durability"
                ),
            });
        }
    }
    Ok(())
}

/// Whether a commit of `events` is a deletion (its record is a tombstone): it carries a
/// `SessionDeleted` event. Not whether its head is deleted: a commit that only adds to a deleted
/// session (an imported memory marker) leaves the head deleted, and purging below it would take
/// the real tombstone with it.
fn is_deletion(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e.kind, EventKind::SessionDeleted { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_last_sequence_errors_name_the_found_sequence() {
        let text = "wrong last sequence: wrong last sequence: 17 (code 400, error code 10071)";
        assert_eq!(found_sequence(text), Some(17));
        assert_eq!(found_sequence("wrong last sequence"), None);
    }
}
