//! Where an engine keeps its logs: the storage boundary (SPEC.md 11, 11a).
//!
//! An enum, not a trait object, so the public API stays non-generic and the embedded path pays no
//! dispatch it did not pay before:
//! - `Fjall`: the embedded database, written through the group-commit [`Writer`], with the
//!   [`Purger`] removing deleted sessions' dead events beside it. Every feature runs on it.
//! - `Nats` (cargo feature `nats`): a JetStream cluster through [`NatsLog`]. Each write is one
//!   conditional publish of one session's record (events + head), pipelined on one connection;
//!   a write built on a stale head meets a conflict and is built again on the fresh one.
//!   Compaction and import run on it (a summary blob is published before the splice that names
//!   it), episodes and memory extraction too (markers and memories on the meta stream, published
//!   before the record that refers to them), and so do export, `audit_async`, `stats_async`,
//!   `memories_async`, `given_up_extractions_async` and orphan-blob collection (by age, SPEC 11a).
//!   Rebuild and the blocking reads of fjall's files answer [`Error::Unsupported`].

#[cfg(feature = "nats")]
use std::sync::Arc;

use crate::engine::purge::Purger;
use crate::engine::writer::Writer;
use crate::error::Error;
use crate::storage::Store;
#[cfg(feature = "nats")]
use crate::storage::nats::NatsLog;

/// See the module docs.
pub(crate) enum Backend {
    Fjall {
        writer: Writer,
        purger: Purger,
    },
    #[cfg(feature = "nats")]
    Nats(Arc<NatsLog>),
}

impl Backend {
    /// The `storage.kind` this backend serves, as configured.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Fjall { .. } => "fjall",
            #[cfg(feature = "nats")]
            Self::Nats(_) => "nats",
        }
    }

    /// The fjall writer, or [`Error::Unsupported`] for `what` on another backend.
    pub(crate) fn writer(&self, what: &'static str) -> Result<&Writer, Error> {
        #[cfg(not(feature = "nats"))]
        let _ = what;
        match self {
            Self::Fjall { writer, .. } => Ok(writer),
            #[cfg(feature = "nats")]
            Self::Nats(_) => Err(Error::Unsupported { what, backend: self.name() }),
        }
    }

    /// The fjall store, or [`Error::Unsupported`] for `what` on another backend.
    pub(crate) fn store(&self, what: &'static str) -> Result<&Store, Error> {
        self.writer(what).map(Writer::store)
    }

    /// The purger (fjall only: JetStream purges inside the deletion itself).
    pub(crate) fn purger(&self) -> Option<&Purger> {
        match self {
            Self::Fjall { purger, .. } => Some(purger),
            #[cfg(feature = "nats")]
            Self::Nats(_) => None,
        }
    }

    /// The JetStream log, if that is the backend.
    #[cfg(feature = "nats")]
    pub(crate) fn nats(&self) -> Option<&Arc<NatsLog>> {
        match self {
            Self::Fjall { .. } => None,
            Self::Nats(log) => Some(log),
        }
    }

    /// Whether a write's builder may run more than once (JetStream builds again after a conflict).
    pub(crate) fn rebuilds_writes(&self) -> bool {
        !matches!(self, Self::Fjall { .. })
    }

    /// True after a failed fjall write (every later write fails until reopened). JetStream fences
    /// a failed write's session only (its cached head is dropped), never the engine.
    pub(crate) fn is_poisoned(&self) -> bool {
        match self {
            Self::Fjall { writer, .. } => writer.is_poisoned(),
            #[cfg(feature = "nats")]
            Self::Nats(_) => false,
        }
    }
}
