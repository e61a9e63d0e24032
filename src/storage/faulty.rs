//! A store that fails on purpose (feature `testing`): [`Faulty`] wraps a real store and passes
//! every call of the key-value boundary (`storage::kv`) through, except where the armed
//! [`Fault`](crate::testing::Fault) fires ([`Faults`]): it then fails the call with
//! `Error::Storage` (or panics, for `CommitPanics`) exactly where the real store would have
//! failed, so a test can move the failure point through an operation as SQLite's I/O-error tests
//! do. With the feature the engine's store is always wrapped (unarmed, it only counts), so the
//! fjall code holds no test hook.
//!
//! The fault points: `Commit` fails a batch before it is written; `CommitPanics` panics there;
//! `AfterCommit` fails it after it was written (so the caller must not trust what it holds);
//! `Persist` fails the fsync after a written batch (`sync` durability); `Read` fails a read (one
//! check per call, a scan's first item for the lazy scans). The kill point
//! `store:after_write_before_sync` sits between a batch's write and its fsync.

use std::path::Path;

use crate::error::Error;
use crate::log::event::Event;
use crate::log::fold::Head;
use crate::log::ids::{Seq, SessionId};
use crate::storage::fjall::{FjallStore, Row};
use crate::storage::kv::{Ks, Kv, Op, Read};
use crate::testing::{FaultPoint, Faults};

/// `S` with the faults armed on it.
pub(crate) struct Faulty<S> {
    inner: S,
    pub(crate) faults: Faults,
}

/// A snapshot of a [`Faulty`] store: the inner store's view, failing reads as the store does.
pub(crate) struct FaultyView<'a, V> {
    inner: V,
    faults: &'a Faults,
}

impl Faulty<FjallStore> {
    /// Opens the fjall database at `path` (see `FjallStore::open`), with no fault armed.
    pub(crate) fn open(path: &Path, cache_mb: u64) -> Result<Self, Error> {
        Ok(Faulty { inner: FjallStore::open(path, cache_mb)?, faults: Faults::default() })
    }
}

impl<S> Faulty<S> {
    fn faults(&self) -> &Faults {
        &self.faults
    }
}

impl<V> FaultyView<'_, V> {
    fn faults(&self) -> &Faults {
        self.faults
    }
}

/// The [`Read`] methods of a wrapper with `inner` and `faults()`: one fault check per call (for a
/// lazy scan, its first item), then the inner store's answer.
macro_rules! checked_reads {
    () => {
        fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
            self.faults().check(FaultPoint::Read)?;
            self.inner.get(ks, key)
        }

        fn scan_rev(&self, ks: Ks, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Row>, Error> {
            self.faults().check(FaultPoint::Read)?;
            self.inner.scan_rev(ks, from, to, limit)
        }

        fn iter_from(&self, ks: Ks, after: Option<&[u8]>) -> impl Iterator<Item = Result<Row, Error>> + '_ {
            let fault = self.faults().check(FaultPoint::Read).err();
            fault.into_iter().map(Err).chain(self.inner.iter_from(ks, after))
        }

        fn iter_prefix(&self, ks: Ks, prefix: &[u8]) -> impl Iterator<Item = Result<Row, Error>> + '_ {
            let fault = self.faults().check(FaultPoint::Read).err();
            fault.into_iter().map(Err).chain(self.inner.iter_prefix(ks, prefix))
        }

        fn events(&self, session: &SessionId, from: Seq, to: Seq, limit: usize) -> Result<Vec<Event>, Error> {
            self.faults().check(FaultPoint::Read)?;
            self.inner.events(session, from, to, limit)
        }

        // The inner store's own head read (fjall's decodes without a copy), so tests run it.
        fn head(&self, session: &SessionId) -> Result<Option<Head>, Error> {
            self.faults().check(FaultPoint::Read)?;
            self.inner.head(session)
        }
    };
}

impl<S: Read> Read for Faulty<S> {
    checked_reads!();
}

impl<V: Read> Read for FaultyView<'_, V> {
    checked_reads!();
}

impl<S: Kv> Kv for Faulty<S> {
    type View<'a>
        = FaultyView<'a, S::View<'a>>
    where
        S: 'a;

    fn view(&self) -> Self::View<'_> {
        FaultyView { inner: self.inner.view(), faults: &self.faults }
    }

    fn write(&self, ops: &[Op]) -> Result<(), Error> {
        self.faults.check(FaultPoint::Commit)?;
        if self.faults.check(FaultPoint::CommitPanics).is_err() {
            panic!("injected panic in a commit");
        }
        self.inner.write(ops)?;
        self.faults.check(FaultPoint::AfterCommit)
    }

    fn persist(&self) -> Result<(), Error> {
        crate::testing::kill_point("store:after_write_before_sync");
        self.faults.check(FaultPoint::Persist)?;
        self.inner.persist()
    }

    fn disk_space(&self, ks: Ks) -> u64 {
        self.inner.disk_space(ks)
    }

    fn keys_in(&self, ks: Ks, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        self.faults.check(FaultPoint::Read)?;
        self.inner.keys_in(ks, from, to, limit)
    }
}
