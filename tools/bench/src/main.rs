//! `palimpsest-bench`: runs palimpsest and a raw fjall baseline doing the same key operations in
//! the same run, then (given a nats-server binary) the engine on a local 3-node JetStream cluster
//! beside raw async-nats, and reports ratios against the performance targets (a table, or one JSON
//! object with `--json`). These machines are shared and noisy: ratios measured side by side hold,
//! absolute times do not, so every figure is a median over repeats and every ratio is the median
//! of per-repeat ratios with both sides measured back to back.
//!
//! Map:
//! - `workload`: realistic messages, opening engines, building sessions fast.
//! - `raw`: the raw fjall baseline (same keys, values copied from the engine's database).
//! - `stats`: medians, percentiles, paired ratios.
//! - `writes`: p3 (buffered appends vs raw inserts and vs raw event + head batches), p4 (group
//!   commit gain, and against raw 64-event batches with one fsync each).
//! - `stall`: p5 (append p99 while a 2 s compaction is in flight; p99.9 while a compaction of a
//!   100k-message span is).
//! - `reads`: p1 (read growth), p2 (cold read vs raw), p2w (warm read vs raw), p6 (audit replay vs
//!   raw scan).
//! - `rss`: p7 (peak RSS, measured in child processes).
//! - `opening`: p8 (open time by database size, and against fjall's own open; child processes).
//! - `scaling`: latency by session length and by number of sessions; p9 (10M messages in one
//!   session) and p10 (100k sessions) against one 100-message session, and beside p10 raw fjall's
//!   own read growth from one session to many.
//! - `cache`: the 10M-message and 100k-session databases, built once and reused across runs.
//! - `nats`: appends/s from 64 sessions and from 1 against raw async-nats publishing the same
//!   records, and working-memory reads at 100 and 100k messages, on a cluster started for the run.
//! - `report`: targets, the JSON object and the table.
//! - `profile`: a hidden subcommand running one hot loop alone, for `perf` or callgrind.

mod cache;
mod nats;
mod opening;
mod profile;
mod raw;
mod reads;
mod report;
mod rss;
mod scaling;
mod stall;
mod stats;
mod workload;
mod writes;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use palimpsest::Durability;
use serde_json::{Map, Value, json};

use crate::raw::RawDb;
use crate::workload::log;

/// Side-by-side performance ratios of palimpsest against raw fjall.
#[derive(Parser, Debug)]
#[command(name = "palimpsest-bench", version, about)]
struct Args {
    /// Smaller sizes (100k-message session instead of 1M; scaling up to 100k): a few minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Where the 10M-message and 100k-session databases are kept between runs (default: a
    /// `palimpsest-bench-cache` directory under the system temp dir). Several GB; delete it freely.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Rebuild the cached databases even when a valid one exists.
    #[arg(long)]
    fresh_cache: bool,
    /// The nats-server binary (scripts/setup-nats.sh installs 2.15.1, the version the tests use, and
    /// prints its path) for the JetStream figures, which run last on a 3-node loopback cluster
    /// started for the run. Without one those figures are null and the report says why.
    #[arg(long, env = palimpsest_testcluster::SERVER_ENV, value_name = "PATH")]
    nats_server: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Hidden>,
}

/// Internal subcommands (the parent runs them in child processes).
#[derive(Subcommand, Debug)]
enum Hidden {
    /// Opens a database, serves working-memory reads, prints its peak RSS as JSON.
    #[command(name = "rss-probe", hide = true)]
    RssProbe {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        session: String,
        #[arg(long)]
        calls: usize,
        /// Then delete the session and wait for its purge, and report that too.
        #[arg(long)]
        delete: bool,
    },
    /// Opens a database once (the engine, or raw fjall with the engine's keyspaces), prints the
    /// open time as JSON.
    #[command(name = "open-probe", hide = true)]
    OpenProbe {
        #[arg(long)]
        db: PathBuf,
        #[arg(long, value_enum)]
        side: opening::Side,
    },
    /// Only the JetStream figures (needs --nats-server): prints their JSON object.
    #[command(name = "nats-only", hide = true)]
    NatsOnly,
    /// Runs one hot loop alone, for a profiler.
    #[command(hide = true)]
    Profile {
        #[arg(value_enum)]
        which: profile::Loop,
        #[arg(long, default_value_t = 200_000)]
        calls: u64,
    },
}

