//! The registry of sessions with a compaction in flight (single flight per session), with no
//! knowledge of the engine or of how a compaction runs (`compaction::run`).

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::log::ids::SessionId;

/// Sessions with a compaction in flight.
#[derive(Default)]
pub(crate) struct InFlight {
    sessions: Arc<Mutex<HashSet<SessionId>>>,
}

impl InFlight {
    pub(crate) fn enter(&self, session: &SessionId) -> Option<InFlightGuard> {
        let mut sessions = self.sessions.lock();
        sessions
            .insert(session.clone())
            .then(|| InFlightGuard { sessions: Arc::clone(&self.sessions), session: session.clone() })
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// Unregisters its session when dropped, however the compaction ended.
pub(crate) struct InFlightGuard {
    sessions: Arc<Mutex<HashSet<SessionId>>>,
    session: SessionId,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.session);
    }
}
