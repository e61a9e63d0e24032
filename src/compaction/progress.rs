//! Progress of compactions, published to any number of subscribers. Publishing never waits: a
//! broadcast channel of bounded depth drops the oldest items for a subscriber that falls behind
//! (it sees a `Lagged` error), so a slow or absent subscriber never affects a compaction.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::ids::{Seq, SessionId, SummaryHash};

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
    Loaded { base: Seq, requested_upto: Seq, upto: Seq, n_messages: u64, n_bytes: u64 },
    /// Single pass or chunks, and why.
    Strategy { n_chunks: u64, reason: String },
    /// A chunk summary finished (or failed).
    ChunkDone { index: u64, n_chunks: u64, duration_ms: u64, ok: bool },
    /// A model call failed for a passing reason (a rate limit, an overloaded provider, a dropped
    /// connection) and is tried again after `wait_ms`. `index` is the chunk (0-based, of
    /// `n_chunks`), absent for the merge call (`n_chunks` 0 then); `attempt` is 1 for the first
    /// retry; `status` is the HTTP status, if a reply came; `cause` says what failed, short
    /// (`HTTP 429`, `connection reset`). `concurrency` is the limit of chunks in flight after this
    /// failure: a 429 halves it.
    Retry {
        index: Option<u64>,
        n_chunks: u64,
        attempt: u64,
        wait_ms: u64,
        status: Option<u16>,
        cause: String,
        concurrency: u64,
    },
    /// The merge call started.
    MergeStarted { n_chunks: u64 },
    /// The merge finished; `fell_back` when the concatenated chunk summaries were used instead.
    MergeDone { duration_ms: u64, fell_back: bool },
    /// The splice event was written.
    Spliced { upto: Seq, summary_hash: SummaryHash, seq: Seq },
    /// The compaction ended without a splice; the session is as it was.
    Abandoned { reason: String },
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
