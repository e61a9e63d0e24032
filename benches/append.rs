//! Single-message `Session::append`, side by side with raw fjall writing what the engine writes.
//!
//! - `append/engine_buffered`: `append` with `Durability::Buffered` (lock, head read + decode,
//!   validation, encode, one batch of event + head handed to the OS, no fsync).
//! - `append/raw_fjall_batch`: one fjall batch holding an encoded event and a head of the engine's
//!   sizes, committed with `PersistMode::Buffer` as the engine's store does.
//! - `append/raw_fjall_insert`: one plain `insert` of the same event bytes.
//! - `append_sync/engine_sync` and `append_sync/raw_fjall_batch_sync`: the same with an fsync per
//!   append and a single writer (so no group commit sharing); few samples, for context only.
//!
//! Messages cycle through the realistic four-message turn (user, tool call, tool result, answer),
//! so the stored head carries the open call and recently answered ids it would in real use.

mod common;

use std::time::Duration;

use criterion::{BatchSize, Criterion};
use fjall::{Database, Keyspace, PersistMode};
use palimpsest::{Durability, Event, EventKind, Seq, Session, replay};

use common::{encode_like_codec, keyspace, mixed_message, open_engine, open_raw, runtime, seq_key};

const SESSION: &str = "bench-session";

/// A raw database with the engine's two written keyspaces, and the bytes the engine would write.
struct Raw {
    db: Database,
    events: Keyspace,
    heads: Keyspace,
    /// Encoded events of one turn (user, tool call, tool result, answer): the engine's value sizes.
    events_bytes: Vec<Vec<u8>>,
    /// An encoded head after a few hundred turns: the engine's head size.
    head_bytes: Vec<u8>,
    next_seq: u64,
}

impl Raw {
    fn open(path: &std::path::Path) -> Self {
        let db = open_raw(path);
        let events: Vec<Event> = (0..1_000)
            .map(|idx| Event {
                seq: Seq::new(idx + 1),
                at_ms: 1_700_000_000_000,
                kind: EventKind::MessageAppended(mixed_message(idx)),
            })
            .collect();
        let head = replay(&events);
        Raw {
            events: keyspace(&db, "events"),
            heads: keyspace(&db, "heads"),
            db,
            events_bytes: events[996..].iter().map(encode_like_codec).collect(),
            head_bytes: encode_like_codec(&head),
            next_seq: 1,
        }
    }

    fn next(&mut self) -> (Vec<u8>, usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        (seq_key(SESSION.as_bytes(), seq), (seq % 4) as usize)
    }

    fn batch(&mut self, mode: PersistMode) {
        let (key, kind) = self.next();
        let mut batch = self.db.batch().durability(Some(mode));
        batch.insert(&self.events, key, self.events_bytes[kind].as_slice());
        batch.insert(&self.heads, SESSION.as_bytes(), self.head_bytes.as_slice());
        batch.commit().expect("commit a batch");
    }

    fn insert(&mut self) {
        let (key, kind) = self.next();
        self.events.insert(key, self.events_bytes[kind].as_slice()).expect("insert");
    }
}

/// Appends the session's next message of the four-message turn; the message is built outside the
/// timed routine by `iter_batched`, which runs set-ups and routines in order. Criterion calls this
/// once per sample, so the position in the conversation (`next_idx`) lives outside it: restarting
/// the turn mid-way would reopen a call id that is still open.
fn bench_engine(b: &mut criterion::Bencher<'_>, rt: &tokio::runtime::Runtime, session: &Session, next_idx: &mut u64) {
    b.iter_batched(
        || {
            *next_idx += 1;
            mixed_message(*next_idx - 1)
        },
        |message| rt.block_on(session.append(message)).expect("append"),
        BatchSize::SmallInput,
    );
}

fn bench_buffered(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = open_engine(&dir.path().join("engine"), Durability::Buffered);
    let session = engine.session(SESSION).expect("valid session id");
    let mut raw = Raw::open(&dir.path().join("raw"));
    eprintln!(
        "append: event values {:?} bytes, head {} bytes",
        raw.events_bytes.iter().map(Vec::len).collect::<Vec<_>>(),
        raw.head_bytes.len()
    );

    let mut group = c.benchmark_group("append");
    group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    // `block_on` on a current-thread runtime adds well under a microsecond per call; with
    // `Buffered` the engine commits inline and never leaves this thread.
    let mut next_idx = 0;
    group.bench_function("engine_buffered", |b| bench_engine(b, rt, &session, &mut next_idx));
    group.bench_function("raw_fjall_batch", |b| b.iter(|| raw.batch(PersistMode::Buffer)));
    group.bench_function("raw_fjall_insert", |b| b.iter(|| raw.insert()));
    group.finish();
}

fn bench_sync(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = open_engine(&dir.path().join("engine"), Durability::Sync);
    let session = engine.session(SESSION).expect("valid session id");
    let mut raw = Raw::open(&dir.path().join("raw"));

    let mut group = c.benchmark_group("append_sync");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    // One writer: every append waits for its own fsync (through the group-commit thread).
    let mut next_idx = 0;
    group.bench_function("engine_sync", |b| bench_engine(b, rt, &session, &mut next_idx));
    group.bench_function("raw_fjall_batch_sync", |b| b.iter(|| raw.batch(PersistMode::SyncData)));
    group.finish();
}

fn main() {
    let rt = runtime();
    let mut criterion = Criterion::default().configure_from_args();
    bench_buffered(&mut criterion, &rt);
    bench_sync(&mut criterion, &rt);
    criterion.final_summary();
}
