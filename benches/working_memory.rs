//! `Session::working_memory(50)` on sessions of 100, 10,000 and 1,000,000 messages, side by side
//! with raw fjall doing the same key operations on the same keys and values:
//!
//! - `working_memory_50/engine/N`: the engine (head read + decode, forward range read of the last
//!   50 events + decode, window rule).
//! - `working_memory_50/raw_fjall_rev/N`: raw fjall, one point read of the session's head key plus a
//!   reverse range scan over the last 50 event keys (`session ++ 0x00 ++ seq BE`), values untouched.
//! - `working_memory_50/raw_fjall_fwd/N`: the same with a forward scan (what the engine does).
//!
//! Each size is its own database (engine side and raw side), so a small session is measured on a
//! small tree and a large one on a large tree. The raw database is a key-for-key copy of the
//! engine's `events` and `heads` keyspaces. Both are flushed to disk tables and left to settle
//! before anything is measured. The 1M session is built once per run (about ten seconds here).
//!
//! Under `cargo test --benches` (criterion's test mode) the sizes shrink, so the smoke run stays quick.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use fjall::{Database, Keyspace};
use palimpsest::{Durability, Engine, Session};
use tempfile::TempDir;

use common::{BUILD_BATCH, flush_and_settle, keyspace, mixed_messages, open_engine, open_raw, runtime, seq_key};

const SESSION: &str = "bench-session";
const WINDOW: usize = 50;
const SIZES: [u64; 3] = [100, 10_000, 1_000_000];
const SMOKE_SIZES: [u64; 3] = [100, 1_000, 2_000];
/// Keyspace names of the engine's store (`src/storage/keys.rs`).
const ENGINE_KEYSPACES: [&str; 5] = ["events", "heads", "splices", "blobs", "meta"];

/// One size: the engine's database and its raw copy, both open, flushed and settled.
struct Fixture {
    n_messages: u64,
    session: Session,
    // Held so the databases stay open; dropped before the temp dirs below.
    _engine: Engine,
    raw: Raw,
    _dirs: (TempDir, TempDir),
}

struct Raw {
    events: Keyspace,
    heads: Keyspace,
    db: Database,
}

impl Fixture {
    fn build(rt: &tokio::runtime::Runtime, n_messages: u64) -> Self {
        let started = Instant::now();
        let engine_dir = tempfile::tempdir().expect("temp dir");
        let raw_dir = tempfile::tempdir().expect("temp dir");
        let engine_path = engine_dir.path().join("db");

        // 1. Write the session through the engine, in batches, without fsync.
        {
            let engine = open_engine(&engine_path, Durability::Buffered);
            let session = engine.session(SESSION).expect("valid session id");
            let mut from = 0;
            while from < n_messages {
                let to = (from + BUILD_BATCH).min(n_messages);
                rt.block_on(session.append_many(mixed_messages(from, to))).expect("append a batch");
                from = to;
            }
        }
        let written = started.elapsed();

        // 2. With the engine closed, open its files with raw fjall: copy events and heads into the
        //    raw database, then flush both and let compaction settle.
        let engine_layout;
        let raw = {
            let source = open_raw(&engine_path);
            let source_ks: Vec<Keyspace> = ENGINE_KEYSPACES.iter().map(|name| keyspace(&source, name)).collect();
            let db = open_raw(raw_dir.path());
            let raw = Raw { events: keyspace(&db, "events"), heads: keyspace(&db, "heads"), db };
            copy(&raw.db, &source_ks[0], &raw.events);
            copy(&raw.db, &source_ks[1], &raw.heads);
            engine_layout = flush_and_settle(&source_ks.iter().collect::<Vec<_>>());
            raw
        };
        let raw_layout = flush_and_settle(&[&raw.events, &raw.heads]);

        // 3. Reopen the engine on its flushed files; recovery skips what the tables already hold.
        let engine = open_engine(&engine_path, Durability::Buffered);
        let session = engine.session(SESSION).expect("valid session id");
        let memory = rt.block_on(session.working_memory(WINDOW)).expect("working memory after reopen");
        assert_eq!(memory.last_seq.get(), n_messages, "the reopened engine sees every message");
        eprintln!(
            "working_memory set-up: {n_messages} messages written in {written:.1?}, ready in {:.1?}; \
             tables (total, L0) engine events/heads {:?}/{:?}, raw events/heads {:?}/{:?}; {} messages in the window",
            started.elapsed(),
            engine_layout[0],
            engine_layout[1],
            raw_layout[0],
            raw_layout[1],
            memory.messages.len(),
        );
        let fixture = Fixture { n_messages, session, _engine: engine, raw, _dirs: (engine_dir, raw_dir) };
        let expected_rows = n_messages.min(WINDOW as u64) as usize;
        assert_eq!(fixture.raw_read(true), expected_rows, "the raw copy holds the last events");
        assert_eq!(fixture.raw_read(false), expected_rows, "the raw copy holds the last events");
        fixture
    }

