//! The one configuration structure, loadable from JSON or TOML. Every knob has a default
//! (documented in SPEC.md with the reason) and a checked range; [`Config::validate`] refuses a bad
//! value with the field's dotted name and the allowed range. Unknown fields are refused too, so a
//! typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The least `writes.timeout_ms`, ms. The timeout covers the wait for a session's write lock
/// (behind that session's other writes, a splice or an extraction among them) and a group commit
/// with its fsync, which on a busy shared disk takes tens to hundreds of ms; below a second,
/// ordinary stalls would surface as failed writes.
pub const MIN_WRITE_TIMEOUT_MS: u64 = 1_000;

/// Everything the engine can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The database directory (created if missing).
    pub path: PathBuf,
    /// When an append is acknowledged; see [`Durability`].
    pub durability: Durability,
    /// fjall block cache, MiB.
    pub cache_mb: u64,
    /// The engine's own caches: heads for the write path, recent windows for working memory.
    pub cache: Cache,
    /// Size and count limits on input and reads.
    pub limits: Limits,
    /// The write path: group-commit queue and waits.
    pub writes: Writes,
    /// Compaction policy and bounds.
    pub compaction: Compaction,
    /// Which summarizer compaction uses, and its settings.
    pub summarizer: SummarizerConfig,
    /// Bounded waits on namespace locks (memory extraction).
    pub locks: Locks,
    /// Episodes: the classifier and the turn cap.
    pub episodes: Episodes,
    /// Background work: the model-call budget and extraction bounds.
    pub background: Background,
    /// Long-term memory extraction.
    pub extraction: Extraction,
    /// Which storage backend holds the logs: the embedded fjall database or a NATS JetStream cluster.
    pub storage: Storage,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            path: PathBuf::from("palimpsest-data"),
            durability: Durability::default(),
            cache_mb: 64,
            cache: Cache::default(),
            limits: Limits::default(),
            writes: Writes::default(),
            compaction: Compaction::default(),
            summarizer: SummarizerConfig::default(),
            locks: Locks::default(),
            episodes: Episodes::default(),
            background: Background::default(),
            extraction: Extraction::default(),
            storage: Storage::default(),
        }
    }
}

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledged once the bytes are handed to the OS: survives the process being killed
    /// (kill -9), not a power loss or kernel crash.
    Buffered,
    /// Acknowledged after fsync: survives power loss. Concurrent appends share one fsync
    /// (group commit), so the cost is paid once per batch, not per append.
    #[default]
    Sync,
}

/// Limits on input and reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message (content + tool calls + metadata), bytes. Default 1 MiB, range 1 B..=16 MiB.
    pub max_message_bytes: u64,
    /// Most messages in one `append_many`. Default 1,000, range 1..=100,000.
    pub max_batch_messages: u64,
    /// Most messages or events one read returns. Default 10,000, range 1..=1,000,000.
    pub max_read_messages: u64,
    /// Most tool calls a session may have waiting for results. Default 256, range 1..=4,096.
    pub max_open_tool_calls: u64,
    /// Largest session metadata document (`Session::set_metadata`), bytes. Default 1 MiB, range
    /// 1 B..=16 MiB.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_batch_messages: 1_000,
            max_read_messages: 10_000,
            max_open_tool_calls: 256,
            max_metadata_bytes: 1 << 20,
        }
    }
}

/// The engine's own caches (SPEC.md section 4, "Caches"); both are exact, so they change costs,
/// never answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// Session heads kept for the write path (least recently used go first). Default 65,536,
    /// range 1..=10,000,000; an entry is about 200 bytes plus the session's open tool calls.
    pub heads: u64,
    /// Budget of the working-memory windows kept per session for repeated reads, bytes (counted
    /// from the messages' sizes). Default 8 MiB, range 0..=4 GiB; 0 turns the window cache off.
    pub window_bytes: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Self { heads: 65_536, window_bytes: 8 << 20 }
    }
}

