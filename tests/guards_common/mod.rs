//! Helpers for the guard tests: engines with injected classifiers and extractors, and extractors
//! and classifiers whose behaviour is a closure.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palimpsest::{
    BoxFuture, ClassifyInput, Components, Config, Durability, Engine, EpisodeClassifier, EpisodeDecision, Error,
    ExtractInput, MemoryExtractor,
};

/// An engine with the given components. Buffered durability: on tokio's paused clock a test must
/// not wait on the group-commit thread (the clock would jump past the write timeout).
pub fn engine_with_parts(components: Components, tune: impl FnOnce(&mut Config)) -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(dir.path().join("db"));
    config.durability = Durability::Buffered;
    tune(&mut config);
    (Engine::open_with(config, components).expect("open"), dir)
}

type ExtractFn = dyn Fn(ExtractInput) -> BoxFuture<'static, Result<Vec<String>, Error>> + Send + Sync;

/// An extractor whose behaviour is a closure; counts calls in flight and their peak.
pub struct FnExtractor {
    behave: Box<ExtractFn>,
    pub in_flight: AtomicU64,
    pub peak: AtomicU64,
    pub calls: parking_lot::Mutex<Vec<(String, u64)>>,
}

impl FnExtractor {
    pub fn new(
        behave: impl Fn(ExtractInput) -> BoxFuture<'static, Result<Vec<String>, Error>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            behave: Box::new(behave),
            in_flight: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            calls: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Sleeps `ms` (tokio time), then answers one memory per message: its content.
    pub fn echo_after(ms: u64) -> Arc<Self> {
        Self::new(move |input| {
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Ok(input.messages.iter().map(|m| m.message.content.clone()).collect())
            })
        })
    }
}

/// Decrements the in-flight count even when the call is dropped (timeout, cancellation).
struct Flight<'a>(&'a AtomicU64);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MemoryExtractor for FnExtractor {
    fn name(&self) -> &str {
        "test"
    }

    fn extract(&self, input: ExtractInput) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        let upto = input.messages.last().map_or(0, |m| m.seq.get());
        self.calls.lock().push((input.session.to_string(), upto));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let work = (self.behave)(input);
        Box::pin(async move {
            let _flight = Flight(&self.in_flight);
            work.await
        })
    }
}

type ClassifyFn = dyn Fn(ClassifyInput) -> BoxFuture<'static, Result<EpisodeDecision, Error>> + Send + Sync;

/// A classifier whose behaviour is a closure.
pub struct FnClassifier(Box<ClassifyFn>);

impl FnClassifier {
    pub fn new(
        behave: impl Fn(ClassifyInput) -> BoxFuture<'static, Result<EpisodeDecision, Error>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self(Box::new(behave)))
    }

    pub fn always(decision: EpisodeDecision) -> Arc<Self> {
        Self::new(move |_| Box::pin(async move { Ok(decision) }))
    }
}

impl EpisodeClassifier for FnClassifier {
    fn name(&self) -> &str {
        "test"
    }

    fn classify(&self, input: ClassifyInput) -> BoxFuture<'_, Result<EpisodeDecision, Error>> {
        (self.0)(input)
    }
}
