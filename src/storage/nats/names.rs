//! Names on the cluster: streams, subjects and message ids, and the injective encoding of session
//! ids into subject tokens. Pure: no client, no runtime.
//!
//! A session id may hold `.` (the subject separator) and `:`/`@`, so it cannot be a subject token
//! as it is. It is written as the lowercase hex of its bytes: injective (two ids never share a
//! token), reversible, and made only of `[0-9a-f]`, which is valid in every subject and needs no
//! escaping anywhere. The longest id (128 bytes) becomes a 256-byte token.

use crate::error::Error;
use crate::log::ids::{Seq, SessionId, SummaryHash};

/// The names of one database on the cluster, derived from `storage.nats.stream_prefix`.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
    streams: u64,
}

impl Names {
    /// `streams` is at least 1 (checked by config validation).
    pub(crate) fn new(prefix: &str, streams: u64) -> Self {
        assert!(streams >= 1, "config validation keeps storage.nats.streams at least 1");
        Self { prefix: prefix.to_string(), streams }
    }

    /// The number of session streams.
    pub(crate) fn streams(&self) -> u64 {
        self.streams
    }

    /// Which session stream holds `session`: FNV-1a of the id's bytes, modulo the stream count.
    /// FNV rather than std's hasher because the result must be the same in every build and
    /// process, forever (it decides where a session's records live).
    pub(crate) fn stream_index(&self, session: &SessionId) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in session.as_str().bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash % self.streams
    }

    /// The name of session stream `index`: `{prefix}_s{index}`.
    pub(crate) fn stream(&self, index: u64) -> String {
        format!("{}_s{index}", self.prefix)
    }

    /// The subjects session stream `index` holds: `{prefix}.s{index}.>`.
    pub(crate) fn stream_subjects(&self, index: u64) -> String {
        format!("{}.s{index}.>", self.prefix)
    }

    /// The stream and subject of a session's records: `{prefix}.s{index}.{hex(id)}`.
    pub(crate) fn session(&self, session: &SessionId) -> (String, String) {
        let index = self.stream_index(session);
        (self.stream(index), format!("{}.s{index}.{}", self.prefix, encode_token(session.as_str())))
    }

    /// The session a subject of session stream `index` names, if it is one of ours.
    pub(crate) fn session_of(&self, index: u64, subject: &str) -> Result<SessionId, Error> {
        let head = format!("{}.s{index}.", self.prefix);
        let token = subject.strip_prefix(head.as_str()).ok_or_else(|| corrupt(subject))?;
        let id = decode_token(token).ok_or_else(|| corrupt(subject))?;
        SessionId::new(id).map_err(|_| corrupt(subject))
    }

    /// The stream of blobs, memories and pending deletions: `{prefix}_meta`.
    pub(crate) fn meta_stream(&self) -> String {
        format!("{}_meta", self.prefix)
    }

    /// The subjects of the meta stream: `{prefix}.m.>`.
    pub(crate) fn meta_subjects(&self) -> String {
        format!("{}.m.>", self.prefix)
    }

    /// A blob's subject: `{prefix}.m.b.{hash hex}`.
    pub(crate) fn blob(&self, hash_hex: &str) -> String {
        format!("{}.m.b.{hash_hex}", self.prefix)
    }

    /// Every blob: `{prefix}.m.b.*`.
    pub(crate) fn blobs(&self) -> String {
        format!("{}.m.b.*", self.prefix)
    }

    /// The hash a blob subject names.
    pub(crate) fn blob_of(&self, subject: &str) -> Result<SummaryHash, Error> {
        let head = format!("{}.m.b.", self.prefix);
        let hex = subject.strip_prefix(head.as_str()).ok_or_else(|| corrupt(subject))?;
        SummaryHash::from_hex(hex).map_err(|_| corrupt(subject))
    }

    /// A memory's subject: `{prefix}.m.n.{hex(namespace)}.{hex(key)}`.
    pub(crate) fn memory(&self, namespace: &str, key: &str) -> String {
        format!("{}.m.n.{}.{}", self.prefix, encode_token(namespace), encode_token(key))
    }

    /// Every memory of a namespace: `{prefix}.m.n.{hex(namespace)}.*`.
    pub(crate) fn memories(&self, namespace: &str) -> String {
        format!("{}.m.n.{}.*", self.prefix, encode_token(namespace))
    }

    /// An extraction marker: `{prefix}.m.e.{hex(id)}.{seq:016x}` while pending, `{prefix}.m.g...`
    /// once given up. The seq is fixed-width hex, so the subjects of one session sort by seq.
    pub(crate) fn extraction(&self, given_up: bool, session: &SessionId, at: Seq) -> String {
        let tag = if given_up { 'g' } else { 'e' };
        format!("{}.m.{tag}.{}.{:016x}", self.prefix, encode_token(session.as_str()), at.get())
    }

    /// Every pending (or every given-up) extraction marker: `{prefix}.m.e.*.*` (`.g.`).
    pub(crate) fn extractions(&self, given_up: bool) -> String {
        let tag = if given_up { 'g' } else { 'e' };
        format!("{}.m.{tag}.*.*", self.prefix)
    }

    /// The session and seq an extraction marker's subject names.
    pub(crate) fn extraction_of(&self, given_up: bool, subject: &str) -> Result<(SessionId, Seq), Error> {
        let tag = if given_up { 'g' } else { 'e' };
        let head = format!("{}.m.{tag}.", self.prefix);
        let rest = subject.strip_prefix(head.as_str()).ok_or_else(|| corrupt(subject))?;
        let (token, seq) = rest.split_once('.').ok_or_else(|| corrupt(subject))?;
        let id = decode_token(token).ok_or_else(|| corrupt(subject))?;
        let session = SessionId::new(id).map_err(|_| corrupt(subject))?;
        let seq_ok = seq.len() == 16 && seq.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let at = u64::from_str_radix(seq, 16).ok().filter(|_| seq_ok).ok_or_else(|| corrupt(subject))?;
        Ok((session, Seq::new(at)))
    }

    /// Every memory of every namespace: `{prefix}.m.n.*.*`.
    pub(crate) fn all_memories(&self) -> String {
        format!("{}.m.n.*.*", self.prefix)
    }

    /// The namespace and key a memory subject names.
    pub(crate) fn memory_of(&self, subject: &str) -> Result<(String, String), Error> {
        let head = format!("{}.m.n.", self.prefix);
        let rest = subject.strip_prefix(head.as_str()).ok_or_else(|| corrupt(subject))?;
        let (ns, key) = rest.split_once('.').ok_or_else(|| corrupt(subject))?;
        Ok((decode_token(ns).ok_or_else(|| corrupt(subject))?, decode_token(key).ok_or_else(|| corrupt(subject))?))
    }

    /// The pending-deletion marker of a session: `{prefix}.m.d.{hex(id)}`.
    pub(crate) fn deletion(&self, session: &SessionId) -> String {
        format!("{}.m.d.{}", self.prefix, encode_token(session.as_str()))
    }

    /// Every pending-deletion marker: `{prefix}.m.d.*`.
    pub(crate) fn deletions(&self) -> String {
        format!("{}.m.d.*", self.prefix)
    }

    /// The session a pending-deletion marker names.
    pub(crate) fn session_of_deletion(&self, subject: &str) -> Result<SessionId, Error> {
        let head = format!("{}.m.d.", self.prefix);
        let token = subject.strip_prefix(head.as_str()).ok_or_else(|| corrupt(subject))?;
        let id = decode_token(token).ok_or_else(|| corrupt(subject))?;
        SessionId::new(id).map_err(|_| corrupt(subject))
    }
}