/// The write path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Writes {
    /// Appends that may wait for the group-commit thread at once. Default 4,096, range 1..=1,000,000.
    pub queue_depth: u64,
    /// Most events committed in one group (one batch, one fsync). Default 4,096, range 1..=1,000,000.
    pub group_max_events: u64,
    /// Longest wait for a session's write lock plus the commit, ms. Default 30,000, range
    /// 1,000..=600,000 (the floor is `MIN_WRITE_TIMEOUT_MS`).
    pub timeout_ms: u64,
}

impl Default for Writes {
    fn default() -> Self {
        Self { queue_depth: 4_096, group_max_events: 4_096, timeout_ms: 30_000 }
    }
}

/// Compaction policy and bounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Compaction {
    /// When no `upto` is given, keep this many latest messages verbatim. Default 20, range 0..=100,000.
    pub keep_last_messages: u64,
    /// Longest summary accepted from a summarizer, bytes. Default 16 KiB, range 256..=1 MiB.
    pub max_summary_bytes: u64,
    /// Most messages one compaction reads; a larger span is cut to this. Default 100,000, range 1..=10,000,000.
    pub max_span_messages: u64,
    /// Inputs longer than this (bytes of transcript) are summarized in chunks of about this size.
    /// Default 24 KiB, range 1 KiB..=16 MiB.
    pub chunk_bytes: u64,
    /// Chunk summaries running at once. Default 4, range 1..=32.
    pub chunk_concurrency: u64,
    /// Timeout of one chunk (or single-pass) summary call, ms. Default 120,000, range 100..=3,600,000,
    /// and at most `timeout_ms`.
    pub chunk_timeout_ms: u64,
    /// Timeout of the merge call, ms; on timeout the chunk summaries are concatenated.
    /// Default 60,000, range 100..=3,600,000, and at most `timeout_ms`.
    pub merge_timeout_ms: u64,
    /// Timeout of a whole compaction, ms. Default 600,000, range 1,000..=86,400,000.
    pub timeout_ms: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            keep_last_messages: 20,
            max_summary_bytes: 16 << 10,
            max_span_messages: 100_000,
            chunk_bytes: 24 << 10,
            chunk_concurrency: 4,
            chunk_timeout_ms: 120_000,
            merge_timeout_ms: 60_000,
            timeout_ms: 600_000,
        }
    }
}

/// Which summarizer the engine builds from config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SummarizerKind {
    /// The embedded extractive summarizer: deterministic, offline.
    #[default]
    Extractive,
    /// An OpenAI-compatible chat-completions endpoint.
    Openai,
}

/// Summarizer choice and settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummarizerConfig {
    /// `extractive` (default) or `openai`.
    pub kind: SummarizerKind,
    /// Settings for `openai`.
    pub openai: OpenAiConfig,
}

/// An OpenAI-compatible endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// Base URL; requests go to `{base_url}/v1/chat/completions`. Default `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Model name sent in each request. Default `default`.
    pub model: String,
    /// API key; when absent, the variable named by `api_key_env` is read (and may be unset).
    pub api_key: Option<String>,
    /// Environment variable holding the API key. Default `OPENAI_API_KEY`.
    pub api_key_env: String,
    /// TCP/TLS connect timeout, ms. Default 5,000, range 1..=600,000.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout, ms. Default 120,000, range 1..=3,600,000.
    pub request_timeout_ms: u64,
    /// `max_tokens` sent with each request. Default 512, range 1..=65,536.
    pub max_tokens: u64,
    /// `temperature` sent with each request. Default 0, range 0..=2.
    pub temperature: f64,
    /// Retries of a failed call (rate limits, overload, dropped connections).
    pub retry: RetryConfig,
}

/// How a model call that failed for a passing reason (HTTP 429, 408, 500, 502, 503, 504, a reset
/// connection, a connect timeout) is tried again: exponential backoff with full jitter, or the
/// provider's `Retry-After`, never past the call's own deadline. Zero retries means one try.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first try. Default 6, range 0..=20.
    pub max_retries: u64,
    /// Ceiling of the first wait, ms; each later ceiling doubles. Default 500, range 1..=60,000.
    pub initial_backoff_ms: u64,
    /// Longest wait, ms, also the cap on a provider's `Retry-After`. Default 30,000,
    /// range 1..=600,000, and at least `initial_backoff_ms`.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { max_retries: 6, initial_backoff_ms: 500, max_backoff_ms: 30_000 }
    }
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".to_string(),
            model: "default".to_string(),
            api_key: None,
            api_key_env: "OPENAI_API_KEY".to_string(),
            connect_timeout_ms: 5_000,
            request_timeout_ms: 120_000,
            max_tokens: 512,
            temperature: 0.0,
            retry: RetryConfig::default(),
        }
    }
}

