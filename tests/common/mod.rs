//! Shared helpers for the integration tests: temp databases and conversation builders.
#![allow(dead_code)]

use palimpsest::{Config, Durability, Engine, Message, ToolCall};

/// A fresh engine in a temp dir (kept alive by the returned guard).
pub fn engine(durability: Durability) -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(dir.path().join("db"));
    config.durability = durability;
    (Engine::open(config).expect("open"), dir)
}

/// Reopens the database in `dir` with default config and `durability`.
pub fn reopen(dir: &tempfile::TempDir, durability: Durability) -> Engine {
    let mut config = Config::new(dir.path().join("db"));
    config.durability = durability;
    Engine::open(config).expect("reopen")
}

/// A temp dir on tmpfs (/dev/shm) when the machine has one, else the usual temp dir. For
/// properties that open many databases: creating one costs several fsyncs, free on tmpfs. Tests
/// of durability itself (the kill -9 harness) use real disk directories.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("palimpsest-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

/// A tiny deterministic PRNG (splitmix64) so tests need no extra crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One agent turn: a user ask, an assistant tool call, its result, and an answer.
pub fn turn(i: usize) -> Vec<Message> {
    let id = format!("call-{i}");
    vec![
        Message::user(format!("step {i}: check the build")),
        Message::assistant_tool_calls("", vec![ToolCall::new(&id, "run", format!(r#"{{"cmd":"make {i}"}}"#))]),
        Message::tool_result(&id, format!("build {i} ok")),
        Message::assistant(format!("build {i} passed")),
    ]
}

use std::sync::Arc;

use palimpsest::{BoxFuture, Config as Cfg, Error, Summarizer, SummaryInput};

/// A summarizer whose behaviour is a closure; records every input it was given.
pub struct FnSummarizer {
    pub calls: parking_lot::Mutex<Vec<SummaryInput>>,
    #[allow(clippy::type_complexity)]
    behave: Box<dyn Fn(SummaryInput) -> BoxFuture<'static, Result<String, Error>> + Send + Sync>,
}

impl FnSummarizer {
    pub fn new(
        behave: impl Fn(SummaryInput) -> BoxFuture<'static, Result<String, Error>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self { calls: parking_lot::Mutex::new(Vec::new()), behave: Box::new(behave) })
    }

    /// Answers every call at once with `text`.
    pub fn constant(text: &'static str) -> Arc<Self> {
        Self::new(move |_| Box::pin(async move { Ok(text.to_string()) }))
    }
}

impl Summarizer for FnSummarizer {
    fn name(&self) -> &str {
        "test"
    }
    fn summarize(&self, input: SummaryInput) -> BoxFuture<'_, Result<String, Error>> {
        self.calls.lock().push(input.clone());
        (self.behave)(input)
    }
}

/// An engine with a test summarizer. Buffered durability: tests on tokio's paused clock must not
/// wait on the group-commit thread, or the paused clock would jump past the write timeout.
pub fn engine_with(summarizer: Arc<dyn Summarizer>, tune: impl FnOnce(&mut Cfg)) -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Cfg::new(dir.path().join("db"));
    config.durability = Durability::Buffered;
    tune(&mut config);
    (Engine::open_with_summarizer(config, summarizer).expect("open"), dir)
}

/// Everything stored about a session: its full history and head, for byte-identity checks.
pub async fn snapshot(s: &palimpsest::Session) -> (Vec<palimpsest::Event>, Option<palimpsest::Head>) {
    (s.history(palimpsest::Seq::new(1), 10_000).await.expect("history"), s.head().await.expect("head"))
}
