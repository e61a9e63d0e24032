//! The working-memory operations over the library's public API: read (whole or the last N
//! messages), PUT (diffed into an append or recorded as a replacement), the append extension,
//! delete, list and the memory prompt. Each write is one [`Session::update`] batch, made with the
//! last seq it read, and retried (at most [`MAX_WRITE_ATTEMPTS`] times) when another write came
//! between: a PUT lands whole or not at all, and never on top of a state it did not compare with.

use std::sync::Arc;

use palimpsest::{Engine, Error, Seq, Session, SessionId, SessionState, SessionUpdate, StoredMessage};
use serde_json::{Value, json};

use crate::background::Background;
use crate::config::ServerConfig;
use crate::diff::{self, Plan};
use crate::error::ApiError;
use crate::ids::SessionKey;
use crate::metrics::Metrics;
use crate::model::{
    self, AppendBody, MessageError, MessageIn, SessionDoc, UpdateBody, WorkingMemoryOut, format_time, message_tokens,
};

/// Tries of one read-modify-write before answering 409.
pub const MAX_WRITE_ATTEMPTS: usize = 8;
/// Sessions with one AMS session id looked at by the fallback lookup (upstream asks for 2).
const FALLBACK_SCAN: usize = 64;
/// Messages read per page when a whole session is read.
const READ_PAGE: usize = 5_000;

/// What a handler needs: the engine, the config, counters and the background work.
pub struct Service {
    /// The database.
    pub engine: Engine,
    /// Limits.
    pub config: ServerConfig,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Compactions and the TTL sweep.
    pub background: Arc<Background>,
}

/// A session as read: its state, its whole live messages (or the last N) and its document.
pub struct Read {
    /// The state the messages were read at.
    pub state: SessionState,
    /// The live messages read, oldest first.
    pub messages: Vec<StoredMessage>,
    /// The session document (defaults for a session written through the library).
    pub doc: SessionDoc,
}

/// The response's knobs: `model_name`, `context_window_max`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window<'a> {
    /// `model_name`.
    pub model_name: Option<&'a str>,
    /// `context_window_max`.
    pub context_window_max: Option<u64>,
}

impl Window<'_> {
    /// The window the response is computed against, when the caller gave model information.
    fn given(&self) -> Option<u64> {
        (self.model_name.is_some() || self.context_window_max.is_some())
            .then(|| model::effective_window(self.model_name, self.context_window_max))
    }
    /// The window summarization is measured against (16,000 when none is given).
    pub fn for_summary(&self) -> u64 {
        model::effective_window(self.model_name, self.context_window_max)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn decode_doc(state: &SessionState) -> SessionDoc {
    match &state.metadata {
        Some(m) => serde_json::from_str(&m.document).unwrap_or_else(|e| {
            tracing::warn!(session = %state.memory.session, error = %e, "session document does not decode; defaults used");
            SessionDoc::default()
        }),
        None => SessionDoc::default(),
    }
}

/// The last write to a session: its metadata's or its newest message's store time.
fn last_write_ms(read: &Read) -> u64 {
    let meta = read.state.metadata.as_ref().map_or(0, |m| m.at_ms);
    let message = read.messages.last().map_or(0, |m| m.at_ms);
    meta.max(message).max(read.state.memory.messages.last().map_or(0, |m| m.at_ms))
}

/// Whether the session's TTL has run out (counted from its last write).
pub fn expired(read: &Read, now: u64) -> bool {
    read.doc.ttl_seconds.is_some_and(|ttl| last_write_ms(read).saturating_add(ttl.saturating_mul(1000)) <= now)
}

fn not_found(key: &SessionKey) -> ApiError {
    ApiError::NotFound(key.session_id.clone())
}

/// Converts the request's messages, refusing the first bad one as upstream does.
fn convert(messages: &[MessageIn], now: u64) -> Result<Vec<(String, palimpsest::Message)>, ApiError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            model::to_library(m, now).map_err(|e| match e {
                MessageError::Blank(id) => {
                    ApiError::BadRequest(format!("Message content cannot be empty (message ID: {id})"))
                }
                MessageError::Invalid { field, reason, input } => ApiError::invalid(
                    "value_error",
                    vec![json!("body"), json!("messages"), json!(i), json!(field)],
                    reason,
                    input,
                ),
            })
        })
        .collect()
}

