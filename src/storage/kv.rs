//! The key-value boundary of the embedded backend: what the engine asks of the store under it
//! (commit a batch of [`Op`]s atomically across keyspaces, point reads, bounded scans, a snapshot
//! [`Kv::view`]), as two traits. fjall implements them (`storage::fjall`, the only module naming
//! fjall); with the `testing` feature the engine's store is `storage::faulty::Faulty` wrapping
//! it, which injects faults through these same calls (as redb's tests wrap its storage backend),
//! so no test hook lives in the fjall code.

use crate::error::Error;
use crate::log::codec;
use crate::log::event::Event;
use crate::log::fold::Head;
use crate::log::ids::{Seq, SessionId, SummaryHash};
use crate::storage::fjall::Row;
use crate::storage::keys;

/// Which keyspace an [`Op`] targets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Ks {
    Events,
    Heads,
    Splices,
    Blobs,
    Meta,
    Memories,
    Extractions,
}

/// One write in a batch.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Put(Ks, Vec<u8>, Vec<u8>),
    Delete(Ks, Vec<u8>),
}

impl Op {
    /// The key the op writes or removes.
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            Op::Put(_, k, _) | Op::Delete(_, k) => k,
        }
    }
}

/// Reads, from the store as it is now or from a snapshot ([`Kv::view`]). The decoded reads
/// (`head`, `event`, `blob`) are built on `get`, so they fail where it fails.
pub(crate) trait Read {
    /// Reads one value.
    fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// Key/value pairs with keys in `[from, to]`, newest (largest key) first, at most `limit`.
    fn scan_rev(&self, ks: Ks, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Row>, Error>;

    /// Every key/value pair of a keyspace in key order, starting after `after` (exclusive), read
    /// lazily, for whole-database walks (audit, listing): memory stays bounded.
    fn iter_from(&self, ks: Ks, after: Option<&[u8]>) -> impl Iterator<Item = Result<Row, Error>> + '_;

    /// Every key/value pair whose key starts with `prefix`, in key order, read lazily.
    fn iter_prefix(&self, ks: Ks, prefix: &[u8]) -> impl Iterator<Item = Result<Row, Error>> + '_;

    /// Events of `session` with seq in `[from, to]`, at most `limit`, in order (the hot path of
    /// working memory: the store decodes them straight from what it holds).
    fn events(&self, session: &SessionId, from: Seq, to: Seq, limit: usize) -> Result<Vec<Event>, Error>;

    /// The stored head of `session`, if it has one.
    fn head(&self, session: &SessionId) -> Result<Option<Head>, Error> {
        self.get(Ks::Heads, keys::head_key(session))?
            .map(|bytes| codec::decode_head(session.as_str(), &bytes))
            .transpose()
    }

    /// One event, if present.
    fn event(&self, session: &SessionId, seq: Seq) -> Result<Option<Event>, Error> {
        self.get(Ks::Events, &keys::seq_key(session, seq))?
            .map(|v| codec::decode_event(session.as_str(), seq, &v))
            .transpose()
    }

    /// The summary text stored under `hash`, if present. A blob that is not UTF-8 is corrupt.
    fn blob(&self, hash: &SummaryHash) -> Result<Option<String>, Error> {
        self.get(Ks::Blobs, keys::blob_key(hash))?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| Error::Corrupt {
                    session: None,
                    seq: None,
                    detail: format!("summary blob {hash} is not UTF-8"),
                })
            })
            .transpose()
    }
}

/// An open store: [`Read`] on its current state, plus batches and snapshots.
pub(crate) trait Kv: Read {
    /// A consistent read view of the whole store as of one instant.
    type View<'a>: Read
    where
        Self: 'a;

    /// A snapshot of the store as it is now. Keep views short-lived: a snapshot holds back
    /// garbage collection of old versions.
    fn view(&self) -> Self::View<'_>;

    /// Writes `ops` as one atomic batch to the journal (visible to reads, not yet fsynced).
    fn write(&self, ops: &[Op]) -> Result<(), Error>;

    /// Makes every write so far durable (fsync); one persist covers every earlier batch.
    fn persist(&self) -> Result<(), Error>;

    /// [`Kv::write`], then with `sync` [`Kv::persist`] before returning.
    fn commit(&self, ops: &[Op], sync: bool) -> Result<(), Error> {
        self.write(ops)?;
        if sync {
            self.persist()?;
        }
        Ok(())
    }

    /// On-disk bytes of a keyspace (approximate: the store's own accounting).
    fn disk_space(&self, ks: Ks) -> u64;

    /// The keys (only) in `[from, to]`, in key order, at most `limit` of them (the purger's read).
    fn keys_in(&self, ks: Ks, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, Error>;
}
