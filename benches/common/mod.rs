//! Shared by the bench binaries: realistic messages, the key and value shapes the engine writes
//! (mirrored here because `keys` and `codec` are private), raw fjall helpers, and the runtime.
//!
//! Each bench binary uses a subset of these helpers, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use palimpsest::{Config, Durability, Engine, Message, ToolCall};
use serde::Serialize;

/// Block cache given to every database, engine or raw, so both sides cache alike (the engine's default).
pub const CACHE_MB: u64 = 64;
/// Target size of a message's text, bytes ("~200 bytes").
pub const MESSAGE_BYTES: usize = 200;
/// Messages per `append_many` while building sessions (the default `limits.max_batch_messages`).
pub const BUILD_BATCH: u64 = 1_000;
/// Format byte the codec puts before every event and head (`codec::EVENT_FORMAT`, `codec::HEAD_FORMAT`).
pub const FORMAT_BYTE: u8 = 1;

/// True when criterion measures (`cargo bench`), false under `cargo test --benches` or `--list`,
/// where each bench runs once as a smoke test and the set-up should stay small.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list")
}

/// Deterministic filler text of exactly `len` bytes (ASCII words picked by splitmix64), so values
/// are neither empty nor one repeated byte: compression sees something like prose.
pub fn text(seed: u64, len: usize) -> String {
    const WORDS: [&str; 16] = [
        "the", "build", "failed", "because", "module", "cache", "returned", "stale", "results", "retry", "with",
        "fresh", "index", "agent", "checks", "logs",
    ];
    let mut state = seed;
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.push_str(WORDS[(z % 16) as usize]);
        out.push(' ');
    }
    out.truncate(len);
    out
}

/// Message number `idx` (0-based) of a realistic agent session. Turns of four repeat: a user ask,
/// an assistant tool call, the tool's result (answering that call, as `check_message` requires),
/// and the assistant's answer. Each carries about `MESSAGE_BYTES` bytes.
pub fn mixed_message(idx: u64) -> Message {
    let turn = idx / 4;
    let call_id = format!("call-{turn}");
    let at_ms = 1_700_000_000_000 + idx * 1_000;
    let message = match idx % 4 {
        0 => Message::user(text(idx, MESSAGE_BYTES)),
        1 => {
            let args = format!(r#"{{"query":"{}"}}"#, text(idx, MESSAGE_BYTES - 40));
            Message::assistant_tool_calls("", vec![ToolCall::new(call_id, "search", args)])
        }
        2 => Message::tool_result(call_id, text(idx, MESSAGE_BYTES)),
        _ => Message::assistant(text(idx, MESSAGE_BYTES)),
    };
    message.with_created_at_ms(at_ms)
}

/// Messages `from..to` of the mixed session.
pub fn mixed_messages(from: u64, to: u64) -> Vec<Message> {
    (from..to).map(mixed_message).collect()
}

/// The event key the engine uses: `session ++ 0x00 ++ seq (u64 BE)` (see `src/storage/keys.rs`).
pub fn seq_key(session: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(session.len() + 9);
    key.extend_from_slice(session);
    key.push(0x00);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A value in the engine's stored form: format byte + rmp-serde, as `codec::encode` writes it.
pub fn encode_like_codec<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_BYTE];
    rmp_serde::encode::write(&mut out, value).expect("msgpack encoding into a Vec is infallible");
    out
}

/// A current-thread runtime: the engine's reads never await anything that needs another thread,
/// so `block_on` per iteration costs well under a microsecond (a context set-up, no thread hop).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime")
}

/// Opens an engine at `path` with the given durability and otherwise default config.
pub fn open_engine(path: &Path, durability: Durability) -> Engine {
    let mut config = Config::new(path);
    config.durability = durability;
    config.cache_mb = CACHE_MB;
    Engine::open(config).expect("open the engine")
}

/// A plain fjall database with the same cache as the engine's.
pub fn open_raw(path: &Path) -> Database {
    Database::builder(path).cache_size(CACHE_MB << 20).open().expect("open a raw fjall database")
}

/// Opens (or creates) a keyspace with default options, as the engine's store does.
pub fn keyspace(db: &Database, name: &str) -> Keyspace {
    db.keyspace(name, KeyspaceCreateOptions::default).expect("open a keyspace")
}

/// Seals and flushes every memtable of `keyspaces`, then waits until background compaction has
/// left the table layout unchanged for a while, so measurements see settled on-disk tables
/// rather than a memtable (DESIGN: reverse scans over a memtable are 2-3x slower than forward).
/// `rotate_memtable_and_wait` is `#[doc(hidden)]` in fjall 3.1 (used by its tests); there is no
/// other public way to force a flush.
pub fn flush_and_settle(keyspaces: &[&Keyspace]) -> Vec<(usize, usize)> {
    for ks in keyspaces {
        ks.rotate_memtable_and_wait().expect("flush a memtable");
    }
    let layout = || keyspaces.iter().map(|ks| (ks.table_count(), ks.l0_table_count())).collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut stable_polls) = (layout(), 0);
    while stable_polls < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = layout();
        stable_polls = if now == last { stable_polls + 1 } else { 0 };
        last = now;
    }
    last
}
