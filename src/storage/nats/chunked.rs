//! Records too large for one message (SPEC.md 11a, "Large records"): written as one atomic batch
//! of chunks (`record::split`), read back whole from any of their messages.
//!
//! Readers meet a chunk wherever they meet a message of a session's subject (the last one, a
//! back-pointer, a search probe, a forward scan); [`NatsLog::record_of`] turns any of them into
//! the whole record and the stream sequences it spans, so the reads above it deal in records as
//! before. A record's chunks sit at consecutive sequences (an atomic batch is stored
//! contiguously) and each names its index, so the first is found without a search.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream;

use super::NatsLog;
use super::record::{self, Record};
use crate::error::Error;
use crate::log::ids::SessionId;

/// A record read whole, and the stream sequences of its first and last message (the same for a
/// record of one message). The last is the record's version.
#[derive(Debug)]
pub(crate) struct Located {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) record: Record,
}

impl NatsLog {
    /// The record that `message` (of `session`'s subject) belongs to, whole: the message itself
    /// when it holds a whole record, else every chunk of it, read in one batched request (the
    /// leader serving what a lagging replica lacks).
    pub(super) async fn record_of(&self, session: &SessionId, message: &StreamMessage) -> Result<Located, Error> {
        let Some(chunk) = record::chunk(&message.payload) else {
            let record = record::decode(session, message.sequence, &message.payload)?;
            return Ok(Located { first: message.sequence, last: message.sequence, record });
        };
        let first = message.sequence.checked_sub(u64::from(chunk.index)).ok_or_else(|| Error::Corrupt {
            session: Some(session.as_str().to_string()),
            seq: None,
            detail: format!("the chunk at stream seq {} claims index {}", message.sequence, chunk.index),
        })?;
        let count = chunk.count as usize;
        let (stream_name, subject) = self.names.session(session);
        let stream = self.session_stream(&stream_name)?;
        let messages = self.read_run(stream, &subject, first, count).await?;
        let parts: Vec<(u64, &[u8])> = messages.iter().map(|m| (m.sequence, m.payload.as_ref())).collect();
        let record = record::join(session, first, &parts)?;
        Ok(Located { first, last: first + count as u64 - 1, record })
    }

    /// Up to `n` messages of `subject` from stream sequence `from` on: batched direct gets, and
    /// the leader for whatever the replica that answered does not have yet.
    async fn read_run(
        &self,
        stream: &stream::Stream,
        subject: &str,
        from: u64,
        n: usize,
    ) -> Result<Vec<StreamMessage>, Error> {
        let mut out: Vec<StreamMessage> = Vec::with_capacity(n);
        let mut cursor = from;
        while out.len() < n {
            let mut batch = self.scan(stream, subject, cursor, n - out.len()).await?;
            if batch.is_empty() {
                match self.leader_next(stream, subject, cursor).await? {
                    Some(m) => batch.push(m),
                    None => break,
                }
            }
            for message in batch {
                cursor = message.sequence + 1;
                out.push(message);
            }
        }
        out.truncate(n);
        Ok(out)
    }
}
