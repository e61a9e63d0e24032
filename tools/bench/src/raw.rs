//! The raw fjall baseline: a plain fjall `Database` in its own directory holding the same keys
//! and values as an engine database, and the bare key operations the engine's work is compared
//! with (a head read plus a 50-key reverse scan, single inserts, a full scan).
//!
//! The engine's keys are mirrored here (`session ++ 0x00 ++ seq u64 BE`, see `src/storage/keys.rs`)
//! because `keys` is private. Values are never invented: they are copied byte for byte from an
//! engine database opened raw after the engine closed, so both sides hold equal keys and values.

use std::hint::black_box;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, UserKey, UserValue};

use crate::workload::CACHE_MB;

/// The engine's keyspace of events (`keys::EVENTS`).
pub const EVENTS: &str = "events";
/// The engine's keyspace of session heads (`keys::HEADS`).
pub const HEADS: &str = "heads";

/// Every keyspace the engine opens (`keys.rs`), in the engine's order: opening the raw side with
/// all of them makes its open do what the engine's store does (p8).
pub const ALL_KEYSPACES: [&str; 7] = [EVENTS, HEADS, "splices", "blobs", "meta", "memories", "extractions"];

/// The engine's memtable size per keyspace (`store::MEMTABLE_BYTES`), mirrored so the raw side
/// flushes as often as the engine does.
pub const MEMTABLE_BYTES: u64 = 8 << 20;

/// Keys and values copied per batch.
const COPY_BATCH: usize = 1_000;

/// The engine's keyspace options (`store.rs`): 8 MiB memtables, everything else fjall's default.
pub fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// A stored key and value, as fjall hands them out (no copy).
pub type Row = (UserKey, UserValue);

