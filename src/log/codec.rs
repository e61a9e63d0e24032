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
use crate::log::event::{Event, EventKind, Message};
pub(crate) use crate::log::fast::EventBuf;
use crate::log::fold::Head;
use crate::log::ids::{MAX_SESSION_ID_BYTES, Seq, SessionId, truncate_for_error};

/// Format version of event values this build writes.
pub const EVENT_FORMAT: u8 = 1;
/// Format version of session-head values this build writes.
pub const HEAD_FORMAT: u8 = 1;
/// The database layout version stored under `meta/format`.
pub const DB_FORMAT: u8 = 1;
/// No stored message may exceed this, whatever `limits.max_message_bytes` says (decode-side bound).
pub const MAX_STORED_MESSAGE_BYTES: usize = 64 << 20;
/// No stored metadata document may exceed this, whatever `limits.max_metadata_bytes` says.
pub const MAX_STORED_METADATA_BYTES: usize = 64 << 20;

/// Encodes an event for the events keyspace. Every event reaches here through `Batch::push`,
/// which has checked it with [`check_event`] in every build; this is the paired assertion.
pub fn encode_event(event: &Event) -> Vec<u8> {
    debug_assert!(check_event(event, event.seq).is_ok(), "refusing to encode an impossible event");
    let payload = match &event.kind {
        EventKind::MetadataSet { document } => document.len(),
        _ => event.message().map_or(0, Message::size_bytes),
    };
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
    // Message events in the encoder's own shape take the fast path; it answers only for bytes
    // serde decodes to the same event, and leaves everything else (other kinds, damage) to serde.
    if let Some((&EVENT_FORMAT, body)) = bytes.split_first()
        && let Some(event) = crate::log::fast::message_event(body)
    {
        return Ok(event);
    }
    decode_event_serde(session, key_seq, bytes)
}

/// The serde path of [`decode_event_unchecked`]: every shape the format admits, and what is
/// `Corrupt`.
fn decode_event_serde(session: &str, key_seq: Seq, bytes: &[u8]) -> Result<Event, Error> {
    decode(EVENT_FORMAT, bytes).map_err(|detail| Error::Corrupt {
        session: Some(session.to_string()),
        seq: Some(key_seq.get()),
        detail,
    })
}

