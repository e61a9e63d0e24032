//! The scaling table: append latency and `working_memory(50)` latency as one session grows
//! (100 messages to the large size), and as the number of sessions in a database grows (each
//! with the same number of messages). Appends are buffered, single, sequential; reads and appends
//! pick sessions pseudo-randomly where there are several. Every database is closed and reopened
//! after it is built, as after a restart.

use std::hint::black_box;
use std::time::Instant;

use palimpsest::{Durability, Session};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::Plan;
use crate::raw::RawDb;
use crate::reads::WINDOW;
use crate::stats::{median, paired_ratio, round, us};
use crate::workload::{self, log, message, splitmix};

/// One database being measured, with its sessions and each session's next message index.
pub struct Target {
    /// Handles keep their engine open.
    sessions: Vec<Session>,
    next: Vec<u64>,
    /// Appends pick sessions from this index on (reads pick from all): p2's cold reads use the
    /// sessions below it in a cached database, which then keep the raw copy's length.
    append_from: usize,
    /// Owns the directory of a database built here (none for one lent by the caller).
    _dir: Option<TempDir>,
}

impl Target {
    /// A target over an engine that is already open and built, with one session.
    pub async fn lent(session: Session) -> Self {
        let next = vec![workload::message_count(&session).await];
        Self { sessions: vec![session], next, append_from: 0, _dir: None }
    }

    /// A target over an open engine holding `ids` (a cached database); appends go to the upper
    /// half of the sessions when there are several (see `append_from`).
    pub async fn cached(engine: &palimpsest::Engine, ids: &[String]) -> Self {
        let sessions: Vec<Session> = ids.iter().map(|id| workload::session(engine, id)).collect();
        let append_from = sessions.len() / 2;
        let mut next = vec![0; sessions.len()];
        for (slot, session) in next.iter_mut().zip(&sessions).skip(append_from) {
            *slot = workload::message_count(session).await;
        }
        Self { sessions, next, append_from, _dir: None }
    }

    /// Builds a database of `n_sessions` sessions of `per_session` messages, closes it and
    /// reopens it.
    pub async fn build(n_sessions: u64, per_session: u64) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ids: Vec<String> = (0..n_sessions).map(|i| format!("session-{i:06}")).collect();
        {
            let engine = workload::open(dir.path(), Durability::Buffered);
            for id in &ids {
                workload::build(&workload::session(&engine, id), 0, per_session).await;
            }
        }
        Self::reopen(dir, &ids, per_session)
    }

    fn reopen(dir: TempDir, ids: &[String], per_session: u64) -> Self {
        // The storage path, as the cached targets measure it (see `workload::open_storage_path`).
        let engine = workload::open_storage_path(dir.path(), Durability::Buffered);
        let sessions: Vec<Session> = ids.iter().map(|id| workload::session(&engine, id)).collect();
        let next = vec![per_session; sessions.len()];
        Self { sessions, next, append_from: 0, _dir: Some(dir) }
    }

    /// Mean microseconds of `calls` working-memory reads of pseudo-randomly picked sessions.
    async fn wm_us(&self, calls: usize, rng: &mut u64) -> f64 {
        let start = Instant::now();
        for _ in 0..calls {
            let session = &self.sessions[(splitmix(rng) % self.sessions.len() as u64) as usize];
            black_box(session.working_memory(WINDOW).await.expect("working_memory"));
        }
        us(start.elapsed()) / calls as f64
    }

    /// Mean microseconds of `calls` single appends to pseudo-randomly picked sessions.
    async fn append_us(&mut self, calls: usize, rng: &mut u64) -> f64 {
        // Messages are made before the clock starts.
        let mut batch = Vec::with_capacity(calls);
        for _ in 0..calls {
            let span = (self.sessions.len() - self.append_from) as u64;
            let pick = self.append_from + (splitmix(rng) % span) as usize;
            batch.push((pick, message(self.next[pick])));
            self.next[pick] += 1;
        }
        let start = Instant::now();
        for (pick, m) in batch {
            self.sessions[pick].append(m).await.expect("append");
        }
        us(start.elapsed()) / calls as f64
    }
}

/// Measures every target `plan.repeats` times, interleaved; returns (append us, wm50 us) medians.
async fn measure(plan: &Plan, targets: &mut [Target], label: &str) -> Vec<(f64, f64)> {
    let samples = measure_samples(plan, targets, label).await;
    samples.iter().map(|(a, r)| (median(a), median(r))).collect()
}

