//! Hidden `profile` subcommand: one hot loop at a time (buffered appends, raw inserts, working
//! memory, durable appends from 64 writers, appends during large compactions), long enough to run under `perf record` or
//! `valgrind --tool=callgrind` when a target is missed, without the other measurements mixed in.

use std::time::Instant;

use clap::ValueEnum;
use palimpsest::Durability;

use crate::raw::RawDb;
use crate::workload::{self, message};

/// Which hot loop to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Loop {
    /// Buffered single-message appends to one session (p3's engine side).
    Append,
    /// Raw fjall inserts of the same keys and values (p3's raw side).
    RawInsert,
    /// `working_memory(50)` on a 100k-message session, after a restart (p1/p2's engine side).
    WorkingMemory,
    /// Durable appends from 64 concurrent sessions (p4's many-writer side); `calls` in total.
    SyncAppend64,
    /// p5's p99.9 measurement alone (appends while 100k-message compactions are in flight), with
    /// the quick run's rounds; `calls` is ignored. Prints its JSON fields.
    CompactionStall,
}

/// Messages in the session `working-memory` reads.
const WM_SESSION_MESSAGES: u64 = 100_000;

/// Runs `which` for `calls` iterations on a fresh database and prints the rate to stderr.
pub fn run(which: Loop, calls: u64) {
    let runtime = crate::runtime();
    let dir = tempfile::tempdir().expect("a temp dir");
    let id = "profile";
    match which {
        Loop::WorkingMemory => return working_memory(&runtime, dir.path(), calls),
        Loop::SyncAppend64 => return sync_append_64(&runtime, dir.path(), calls),
        Loop::CompactionStall => {
            let fields = runtime.block_on(crate::stall::compaction_stall_p999(&crate::Plan::new(true)));
            eprintln!("{fields}");
            return;
        }
        Loop::Append | Loop::RawInsert => {}
    }
    let engine = workload::open(dir.path(), Durability::Buffered);
    let session = workload::session(&engine, id);
    let start = Instant::now();
    match which {
        Loop::Append => runtime.block_on(async {
            for idx in 0..calls {
                session.append(message(idx)).await.expect("append");
            }
        }),
        Loop::RawInsert => {
            // The rows come from an engine run whose time is not reported.
            runtime.block_on(workload::build(&session, 0, calls));
        }
        Loop::WorkingMemory | Loop::SyncAppend64 | Loop::CompactionStall => unreachable!("handled above"),
    }
    let engine_s = start.elapsed().as_secs_f64();
    drop((session, engine));
    if let Loop::RawInsert = which {
        let rows = RawDb::engine_event_rows(dir.path(), id);
        let raw_dir = tempfile::tempdir().expect("a temp dir");
        let raw = RawDb::open(raw_dir.path());
        let start = Instant::now();
        for (key, value) in rows {
            raw.insert_event(key, value);
        }
        let raw_s = start.elapsed().as_secs_f64();
        eprintln!("raw inserts: {:.0}/s", calls as f64 / raw_s);
    } else {
        eprintln!("engine appends: {:.0}/s", calls as f64 / engine_s);
    }
}

fn working_memory(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, calls: u64) {
    {
        let engine = workload::open(dir, Durability::Buffered);
        runtime.block_on(workload::build(&workload::session(&engine, "profile"), 0, WM_SESSION_MESSAGES));
    }
    let engine = workload::open(dir, Durability::Buffered);
    let session = workload::session(&engine, "profile");
    let us = runtime.block_on(crate::reads::wm_us(&session, usize::try_from(calls).expect("calls fit in usize")));
    eprintln!("working_memory(50): {us:.2} us");
}

fn sync_append_64(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, calls: u64) {
    const WRITERS: u64 = 64;
    let engine = workload::open(dir, Durability::Sync);
    let start = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let session = workload::session(&engine, &format!("writer-{i:03}"));
                tokio::spawn(async move {
                    for idx in 0..calls / WRITERS {
                        session.append(message(idx)).await.expect("durable append");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("an append task panicked");
        }
    });
    eprintln!("durable appends from {WRITERS} writers: {:.0}/s", calls as f64 / start.elapsed().as_secs_f64());
}
