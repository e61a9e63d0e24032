//! The workload: realistic agent messages, engines opened the way each measurement needs, and
//! sessions built fast (`append_many` in batches of [`BUILD_BATCH`] under `Durability::Buffered`).
//!
//! Messages repeat in turns of four, about 200 bytes each: a user ask, an assistant tool call, the
//! tool's result answering that call, and the assistant's answer. Message `idx` of a session is a
//! pure function of `idx`, so a session can be extended later from its message count and the
//! pairing rules (a tool result answers an open call of the same session) keep holding.

use std::path::Path;
use std::time::Duration;

use palimpsest::{Config, Durability, Engine, Error, Message, Session, ToolCall};

/// Messages per `append_many` while building (the default `limits.max_batch_messages`).
pub const BUILD_BATCH: u64 = 1_000;
/// Block cache of every database, engine or raw, so both sides cache alike (the engine's default).
pub const CACHE_MB: u64 = 64;
/// Messages per turn of the workload; sessions are built in whole turns.
pub const TURN: u64 = 4;

const WORDS: [&str; 32] = [
    "deploy",
    "service",
    "failed",
    "because",
    "the",
    "cache",
    "returned",
    "stale",
    "results",
    "retry",
    "with",
    "fresh",
    "index",
    "agent",
    "checks",
    "logs",
    "latency",
    "budget",
    "customer",
    "invoice",
    "flight",
    "Oslo",
    "config",
    "rollback",
    "window",
    "ticket",
    "migration",
    "schema",
    "timeout",
    "queue",
    "worker",
    "region",
];

/// splitmix64: a tiny deterministic generator, enough for filler text and picking sessions.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Prose-like filler of `160..240` bytes (about 200 on average), different for every seed, so
/// fjall's compression sees something like real text rather than one repeated byte.
fn text(seed: u64) -> String {
    let mut state = seed;
    let len = 160 + (splitmix(&mut state) % 81) as usize;
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        out.push_str(WORDS[(splitmix(&mut state) % WORDS.len() as u64) as usize]);
        out.push(' ');
    }
    out.truncate(len);
    out
}

/// Message number `idx` (0-based) of a session; see the module docs.
pub fn message(idx: u64) -> Message {
    let call_id = format!("call-{}", idx / TURN);
    match idx % TURN {
        0 => Message::user(text(idx)),
        1 => {
            let body = text(idx);
            let (say, query) = body.split_at(48);
            let args = format!(r#"{{"query":"{query}","limit":20}}"#);
            Message::assistant_tool_calls(say, vec![ToolCall::new(call_id, "search_logs", args)])
        }
        2 => Message::tool_result(call_id, text(idx)),
        _ => Message::assistant(text(idx)),
    }
}

/// Opens an engine on `path` with `durability`. A database closed a moment ago may still be
/// releasing its lock (fjall's worker threads stop asynchronously), so `Locked` is retried briefly.
pub fn open(path: &Path, durability: Durability) -> Engine {
    open_config(config(path, durability))
}

/// The bench's engine config: `durability`, and the block cache every side of a ratio gets.
fn config(path: &Path, durability: Durability) -> Config {
    let mut config = Config::new(path);
    config.durability = durability;
    config.cache_mb = CACHE_MB;
    config
}

/// Like [`open`], with the engine's working-memory window cache off (`cache.window_bytes = 0`):
/// for the measurements of the storage path (p1, p9, p10, the scaling table), where a session
/// read call after call would otherwise be served from memory on one side only.
pub fn open_storage_path(path: &Path, durability: Durability) -> Engine {
    let mut config = config(path, durability);
    config.cache.window_bytes = 0;
    open_config(config)
}

/// Like [`open`], with background memory extraction off (`extraction.enabled = false`): for the
/// context field that shows how much of an append loop's rate that background work takes.
pub fn open_without_extraction(path: &Path, durability: Durability) -> Engine {
    let mut config = config(path, durability);
    config.extraction.enabled = false;
    open_config(config)
}

/// Opens an engine with a full `config`, retrying `Locked` as [`open`] does.
pub fn open_config(config: Config) -> Engine {
    let mut attempts = 0;
    loop {
        match Engine::open(config.clone()) {
            Ok(engine) => return engine,
            Err(Error::Locked { .. }) if attempts < 200 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("opening the engine at {} failed: {e}", config.path.display()),
        }
    }
}

/// A session handle; the ids used here are all valid.
pub fn session(engine: &Engine, id: &str) -> Session {
    engine.session(id).expect("bench session ids are valid")
}

/// Appends messages `from..from + n` of the workload to `session`, in batches of [`BUILD_BATCH`].
pub async fn build(session: &Session, from: u64, n: u64) {
    let mut idx = from;
    while idx < from + n {
        let end = (idx + BUILD_BATCH).min(from + n);
        session.append_many((idx..end).map(message).collect()).await.expect("building a session");
        idx = end;
    }
}

/// The number of messages `session` holds, which is the index of its next workload message.
pub async fn message_count(session: &Session) -> u64 {
    session.head().await.expect("reading a head").map_or(0, |h| h.n_messages())
}

/// Logs a progress line to stderr (stdout carries the report).
pub fn log(what: impl AsRef<str>) {
    eprintln!("[palimpsest-bench] {}", what.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_about_two_hundred_bytes_and_valid() {
        let sizes: Vec<usize> = (0..400).map(|i| message(i).size_bytes()).collect();
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!((170.0..=250.0).contains(&mean), "mean message size {mean}");
        for i in 0..400 {
            message(i).validate(0, 1 << 20).expect("workload messages pass validation");
        }
    }
}
