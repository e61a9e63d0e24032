//! In-memory caches of the write path and of working memory, both bounded and both exact.
//!
//! - **Heads.** The append path learns a session's head from here instead of storage (on a
//!   replicated backend a head read per append would be a network round trip). Only a holder of
//!   the session's write lock reads or changes an entry, and a write changes it in its settle step
//!   (see `writer::Hold`): after the commit's outcome is known, before the lock is released. So
//!   the entry is always the head of the last committed write, or absent (never filled yet, evicted,
//!   or dropped after a failed write), and an absent entry is filled from storage under the lock,
//!   where every committed write of the session is already visible. Readers never fill it: a head
//!   a reader read outside the lock may already be stale.
//! - **Windows.** The last working-memory window served for each session (the raw last `limit`
//!   messages after the splice, before the window rule, with the summary), tagged with the
//!   `last_seq` it was computed at. A read uses it only when that tag equals the session's current
//!   `last_seq`: every write appends an event, and the log below `last_seq` never changes, so equal
//!   seqs mean equal windows; a stale entry is a miss, never a wrong answer. Writes that append only
//!   messages (and boundaries, memory records or metadata) extend the entry in their settle step, so the
//!   agent loop (append a turn, read working memory) keeps hitting; every other write drops it.
//!   Memory is bounded by `cache.window_bytes` (least recently used windows go first).

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::log::event::{Event, EventKind};
use crate::log::fold::Head;
use crate::log::ids::{Seq, SessionId};
use crate::log::view::{self, StoredMessage, Summary, WorkingMemory};

/// Bytes counted for a cached window besides its messages' own (ids, tags, the entry itself).
const WINDOW_OVERHEAD_BYTES: usize = 256;
/// Bytes counted per cached message besides its content, tool calls and metadata.
const MESSAGE_OVERHEAD_BYTES: usize = 96;

/// The engine's caches; see the module docs.
pub(crate) struct Caches {
    inner: Mutex<Inner>,
    window_budget: usize,
}

struct Inner {
    /// Each head with its version on JetStream (the stream sequence of the session's last record;
    /// 0 on fjall, which has no versions).
    heads: LruCache<SessionId, (Head, u64)>,
    windows: LruCache<SessionId, Window>,
    window_bytes: usize,
}

/// One session's cached window.
struct Window {
    /// The `limit` it was computed for.
    limit: usize,
    /// The session's `last_seq` it is exact for.
    last_seq: Seq,
    n_messages: u64,
    summary: Option<Arc<Summary>>,
    /// The last (up to) `limit` messages after the splice, oldest first, before the window rule.
    raw: VecDeque<StoredMessage>,
    bytes: usize,
}

/// How a committed write changes the session's cached window (see [`Caches::window_change`]).
pub(crate) enum WindowChange {
    /// The session had no window cached when the batch was built: nothing to extend.
    None,
    /// The batch appended these messages (and perhaps non-message events that do not move the
    /// window's lower bound): extend the window with them.
    Extend(Vec<StoredMessage>),
    /// The batch spliced, deleted or otherwise moved the window: drop it.
    Drop,
}

