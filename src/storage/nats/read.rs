//! The reads of the JetStream backend. A session's head is read from the stream leader (so a
//! writer sees every acknowledged record); events are read with direct gets, which any replica
//! answers and which can lag, so each read knows from the head where it must end and falls back
//! to the leader for whatever a lagging replica does not have yet.
//!
//! Costs, in requests: `head` 1; `window(n)` 1 + one per further record the last `n` events span
//! (each record a back-pointer away), whatever the session's length; `events(from)` a galloping
//! search back from the session's last record (about log2 of the stream sequences between) plus one batched request per
//! [`BATCH_RECORDS`] records read; `head_at` the same search plus 1.

use std::collections::BTreeSet;
use std::ops::Bound;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, LastRawMessageErrorKind};
use futures_util::StreamExt;

use super::{NatsLog, Version, record};
use crate::error::Error;
use crate::log::event::Event;
use crate::log::fold::{Head, apply};
use crate::log::ids::{Seq, SessionId};

/// Records asked for in one batched direct get.
pub const BATCH_RECORDS: usize = 256;
/// Most bytes one batched direct get may return (the server stops the batch there).
const BATCH_MAX_BYTES: usize = 8 << 20;
/// Most session subjects `sessions` collects before refusing (it sorts them in memory).
pub const MAX_LISTED_SESSIONS: usize = 1_000_000;

