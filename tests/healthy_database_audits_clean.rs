//! A healthy database audits clean after any sequence of library operations: appends with tool
//! calls, compactions (some failing), deletions, reopens. Checked with quickcheck.

mod common;

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

fn open(dir: &std::path::Path) -> Engine {
    let summarizer = FnSummarizer::new(|input| {
        Box::pin(async move {
            if input.focus.as_deref() == Some("fail") {
                return Err(Error::Summarizer { status: Some(500), message: "down".into() });
            }
            Ok(format!("summary of {} messages", input.messages.len()))
        })
    });
    let mut config = Config::new(dir);
    config.durability = Durability::Buffered;
    config.compaction.keep_last_messages = 2;
    Engine::open_with_summarizer(config, summarizer as Arc<dyn palimpsest::Summarizer>).expect("open")
}

fn prop_audits_clean(ops: Vec<Op>) -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result: Result<(), String> = rt.block_on(async {
        let mut engine = open(dir.path());
        let mut open_calls: Vec<Vec<String>> = vec![Vec::new(); 3];
        let mut next = 0;
        for op in ops {
            let sid = |s: u8| format!("s{s}");
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
                    engine = open(dir.path());
                }
            }
        }
        let report = engine.audit(&AuditOptions::default(), &mut |_| {}).map_err(|e| e.to_string())?;
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
