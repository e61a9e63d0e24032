//! The pure core's hot paths, no storage involved:
//!
//! - `fold/apply_1000`: `palimpsest::apply` over 1,000 message events (a realistic mix of user
//!   messages, tool calls, tool results and answers) from an empty head.
//! - `fold/replay_1000`: `palimpsest::replay` over the same events.
//! - `codec_mirror/*`: the codec is private, so these mirror what `codec.rs` does (a format byte
//!   plus rmp-serde, without the structural checks it adds on top): encoding one ~200-byte message
//!   event, decoding one, and decoding the 50 events a `working_memory(50)` read decodes.
//!   They show how much of a read or an append is msgpack work.
//! - `codec_mirror/decode_50_events_borrowed`: the same 50 events decoded from the slice itself
//!   (`Deserializer::from_read_ref`) instead of through `io::Read` (`Deserializer::new(&mut rest)`,
//!   which the codec uses and which copies every string into a scratch buffer first); trailing
//!   bytes are still detected, by reading one more marker and expecting the end of input.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palimpsest::{Event, EventKind, Head, Seq, apply, replay};
use serde::Deserialize;

use common::{FORMAT_BYTE, encode_like_codec, mixed_message};

const N_EVENTS: u64 = 1_000;

fn events(n: u64) -> Vec<Event> {
    (0..n)
        .map(|idx| Event {
            seq: Seq::new(idx + 1),
            at_ms: 1_700_000_000_000 + idx,
            kind: EventKind::MessageAppended(mixed_message(idx)),
        })
        .collect()
}

fn decode_like_codec(bytes: &[u8]) -> Event {
    let (&version, mut body) = bytes.split_first().expect("a non-empty value");
    assert_eq!(version, FORMAT_BYTE);
    let event = Event::deserialize(&mut rmp_serde::Deserializer::new(&mut body)).expect("decodes");
    assert!(body.is_empty(), "no trailing bytes");
    event
}

/// Decodes like [`decode_like_codec`] but lets rmp-serde borrow strings from `bytes` (one copy
/// into each `String` instead of two). rmp-serde exposes no remaining-input accessor for this
/// reader, so trailing bytes are found by reading one more value: only end-of-input means none.
fn decode_borrowed(bytes: &[u8]) -> Result<Event, String> {
    let (&version, body) = bytes.split_first().ok_or("empty value")?;
    if version != FORMAT_BYTE {
        return Err(format!("unknown format version {version}"));
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    let event = Event::deserialize(&mut de).map_err(|e| format!("undecodable: {e}"))?;
    match serde::de::IgnoredAny::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Ok(event)
        }
        _ => Err("trailing bytes after the record".to_string()),
    }
}

fn bench_fold(c: &mut Criterion) {
    let events = events(N_EVENTS);
    let mut group = c.benchmark_group("fold");
    group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.bench_function(format!("apply_{N_EVENTS}"), |b| {
        b.iter(|| {
            let mut head = Head::default();
            for event in &events {
                apply(&mut head, black_box(event));
            }
            head
        });
    });
    group.bench_function(format!("replay_{N_EVENTS}"), |b| b.iter(|| replay(black_box(&events))));
    group.finish();
}

fn bench_codec_mirror(c: &mut Criterion) {
    let events = events(N_EVENTS);
    // The last 50 events, as `working_memory(50)` reads them.
    let window: Vec<Vec<u8>> = events[events.len() - 50..].iter().map(encode_like_codec).collect();
    let one = &events[events.len() - 1];
    let one_bytes = encode_like_codec(one);
    assert_eq!(&decode_like_codec(&one_bytes), one, "the mirror round-trips");
    assert_eq!(decode_borrowed(&one_bytes).as_ref(), Ok(one), "the borrowed decode round-trips");
    let trailing = [one_bytes.as_slice(), &[0]].concat();
    assert!(decode_borrowed(&trailing).is_err(), "the borrowed decode notices a trailing byte");
    let truncated = &one_bytes[..one_bytes.len() - 1];
    assert!(decode_borrowed(truncated).is_err(), "the borrowed decode notices a missing byte");

    let mut group = c.benchmark_group("codec_mirror");
    group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.bench_function("encode_event", |b| b.iter(|| encode_like_codec(black_box(one))));
    group.bench_function("decode_event", |b| b.iter(|| decode_like_codec(black_box(&one_bytes))));
    group.bench_function("decode_50_events", |b| {
        b.iter(|| window.iter().map(|bytes| decode_like_codec(black_box(bytes))).collect::<Vec<_>>());
    });
    group.bench_function("decode_50_events_borrowed", |b| {
        b.iter(|| window.iter().map(|bytes| decode_borrowed(black_box(bytes)).expect("decodes")).collect::<Vec<_>>());
    });
    group.finish();
}

criterion_group!(benches, bench_fold, bench_codec_mirror);
criterion_main!(benches);