/// Sizes and repeat counts of one run.
pub struct Plan {
    /// `--quick`: the smaller sizes.
    pub quick: bool,
    /// Messages in the large session (p1, p2, p6, p7).
    pub large: u64,
    /// Messages in the small session.
    pub small: u64,
    /// Repeats of every timed measurement (medians are over these).
    pub repeats: usize,
    /// `working_memory` calls per repeat.
    pub wm_calls: usize,
    /// Repeats of the audit-vs-scan measurement (each scans the whole large database).
    pub replay_repeats: usize,
    /// Single appends per p3 repeat.
    pub append_calls: u64,
    /// Concurrent sessions in p4.
    pub p4_writers: usize,
    /// Length of each p4 phase.
    pub p4_phase: Duration,
    /// Messages in the p5 session before the rounds.
    pub p5_session_messages: u64,
    /// Appends timed per p5 phase.
    pub p5_samples: usize,
    /// p5 rounds (each an idle phase and a phase with a compaction in flight).
    pub p5_rounds: usize,
    /// `working_memory` calls in each p7 child.
    pub rss_calls: usize,
    /// Children per database in p7.
    pub rss_repeats: usize,
    /// Session lengths of the scaling table.
    pub scale_sizes: Vec<u64>,
    /// Session counts of the scaling table.
    pub scale_session_counts: Vec<u64>,
    /// Messages per session in the session-count rows.
    pub scale_per_session: u64,
    /// Reads per scaling repeat.
    pub scale_wm_calls: usize,
    /// Appends per scaling repeat.
    pub scale_appends: usize,
    /// Sessions read once each per p2 (cold) repeat.
    pub cold_calls: usize,
    /// Messages in the span each p5 p99.9 compaction covers.
    pub p5_span_messages: u64,
    /// p5 p99.9 rounds.
    pub p5_p999_rounds: usize,
    /// Messages in the one-session database of p8 and p9 (10M; the quick run's stand-in is smaller).
    pub p9_messages: u64,
    /// Sessions of `scale_per_session` messages in the database of p2 (cold) and p10 (100k; the
    /// quick run's stand-in is smaller).
    pub p10_sessions: u64,
    /// Timed repeats of each JetStream figure (after an untimed round).
    pub nats_repeats: usize,
    /// Appends per session per repeat with 64 sessions appending at once, on JetStream.
    pub nats_appends_per_session_many: u64,
    /// Appends per repeat of the single session on JetStream.
    pub nats_appends_one_session: u64,
    /// `working_memory` calls per repeat on JetStream, window cache on.
    pub nats_wm_calls: usize,
    /// The same with the window cache off (each call several round trips).
    pub nats_wm_uncached_calls: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let large = if quick { 100_000 } else { 1_000_000 };
        Self {
            quick,
            large,
            small: 100,
            repeats: if quick { 5 } else { 7 },
            wm_calls: if quick { 2_000 } else { 5_000 },
            replay_repeats: 5,
            append_calls: if quick { 20_000 } else { 50_000 },
            p4_writers: 64,
            p4_phase: Duration::from_millis(if quick { 500 } else { 1_000 }),
            p5_session_messages: 4_000,
            p5_samples: 2_000,
            p5_rounds: 5,
            rss_calls: 10_000,
            rss_repeats: if quick { 3 } else { 5 },
            scale_sizes: if quick {
                vec![100, 1_000, 10_000, 100_000]
            } else {
                vec![100, 1_000, 10_000, 100_000, 1_000_000]
            },
            scale_session_counts: if quick { vec![1, 100, 1_000] } else { vec![1, 100, 10_000] },
            scale_per_session: 100,
            scale_wm_calls: if quick { 500 } else { 1_000 },
            scale_appends: if quick { 500 } else { 1_000 },
            cold_calls: if quick { 500 } else { 2_000 },
            p5_span_messages: 100_000,
            p5_p999_rounds: if quick { 3 } else { 5 },
            p9_messages: if quick { 1_000_000 } else { 10_000_000 },
            p10_sessions: if quick { 10_000 } else { 100_000 },
            nats_repeats: 5,
            nats_appends_per_session_many: if quick { 50 } else { 100 },
            nats_appends_one_session: if quick { 300 } else { 1_000 },
            nats_wm_calls: if quick { 200 } else { 500 },
            nats_wm_uncached_calls: if quick { 30 } else { 100 },
        }
    }
}