/// The key of a memory subject's last token, decoded (for listing a namespace).
pub(crate) fn memory_key_of(subject: &str) -> Option<String> {
    subject.rsplit('.').next().and_then(decode_token)
}

/// Lowercase hex of the bytes: an injective map onto `[0-9a-f]*`.
pub(crate) fn encode_token(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        // Writing into a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The inverse of [`encode_token`]; `None` for anything it could not have produced.
pub(crate) fn decode_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || !token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

fn corrupt(subject: &str) -> Error {
    Error::Corrupt {
        session: None,
        seq: None,
        detail: format!("subject {subject:?} does not decode to a name of this database"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_round_trip_and_never_collide() {
        let ids = ["a", "a.b", "a:b", "a@b", "ab", "A-_.:@z", "..", "x".repeat(128).as_str()].map(str::to_string);
        let names = Names::new("p", 3);
        let mut subjects = std::collections::BTreeSet::new();
        for id in &ids {
            let session = SessionId::new(id.clone()).expect("a valid id");
            let (stream, subject) = names.session(&session);
            assert!(subject.split('.').all(|t| !t.is_empty() && !t.contains(['*', '>', ' '])), "{subject}");
            let index = names.stream_index(&session);
            assert_eq!(stream, names.stream(index));
            assert_eq!(names.session_of(index, &subject).expect("decodes"), session);
            assert!(subjects.insert(subject), "two ids share a subject");
        }
        assert_eq!(decode_token("6"), None);
        assert_eq!(decode_token("zz"), None);
        assert_eq!(decode_token("6A"), None, "uppercase is never produced, so never accepted");
        let marker = names.extraction(false, &SessionId::new("a.b").expect("valid"), Seq::new(300));
        assert_eq!(marker, "p.m.e.612e62.000000000000012c");
        assert_eq!(
            names.extraction_of(false, &marker).expect("decodes"),
            (SessionId::new("a.b").expect("valid"), Seq::new(300))
        );
        assert!(names.extraction_of(true, &marker).is_err(), "pending and given-up subjects are disjoint");
        assert!(names.extraction_of(false, "p.m.e.612e62.12c").is_err(), "the seq is fixed width");
    }

    #[test]
    fn stream_choice_is_stable() {
        // The hash decides where records live: it must never change between builds.
        let names = Names::new("p", 7);
        let session = SessionId::new("session-1").expect("valid");
        // FNV-1a("session-1") = 0x1688595dcf49184d, which is 5 modulo 7.
        assert_eq!(names.stream_index(&session), 5);
    }
}
