//! A healthy database audits clean after any sequence of library operations: appends with tool
//! calls, compactions (some failing), deletions, reopens. Checked with quickcheck, on fjall (a
//! database per case) and on a 3-node JetStream cluster (sessions of their own per case on shared
//! streams; a reopen connects a new engine; the whole database, every earlier case's sessions
//! included, must audit clean after each case).

mod common;
#[cfg(feature = "nats")]
mod nats_common;
#[cfg(feature = "nats")]
mod nats_properties;

use std::sync::Arc;

use common::FnSummarizer;
use palimpsest::{AuditOptions, CompactionRequest, Config, Durability, Engine, Error, Message, ToolCall};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

#[derive(Clone, Debug)]
enum Op {
    Turn(u8),
    OpenCall(u8),
    Answer(u8),
    Compact(u8, bool),
    Delete(u8),
    Reopen,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let s = u8::arbitrary(g) % 3;
        match u8::arbitrary(g) % 10 {
            0..=3 => Op::Turn(s),
            4 => Op::OpenCall(s),
            5 => Op::Answer(s),
            6 | 7 => Op::Compact(s, bool::arbitrary(g)),
            8 => Op::Delete(s),
            _ => Op::Reopen,
        }
    }
}

/// Where a case's engines keep their logs, and the prefix of its session ids.
enum Backend {
    Fjall(std::path::PathBuf),
    #[cfg(feature = "nats")]
    Nats(palimpsest::NatsConfig, String),
}

async fn open(backend: &Backend) -> Engine {
    let summarizer = FnSummarizer::new(|input| {
        Box::pin(async move {
            if input.focus.as_deref() == Some("fail") {
                return Err(Error::Summarizer { status: Some(500), message: "down".into() });
            }
            Ok(format!("summary of {} messages", input.messages.len()))
        })
    });
    let summarizer = summarizer as Arc<dyn palimpsest::Summarizer>;
    match backend {
        Backend::Fjall(dir) => {
            let mut config = Config::new(dir);
            config.durability = Durability::Buffered;
            config.compaction.keep_last_messages = 2;
            Engine::open_with_summarizer(config, summarizer).expect("open")
        }
        #[cfg(feature = "nats")]
        Backend::Nats(nats, _) => {
            nats_properties::connect(nats, summarizer, |c| c.compaction.keep_last_messages = 2).await
        }
    }
}

fn prop_audits_clean(ops: Vec<Op>) -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    audits_clean(&Backend::Fjall(dir.path().to_path_buf()), ops)
}

/// The cluster's config, set by the JetStream test for the length of its quickcheck run.
#[cfg(feature = "nats")]
static NATS_CONFIG: parking_lot::Mutex<Option<palimpsest::NatsConfig>> = parking_lot::Mutex::new(None);

#[cfg(feature = "nats")]
fn prop_audits_clean_on_nats(ops: Vec<Op>) -> TestResult {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let config = NATS_CONFIG.lock().clone().expect("the test sets the cluster's config");
    let case = format!("c{}-", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    audits_clean(&Backend::Nats(config, case), ops)
}

fn audits_clean(backend: &Backend, ops: Vec<Op>) -> TestResult {
    let prefix = match backend {
        Backend::Fjall(_) => "",
        #[cfg(feature = "nats")]
        Backend::Nats(_, case) => case.as_str(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result: Result<(), String> = rt.block_on(async {
        let mut engine = open(backend).await;
        let mut open_calls: Vec<Vec<String>> = vec![Vec::new(); 3];
        let mut next = 0;
        for op in ops {
            let sid = |s: u8| format!("{prefix}s{s}");
            match op {
                Op::Turn(s) => {
                    engine.session(sid(s)).unwrap().append_many(common::turn(next)).await.map_err(|e| e.to_string())?;
                    next += 1;
                }
                Op::OpenCall(s) => {
                    next += 1;
                    let id = format!("open-{next}");
                    let m = Message::assistant_tool_calls("", vec![ToolCall::new(&id, "t", "{}")]);
                    engine.session(sid(s)).unwrap().append(m).await.map_err(|e| e.to_string())?;
                    open_calls[usize::from(s)].push(id);
                }
                Op::Answer(s) => {
                    if let Some(id) = open_calls[usize::from(s)].pop() {
                        let m = Message::tool_result(&id, "done");
                        engine.session(sid(s)).unwrap().append(m).await.map_err(|e| e.to_string())?;
                    }
                }
                Op::Compact(s, fail) => {
                    let req = if fail {
                        CompactionRequest::default().with_focus("fail")
                    } else {
                        CompactionRequest::default()
                    };
                    let _ = engine.session(sid(s)).unwrap().compact(req).await;
                }
                Op::Delete(s) => {
                    if engine.session(sid(s)).unwrap().delete().await.is_ok() {
                        open_calls[usize::from(s)].clear();
                    }
                }
                Op::Reopen => {
                    // Background extraction jobs keep the database open while they run: drain them first (SPEC 6b).
                    engine.drain(std::time::Duration::from_secs(30), true).await;
                    drop(engine);
                    engine = open(backend).await;
                }
            }
        }
        let report = engine.audit_async(AuditOptions::default(), |_| {}).await.map_err(|e| e.to_string())?;
        if report.ok { Ok(()) } else { Err(format!("{:?}", report.violations)) }
    });
    match result {
        Ok(()) => TestResult::passed(),
        Err(e) => TestResult::error(e),
    }
}

#[test]
fn a_healthy_database_audits_clean_after_any_sequence_of_operations() {
    QuickCheck::new().tests(60).quickcheck(prop_audits_clean as fn(Vec<Op>) -> TestResult);
}

/// The same on a 3-node JetStream cluster, a quarter of `nats_properties::cluster_cases`.
#[cfg(feature = "nats")]
#[test]
fn a_healthy_cluster_audits_clean_after_any_sequence_of_operations() {
    nats_properties::quickcheck_with_streams(
        &NATS_CONFIG,
        "healthy",
        nats_properties::cluster_cases() / 4,
        100,
        prop_audits_clean_on_nats as fn(Vec<Op>) -> TestResult,
    );
}
