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
use crate::reads::WINDOW;
use crate::stats::{median, round, us};
use crate::workload::{self, log, message, splitmix};

/// One database being measured, with its sessions and each session's next message index.
pub struct Target {
    /// Handles keep their engine open.
    sessions: Vec<Session>,
    next: Vec<u64>,
    /// Owns the directory of a database built here (none for one lent by the caller).
    _dir: Option<TempDir>,
}

impl Target {
    /// A target over an engine that is already open and built, with one session.
    pub async fn lent(session: Session) -> Self {
        let next = vec![workload::message_count(&session).await];
        Self { sessions: vec![session], next, _dir: None }
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
        let engine = workload::open(dir.path(), Durability::Buffered);
        let sessions: Vec<Session> = ids.iter().map(|id| workload::session(&engine, id)).collect();
        let next = vec![per_session; sessions.len()];
        Self { sessions, next, _dir: Some(dir) }
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
            let pick = (splitmix(rng) % self.sessions.len() as u64) as usize;
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
    let mut rng = 0x5CA1_AB1E_u64;
    for target in targets.iter() {
        target.wm_us(100, &mut rng).await;
    }
    let mut samples = vec![(Vec::new(), Vec::new()); targets.len()];
    for repeat in 0..plan.repeats {
        for (target, (appends, reads)) in targets.iter_mut().zip(samples.iter_mut()) {
            reads.push(target.wm_us(plan.scale_wm_calls, &mut rng).await);
            appends.push(target.append_us(plan.scale_appends, &mut rng).await);
        }
        log(format!("scaling ({label}) repeat {repeat} done"));
    }
    samples.iter().map(|(a, r)| (median(a), median(r))).collect()
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