/// [`decode_event_unchecked`] into `buf.event`, reusing the buffers `buf` holds: for walks of a
/// whole log (audit) that look at each event once. On an error `buf.event` is unspecified.
pub(crate) fn decode_event_into(session: &str, key_seq: Seq, bytes: &[u8], buf: &mut EventBuf) -> Result<(), Error> {
    if let Some((&EVENT_FORMAT, body)) = bytes.split_first()
        && crate::log::fast::message_event_into(body, buf)
    {
        return Ok(());
    }
    // The fast path declined: serde's, without trying the fast path a second time.
    buf.event = decode_event_serde(session, key_seq, bytes)?;
    Ok(())
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

/// Structural rules every stored event obeys, whatever the session's state. The same function
/// runs on every push of the write path (release builds included), on every decode, and in
/// audit's replay, so the writers, the readers and audit share one set of rules.
pub(crate) fn check_event(event: &Event, key_seq: Seq) -> Result<(), String> {
    check_position(event, key_seq)?;
    check_kind(event)
}

/// The seq rules: the value's seq is its key's, at least 1 and at most [`Seq::MAX`].
pub(crate) fn check_position(event: &Event, key_seq: Seq) -> Result<(), String> {
    let seq = event.seq;
    if seq != key_seq {
        return Err(format!("value says seq {seq} but is stored under seq {key_seq}"));
    }
    if seq == Seq::ZERO {
        return Err("seq 0 is not a valid event position".to_string());
    }
    if seq > Seq::MAX {
        return Err(format!("seq {seq} is past the highest seq an event may have ({})", Seq::MAX));
    }
    Ok(())
}

/// The rules of each kind's payload (given its seq).
pub(crate) fn check_kind(event: &Event) -> Result<(), String> {
    let seq = event.seq;
    match &event.kind {
        EventKind::MessageAppended(m) => m.validate(0, MAX_STORED_MESSAGE_BYTES).map_err(|e| e.to_string()),
        EventKind::CompactionSpliced(s) if s.upto <= s.previous_upto => {
            Err(format!("splice upto {} does not move past previous upto {}", s.upto, s.previous_upto))
        }
        EventKind::CompactionSpliced(s) if s.upto >= seq => {
            Err(format!("splice at seq {seq} covers up to {}, which is not before it", s.upto))
        }
        // Each episode before this one was closed by an earlier boundary, so the number is below
        // the seq (and `episode + 1` in the fold cannot overflow).
        EventKind::EpisodeBoundary { episode, .. } if *episode >= seq.get() => {
            Err(format!("episode {episode} cannot end at seq {seq}: fewer events came before it"))
        }
        EventKind::MemoriesExtracted { from, upto, .. } if upto < from => {
            Err(format!("memory extraction span ({from}, {upto}] is backwards"))
        }
        EventKind::MemoriesExtracted { upto, .. } if *upto >= seq => {
            Err(format!("memory extraction at seq {seq} covers up to {upto}, which is not before it"))
        }
        EventKind::MemoriesExtracted { namespace, .. } if SessionId::new(namespace.as_str()).is_err() => Err(format!(
            "namespace {:?} is not a namespace (1 to {MAX_SESSION_ID_BYTES} bytes of the session-id alphabet)",
            truncate_for_error(namespace)
        )),
        EventKind::MetadataSet { document } if document.len() > MAX_STORED_METADATA_BYTES => Err(format!(
            "metadata document of {} bytes is past the stored limit of {MAX_STORED_METADATA_BYTES}",
            document.len()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{Message, Role, ToolCall};

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

    #[test]
    fn every_structural_rule_refuses_on_decode_what_a_push_refuses() {
        let ns = |namespace: &str, from: u64, upto: u64| EventKind::MemoriesExtracted {
            namespace: namespace.to_string(),
            from: Seq::new(from),
            upto: Seq::new(upto),
            n_memories: 1,
        };
        let boundary =
            |episode| EventKind::EpisodeBoundary { episode, reason: crate::log::event::BoundaryReason::Explicit };
        let bad = [
            event(5, ns("n", 3, 2)),
            event(5, ns("n", 0, 5)),
            event(5, ns("", 0, 1)),
            event(5, ns("a b", 0, 1)),
            event(5, boundary(5)),
            event(5, boundary(u64::MAX)),
            event(Seq::MAX.get() + 1, EventKind::SessionDeleted { n_events_removed: 0 }),
            event(u64::MAX, EventKind::MessageAppended(Message::user("hi"))),
        ];
        for ev in bad {
            assert!(check_event(&ev, ev.seq).is_err(), "{ev:?}");
            // Bytes written by hand (skipping the push that would refuse them) are corrupt on read.
            let mut bytes = vec![EVENT_FORMAT];
            rmp_serde::encode::write(&mut bytes, &ev).expect("encodes");
            assert!(matches!(decode_event("s", ev.seq, &bytes), Err(Error::Corrupt { .. })), "{ev:?}");
        }
        for ok in [event(5, ns("n", 3, 4)), event(5, boundary(4)), event(Seq::MAX.get(), boundary(0))] {
            assert_eq!(check_event(&ok, ok.seq), Ok(()), "{ok:?}");
        }
    }

    /// Heads are positional msgpack arrays; one written before `metadata` and `log_start` existed
    /// is two elements shorter and must still decode, with both absent.
    #[test]
    fn a_head_written_before_metadata_and_resets_existed_still_decodes() {
        let head = crate::log::fold::replay(&[
            event(1, EventKind::MessageAppended(Message::user("hi"))),
            event(2, EventKind::SessionDeleted { n_events_removed: 1 }),
            event(3, EventKind::MessageAppended(Message::user("again"))),
        ]);
        // The 9 fields of the earlier format, in order, as that build wrote them.
        let old = (
            head.last_seq(),
            head.n_messages(),
            head.splice().cloned(),
            head.open_calls().to_vec(),
            Vec::<u64>::new(),
            head.episode(),
            head.episode_turns(),
            head.base(),
            head.is_deleted(),
        );
        let mut bytes = vec![HEAD_FORMAT];
        rmp_serde::encode::write(&mut bytes, &old).expect("encodes");
        let decoded = decode_head("s", &bytes).expect("an old head decodes");
        assert_eq!(decoded, head);
        assert_eq!((decoded.metadata_seq(), decoded.log_start()), (None, Seq::new(2)));
        // The new head is an array (not a map): 11 elements now.
        let new = encode_head(&head);
        assert_eq!(new[1], 0x90 | 11);
        assert_eq!(decode_head("s", &new).expect("round trip"), head);
    }

    #[test]
    fn metadata_and_reset_events_round_trip() {
        for kind in [
            EventKind::MetadataSet { document: r#"{"a":1}"#.to_string() },
            EventKind::MessagesReset { n_messages_dropped: 3 },
        ] {
            let ev = event(4, kind);
            assert_eq!(decode_event("s", Seq::new(4), &encode_event(&ev)).expect("round trip"), ev);
        }
        let huge = event(4, EventKind::MetadataSet { document: "x".repeat(MAX_STORED_METADATA_BYTES + 1) });
        assert!(check_event(&huge, huge.seq).is_err());
    }

    /// The serde path alone (no fast path): what the format means.
    fn serde_decode(body: &[u8]) -> Result<Event, String> {
        decode(EVENT_FORMAT, &[&[EVENT_FORMAT][..], body].concat())
    }

    fn random_text(rng: &mut fastrand::Rng) -> String {
        // Lengths around every msgpack str width (fixstr, str8, str16, str32), some multi-byte text.
        let len = match rng.u8(..8) {
            0 => 0,
            1 => rng.usize(30..34),
            2 => rng.usize(254..258),
            3 if rng.u8(..8) == 0 => rng.usize(65_534..65_538),
            _ => rng.usize(1..300),
        };
        let mut out = String::with_capacity(len);
        while out.len() < len {
            out.push(match rng.u8(..10) {
                0 => rng.char(..),
                1 => ['é', '\u{0}', '\n', '日', '\u{1F600}'][rng.usize(..5)],
                _ => rng.alphanumeric(),
            });
        }
        out
    }

    fn random_u64(rng: &mut fastrand::Rng) -> u64 {
        let edges = [0, 1, 127, 128, 255, 256, 65_535, 65_536, u32::MAX as u64, u32::MAX as u64 + 1, u64::MAX];
        if rng.bool() { edges[rng.usize(..edges.len())] } else { rng.u64(..) }
    }

    /// Messages of every shape, valid or not (the decoders decode; `check_event` judges).
    fn random_message_event(rng: &mut fastrand::Rng) -> Event {
        let role = [Role::System, Role::User, Role::Assistant, Role::Tool][rng.usize(..4)];
        let mut message = Message::new(role, random_text(rng));
        for _ in 0..[0, 1, 2, rng.usize(..20)][rng.usize(..4)] {
            message.tool_calls.push(ToolCall::new(random_text(rng), random_text(rng), random_text(rng)));
        }
        message.tool_call_id = rng.bool().then(|| random_text(rng));
        message.created_at_ms = random_u64(rng);
        for _ in 0..[0, 1, rng.usize(..20)][rng.usize(..3)] {
            message.metadata.insert(random_text(rng), random_text(rng));
        }
        Event { seq: Seq::new(random_u64(rng)), at_ms: random_u64(rng), kind: EventKind::MessageAppended(message) }
    }

    fn body_of(ev: &Event) -> Vec<u8> {
        let mut body = Vec::new();
        rmp_serde::encode::write(&mut body, ev).expect("encodes");
        body
    }

    /// The fast path's whole promise: whenever it answers, serde answers the same; so the bytes it
    /// takes mean what they meant, and damage it refuses is judged by serde as before.
    fn assert_fast_agrees(body: &[u8], scratch: &mut EventBuf) {
        if let Some(fast) = crate::log::fast::message_event(body) {
            assert_eq!(serde_decode(body).as_ref(), Ok(&fast), "the fast path decoded {body:?} differently");
        }
        if crate::log::fast::message_event_into(body, scratch) {
            assert_eq!(
                serde_decode(body).as_ref(),
                Ok(&scratch.event),
                "decoded {body:?} into a used event differently"
            );
        }
    }

    #[test]
    fn the_fast_path_decodes_every_message_event_as_serde_does() {
        let mut rng = fastrand::Rng::with_seed(12);
        let mut scratch = EventBuf::new();
        scratch.event = event(1, EventKind::SessionDeleted { n_events_removed: 0 });
        for _ in 0..200 {
            let ev = random_message_event(&mut rng);
            let body = body_of(&ev);
            assert_eq!(crate::log::fast::message_event(&body).as_ref(), Some(&ev), "the encoder's own shape");
            assert_eq!(serde_decode(&body).as_ref(), Ok(&ev));
            // Through the codec entry points too, with the same errors for the same checks.
            let bytes = [&[EVENT_FORMAT][..], &body].concat();
            assert_eq!(decode_event_unchecked("s", ev.seq, &bytes).expect("decodes"), ev);
            // Into a scratch event still holding the previous one's strings and calls.
            decode_event_into("s", ev.seq, &bytes, &mut scratch).expect("decodes");
            assert_eq!(scratch.event, ev);
        }
        // Other kinds are serde's.
        let marker =
            event(5, EventKind::EpisodeBoundary { episode: 1, reason: crate::log::event::BoundaryReason::TurnCap });
        assert_eq!(crate::log::fast::message_event(&body_of(&marker)), None);
        assert_eq!(decode_event("s", Seq::new(5), &encode_event(&marker)).expect("decodes"), marker);
        // Shapes the encoder does not write but serde reads: serde's, with the same answer.
        let ev = event(7, EventKind::MessageAppended(Message::user("hi").with_metadata("k", "v")));
        let mut named = vec![EVENT_FORMAT];
        rmp_serde::encode::write_named(&mut named, &ev).expect("encodes");
        assert_eq!(crate::log::fast::message_event(&named[1..]), None);
        assert_eq!(decode_event("s", Seq::new(7), &named).expect("serde reads maps"), ev);
    }

    #[test]
    fn the_fast_path_never_accepts_damage_that_serde_reads_otherwise() {
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..30 {
            let body = body_of(&random_message_event(&mut rng));
            // A used buffer, as a whole-log walk's is.
            let mut scratch = EventBuf::new();
            scratch.event = random_message_event(&mut rng);
            let positions: Vec<usize> = if body.len() <= 150 {
                (0..body.len()).collect()
            } else {
                (0..150).map(|_| rng.usize(..body.len())).collect()
            };
            for &at in &positions {
                assert_fast_agrees(&body[..at], &mut scratch);
                for value in [0x00, 0x7f, 0x80, 0x90, 0xa0, 0xc0, 0xcc, 0xcf, 0xd0, 0xd9, 0xdc, 0xde, 0xff] {
                    let mut damaged = body.clone();
                    damaged[at] = value;
                    assert_fast_agrees(&damaged, &mut scratch);
                }
                let mut flipped = body.clone();
                flipped[at] ^= 1 << rng.u8(..8);
                assert_fast_agrees(&flipped, &mut scratch);
            }
            let trailing = [&body[..], &[0]].concat();
            assert_eq!(crate::log::fast::message_event(&trailing), None, "trailing bytes are serde's to refuse");
            assert!(serde_decode(&trailing).is_err());
        }
    }
}