/// Per-repeat samples of every target: (append us per repeat, wm50 us per repeat), each target
/// measured in every repeat, so ratios between targets can be paired.
async fn measure_samples(plan: &Plan, targets: &mut [Target], label: &str) -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut rng = 0x5CA1_AB1E_u64;
    for target in targets.iter() {
        target.wm_us(100, &mut rng).await;
    }
    let mut samples = vec![(Vec::new(), Vec::new()); targets.len()];
    for repeat in 0..plan.repeats {
        // Each repeat starts at the next target, so none always follows the background work
        // (flushes) the previous one's appends left behind.
        let n = targets.len();
        for k in 0..n {
            let idx = (repeat + k) % n;
            let (appends, reads) = &mut samples[idx];
            reads.push(targets[idx].wm_us(plan.scale_wm_calls, &mut rng).await);
            appends.push(targets[idx].append_us(plan.scale_appends, &mut rng).await);
        }
        log(format!("scaling ({label}) repeat {repeat} done"));
    }
    samples
}

/// p9 and p10: `working_memory(WINDOW)` and a single buffered append on one session of the big
/// size (p9) and on pseudo-randomly picked sessions of the many-session database (p10), each
/// against one fresh 100-message session, all three measured in every repeat.
pub async fn scale_ratios(plan: &Plan, big: Option<Target>, many: Option<Target>) -> Value {
    let mut targets = vec![Target::build(1, plan.small).await];
    let (has_big, has_many) = (big.is_some(), many.is_some());
    targets.extend(big);
    targets.extend(many);
    let samples = measure_samples(plan, &mut targets, "p9/p10").await;
    let (small_append, small_wm) = &samples[0];
    let mut out = serde_json::Map::new();
    // With --quick these are stand-ins (1M messages, 10k sessions): the sizes say which.
    if has_big {
        out.insert("p9_messages".into(), json!(plan.p9_messages));
    }
    if has_many {
        out.insert("p10_sessions".into(), json!(plan.p10_sessions));
    }
    out.insert("p9_p10_small_append_us".into(), json!(round(median(small_append), 2)));
    out.insert("p9_p10_small_wm50_us".into(), json!(round(median(small_wm), 2)));
    let mut rest = samples[1..].iter();
    for (has, prefix, name) in [(has_big, "p9", "p9_scale_10m"), (has_many, "p10", "p10_sessions_100k")] {
        if !has {
            continue;
        }
        let (append, wm) = rest.next().expect("one sample set per target");
        out.insert(format!("{name}_wm50"), json!(round(paired_ratio(wm, small_wm), 3)));
        out.insert(format!("{name}_append"), json!(round(paired_ratio(append, small_append), 3)));
        out.insert(format!("{prefix}_wm50_us"), json!(round(median(wm), 2)));
        out.insert(format!("{prefix}_append_us"), json!(round(median(append), 2)));
    }
    Value::Object(out)
}

