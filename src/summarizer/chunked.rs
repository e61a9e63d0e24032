//! Summarizing a span, long or short, under bounds. Short spans go to the summarizer in one call;
//! long ones are cut into chunks of about `compaction.chunk_bytes` of transcript (never inside a
//! message), summarized concurrently under `compaction.chunk_concurrency`, each call with its own
//! timeout, and merged by a last call with the shorter `compaction.merge_timeout_ms` whose
//! fallback is the previous summary plus the chunk summaries, concatenated. Every reply is
//! cleaned and checked (`accept_reply`): terminal codes in a reply never fail the compaction.
//!
//! Every summarizer call runs in its own task: a panic in a summarizer becomes an error, and
//! dropping the driver (cancellation, the compaction's own timeout) aborts every call in flight.
//!
//! Each call runs in a retry scope (`retry::CallScope`) whose deadline is the call's own timeout,
//! so a model call's retries never outlive it; each retry is reported as [`Stage::Retry`]. Chunks
//! in flight are bounded by an adaptive limit (`adaptive`): a rate-limited reply halves it, and
//! successes raise it again, never past `compaction.chunk_concurrency`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::adaptive::AdaptiveLimit;
use super::retry::{CallScope, RetryNotice, scoped};
use super::{Summarizer, SummaryInput, SummaryTask, accept_reply, render_message, truncate_bytes};
use crate::compaction::Stage;
use crate::config::Compaction;
use crate::error::Error;
use crate::log::view::StoredMessage;

/// The smallest summary budget given to one chunk, bytes.
const MIN_CHUNK_SUMMARY_BYTES: usize = 256;

/// Retry reports waiting for the driver to publish them. Past this many a report is dropped (the
/// retry itself still happens, and is logged): progress is best effort, never a reason to wait.
const RETRY_REPORT_DEPTH: usize = 256;

/// The HTTP status of a rate-limited reply, which lowers the chunks in flight.
const STATUS_TOO_MANY_REQUESTS: u16 = 429;

/// What to summarize.
pub(crate) struct Span {
    pub(crate) messages: Vec<StoredMessage>,
    pub(crate) previous_summary: Option<String>,
    pub(crate) focus: Option<String>,
}