/// What a namespace-lock acquisition does when its bounds run out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLockTimeout {
    /// Fail with [`Error::LockTimeout`] (a failed extraction, recorded as such).
    #[default]
    Error,
    /// Skip the work that wanted the lock (a skipped extraction, recorded as such).
    Skip,
}

/// Bounded waits on namespace locks. Zero never means unlimited: `max_retries = 0` is one try.
/// Memory extraction takes a namespace lock inside its job, so the wait these bounds allow
/// ([`Locks::max_wait_ms`]) may not exceed `background.extraction_timeout_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Locks {
    /// Longest wait of one retry for the holder to let go, ms. Default 200, range 1..=60,000.
    pub retry_interval_ms: u64,
    /// Retries after the first try; `null`: no count bound. Default 10, range 0..=100,000.
    pub max_retries: Option<u64>,
    /// Total wait, ms; `null`: no time bound. Default 5,000, range 1..=3,600,000.
    pub timeout_ms: Option<u64>,
    /// `error` (default) or `skip`.
    pub on_timeout: OnLockTimeout,
    /// Must be true for `max_retries` and `timeout_ms` to be both null (an unbounded wait).
    pub allow_unlimited: bool,
}

impl Locks {
    /// The longest an acquisition can wait under these bounds, ms: `timeout_ms`, or
    /// `max_retries` waits of `retry_interval_ms` each, whichever is shorter; `None` when both
    /// bounds are null (an unbounded wait, allowed only with `allow_unlimited`).
    pub fn max_wait_ms(&self) -> Option<u64> {
        let by_retries = self.max_retries.map(|n| n.saturating_mul(self.retry_interval_ms));
        match (self.timeout_ms, by_retries) {
            (Some(t), Some(r)) => Some(t.min(r)),
            (t, r) => t.or(r),
        }
    }
}

impl Default for Locks {
    fn default() -> Self {
        Self {
            retry_interval_ms: 200,
            max_retries: Some(10),
            timeout_ms: Some(5_000),
            on_timeout: OnLockTimeout::Error,
            allow_unlimited: false,
        }
    }
}

/// Which episode classifier the engine builds from config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    /// The embedded lexical classifier: deterministic, offline.
    #[default]
    Embedded,
    /// A model at the `summarizer.openai` endpoint.
    Openai,
}

/// Episodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Episodes {
    /// User turns after which an episode is closed before the next one. Default 30, range 5..=200.
    pub max_turns_per_episode: u64,
    /// Longest wait for the classifier, ms; then the turn is a new task. Default 5,000, range 1,000..=30,000.
    pub classify_timeout_ms: u64,
    /// `embedded` (default) or `openai`.
    pub classifier: ClassifierKind,
}

impl Default for Episodes {
    fn default() -> Self {
        Self { max_turns_per_episode: 30, classify_timeout_ms: 5_000, classifier: ClassifierKind::Embedded }
    }
}

/// Background work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Background {
    /// Background model calls running at once (extraction, background compaction). Default 2, range 1..=8.
    pub model_concurrency: u64,
    /// Hard timeout of one extraction (permit wait, model call, lock, write), ms.
    /// Default 90,000, range 1,000..=3,600,000.
    pub extraction_timeout_ms: u64,
    /// Extractions one session may have queued; more are skipped. Default 64, range 1..=10,000.
    pub extraction_queue_depth: u64,
    /// Background span loads running at once: a compaction reading and decoding its span, an
    /// extraction reading its span. Each keeps a core busy for up to hundreds of milliseconds;
    /// with 1, background work never takes more than one core from the agent's own calls.
    /// Default 1, range 1..=8.
    pub span_load_concurrency: u64,
}

impl Default for Background {
    fn default() -> Self {
        Self {
            model_concurrency: 2,
            extraction_timeout_ms: 90_000,
            extraction_queue_depth: 64,
            span_load_concurrency: 1,
        }
    }
}

