//! Running a compaction (see SPEC.md, "Compaction protocol", for the steps and what a crash at
//! each leaves behind):
//!
//! 1. Single flight: register the session, or answer `AlreadyRunning` and change nothing. The
//!    registration is a guard whose drop unregisters, so every way out (success, error, timeout,
//!    cancellation, panic) cleans up.
//! 2. Choose `upto` (requested, or the policy's "keep the last K messages") and read the span
//!    `(base, upto]` without any lock; the planner moves `upto` back until it is pair-safe.
//! 3. Summarize (no lock held: appends to the session continue meanwhile).
//! 4. Store the summary blob, then append `CompactionSpliced` through the normal write path after
//!    re-checking, under the session lock, that the base is still current and that no tool call
//!    at or before `upto` is open. If the check fails the compaction is abandoned.

use std::time::Duration;

use serde::Serialize;

use super::flight::InFlightGuard;
use super::progress::Stage;
use crate::engine::Session;
use crate::engine::writer::Hold;
use crate::error::Error;
use crate::log::event::{Event, EventKind, Splice};
use crate::log::fold::Head;
use crate::log::ids::{Seq, SummaryHash};
use crate::log::plan::{NoPlan, plan};
use crate::log::view;
use crate::storage::keys;
use crate::storage::{Ks, Kv, Op, Read};
use crate::summarizer::chunked::{Span, summarize_span};
use crate::summarizer::sanitize;

/// Longest `focus` text accepted, bytes.
pub const MAX_FOCUS_BYTES: usize = 2_048;

/// What to compact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionRequest {
    /// Compact up to this seq (moved back if needed to keep tool calls with their results).
    /// `None`: keep the last `compaction.keep_last_messages` messages verbatim.
    pub upto: Option<Seq>,
    /// Free text steering what the summary keeps; reaches every summarizer prompt. At most
    /// [`MAX_FOCUS_BYTES`]; escape sequences and control characters in it are cleaned, not refused
    /// (see [`Session::compact`]).
    pub focus: Option<String>,
}

impl CompactionRequest {
    /// Compact up to `upto`.
    pub fn upto(upto: Seq) -> Self {
        Self { upto: Some(upto), focus: None }
    }

    /// Adds a focus text.
    pub fn with_focus(mut self, focus: impl Into<String>) -> Self {
        self.focus = Some(focus.into());
        self
    }
}

/// How a compaction ended (errors aside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CompactionOutcome {
    /// The splice landed: messages up to `upto` are now served as the summary.
    Spliced {
        /// The cut asked for (explicitly or by the policy).
        requested_upto: Seq,
        /// The pair-safe cut used.
        upto: Seq,
        /// The summary's hash.
        summary_hash: SummaryHash,
        /// Seq of the `CompactionSpliced` event.
        seq: Seq,
        /// Messages the summary replaced.
        n_messages: u64,
    },
    /// A compaction of this session was already in flight; nothing was done.
    AlreadyRunning,
    /// There was nothing to compact; nothing was done.
    NothingToCompact {
        /// The cut asked for, if one was computed.
        requested_upto: Option<Seq>,
        /// Why.
        reason: String,
    },
    /// The splice re-check failed (the session changed underneath); nothing was spliced, at
    /// most an orphan blob remains.
    Abandoned {
        /// The cut asked for.
        requested_upto: Seq,
        /// The pair-safe cut that was summarized.
        upto: Seq,
        /// Why.
        reason: String,
    },
}

/// Where the summarize step ended.
enum Step {
    /// Nothing to do; the outcome says why.
    Done(CompactionOutcome),
    /// A checked summary, ready to splice.
    Summarized(Summarized),
}

/// What the load step found.
enum Load {
    /// Nothing to do; the outcome says why.
    Done(CompactionOutcome),
    /// A span to summarize.
    Loaded(Loaded),
}

/// A checked plan and the span it covers, read through one snapshot.
struct Loaded {
    span_messages: Vec<view::StoredMessage>,
    previous_summary: Option<String>,
    lower: Seq,
    upto: Seq,
    requested: Seq,
    n_messages: u64,
    base_at_plan: Seq,
}