/// The engine's event key: `session ++ 0x00 ++ seq (u64 BE)`.
pub fn seq_key(session: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(session.len() + 9);
    key.extend_from_slice(session.as_bytes());
    key.push(0x00);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// An open raw database with the two keyspaces the read path touches.
pub struct RawDb {
    db: Database,
    events: Keyspace,
    heads: Keyspace,
    /// The engine's other keyspaces, opened so both sides carry the same memtables and journal.
    _others: Vec<Keyspace>,
}

impl RawDb {
    /// Opens (or creates) a plain fjall database at `path` with the engine's cache size.
    pub fn open(path: &Path) -> Self {
        Self::open_with_cache(path, CACHE_MB << 20)
    }

    fn open_with_cache(path: &Path, cache_bytes: u64) -> Self {
        Self::open_timed(path, cache_bytes).0
    }

    /// Opens the database at `path` with the engine's keyspaces and options, and returns how long
    /// the successful open took in milliseconds (fjall's open plus every keyspace's), leaving out
    /// attempts refused because a database closed a moment ago was still releasing its lock.
    pub fn open_timed(path: &Path, cache_bytes: u64) -> (Self, f64) {
        let mut attempts = 0;
        loop {
            let start = std::time::Instant::now();
            match Database::builder(path).cache_size(cache_bytes).open() {
                Ok(db) => {
                    let mut keyspaces: Vec<Keyspace> = ALL_KEYSPACES
                        .iter()
                        .map(|name| db.keyspace(name, keyspace_options).expect("opening a keyspace"))
                        .collect();
                    let open_ms = start.elapsed().as_secs_f64() * 1e3;
                    let others = keyspaces.split_off(2);
                    let heads = keyspaces.pop().expect("the heads keyspace is second");
                    let events = keyspaces.pop().expect("the events keyspace is first");
                    return (Self { db, events, heads, _others: others }, open_ms);
                }
                // A database closed a moment ago may still be releasing its lock.
                Err(fjall::Error::Locked) if attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("opening a raw fjall database at {} failed: {e:?}", path.display()),
            }
        }
    }

    /// Copies every event and head of the (closed) engine database at `engine_dir` into this
    /// database, in batches, and returns the number of events copied.
    pub fn copy_from_engine_dir(&self, engine_dir: &Path) -> u64 {
        let source = Self::open_with_cache(engine_dir, 8 << 20);
        let mut n_events = 0;
        for (is_events, from, to) in [(true, &source.events, &self.events), (false, &source.heads, &self.heads)] {
            let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
            for guard in from.iter() {
                let (key, value) = guard.into_inner().expect("reading the engine database raw");
                batch.insert(to, key, value);
                n_events += u64::from(is_events);
                if batch.len() == COPY_BATCH {
                    std::mem::replace(&mut batch, self.db.batch().durability(Some(PersistMode::Buffer)))
                        .commit()
                        .expect("committing a copy batch");
                }
            }
            batch.commit().expect("committing a copy batch");
        }
        n_events
    }

    /// Every event row of `session` in the (closed) engine database at `engine_dir`, in seq order.
    pub fn engine_event_rows(engine_dir: &Path, session: &str) -> Vec<Row> {
        let source = Self::open_with_cache(engine_dir, 8 << 20);
        let mut prefix = session.as_bytes().to_vec();
        prefix.push(0x00);
        source.events.prefix(prefix).map(|g| g.into_inner().expect("reading the engine database raw")).collect()
    }

    /// What a plain fjall user does to serve the last `n` messages: read the session's head and
    /// scan its newest `n` event keys in reverse. Returns the bytes read (fed to `black_box`).
    pub fn head_and_last_n_rev(&self, session: &str, n: usize) -> usize {
        let head = self.heads.get(session).expect("raw head read").map_or(0, |v| v.len());
        let (from, to) = (seq_key(session, 0), seq_key(session, u64::MAX));
        let rows: Vec<Row> =
            self.events.range(from..=to).rev().take(n).map(|g| g.into_inner().expect("raw reverse scan")).collect();
        black_box(head + rows.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())
    }

    /// [`RawDb::head_and_last_n_rev`] that hands out what it read as owned bytes: one copy of the
    /// head and of each value, the least any read returning owned data (not slices of fjall's
    /// cache) must add. For context beside p2, whose raw side only takes each row's length.
    pub fn head_and_last_n_rev_owned(&self, session: &str, n: usize) -> usize {
        let head = self.heads.get(session).expect("raw head read").map(|v| v.to_vec());
        let (from, to) = (seq_key(session, 0), seq_key(session, u64::MAX));
        let values: Vec<Vec<u8>> = self
            .events
            .range(from..=to)
            .rev()
            .take(n)
            .map(|g| g.into_inner().expect("raw reverse scan").1.to_vec())
            .collect();
        black_box(head.map_or(0, |h| h.len()) + values.iter().map(Vec::len).sum::<usize>())
    }

    /// The same read as [`RawDb::head_and_last_n_rev`] but forward from `last_seq - n + 1`, the way
    /// the engine reads (reported for information; the target compares with the reverse scan).
    pub fn head_and_last_n_fwd(&self, session: &str, last_seq: u64, n: usize) -> usize {
        let head = self.heads.get(session).expect("raw head read").map_or(0, |v| v.len());
        let first = last_seq.saturating_sub(n as u64 - 1).max(1);
        let (from, to) = (seq_key(session, first), seq_key(session, last_seq));
        let rows: Vec<Row> = self.events.range(from..=to).map(|g| g.into_inner().expect("raw forward scan")).collect();
        black_box(head + rows.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())
    }

    /// Reads every event key and value in key order; returns how many.
    pub fn scan_events(&self) -> u64 {
        let mut n = 0u64;
        let mut bytes = 0usize;
        for guard in self.events.iter() {
            let (k, v) = guard.into_inner().expect("raw full scan");
            bytes += k.len() + v.len();
            n += 1;
        }
        black_box(bytes);
        n
    }

    /// Inserts one row into the events keyspace (a plain insert: journal write, no fsync).
    pub fn insert_event(&self, key: UserKey, value: UserValue) {
        self.events.insert(key, value).expect("raw insert");
    }

    /// Inserts one row into the events keyspace and fsyncs the journal (`persist(SyncData)`): one
    /// durable write with nothing shared, i.e. the cost of one fsync plus one insert.
    pub fn insert_event_synced(&self, key: Vec<u8>, value: &[u8]) {
        self.events.insert(key, value).expect("raw insert");
        self.db.persist(PersistMode::SyncData).expect("raw fsync");
    }

    /// Commits `rows` (events) and `heads` (session, head) in one batch and fsyncs the journal
    /// once: the floor of group commit, what 64 durable appends sharing one fsync would cost with
    /// no engine around them (with `heads`, in the engine's shape: an event and a head each).
    pub fn commit_synced(&self, rows: &[(Vec<u8>, &[u8])], heads: &[(String, &[u8])]) {
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        for (key, value) in rows {
            batch.insert(&self.events, key.as_slice(), *value);
        }
        for (key, value) in heads {
            batch.insert(&self.heads, key.as_str(), *value);
        }
        batch.commit().expect("raw batch commit");
        self.db.persist(PersistMode::SyncData).expect("raw fsync");
    }

    /// Commits one event row and a head value in one batch, as the engine's write does (without
    /// its reads, validation or encoding): the floor of an atomic event + head design on fjall.
    /// Given fjall's own reference-counted slices it keeps them without copying; given plain byte
    /// slices (as a writer of freshly made bytes has) it copies each into its own buffers.
    pub fn commit_event_and_head<K, V, H>(&self, key: K, value: V, head_key: &str, head: H)
    where
        K: Into<UserKey>,
        V: Into<UserValue>,
        H: Into<UserValue>,
    {
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        batch.insert(&self.events, key, value);
        batch.insert(&self.heads, head_key, head);
        batch.commit().expect("raw batch commit");
    }

    /// What a plain fjall user does to append to a session: read its head (to learn where the
    /// session ends), then commit the event row at `seq` and the head (the one read, rewritten) in
    /// one batch. Returns the head's length (fed to `black_box`).
    pub fn read_head_then_commit(&self, session: &str, seq: u64, value: &[u8]) -> usize {
        let head = self.heads.get(session).expect("raw head read").expect("the session has a head");
        self.commit_event_and_head(seq_key(session, seq), value, session, head.clone());
        black_box(head.len())
    }

    /// The stored head of `session` in the (closed) engine database at `engine_dir`.
    pub fn engine_head(engine_dir: &Path, session: &str) -> UserValue {
        let source = Self::open_with_cache(engine_dir, 8 << 20);
        source.heads.get(session).expect("reading a head raw").expect("the session has a head")
    }

    /// Flushes every keyspace's memtable of the (closed) database at `path` to disk tables, so a
    /// later open has no journal to replay into memory.
    pub fn flush_dir(path: &Path) {
        let db = Self::open_with_cache(path, 8 << 20).db;
        for name in db.list_keyspace_names() {
            let keyspace = db.keyspace(&name, keyspace_options).expect("opening a keyspace");
            keyspace.rotate_memtable_and_wait().expect("flushing a memtable");
        }
    }
}