/// Which memory extractor the engine builds from config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractorKind {
    /// The embedded rule extractor: deterministic, offline.
    #[default]
    Embedded,
    /// A model at the `summarizer.openai` endpoint.
    Openai,
}

/// Long-term memory extraction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Extraction {
    /// Extract after every splice and closed episode. Default true.
    pub enabled: bool,
    /// `embedded` (default) or `openai`.
    pub extractor: ExtractorKind,
}

impl Default for Extraction {
    fn default() -> Self {
        Self { enabled: true, extractor: ExtractorKind::Embedded }
    }
}

impl Config {
    /// A default config for the database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), ..Self::default() }
    }

    /// Parses and validates JSON.
    pub fn from_json_str(text: &str) -> Result<Self, Error> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::InvalidConfig {
            field: "(document)".to_string(),
            reason: format!("not valid JSON: {e}"),
        })?;
        Self::from_value(value)
    }

    /// Parses and validates TOML.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let table: toml::Table = toml::from_str(text).map_err(|e| Error::InvalidConfig {
            field: "(document)".to_string(),
            reason: format!("not valid TOML: {e}"),
        })?;
        let value = serde_json::to_value(table)
            .map_err(|e| Error::InvalidConfig { field: "(document)".to_string(), reason: e.to_string() })?;
        Self::from_value(value)
    }

    /// Reads a `.json` or `.toml` file (by extension) and validates it.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidConfig {
            field: "(file)".to_string(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::from_json_str(&text),
            Some("toml") => Self::from_toml_str(&text),
            _ => Err(Error::InvalidConfig {
                field: "(file)".to_string(),
                reason: format!("{} must end in .json or .toml", path.display()),
            }),
        }
    }

    fn from_value(value: serde_json::Value) -> Result<Self, Error> {
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            Error::InvalidConfig {
                field: if field == "." { "(document)".to_string() } else { field },
                reason: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value against its range; the error names the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.path.as_os_str().is_empty() {
            return Err(bad("path", "must not be empty".to_string()));
        }
        in_range("cache_mb", self.cache_mb, 1, 1 << 20)?;
        in_range("cache.heads", self.cache.heads, 1, 10_000_000)?;
        in_range("cache.window_bytes", self.cache.window_bytes, 0, 4 << 30)?;
        let l = &self.limits;
        in_range("limits.max_message_bytes", l.max_message_bytes, 1, 16 << 20)?;
        in_range("limits.max_batch_messages", l.max_batch_messages, 1, 100_000)?;
        in_range("limits.max_read_messages", l.max_read_messages, 1, 1_000_000)?;
        in_range("limits.max_open_tool_calls", l.max_open_tool_calls, 1, 4_096)?;
        in_range("limits.max_metadata_bytes", l.max_metadata_bytes, 1, 16 << 20)?;
        let w = &self.writes;
        in_range("writes.queue_depth", w.queue_depth, 1, 1_000_000)?;
        in_range("writes.group_max_events", w.group_max_events, 1, 1_000_000)?;
        in_range("writes.timeout_ms", w.timeout_ms, MIN_WRITE_TIMEOUT_MS, 600_000)?;
        if self.storage.kind == StorageKind::Nats {
            self.storage.nats.validate()?;
        }
        let c = &self.compaction;
        in_range("compaction.keep_last_messages", c.keep_last_messages, 0, 100_000)?;
        in_range("compaction.max_summary_bytes", c.max_summary_bytes, 256, 1 << 20)?;
        in_range("compaction.max_span_messages", c.max_span_messages, 1, 10_000_000)?;
        in_range("compaction.chunk_bytes", c.chunk_bytes, 1 << 10, 16 << 20)?;
        in_range("compaction.chunk_concurrency", c.chunk_concurrency, 1, 32)?;
        in_range("compaction.chunk_timeout_ms", c.chunk_timeout_ms, 100, 3_600_000)?;
        in_range("compaction.merge_timeout_ms", c.merge_timeout_ms, 100, 3_600_000)?;
        in_range("compaction.timeout_ms", c.timeout_ms, 1_000, 86_400_000)?;
        let o = &self.summarizer.openai;
        if !(o.base_url.starts_with("http://") || o.base_url.starts_with("https://")) {
            return Err(bad(
                "summarizer.openai.base_url",
                format!("{:?} must start with http:// or https://", o.base_url),
            ));
        }
        if o.model.trim().is_empty() {
            return Err(bad("summarizer.openai.model", "must not be empty".to_string()));
        }
        if o.api_key_env.trim().is_empty() {
            return Err(bad("summarizer.openai.api_key_env", "must not be empty".to_string()));
        }
        if o.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(bad(
                "summarizer.openai.api_key",
                "must not be empty when given (omit it to use api_key_env)".to_string(),
            ));
        }
        in_range("summarizer.openai.connect_timeout_ms", o.connect_timeout_ms, 1, 600_000)?;
        in_range("summarizer.openai.request_timeout_ms", o.request_timeout_ms, 1, 3_600_000)?;
        in_range("summarizer.openai.max_tokens", o.max_tokens, 1, 65_536)?;
        if !(0.0..=2.0).contains(&o.temperature) {
            return Err(bad("summarizer.openai.temperature", format!("{} is out of range 0..=2", o.temperature)));
        }
        let r = &o.retry;
        in_range("summarizer.openai.retry.max_retries", r.max_retries, 0, 20)?;
        in_range("summarizer.openai.retry.initial_backoff_ms", r.initial_backoff_ms, 1, 60_000)?;
        in_range("summarizer.openai.retry.max_backoff_ms", r.max_backoff_ms, 1, 600_000)?;
        if r.max_backoff_ms < r.initial_backoff_ms {
            return Err(bad(
                "summarizer.openai.retry.max_backoff_ms",
                format!(
                    "{} is under summarizer.openai.retry.initial_backoff_ms ({}): the longest wait cannot be \
                     shorter than the first",
                    r.max_backoff_ms, r.initial_backoff_ms
                ),
            ));
        }
        let k = &self.locks;
        in_range("locks.retry_interval_ms", k.retry_interval_ms, 1, 60_000)?;
        if let Some(n) = k.max_retries {
            in_range("locks.max_retries", n, 0, 100_000)?;
        }
        if let Some(ms) = k.timeout_ms {
            in_range("locks.timeout_ms", ms, 1, 3_600_000)?;
        }
        if k.max_retries.is_none() && k.timeout_ms.is_none() && !k.allow_unlimited {
            return Err(bad(
                "locks.max_retries",
                "null together with a null locks.timeout_ms waits without bound; set one of them, \
                 or set locks.allow_unlimited = true to mean it"
                    .to_string(),
            ));
        }
        let e = &self.episodes;
        in_range("episodes.max_turns_per_episode", e.max_turns_per_episode, 5, 200)?;
        in_range("episodes.classify_timeout_ms", e.classify_timeout_ms, 1_000, 30_000)?;
        let b = &self.background;
        in_range("background.model_concurrency", b.model_concurrency, 1, 8)?;
        in_range("background.extraction_timeout_ms", b.extraction_timeout_ms, 1_000, 3_600_000)?;
        in_range("background.extraction_queue_depth", b.extraction_queue_depth, 1, 10_000)?;
        in_range("background.span_load_concurrency", b.span_load_concurrency, 1, 8)?;
        self.cross_check()
    }

    /// Checks between fields, once each is in range: a wait may not outlast the job it serves, or
    /// the job's own timeout would always fire first and the wait's configured outcome never.
    fn cross_check(&self) -> Result<(), Error> {
        let c = &self.compaction;
        for (field, value) in
            [("compaction.chunk_timeout_ms", c.chunk_timeout_ms), ("compaction.merge_timeout_ms", c.merge_timeout_ms)]
        {
            if value > c.timeout_ms {
                return Err(bad(
                    field,
                    format!(
                        "{value} is over compaction.timeout_ms ({}): one call cannot outlast the compaction it is part of",
                        c.timeout_ms
                    ),
                ));
            }
        }
        // Memory extraction takes the namespace lock inside its job. A wait longer than the job
        // would be cut by the job's timeout, so `locks.on_timeout` (error or skip) could never apply.
        // An unbounded wait is the caller's explicit choice (`locks.allow_unlimited`); the
        // extraction's timeout still bounds it there.
        let k = &self.locks;
        let job_ms = self.background.extraction_timeout_ms;
        if let Some(wait_ms) = k.max_wait_ms()
            && wait_ms > job_ms
        {
            let (field, spelled) = match k.timeout_ms {
                Some(t) if t == wait_ms => ("locks.timeout_ms", format!("{t}")),
                _ => (
                    "locks.max_retries",
                    format!(
                        "{} retries of locks.retry_interval_ms ({}) wait up to {wait_ms} ms, which",
                        k.max_retries.unwrap_or(0),
                        k.retry_interval_ms
                    ),
                ),
            };
            return Err(bad(
                field,
                format!(
                    "{spelled} is over background.extraction_timeout_ms ({job_ms}), the job the namespace lock serves: \
                     the extraction would be stopped before locks.on_timeout could apply"
                ),
            ));
        }
        Ok(())
    }
}

