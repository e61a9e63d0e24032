//! Newtypes for the identifiers that must never be mixed up: [`SessionId`], [`Seq`] and
//! [`SummaryHash`]. Each one validates on construction, so a value of the type is always legal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The longest session id accepted, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// A session's name: 1 to [`MAX_SESSION_ID_BYTES`] bytes of ASCII letters, digits and `- _ . : @`.
///
/// The set is closed on purpose: ids become key prefixes (terminated by a 0x00 byte, which the set
/// excludes), file names in exports and arguments on the command line, and none of those should
/// need escaping.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// Checks `id` and wraps it; see the type's docs for the rules.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("must not be empty".to_string())
        } else if id.len() > MAX_SESSION_ID_BYTES {
            Some(format!("is {} bytes, the limit is {MAX_SESSION_ID_BYTES}", id.len()))
        } else {
            id.bytes().position(|b| !is_session_id_byte(b)).map(|idx| {
                format!(
                    "byte {idx} ({:?}) is outside the allowed set [A-Za-z0-9-_.:@]",
                    id[idx..].chars().next().unwrap_or('?')
                )
            })
        };
        match reason {
            Some(reason) => Err(Error::InvalidSessionId { id: truncate_for_error(&id), reason }),
            None => Ok(Self(id)),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_session_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@')
}

/// Keeps error messages bounded when the offending input is huge.
pub(crate) fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    format!("{}... ({} bytes)", &s[..s.floor_char_boundary(MAX)], s.len())
}

impl TryFrom<String> for SessionId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SessionId {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl FromStr for SessionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        id.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:?})", self.0)
    }
}

/// A position in one session's log. Events are numbered 1, 2, 3, ... with no gaps;
/// `Seq::ZERO` means "before the first event" (an empty session, or no splice yet).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// Before the first event.
    pub const ZERO: Seq = Seq(0);

    /// The highest seq an event may have: 2^62. No session gets near it (a million events a
    /// second for 146,000 years), and it sits far enough below `u64::MAX` that `seq + 1`, a
    /// reader's exclusive range end, never overflows for a stored event. An event past it is
    /// refused on every write path and reported as corrupt on read.
    pub const MAX: Seq = Seq(1 << 62);

    /// Wraps a raw sequence number.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The sequence number after this one, for positions in reads (an exclusive range end, the
    /// first seq after a deletion). It saturates instead of panicking: stored seqs are at most
    /// [`Seq::MAX`], so a valid log never saturates, and a damaged one gets a wrong bound that the
    /// read then refuses, never a panic. The write path uses [`Seq::checked_next`].
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The seq a new event after this one gets, or [`Error::InvalidArgument`] when that would pass
    /// [`Seq::MAX`]: the session is full and nothing is written.
    pub fn checked_next(self) -> Result<Self, Error> {
        match self.0.checked_add(1) {
            Some(n) if n <= Self::MAX.0 => Ok(Self(n)),
            _ => Err(Error::InvalidArgument {
                what: "seq",
                reason: format!("the session is full: no event may have a seq past {}", Self::MAX.0),
            }),
        }
    }

    /// Big-endian bytes: the on-disk form, so keys sort by number.
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The blake3 hash of a summary's UTF-8 bytes; summaries are stored once under it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SummaryHash(
    // A msgpack `bin 32` (`c4 20` then the bytes), not an array of 32 integers (SPEC section 3).
    #[serde(with = "serde_bytes")] [u8; 32],
);

impl SummaryHash {
    /// Hashes a summary's text.
    pub fn of(text: &str) -> Self {
        Self(*blake3::hash(text.as_bytes()).as_bytes())
    }

    /// Wraps raw hash bytes (as stored in a key).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(hex: &str) -> Result<Self, Error> {
        blake3::Hash::from_hex(hex).map(|h| Self(*h.as_bytes())).map_err(|e| Error::InvalidArgument {
            what: "summary hash",
            reason: format!("{e}: {}", truncate_for_error(hex)),
        })
    }
}

impl fmt::Display for SummaryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SummaryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SummaryHash({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_outside_the_set_are_refused_with_the_reason() {
        assert!(SessionId::new("user-42:chat.1@x_y").is_ok());
        for bad in ["", "a b", "a/b", "é", "a\0b", &"x".repeat(MAX_SESSION_ID_BYTES + 1)] {
            let err = SessionId::new(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidSessionId { .. }), "{err}");
        }
        assert!(SessionId::new("x".repeat(MAX_SESSION_ID_BYTES)).is_ok());
    }

    #[test]
    fn seq_arithmetic_never_panics_and_the_write_side_stops_at_max() {
        assert_eq!(Seq::new(u64::MAX).next(), Seq::new(u64::MAX));
        assert_eq!(Seq::new(7).checked_next().expect("room"), Seq::new(8));
        assert_eq!(Seq::new(Seq::MAX.get() - 1).checked_next().expect("room for one"), Seq::MAX);
        for full in [Seq::MAX, Seq::new(u64::MAX)] {
            assert!(matches!(full.checked_next(), Err(Error::InvalidArgument { what: "seq", .. })));
        }
    }

    #[test]
    fn long_inputs_are_cut_for_errors_on_a_char_boundary() {
        assert_eq!(truncate_for_error("short"), "short");
        // 27 three-byte chars: byte 80 falls inside the 27th, so the cut keeps 26 (78 bytes).
        let euros = "\u{20ac}".repeat(27);
        assert_eq!(truncate_for_error(&euros), format!("{}... (81 bytes)", "\u{20ac}".repeat(26)));
        let ascii = "x".repeat(100);
        assert_eq!(truncate_for_error(&ascii), format!("{}... (100 bytes)", "x".repeat(80)));
    }

    #[test]
    fn a_summary_hash_is_stored_as_msgpack_bin_32() {
        let h = SummaryHash::of("hello");
        let bytes = rmp_serde::to_vec(&h).expect("encodes");
        assert_eq!(bytes[..2], [0xc4, 0x20], "bin 8 with length 32");
        assert_eq!(bytes[2..], *h.as_bytes());
        assert_eq!(rmp_serde::from_slice::<SummaryHash>(&bytes).expect("decodes"), h);
        for bad_len in [31u8, 33] {
            let mut short = vec![0xc4, bad_len];
            short.resize(2 + usize::from(bad_len), 7);
            assert!(rmp_serde::from_slice::<SummaryHash>(&short).is_err(), "bin {bad_len} is not a hash");
        }
    }

    #[test]
    fn summary_hash_hex_round_trips() {
        let h = SummaryHash::of("hello");
        assert_eq!(SummaryHash::from_hex(&h.to_hex()).expect("valid hex"), h);
        assert!(SummaryHash::from_hex("zz").is_err());
    }
}