/// The runtime every measurement (and every rss child) uses: multi-thread, one worker per core.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn main() {
    let args = Args::parse();
    match &args.command {
        Some(Hidden::RssProbe { db, session, calls, delete }) => return rss::probe(db, session, *calls, *delete),
        Some(Hidden::OpenProbe { db, side }) => return opening::probe(db, *side),
        Some(Hidden::Profile { which, calls }) => {
            return profile::run(*which, *calls, &args.cache_dir.clone().unwrap_or_else(cache::default_dir));
        }
        Some(Hidden::NatsOnly) => {
            let figures = runtime().block_on(nats::figures(&Plan::new(args.quick), args.nats_server.as_deref()));
            println!("{}", serde_json::to_string_pretty(&figures).expect("the figures serialize"));
            return;
        }
        None => {}
    }
    let plan = Plan::new(args.quick);
    let started = Instant::now();
    let mut out = Map::new();
    out.insert("cores".into(), json!(cores()));
    out.insert("quick".into(), json!(plan.quick));
    out.insert("large_session_messages".into(), json!(plan.large));
    out.insert("small_session_messages".into(), json!(plan.small));
    out.insert("repeats".into(), json!(plan.repeats));
    let runtime = runtime();
    let cache_dir = args.cache_dir.clone().unwrap_or_else(cache::default_dir);
    runtime.block_on(async {
        run(&plan, &mut out, &cache_dir, args.fresh_cache).await;
        // Last, so the cluster's processes never share the machine with the fjall figures.
        log("nats: JetStream figures");
        merge(&mut out, nats::figures(&plan, args.nats_server.as_deref()).await);
    });
    out.insert("elapsed_s".into(), json!(stats::round(started.elapsed().as_secs_f64(), 1)));
    let out = report::finish(out);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out).expect("the report serializes"));
    } else {
        print!("{}", report::table(&out));
    }
}

fn merge(out: &mut Map<String, Value>, part: Value) {
    if let Value::Object(fields) = part {
        out.extend(fields);
    }
}

/// Every measurement, in an order that keeps each from disturbing the next: the write-side ones
/// on fresh databases first, then the large database is built once and serves p7, p1, p2, p6 and
/// the scaling table.
async fn run(plan: &Plan, out: &mut Map<String, Value>, cache_dir: &std::path::Path, fresh_cache: bool) {
    log("p3: buffered appends vs raw inserts");
    merge(out, writes::append_ratio(plan).await);
    log("p4: group commit");
    merge(out, writes::group_commit_gain(plan).await);
    log("p5: appends while a compaction is in flight");
    merge(out, stall::compaction_stall(plan).await);
    log("p5 p99.9: appends while a compaction of a 100k-message span is in flight");
    merge(out, stall::compaction_stall_p999(plan).await);

    let (large_dir, small_dir, raw_dir) = (temp(), temp(), temp());
    let (large_id, small_id) = ("large-session", "small-session");
    log(format!("building a {}-message session", plan.large));
    let start = Instant::now();
    for (dir, id, n) in [(&large_dir, large_id, plan.large), (&small_dir, small_id, plan.small)] {
        let engine = workload::open(dir.path(), Durability::Buffered);
        workload::build(&workload::session(&engine, id), 0, n).await;
    }
    let build_s = start.elapsed().as_secs_f64();
    out.insert("build_messages_per_s".into(), json!(stats::round(plan.large as f64 / build_s, 0)));
    log(format!("built in {build_s:.1} s; copying it into the raw baseline"));
    let copied = RawDb::open(raw_dir.path()).copy_from_engine_dir(large_dir.path());
    // Every message, plus the episode boundaries the turn cap writes between user turns.
    assert!(copied >= plan.large, "the raw baseline holds every event: {copied} copied");

    log("p7: peak RSS in child processes");
    merge(out, rss::rss_growth(plan, (large_dir.path(), large_id), (small_dir.path(), small_id)));

    // Reopened after building, as after a restart (recovery replays the journal). The storage path
    // first: the window cache off, so p1 and the scaling table read storage on both sides.
    let large_engine = workload::open_storage_path(large_dir.path(), Durability::Buffered);
    let small_engine = workload::open_storage_path(small_dir.path(), Durability::Buffered);
    let raw = RawDb::open(raw_dir.path());
    let (large, small) = (workload::session(&large_engine, large_id), workload::session(&small_engine, small_id));
    log("p1/p2: working memory vs session length and vs raw fjall");
    merge(out, reads::read_ratios(plan, &large, &small, &raw).await);
    log("p6: audit replay vs raw full scan");
    merge(out, reads::replay_ratio(plan, &large_engine, &raw));

    log("scaling table");
    out.insert("scaling".into(), scaling::scaling(plan, &large, &small).await);
    drop((large, small, large_engine, small_engine));

    log("p2w: the agent loop's read, window cache on (the default)");
    {
        let engine = workload::open(large_dir.path(), Durability::Buffered);
        merge(out, reads::warm_read_ratio(plan, &workload::session(&engine, large_id), &raw).await);
    }
    drop(raw);

    log("p7 diagnostic: peak RSS of the large database once flushed");
    merge(out, rss::rss_after_flush(plan, (large_dir.path(), large_id)));

    large_scale(plan, out, cache_dir, fresh_cache).await;

    // Last: it deletes both sessions.
    log("deletion: peak RSS deleting and purging the large session vs the small one");
    merge(out, rss::deletion(plan, (large_dir.path(), large_id), (small_dir.path(), small_id)));
}