impl NatsLog {
    /// The session's head and version, read from its stream's leader; `None` for a session
    /// without records.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn head(&self, session: &SessionId) -> Result<Option<(Head, Version)>, Error> {
        match self.last_record(session).await? {
            None => Ok(None),
            Some(m) => {
                let at = self.record_of(session, &m).await?;
                Ok(Some((at.record.head, Version(at.last))))
            }
        }
    }

    /// Up to `limit` events of the session with `from <= seq <= to`, in order.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn events(&self, session: &SessionId, from: Seq, to: Seq, limit: usize) -> Result<Vec<Event>, Error> {
        match self.head(session).await? {
            Some((head, version)) => self.events_as_of(session, &head, version, from, to, limit).await,
            None => Ok(Vec::new()),
        }
    }

    /// [`NatsLog::events`] as of `head` at `version`, read a moment ago (no head read of its own):
    /// events past that head are not returned, so every read made with one head agrees with it.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub(crate) async fn events_as_of(
        &self,
        session: &SessionId,
        head: &Head,
        version: Version,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        let mut out = Vec::new();
        let to = to.min(head.last_seq());
        // Events before the last deletion are dead (and purged, or about to be): readers start
        // at the tombstone, as on fjall. A messages reset keeps the events before it stored.
        let from = from.max(head.log_start());
        if limit == 0 || from > to {
            return Ok(out);
        }
        let (stream_name, subject) = self.names.session(session);
        let stream = self.session_stream(&stream_name)?;
        let mut cursor = self.seek(session, stream, &subject, from, version).await?;
        let missing = |seq: Seq| Error::Corrupt {
            session: Some(session.to_string()),
            seq: Some(seq.get()),
            detail: format!(
                "event {seq} is not in the stream below the head read at stream sequence {} (purged by a later \
                 deletion, or lost)",
                version.0
            ),
        };
        'records: while cursor <= version.0 {
            let mut batch = if self.leader_reads {
                Vec::new()
            } else {
                // A replica that does not answer (frozen, partitioned) costs one read timeout;
                // the leader then serves the read.
                self.batch(stream, &subject, cursor, BATCH_RECORDS).await.unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "a batched direct get failed; reading from the leader");
                    Vec::new()
                })
            };
            if batch.is_empty() {
                // The replica that answered lags behind the head (or did not answer): ask the
                // leader for the next record.
                match self.leader_next(stream, &subject, cursor).await? {
                    Some(m) => batch.push(m),
                    None => break,
                }
            }
            for message in batch {
                if message.sequence > version.0 {
                    break 'records;
                }
                // The rest of a large record already read whole.
                if message.sequence < cursor {
                    continue;
                }
                let at = self.record_of(session, &message).await?;
                cursor = at.last + 1;
                for event in at.record.events {
                    if event.seq > to {
                        return Ok(out);
                    }
                    if event.seq >= from {
                        // Seqs are dense: a gap is a record the head counts that is gone.
                        let expected = Seq::new(from.get() + out.len() as u64);
                        if event.seq != expected {
                            return Err(missing(expected));
                        }
                        out.push(event);
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        // The head promises every seq up to `to`.
        match out.last().map(|e| e.seq) {
            Some(last) if last >= to => Ok(out),
            last => Err(missing(last.map_or(from, Seq::next))),
        }
    }

    /// The last `n` events of the session (from its last deletion's tombstone on), in order, read newest record
    /// first through the back-pointers: the cost depends on `n`, not on the session's length.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn window(&self, session: &SessionId, n: usize) -> Result<Vec<Event>, Error> {
        let mut newest_first = Vec::new();
        let Some(last) = self.last_record(session).await? else { return Ok(newest_first) };
        let (stream_name, _) = self.names.session(session);
        let stream = self.session_stream(&stream_name)?;
        let mut record = self.record_of(session, &last).await?.record;
        let base = record.head.base();
        loop {
            let (prev, first_seq) = (record.prev, record.first_seq());
            for event in record.events.into_iter().rev() {
                if newest_first.len() == n || event.seq < base {
                    break;
                }
                newest_first.push(event);
            }
            if newest_first.len() == n || prev == 0 || first_seq <= base {
                break;
            }
            let Some(message) = self.get_at(stream, prev).await? else { break };
            record = self.record_of(session, &message).await?.record;
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// The session's head as it was right after event `seq`; `None` if the session has no
    /// records. [`Error::InvalidArgument`] for a seq past the head or before the last deletion.
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn head_at(&self, session: &SessionId, seq: Seq) -> Result<Option<Head>, Error> {
        match self.head(session).await? {
            Some((head, version)) => self.head_at_as_of(session, head, version, seq).await.map(Some),
            None => Ok(None),
        }
    }

    /// [`NatsLog::head_at`] as of `head` at `version`, read a moment ago (no head read of its own).
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub(crate) async fn head_at_as_of(
        &self,
        session: &SessionId,
        head: Head,
        version: Version,
        seq: Seq,
    ) -> Result<Head, Error> {
        if seq > head.last_seq() || seq < head.base() {
            return Err(Error::InvalidArgument {
                what: "seq",
                reason: format!("{seq} is outside the session's kept events ({}..={})", head.base(), head.last_seq()),
            });
        }
        if seq == head.last_seq() {
            return Ok(head);
        }
        let (stream_name, subject) = self.names.session(session);
        let stream = self.session_stream(&stream_name)?;
        let at = self.seek(session, stream, &subject, seq, version).await?;
        let gone = || Error::InvalidArgument { what: "seq", reason: format!("the records holding {seq} are purged") };
        let message = self.get_at(stream, at).await?.ok_or_else(gone)?;
        let record = self.record_of(session, &message).await?.record;
        if record.head.last_seq() == seq {
            return Ok(record.head);
        }
        let mut before = if record.prev == 0 {
            Head::default()
        } else {
            let message = self.get_at(stream, record.prev).await?.ok_or_else(gone)?;
            self.record_of(session, &message).await?.record.head
        };
        for event in record.events.iter().filter(|e| e.seq <= seq) {
            apply(&mut before, event);
        }
        Ok(before)
    }

    /// Up to `limit` live (not deleted) sessions with ids after `after`, in id order.
    ///
    /// Lists every session subject of every stream (JetStream keeps them unordered), so it costs
    /// O(sessions) per call; refuses past [`MAX_LISTED_SESSIONS`].
    ///
    /// Cancel safety: a read; dropping it changes nothing.
    pub async fn sessions(&self, after: Option<&SessionId>, limit: usize) -> Result<Vec<SessionId>, Error> {
        let all = self.session_ids().await?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        for id in all.range((lower, Bound::Unbounded)) {
            if out.len() == limit {
                break;
            }
            if let Some((head, _)) = self.head(id).await?
                && !head.is_deleted()
            {
                out.push(id.clone());
            }
        }
        Ok(out)
    }

    /// Every session with a record (deleted ones included), in id order: every session subject of
    /// every stream. Refuses past [`MAX_LISTED_SESSIONS`].
    pub(crate) async fn session_ids(&self) -> Result<BTreeSet<SessionId>, Error> {
        let mut all = BTreeSet::new();
        for (index, stream) in (0_u64..).zip(&self.sessions) {
            let subjects = self.subjects(stream, self.names.stream_subjects(index), MAX_LISTED_SESSIONS).await?;
            for subject in subjects {
                all.insert(self.names.session_of(index, &subject)?);
            }
            if all.len() > MAX_LISTED_SESSIONS {
                return Err(Error::storage(
                    "list sessions",
                    format!("more than {MAX_LISTED_SESSIONS} sessions; listing is not paged on this backend"),
                ));
            }
        }
        Ok(all)
    }

    /// The subjects of `stream` that match `filter`: up to `max + 1` of them (the caller refuses
    /// more), asked again while the cluster does not answer ([`NatsLog::answered`]).
    pub(super) async fn subjects(
        &self,
        stream: &stream::Stream,
        filter: String,
        max: usize,
    ) -> Result<Vec<String>, Error> {
        self.answered("list a stream's subjects", || async {
            let mut subjects = stream
                .clone()
                .info_with_subjects(filter.clone())
                .await
                .map_err(|e| Error::storage("list a stream's subjects", e))?;
            let mut out = Vec::new();
            while let Some(entry) = subjects.next().await {
                out.push(entry.map_err(|e| Error::storage("list a stream's subjects", e))?.0);
                if out.len() > max {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    /// `request` (a read an operator's audit, gc or stats makes), asked again from the start with
    /// the publish backoff while it fails with `Storage` or `Timeout`, until `write_timeout_ms`
    /// (above the election window) has passed: a stream electing a leader after a node was lost
    /// answers nothing for some seconds. Any other error (damage, a bad argument) at once; the
    /// last error after the deadline.
    pub(crate) async fn answered<T, F, Fut>(&self, what: &str, mut request: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let mut wait = super::FIRST_RETRY_WAIT;
        loop {
            match request().await {
                Ok(answer) => return Ok(answer),
                Err(e) if !matches!(e, Error::Storage { .. } | Error::Timeout { .. }) => return Err(e),
                Err(e) if tokio::time::Instant::now() + wait >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(what, error = %e, "a management request was not answered; asking again");
                    tokio::time::sleep(wait.mul_f64(fastrand::f64())).await;
                    wait = (wait * 2).min(super::MAX_RETRY_WAIT);
                }
            }
        }
    }

    /// Up to [`BATCH_RECORDS`] records of the session from stream sequence `from` on, up to
    /// `version`, each decoded (or the reason it does not decode) with the sequence of its last
    /// message, for audit: one batched read (and one more per large record).
    pub(crate) async fn records(
        &self,
        session: &SessionId,
        from: u64,
        version: Version,
    ) -> Result<Vec<(u64, Result<record::Record, Error>)>, Error> {
        let (stream_name, subject) = self.names.session(session);
        let stream = self.session_stream(&stream_name)?;
        let mut messages = self.scan(stream, &subject, from, BATCH_RECORDS).await?;
        if messages.is_empty() && from <= version.0 {
            // A lagging replica answered: the leader has the next record.
            messages.extend(self.leader_next(stream, &subject, from).await?);
        }
        let mut out = Vec::with_capacity(messages.len());
        let mut cursor = from;
        for message in messages.into_iter().take_while(|m| m.sequence <= version.0) {
            // The rest of a large record already read whole.
            if message.sequence < cursor {
                continue;
            }
            match self.record_of(session, &message).await {
                Ok(at) => {
                    cursor = at.last + 1;
                    out.push((at.last, Ok(at.record)));
                }
                Err(e @ Error::Corrupt { .. }) => {
                    cursor = message.sequence + 1;
                    out.push((message.sequence, Err(e)));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The session's last record, from its stream's leader.
    pub(super) async fn last_record(&self, session: &SessionId) -> Result<Option<StreamMessage>, Error> {
        let (stream_name, subject) = self.names.session(session);
        let stream = self.session_stream(&stream_name)?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::storage("read a session's last record", e)),
        }
    }

    /// The session's first record after stream sequence `version`, from its stream's leader: the
    /// one an append expecting `version` stored, if any did (the version check admits it nowhere
    /// else).
    pub(super) async fn record_after(
        &self,
        session: &SessionId,
        version: Version,
    ) -> Result<Option<StreamMessage>, Error> {
        let (stream_name, subject) = self.names.session(session);
        let stream = self.session_stream(&stream_name)?;
        self.leader_next(stream, &subject, version.0 + 1).await
    }

    /// The last message on `subject` by direct get, then from the leader if no replica has it.
    pub(super) async fn last_on(&self, stream: &stream::Stream, subject: &str) -> Result<Option<StreamMessage>, Error> {
        let direct = if self.leader_reads {
            Err(DirectGetErrorKind::NotFound.into())
        } else {
            stream.direct_get_last_for_subject(subject).await
        };
        match direct {
            Ok(m) => return Ok(Some(m)),
            Err(e) => direct_get_failed(&e),
        }
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::storage("read a message by subject", e)),
        }
    }

    /// The message at stream sequence `seq` (by direct get, else from the leader); `None` if gone.
    async fn get_at(&self, stream: &stream::Stream, seq: u64) -> Result<Option<StreamMessage>, Error> {
        let direct =
            if self.leader_reads { Err(DirectGetErrorKind::NotFound.into()) } else { stream.direct_get(seq).await };
        match direct {
            Ok(m) => return Ok(Some(m)),
            Err(e) => direct_get_failed(&e),
        }
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::storage("read a record", e)),
        }
    }

    /// The first message on `subject` at or after `seq`, by direct get, else from the leader.
    async fn next_at(&self, stream: &stream::Stream, subject: &str, seq: u64) -> Result<Option<StreamMessage>, Error> {
        if self.leader_reads {
            return self.leader_next(stream, subject, seq).await;
        }
        match stream.direct_get_next_for_subject(subject, Some(seq)).await {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                direct_get_failed(&e);
                self.leader_next(stream, subject, seq).await
            }
        }
    }

    /// The first message on `subject` at or after `seq`, from the leader.
    pub(super) async fn leader_next(
        &self,
        stream: &stream::Stream,
        subject: &str,
        seq: u64,
    ) -> Result<Option<StreamMessage>, Error> {
        match stream.raw_message_builder().sequence(seq).next_by_subject(subject).send().await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Error::storage("read a record", e)),
        }
    }

    /// The stream sequence of the record holding event `from`, or of the session's first kept
    /// record when `from` is before it. Gallops back from `version` (probes at `version - 1`,
    /// `- 2`, `- 4`, ...) until a record at or after the probe starts at or before `from`, then
    /// binary-searches between the last two probes; each probe is one "next record at or after"
    /// read. The cost is O(log d), d the stream sequences between that record and the session's
    /// last: reads near the end of a session (working memory, recent history) cost the same
    /// whatever the session's length, and no read costs more than about twice the plain binary
    /// search over `1..=version`.
    async fn seek(
        &self,
        session: &SessionId,
        stream: &stream::Stream,
        subject: &str,
        from: Seq,
        version: Version,
    ) -> Result<u64, Error> {
        let (mut lo, mut hi) = (1_u64, version.0);
        let mut best = 1;
        // Galloping: narrows [lo, hi] to the last doubling step that holds the record.
        let mut step = 1_u64;
        while step < version.0 {
            let probe = version.0 - step;
            match self.next_at(stream, subject, probe).await? {
                Some(m) if m.sequence <= version.0 => {
                    let at = self.record_of(session, &m).await?;
                    if at.record.first_seq() <= from {
                        best = at.first;
                        lo = at.last + 1;
                        break;
                    }
                    // Every record at or after `probe` starts past `from`.
                    hi = probe - 1;
                }
                // The session's last record is at `version`, so this is only a lagging replica's
                // answer: search the whole range below instead.
                _ => break,
            }
            step = step.saturating_mul(2);
        }
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match self.next_at(stream, subject, mid).await? {
                Some(m) if m.sequence <= hi => {
                    let at = self.record_of(session, &m).await?;
                    if at.record.first_seq() <= from {
                        best = at.first;
                        lo = at.last + 1;
                    } else {
                        hi = mid - 1;
                    }
                }
                _ => hi = mid - 1,
            }
        }
        Ok(best)
    }

    /// Up to `n` messages on `filter` from stream sequence `from` on: one batched direct get, or,
    /// if no replica answers it (a stream made a moment ago has no direct-get responders yet, a
    /// replica may be frozen), one leader read per message.
    pub(super) async fn scan(
        &self,
        stream: &stream::Stream,
        filter: &str,
        from: u64,
        n: usize,
    ) -> Result<Vec<StreamMessage>, Error> {
        if !self.leader_reads {
            match self.batch(stream, filter, from, n).await {
                Ok(found) => return Ok(found),
                Err(e) => tracing::debug!(error = %e, "a batched direct get failed; reading from the leader"),
            }
        }
        self.scan_leader(stream, filter, from, n).await
    }

    /// [`NatsLog::scan`] from the stream's leader only, one read per message: for what may be
    /// replaced (a memory written again), which a replica answering a direct get may not have
    /// caught up with yet (JetStream's direct gets promise no read-after-write).
    pub(super) async fn scan_leader(
        &self,
        stream: &stream::Stream,
        filter: &str,
        from: u64,
        n: usize,
    ) -> Result<Vec<StreamMessage>, Error> {
        let mut out = Vec::new();
        let mut cursor = from;
        while out.len() < n {
            let Some(message) = self.leader_next(stream, filter, cursor).await? else { break };
            cursor = message.sequence + 1;
            out.push(message);
        }
        Ok(out)
    }

    /// Up to `n` messages on `filter` (wildcards allowed) from stream sequence `from` on, in one
    /// batched direct get (server 2.11+), answered by one replica; fewer when that replica has no
    /// more, or the batch reached [`BATCH_MAX_BYTES`].
    pub(super) async fn batch(
        &self,
        stream: &stream::Stream,
        filter: &str,
        from: u64,
        n: usize,
    ) -> Result<Vec<StreamMessage>, Error> {
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        let failed = |e: &dyn std::fmt::Display| Error::storage("a batched direct get", e.to_string());
        let inbox = self.client.new_inbox();
        let mut replies = self.client.subscribe(inbox.clone()).await.map_err(|e| failed(&e))?;
        let request =
            serde_json::json!({ "seq": from, "next_by_subj": filter, "batch": n, "max_bytes": BATCH_MAX_BYTES });
        let name = &stream.cached_info().config.name;
        self.client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{name}"), inbox, request.to_string().into())
            .await
            .map_err(|e| failed(&e))?;
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        loop {
            let reply = tokio::time::timeout_at(deadline, replies.next()).await.map_err(|_| Error::Timeout {
                what: "a batched direct get",
                after_ms: super::millis(self.read_timeout),
            })?;
            let Some(reply) = reply else { return Err(failed(&"the reply subscription closed")) };
            match reply.status.map(|s| s.as_u16()) {
                // 204: the end of the batch; 404: nothing at or after `from`.
                Some(204 | 404) => break,
                Some(code) => {
                    let text = reply.description.clone().unwrap_or_default();
                    return Err(failed(&format!("status {code} {text}")));
                }
                None => {
                    out.push(StreamMessage::try_from(reply).map_err(|e| failed(&e))?);
                    if out.len() > n {
                        return Err(failed(&format!("the server sent more than the {n} messages asked for")));
                    }
                }
            }
        }
        let _ = replies.unsubscribe().await;
        Ok(out)
    }
}

/// A direct get that found nothing, or that a replica failed to answer (a lagging, frozen or
/// partitioned replica): either way the caller asks the stream's leader, which is authoritative.
fn direct_get_failed(e: &async_nats::jetstream::stream::DirectGetError) {
    if e.kind() != DirectGetErrorKind::NotFound {
        tracing::debug!(error = %e, "a direct get failed; reading from the leader");
    }
}
