//! Compaction: partial, non-blocking, spliced.
//!
//! - planning is pure and lives in `log::plan`: where a compaction may cut (pair-safe) and the
//!   [`CompactionPlan`] that proves it.
//! - `flight`: the registry of sessions with a compaction in flight (engine-held state; a leaf).
//! - `run`: single flight, loading the span, summarizing it without holding any session lock,
//!   storing the summary blob, and the re-checked splice.
//! - `progress`: typed progress events for subscribers (a leaf: the engine holds the bus).

pub(crate) mod flight;
pub(crate) mod progress;
pub(crate) mod run;

pub use crate::log::plan::{CompactionPlan, NoPlan, is_pair_safe, plan};
pub use progress::{PROGRESS_DEPTH, Progress, Stage};
pub use run::{CompactionOutcome, CompactionRequest, MAX_FOCUS_BYTES};
