//! A read made of several lookups (head, summary blob, a range of events) answers from one state of
//! the database: a deletion or a splice committed while it runs cannot give it `n_messages` from one
//! state and messages from another, and `working_memory_at(at)` never reports a `last_seq` past `at`.
//! On both backends (`backends`).

mod backends;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use backends::Store;
use palimpsest::{CompactionRequest, Durability, Error, Message, Seq, Session};

on_both_backends!(
    working_memory_never_mixes_states_under_concurrent_deletes_and_splices,
    history_state_and_export_never_mix_states_under_concurrent_deletes_and_splices,
);

/// Appends 30 messages, then compacts or deletes (alternately), 60 times, to session "torn" of a
/// fresh engine; the flag is set when it is done.
async fn torn_session(store: &Store) -> (Session, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let engine = store.open_with(Default::default(), |c| c.durability = Durability::Buffered).await;
    let s = engine.session("torn").expect("id");
    s.append(Message::user("seed")).await.expect("append");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, stop) = (s.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            for round in 0..60 {
                for i in 0..30 {
                    s.append(Message::user(format!("r{round} m{i}"))).await.expect("append");
                }
                if round % 2 == 0 {
                    s.compact(CompactionRequest::default()).await.expect("compact");
                } else {
                    s.delete().await.expect("delete");
                }
            }
            stop.store(true, Ordering::Release);
        })
    };
    (s, stop, writer)
}

async fn working_memory_never_mixes_states_under_concurrent_deletes_and_splices(store: Store) {
    let (s, stop, writer) = torn_session(&store).await;
    let mut reads = 0u64;
    while !stop.load(Ordering::Acquire) {
        // Between a deletion and the next append the session is not found; nothing else fails.
        let wm = match s.working_memory(200).await {
            Ok(wm) => wm,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => panic!("{}: a read failed under concurrent writes: {e}", store.name()),
        };
        reads += 1;
        let n = wm.n_messages.expect("current working memory counts its messages");
        assert!(wm.messages.iter().all(|m| m.seq <= wm.last_seq), "{wm:?}");
        match &wm.summary {
            // Nothing compacted and no tool calls: every message since the deletion is shown.
            None => assert_eq!(wm.messages.len() as u64, n.min(200), "n_messages and messages disagree: {wm:?}"),
            // The splice keeps the last messages, and is the only event after them.
            Some(summary) => {
                let last = wm.messages.last().expect("a splice keeps the last messages");
                assert!(last.seq.get() + 1 >= wm.last_seq.get(), "messages older than the head: {wm:?}");
                assert!(wm.messages.iter().all(|m| m.seq > summary.upto), "{wm:?}");
            }
        }
        let at = wm.last_seq;
        if at > Seq::new(1) {
            match s.working_memory_at(at, 50).await {
                Ok(past) => assert_eq!(past.last_seq, at, "working_memory_at reports the seq asked for"),
                // A deletion since moved the log's start past `at`, or removed the session.
                Err(Error::InvalidArgument { .. } | Error::NotFound { .. }) => {}
                Err(e) => panic!("{}: time travel failed under concurrent writes: {e}", store.name()),
            }
        }
    }
    writer.await.expect("writer");
    assert!(reads > 0);
}

/// History, `read_state` and export read several records as of one head too: a deletion landing
/// meanwhile (which purges on JetStream) never gives a gap in history or a state whose parts
/// disagree; an export already writing lines answers `Conflict` there (SPEC.md 11a, "Reads").
async fn history_state_and_export_never_mix_states_under_concurrent_deletes_and_splices(store: Store) {
    let (s, stop, writer) = torn_session(&store).await;
    let (mut histories, mut states, mut exports) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        // A deleted session's history starts at its deletion: it is always there, and dense.
        let history = s.history(Seq::new(1), 200).await;
        let history =
            history.unwrap_or_else(|e| panic!("{}: history failed under concurrent writes: {e}", store.name()));
        histories += 1;
        assert!(
            history.windows(2).all(|w| w[1].seq == w[0].seq.next()),
            "a gap in history: {:?}",
            history.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
        match s.read_state(200).await {
            Ok(state) => {
                states += 1;
                let memory = &state.memory;
                assert_eq!(memory.last_seq, state.head.last_seq(), "{memory:?}");
                if memory.summary.is_none() {
                    let n = state.head.n_messages().min(200);
                    assert_eq!(memory.messages.len() as u64, n, "head and messages disagree: {memory:?}");
                }
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => panic!("{}: read_state failed under concurrent writes: {e}", store.name()),
        }
        let mut out = Vec::new();
        match s.export_jsonl(&mut out).await {
            Ok(lines) => {
                exports += 1;
                let text = String::from_utf8(out).expect("utf-8");
                assert_eq!(text.lines().count() as u64, lines, "{text}");
            }
            Err(Error::Conflict { .. }) if store.name() == "nats" => {}
            Err(e) => panic!("{}: export failed under concurrent writes: {e}", store.name()),
        }
    }
    writer.await.expect("writer");
    assert!(histories > 0 && states > 0 && exports > 0, "{histories} {states} {exports}");
}
