//! palimpsest: session memory for LLM agents.
//!
//! Sessions are append-only event logs on fjall. Each session's working memory (the latest
//! summary plus the most recent messages) is served at a cost independent of the session's
//! length, and compaction lands as a splice event that readers fold over.
//!
//! Map of the crate, in layers; each stands only on the ones above it in this list:
//! - `log`: the pure model: ids ([`SessionId`], [`Seq`], [`SummaryHash`]), events and the
//!   OpenAI-shaped [`Message`], the codec, the fold ([`Head`]), the working-memory view, the
//!   pair-safe compaction planner. No I/O, no clock, no runtime.
//! - `error`, `config`: the public [`Error`] enum; [`Config`], loaded from JSON or TOML and validated.
//! - `storage`: where a session's log lives: the embedded backend's key-value boundary (`kv`)
//!   and fjall implementing it (the default), its key layout, the fault-injecting wrapper of test
//!   builds (`faulty`); with the `nats` feature, `NatsLog` on a JetStream cluster.
//! - `guard`: bounded waits on keyed and namespace locks, the background model budget, [`GuardStats`].
//! - `summarizer`: the [`Summarizer`] trait, the extractive default, prompts, the OpenAI client.
//! - `engine`: [`Engine`] and [`Session`], the async API's core: the write path (locks, group
//!   commit, poisoning, the purge of deleted sessions) and the reads; session metadata and atomic
//!   whole-session updates ([`SessionUpdate`], [`SessionState`]) for servers that keep a session
//!   document; the guards' API. It knows the features above only as the write path's hooks
//!   (`engine::Features`: an episode boundary pushed, boundaries landed, the features' gauges).
//! - `compaction`, `episodes`, `extraction`: features standing on the engine's crate-internal write
//!   path: the single-flight compaction runner and its progress events; the [`EpisodeClassifier`]
//!   and turn caps; background memory extraction into namespaces with `drain`.
//! - `audit`, `transfer`: replay every session, check the invariants, rebuild heads, collect orphan
//!   blobs; sessions as JSON lines (export, import).
//! - `open`: the top: [`Components`], the features' state, and `Engine::open`/`connect`, which
//!   build the parts, open the core on its backend and attach the features.
//! - `testing`: kill points and armed faults behind the `testing` feature (not public API).

mod audit;
mod compaction;
mod config;
mod engine;
mod episodes;
mod error;
mod extraction;
mod guard;
mod log;
mod open;
mod storage;
mod summarizer;
mod testing;
mod transfer;

pub use crate::{
    audit::{
        AUDIT_PROGRESS_EVERY, AuditOptions, AuditReport, RebuildReport, ReplayResult, Replayer, Stats, Violation,
        ViolationKind,
    },
    compaction::{
        CompactionOutcome, CompactionPlan, CompactionRequest, MAX_FOCUS_BYTES, NoPlan, PROGRESS_DEPTH, Progress, Stage,
        is_pair_safe, plan,
    },
    config::{
        Background as BackgroundConfig, Cache as CacheConfig, ClassifierKind, Compaction as CompactionConfig, Config,
        Durability, Episodes as EpisodesConfig, Extraction as ExtractionConfig, ExtractorKind, Limits,
        Locks as LocksConfig, MIN_NATS_WRITE_TIMEOUT_MS, NatsConfig, OnLockTimeout, OpenAiConfig, RetryConfig,
        Storage as StorageConfig, StorageKind, SummarizerConfig, SummarizerKind, Writes,
    },
    engine::metadata::{SessionMetadata, SessionState, SessionUpdate, UpdateOutcome},
    engine::{Engine, Session},
    episodes::{
        Boundary, CLASSIFY_CONTEXT_EVENTS, ClassifyInput, EpisodeClassifier, EpisodeDecision, LexicalClassifier,
        OpenAiClassifier, TurnOutcome,
    },
    error::{Error, Result},
    extraction::{
        DrainReport, ExtractInput, ExtractionError, GivenUpExtraction, MAX_EXTRACTION_ATTEMPTS,
        MAX_EXTRACTION_ERROR_BYTES, MAX_GIVEN_UP_READ, MAX_MEMORIES_PER_EXTRACTION, MAX_MEMORY_BYTES,
        MAX_RESUMED_PER_OPEN, Memory, MemoryExtractor, OpenAiExtractor, RuleExtractor, namespace_of,
    },
    guard::{GuardStats, LockOutcome, NamespaceGuard},
    log::event::{BoundaryReason, Event, EventKind, Message, Role, Splice, ToolCall},
    log::fold::{Head, OpenCall, SpliceRef, apply, check_message, replay},
    log::ids::{MAX_SESSION_ID_BYTES, Seq, SessionId, SummaryHash},
    log::view::{StoredMessage, Summary, WorkingMemory},
    open::Components,
    summarizer::{
        BoxFuture, ExtractiveSummarizer, MAX_PROVIDER_ERROR_BYTES, OpenAiSummarizer, Summarizer, SummaryInput,
        SummaryTask, check_summary, render_transcript,
    },
    transfer::{IMPORT_HEADROOM_EVENTS, ImportReport, MAX_IMPORT_LINES},
};

#[cfg(feature = "testing")]
pub use crate::storage::fjall::MEMTABLE_BYTES_ENV;
/// The NATS JetStream backend (feature `nats`): the engine runs on it through `Engine::connect`
/// (SPEC.md section 11a); the log itself is public for tools and tests that drive it directly.
#[cfg(feature = "nats")]
pub use crate::storage::nats::{
    BATCH_RECORDS, MAX_LISTED_BLOBS, MAX_LISTED_SESSIONS, MAX_RESUMED_DELETIONS, NatsLog, Version,
};
/// Test hooks (feature `testing` only): storage faults and the names of the kill points.
#[cfg(feature = "testing")]
pub use crate::{
    audit::GcStage,
    testing::{Fault, FaultMode, FaultPoint, KILL_AFTER_ENV, KILL_AT_ENV, KILL_POINTS},
};
