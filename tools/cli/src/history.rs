//! The event lines of `show --from` and `show --all`: every kind of event of a session's log, in
//! seq order, read in pages of at most `limits.max_read_messages` so that a session of any length
//! is shown in bounded memory.

use std::fmt::Write as _;

use palimpsest::{Error, Event, EventKind, Seq, Session};
use serde::Serialize;

use crate::exit::CliError;
use crate::output;

/// Most events read per page by `show --all` (and the config's read limit, if lower).
pub const PAGE_EVENTS: usize = 1_000;

/// The documented JSON form of one event (see `show --help`): `seq`, `at_ms`, `type`, then the
/// fields of that type.
#[derive(Serialize)]
pub struct EventJson<'a> {
    seq: u64,
    at_ms: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<output::MessageJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upto: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    episode: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_memories: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_events_removed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_messages_dropped: Option<u64>,
}

impl<'a> EventJson<'a> {
    pub fn new(event: &'a Event) -> Self {
        let mut json = Self {
            seq: event.seq.get(),
            at_ms: event.at_ms,
            kind: event.kind.name(),
            message: None,
            upto: None,
            summary_hash: None,
            n_messages: None,
            episode: None,
            reason: None,
            namespace: None,
            from: None,
            n_memories: None,
            n_events_removed: None,
            document: None,
            n_messages_dropped: None,
        };
        match &event.kind {
            EventKind::MessageAppended(m) => json.message = Some(output::MessageJson::of(m)),
            EventKind::CompactionSpliced(s) => {
                json.upto = Some(s.upto.get());
                json.summary_hash = Some(s.summary_hash.to_hex());
                json.n_messages = Some(s.n_messages);
            }
            EventKind::EpisodeBoundary { episode, reason } => {
                json.episode = Some(*episode);
                json.reason = serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_string));
            }
            EventKind::MemoriesExtracted { namespace, from, upto, n_memories } => {
                json.namespace = Some(namespace);
                json.from = Some(from.get());
                json.upto = Some(upto.get());
                json.n_memories = Some(*n_memories);
            }
            EventKind::SessionDeleted { n_events_removed } => json.n_events_removed = Some(*n_events_removed),
            EventKind::MetadataSet { document } => json.document = Some(document),
            EventKind::MessagesReset { n_messages_dropped } => json.n_messages_dropped = Some(*n_messages_dropped),
        }
        json
    }
}

/// The human form of one event: messages as `show` prints them, other events in brackets.
pub fn event_human(event: &Event) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail; the results are ignored for that reason.
    match &event.kind {
        EventKind::MessageAppended(m) => {
            let _ = write!(out, "#{} {}:", event.seq, m.role);
            output::push_message_body(&mut out, m);
        }
        EventKind::CompactionSpliced(s) => {
            let _ = writeln!(
                out,
                "#{} [compaction: {} messages up to #{} read as summary {}]",
                event.seq,
                s.n_messages,
                s.upto,
                s.summary_hash.to_hex()
            );
        }
        EventKind::EpisodeBoundary { episode, reason } => {
            let _ = writeln!(out, "#{} [episode {episode} ends: {reason:?}]", event.seq);
        }
        EventKind::MemoriesExtracted { namespace, from, upto, n_memories } => {
            let _ = writeln!(
                out,
                "#{} [{n_memories} memories extracted into {} from #{}..#{upto}]",
                event.seq,
                output::clean(namespace),
                from.next()
            );
        }
        EventKind::SessionDeleted { n_events_removed } => {
            let _ = writeln!(out, "#{} [session deleted: {n_events_removed} events removed]", event.seq);
        }
        EventKind::MetadataSet { document } => {
            let _ = writeln!(out, "#{} [metadata set: {} bytes]", event.seq, document.len());
        }
        EventKind::MessagesReset { n_messages_dropped } => {
            let _ = writeln!(out, "#{} [messages reset: {n_messages_dropped} messages left the window]", event.seq);
        }
    }
    out
}

/// The session's last seq, or not found (missing or deleted).
pub async fn last_seq(session: &Session, db: &std::path::Path) -> Result<Seq, CliError> {
    match session.head().await.map_err(|e| CliError::in_db(e, db))? {
        Some(head) if !head.is_deleted() => Ok(head.last_seq()),
        _ => Err(CliError::in_db(Error::NotFound { session: session.id().to_string() }, db)),
    }
}

/// Calls `each` on the events from `from` to `to`, one page of at most `page` events at a time:
/// only one page is held in memory.
pub async fn stream(
    session: &Session,
    from: Seq,
    to: Seq,
    page: usize,
    mut each: impl FnMut(&[Event]) -> Result<(), CliError>,
) -> Result<u64, CliError> {
    let mut next = from;
    let mut shown = 0;
    while next <= to {
        let mut events = session.history(next, page).await?;
        let Some(last) = events.last() else { break };
        next = last.seq.next();
        events.retain(|e| e.seq <= to);
        each(&events)?;
        shown += events.len() as u64;
    }
    Ok(shown)
}
