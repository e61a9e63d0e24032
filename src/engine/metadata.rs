//! Session metadata and whole-session updates: what a server keeping a session *document* (the
//! agent-memory-server API of `palimpsest serve`) needs on top of appends.
//!
//! - A session's **metadata** is one opaque document (text; `palimpsest serve` keeps JSON), set
//!   whole by a `MetadataSet` event. The head keeps the seq of the latest one, so reading it costs
//!   the head plus one event, whatever the session's length.
//! - [`Session::update`] writes, in **one atomic batch**, an optional `MessagesReset` (the messages
//!   so far leave the working memory but stay in the log, for audit and export), messages, and an
//!   optional metadata document, optionally only if the session's last seq is still the one the
//!   caller read (optimistic concurrency, [`Error::Conflict`] otherwise).
//! - [`Session::read_state`] reads head, metadata, summary and the window from one snapshot.
//!
//! Every event goes through [`Engine::write_events`], the one write path (SPEC.md section 5).

use crate::config::Limits;
use crate::engine::{Consumed, Session};
use crate::error::Error;
use crate::log::event::{EventKind, Message};
use crate::log::fold::Head;
use crate::log::ids::Seq;
use crate::log::view::WorkingMemory;
use crate::storage::{Kv, Read};

/// A session's metadata document as last set.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionMetadata {
    /// Seq of the `MetadataSet` event.
    pub seq: Seq,
    /// When the engine wrote it, ms since the Unix epoch.
    pub at_ms: u64,
    /// The document, as given.
    pub document: String,
}

/// One read of a session, all from one snapshot: its head, its metadata and its working memory.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionState {
    /// The session's head (fold state) the rest was read at.
    pub head: Head,
    /// The latest metadata document since the last deletion, if any.
    pub metadata: Option<SessionMetadata>,
    /// The working memory (summary and the last `limit` messages) at `head.last_seq()`.
    pub memory: WorkingMemory,
}

/// What [`Session::update`] writes, in this order and in one atomic batch.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SessionUpdate {
    /// Write only if the session's last seq is still this (0 for a session with no events);
    /// otherwise nothing is written and the answer is [`Error::Conflict`]. `None` writes whatever
    /// happened in between.
    pub expect_last_seq: Option<Seq>,
    /// First write a `MessagesReset`: the messages so far leave the working memory (and their
    /// summary and open tool calls with them) but stay in the log. Ignored for a session with no
    /// live messages to drop (no events, or deleted, or nothing since the last reset).
    pub reset: bool,
    /// Then append these messages, as [`Session::append_many`] does (validated, stamped,
    /// turn-capped). May be empty.
    pub messages: Vec<Message>,
    /// Then set the metadata document (at most `limits.max_metadata_bytes`).
    pub metadata: Option<String>,
}

/// What [`Session::update`] wrote.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UpdateOutcome {
    /// The head after the write (unchanged when nothing was written).
    pub head: Head,
    /// Seq of the reset, when one was written.
    pub reset: Option<Seq>,
    /// Seq of each appended message, in order.
    pub message_seqs: Vec<Seq>,
}

/// Checks a metadata document against `limits.max_metadata_bytes`.
pub(crate) fn check_metadata(document: &str, limits: &Limits) -> Result<(), Error> {
    let max = limits.max_metadata_bytes;
    if document.len() as u64 > max {
        return Err(Error::InvalidArgument {
            what: "metadata",
            reason: format!("the document is {} bytes, the limit (limits.max_metadata_bytes) is {max}", document.len()),
        });
    }
    Ok(())
}

impl Session {
    /// Sets the session's metadata document (replacing the previous one whole); returns its seq.
    /// The session need not exist: like an append, this creates it.
    ///
    /// Cancel safety: as [`Session::append_many`]: the write lands whole or not at all.
    pub async fn set_metadata(&self, document: impl Into<String>) -> Result<Seq, Error> {
        let outcome =
            self.update(SessionUpdate { metadata: Some(document.into()), ..SessionUpdate::default() }).await?;
        Ok(outcome.head.last_seq())
    }

    /// The latest metadata document since the session's last deletion (`None` if none was set).
    /// Costs the head read plus one event read. A session with no events, or deleted, is
    /// [`Error::NotFound`].
    ///
    /// Cancel safety: cancel safe; a read changes nothing.
    pub async fn metadata(&self) -> Result<Option<SessionMetadata>, Error> {
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine.inner.backend.nats() {
            return self.read_nats(log, true, |view| async move { self.metadata_nats(&view).await }).await;
        }
        let view = self.engine.store("session metadata")?.view();
        let head = self.live_head(&view)?;
        self.metadata_in(&view, &head)
    }

    fn metadata_in(&self, view: &crate::storage::View<'_>, head: &Head) -> Result<Option<SessionMetadata>, Error> {
        let Some(seq) = head.metadata_seq() else { return Ok(None) };
        self.metadata_from(seq, view.event(&self.id, seq)?)
    }

    /// Head, metadata, summary and the last `limit` messages of the working memory, all from one
    /// snapshot, so a concurrent write cannot tear them apart. Costs one head read, one event read
    /// for the metadata, one blob read and about `limit` events. A session with no events, or
    /// deleted, is [`Error::NotFound`].
    ///
    /// Cancel safety: cancel safe; a read changes nothing.
    pub async fn read_state(&self, limit: usize) -> Result<SessionState, Error> {
        self.engine.check_read_limit(limit)?;
        #[cfg(feature = "nats")]
        if let Some(log) = self.engine.inner.backend.nats() {
            return self.read_state_nats(log, limit).await;
        }
        let view = self.engine.store("session metadata")?.view();
        let head = self.live_head(&view)?;
        let metadata = self.metadata_in(&view, &head)?;
        let summary = match head.splice() {
            Some(s) => Some(self.summary(&view, s.upto, &s.summary_hash)?),
            None => None,
        };
        let last = self.last_messages(&view, head.upto().max(head.base()), head.last_seq(), limit)?;
        let memory = self.memory_at_head(&head, limit, summary, last, false);
        Ok(SessionState { head, metadata, memory })
    }

