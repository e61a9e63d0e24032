//! Storage: where a session's log lives.
//!
//! - `fjall`: the embedded default (the only module naming fjall).
//! - `keys`: the key layout of every keyspace.
//! - `purge`: removes a deleted session's dead events in bounded chunks, resumed on open.

pub(crate) mod fjall;
pub(crate) mod keys;
pub(crate) mod purge;