/// Context for p10: how raw fjall's own work grows from one session to many. Reads: raw fjall's
/// head read + 50-key reverse scan (p2's raw read) of pseudo-randomly picked sessions of the
/// many-session database's raw copy (`many`, holding `ids`), against the same read of one
/// 100-message session in a raw database of its own, read call after call, as the engine's
/// one-session side is. Appends: a head read, then an event + head batch
/// ([`RawDb::read_head_then_commit`]), to pseudo-randomly picked sessions of the upper half (as the
/// engine's appends go; p2's cold reads use the lower half) against the one session. Both sides
/// in every repeat, taking turns going first. Where this growth is near p10's own, what stands
/// between p10 and its target is fjall's cold read, not the engine.
pub async fn raw_many_sessions_floor(plan: &Plan, many: &RawDb, ids: &[String]) -> Value {
    let engine_dir = tempfile::tempdir().expect("a temp dir");
    let raw_dir = tempfile::tempdir().expect("a temp dir");
    let one = "small-session";
    {
        let engine = workload::open(engine_dir.path(), Durability::Buffered);
        workload::build(&workload::session(&engine, one), 0, plan.small).await;
    }
    // A real event's bytes, the value every raw append writes.
    let value = RawDb::engine_event_rows(engine_dir.path(), one).pop().expect("the session has events").1;
    let small = RawDb::open(raw_dir.path());
    small.copy_from_engine_dir(engine_dir.path());
    let (reads, appends) = (plan.scale_wm_calls, plan.scale_appends);
    // Raw appends land far above the sessions' own seqs (a reused copy holds earlier runs' too).
    let mut next_seq = 1u64 << 40;
    let mut rng = 0x0F10_0D00_u64;
    let only = [one.to_string()];
    // Each side: its database, the sessions its reads pick from, those its appends pick from.
    let sides: [(&RawDb, &[String], &[String]); 2] = [(many, ids, &ids[ids.len() / 2..]), (&small, &only, &only)];
    let pick = |from: &'_ [String], rng: &mut u64| from[(splitmix(rng) % from.len() as u64) as usize].clone();
    let per_call = |start: Instant, calls: usize| us(start.elapsed()) / calls as f64;
    let measure = |side: usize, rng: &mut u64, next_seq: &mut u64| -> (f64, f64) {
        let (db, read_from, append_to) = sides[side];
        // The picks are made before the clock starts.
        let read_picks: Vec<String> = (0..reads).map(|_| pick(read_from, rng)).collect();
        let append_picks: Vec<String> = (0..appends).map(|_| pick(append_to, rng)).collect();
        let start = Instant::now();
        for id in &read_picks {
            black_box(db.head_and_last_n_rev(id, WINDOW));
        }
        let read = per_call(start, reads);
        let start = Instant::now();
        for id in &append_picks {
            *next_seq += 1;
            black_box(db.read_head_then_commit(id, *next_seq, &value));
        }
        (read, per_call(start, appends))
    };
    // Warm-up, as the engine's sides get.
    measure(0, &mut rng, &mut next_seq);
    measure(1, &mut rng, &mut next_seq);
    let mut samples = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for repeat in 0..plan.repeats {
        for k in 0..2 {
            let side = (repeat + k) % 2;
            let (read, append) = measure(side, &mut rng, &mut next_seq);
            samples[side].0.push(read);
            samples[side].1.push(append);
        }
        log(format!(
            "p10 raw floor repeat {repeat}: among {} sessions read {:.1} us, append {:.1} us; one session read {:.1} \
             us, append {:.1} us",
            ids.len(),
            samples[0].0[repeat],
            samples[0].1[repeat],
            samples[1].0[repeat],
            samples[1].1[repeat]
        ));
    }
    let [(many_read, many_append), (one_read, one_append)] = &samples;
    json!({
        "p10_raw_wm50_growth": round(paired_ratio(many_read, one_read), 3),
        "p10_raw_many_head_rev50_us": round(median(many_read), 2),
        "p10_raw_one_head_rev50_us": round(median(one_read), 2),
        "p10_raw_append_growth": round(paired_ratio(many_append, one_append), 3),
        "p10_raw_many_append_us": round(median(many_append), 2),
        "p10_raw_one_append_us": round(median(one_append), 2),
    })
}

/// The whole table. `large` and `small` are the p1 sessions (already open), reused at their sizes.
pub async fn scaling(plan: &Plan, large: &Session, small: &Session) -> Value {
    let mut sizes = Vec::new();
    let mut by_size = Vec::new();
    for &n in &plan.scale_sizes {
        log(format!("scaling: preparing a session of {n} messages"));
        let target = if n == plan.large {
            Target::lent(large.clone()).await
        } else if n == plan.small {
            Target::lent(small.clone()).await
        } else {
            Target::build(1, n).await
        };
        sizes.push(n);
        by_size.push(target);
    }
    let size_rows = measure(plan, &mut by_size, "session length").await;
    drop(by_size);

    let mut counts = Vec::new();
    let mut by_count = Vec::new();
    for &n in &plan.scale_session_counts {
        log(format!("scaling: building {n} sessions of {} messages", plan.scale_per_session));
        by_count.push(Target::build(n, plan.scale_per_session).await);
        counts.push(n);
    }
    let count_rows = measure(plan, &mut by_count, "session count").await;

    let size_json: Vec<Value> = sizes
        .iter()
        .zip(&size_rows)
        .map(|(n, (a, r))| json!({"messages": n, "append_us": round(*a, 2), "wm50_us": round(*r, 2)}))
        .collect();
    let count_json: Vec<Value> = counts
        .iter()
        .zip(&count_rows)
        .map(|(n, (a, r))| {
            json!({
                "sessions": n,
                "messages_per_session": plan.scale_per_session,
                "append_us": round(*a, 2),
                "wm50_us": round(*r, 2),
            })
        })
        .collect();
    json!({
        "durability": "buffered",
        "window": WINDOW,
        "by_session_messages": size_json,
        "by_session_count": count_json,
    })
}
