//! The key layout. Every keyspace and every key shape is defined here and nowhere else.
//!
//! | keyspace  | key                                   | value                          |
//! |-----------|---------------------------------------|--------------------------------|
//! | `events`  | session id, 0x00, seq (u64 BE)        | codec event (version byte + msgpack) |
//! | `heads`   | session id                            | codec head (version byte + msgpack)  |
//! | `splices` | session id, 0x00, seq of splice (BE)  | empty: an index of splice events     |
//! | `blobs`   | blake3 hash (32 bytes)                | summary text, UTF-8                  |
//! | `meta`    | ASCII name (`format`)                 | see SPEC.md                          |
//! | `memories`| namespace, 0x00, memory id (32 bytes) | memory record (version byte + msgpack) |
//! | `extractions` | 0x01 or 0x02, session id, 0x00, seq (BE) | extraction marker (version byte + msgpack) |
//!
//! Session ids never contain 0x00, so `id ++ 0x00` is a prefix that matches exactly one session,
//! and big-endian seqs make a session's events sort by number.

use crate::log::ids::{Seq, SessionId, SummaryHash};

/// Keyspace of events.
pub const EVENTS: &str = "events";
/// Keyspace of session heads (the materialized view's fold state).
pub const HEADS: &str = "heads";
/// Keyspace indexing splice events by (session, seq), for time travel.
pub const SPLICES: &str = "splices";
/// Keyspace of summary texts by hash.
pub const BLOBS: &str = "blobs";
/// Keyspace of database-wide records.
pub const META: &str = "meta";

/// Keyspace of long-term memories by (namespace, id).
pub const MEMORIES: &str = "memories";

/// Keyspace of extraction markers: pending ones (tag 0x01) and given-up ones (tag 0x02), each
/// keyed by the session and the seq of the event that scheduled the extraction.
pub const EXTRACTIONS: &str = "extractions";

/// The tag of a pending extraction marker: the first byte of its key.
pub const EXTRACTION_PENDING: u8 = 0x01;
/// The tag of a given-up extraction record.
pub const EXTRACTION_GIVEN_UP: u8 = 0x02;

/// The `meta` key holding the database format version.
pub const META_FORMAT: &[u8] = b"format";

const SEPARATOR: u8 = 0x00;
/// Prefix of the purge markers in `meta`: `purge 0x00 session 0x00 base: u64 BE`, one per
/// deletion whose dead events are not all removed yet (see `purge`).
pub const META_PURGE_PREFIX: &[u8] = b"purge\x00";
const SEQ_BYTES: usize = 8;

/// The prefix shared by every event (or splice-index) key of `session`.
pub fn session_prefix(session: &SessionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(session.as_str().len() + 1 + SEQ_BYTES);
    key.extend_from_slice(session.as_str().as_bytes());
    key.push(SEPARATOR);
    key
}

/// The key of `session`'s event number `seq` (also used for the splice index).
pub fn seq_key(session: &SessionId, seq: Seq) -> Vec<u8> {
    let mut key = session_prefix(session);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Splits an event (or splice-index) key into its session id text and seq.
/// Returns `None` for a key of any other shape.
pub fn parse_seq_key(key: &[u8]) -> Option<(&str, Seq)> {
    if key.len() < 1 + 1 + SEQ_BYTES {
        return None;
    }
    let (head, seq) = key.split_at(key.len() - SEQ_BYTES);
    let (&sep, id) = head.split_last()?;
    if sep != SEPARATOR {
        return None;
    }
    let id = std::str::from_utf8(id).ok()?;
    Some((id, Seq::new(u64::from_be_bytes(seq.try_into().ok()?))))
}

/// The key of a session's head.
pub fn head_key(session: &SessionId) -> &[u8] {
    session.as_str().as_bytes()
}

/// The prefix shared by every memory key of `namespace` (a session id's prefix: no 0x00 in it).
pub fn memory_prefix(namespace: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(namespace.len() + 1 + 32);
    key.extend_from_slice(namespace.as_bytes());
    key.push(SEPARATOR);
    key
}

/// The key of memory `id` (blake3 of namespace and text) in `namespace`.
pub fn memory_key(namespace: &str, id: &[u8; 32]) -> Vec<u8> {
    let mut key = memory_prefix(namespace);
    key.extend_from_slice(id);
    key
}

/// The key of an extraction marker with `tag` ([`EXTRACTION_PENDING`] or [`EXTRACTION_GIVEN_UP`])
/// for the event `at` of `session`. The tag byte is outside the session-id alphabet, so the
/// two kinds are two disjoint key ranges and a scan of one never reads the other.
pub fn extraction_key(tag: u8, session: &SessionId, at: Seq) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + session.as_str().len() + 1 + SEQ_BYTES);
    key.push(tag);
    key.extend_from_slice(&seq_key(session, at));
    key
}

/// Splits an extraction-marker key into its tag, session id text and seq.
pub fn parse_extraction_key(key: &[u8]) -> Option<(u8, &str, Seq)> {
    let (&tag, rest) = key.split_first()?;
    let (id, seq) = parse_seq_key(rest)?;
    Some((tag, id, seq))
}

/// The key of a summary blob.
pub fn blob_key(hash: &SummaryHash) -> &[u8] {
    hash.as_bytes()
}

/// The purge marker of the deletion of `session` at `base` (in `meta`).
pub fn purge_key(session: &SessionId, base: Seq) -> Vec<u8> {
    let mut key = META_PURGE_PREFIX.to_vec();
    key.extend_from_slice(&seq_key(session, base));
    key
}

/// The session and deletion seq of a purge marker key, if well formed.
pub fn parse_purge_key(key: &[u8]) -> Option<(&str, Seq)> {
    parse_seq_key(key.strip_prefix(META_PURGE_PREFIX)?)
}

/// The prefix of every purge marker of `session`.
pub fn purge_prefix(session: &SessionId) -> Vec<u8> {
    let mut key = META_PURGE_PREFIX.to_vec();
    key.extend_from_slice(&session_prefix(session));
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_sort_by_session_then_seq_and_parse_back() {
        let a = SessionId::new("a").expect("valid");
        let a0 = SessionId::new("a0").expect("valid");
        let keys = [
            seq_key(&a, Seq::new(1)),
            seq_key(&a, Seq::new(256)),
            seq_key(&a, Seq::new(u64::MAX)),
            seq_key(&a0, Seq::new(1)),
        ];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(parse_seq_key(&keys[1]), Some(("a", Seq::new(256))));
        assert!(!keys[3].starts_with(&session_prefix(&a)));
        assert_eq!(parse_seq_key(b"short"), None);
        let marker = extraction_key(EXTRACTION_PENDING, &a, Seq::new(7));
        assert_eq!(parse_extraction_key(&marker), Some((EXTRACTION_PENDING, "a", Seq::new(7))));
        assert!(marker < extraction_key(EXTRACTION_GIVEN_UP, &a, Seq::new(1)), "the two ranges are disjoint");
    }
}
