//! Storage: where a session's log lives.
//!
//! - `kv`: the key-value boundary of the embedded backend (batches, point reads, scans,
//!   snapshots) as the traits [`Kv`] and [`Read`], with the keyspaces [`Ks`] and writes [`Op`].
//! - `fjall`: the embedded default, implementing it (the only module naming fjall).
//! - `faulty` (feature `testing`): a store wrapping another that fails on purpose; with the
//!   feature, the engine's [`Store`] is fjall wrapped in it.
//! - `keys`: the key layout of every keyspace.
//! - `nats`: the NATS JetStream backend (cargo feature `nats`).

#[cfg(feature = "testing")]
pub(crate) mod faulty;
pub(crate) mod fjall;
pub(crate) mod keys;
pub(crate) mod kv;
#[cfg(feature = "nats")]
pub(crate) mod nats;

pub(crate) use kv::{Ks, Kv, Op, Read};

/// The embedded store the engine runs on: fjall, wrapped in the fault injector in test builds.
#[cfg(not(feature = "testing"))]
pub(crate) type Store = fjall::FjallStore;
/// The embedded store the engine runs on: fjall, wrapped in the fault injector in test builds.
#[cfg(feature = "testing")]
pub(crate) type Store = faulty::Faulty<fjall::FjallStore>;

/// A snapshot of the [`Store`].
pub(crate) type View<'a> = <Store as Kv>::View<'a>;