/// Cuts messages into consecutive groups of at most `chunk_bytes` of rendered transcript each
/// (a single larger message forms a group of its own).
pub(crate) fn split_chunks(messages: Vec<StoredMessage>, chunk_bytes: usize) -> Vec<Vec<StoredMessage>> {
    let mut chunks: Vec<Vec<StoredMessage>> = Vec::new();
    let (mut current, mut size) = (Vec::new(), 0usize);
    let mut line = String::new();
    for m in messages {
        line.clear();
        render_message(&m, &mut line);
        if !current.is_empty() && size + line.len() > chunk_bytes {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += line.len();
        current.push(m);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Summarizes `span` within the bounds of `cfg`, reporting each step to `progress`.
pub(crate) async fn summarize_span(
    summarizer: &Arc<dyn Summarizer>,
    span: Span,
    cfg: &Compaction,
    progress: &(dyn Fn(Stage) + Send + Sync),
) -> Result<String, Error> {
    let max_bytes = usize::try_from(cfg.max_summary_bytes).unwrap_or(usize::MAX);
    let chunk_bytes = usize::try_from(cfg.chunk_bytes).unwrap_or(usize::MAX);
    let chunk_timeout = Duration::from_millis(cfg.chunk_timeout_ms);
    let Span { messages, previous_summary, focus } = span;
    let chunks = split_chunks(messages, chunk_bytes);
    let n_chunks = chunks.len();

    if n_chunks <= 1 {
        let reason = format!("transcript fits in one call (compaction.chunk_bytes = {chunk_bytes})");
        tracing::info!(n_chunks, %reason, "compaction strategy: single pass");
        progress(Stage::Strategy { n_chunks: n_chunks as u64, reason });
        let input = SummaryInput {
            task: SummaryTask::Whole,
            previous_summary,
            messages: chunks.into_iter().flatten().collect(),
            partials: Vec::new(),
            focus,
            max_summary_bytes: max_bytes,
        };
        let reply = call(summarizer, input, chunk_timeout, "a summary call", progress, Some((0, 1))).await?;
        return accept_reply(&reply, max_bytes);
    }

    let reason = format!("transcript exceeds compaction.chunk_bytes ({chunk_bytes}): {n_chunks} chunks");
    tracing::info!(n_chunks, %reason, "compaction strategy: chunked");
    progress(Stage::Strategy { n_chunks: n_chunks as u64, reason });
    let chunk_max = (max_bytes / n_chunks).max(MIN_CHUNK_SUMMARY_BYTES).min(max_bytes);
    let limit = AdaptiveLimit::new(usize::try_from(cfg.chunk_concurrency).unwrap_or(1));
    let (reports, mut reported) = mpsc::channel::<Stage>(RETRY_REPORT_DEPTH);
    let mut tasks = JoinSet::new();
    for (index, messages) in chunks.into_iter().enumerate() {
        let input = SummaryInput {
            task: SummaryTask::Chunk { index, n_chunks },
            previous_summary: None,
            messages,
            partials: Vec::new(),
            focus: focus.clone(),
            max_summary_bytes: chunk_max,
        };
        let (summarizer, limit, reports) = (Arc::clone(summarizer), Arc::clone(&limit), reports.clone());
        tasks.spawn(async move {
            let slot = Arc::new(limit.acquire().await);
            let started = Instant::now();
            let on_retry = {
                let slot = Arc::clone(&slot);
                move |notice: &RetryNotice| {
                    let concurrency =
                        if notice.status == Some(STATUS_TOO_MANY_REQUESTS) { slot.throttled() } else { limit.limit() };
                    let _ = reports.try_send(retry_stage(notice, Some((index, n_chunks)), concurrency));
                }
            };
            let scope = CallScope { deadline: started + chunk_timeout, on_retry: Arc::new(on_retry) };
            let reply = scoped(scope, tokio::time::timeout(chunk_timeout, summarizer.summarize(input)))
                .await
                .unwrap_or(Err(Error::Timeout { what: "a chunk summary", after_ms: millis(chunk_timeout) }))
                .and_then(|reply| accept_reply(&reply, chunk_max));
            if reply.is_ok() {
                slot.succeeded();
            }
            (index, started.elapsed(), reply)
        });
    }
    drop(reports);
    let mut partials = vec![String::new(); n_chunks];
    loop {
        let joined = tokio::select! {
            // Reports first, so a chunk's retries are published before its end.
            biased;
            Some(stage) = reported.recv() => {
                progress(stage);
                continue;
            }
            joined = tasks.join_next() => joined,
        };
        let Some(joined) = joined else { break };
        let (index, elapsed, reply) = joined.map_err(panicked)?;
        progress(Stage::ChunkDone {
            index: index as u64,
            n_chunks: n_chunks as u64,
            duration_ms: millis(elapsed),
            ok: reply.is_ok(),
        });
        // A failed chunk fails the compaction; dropping `tasks` aborts the others.
        partials[index] = reply?;
    }

    progress(Stage::MergeStarted { n_chunks: n_chunks as u64 });
    let started = Instant::now();
    let merge = SummaryInput {
        task: SummaryTask::Merge,
        previous_summary: previous_summary.clone(),
        messages: Vec::new(),
        partials: partials.clone(),
        focus,
        max_summary_bytes: max_bytes,
    };
    let merge_timeout = Duration::from_millis(cfg.merge_timeout_ms);
    let merged = call(summarizer, merge, merge_timeout, "the merge call", progress, None)
        .await
        .and_then(|r| accept_reply(&r, max_bytes));
    let fell_back = merged.is_err();
    progress(Stage::MergeDone { duration_ms: millis(started.elapsed()), fell_back });
    match merged {
        Ok(text) => Ok(text),
        Err(e) => {
            tracing::warn!(error = %e, "merge failed; using the concatenated chunk summaries");
            // The partials are clean already; the previous summary may predate cleaning.
            let joined: Vec<String> = previous_summary.into_iter().chain(partials).collect();
            accept_reply(&truncate_bytes(&joined.join("\n\n"), max_bytes), max_bytes)
        }
    }
}

/// One summarizer call in its own task, bounded by `timeout`, its retries published as `chunk`
/// (index and count; none for the merge).
async fn call(
    summarizer: &Arc<dyn Summarizer>,
    input: SummaryInput,
    timeout: Duration,
    what: &'static str,
    progress: &(dyn Fn(Stage) + Send + Sync),
    chunk: Option<(usize, usize)>,
) -> Result<String, Error> {
    let summarizer = Arc::clone(summarizer);
    let (reports, mut reported) = mpsc::channel::<Stage>(RETRY_REPORT_DEPTH);
    let on_retry = move |notice: &RetryNotice| {
        // One call at a time here: the concurrency is 1.
        let _ = reports.try_send(retry_stage(notice, chunk, 1));
    };
    let scope = CallScope { deadline: Instant::now() + timeout, on_retry: Arc::new(on_retry) };
    let mut task = JoinSet::new();
    task.spawn(scoped(scope, async move {
        tokio::time::timeout(timeout, summarizer.summarize(input))
            .await
            .unwrap_or(Err(Error::Timeout { what, after_ms: millis(timeout) }))
    }));
    loop {
        tokio::select! {
            biased;
            Some(stage) = reported.recv() => progress(stage),
            joined = task.join_next() => {
                return match joined {
                    Some(joined) => joined.map_err(panicked)?,
                    None => Err(Error::Closed),
                };
            }
        }
    }
}

/// The progress item of one retry.
fn retry_stage(notice: &RetryNotice, chunk: Option<(usize, usize)>, concurrency: usize) -> Stage {
    Stage::Retry {
        index: chunk.map(|(index, _)| index as u64),
        n_chunks: chunk.map_or(0, |(_, n)| n as u64),
        attempt: notice.attempt,
        wait_ms: millis(notice.wait),
        status: notice.status,
        cause: notice.cause.clone(),
        concurrency: concurrency as u64,
    }
}

fn panicked(e: tokio::task::JoinError) -> Error {
    Error::Summarizer { status: None, message: format!("the summarizer task failed: {e}") }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
