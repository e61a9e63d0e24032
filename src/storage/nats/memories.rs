//! Memory records and extraction markers on JetStream: messages on the meta stream, which keeps
//! one message per subject (SPEC.md 11a, "Memories and extraction markers").
//!
//! - A memory lives at `{prefix}.m.n.{hex(namespace)}.{hex(memory id hex)}` and is **created
//!   once**: published with `Nats-Expected-Last-Subject-Sequence: 0`, so the server stores it only
//!   while its subject is empty. Two engines extracting the same text into one namespace therefore
//!   store it once between them, and each learns whether it was the one (`create_memory`).
//! - A pending extraction marker lives at `{prefix}.m.e.{hex(session)}.{seq:016x}`, a given-up
//!   one at `{prefix}.m.g...`; removing one purges its subject.
//!
//! This module knows the bytes only as bytes: what a memory or a marker holds is the extraction
//! module's.

use std::collections::BTreeSet;
use std::time::SystemTime;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;

use super::{NatsLog, Published, Version, message_id, names};
use crate::error::Error;
use crate::log::ids::{Seq, SessionId};

/// Most memory subjects of one namespace, or given-up markers, listed before a read refuses
/// (the listing is sorted in memory: JetStream keeps subjects unordered).
pub(crate) const MAX_LISTED_RECORDS: usize = 1_000_000;

/// A stored extraction marker: its bytes, and where and when the leader stored them.
#[derive(Clone, Debug)]
pub(crate) struct StoredMarker {
    /// The marker's value, as published.
    pub(crate) value: Vec<u8>,
    /// Its stream sequence on the meta stream (the version a conditional rewrite expects).
    pub(crate) sequence: u64,
    /// When the stream leader stored it (its clock).
    pub(crate) at: SystemTime,
}

impl NatsLog {
    /// Stores memory `id_hex` of `namespace` unless one is stored under it already. Returns true
    /// when this call stored it, false when the memory was there before (written by an earlier
    /// extraction, or by another engine).
    ///
    /// The message id is this call's own (its retries share it, so a retry of a stored attempt is
    /// answered as stored), never one derived from the content: two engines extracting the same
    /// text in the same millisecond publish identical bytes, and a shared id would answer the
    /// second as a duplicate of the first, so both would count the memory as theirs.
    ///
    /// Cancel safety: a dropped future may or may not have stored the memory; a later call then
    /// answers false.
    pub(crate) async fn create_memory(&self, namespace: &str, id_hex: &str, value: &[u8]) -> Result<bool, Error> {
        let subject = self.names.memory(namespace, id_hex);
        match self.publish(&subject, Some(Version::NONE), &message_id(), Bytes::copy_from_slice(value)).await? {
            Published::Stored(_) => Ok(true),
            Published::WrongLast { .. } => Ok(false),
        }
    }

