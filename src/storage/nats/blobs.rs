//! Summary blobs on JetStream: one message per blob on the meta stream's subject
//! `{prefix}.m.b.{hash hex}` (the stream keeps one message per subject), and what orphan
//! collection needs to remove one safely (SPEC.md 11a, "Orphan blobs").
//!
//! Each [`NatsLog::put_blob`] call publishes under a message id of its own, so the server
//! deduplicates only that call's retries: a blob published again by a later compaction is a new
//! message with a new sequence and time, never an acknowledgement of an older one. Orphan
//! collection relies on it: it removes a blob only up to the sequence it judged, so a blob
//! published again after that judgement stays.

use std::collections::BTreeSet;
use std::time::SystemTime;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;

use super::{NatsLog, message_id};
use crate::error::Error;
use crate::log::ids::SummaryHash;

/// Most blob subjects orphan collection and stats list before refusing (they are held in memory).
pub const MAX_LISTED_BLOBS: usize = 1_000_000;

/// Where a blob's message is: its stream sequence and when the server stored it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlobStored {
    /// The message's stream sequence on the meta stream.
    pub(crate) sequence: u64,
    /// When the stream leader stored it (its clock).
    pub(crate) at: SystemTime,
}

impl NatsLog {
    /// Stores a blob (a summary text) under its hash. Idempotent in content: storing the same text
    /// again replaces the message with an identical newer one.
    ///
    /// Cancel safety: a dropped future may or may not have stored the blob; storing it again is
    /// harmless.
    pub async fn put_blob(&self, text: &str) -> Result<SummaryHash, Error> {
        let hash = SummaryHash::of(text);
        let subject = self.names.blob(&hash.to_hex());
        self.publish(&subject, None, &message_id(), Bytes::copy_from_slice(text.as_bytes())).await?;
        Ok(hash)
    }

    /// The blob stored under `hash`, checked against it.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn blob(&self, hash: &SummaryHash) -> Result<Option<String>, Error> {
        let hex = hash.to_hex();
        let Some(message) = self.last_on(&self.meta, &self.names.blob(&hex)).await? else {
            return Ok(None);
        };
        let corrupt =
            |detail: String| Error::Corrupt { session: None, seq: None, detail: format!("blob {hex}: {detail}") };
        let text = String::from_utf8(message.payload.to_vec()).map_err(|e| corrupt(e.to_string()))?;
        if SummaryHash::of(&text) != *hash {
            return Err(corrupt("its text does not hash to its name".to_string()));
        }
        Ok(Some(text))
    }

    /// The hash of every stored blob (the meta stream's blob subjects; no blob is read). Refuses
    /// past [`MAX_LISTED_BLOBS`].
    pub(crate) async fn blob_hashes(&self) -> Result<BTreeSet<SummaryHash>, Error> {
        let subjects = self.subjects(&self.meta, self.names.blobs(), MAX_LISTED_BLOBS).await?;
        if subjects.len() > MAX_LISTED_BLOBS {
            return Err(Error::storage(
                "list blobs",
                format!("more than {MAX_LISTED_BLOBS} blobs; listing is not paged on this backend"),
            ));
        }
        let mut all = BTreeSet::new();
        for subject in subjects {
            all.insert(self.names.blob_of(&subject)?);
        }
        Ok(all)
    }

    /// Where blob `hash`'s message is, read from the meta stream's leader; `None` if it is gone.
    pub(crate) async fn blob_stored(&self, hash: &SummaryHash) -> Result<Option<BlobStored>, Error> {
        match self.meta.get_last_raw_message_by_subject(&self.names.blob(&hash.to_hex())).await {
            Ok(m) => Ok(Some(BlobStored { sequence: m.sequence, at: SystemTime::from(m.time) })),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::storage("read a blob's message", e)),
        }
    }

    /// Removes blob `hash`'s message if it is still the one at `sequence` (or older): the same blob
    /// published since, at a later sequence, stays. Idempotent.
    pub(crate) async fn remove_blob(&self, hash: &SummaryHash, sequence: u64) -> Result<(), Error> {
        self.meta
            .purge()
            .filter(self.names.blob(&hash.to_hex()))
            .sequence(sequence.saturating_add(1))
            .await
            .map_err(|e| Error::storage("remove an orphan blob", e))?;
        Ok(())
    }

    /// The bytes each of this database's streams holds, by stream name (sessions first, then
    /// meta), as the servers account them; asked again while a stream elects its leader.
    pub(crate) async fn stream_bytes(&self) -> Result<Vec<(String, u64)>, Error> {
        let mut out = Vec::with_capacity(self.sessions.len() + 1);
        for stream in self.sessions.iter().chain(std::iter::once(&self.meta)) {
            let info = self
                .answered("read a stream's size", || async {
                    stream.clone().info().await.cloned().map_err(|e| Error::storage("read a stream's size", e))
                })
                .await?;
            out.push((info.config.name.clone(), info.state.bytes));
        }
        Ok(out)
    }
}