/// p8, p2 (cold), p9 and p10, on the cached databases: one session of `plan.p9_messages` messages
/// and `plan.p10_sessions` sessions of 100 (built on the first run, reused after). A database the
/// disk has no room for is skipped, and its fields are then missing (their targets not met).
async fn large_scale(plan: &Plan, out: &mut Map<String, Value>, cache_dir: &std::path::Path, fresh: bool) {
    let big_spec = cache::Spec { sessions: 1, per_session: plan.p9_messages, raw_copy: false };
    let many_spec = cache::Spec { sessions: plan.p10_sessions, per_session: plan.scale_per_session, raw_copy: true };
    let big = cache::ensure(cache_dir, &big_spec, fresh).await;
    let many = cache::ensure(cache_dir, &many_spec, fresh).await;
    let describe = |c: &Option<cache::Cached>, spec: &cache::Spec| match c {
        Some(c) => json!({
            "sessions": spec.sessions,
            "messages_per_session": spec.per_session,
            "build_s": stats::round(c.build_s, 1),
            "built_this_run": c.built_now,
            "path": c.db.display().to_string(),
        }),
        None => json!({"sessions": spec.sessions, "messages_per_session": spec.per_session, "skipped": "disk space"}),
    };
    out.insert(
        "cached_databases".into(),
        json!({
            "dir": cache_dir.display().to_string(),
            "format_version": cache::FORMAT_VERSION,
            // The quick run measures smaller stand-ins for the 10M-message and 100k-session databases.
            "stand_ins": plan.quick,
            "one_session": describe(&big, &big_spec),
            "many_sessions": describe(&many, &many_spec),
        }),
    );

    // Every side of p8, p2, p9 and p10 then reads from the OS page cache, as the fresh 100-message
    // database does, whatever ran on the machine since the cached ones were built: "cold" below means
    // not in the engine's or fjall's caches, never a disk read on one side only.
    let dirs = [
        big.as_ref().map(|b| b.db.clone()),
        many.as_ref().map(|m| m.db.clone()),
        many.as_ref().and_then(|m| m.raw.clone()),
    ];
    let warmed: u64 = dirs.iter().flatten().map(|d| cache::read_files(d)).sum();
    log(format!("read {} MB of cached database files into the page cache", warmed >> 20));

    // p8 first: every database is closed here. The 100-message database is fresh.
    let small_dir = temp();
    {
        let engine = workload::open(small_dir.path(), Durability::Buffered);
        workload::build(&workload::session(&engine, "small-session"), 0, plan.small).await;
    }
    if let Some(big) = &big {
        log("p8: open time, cleanly closed databases, child processes");
        let dbs = opening::Databases {
            big: &big.db,
            big_messages: plan.p9_messages,
            small: small_dir.path(),
            many: many.as_ref().map(|m| m.db.as_path()),
        };
        merge(out, opening::open_ratios(plan, &dbs));
    }

    // p9 and p10 measure the storage path (window cache off): the one-session side would otherwise be
    // served from memory call after call while the 100k-session side reads cold sessions.
    let big_engine = big.as_ref().map(|b| workload::open_storage_path(&b.db, Durability::Buffered));
    let many_engine = many.as_ref().map(|m| workload::open_storage_path(&m.db, Durability::Buffered));
    let many_raw =
        many.as_ref().map(|m| RawDb::open(m.raw.as_ref().expect("the many-session database has a raw copy")));
    if let (Some(many), Some(engine), Some(raw)) = (&many, &many_engine, &many_raw) {
        log("p2: cold working memory vs raw fjall");
        let half = &many.ids[..many.ids.len() / 2];
        merge(out, reads::cold_read_ratio(plan, engine, raw, half).await);
    }
    log("p9/p10: 10M messages in one session, 100k sessions, against one 100-message session");
    let big_target = match (&big, &big_engine) {
        (Some(b), Some(e)) => Some(scaling::Target::cached(e, &b.ids).await),
        _ => None,
    };
    let many_target = match (&many, &many_engine) {
        (Some(m), Some(e)) => Some(scaling::Target::cached(e, &m.ids).await),
        _ => None,
    };
    merge(out, scaling::scale_ratios(plan, big_target, many_target).await);
    if let (Some(many), Some(raw)) = (&many, &many_raw) {
        log("p10 context: raw fjall's read among many sessions vs one session");
        merge(out, scaling::raw_many_sessions_floor(plan, raw, &many.ids).await);
    }
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}
