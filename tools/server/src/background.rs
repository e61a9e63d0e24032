//! Work the server does off the request path: summarization (a compaction started after a write
//! once the session's messages pass 70% of the window, upstream's rule, instead of blocking the
//! PUT on a model call) and the TTL sweep (expired sessions deleted, as an event, a bounded batch
//! per tick). Both are bounded: at most `server.max_background_compactions` compactions and
//! checks in flight (one per session), and `server.ttl_sweep_batch` sessions per sweep.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use palimpsest::{CompactionOutcome, CompactionRequest, Engine, Error, Session, SessionId};
use parking_lot::Mutex;
use tokio::task::JoinSet;

use crate::ids::SessionKey;
use crate::metrics::Metrics;
use crate::model::{self, KEEP_SHARE, SUMMARIZATION_THRESHOLD};

/// The background work and its bounds.
pub struct Background {
    tasks: Mutex<JoinSet<()>>,
    pending: Arc<Mutex<HashSet<SessionId>>>,
    limit: usize,
    summarization: bool,
    metrics: Arc<Metrics>,
}

/// A session's place in the pending set, given up when dropped.
struct PendingEntry {
    pending: Arc<Mutex<HashSet<SessionId>>>,
    id: SessionId,
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

/// Messages read per step when measuring a session's live tokens; each step reads 4 times more.
const FIRST_MEASURE: usize = 64;

impl Background {
    /// No work yet.
    pub fn new(limit: usize, summarization: bool, metrics: Arc<Metrics>) -> Self {
        Self { tasks: Mutex::new(JoinSet::new()), pending: Arc::default(), limit, summarization, metrics }
    }

    /// After a write that added messages: measure the session in the background and compact it if
    /// it passed the threshold. Nothing happens with summarization off; a check is skipped (and
    /// counted) when the session already has one in flight or the bound is reached.
    pub fn after_write(&self, engine: &Engine, session: Session, window_tokens: u64) {
        if !self.summarization {
            return;
        }
        let mut tasks = self.tasks.lock();
        while tasks.try_join_next().is_some() {}
        let id = session.id().clone();
        {
            let mut pending = self.pending.lock();
            if pending.contains(&id) || tasks.len() >= self.limit {
                self.metrics.compactions_skipped.inc();
                return;
            }
            pending.insert(id.clone());
        }
        let (pending, metrics) = (Arc::clone(&self.pending), Arc::clone(&self.metrics));
        let max_read = usize::try_from(engine.config().limits.max_read_messages).unwrap_or(usize::MAX);
        tasks.spawn(async move {
            // Removes the session's entry however the task ends (done, failed, aborted, panicked).
            let _entry = PendingEntry { pending, id };
            let outcome = summarize_if_due(&session, window_tokens, max_read, &metrics).await;
            if let Err(e) = outcome {
                tracing::warn!(session = %session.id(), error = %e, "background summarization failed");
                metrics.compactions_failed.inc();
            }
        });
    }

    /// Waits for the background compactions, at most `timeout`, then aborts what is left (an
    /// aborted compaction is abandoned: nothing but an orphan blob). Returns how many were aborted.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let mut tasks = std::mem::take(&mut *self.tasks.lock());
        let finished = tokio::time::timeout(timeout, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_ok() {
            return 0;
        }
        let left = tasks.len();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        left
    }
}

/// Reads the session's newest messages (growing steps, never more than needed to pass the
/// threshold) and, past `0.7 x window` tokens, compacts everything but the newest messages that fit
/// `0.4 x window`.
async fn summarize_if_due(session: &Session, window: u64, max_read: usize, metrics: &Metrics) -> Result<(), Error> {
    let threshold = (window as f64 * SUMMARIZATION_THRESHOLD) as u64;
    let keep = (window as f64 * KEEP_SHARE) as u64;
    let mut limit = FIRST_MEASURE.min(max_read);
    let state = loop {
        let state = match session.read_state(limit).await {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let tokens: u64 = state
            .memory
            .messages
            .iter()
            .map(|m| model::message_tokens(model::role_of(&m.message), &m.message.content))
            .sum();
        if tokens > threshold {
            break state;
        }
        if state.memory.messages.len() < limit || limit >= max_read {
            return Ok(());
        }
        limit = limit.saturating_mul(4).min(max_read);
    };
    // Newest first: keep what fits `keep`; everything before goes into the summary.
    let (mut kept, mut upto) = (0u64, None);
    for m in state.memory.messages.iter().rev() {
        let t = model::message_tokens(model::role_of(&m.message), &m.message.content);
        if kept + t > keep {
            upto = Some(m.seq);
            break;
        }
        kept += t;
    }
    let Some(upto) = upto else { return Ok(()) };
    metrics.compactions_started.inc();
    match session.compact_in_background(CompactionRequest::upto(upto))?.await {
        Ok(Ok(CompactionOutcome::Spliced { .. })) => metrics.compactions_spliced.inc(),
        Ok(Ok(other)) => {
            tracing::debug!(session = %session.id(), outcome = ?other, "background summarization did not splice");
            0
        }
        Ok(Err(e)) => return Err(e),
        Err(join) => return Err(Error::InvalidArgument { what: "compaction task", reason: join.to_string() }),
    };
    Ok(())
}

/// One TTL sweep: looks at up to `batch` sessions after `cursor` and deletes the expired ones
/// (only if nothing was written since they were read). Returns the cursor for the next sweep
/// (`None`: start over).
pub async fn sweep(
    service: &crate::service::Service,
    cursor: Option<SessionId>,
    batch: usize,
) -> Result<Option<SessionId>, Error> {
    let ids = service.engine.list_sessions(cursor.as_ref(), batch).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for id in &ids {
        if SessionKey::parse(id).is_none() {
            continue;
        }
        let session = service.engine.session(id.clone())?;
        let state = match session.read_state(1).await {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let doc: crate::model::SessionDoc = match &state.metadata {
            Some(m) => serde_json::from_str(&m.document).unwrap_or_default(),
            None => continue,
        };
        let last_seq = state.head.last_seq();
        let messages = state.memory.messages.clone();
        let read = crate::service::Read { state, messages, doc };
        if !crate::service::expired(&read, now) {
            continue;
        }
        match session.delete_expecting(last_seq).await {
            Ok(_) => {
                service.metrics.ttl_deleted.inc();
                tracing::info!(session = %id, "expired session deleted");
            }
            Err(Error::Conflict { .. } | Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(if ids.len() < batch { None } else { ids.last().cloned() })
}
