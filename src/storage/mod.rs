//! Storage: where a session's log lives.
//!
//! - `fjall`: the embedded default (the only module naming fjall).
//! - `keys`: the key layout of every keyspace.
//! - `purge`: removes a deleted session's dead events in bounded chunks, resumed on open.
//! - `nats`: the NATS JetStream backend (cargo feature `nats`).

pub(crate) mod fjall;
pub(crate) mod keys;
#[cfg(feature = "nats")]
pub(crate) mod nats;
pub(crate) mod purge;
