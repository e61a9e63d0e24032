//! palimpsest: session memory for LLM agents.
//!
//! Sessions are append-only event logs on fjall. Each session's working memory (the latest
//! summary plus the most recent messages) is served at a cost independent of the session's
//! length, and compaction lands as a splice event that readers fold over.
//!
//! Map of the crate:
//! - `ids`: newtypes [`SessionId`], [`Seq`], [`SummaryHash`].
//! - `error`: the public [`Error`] enum.
//! - `config`: [`Config`], loaded from JSON or TOML and validated.
//! - `event`: stored event kinds and the OpenAI-shaped [`Message`].
//! - `codec`: version byte + msgpack; decoding damage becomes [`Error::Corrupt`].
//! - `keys`: the key layout of every keyspace.
//! - `fold`: pure `apply(head, event)`; the [`Head`] stored beside each event.
//! - `view`: pure: which messages working memory shows.
//! - `store`: the fjall boundary (the only module naming fjall).
//! - `writer`: durability, group commit, poisoning.
//! - `purge`: removes a deleted session's dead events in bounded chunks, resumed on open.
//! - `guard`: bounded waits on keyed and namespace locks, the background model budget, [`GuardStats`].
//! - `episode`: the [`EpisodeClassifier`] trait, the lexical default, turn caps and boundaries.
//! - `extract`: background memory extraction into namespaces, its queue and `drain`.
//! - `audit`: replay every session, check the invariants, rebuild heads, collect orphan blobs.
//! - `compaction`: pure pair-safe planning, the single-flight runner, progress events.
//! - `summarizer`: the [`Summarizer`] trait, the extractive default, prompts, the OpenAI client.
//! - `engine`: [`Engine`] and [`Session`], the async API.
//! - `transfer`: sessions as JSON lines (export, import of OpenAI chat messages or exported events).
//! - `testing`: kill points behind the `testing` feature (not public API).

mod audit;
mod codec;
mod compaction;
mod config;
mod engine;
mod episode;
mod error;
mod event;
mod extract;
mod fold;
mod guard;
mod ids;
mod keys;
mod purge;
mod store;
mod summarizer;
mod testing;
mod transfer;
mod view;
mod writer;

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
        Background as BackgroundConfig, ClassifierKind, Compaction as CompactionConfig, Config, Durability,
        Episodes as EpisodesConfig, Extraction as ExtractionConfig, ExtractorKind, Limits, Locks as LocksConfig,
        OnLockTimeout, OpenAiConfig, RetryConfig, SummarizerConfig, SummarizerKind, Writes,
    },
    engine::{Components, Engine, Session},
    episode::{
        Boundary, CLASSIFY_CONTEXT_EVENTS, ClassifyInput, EpisodeClassifier, EpisodeDecision, LexicalClassifier,
        OpenAiClassifier, TurnOutcome,
    },
    error::{Error, Result},
    event::{BoundaryReason, Event, EventKind, Message, Role, Splice, ToolCall},
    extract::{
        DrainReport, ExtractInput, ExtractionError, GivenUpExtraction, MAX_EXTRACTION_ATTEMPTS,
        MAX_EXTRACTION_ERROR_BYTES, MAX_GIVEN_UP_READ, MAX_MEMORIES_PER_EXTRACTION, MAX_MEMORY_BYTES,
        MAX_RESUMED_PER_OPEN, Memory, MemoryExtractor, OpenAiExtractor, RuleExtractor, namespace_of,
    },
    fold::{Head, OpenCall, SpliceRef, apply, check_message, replay},
    guard::{GuardStats, LockOutcome, NamespaceGuard},
    ids::{MAX_SESSION_ID_BYTES, Seq, SessionId, SummaryHash},
    summarizer::{
        BoxFuture, ExtractiveSummarizer, MAX_PROVIDER_ERROR_BYTES, OpenAiSummarizer, Summarizer, SummaryInput,
        SummaryTask, check_summary, render_transcript,
    },
    transfer::{IMPORT_HEADROOM_EVENTS, ImportReport, MAX_IMPORT_LINES},
    view::{StoredMessage, Summary, WorkingMemory},
};

#[cfg(feature = "testing")]
pub use crate::store::MEMTABLE_BYTES_ENV;
/// Test hooks (feature `testing` only): storage faults and the names of the kill points.
#[cfg(feature = "testing")]
pub use crate::{
    audit::GcStage,
    testing::{Fault, FaultMode, FaultPoint, KILL_AFTER_ENV, KILL_AT_ENV, KILL_POINTS},
};