/// A summary and the plan it was made for.
struct Summarized {
    text: String,
    lower: Seq,
    upto: Seq,
    requested: Seq,
    n_messages: u64,
    /// The session's deletion base when the span was read; a change means it was deleted since.
    base_at_plan: Seq,
}

/// Refuses a focus over [`MAX_FOCUS_BYTES`]; otherwise returns the request with its focus cleaned
/// (see SPEC.md "Content handling") and trimmed, and a focus empty once cleaned dropped.
fn check_focus(request: CompactionRequest) -> Result<CompactionRequest, Error> {
    if let Some(focus) = &request.focus
        && focus.len() > MAX_FOCUS_BYTES
    {
        return Err(Error::InvalidArgument {
            what: "focus",
            reason: format!("{} bytes, the limit is {MAX_FOCUS_BYTES}", focus.len()),
        });
    }
    let focus = request.focus.as_deref().map(|f| sanitize(f).trim().to_string()).filter(|f| !f.is_empty());
    Ok(CompactionRequest { focus, ..request })
}

impl Session {
    /// Compacts the session: summarizes old messages and splices the summary in, without
    /// blocking appends (see the module docs). Model failures and timeouts are errors; the session
    /// is then exactly as before (at most an orphan summary blob remains, which `gc` collects).
    ///
    /// Content is never a reason to fail: the focus is cleaned (escape sequences removed, other
    /// control characters replaced, see SPEC.md "Content handling") and trimmed, and a focus empty
    /// once cleaned is no focus; only one over [`MAX_FOCUS_BYTES`] is refused, before any change.
    ///
    /// Cancel safety: dropping the future is an abandoned compaction. Before the splice is queued
    /// (loading, summarizing, storing the blob) the session is left exactly as it was, except at
    /// most an orphan blob; the in-flight registry entry is released at once. Once the splice's
    /// batch is queued it lands whole, after the same re-check under the session's lock, so the
    /// caller does not learn the outcome: `working_memory` shows whether it landed.
    pub async fn compact(&self, request: CompactionRequest) -> Result<CompactionOutcome, Error> {
        let request = check_focus(request)?;
        let Some(registered) = super::state(self.engine()).compactions.enter(self.id()) else {
            return Ok(CompactionOutcome::AlreadyRunning);
        };
        self.compact_registered(request, registered).await
    }

    /// [`Session::compact`] after step 1: `_registered` is this compaction's registry entry.
    async fn compact_registered(
        &self,
        request: CompactionRequest,
        _registered: InFlightGuard,
    ) -> Result<CompactionOutcome, Error> {
        let inner = self.engine().inner();
        let state = super::state(self.engine());
        let id = state.next_compaction.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let timeout_ms = inner.config.compaction.timeout_ms;
        // The timeout bounds the steps that can hang (reading, the model). The splice is a bounded
        // write of its own: a timeout firing after it was queued would report a failure for a
        // splice that lands.
        let summarized = tokio::time::timeout(Duration::from_millis(timeout_ms), self.summarize_step(id, request))
            .await
            .unwrap_or(Err(Error::Timeout { what: "the compaction", after_ms: timeout_ms }));
        let outcome = match summarized {
            Ok(Step::Done(outcome)) => Ok(outcome),
            Ok(Step::Summarized(summarized)) => self.splice_step(id, summarized).await,
            Err(e) => Err(e),
        };
        match &outcome {
            Ok(CompactionOutcome::Spliced { .. }) | Ok(CompactionOutcome::AlreadyRunning) => {}
            Ok(CompactionOutcome::NothingToCompact { reason, .. })
            | Ok(CompactionOutcome::Abandoned { reason, .. }) => {
                state.progress.publish(self.id(), id, Stage::Abandoned { reason: reason.clone() });
            }
            Err(e) => state.progress.publish(self.id(), id, Stage::Abandoned { reason: e.to_string() }),
        }
        outcome
    }

