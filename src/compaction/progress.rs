//! Progress of compactions, published to any number of subscribers. Publishing never waits: a
//! broadcast channel of bounded depth drops the oldest items for a subscriber that falls behind
//! (it sees a `Lagged` error), so a slow or absent subscriber never affects a compaction.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::log::ids::{Seq, SessionId, SummaryHash};

/// Progress items kept for a subscriber that is behind, before the oldest are dropped for it.
pub const PROGRESS_DEPTH: usize = 1024;

/// One step of one compaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The session being compacted.
    pub session: SessionId,
    /// Distinguishes compactions of the same session (engine-wide counter).
    pub compaction: u64,
    /// What happened.
    pub stage: Stage,
}

/// The steps, in the order they happen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// The span was read: messages in `(base, upto]`.
    Loaded {
        /// Messages at or before this seq were already summarized (or deleted).
        base: Seq,
        /// The cut asked for (explicitly or by the policy), capped at `compaction.max_span_messages`
        /// past `base`.
        requested_upto: Seq,
        /// The pair-safe cut used, at or before `requested_upto`.
        upto: Seq,
        /// Messages in the span.
        n_messages: u64,
        /// Their total size in bytes.
        n_bytes: u64,
    },
    /// Single pass or chunks, and why.
    Strategy {
        /// Chunks the span is split into; 1 or fewer means a single pass.
        n_chunks: u64,
        /// Why, in words (the transcript against `compaction.chunk_bytes`).
        reason: String,
    },
    /// A chunk summary finished (or failed).
    ChunkDone {
        /// The chunk, 0-based.
        index: u64,
        /// Chunks in all.
        n_chunks: u64,
        /// How long its summary took, in milliseconds.
        duration_ms: u64,
        /// Whether it succeeded; a failed chunk fails the compaction.
        ok: bool,
    },
    /// A model call failed for a passing reason (a rate limit, an overloaded provider, a dropped
    /// connection) and is tried again after `wait_ms`. `index` is the chunk (0-based, of
    /// `n_chunks`), absent for the merge call (`n_chunks` 0 then); `attempt` is 1 for the first
    /// retry; `status` is the HTTP status, if a reply came; `cause` says what failed, short
    /// (`HTTP 429`, `connection reset`). `concurrency` is the limit of chunks in flight after this
    /// failure: a 429 halves it.
    Retry {
        /// The chunk, 0-based; absent for the merge call.
        index: Option<u64>,
        /// Chunks in all; 0 for the merge call.
        n_chunks: u64,
        /// 1 for the first retry.
        attempt: u64,
        /// How long before the call is tried again, in milliseconds.
        wait_ms: u64,
        /// The HTTP status, if a reply came.
        status: Option<u16>,
        /// What failed, short (`HTTP 429`, `connection reset`).
        cause: String,
        /// The limit of chunks in flight after this failure.
        concurrency: u64,
    },
    /// The merge call started.
    MergeStarted {
        /// Chunk summaries being merged.
        n_chunks: u64,
    },
    /// The merge finished; `fell_back` when the concatenated chunk summaries were used instead.
    MergeDone {
        /// How long the merge took, in milliseconds.
        duration_ms: u64,
        /// Whether the concatenated chunk summaries were used instead of the merge's reply.
        fell_back: bool,
    },
    /// The splice event was written.
    Spliced {
        /// Messages at or before this seq are now served as the summary.
        upto: Seq,
        /// The summary's hash.
        summary_hash: SummaryHash,
        /// Seq of the `CompactionSpliced` event.
        seq: Seq,
    },
    /// The compaction ended without a splice; the session is as it was.
    Abandoned {
        /// Why, in words (nothing to compact, the session changed underneath, or the error).
        reason: String,
    },
}

/// The sending side, owned by the engine.
pub(crate) struct ProgressBus {
    tx: broadcast::Sender<Progress>,
}

impl Default for ProgressBus {
    fn default() -> Self {
        Self { tx: broadcast::channel(PROGRESS_DEPTH).0 }
    }
}

impl ProgressBus {
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.tx.subscribe()
    }

    /// Publishes without waiting; having no subscriber is fine.
    pub(crate) fn publish(&self, session: &SessionId, compaction: u64, stage: Stage) {
        tracing::debug!(session = %session, compaction, stage = ?stage, "compaction progress");
        let _ = self.tx.send(Progress { session: session.clone(), compaction, stage });
    }
}