/// Which storage backend holds the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// The embedded fjall database under `path` (the default).
    #[default]
    Fjall,
    /// A NATS JetStream cluster (`storage.nats`); needs the `nats` cargo feature.
    Nats,
}

/// Storage backend choice and settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// `fjall` (default) or `nats`.
    pub kind: StorageKind,
    /// Settings for `nats`.
    pub nats: NatsConfig,
}

/// The least `storage.nats.write_timeout_ms`, ms: a JetStream stream elects a new leader within
/// about 15 to 20 s of losing one, and a write timeout below that turns ordinary failovers into
/// failed appends.
pub const MIN_NATS_WRITE_TIMEOUT_MS: u64 = 20_000;

/// A NATS JetStream cluster (SPEC.md, "The JetStream backend").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`), tried in order. Default `["nats://127.0.0.1:4222"]`;
    /// 1 to 64 of them, none empty.
    pub urls: Vec<String>,
    /// Prefix of every stream name and subject this database uses, so several databases can share
    /// one cluster. Default `palimpsest`; 1 to 32 bytes of `[A-Za-z0-9_-]`.
    pub stream_prefix: String,
    /// Session streams; sessions are hashed onto them (more streams spread the leaders, and so
    /// the write load, over the cluster). Fixed once the database exists. Default 1, range 1..=64.
    pub streams: u64,
    /// Replicas of every stream (an acknowledged write is on a majority of them). Default 3,
    /// range 1..=5.
    pub replicas: u64,
    /// A NATS credentials (`.creds`) file; at most one of it and `token`.
    pub credentials_file: Option<PathBuf>,
    /// An authentication token; at most one of it and `credentials_file`.
    pub token: Option<String>,
    /// Longest wait for one append, retries of an ambiguous outcome included, ms. Default 20,000,
    /// range 20,000..=600,000 (the floor is `MIN_NATS_WRITE_TIMEOUT_MS`, above the election window).
    pub write_timeout_ms: u64,
    /// Most attempts of one append (the first plus retries of an ambiguous outcome with the same
    /// `Nats-Msg-Id`). Default 10, range 1..=100.
    pub write_attempts: u64,
    /// TCP connect and handshake timeout per server, ms. Default 5,000, range 100..=600,000.
    pub connect_timeout_ms: u64,
    /// Timeout of one read or management request, ms. Default 5,000, range 100..=600,000.
    pub read_timeout_ms: u64,
    /// The servers' monitoring endpoints (`http://host:port`), read at connect in `sync`
    /// durability: each must report `jetstream.config.sync_always` (the server option
    /// `sync_interval: always`), or the connect is refused. Up to 64.
    pub monitor_urls: Vec<String>,
    /// In `sync` durability without `monitor_urls`: the operator states that every server runs
    /// with `sync_interval: always`, which a NATS client cannot see. Default false, so `sync`
    /// durability needs one of the two.
    pub sync_always_acknowledged: bool,
    /// Least age of an unreferenced summary blob before `gc` removes it, ms. Default 3,600,000
    /// (an hour), range 2 x `write_timeout_ms`..=2,592,000,000 (30 days). A splice lands within
    /// 2 x `write_timeout_ms` of its blob's publish or never (SPEC.md 11a, "Orphan blobs"); the
    /// rest of the grace covers clock skew between the servers and the machine running `gc`.
    pub orphan_grace_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".to_string()],
            stream_prefix: "palimpsest".to_string(),
            streams: 1,
            replicas: 3,
            credentials_file: None,
            token: None,
            write_timeout_ms: 20_000,
            write_attempts: 10,
            connect_timeout_ms: 5_000,
            read_timeout_ms: 5_000,
            monitor_urls: Vec::new(),
            sync_always_acknowledged: false,
            orphan_grace_ms: 3_600_000,
        }
    }
}

