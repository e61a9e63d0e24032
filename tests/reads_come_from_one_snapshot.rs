//! A read made of several lookups (head, summary blob, a range of events) answers from one state of
//! the database: a deletion or a splice committed while it runs cannot give it `n_messages` from one
//! state and messages from another, and `working_memory_at(at)` never reports a `last_seq` past `at`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::engine;
use palimpsest::{CompactionRequest, Durability, Message, Seq};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_memory_never_mixes_states_under_concurrent_deletes_and_splices() {
    let (engine, _dir) = engine(Durability::Buffered);
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
    let mut reads = 0u64;
    while !stop.load(Ordering::Acquire) {
        let Ok(wm) = s.working_memory(200).await else { continue };
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
        if at > Seq::new(1)
            && let Ok(past) = s.working_memory_at(at, 50).await
        {
            assert_eq!(past.last_seq, at, "working_memory_at reports the seq asked for");
        }
    }
    writer.await.expect("writer");
    assert!(reads > 0);
}