    /// Runs [`Session::compact`] on a spawned task that first takes a permit of the background
    /// model budget (`background.model_concurrency`), waiting at most `compaction.timeout_ms` for
    /// it, so background compactions never run more model calls at once than the budget allows.
    /// A compaction awaited directly with `compact` takes no permit: it is the foreground.
    /// Single flight is checked here, before the task is spawned and so before it waits for a
    /// permit: a second request for a session whose compaction is queued for a permit resolves at
    /// once to `AlreadyRunning`. A bad focus is refused here too. Needs a tokio runtime
    /// ([`Error::InvalidArgument`] without one).
    pub fn compact_in_background(
        &self,
        request: CompactionRequest,
    ) -> Result<tokio::task::JoinHandle<Result<CompactionOutcome, Error>>, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::InvalidArgument {
            what: "runtime",
            reason: format!("compact_in_background needs a tokio runtime: {e}"),
        })?;
        let request = check_focus(request)?;
        let Some(registered) = super::state(self.engine()).compactions.enter(self.id()) else {
            return Ok(runtime.spawn(async { Ok(CompactionOutcome::AlreadyRunning) }));
        };
        let session = self.clone();
        // The registration moves into the task: however it ends (or is aborted), it unregisters.
        Ok(runtime.spawn(async move {
            let inner = session.engine().inner();
            let timeout = Duration::from_millis(inner.config.compaction.timeout_ms);
            let _permit = inner.guards.budget.acquire(timeout).await?;
            session.compact_registered(request, registered).await
        }))
    }

    /// Steps 2 and 3 of the module docs: choose and check the cut, summarize.
    async fn summarize_step(&self, id: u64, request: CompactionRequest) -> Result<Step, Error> {
        let inner = self.engine().inner();
        // Reading and decoding a span of up to `max_span_messages` is CPU-bound work of tens to
        // hundreds of milliseconds: it runs on a blocking thread, not on a runtime worker that
        // the session's appends (or anyone else's tasks) may be queued behind, and it waits for a
        // span-load permit (`background.span_load_concurrency`), so loads and extractions' reads
        // together keep at most that many cores busy beside the agent. The wait is bounded by the
        // compaction's timeout, which wraps this step.
        let focus = request.focus.clone();
        let timeout = Duration::from_millis(inner.config.compaction.timeout_ms);
        let permit = inner.guards.span_loads.acquire(timeout).await?;
        let loaded = match &inner.backend {
            crate::engine::backend::Backend::Fjall { .. } => {
                let session = self.clone();
                tokio::task::spawn_blocking(move || session.load_step(id, request))
                    .await
                    .map_err(|e| Error::storage("load the compaction's span", format!("the load task failed: {e}")))??
            }
            #[cfg(feature = "nats")]
            crate::engine::backend::Backend::Nats(log) => self.load_step_nats(log, id, request).await?,
        };
        drop(permit);
        let Loaded { span_messages, previous_summary, lower, upto, requested, n_messages, base_at_plan } = match loaded
        {
            Load::Done(outcome) => return Ok(Step::Done(outcome)),
            Load::Loaded(loaded) => loaded,
        };
        // No lock is held from here to the splice: appends to this session go on meanwhile.
        let state = super::state(self.engine());
        let publish = |stage| state.progress.publish(self.id(), id, stage);
        let span = Span { messages: span_messages, previous_summary, focus };
        let text = summarize_span(&state.summarizer, span, &inner.config.compaction, &publish).await?;
        Ok(Step::Summarized(Summarized { text, lower, upto, requested, n_messages, base_at_plan }))
    }

    /// Step 2 of the module docs on fjall, blocking: read the session through one snapshot, choose
    /// and check the cut, and take the span's messages and the previous summary. The snapshot is
    /// dropped before returning: held through a long model call it would hold back fjall's garbage
    /// collection.
    fn load_step(&self, id: u64, request: CompactionRequest) -> Result<Load, Error> {
        let cfg = &self.engine().inner().config.compaction;
        // One snapshot for the whole load, so the plan sees one state of the session.
        let view = self.engine().store("compaction")?.view();
        let head = self.live_head(&view)?;
        let lower = head.upto().max(head.base());
        let keep = usize::try_from(cfg.keep_last_messages).unwrap_or(usize::MAX);
        let last = match request.upto {
            None => Some(self.last_messages(&view, lower, head.last_seq(), keep.saturating_add(1))?),
            Some(_) => None,
        };
        let requested = match requested_upto(&head, request.upto, last, keep, cfg.max_span_messages)? {
            Ok(requested) => requested,
            Err(done) => return Ok(Load::Done(done)),
        };
        let span =
            if requested > lower { view.events(self.id(), lower.next(), requested, usize::MAX)? } else { Vec::new() };
        let previous_summary = match head.splice() {
            Some(s) if s.upto == lower => Some(self.summary(&view, s.upto, &s.summary_hash)?.text),
            _ => None,
        };
        Ok(self.plan_span(id, &head, requested, span, previous_summary))
    }

    /// Step 2 on JetStream: the same reads from the cluster (the head from the stream leader, so
    /// the span ends where the session did when the head was read).
    #[cfg(feature = "nats")]
    async fn load_step_nats(
        &self,
        log: &crate::storage::nats::NatsLog,
        id: u64,
        request: CompactionRequest,
    ) -> Result<Load, Error> {
        let cfg = &self.engine().inner().config.compaction;
        // A deletion landing during the reads purges the span: read again on the fresh head.
        self.read_nats(log, true, |view| async move {
            let head = &view.head;
            let lower = head.upto().max(head.base());
            let keep = usize::try_from(cfg.keep_last_messages).unwrap_or(usize::MAX);
            let last = match request.upto {
                None => Some(self.last_messages_nats(&view, lower, head.last_seq(), keep.saturating_add(1)).await?),
                Some(_) => None,
            };
            let requested = match requested_upto(head, request.upto, last, keep, cfg.max_span_messages)? {
                Ok(requested) => requested,
                Err(done) => return Ok(Load::Done(done)),
            };
            let span = if requested > lower {
                view.events(self.id(), lower.next(), requested, usize::MAX).await?
            } else {
                Vec::new()
            };
            let previous_summary = match head.splice() {
                Some(s) if s.upto == lower => Some(self.summary_nats(&view, s.upto, &s.summary_hash).await?.text),
                _ => None,
            };
            Ok(self.plan_span(id, head, requested, span, previous_summary))
        })
        .await
    }

    /// The end of step 2 on any backend: plans the cut in `span` (the events after the head's
    /// lower bound up to `requested`), checks it, and takes its messages.
    fn plan_span(
        &self,
        id: u64,
        head: &Head,
        requested: Seq,
        span: Vec<Event>,
        previous_summary: Option<String>,
    ) -> Load {
        // Messages at or before `lower` are already summarized (or deleted).
        let lower = head.upto().max(head.base());
        let plan = match plan(lower, requested, &span) {
            Ok(plan) => plan,
            Err(no) => {
                let reason = match no {
                    NoPlan::AlreadyCompacted => format!("everything up to {requested} is already compacted"),
                    NoPlan::OnlyOpenToolPairs { blocking_call } => format!(
                        "the tool call at seq {blocking_call} has no result at or before {requested}; \
                         cutting before it leaves nothing to compact"
                    ),
                };
                return Load::Done(CompactionOutcome::NothingToCompact { requested_upto: Some(requested), reason });
            }
        };
        let upto = plan.upto();
        let messages: Vec<_> = view::messages_of(span.into_iter().take_while(|e| e.seq <= upto)).collect();
        let n_messages = messages.len() as u64;
        let n_bytes = messages.iter().map(|m| m.message.size_bytes() as u64).sum();
        super::state(self.engine()).progress.publish(
            self.id(),
            id,
            Stage::Loaded { base: lower, requested_upto: requested, upto, n_messages, n_bytes },
        );
        Load::Loaded(Loaded {
            span_messages: messages,
            previous_summary,
            lower,
            upto,
            requested,
            n_messages,
            base_at_plan: head.base(),
        })
    }

    /// Step 4 of the module docs: store the blob, re-check and splice.
    async fn splice_step(&self, id: u64, summarized: Summarized) -> Result<CompactionOutcome, Error> {
        let Summarized { text, lower, upto, requested, n_messages, base_at_plan } = summarized;
        let engine = self.engine();
        let inner = engine.inner();
        let summary_hash = SummaryHash::of(&text);
        let summary_bytes = text.len() as u64;
        let timeout_ms = inner.config.writes.timeout_ms;
        let _blob_gate = tokio::time::timeout(Duration::from_millis(timeout_ms), inner.blob_gate.read())
            .await
            .map_err(|_| Error::Timeout { what: "orphan-blob collection to finish", after_ms: timeout_ms })?;
        let blob = Op::Put(Ks::Blobs, keys::blob_key(&summary_hash).to_vec(), text.into_bytes());
        // On fjall the blob is stored first, on its own; on JetStream it goes in the splice's write,
        // which publishes it right before each attempt of the record (SPEC 11a, "Orphan blobs": a
        // splice lands within 2 x `write_timeout_ms` of its blob's publish or never, which is what
        // makes `gc` safe there without a lock).
        let with_splice: Option<Op> = match &inner.backend {
            crate::engine::backend::Backend::Fjall { writer, .. } => {
                writer.write(vec![blob], Hold::nothing()).await?;
                None
            }
            #[cfg(feature = "nats")]
            crate::engine::backend::Backend::Nats(_) => Some(blob),
        };
        crate::testing::kill_point("compaction:after_blob");

        let summarizer = super::state(engine).summarizer.name().to_string();
        let mut abandoned = None;
        let head = engine
            .write_events(self.id(), |batch| {
                abandoned = None;
                let now = batch.head();
                let reason = if now.base() != base_at_plan {
                    Some("the session was deleted while the summary was being written".to_string())
                } else if now.upto().max(now.base()) != lower {
                    Some(format!("another splice landed (now up to {}); the base {lower} is stale", now.upto()))
                } else {
                    let open = now.open_calls().iter().find(|c| c.seq <= upto);
                    open.map(|call| format!("tool call {:?} at seq {} is still open", call.id, call.seq))
                };
                if reason.is_some() {
                    abandoned = reason;
                    return Ok(());
                }
                crate::testing::kill_point("compaction:before_splice");
                let splice = Splice {
                    upto,
                    previous_upto: lower,
                    summary_hash,
                    n_messages,
                    summary_bytes,
                    summarizer: summarizer.clone(),
                };
                let at = batch.push(EventKind::CompactionSpliced(splice))?;
                if let Some(blob) = &with_splice {
                    batch.op(blob.clone());
                }
                engine.mark_extraction_pending(batch, self.id(), at, Some(lower), upto);
                Ok(())
            })
            .await?;
        if let Some(reason) = abandoned {
            tracing::warn!(session = %self.id(), %reason, "compaction abandoned at the splice re-check");
            return Ok(CompactionOutcome::Abandoned { requested_upto: requested, upto, reason });
        }
        crate::testing::kill_point("compaction:after_splice");
        super::state(self.engine()).progress.publish(
            self.id(),
            id,
            Stage::Spliced { upto, summary_hash, seq: head.last_seq() },
        );
        tracing::info!(session = %self.id(), %upto, n_messages, "compaction spliced");
        // The compacted span goes to memory extraction in the background; this compaction (and
        // whoever awaits it) does not wait for it.
        engine.schedule_job(self.id(), Some(lower), upto, Some(head.last_seq()));
        Ok(CompactionOutcome::Spliced {
            requested_upto: requested,
            upto,
            summary_hash,
            seq: head.last_seq(),
            n_messages,
        })
    }
}