impl NatsConfig {
    /// Checks every value against its range; the error names the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        let count = u64::try_from(self.urls.len()).unwrap_or(u64::MAX);
        in_range("storage.nats.urls (count)", count, 1, 64)?;
        if self.urls.iter().any(|u| u.trim().is_empty()) {
            return Err(bad("storage.nats.urls", "must not hold an empty URL".to_string()));
        }
        let p = &self.stream_prefix;
        if p.is_empty() || p.len() > 32 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(bad("storage.nats.stream_prefix", format!("{p:?} is not 1 to 32 bytes of [A-Za-z0-9_-]")));
        }
        in_range("storage.nats.streams", self.streams, 1, 64)?;
        in_range("storage.nats.replicas", self.replicas, 1, 5)?;
        if self.credentials_file.is_some() && self.token.is_some() {
            return Err(bad("storage.nats.token", "give either credentials_file or token, not both".to_string()));
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err(bad("storage.nats.token", "must not be empty".to_string()));
        }
        in_range("storage.nats.write_timeout_ms", self.write_timeout_ms, MIN_NATS_WRITE_TIMEOUT_MS, 600_000)?;
        in_range("storage.nats.write_attempts", self.write_attempts, 1, 100)?;
        in_range("storage.nats.connect_timeout_ms", self.connect_timeout_ms, 100, 600_000)?;
        in_range("storage.nats.read_timeout_ms", self.read_timeout_ms, 100, 600_000)?;
        let monitors = u64::try_from(self.monitor_urls.len()).unwrap_or(u64::MAX);
        in_range("storage.nats.monitor_urls (count)", monitors, 0, 64)?;
        if self.monitor_urls.iter().any(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
            return Err(bad("storage.nats.monitor_urls", "each must start with http:// or https://".to_string()));
        }
        let floor = self.write_timeout_ms.saturating_mul(2);
        in_range("storage.nats.orphan_grace_ms", self.orphan_grace_ms, floor, 2_592_000_000)?;
        Ok(())
    }
}

