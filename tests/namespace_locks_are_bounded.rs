//! Namespace locks: every wait is bounded by `locks.*`, both outcomes of running out work, zero
//! retries means one try, a crashed holder never blocks anyone, and the counters say what happened.
//! All on tokio's paused clock, so the times asserted are exact.
//! fjall-only: the locks live in the engine's memory and never reach storage, and the exact times
//! need the paused clock, which a test waiting on a JetStream cluster cannot use.

mod guards_common;

use std::time::Duration;

use guards_common::engine_with_parts;
use palimpsest::{Components, Config, Engine, Error, LockOutcome, OnLockTimeout, SessionId};
use tokio::time::Instant;

fn engine(max_retries: Option<u64>, timeout_ms: Option<u64>, on_timeout: OnLockTimeout) -> (Engine, tempfile::TempDir) {
    engine_with_parts(Components::default(), |c| {
        c.locks.retry_interval_ms = 200;
        c.locks.max_retries = max_retries;
        c.locks.timeout_ms = timeout_ms;
        c.locks.on_timeout = on_timeout;
    })
}

fn sid(s: &str) -> SessionId {
    SessionId::new(s).expect("valid id")
}

async fn hold(engine: &Engine, namespace: &str) -> palimpsest::NamespaceGuard {
    match engine.lock_namespace(namespace, &sid("holder")).await {
        Ok(LockOutcome::Held(guard)) => guard,
        other => panic!("a free lock is taken at once: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn bounded_retries_give_up_after_exactly_the_configured_attempts_and_time() {
    let (engine, _dir) = engine(Some(3), None, OnLockTimeout::Error);
    let _held = hold(&engine, "alice").await;
    let start = Instant::now();
    let err = engine.lock_namespace("alice", &sid("alice:2")).await.expect_err("the lock stays held");
    assert!(
        matches!(&err, Error::LockTimeout { namespace, attempts: 4, waited_ms: 600 } if namespace == "alice"),
        "one try and three retries 200 ms apart: {err:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(600));
    let stats = engine.guard_stats();
    assert_eq!((stats.lock_attempts, stats.lock_retries, stats.lock_acquired), (5, 3, 1));
    assert_eq!((stats.lock_timeouts, stats.lock_skips, stats.lock_wait_ms), (1, 0, 600));
}

#[tokio::test(start_paused = true)]
async fn the_timeout_ends_the_wait_when_it_comes_before_the_retries_run_out() {
    let (engine, _dir) = engine(Some(100), Some(500), OnLockTimeout::Error);
    let _held = hold(&engine, "alice").await;
    let start = Instant::now();
    let err = engine.lock_namespace("alice", &sid("alice:2")).await.expect_err("held");
    // Waits of 200, 200 and then only the 100 ms left.
    assert!(matches!(err, Error::LockTimeout { attempts: 4, waited_ms: 500, .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn skip_mode_reports_a_skip_instead_of_an_error() {
    let (engine, _dir) = engine(Some(2), Some(5_000), OnLockTimeout::Skip);
    let _held = hold(&engine, "alice").await;
    match engine.lock_namespace("alice", &sid("alice:2")).await {
        Ok(LockOutcome::Skipped { attempts: 3, waited_ms: 400 }) => {}
        other => panic!("expected a skip after 3 attempts and 400 ms, got {other:?}"),
    }
    let stats = engine.guard_stats();
    assert_eq!((stats.lock_timeouts, stats.lock_skips), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn zero_retries_means_one_try_and_no_wait() {
    let (engine, _dir) = engine(Some(0), None, OnLockTimeout::Error);
    let held = hold(&engine, "alice").await;
    let start = Instant::now();
    let err = engine.lock_namespace("alice", &sid("alice:2")).await.expect_err("held");
    assert!(matches!(err, Error::LockTimeout { attempts: 1, waited_ms: 0, .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::ZERO);
    drop(held);
    assert!(matches!(engine.lock_namespace("alice", &sid("alice:2")).await, Ok(LockOutcome::Held(_))));
    assert_eq!(engine.namespaces_locked(), 0, "released locks leave no registry entry");
}

#[tokio::test(start_paused = true)]
async fn a_lock_released_during_a_retry_is_taken_at_once() {
    let (engine, _dir) = engine(Some(10), None, OnLockTimeout::Error);
    let held = hold(&engine, "alice").await;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
    });
    let start = Instant::now();
    assert!(matches!(engine.lock_namespace("alice", &sid("alice:2")).await, Ok(LockOutcome::Held(_))));
    assert_eq!(start.elapsed(), Duration::from_millis(300), "not at the next 200 ms mark");
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_panics_releases_the_lock() {
    let (engine, _dir) = engine(Some(0), None, OnLockTimeout::Error);
    let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
    let holder = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let _guard = hold(&engine, "alice").await;
            taken_tx.send(()).expect("test waits");
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("the holder crashes while holding the lock");
        })
    };
    taken_rx.await.expect("holder took the lock");
    assert!(engine.lock_namespace("alice", &sid("alice:2")).await.is_err(), "held while the holder lives");
    assert!(holder.await.expect_err("the holder panicked").is_panic());
    assert!(matches!(engine.lock_namespace("alice", &sid("alice:2")).await, Ok(LockOutcome::Held(_))));
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_is_cancelled_releases_the_lock() {
    let (engine, _dir) = engine(Some(0), None, OnLockTimeout::Error);
    let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
    let holder = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let _guard = hold(&engine, "alice").await;
            taken_tx.send(()).expect("test waits");
            std::future::pending::<()>().await;
        })
    };
    taken_rx.await.expect("holder took the lock");
    assert!(engine.lock_namespace("alice", &sid("alice:2")).await.is_err());
    holder.abort();
    assert!(holder.await.expect_err("aborted").is_cancelled());
    assert!(matches!(engine.lock_namespace("alice", &sid("alice:2")).await, Ok(LockOutcome::Held(_))));
    // A future dropped while it holds the lock (a timeout around the holder) releases it too.
    let dropped = tokio::time::timeout(Duration::from_millis(50), async {
        let _guard = hold(&engine, "bob").await;
        std::future::pending::<()>().await
    });
    assert!(dropped.await.is_err());
    assert!(matches!(engine.lock_namespace("bob", &sid("bob:1")).await, Ok(LockOutcome::Held(_))));
}

#[test]
fn an_unlimited_wait_must_be_spelled_out() {
    let field = |json: &str| match Config::from_json_str(json) {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig for {json}, got {other:?}"),
    };
    assert_eq!(field(r#"{"locks":{"max_retries":null,"timeout_ms":null}}"#), "locks.max_retries");
    assert_eq!(field(r#"{"locks":{"timeout_ms":0}}"#), "locks.timeout_ms");
    assert_eq!(field(r#"{"locks":{"retry_interval_ms":0}}"#), "locks.retry_interval_ms");
    assert_eq!(field(r#"{"locks":{"max_retries":-1}}"#), "locks.max_retries");
    assert_eq!(field(r#"{"locks":{"on_timeout":"wait"}}"#), "locks.on_timeout");
    assert_eq!(field(r#"{"locks":{"retries":3}}"#), "locks.retries");
    let unlimited = Config::from_json_str(r#"{"locks":{"max_retries":null,"timeout_ms":null,"allow_unlimited":true}}"#)
        .expect("spelled out");
    assert_eq!((unlimited.locks.max_retries, unlimited.locks.timeout_ms), (None, None));
    let example = Config::from_json_str(
        r#"{"locks": {"retry_interval_ms": 200, "max_retries": 10, "timeout_ms": 5000, "on_timeout": "error"}}"#,
    )
    .expect("the issue's example");
    assert_eq!(example.locks.max_retries, Some(10));
    // Zero retries is one try, not unlimited: it is valid on its own.
    Config::from_json_str(r#"{"locks":{"max_retries":0,"timeout_ms":null}}"#).expect("zero retries is bounded");
}
