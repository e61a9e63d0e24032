//! A fast path for decoding the one event kind that fills every log, `MessageAppended`, in the exact
//! shape this build's encoder writes it (rmp-serde's compact form: structs as arrays, enum variants
//! as their names, integers in their shortest unsigned form). Audit and every read decode millions
//! of these; going through serde's visitors costs about twice what reading the same bytes directly
//! does (profiled in BENCHMARKS.md, "Round 2, third pass").
//!
//! It is a subset decoder, never a second definition of the format: it answers `Some(event)` only
//! for input the serde decoder (`codec::decode`) also accepts and decodes to an equal event, and
//! `None` for anything else (another kind, a map-shaped struct, a signed integer, bad UTF-8, a
//! truncation, trailing bytes...), which then goes through serde as before. So what decodes, what is
//! `Corrupt`, and every check made after decoding are unchanged. The tests of `codec` hold it to
//! that on generated events and on every truncation and byte flip of them.

use crate::log::event::{Event, EventKind, MAX_TOOL_CALLS_PER_MESSAGE, Message, Role, ToolCall};
use crate::log::ids::Seq;

/// The body of an event value (after the version byte) as a `MessageAppended` event, or `None`
/// when it is anything else in any way (see the module docs).
pub(crate) fn message_event(body: &[u8]) -> Option<Event> {
    let mut buf = EventBuf::new();
    message_event_into(body, &mut buf).then_some(buf.event)
}

/// An event that a whole-log walk (audit) decodes every event into, reusing its strings and
/// vectors instead of allocating and freeing each event's; with the tool calls and the call id
/// the last events no longer needed kept for the next ones (a turn's messages alternate between
/// having them and not).
pub(crate) struct EventBuf {
    /// The event last decoded into it.
    pub(crate) event: Event,
    spare_calls: Vec<ToolCall>,
    spare_id: Option<String>,
}

impl EventBuf {
    pub(crate) fn new() -> Self {
        let event = Event { seq: Seq::ZERO, at_ms: 0, kind: EventKind::MessageAppended(empty_message()) };
        Self { event, spare_calls: Vec::new(), spare_id: None }
    }
}

/// [`message_event`] into `buf`. True when `buf.event` is now the event; false when the bytes are
/// anything else, and `buf.event` is then unspecified (the caller replaces it).
pub(crate) fn message_event_into(body: &[u8], buf: &mut EventBuf) -> bool {
    let mut r = Reader { bytes: body, pos: 0 };
    let EventBuf { event: out, spare_calls, spare_id } = buf;
    let decoded = (|| {
        r.array(3)?;
        out.seq = Seq::new(r.uint()?);
        out.at_ms = r.uint()?;
        if r.map_len()? != 1 || r.str()? != b"MessageAppended" {
            return None;
        }
        if !matches!(out.kind, EventKind::MessageAppended(_)) {
            out.kind = EventKind::MessageAppended(empty_message());
        }
        let EventKind::MessageAppended(message) = &mut out.kind else { return None };
        r.message_into(message, spare_calls, spare_id)
    })();
    // Trailing bytes after the record: serde's path reports them as damage.
    decoded.is_some() && r.pos == body.len()
}

fn empty_message() -> Message {
    Message::new(Role::User, String::new())
}

