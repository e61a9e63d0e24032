//! Compaction: partial, non-blocking, spliced.
//!
//! - planning is pure and lives in `log::plan`: where a compaction may cut (pair-safe) and the
//!   [`CompactionPlan`] that proves it.
//! - `flight`: the registry of sessions with a compaction in flight (a leaf).
//! - `run`: single flight, loading the span, summarizing it without holding any session lock,
//!   storing the summary blob, and the re-checked splice.
//! - `progress`: typed progress events for subscribers (a leaf).
//! - [`State`]: what compaction keeps per engine, attached by `crate::open`.

pub(crate) mod flight;
pub(crate) mod progress;
pub(crate) mod run;

pub use crate::log::plan::{CompactionPlan, NoPlan, is_pair_safe, plan};
pub use progress::{PROGRESS_DEPTH, Progress, Stage};
pub use run::{CompactionOutcome, CompactionRequest, MAX_FOCUS_BYTES};

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::engine::Engine;
use crate::summarizer::Summarizer;

/// What compaction keeps per engine (attached by `crate::open`, reached through [`state`]).
pub(crate) struct State {
    /// Writes the summaries.
    pub(crate) summarizer: Arc<dyn Summarizer>,
    /// Sessions with a compaction in flight (single flight per session).
    pub(crate) compactions: flight::InFlight,
    /// Progress, broadcast to subscribers.
    pub(crate) progress: progress::ProgressBus,
    /// The id of the next compaction (progress events name it).
    pub(crate) next_compaction: AtomicU64,
}

impl State {
    pub(crate) fn new(summarizer: Arc<dyn Summarizer>) -> Self {
        Self {
            summarizer,
            compactions: flight::InFlight::default(),
            progress: progress::ProgressBus::default(),
            next_compaction: AtomicU64::new(1),
        }
    }
}

/// `engine`'s compaction state.
pub(crate) fn state(engine: &Engine) -> &State {
    engine.feature::<State>()
}

impl Engine {
    /// Subscribes to compaction progress of every session. A subscriber that falls more than
    /// `PROGRESS_DEPTH` items behind loses the oldest (and is told so); compactions never wait.
    pub fn subscribe_progress(&self) -> tokio::sync::broadcast::Receiver<Progress> {
        state(self).progress.subscribe()
    }

    /// Sessions with a compaction in flight right now.
    pub fn compactions_in_flight(&self) -> usize {
        state(self).compactions.len()
    }
}