    /// The metadata event the view's head names, read from the cluster.
    #[cfg(feature = "nats")]
    async fn metadata_nats(&self, view: &crate::engine::NatsView<'_>) -> Result<Option<SessionMetadata>, Error> {
        let Some(seq) = view.head.metadata_seq() else { return Ok(None) };
        self.metadata_from(seq, view.events(&self.id, seq, seq, 1).await?.into_iter().next())
    }

    /// The metadata in `event`, the event at `seq` that a head names; anything else is corrupt.
    fn metadata_from(
        &self,
        seq: Seq,
        event: Option<crate::log::event::Event>,
    ) -> Result<Option<SessionMetadata>, Error> {
        match event {
            Some(crate::log::event::Event { at_ms, kind: EventKind::MetadataSet { document }, .. }) => {
                Ok(Some(SessionMetadata { seq, at_ms, document }))
            }
            _ => Err(Error::Corrupt {
                session: Some(self.id.to_string()),
                seq: Some(seq.get()),
                detail: "the head names a metadata event that is missing or of another kind".to_string(),
            }),
        }
    }

    /// [`Session::read_state`] on JetStream: one head from the stream leader, and everything else
    /// read as of that head, so the parts agree (read again on a fresh head if a deletion purged
    /// what it read meanwhile: `Session::read_nats`).
    #[cfg(feature = "nats")]
    async fn read_state_nats(&self, log: &crate::storage::nats::NatsLog, limit: usize) -> Result<SessionState, Error> {
        self.read_nats(log, true, |view| async move {
            let head = &view.head;
            let metadata = self.metadata_nats(&view).await?;
            let summary = self.head_summary_nats(&view, head).await?;
            let last = self.last_messages_nats(&view, head.upto().max(head.base()), head.last_seq(), limit).await?;
            let memory = self.memory_at_head(head, limit, summary, last, false);
            Ok(SessionState { head: view.head, metadata, memory })
        })
        .await
    }

    /// Writes a reset, messages and a metadata document (each optional, see [`SessionUpdate`]) in
    /// one atomic batch: a server's "replace the session" or "append and touch the record" lands
    /// whole or not at all. With `expect_last_seq`, the write happens only if nothing was written
    /// to the session since the caller read it ([`Error::Conflict`] otherwise: read again, retry).
    /// An update with nothing to write is [`Error::InvalidArgument`].
    ///
    /// Cancel safety: as [`Session::append_many`]: dropped before its batch is queued, nothing is
    /// written; after, the batch lands whole (or the engine is poisoned).
    pub async fn update(&self, update: SessionUpdate) -> Result<UpdateOutcome, Error> {
        let SessionUpdate { expect_last_seq, reset, mut messages, metadata } = update;
        let limits = &self.engine.inner.config.limits;
        if !reset && messages.is_empty() && metadata.is_none() {
            return Err(Error::InvalidArgument { what: "update", reason: "nothing to write".to_string() });
        }
        if messages.len() as u64 > limits.max_batch_messages {
            return Err(Error::InvalidArgument {
                what: "batch size",
                reason: format!(
                    "{} messages; at most {} (limits.max_batch_messages)",
                    messages.len(),
                    limits.max_batch_messages
                ),
            });
        }
        if let Some(document) = &metadata {
            check_metadata(document, limits)?;
        }
        self.prepare_messages(&mut messages)?;
        let (mut reset_seq, mut message_seqs, mut boundaries) = (None, Vec::with_capacity(messages.len()), Vec::new());
        let (mut messages, mut metadata) =
            (Consumed::new(&self.engine, messages), Consumed::new(&self.engine, metadata));
        let head = self
            .engine
            .write_events(&self.id, |batch| {
                (reset_seq, boundaries) = (None, Vec::new());
                message_seqs.clear();
                if let Some(expected) = expect_last_seq
                    && batch.head().last_seq() != expected
                {
                    return Err(Error::Conflict {
                        session: self.id.to_string(),
                        expected: expected.get(),
                        found: Some(batch.head().last_seq().get()),
                    });
                }
                let live = !batch.head().is_deleted() && batch.head().n_messages() > 0;
                if reset && live {
                    let n_messages_dropped = batch.head().n_messages();
                    reset_seq = Some(batch.push(EventKind::MessagesReset { n_messages_dropped })?);
                }
                self.push_messages(batch, messages.take()?, &mut boundaries, |_, seq| message_seqs.push(seq))?;
                if let Some(document) = metadata.take()? {
                    batch.push(EventKind::MetadataSet { document })?;
                }
                Ok(())
            })
            .await?;
        if !boundaries.is_empty() {
            self.engine.inner().features.boundaries_landed(&self.engine, &self.id, &boundaries);
        }
        Ok(UpdateOutcome { head, reset: reset_seq, message_seqs })
    }

    /// [`Session::delete`], only if the session's last seq is still `expect_last_seq` (checked under
    /// the session's lock): a sweep that found a session expired deletes it only if nothing was
    /// written since ([`Error::Conflict`] otherwise, and nothing is written).
    ///
    /// Cancel safety: as [`Session::delete`].
    pub async fn delete_expecting(&self, expect_last_seq: Seq) -> Result<Seq, Error> {
        self.delete_if(Some(expect_last_seq)).await
    }
}