impl Caches {
    pub(crate) fn new(heads: u64, window_bytes: u64) -> Self {
        let cap = NonZeroUsize::new(usize::try_from(heads).unwrap_or(usize::MAX)).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(Inner { heads: LruCache::new(cap), windows: LruCache::unbounded(), window_bytes: 0 }),
            window_budget: usize::try_from(window_bytes).unwrap_or(usize::MAX),
        }
    }

    /// The cached head of `session`: the head of its last committed write. Any caller may read it;
    /// only the settle step of a write (under the session's lock) puts one (module docs).
    pub(crate) fn head(&self, session: &SessionId) -> Option<Head> {
        self.inner.lock().heads.get(session).map(|(head, _)| head.clone())
    }

    /// Takes the cached head and version of `session` out (JetStream's write path, under the
    /// session's lock): until a write puts one back, the next writer reads storage.
    #[cfg(feature = "nats")]
    pub(crate) fn take_head(&self, session: &SessionId) -> Option<(Head, u64)> {
        self.inner.lock().heads.pop(session)
    }

    /// Puts back a head and version a writer read (under the session's lock) without writing.
    #[cfg(feature = "nats")]
    pub(crate) fn put_head(&self, session: &SessionId, head: Head, version: u64) {
        self.inner.lock().heads.put(session.clone(), (head, version));
    }

    /// The session's `last_seq` as of its last committed write, if its head is cached; any caller.
    pub(crate) fn last_seq(&self, session: &SessionId) -> Option<(Seq, bool)> {
        self.inner.lock().heads.peek(session).map(|(h, _)| (h.last_seq(), h.is_deleted()))
    }

    /// How the write whose events are `events` will change the session's window: computed while
    /// the batch is built, so messages are copied only when a window is cached.
    pub(crate) fn window_change(&self, session: &SessionId, events: &[Event]) -> WindowChange {
        if self.window_budget == 0 || !self.inner.lock().windows.contains(session) {
            return WindowChange::None;
        }
        let mut added = Vec::new();
        for event in events {
            match &event.kind {
                EventKind::MessageAppended(m) => {
                    added.push(StoredMessage { seq: event.seq, at_ms: event.at_ms, message: m.clone() })
                }
                EventKind::EpisodeBoundary { .. }
                | EventKind::MemoriesExtracted { .. }
                | EventKind::MetadataSet { .. } => {}
                _ => return WindowChange::Drop,
            }
        }
        WindowChange::Extend(added)
    }

    /// The settle step of a write to `session` built on a head at `before` (see `writer::Hold`):
    /// on success the head becomes `head` (at `version`, JetStream's; 0 on fjall) and the window
    /// changes as `change` says; on failure both entries are dropped (what reached storage is
    /// unknown; the engine is poisoned anyway).
    pub(crate) fn settle(
        &self,
        session: &SessionId,
        committed: bool,
        before: Seq,
        head: Head,
        version: u64,
        change: WindowChange,
    ) {
        let mut inner = self.inner.lock();
        if !committed {
            inner.heads.pop(session);
            inner.drop_window(session);
            return;
        }
        let (last_seq, n_messages) = (head.last_seq(), head.n_messages());
        inner.heads.put(session.clone(), (head, version));
        let fits = matches!(inner.windows.peek(session), Some(w) if w.last_seq == before);
        match change {
            WindowChange::Extend(added) if fits => {
                let Some(window) = inner.windows.peek_mut(session) else { return };
                let old = window.bytes;
                for message in added {
                    window.bytes += message_bytes(&message);
                    window.raw.push_back(message);
                }
                while window.raw.len() > window.limit {
                    if let Some(gone) = window.raw.pop_front() {
                        window.bytes -= message_bytes(&gone);
                    }
                }
                window.last_seq = last_seq;
                window.n_messages = n_messages;
                let new = window.bytes;
                inner.window_bytes = inner.window_bytes - old + new;
                inner.evict_windows(self.window_budget);
            }
            _ => inner.drop_window(session),
        }
    }

    /// Forgets everything cached for `session` (a rebuild rewrote its head).
    pub(crate) fn forget(&self, session: &SessionId) {
        let mut inner = self.inner.lock();
        inner.heads.pop(session);
        inner.drop_window(session);
    }

    /// The working memory of `session` with `limit` messages from the cached window, if one is
    /// cached for this `limit` and exact at `last_seq`.
    pub(crate) fn window(&self, session: &SessionId, limit: usize, last_seq: Seq) -> Option<WorkingMemory> {
        let mut inner = self.inner.lock();
        let window = inner.windows.get(session).filter(|w| w.limit == limit && w.last_seq == last_seq)?;
        let raw: Vec<StoredMessage> = window.raw.iter().cloned().collect();
        Some(WorkingMemory {
            session: session.clone(),
            last_seq,
            n_messages: Some(window.n_messages),
            summary: window.summary.as_deref().cloned(),
            messages: view::window(raw, limit),
        })
    }

    /// Caches a window a reader computed from one snapshot at `last_seq`: `raw` is the last (up
    /// to) `limit` messages after the splice before the window rule. An entry already exact at a
    /// later seq is kept (the reader's snapshot was older).
    pub(crate) fn offer_window(
        &self,
        session: &SessionId,
        limit: usize,
        last_seq: Seq,
        n_messages: u64,
        summary: Option<&Summary>,
        raw: &[StoredMessage],
    ) {
        let bytes =
            WINDOW_OVERHEAD_BYTES + summary.map_or(0, |s| s.text.len()) + raw.iter().map(message_bytes).sum::<usize>();
        if bytes > self.window_budget {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.windows.peek(session).is_some_and(|w| w.last_seq > last_seq) {
            return;
        }
        inner.drop_window(session);
        let window = Window {
            limit,
            last_seq,
            n_messages,
            summary: summary.cloned().map(Arc::new),
            raw: raw.iter().cloned().collect(),
            bytes,
        };
        inner.window_bytes += bytes;
        inner.windows.put(session.clone(), window);
        inner.evict_windows(self.window_budget);
    }

    /// Whether windows are cached at all (`cache.window_bytes` > 0).
    pub(crate) fn windows_enabled(&self) -> bool {
        self.window_budget > 0
    }
}

impl Inner {
    fn drop_window(&mut self, session: &SessionId) {
        if let Some(gone) = self.windows.pop(session) {
            self.window_bytes -= gone.bytes;
        }
    }

    fn evict_windows(&mut self, budget: usize) {
        while self.window_bytes > budget {
            match self.windows.pop_lru() {
                Some((_, gone)) => self.window_bytes -= gone.bytes,
                None => break,
            }
        }
    }
}

/// What a cached message is counted as against the budget.
fn message_bytes(m: &StoredMessage) -> usize {
    let msg = &m.message;
    MESSAGE_OVERHEAD_BYTES
        + msg.content.len()
        + msg.tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len() + 72).sum::<usize>()
        + msg.tool_call_id.as_ref().map_or(0, String::len)
        + msg.metadata.iter().map(|(k, v)| k.len() + v.len() + 64).sum::<usize>()
}