/// MessagePack markers of the shapes the encoder writes (see the msgpack spec).
const NIL: u8 = 0xc0;
const UINT8: u8 = 0xcc;
const UINT16: u8 = 0xcd;
const UINT32: u8 = 0xce;
const UINT64: u8 = 0xcf;
const STR8: u8 = 0xd9;
const STR16: u8 = 0xda;
const STR32: u8 = 0xdb;
const ARRAY16: u8 = 0xdc;
const ARRAY32: u8 = 0xdd;
const MAP16: u8 = 0xde;
const MAP32: u8 = 0xdf;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// An unsigned integer in any of msgpack's unsigned forms (signed forms: `None`).
    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            UINT8 => self.be(1),
            UINT16 => self.be(2),
            UINT32 => self.be(4),
            UINT64 => self.be(8),
            _ => None,
        }
    }

    /// The length of an array; every element takes at least one byte, so a length past the bytes
    /// left is refused before anything is allocated for it.
    fn array_len(&mut self) -> Option<usize> {
        let len = match self.byte()? {
            b @ 0x90..=0x9f => u64::from(b & 0x0f),
            ARRAY16 => self.be(2)?,
            ARRAY32 => self.be(4)?,
            _ => return None,
        };
        usize::try_from(len).ok().filter(|n| *n <= self.bytes.len() - self.pos)
    }

    fn array(&mut self, len: usize) -> Option<()> {
        (self.array_len()? == len).then_some(())
    }

    /// The length of a map; at most half the bytes left (a key and a value per entry).
    fn map_len(&mut self) -> Option<usize> {
        let len = match self.byte()? {
            b @ 0x80..=0x8f => u64::from(b & 0x0f),
            MAP16 => self.be(2)?,
            MAP32 => self.be(4)?,
            _ => return None,
        };
        usize::try_from(len).ok().filter(|n| *n <= (self.bytes.len() - self.pos) / 2)
    }

    /// A msgpack str's bytes (not checked as UTF-8).
    fn str(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            b @ 0xa0..=0xbf => u64::from(b & 0x1f),
            STR8 => self.be(1)?,
            STR16 => self.be(2)?,
            STR32 => self.be(4)?,
            _ => return None,
        };
        self.take(usize::try_from(len).ok()?)
    }

    /// A str checked as UTF-8 (exactly what `std::str::from_utf8` accepts, with SIMD).
    fn utf8(&mut self) -> Option<&'a str> {
        simdutf8::basic::from_utf8(self.str()?).ok()
    }

    /// A str into `out`, reusing its buffer.
    fn string_into(&mut self, out: &mut String) -> Option<()> {
        let text = self.utf8()?;
        out.clear();
        out.push_str(text);
        Some(())
    }

    fn message_into(
        &mut self,
        m: &mut Message,
        spare_calls: &mut Vec<ToolCall>,
        spare_id: &mut Option<String>,
    ) -> Option<()> {
        self.array(6)?;
        m.role = match self.str()? {
            b"system" => Role::System,
            b"user" => Role::User,
            b"assistant" => Role::Assistant,
            b"tool" => Role::Tool,
            _ => return None,
        };
        self.string_into(&mut m.content)?;
        let n_calls = self.array_len()?;
        while m.tool_calls.len() > n_calls {
            // Kept for a later message's calls, at most as many as one message may carry.
            if let Some(call) = m.tool_calls.pop()
                && spare_calls.len() < MAX_TOOL_CALLS_PER_MESSAGE
            {
                spare_calls.push(call);
            }
        }
        for idx in 0..n_calls {
            self.array(3)?;
            if idx == m.tool_calls.len() {
                let call =
                    spare_calls.pop().unwrap_or_else(|| ToolCall::new(String::new(), String::new(), String::new()));
                m.tool_calls.push(call);
            }
            let call = &mut m.tool_calls[idx];
            self.string_into(&mut call.id)?;
            self.string_into(&mut call.name)?;
            self.string_into(&mut call.arguments)?;
        }
        if self.peek()? == NIL {
            self.pos += 1;
            if let Some(id) = m.tool_call_id.take() {
                *spare_id = Some(id);
            }
        } else {
            let mut id = m.tool_call_id.take().or_else(|| spare_id.take()).unwrap_or_default();
            self.string_into(&mut id)?;
            m.tool_call_id = Some(id);
        }
        m.created_at_ms = self.uint()?;
        m.metadata.clear();
        for _ in 0..self.map_len()? {
            let key = self.utf8()?.to_owned();
            // A repeated key keeps the last value, as serde's map decoding does.
            m.metadata.insert(key, self.utf8()?.to_owned());
        }
        Some(())
    }
}
