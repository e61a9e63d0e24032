//! The body of one JetStream message: one engine commit of one session. Pure: values in, bytes
//! out, and back, with the same paired checks as the fjall layout.
//!
//! Byte 0 is [`RECORD_FORMAT`]; the rest is the MessagePack (rmp-serde, positional) encoding of
//! `(prev, events, head)`:
//! - `prev`: the stream sequence of the session's previous record (0 for the first). It equals
//!   the version the append expected, so it is exact by construction, and it is the back-pointer
//!   a newest-first window read follows.
//! - `events`: each event as `codec::encode_event` writes it for fjall (its own format byte first),
//!   in seq order, dense; possibly none (a commit that only moves the head is not made today).
//! - `head`: the session head after these events, as `codec::encode_head` writes it.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::Error;
use crate::log::codec;
use crate::log::event::Event;
use crate::log::fold::Head;
use crate::log::ids::{Seq, SessionId};

/// Format version of records this build writes.
pub(crate) const RECORD_FORMAT: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Wire {
    prev: u64,
    events: Vec<ByteBuf>,
    head: ByteBuf,
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    /// Stream sequence of the session's previous record, 0 for none.
    pub(crate) prev: u64,
    /// The events of the commit, dense and in order.
    pub(crate) events: Vec<Event>,
    /// The head after them.
    pub(crate) head: Head,
}

impl Record {
    /// Seq of the first event, or of the head when the record has none.
    pub(crate) fn first_seq(&self) -> Seq {
        self.events.first().map_or(self.head.last_seq(), |e| e.seq)
    }
}

/// Encodes a commit. The events must be dense and end at the head's last seq: the engine's write
/// path guarantees it, and this is the paired assertion of [`decode`]'s check.
pub(crate) fn encode(prev: u64, events: &[Event], head: &Head) -> Result<Vec<u8>, Error> {
    check_shape(events, head).map_err(|detail| Error::InvalidArgument { what: "record", reason: detail })?;
    let wire = Wire {
        prev,
        events: events.iter().map(|e| ByteBuf::from(codec::encode_event(e))).collect(),
        head: ByteBuf::from(codec::encode_head(head)),
    };
    let mut out = Vec::with_capacity(64 + wire.events.iter().map(|e| e.len()).sum::<usize>() + wire.head.len());
    out.push(RECORD_FORMAT);
    // Writing into a Vec cannot fail, and the wire type serializes without custom errors.
    rmp_serde::encode::write(&mut out, &wire).expect("msgpack encoding into a Vec is infallible");
    Ok(out)
}

/// Decodes the record stored at stream sequence `stream_seq` of `session`'s subject.
pub(crate) fn decode(session: &SessionId, stream_seq: u64, bytes: &[u8]) -> Result<Record, Error> {
    let corrupt = |detail: String| Error::Corrupt {
        session: Some(session.as_str().to_string()),
        seq: None,
        detail: format!("JetStream record at stream seq {stream_seq}: {detail}"),
    };
    let wire: Wire = match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => {
            rmp_serde::from_slice(body).map_err(|e| corrupt(format!("undecodable (format 1): {e}")))?
        }
        Some((&v, _)) => return Err(corrupt(format!("unknown format version {v} (this build reads 1)"))),
        None => return Err(corrupt("empty record".to_string())),
    };
    if wire.prev >= stream_seq {
        return Err(corrupt(format!("back-pointer {} does not point backwards", wire.prev)));
    }
    let head = codec::decode_head(session.as_str(), &wire.head)?;
    let first = head.last_seq().get().saturating_sub(wire.events.len() as u64) + 1;
    let mut events = Vec::with_capacity(wire.events.len());
    for (i, bytes) in wire.events.iter().enumerate() {
        events.push(codec::decode_event(session.as_str(), Seq::new(first + i as u64), bytes)?);
    }
    check_shape(&events, &head).map_err(corrupt)?;
    Ok(Record { prev: wire.prev, events, head })
}

/// The events are dense and the last one is the head's last seq.
fn check_shape(events: &[Event], head: &Head) -> Result<(), String> {
    for pair in events.windows(2) {
        if pair[1].seq.get() != pair[0].seq.get() + 1 {
            return Err(format!("events jump from seq {} to {}", pair[0].seq, pair[1].seq));
        }
    }
    match events.last() {
        Some(last) if last.seq != head.last_seq() => {
            Err(format!("the last event is seq {} but the head says {}", last.seq, head.last_seq()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{EventKind, Message};
    use crate::log::fold::apply;

    fn events(n: u64) -> (Vec<Event>, Head) {
        let mut head = Head::default();
        let events: Vec<Event> = (1..=n)
            .map(|seq| Event {
                seq: Seq::new(seq),
                at_ms: 7,
                kind: EventKind::MessageAppended(Message::user(format!("m{seq}"))),
            })
            .collect();
        for e in &events {
            apply(&mut head, e);
        }
        (events, head)
    }

    #[test]
    fn records_round_trip() {
        let session = SessionId::new("s.1").expect("valid");
        let (events, head) = events(3);
        let bytes = encode(4, &events, &head).expect("a dense commit encodes");
        let record = decode(&session, 9, &bytes).expect("decodes");
        assert_eq!(record, Record { prev: 4, events, head });
        assert_eq!(record.first_seq(), Seq::new(1));
    }

    #[test]
    fn damage_is_corrupt_not_a_panic() {
        let session = SessionId::new("s").expect("valid");
        let (events, head) = events(2);
        let bytes = encode(0, &events, &head).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(decode(&session, 1, &bytes[..cut]).is_err(), "a record cut at {cut} decoded");
        }
        assert!(matches!(decode(&session, 1, &[2, 0]), Err(Error::Corrupt { .. })));
        assert!(matches!(
            decode(&session, 3, &encode(5, &events, &head).expect("encodes")),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn gaps_are_refused_on_encode() {
        let (mut events, head) = events(3);
        events.remove(1);
        assert!(matches!(encode(0, &events, &head), Err(Error::InvalidArgument { .. })));
    }
}
