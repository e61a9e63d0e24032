//! The pure model of a session's log: no I/O, no clock, no runtime.
//!
//! - `ids`: newtypes [`SessionId`](ids::SessionId), [`Seq`](ids::Seq), [`SummaryHash`](ids::SummaryHash).
//! - `event`: stored event kinds and the OpenAI-shaped [`Message`](event::Message).
//! - `codec`: version byte + msgpack; decoding damage becomes `Error::Corrupt`.
//! - `fast`: the fast path of `codec` for message events (a subset decoder: serde decides the rest).
//! - `fold`: pure `apply(head, event)`; the [`Head`](fold::Head) stored beside each session.
//! - `view`: which messages working memory shows.
//! - `plan`: where a compaction may cut (pair-safe) and the plan that proves it.

pub(crate) mod codec;
pub(crate) mod event;
mod fast;
pub(crate) mod fold;
pub(crate) mod ids;
pub(crate) mod plan;
pub(crate) mod view;
