//! Deleting a long session records the deletion in one small batch, and a background purge removes
//! the dead events in bounded chunks. Until it is done the dead events are invisible: readers start
//! at the deletion and audit skips them. A purge cut short (a failed commit, a closed engine) is
//! resumed from its marker when the database is opened again.

mod common;

use std::time::Duration;

use common::{engine, reopen};
use palimpsest::{AuditOptions, Durability, Engine, EventKind, Fault, FaultMode, FaultPoint, Message, Seq, ToolCall};

/// Writes `n_turns` tool-call turns (4 events each) and returns the last seq.
async fn fill(engine: &Engine, id: &str, n_turns: usize) -> Seq {
    let s = engine.session(id).expect("id");
    let mut last = Seq::ZERO;
    for chunk in 0..n_turns.div_ceil(250) {
        let mut batch = Vec::new();
        for i in chunk * 250..((chunk + 1) * 250).min(n_turns) {
            let call = format!("c{i}");
            batch.push(Message::user(format!("ask {i}")));
            batch.push(Message::assistant_tool_calls("", vec![ToolCall::new(&call, "run", "{}")]));
            batch.push(Message::tool_result(&call, format!("out {i}")));
            batch.push(Message::assistant(format!("done {i}")));
        }
        last = Seq::new(s.append_many(batch).await.expect("append").end.get() - 1);
    }
    last
}

fn audit_ok(engine: &Engine) {
    let report = engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit");
    assert!(report.ok, "{:?}", report.violations);
}

#[tokio::test]
async fn a_deleted_session_reads_from_its_deletion_and_is_purged_in_chunks() {
    let (engine, _dir) = engine(Durability::Buffered);
    let last = fill(&engine, "long", 5_000).await;
    fill(&engine, "other", 10).await;
    let s = engine.session("long").expect("id");
    s.compact(palimpsest::CompactionRequest::default()).await.expect("compact");
    let deleted_at = s.delete().await.expect("delete");
    assert!(deleted_at > last);
    // Whatever the purge has done so far, the deletion is all a reader or audit sees.
    assert!(s.working_memory(10).await.is_err());
    let history = s.history(Seq::new(1), 100).await.expect("history");
    assert!(
        matches!(history[0].kind, EventKind::SessionDeleted { n_events_removed } if n_events_removed == deleted_at.get() - 1)
    );
    audit_ok(&engine);
    assert!(engine.wait_for_purges(Duration::from_secs(60)), "the purge finishes");
    assert_eq!(engine.purges_pending(), 0);
    let stats = engine.stats().expect("stats");
    assert_eq!(stats.events, 1 + 40, "only the deletion and the other session's events are left");
    audit_ok(&engine);
    // The session starts afresh, numbering continues, and a second deletion purges the first one's event.
    let again = s.append(Message::user("again")).await.expect("append");
    assert_eq!(again, deleted_at.next());
    assert_eq!(s.delete().await.expect("delete again"), again.next());
    assert!(engine.wait_for_purges(Duration::from_secs(60)));
    assert_eq!(engine.stats().expect("stats").events, 1 + 40);
    audit_ok(&engine);
}

#[tokio::test]
async fn a_purge_cut_short_resumes_when_the_database_opens_again() {
    let (engine, dir) = engine(Durability::Sync);
    fill(&engine, "long", 5_000).await;
    let s = engine.session("long").expect("id");
    // The deletion commits; the purge's second chunk fails (the engine is poisoned, as on any
    // failed commit) and leaves dead events and the marker behind.
    engine.inject_fault(Some(Fault { point: FaultPoint::Commit, after: 2, mode: FaultMode::Once }));
    let deleted_at = s.delete().await.expect("delete");
    engine.wait_for_purges(Duration::from_secs(60));
    assert!(engine.is_poisoned(), "the injected failure hit a purge commit");
    let left = engine.stats().expect("stats").events;
    assert!(left > 1, "dead events remain after the cut ({left})");
    audit_ok(&engine);
    // Background extraction of the turn-capped episodes holds the engine while it runs.
    engine.drain(Duration::from_secs(30), true).await;
    drop((s, engine));

    let engine = reopen(&dir, Durability::Sync);
    audit_ok(&engine);
    assert!(engine.wait_for_purges(Duration::from_secs(60)), "the purge resumes at open");
    assert_eq!(engine.stats().expect("stats").events, 1);
    audit_ok(&engine);
    let s = engine.session("long").expect("id");
    assert_eq!(s.append(Message::user("after")).await.expect("append"), deleted_at.next());
}