    /// Up to `limit` memories of `namespace` in id order, as `(id hex, value)`: the namespace's
    /// subjects are listed (refused past [`MAX_LISTED_RECORDS`]), sorted, and the first `limit`
    /// read, one direct get each.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub(crate) async fn memory_records(&self, namespace: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let subjects = self.sorted_subjects(self.names.memories(namespace), "list a namespace's memories").await?;
        let mut out = Vec::with_capacity(limit.min(subjects.len()));
        for subject in subjects.into_iter().take(limit) {
            let key = names::memory_key_of(&subject).ok_or_else(|| corrupt(&subject))?;
            // Memories are never removed, so a listed one is there to read (a lagging replica
            // answers from the leader instead).
            if let Some(message) = self.last_on(&self.meta, &subject).await? {
                out.push((key, message.payload.to_vec()));
            }
        }
        Ok(out)
    }

    /// Every memory of every namespace, as `(namespace, id hex, value)`, for audit: the meta
    /// stream's memory subjects (refused past [`MAX_LISTED_RECORDS`]), each read once.
    pub(crate) async fn all_memory_records(&self) -> Result<Vec<(String, String, Vec<u8>)>, Error> {
        let subjects = self.sorted_subjects(self.names.all_memories(), "list memories").await?;
        let mut out = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let (namespace, key) = self.names.memory_of(&subject)?;
            let message = self
                .answered("read a memory", || async {
                    self.last_on(&self.meta, &subject).await?.ok_or_else(|| corrupt(&subject))
                })
                .await?;
            out.push((namespace, key, message.payload.to_vec()));
        }
        Ok(out)
    }

    /// Publishes a pending extraction marker, as the side record of the splice or boundary at `at`
    /// (before that record): its message id is derived from the subject and `value`, so the same
    /// marker published again by a rebuilt write is a duplicate, never a second message.
    ///
    /// Cancel safety: a dropped future may or may not have stored it; publishing it again is
    /// harmless.
    pub(crate) async fn put_marker(&self, session: &SessionId, at: Seq, value: &[u8]) -> Result<(), Error> {
        let subject = self.names.extraction(false, session, at);
        let id = content_id(&subject, value);
        self.publish(&subject, None, &id, Bytes::copy_from_slice(value)).await?;
        Ok(())
    }

    /// Rewrites a pending marker only if it is still the message at `expected` (a counted attempt,
    /// a recorded failure). Returns false, storing nothing, when it was rewritten or removed
    /// since (by another engine running the same extraction).
    ///
    /// Cancel safety: a dropped future may or may not have stored it.
    pub(crate) async fn rewrite_marker(
        &self,
        session: &SessionId,
        at: Seq,
        expected: u64,
        value: &[u8],
    ) -> Result<bool, Error> {
        let subject = self.names.extraction(false, session, at);
        let published =
            self.publish(&subject, Some(Version::at(expected)), &message_id(), Bytes::copy_from_slice(value)).await?;
        Ok(matches!(published, Published::Stored(_)))
    }

    /// Records a given-up extraction (`value`, the marker as it was) and removes its pending
    /// marker, in that order: a crash between the two leaves both, and the next attempt gives
    /// it up again (idempotent).
    pub(crate) async fn give_up_marker(&self, session: &SessionId, at: Seq, value: &[u8]) -> Result<(), Error> {
        let subject = self.names.extraction(true, session, at);
        self.publish(&subject, None, &content_id(&subject, value), Bytes::copy_from_slice(value)).await?;
        self.remove_marker(session, at).await
    }

    /// Removes a pending marker (purges its subject). Idempotent.
    pub(crate) async fn remove_marker(&self, session: &SessionId, at: Seq) -> Result<(), Error> {
        self.meta
            .purge()
            .filter(self.names.extraction(false, session, at))
            .await
            .map_err(|e| Error::storage("remove an extraction marker", e))?;
        Ok(())
    }

    /// A pending (or given-up) marker, read from the meta stream's leader: the version a
    /// conditional rewrite needs must be the latest.
    pub(crate) async fn marker(
        &self,
        given_up: bool,
        session: &SessionId,
        at: Seq,
    ) -> Result<Option<StoredMarker>, Error> {
        match self.meta.get_last_raw_message_by_subject(&self.names.extraction(given_up, session, at)).await {
            Ok(m) => {
                Ok(Some(StoredMarker { value: m.payload.to_vec(), sequence: m.sequence, at: SystemTime::from(m.time) }))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::storage("read an extraction marker", e)),
        }
    }

    /// The pending (or given-up) markers in (session, seq) order: at most `max` of them, and
    /// whether there were more. Pending markers are taken in the order the cluster lists them and
    /// then sorted, so an open's bounded share is not always the first in order; given-up ones are
    /// listed whole (refused past [`MAX_LISTED_RECORDS`]) so a read in order is exact.
    pub(crate) async fn markers(&self, given_up: bool, max: usize) -> Result<(Vec<(SessionId, Seq)>, bool), Error> {
        let bound = if given_up { MAX_LISTED_RECORDS } else { max };
        let subjects = self.subjects(&self.meta, self.names.extractions(given_up), bound).await?;
        if given_up && subjects.len() > MAX_LISTED_RECORDS {
            return Err(too_many("list given-up extractions"));
        }
        let mut all = BTreeSet::new();
        for subject in &subjects {
            // A subject this database would not write (a foreign publisher) is named and skipped,
            // as fjall's open skips a damaged marker: it never stops the others.
            match self.names.extraction_of(given_up, subject) {
                Ok(marker) => {
                    all.insert(marker);
                }
                Err(e) => tracing::warn!(subject, error = %e, "an extraction marker's subject is damaged; skipped"),
            }
        }
        let more = all.len() > max;
        Ok((all.into_iter().take(max).collect(), more))
    }

    /// The subjects matching `filter`, sorted; refused past [`MAX_LISTED_RECORDS`].
    async fn sorted_subjects(&self, filter: String, what: &'static str) -> Result<Vec<String>, Error> {
        let mut subjects = self.subjects(&self.meta, filter, MAX_LISTED_RECORDS).await?;
        if subjects.len() > MAX_LISTED_RECORDS {
            return Err(too_many(what));
        }
        subjects.sort_unstable();
        Ok(subjects)
    }
}

/// A message id derived from what is published: the same record published again (a retry, a
/// rebuilt write) is a duplicate within the window instead of a second message.
fn content_id(subject: &str, value: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(subject.len() as u64).to_be_bytes());
    hasher.update(subject.as_bytes());
    hasher.update(value);
    hasher.finalize().to_hex()[..32].to_string()
}

fn corrupt(subject: &str) -> Error {
    Error::Corrupt { session: None, seq: None, detail: format!("record subject {subject:?} does not decode") }
}

fn too_many(what: &'static str) -> Error {
    Error::storage(what, format!("more than {MAX_LISTED_RECORDS} records; listing is not paged on this backend"))
}
