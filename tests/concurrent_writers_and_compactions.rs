//! 256 sessions x 8 concurrent writers each, with compactions running, on the multi-threaded
//! runtime and `sync` durability (so group commit is exercised): every writer's seqs strictly
//! increase, each session's seqs are dense with no loss and no duplicate, every splice is valid,
//! and the audit is clean. Bounded: a fixed number of appends, every wait bounded by the engine.

mod backends;
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use backends::Store;
use common::FnSummarizer;
use palimpsest::{AuditOptions, CompactionOutcome, CompactionRequest, Durability, EventKind, Message, Seq};

const SESSIONS: usize = 256;
const WRITERS: usize = 8;
const APPENDS: usize = 6;

async fn many_writers_and_compactions_keep_every_log_dense_and_valid(store: Store) {
    let summarizer = FnSummarizer::new(|input| {
        Box::pin(async move {
            tokio::task::yield_now().await;
            Ok(format!("{} messages", input.messages.len()))
        })
    });
    let engine = store
        .open_with_summarizer(summarizer, |config| {
            config.durability = Durability::Sync;
            config.compaction.keep_last_messages = 8;
            // Each session's 48 messages stay one episode: the event count below is messages and splices.
            config.episodes.max_turns_per_episode = 200;
        })
        .await;

    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        for w in 0..WRITERS {
            let session = engine.session(format!("c{s}")).unwrap();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..APPENDS {
                    let seq = session.append(Message::user(format!("w{w} #{i}"))).await.expect("append");
                    mine.push((seq, format!("w{w} #{i}")));
                    if w == 0 && i % 3 == 2 {
                        let outcome = session.compact(CompactionRequest::default()).await.expect("compact");
                        assert!(!matches!(outcome, CompactionOutcome::Abandoned { .. }), "{outcome:?}");
                    }
                }
                (session.id().to_string(), mine)
            }));
        }
    }
    let mut written: BTreeMap<String, Vec<(Seq, String)>> = BTreeMap::new();
    for task in tasks {
        let (id, mine) = task.await.unwrap();
        assert!(mine.windows(2).all(|p| p[0].0 < p[1].0), "{id}: one writer's seqs strictly increase");
        written.entry(id).or_default().extend(mine);
    }
    let engine = Arc::new(engine);
    let mut splices = 0;
    for (id, mut mine) in written {
        let history = engine.session(id.as_str()).unwrap().history(Seq::new(1), 10_000).await.unwrap();
        let seqs: Vec<u64> = history.iter().map(|e| e.seq.get()).collect();
        assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "{id}: dense");
        mine.sort();
        let messages: Vec<(Seq, String)> =
            history.iter().filter_map(|e| e.message().map(|m| (e.seq, m.content.clone()))).collect();
        assert_eq!(messages, mine, "{id}: every acknowledged append once, none other");
        splices += history.iter().filter(|e| matches!(e.kind, EventKind::CompactionSpliced(_))).count();
    }
    assert!(splices >= SESSIONS, "compactions ran: {splices} splices");
    let report = engine.audit_async(AuditOptions::default(), |_| {}).await.unwrap();
    assert!(report.ok, "{:?}", report.violations);
    assert_eq!(report.events as usize, SESSIONS * WRITERS * APPENDS + splices);
    assert_eq!((engine.compactions_in_flight(), engine.sessions_locked()), (0, 0), "no registry entry leaks");
}

on_both_backends!(many_writers_and_compactions_keep_every_log_dense_and_valid);