/// The seq a compaction asks to cut at: `upto` if given (refused past the head), else the seq of
/// the oldest of the last `keep + 1` messages after the head's lower bound (`last`), so `keep`
/// stay verbatim; never more than `max_span` messages past the lower bound. `Ok(Err(outcome))`
/// when there is nothing to compact.
fn requested_upto(
    head: &Head,
    upto: Option<Seq>,
    last: Option<Vec<view::StoredMessage>>,
    keep: usize,
    max_span: u64,
) -> Result<Result<Seq, CompactionOutcome>, Error> {
    let lower = head.upto().max(head.base());
    let requested = match (upto, last) {
        (Some(upto), _) if upto > head.last_seq() => {
            return Err(Error::InvalidArgument {
                what: "upto",
                reason: format!("{upto} is past the session's last seq {}", head.last_seq()),
            });
        }
        (Some(upto), _) => upto,
        (None, last) => {
            let last = last.unwrap_or_default();
            if last.len() <= keep {
                return Ok(Err(CompactionOutcome::NothingToCompact {
                    requested_upto: None,
                    reason: format!(
                        "{} messages after the summary; compaction.keep_last_messages keeps {keep}",
                        last.len()
                    ),
                }));
            }
            last[0].seq
        }
    };
    Ok(Ok(requested.min(Seq::new(lower.get().saturating_add(max_span)))))
}