fn bad(field: &str, reason: String) -> Error {
    Error::InvalidConfig { field: field.to_string(), reason }
}

fn in_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(bad(field, format!("{value} is out of range {min}..={max}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<Config, Error>) -> String {
        match result {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_both_formats_load() {
        Config::default().validate().expect("defaults are valid");
        let json =
            Config::from_json_str(r#"{"durability":"buffered","limits":{"max_message_bytes":100}}"#).expect("json");
        assert_eq!(json.durability, Durability::Buffered);
        let toml =
            Config::from_toml_str("durability = \"buffered\"\n[limits]\nmax_message_bytes = 100\n").expect("toml");
        assert_eq!(json, toml);
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            field_of(Config::from_json_str(r#"{"limits":{"max_message_bytes":0}}"#)),
            "limits.max_message_bytes"
        );
        assert_eq!(
            field_of(Config::from_json_str(r#"{"limits":{"max_message_bytes":-1}}"#)),
            "limits.max_message_bytes"
        );
        assert_eq!(field_of(Config::from_json_str(r#"{"writes":{"timeout_ms":"soon"}}"#)), "writes.timeout_ms");
        assert_eq!(field_of(Config::from_json_str(r#"{"durability":"sometimes"}"#)), "durability");
        assert_eq!(field_of(Config::from_json_str(r#"{"limits":{"max_mesage_bytes":5}}"#)), "limits.max_mesage_bytes");
        assert_eq!(field_of(Config::from_json_str(r#"{"path":""}"#)), "path");
        assert_eq!(field_of(Config::from_json_str("{")), "(document)");
    }

    #[test]
    fn retry_knobs_are_checked_and_named() {
        let parse = |json: &str| Config::from_json_str(json);
        let retry = |body: &str| format!(r#"{{"summarizer":{{"openai":{{"retry":{{{body}}}}}}}}}"#);
        parse(&retry(r#""max_retries":0"#)).expect("zero retries means one try");
        assert_eq!(field_of(parse(&retry(r#""max_retries":21"#))), "summarizer.openai.retry.max_retries");
        assert_eq!(field_of(parse(&retry(r#""initial_backoff_ms":0"#))), "summarizer.openai.retry.initial_backoff_ms");
        assert_eq!(field_of(parse(&retry(r#""max_backoff_ms":600001"#))), "summarizer.openai.retry.max_backoff_ms");
        assert_eq!(
            field_of(parse(&retry(r#""initial_backoff_ms":2000,"max_backoff_ms":1999"#))),
            "summarizer.openai.retry.max_backoff_ms"
        );
        assert_eq!(field_of(parse(&retry(r#""max_retrys":3"#))), "summarizer.openai.retry.max_retrys");
    }

    #[test]
    fn the_orphan_grace_covers_two_write_timeouts() {
        let nats = |grace: u64, write: u64| {
            Config::from_json_str(&format!(
                r#"{{"storage":{{"kind":"nats","nats":{{"orphan_grace_ms":{grace},"write_timeout_ms":{write}}}}}}}"#
            ))
        };
        nats(40_000, 20_000).expect("exactly two write timeouts");
        assert_eq!(field_of(nats(39_999, 20_000)), "storage.nats.orphan_grace_ms");
        assert_eq!(field_of(nats(100_000, 60_000)), "storage.nats.orphan_grace_ms");
        assert_eq!(field_of(nats(2_592_000_001, 20_000)), "storage.nats.orphan_grace_ms");
    }

    #[test]
    fn a_wait_may_not_outlast_the_job_it_serves() {
        let parse = |json: &str| Config::from_json_str(json);
        // The write timeout's floor, and just above it.
        assert_eq!(field_of(parse(r#"{"writes":{"timeout_ms":1}}"#)), "writes.timeout_ms");
        parse(r#"{"writes":{"timeout_ms":1000}}"#).expect("the floor itself is allowed");
        // Chunk and merge calls against the whole compaction, at the edge.
        parse(r#"{"compaction":{"timeout_ms":120000,"merge_timeout_ms":120000}}"#).expect("equal is allowed");
        assert_eq!(field_of(parse(r#"{"compaction":{"chunk_timeout_ms":600001}}"#)), "compaction.chunk_timeout_ms");
        assert_eq!(
            field_of(parse(r#"{"compaction":{"timeout_ms":120000,"merge_timeout_ms":120001}}"#)),
            "compaction.merge_timeout_ms"
        );
        // The namespace lock against the extraction job: the shorter of the two lock bounds counts.
        parse(r#"{"background":{"extraction_timeout_ms":2000}}"#).expect("10 retries of 200 ms fit in 2 s");
        assert_eq!(field_of(parse(r#"{"background":{"extraction_timeout_ms":1999}}"#)), "locks.max_retries");
        parse(r#"{"locks":{"timeout_ms":90000,"max_retries":null}}"#).expect("equal is allowed");
        assert_eq!(field_of(parse(r#"{"locks":{"timeout_ms":90001,"max_retries":null}}"#)), "locks.timeout_ms");
        parse(r#"{"locks":{"timeout_ms":1000000,"max_retries":5}}"#).expect("5 retries of 200 ms bound the wait first");
        assert_eq!(
            field_of(parse(r#"{"locks":{"timeout_ms":null,"max_retries":100000,"retry_interval_ms":60000}}"#)),
            "locks.max_retries"
        );
        // An unbounded wait is an explicit choice; the extraction's own timeout still bounds it.
        parse(r#"{"locks":{"timeout_ms":null,"max_retries":null,"allow_unlimited":true}}"#).expect("spelled out");
        assert_eq!(
            Locks { max_retries: Some(u64::MAX), timeout_ms: None, ..Locks::default() }.max_wait_ms(),
            Some(u64::MAX),
            "saturates instead of overflowing"
        );
    }
}
