//! Bytes on disk. Every stored value starts with a one-byte format version, followed by the
//! rmp-serde (MessagePack, compact/positional) encoding of the record. Decoding dispatches on the
//! version byte, so logs written by older versions stay readable, and every decode error becomes
//! [`Error::Corrupt`] naming the session and seq: a damaged byte is an error, never a panic.
//!
//! Encode and decode check the same structural rules (paired assertions): an event that would not
//! decode cleanly is never written, and one that decodes to something impossible is reported.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::event::{Event, EventKind, Message};
use crate::fold::Head;
use crate::ids::Seq;

/// Format version of event values this build writes.
pub const EVENT_FORMAT: u8 = 1;
/// Format version of session-head values this build writes.
pub const HEAD_FORMAT: u8 = 1;
/// The database layout version stored under `meta/format`.
pub const DB_FORMAT: u8 = 1;
/// No stored message may exceed this, whatever `limits.max_message_bytes` says (decode-side bound).
pub const MAX_STORED_MESSAGE_BYTES: usize = 64 << 20;

/// Encodes an event for the events keyspace.
pub fn encode_event(event: &Event) -> Vec<u8> {
    debug_assert!(check_event(event, event.seq).is_ok(), "refusing to encode an impossible event");
    let payload = event.message().map_or(0, Message::size_bytes);
    encode(EVENT_FORMAT, event, payload + ENCODING_OVERHEAD)
}

/// Decodes an event stored under `(session, key_seq)` and checks its structural rules;
/// `session` is only used in errors.
pub fn decode_event(session: &str, key_seq: Seq, bytes: &[u8]) -> Result<Event, Error> {
    let event = decode_event_unchecked(session, key_seq, bytes)?;
    check_event(&event, key_seq).map_err(|detail| Error::Corrupt {
        session: Some(session.to_string()),
        seq: Some(key_seq.get()),
        detail,
    })?;
    Ok(event)
}

/// Decodes an event without the structural checks, for audit, which checks them itself and
/// names each failure precisely.
pub fn decode_event_unchecked(session: &str, key_seq: Seq, bytes: &[u8]) -> Result<Event, Error> {
    decode(EVENT_FORMAT, bytes).map_err(|detail| Error::Corrupt {
        session: Some(session.to_string()),
        seq: Some(key_seq.get()),
        detail,
    })
}

/// Encodes a session head for the heads keyspace.
pub fn encode_head(head: &Head) -> Vec<u8> {
    encode(HEAD_FORMAT, head, ENCODING_OVERHEAD + head.open_calls().iter().map(|c| c.id.len() + 10).sum::<usize>())
}

/// Decodes a session head.
pub fn decode_head(session: &str, bytes: &[u8]) -> Result<Head, Error> {
    decode(HEAD_FORMAT, bytes).map_err(|detail| Error::Corrupt {
        session: Some(session.to_string()),
        seq: None,
        detail: format!("session head: {detail}"),
    })
}

/// Bytes of framing, numbers and short strings around a record's variable-length text; sizing
/// the output up front saves the reallocations that dominated encoding.
const ENCODING_OVERHEAD: usize = 256;

fn encode<T: Serialize>(version: u8, value: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.push(version);
    // Writing into a Vec cannot fail, and every stored type serializes without custom errors.
    rmp_serde::encode::write(&mut out, value).expect("msgpack encoding into a Vec is infallible");
    out
}

fn decode<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        None => Err("empty value".to_string()),
        Some((&v, body)) if v == version => {
            // Decoding from the slice lets strings be built straight from the stored bytes,
            // without first copying each through an `io::Read` scratch buffer.
            let mut de = rmp_serde::Deserializer::from_read_ref(body);
            let value = T::deserialize(&mut de).map_err(|e| format!("undecodable (format {v}): {e}"))?;
            // The borrowed reader cannot say how much is left; reading one more value must hit
            // the end of the input, or there are trailing bytes.
            match serde::de::IgnoredAny::deserialize(&mut de) {
                Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    Ok(value)
                }
                _ => Err("trailing bytes after the record".to_string()),
            }
        }
        Some((&v, _)) => Err(format!("unknown format version {v} (this build reads {version})")),
    }
}

/// Structural rules every stored event obeys, whatever the session's state.
fn check_event(event: &Event, key_seq: Seq) -> Result<(), String> {
    if event.seq != key_seq {
        return Err(format!("value says seq {} but is stored under seq {key_seq}", event.seq));
    }
    if event.seq == Seq::ZERO {
        return Err("seq 0 is not a valid event position".to_string());
    }
    match &event.kind {
        EventKind::MessageAppended(m) => m.validate(0, MAX_STORED_MESSAGE_BYTES).map_err(|e| e.to_string()),
        EventKind::CompactionSpliced(s) if s.upto <= s.previous_upto => {
            Err(format!("splice upto {} does not move past previous upto {}", s.upto, s.previous_upto))
        }
        EventKind::CompactionSpliced(s) if s.upto >= event.seq => {
            Err(format!("splice at seq {} covers up to {}, which is not before it", event.seq, s.upto))
        }
        EventKind::MemoriesExtracted { from, upto, .. } if upto < from => {
            Err(format!("memory extraction span ({from}, {upto}] is backwards"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Message, ToolCall};

    fn event(seq: u64, kind: EventKind) -> Event {
        Event { seq: Seq::new(seq), at_ms: 1_700_000_000_000, kind }
    }

    #[test]
    fn an_event_round_trips_and_starts_with_its_version() {
        let ev = event(
            7,
            EventKind::MessageAppended(
                Message::assistant_tool_calls("", vec![ToolCall::new("c1", "ls", "{}")]).with_metadata("k", "v"),
            ),
        );
        let bytes = encode_event(&ev);
        assert_eq!(bytes[0], EVENT_FORMAT);
        assert_eq!(decode_event("s", Seq::new(7), &bytes).expect("round trip"), ev);
    }

    #[test]
    fn damage_is_reported_as_corrupt_with_session_and_seq() {
        let bytes = encode_event(&event(3, EventKind::MessageAppended(Message::user("hi"))));
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![9],
            vec![EVENT_FORMAT],
            bytes[..bytes.len() - 1].to_vec(),
            [bytes.clone(), vec![0]].concat(),
        ];
        for damaged in cases {
            match decode_event("s1", Seq::new(3), &damaged) {
                Err(Error::Corrupt { session, seq, .. }) => {
                    assert_eq!(session.as_deref(), Some("s1"));
                    assert_eq!(seq, Some(3));
                }
                other => panic!("{damaged:?} decoded as {other:?}"),
            }
        }
        assert!(matches!(decode_event("s1", Seq::new(4), &bytes), Err(Error::Corrupt { .. })));
    }
}
