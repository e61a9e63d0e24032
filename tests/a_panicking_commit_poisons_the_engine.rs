//! A panic below the engine while committing (a bug in the storage layer) is a failed write like
//! any other: the caller gets an error, the engine is poisoned until reopened, nothing of the
//! batch is visible, and later writers are refused rather than left waiting on a dead thread.

mod common;

use common::{engine, reopen};
use palimpsest::{AuditOptions, Durability, Error, Fault, FaultMode, FaultPoint, Message, Seq};

async fn a_panicking_commit_poisons(durability: Durability) {
    let (engine, dir) = engine(durability);
    let s = engine.session("p").expect("id");
    s.append(Message::user("before")).await.expect("append");
    engine.inject_fault(Some(Fault { point: FaultPoint::CommitPanics, after: 0, mode: FaultMode::Once }));
    let err = s.append(Message::user("lost")).await.expect_err("the commit panicked");
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert!(err.to_string().contains("panicked"), "{err}");
    assert!(engine.is_poisoned());
    // The writer thread survived to say so; every later write is refused, not left waiting.
    for _ in 0..3 {
        assert!(matches!(s.append(Message::user("refused")).await, Err(Error::Poisoned)));
    }
    drop((s, engine));
    let engine = reopen(&dir, durability);
    let s = engine.session("p").expect("id");
    let history = s.history(Seq::new(1), 10).await.expect("history");
    assert_eq!(history.len(), 1, "nothing of the panicked batch is visible");
    assert_eq!(s.append(Message::user("after")).await.expect("reopened engine writes"), Seq::new(2));
    assert!(engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit").ok);
}

#[tokio::test]
async fn a_panicking_group_commit_poisons_the_engine() {
    a_panicking_commit_poisons(Durability::Sync).await;
}

#[tokio::test]
async fn a_panicking_buffered_commit_poisons_the_engine() {
    a_panicking_commit_poisons(Durability::Buffered).await;
}