    /// Raw fjall: read the head's bytes, then scan the last `WINDOW` event keys and hold each
    /// key/value (refcounted slices, no copy, no decoding).
    fn raw_read(&self, reverse: bool) -> usize {
        let session = SESSION.as_bytes();
        let head = self.raw.heads.get(session).expect("head read").expect("the head exists");
        let first = self.n_messages.saturating_sub(WINDOW as u64 - 1).max(1);
        let range = self.raw.events.range(seq_key(session, first)..=seq_key(session, self.n_messages));
        let mut rows = Vec::with_capacity(WINDOW);
        if reverse {
            for guard in range.rev() {
                rows.push(guard.into_inner().expect("scan"));
            }
        } else {
            for guard in range {
                rows.push(guard.into_inner().expect("scan"));
            }
        }
        black_box((&head, &rows));
        rows.len()
    }
}

/// Copies every key/value of `from` into `to`, in batches.
fn copy(db: &Database, from: &Keyspace, to: &Keyspace) {
    let mut batch = db.batch();
    let mut n_in_batch = 0;
    for guard in from.iter() {
        let (k, v) = guard.into_inner().expect("read the engine's database");
        batch.insert(to, k, v);
        n_in_batch += 1;
        if n_in_batch == BUILD_BATCH {
            batch.commit().expect("copy a batch");
            batch = db.batch();
            n_in_batch = 0;
        }
    }
    batch.commit().expect("copy the last batch");
}

fn bench(c: &mut Criterion, fixtures: &[Fixture], rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group(format!("working_memory_{WINDOW}"));
    group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for fx in fixtures {
        // Sizes interleave engine, raw reverse, raw forward, so each size's three figures are
        // measured within seconds of each other.
        // `block_on` on a current-thread runtime adds well under a microsecond per call; the
        // engine's read path awaits nothing, so this is the cost an async caller pays too.
        group.bench_with_input(BenchmarkId::new("engine", fx.n_messages), fx, |b, fx| {
            b.iter(|| rt.block_on(fx.session.working_memory(WINDOW)).expect("working memory"));
        });
        group.bench_with_input(BenchmarkId::new("raw_fjall_rev", fx.n_messages), fx, |b, fx| {
            b.iter(|| fx.raw_read(true));
        });
        group.bench_with_input(BenchmarkId::new("raw_fjall_fwd", fx.n_messages), fx, |b, fx| {
            b.iter(|| fx.raw_read(false));
        });
    }
    group.finish();
}

fn main() {
    let sizes = if common::measuring() { SIZES } else { SMOKE_SIZES };
    let rt = runtime();
    let fixtures: Vec<Fixture> = sizes.iter().map(|&n| Fixture::build(&rt, n)).collect();
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &fixtures, &rt);
    criterion.final_summary();
}
