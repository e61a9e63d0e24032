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
//!
//! A record too large for one message is [`split`] into chunks ([`CHUNK_FORMAT`]) published as
//! one atomic batch, and [`join`]ed back by readers (`chunked`).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::Error;
use crate::log::codec;
use crate::log::event::Event;
use crate::log::fold::Head;
use crate::log::ids::{Seq, SessionId};

/// Format version of records this build writes.
pub(crate) const RECORD_FORMAT: u8 = 1;

/// Format byte of one chunk of a record too large for one message (SPEC.md 11a, "Large
/// records"): the byte, then the chunk's index and the record's chunk count (u32, big-endian
/// each), then the chunk's share of the whole record's bytes. A record's chunks are one atomic
/// batch, so they sit at consecutive stream sequences, index 0 first.
pub(crate) const CHUNK_FORMAT: u8 = 2;
/// Bytes of a chunk before its share of the record.
pub(crate) const CHUNK_HEADER_BYTES: usize = 9;
/// Most chunks of one record: the server's limit on the messages of one atomic batch.
pub(crate) const MAX_CHUNKS: usize = 1_000;

/// One chunk of a record, as read back.
#[derive(Debug, PartialEq)]
pub(crate) struct Chunk<'a> {
    /// Its place among the record's chunks, from 0.
    pub(crate) index: u32,
    /// How many chunks the record has (at least 2).
    pub(crate) count: u32,
    /// Its share of the whole record's bytes.
    pub(crate) bytes: &'a [u8],
}

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

/// Splits a whole record's bytes (from [`encode`]) into chunks of at most `max` bytes each,
/// headers included. [`Error::InvalidArgument`] when that takes more than [`MAX_CHUNKS`].
pub(crate) fn split(record: &[u8], max: usize) -> Result<Vec<Vec<u8>>, Error> {
    let share = max.saturating_sub(CHUNK_HEADER_BYTES).max(1);
    let count = record.len().div_ceil(share).max(2);
    if count > MAX_CHUNKS {
        return Err(Error::InvalidArgument {
            what: "record",
            reason: format!(
                "{} bytes would take {count} messages of the cluster's max_payload ({max} bytes); one record \
                 may take at most {MAX_CHUNKS}",
                record.len()
            ),
        });
    }
    // Even shares, so that no chunk is a sliver (and a record just over one message takes two halves).
    let share = record.len().div_ceil(count);
    let count32 = u32::try_from(count).expect("at most MAX_CHUNKS");
    Ok((0..count)
        .map(|i| {
            let part = &record[(i * share).min(record.len())..((i + 1) * share).min(record.len())];
            let mut out = Vec::with_capacity(CHUNK_HEADER_BYTES + part.len());
            out.push(CHUNK_FORMAT);
            out.extend_from_slice(&u32::try_from(i).expect("at most MAX_CHUNKS").to_be_bytes());
            out.extend_from_slice(&count32.to_be_bytes());
            out.extend_from_slice(part);
            out
        })
        .collect())
}

/// The chunk `bytes` holds; `None` for anything else (a whole record, or damage that [`decode`]
/// then names).
pub(crate) fn chunk(bytes: &[u8]) -> Option<Chunk<'_>> {
    let (&CHUNK_FORMAT, rest) = bytes.split_first()? else { return None };
    let index = u32::from_be_bytes(rest.get(0..4)?.try_into().ok()?);
    let count = u32::from_be_bytes(rest.get(4..8)?.try_into().ok()?);
    (count >= 2 && index < count).then(|| Chunk { index, count, bytes: &rest[8..] })
}

/// Joins the chunks of one record, read from stream sequences `first..` of `session`'s subject in
/// order, and decodes the record; [`Error::Corrupt`] unless they are exactly chunks `0..count` of
/// one record at consecutive sequences.
pub(crate) fn join(session: &SessionId, first: u64, messages: &[(u64, &[u8])]) -> Result<Record, Error> {
    let corrupt = |detail: String| Error::Corrupt {
        session: Some(session.as_str().to_string()),
        seq: None,
        detail: format!("JetStream record chunks from stream seq {first}: {detail}"),
    };
    let mut whole = Vec::new();
    let mut count = None;
    for (i, (at, bytes)) in messages.iter().enumerate() {
        let c = chunk(bytes).ok_or_else(|| corrupt(format!("the message at {at} is not a chunk")))?;
        let want = *count.get_or_insert(c.count);
        if *at != first + i as u64 || c.index as usize != i || c.count != want {
            return Err(corrupt(format!(
                "the message at {at} is chunk {} of {}, expected chunk {i} of {want} at {}",
                c.index,
                c.count,
                first + i as u64
            )));
        }
        whole.extend_from_slice(c.bytes);
    }
    match count {
        Some(n) if n as usize == messages.len() => decode(session, first + u64::from(n) - 1, &whole),
        _ => Err(corrupt(format!("{} of {} chunks found", messages.len(), count.unwrap_or(0)))),
    }
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
    fn chunks_join_back_into_the_record_and_refuse_anything_else() {
        let session = SessionId::new("s").expect("valid");
        let (events, head) = events(40);
        let bytes = encode(3, &events, &head).expect("encodes");
        for max in [CHUNK_HEADER_BYTES + 2, 64, 200, bytes.len() / 2 + CHUNK_HEADER_BYTES, bytes.len() * 2] {
            let chunks = split(&bytes, max).expect("splits");
            assert!(chunks.len() >= 2 && chunks.iter().all(|c| c.len() <= max), "{max}");
            let at: Vec<(u64, &[u8])> = chunks.iter().enumerate().map(|(i, c)| (10 + i as u64, c.as_slice())).collect();
            let record = join(&session, 10, &at).expect("joins");
            assert_eq!(record, Record { prev: 3, events: events.clone(), head: head.clone() }, "{max}");
            // A missing, extra, reordered or displaced chunk is damage, named.
            assert!(matches!(join(&session, 10, &at[..at.len() - 1]), Err(Error::Corrupt { .. })));
            assert!(matches!(join(&session, 10, &at[1..]), Err(Error::Corrupt { .. })));
            let mut swapped = at.clone();
            swapped.swap(0, 1);
            assert!(matches!(join(&session, 10, &swapped), Err(Error::Corrupt { .. })));
            assert!(matches!(join(&session, 11, &at), Err(Error::Corrupt { .. })));
        }
        assert!(chunk(&bytes).is_none(), "a whole record is not a chunk");
        assert!(chunk(&[CHUNK_FORMAT, 0, 0, 0, 1, 0, 0, 0, 1]).is_none(), "index past the count");
        assert!(matches!(decode(&session, 1, &split(&bytes, 64).expect("splits")[0]), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_record_needing_more_than_a_batch_is_refused() {
        let record = vec![1_u8; MAX_CHUNKS * 10 + 1];
        assert!(matches!(split(&record, CHUNK_HEADER_BYTES + 10), Err(Error::InvalidArgument { .. })));
        assert_eq!(split(&record[1..], CHUNK_HEADER_BYTES + 10).expect("fits").len(), MAX_CHUNKS);
    }

    #[test]
    fn gaps_are_refused_on_encode() {
        let (mut events, head) = events(3);
        events.remove(1);
        assert!(matches!(encode(0, &events, &head), Err(Error::InvalidArgument { .. })));
    }
}
