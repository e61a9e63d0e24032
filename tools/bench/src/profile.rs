//! Hidden `profile` subcommand: one hot loop at a time (buffered appends, raw inserts, working
//! memory, durable appends from 64 writers, appends during large compactions, audit against the raw
//! full scan, cold working-memory reads against raw fjall), long enough to run under `perf record` or
//! `valgrind --tool=callgrind` when a target is missed, without the other measurements mixed in.
//! `tools/bench/scripts/perf_symbols.py` names the frames where perf cannot (rust-lld binaries).

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
    /// `Engine::audit` of a 100k-message session, then the raw full scan of the same events (p6's
    /// two sides, one after the other), each until `calls` events are read.
    Audit,
    /// `working_memory(50)` on sessions of the quick run's many-session database (built into the
    /// cache directory, `--cache-dir`, if missing), then raw fjall's head read and reverse scan of the same
    /// sessions (p2 cold's two sides, one after the other), `calls` reads each. Sessions are visited
    /// in p2's stride order over the whole database, which is larger than the block cache, so each
    /// read misses fjall's and the engine's caches as p2's do.
    ColdRead,
}

/// Messages in the session `working-memory` reads.
const WM_SESSION_MESSAGES: u64 = 100_000;

/// Runs `which` for `calls` iterations on a fresh database and prints the rate to stderr.
pub fn run(which: Loop, calls: u64, cache_dir: &std::path::Path) {
    let runtime = crate::runtime();
    let dir = tempfile::tempdir().expect("a temp dir");
    let id = "profile";
    match which {
        Loop::WorkingMemory => return working_memory(&runtime, dir.path(), calls),
        Loop::Audit => return audit(&runtime, dir.path(), calls),
        Loop::ColdRead => return cold_read(&runtime, calls, cache_dir),
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
        Loop::WorkingMemory | Loop::SyncAppend64 | Loop::CompactionStall | Loop::Audit | Loop::ColdRead => {
            unreachable!("handled above")
        }
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

fn audit(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, calls: u64) {
    {
        let engine = workload::open(dir, Durability::Buffered);
        runtime.block_on(workload::build(&workload::session(&engine, "profile"), 0, WM_SESSION_MESSAGES));
    }
    let raw_dir = tempfile::tempdir().expect("a temp dir");
    let raw = RawDb::open(raw_dir.path());
    raw.copy_from_engine_dir(dir);
    let engine = workload::open_storage_path(dir, Durability::Buffered);
    let (mut events, start) = (0u64, Instant::now());
    while events < calls {
        let report = engine.audit(&palimpsest::AuditOptions::default(), &mut |_| {}).expect("audit");
        assert!(report.ok, "the profiled database audits clean: {:?}", report.violations.first());
        events += report.events;
    }
    let audit_rate = events as f64 / start.elapsed().as_secs_f64();
    let (mut keys, start) = (0u64, Instant::now());
    while keys < calls {
        keys += raw.scan_events();
    }
    let scan_rate = keys as f64 / start.elapsed().as_secs_f64();
    eprintln!(
        "audit: {audit_rate:.0} events/s; raw full scan: {scan_rate:.0} keys/s; ratio {:.3}",
        audit_rate / scan_rate
    );
}

fn cold_read(runtime: &tokio::runtime::Runtime, calls: u64, cache_dir: &std::path::Path) {
    let plan = crate::Plan::new(true);
    let spec = crate::cache::Spec { sessions: plan.p10_sessions, per_session: plan.scale_per_session, raw_copy: true };
    let Some(cached) = runtime.block_on(crate::cache::ensure(cache_dir, &spec, false)) else {
        eprintln!("no room on the disk for the many-session database");
        return;
    };
    crate::cache::read_files(&cached.db);
    let raw = RawDb::open(cached.raw.as_ref().expect("the many-session database has a raw copy"));
    crate::cache::read_files(cached.raw.as_ref().expect("the many-session database has a raw copy"));
    let engine = workload::open_storage_path(&cached.db, Durability::Buffered);
    let calls = usize::try_from(calls).expect("calls fit in usize");
    let order = crate::reads::cold_order(cached.ids.len(), cached.ids.len());
    let pick = |k: usize| cached.ids[order[k % order.len()]].as_str();
    let sessions: Vec<_> = (0..order.len()).map(|k| workload::session(&engine, pick(k))).collect();
    let start = Instant::now();
    runtime.block_on(async {
        for k in 0..calls {
            let memory = sessions[k % sessions.len()].working_memory(crate::reads::WINDOW).await;
            std::hint::black_box(memory.expect("working_memory"));
        }
    });
    let engine_us = crate::stats::us(start.elapsed()) / calls as f64;
    let start = Instant::now();
    for k in 0..calls {
        std::hint::black_box(raw.head_and_last_n_rev(pick(k), crate::reads::WINDOW));
    }
    let raw_us = crate::stats::us(start.elapsed()) / calls as f64;
    eprintln!(
        "cold working_memory(50): {engine_us:.2} us; raw head + reverse scan: {raw_us:.2} us; ratio {:.3}",
        engine_us / raw_us
    );
}