impl Service {
    fn session(&self, key: &SessionKey) -> Result<Session, ApiError> {
        Ok(self.engine.session(key.library_id())?)
    }

    fn max_read(&self) -> usize {
        usize::try_from(self.engine.config().limits.max_read_messages).unwrap_or(usize::MAX).min(READ_PAGE)
    }

    /// Reads a session: the last `limit` messages, or all its live messages (`None`, at most
    /// `server.max_session_messages`). `None` when missing, deleted or expired.
    pub async fn read(&self, session: &Session, limit: Option<usize>) -> Result<Option<Read>, ApiError> {
        let page = self.max_read();
        let first = limit.map_or(page, |l| l.min(page).max(1));
        let state = match session.read_state(first).await {
            Ok(state) => state,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut messages = state.memory.messages.clone();
        let lower = state.head.upto().max(state.head.base());
        if limit.is_none() && messages.len() == first {
            // Page backwards through the older live messages; events are immutable, so the pages
            // agree with the state read above (a deletion meanwhile shows as a gap: 404 below).
            let cap = usize::try_from(self.config.max_session_messages).unwrap_or(usize::MAX);
            let mut end = messages.first().map_or(lower, |m| Seq::new(m.seq.get() - 1));
            while end > lower {
                if messages.len() >= cap {
                    return Err(ApiError::TooLarge(format!(
                        "the session has more than {cap} messages (server.max_session_messages); read it with recent_messages_limit"
                    )));
                }
                let from = Seq::new(end.get().saturating_sub(page as u64 - 1).max(lower.get() + 1));
                let n = usize::try_from(end.get() - from.get() + 1).unwrap_or(page);
                let events = session.history(from, n).await.map_err(ApiError::from)?;
                if events.first().map(|e| e.seq) != Some(from) {
                    return Ok(None);
                }
                let older: Vec<StoredMessage> = events
                    .into_iter()
                    .filter_map(|e| match e.kind {
                        palimpsest::EventKind::MessageAppended(message) => {
                            Some(StoredMessage { seq: e.seq, at_ms: e.at_ms, message })
                        }
                        _ => None,
                    })
                    .collect();
                messages.splice(0..0, older);
                end = Seq::new(from.get() - 1);
            }
        }
        let doc = decode_doc(&state);
        let read = Read { state, messages, doc };
        if expired(&read, now_ms()) {
            return Ok(None);
        }
        Ok(Some(read))
    }

    /// The session for `key`, or upstream's fallback: the one session with this session id (and
    /// the namespace and user id, where given) when the exact key has none.
    pub async fn resolve(
        &self,
        key: &SessionKey,
        limit: Option<usize>,
    ) -> Result<Option<(SessionKey, Read)>, ApiError> {
        let session = self.session(key)?;
        if let Some(read) = self.read(&session, limit).await? {
            return Ok(Some((key.clone(), read)));
        }
        let prefix = SessionKey::prefix_of(&key.session_id);
        let after = SessionId::new(prefix.clone()).map_err(ApiError::from)?;
        let ids = self.engine.list_sessions(Some(&after), FALLBACK_SCAN).await.map_err(ApiError::from)?;
        let matches: Vec<SessionKey> = ids
            .iter()
            .take_while(|id| id.as_str().starts_with(&prefix))
            .filter_map(SessionKey::parse)
            .filter(|k| k.session_id == key.session_id)
            .filter(|k| key.namespace.is_none() || k.namespace == key.namespace)
            .filter(|k| key.user_id.is_none() || k.user_id == key.user_id)
            .take(2)
            .collect();
        match matches.as_slice() {
            [only] if only != key => {
                let session = self.session(only)?;
                Ok(self.read(&session, limit).await?.map(|read| (only.clone(), read)))
            }
            _ => Ok(None),
        }
    }

    /// The response for a session read (or just written).
    #[allow(clippy::too_many_arguments)] // each is one part of the answer; a struct would only rename them
    pub fn respond(
        &self,
        key: &SessionKey,
        doc: &SessionDoc,
        summary: Option<&str>,
        mut messages: Vec<StoredMessage>,
        last_write_ms: u64,
        window: Window<'_>,
        truncate: bool,
    ) -> WorkingMemoryOut {
        let tokens_of = |m: &StoredMessage| message_tokens(model::role_of(&m.message), &m.message.content);
        let given = window.given();
        if let (Some(limit), true) = (given, truncate) {
            // Upstream drops the oldest until the rest fits, keeping at least one.
            let mut total: u64 = messages.iter().map(tokens_of).sum();
            let mut drop = 0;
            while total > limit && drop + 1 < messages.len() {
                total -= tokens_of(&messages[drop]);
                drop += 1;
            }
            messages.drain(..drop);
        }
        let tokens: u64 = messages.iter().map(tokens_of).sum();
        let (total, until) = model::percentages(tokens, messages.len(), given);
        let created = if doc.created_at_ms > 0 { doc.created_at_ms } else { last_write_ms };
        let updated = if doc.updated_at_ms > 0 { doc.updated_at_ms } else { last_write_ms };
        WorkingMemoryOut {
            messages: messages.iter().map(model::to_wire).collect(),
            memories: doc.memories.clone(),
            data: doc.data.clone().unwrap_or_default(),
            context: summary.map(str::to_string).or_else(|| doc.context.clone()),
            user_id: key.user_id.clone(),
            tokens: doc.tokens,
            session_id: key.session_id.clone(),
            namespace: key.namespace.clone(),
            long_term_memory_strategy: doc.long_term_memory_strategy.clone(),
            ttl_seconds: doc.ttl_seconds,
            last_accessed: format_time(last_write_ms.max(updated)),
            created_at: format_time(created),
            updated_at: format_time(updated),
            context_percentage_total_used: total,
            context_percentage_until_summarization: until,
            new_session: None,
            unsaved: None,
        }
    }

    /// `GET /v1/working-memory/{id}`.
    pub async fn get(
        &self,
        key: &SessionKey,
        limit: Option<usize>,
        window: Window<'_>,
    ) -> Result<WorkingMemoryOut, ApiError> {
        let (key, read) = self.resolve(key, limit).await?.ok_or_else(|| not_found(key))?;
        let mut messages = read.messages.clone();
        if limit.is_some() {
            // Upstream sorts by created_at (stably) before keeping the last N.
            messages.sort_by_key(|m| m.message.created_at_ms);
        }
        let summary = read.state.memory.summary.as_ref().map(|s| s.text.as_str());
        Ok(self.respond(&key, &read.doc, summary, messages, last_write_ms(&read), window, true))
    }

    /// `PUT /v1/working-memory/{id}`: the stored messages plus new ones append the new ones;
    /// anything else is a replacement (a reset and the body's messages, one batch). Returns the
    /// response and whether a message lacked `created_at` (the deprecation header).
    pub async fn put(
        &self,
        session_id: &str,
        body: UpdateBody,
        window: Window<'_>,
    ) -> Result<(WorkingMemoryOut, bool), ApiError> {
        let key = SessionKey::new(session_id, body.namespace.as_deref(), body.user_id.as_deref()).map_err(|e| {
            ApiError::invalid("value_error", vec![json!("body"), json!(e.field)], e.reason, Value::Null)
        })?;
        let now = now_ms();
        let missing_created_at = body.messages.iter().any(|m| m.created_at.is_none());
        let incoming = convert(&body.messages, now)?;
        // For the comparison only: a message sent without `created_at` matches a stored one whatever
        // its time (0 stands for "not given"); what is written keeps the stamp.
        let compare: Vec<(String, palimpsest::Message)> = incoming
            .iter()
            .zip(&body.messages)
            .map(|((id, m), given)| {
                let mut m = m.clone();
                if given.created_at.is_none() {
                    m.created_at_ms = 0;
                }
                (id.clone(), m)
            })
            .collect();
        let session = self.session(&key)?;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let existing = self.read(&session, None).await?;
            let expect = match &existing {
                Some(read) => read.state.head.last_seq(),
                None => session.head().await.map_err(ApiError::from)?.map_or(Seq::ZERO, |h| h.last_seq()),
            };
            let (reset, append) = match &existing {
                None => (true, (0..incoming.len()).collect::<Vec<_>>()),
                Some(read) => {
                    let ids: Vec<String> = read.messages.iter().map(model::id_of).collect();
                    let stored: Vec<(&str, &palimpsest::Message)> =
                        ids.iter().map(String::as_str).zip(read.messages.iter().map(|m| &m.message)).collect();
                    match diff::plan(&stored, &compare) {
                        Plan::Append { leading, new }
                            if leading == 0 || self.compacted(&session, read, &compare[..leading]).await? =>
                        {
                            (false, new)
                        }
                        _ => (true, (0..incoming.len()).collect()),
                    }
                }
            };
            let created_at_ms = existing.as_ref().map(|r| r.doc.created_at_ms).filter(|&c| c > 0).unwrap_or(now);
            let doc = SessionDoc {
                v: 1,
                memories: body.memories.clone(),
                data: body.data.clone(),
                context: body.context.clone(),
                tokens: body.tokens,
                long_term_memory_strategy: body.long_term_memory_strategy.clone().unwrap_or_default(),
                ttl_seconds: body.ttl_seconds,
                created_at_ms,
                updated_at_ms: now,
            };
            let document = serde_json::to_string(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
            let messages: Vec<palimpsest::Message> = append.iter().map(|&i| incoming[i].1.clone()).collect();
            let update = SessionUpdate { expect_last_seq: Some(expect), reset, messages, metadata: Some(document) };
            match session.update(update).await {
                Ok(outcome) => {
                    self.metrics.messages_appended.inc_by(outcome.message_seqs.len() as u64);
                    if outcome.reset.is_some() {
                        self.metrics.replacements.inc();
                    }
                    let mut live: Vec<StoredMessage> = match (&existing, reset) {
                        (Some(read), false) => read.messages.clone(),
                        _ => Vec::new(),
                    };
                    live.extend(outcome.message_seqs.iter().zip(append.iter()).map(|(seq, &i)| StoredMessage {
                        seq: *seq,
                        at_ms: now,
                        message: incoming[i].1.clone(),
                    }));
                    let summary = match (&existing, reset) {
                        (Some(read), false) => read.state.memory.summary.as_ref().map(|s| s.text.clone()),
                        _ => None,
                    };
                    if !outcome.message_seqs.is_empty() {
                        self.background.after_write(&self.engine, session.clone(), window.for_summary());
                    }
                    // Upstream's PUT answers the session as stored (it summarizes rather than
                    // truncating); palimpsest summarizes afterwards, in the background.
                    let out = self.respond(&key, &doc, summary.as_deref(), live, now, window, false);
                    return Ok((out, missing_created_at));
                }
                Err(Error::Conflict { .. }) => {
                    self.metrics.conflicts.inc();
                    continue;
                }
                Err(Error::NotFound { .. }) => return Err(not_found(&key)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(format!("session {session_id} kept changing during the PUT; retry")))
    }

    /// Whether `leading` (unknown messages before the first stored one in a PUT) are the last
    /// messages compacted away, in order: the client read before a compaction.
    async fn compacted(
        &self,
        session: &Session,
        read: &Read,
        leading: &[(String, palimpsest::Message)],
    ) -> Result<bool, ApiError> {
        let head = &read.state.head;
        let (base, upto) = (head.base(), head.upto());
        if upto <= base || leading.is_empty() {
            return Ok(false);
        }
        let want = leading.len();
        let span = (want as u64).saturating_mul(2).saturating_add(16);
        let from = Seq::new(upto.get().saturating_sub(span - 1).max(base.get() + 1));
        let n = usize::try_from(upto.get() - from.get() + 1).unwrap_or(usize::MAX).min(self.max_read());
        let events = session.history(from, n).await.map_err(ApiError::from)?;
        let tail: Vec<StoredMessage> = events
            .into_iter()
            .filter(|e| e.seq <= upto)
            .filter_map(|e| match e.kind {
                palimpsest::EventKind::MessageAppended(message) => {
                    Some(StoredMessage { seq: e.seq, at_ms: e.at_ms, message })
                }
                _ => None,
            })
            .collect();
        if tail.len() < want {
            return Ok(false);
        }
        Ok(tail[tail.len() - want..]
            .iter()
            .zip(leading)
            .all(|(s, (id, m))| model::id_of(s) == *id && model::same_message(m, &s.message)))
    }

    /// `POST /v1/working-memory/{id}/messages` (extension): appends without resending the session,
    /// keeping its document (TTL, data, memories) as it is. Messages whose id is among the
    /// session's recent messages are skipped, so a retried request appends nothing twice.
    pub async fn append(&self, key: &SessionKey, body: AppendBody, window: Window<'_>) -> Result<Value, ApiError> {
        let now = now_ms();
        let incoming = convert(&body.messages, now)?;
        let recent = incoming.len().saturating_mul(2).saturating_add(32);
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let (key, read) = self.resolve(key, Some(recent)).await?.ok_or_else(|| not_found(key))?;
            let known: std::collections::HashSet<String> = read.messages.iter().map(model::id_of).collect();
            let fresh: Vec<&(String, palimpsest::Message)> =
                incoming.iter().filter(|(id, _)| !known.contains(id)).collect();
            let skipped = incoming.len() - fresh.len();
            if fresh.is_empty() {
                return Ok(json!({"status": "ok", "session_id": key.session_id, "appended": 0, "skipped": skipped}));
            }
            let session = self.session(&key)?;
            let update = SessionUpdate {
                expect_last_seq: Some(read.state.head.last_seq()),
                messages: fresh.iter().map(|(_, m)| m.clone()).collect(),
                ..SessionUpdate::default()
            };
            match session.update(update).await {
                Ok(outcome) => {
                    self.metrics.messages_appended.inc_by(outcome.message_seqs.len() as u64);
                    self.background.after_write(&self.engine, session, window.for_summary());
                    return Ok(json!({
                        "status": "ok",
                        "session_id": key.session_id,
                        "appended": outcome.message_seqs.len(),
                        "skipped": skipped,
                        "message_ids": fresh.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                    }));
                }
                Err(Error::Conflict { .. }) => {
                    self.metrics.conflicts.inc();
                    continue;
                }
                Err(Error::NotFound { .. }) => return Err(not_found(&key)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(format!("session {} kept changing during the append; retry", key.session_id)))
    }

    /// `DELETE /v1/working-memory/{id}`: always ok, as upstream, even when missing.
    pub async fn delete(&self, key: &SessionKey) -> Result<(), ApiError> {
        match self.session(key)?.delete().await {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `GET /v1/working-memory/`: ids (AMS session ids) in library id order, filtered, with the
    /// total of matches among the first `server.max_list_scan` sessions.
    pub async fn list(
        &self,
        limit: usize,
        offset: usize,
        namespace: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<(Vec<String>, u64), ApiError> {
        let scan = usize::try_from(self.config.max_list_scan).unwrap_or(usize::MAX);
        let page = self.max_read().min(1_000);
        let (mut seen, mut total, mut out, mut after) = (0usize, 0u64, Vec::new(), None::<SessionId>);
        while seen < scan {
            let ids = self.engine.list_sessions(after.as_ref(), page.min(scan - seen)).await.map_err(ApiError::from)?;
            let Some(last) = ids.last().cloned() else { break };
            seen += ids.len();
            for id in &ids {
                let Some(key) = SessionKey::parse(id) else { continue };
                if namespace.is_some_and(|n| key.namespace.as_deref() != Some(n))
                    || user_id.is_some_and(|u| key.user_id.as_deref() != Some(u))
                {
                    continue;
                }
                if total as usize >= offset && out.len() < limit {
                    out.push(key.session_id);
                }
                total += 1;
            }
            after = Some(last);
        }
        Ok((out, total))
    }

    /// The session part of `POST /v1/memory/prompt`: the summary as a system message, then the
    /// messages (user stays user, every other role is assistant); a missing session is empty.
    pub async fn prompt_messages(&self, key: &SessionKey, window: Window<'_>) -> Result<Vec<Value>, ApiError> {
        let Some((key, read)) = self.resolve(key, None).await? else { return Ok(Vec::new()) };
        let summary = read.state.memory.summary.as_ref().map(|s| s.text.as_str());
        let out = self.respond(&key, &read.doc, summary, read.messages.clone(), last_write_ms(&read), window, true);
        let text = |role: &str, t: &str| json!({"role": role, "content": {"type": "text", "text": t, "annotations": null, "_meta": null}});
        let mut messages = Vec::new();
        if let Some(context) = out.context.as_deref().filter(|c| !c.is_empty()) {
            messages.push(text("system", &format!("## A summary of the conversation so far:\n{context}")));
        }
        for m in &out.messages {
            messages.push(text(if m.role == "user" { "user" } else { "assistant" }, &m.content));
        }
        Ok(messages)
    }
}
