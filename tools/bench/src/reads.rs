//! Read-side ratios: working memory at a large session against a 100-message one (p1), against
//! a raw fjall head read plus 50-key reverse scan of the same keys, cold (p2: sessions read once)
//! and warm (p2w: the session read by the previous call), and audit replay against a raw full scan
//! (p6). Each repeat runs every side back to back, so the ratios hold on a noisy machine.

use std::hint::black_box;
use std::time::Instant;

use palimpsest::{AuditOptions, Engine, Session};
use serde_json::{Value, json};

use crate::Plan;
use crate::raw::RawDb;
use crate::stats::{mean_us_per_call, median, paired_ratio, round, us};
use crate::workload::log;

/// Messages in the working memory the targets ask about.
pub const WINDOW: usize = 50;
/// Untimed calls before timing, so caches and lazily opened tables are warm on both sides.
const WARM_UP_CALLS: usize = 200;

/// Mean microseconds of one `working_memory(WINDOW)` call on `session`, over `calls` calls.
pub async fn wm_us(session: &Session, calls: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        let memory = session.working_memory(WINDOW).await.expect("working_memory");
        black_box(memory);
    }
    us(start.elapsed()) / calls as f64
}

/// p1 and the storage path of p2: the large and the small session (engines with the window cache
/// off, so every call reads storage), and the raw baseline of the large one.
pub async fn read_ratios(plan: &Plan, large: &Session, small: &Session, raw: &RawDb) -> Value {
    let id = large.id().as_str().to_string();
    let last_seq = large.head().await.expect("head").expect("the large session exists").last_seq().get();
    let memory = large.working_memory(WINDOW).await.expect("working_memory");
    // The window rule may drop a tool result whose call fell off the front, never more.
    assert!(memory.messages.len() + 1 >= WINDOW, "working memory holds {} messages", memory.messages.len());
    wm_us(large, WARM_UP_CALLS).await;
    wm_us(small, WARM_UP_CALLS).await;
    for _ in 0..WARM_UP_CALLS {
        raw.head_and_last_n_rev(&id, WINDOW);
        raw.head_and_last_n_fwd(&id, last_seq, WINDOW);
    }

    let (mut at_large, mut at_small, mut raw_rev, mut raw_fwd) = (vec![], vec![], vec![], vec![]);
    for repeat in 0..plan.repeats {
        at_large.push(wm_us(large, plan.wm_calls).await);
        raw_rev.push(time_raw(plan.wm_calls, || raw.head_and_last_n_rev(&id, WINDOW)));
        at_small.push(wm_us(small, plan.wm_calls).await);
        raw_fwd.push(time_raw(plan.wm_calls, || raw.head_and_last_n_fwd(&id, last_seq, WINDOW)));
        log(format!(
            "p1/p2 repeat {repeat}: wm50 {:.1} us at {} msgs, {:.1} us at {} msgs; raw rev {:.1} us, fwd {:.1} us",
            at_large[repeat], plan.large, at_small[repeat], plan.small, raw_rev[repeat], raw_fwd[repeat]
        ));
    }
    json!({
        "p1_read_growth": round(paired_ratio(&at_large, &at_small), 3),
        "p1_wm50_us_large": round(median(&at_large), 2),
        "p1_wm50_us_small": round(median(&at_small), 2),
        // The same session read call after call through storage (window cache off).
        "p2_wm50_us": round(median(&at_large), 2),
        "p2_raw_head_rev50_us": round(median(&raw_rev), 2),
        "p2_raw_head_fwd50_us": round(median(&raw_fwd), 2),
        "p2_read_vs_raw_storage": round(paired_ratio(&at_large, &raw_rev), 3),
        "p2_read_vs_raw_fwd": round(paired_ratio(&at_large, &raw_fwd), 3),
    })
}

/// p2w: `working_memory(WINDOW)` on the session read by the previous call, on an engine with the
/// default window cache (the agent loop's read), against the raw head read + reverse scan.
pub async fn warm_read_ratio(plan: &Plan, large: &Session, raw: &RawDb) -> Value {
    let id = large.id().as_str().to_string();
    wm_us(large, WARM_UP_CALLS).await;
    for _ in 0..WARM_UP_CALLS {
        raw.head_and_last_n_rev(&id, WINDOW);
    }
    let (mut warm, mut raw_rev) = (vec![], vec![]);
    for repeat in 0..plan.repeats {
        warm.push(wm_us(large, plan.wm_calls).await);
        raw_rev.push(time_raw(plan.wm_calls, || raw.head_and_last_n_rev(&id, WINDOW)));
        log(format!("p2w repeat {repeat}: wm50 warm {:.2} us; raw rev {:.1} us", warm[repeat], raw_rev[repeat]));
    }
    json!({
        "p2w_read_warm_vs_raw": round(paired_ratio(&warm, &raw_rev), 3),
        "p2w_wm50_us": round(median(&warm), 2),
    })
}

/// p2 (cold): `working_memory(WINDOW)` on sessions that nobody has read before in this run,
/// against raw fjall reading the same sessions (head + reverse scan of the last `WINDOW` event
/// keys) in its own copy of the database, also for the first time. Each repeat takes the next
/// `plan.cold_calls` sessions of `ids` (spread over the key space by a stride coprime with their
/// number) and reads each once on each side, the engine first.
pub async fn cold_read_ratio(plan: &Plan, engine: &Engine, raw: &RawDb, ids: &[String]) -> Value {
    let n = ids.len();
    let needed = plan.repeats * plan.cold_calls;
    assert!(needed <= n, "{needed} cold reads need as many sessions; the database has {n}");
    // The owned-copy side (context) reads the sessions after those, also once each, when there
    // are enough of them.
    let owned_too = 2 * needed <= n;
    let order = cold_order(n, if owned_too { 2 * needed } else { needed });
    let pick = |k: usize| ids[order[k]].as_str();
    let sessions: Vec<Session> = (0..needed).map(|k| crate::workload::session(engine, pick(k))).collect();
    let (mut engine_us, mut raw_us, mut owned_us) = (vec![], vec![], vec![]);
    for repeat in 0..plan.repeats {
        let range = repeat * plan.cold_calls..(repeat + 1) * plan.cold_calls;
        let start = Instant::now();
        for session in &sessions[range.clone()] {
            black_box(session.working_memory(WINDOW).await.expect("working_memory"));
        }
        engine_us.push(us(start.elapsed()) / plan.cold_calls as f64);
        let start = Instant::now();
        for k in range.clone() {
            black_box(raw.head_and_last_n_rev(pick(k), WINDOW));
        }
        raw_us.push(us(start.elapsed()) / plan.cold_calls as f64);
        if owned_too {
            let start = Instant::now();
            for k in range.start + needed..range.end + needed {
                black_box(raw.head_and_last_n_rev_owned(pick(k), WINDOW));
            }
            owned_us.push(us(start.elapsed()) / plan.cold_calls as f64);
        }
        log(format!(
            "p2 cold repeat {repeat}: wm50 {:.1} us, raw head + reverse scan {:.1} us, the same copying each \
             value {:.1} us ({} sessions read once each)",
            engine_us[repeat],
            raw_us[repeat],
            owned_us.get(repeat).copied().unwrap_or(f64::NAN),
            plan.cold_calls
        ));
    }
    json!({
        "p2_read_vs_raw": round(paired_ratio(&engine_us, &raw_us), 3),
        "p2_cold_wm50_us": round(median(&engine_us), 2),
        "p2_cold_raw_head_rev50_us": round(median(&raw_us), 2),
        // Context: raw fjall handing out owned copies of what it read (other sessions, also cold).
        "p2_cold_raw_owned_us": (!owned_us.is_empty()).then(|| round(median(&owned_us), 2)),
        "p2_read_vs_raw_owned": (!owned_us.is_empty()).then(|| round(paired_ratio(&engine_us, &owned_us), 3)),
        "p2_cold_sessions_in_db": n,
        "p2_cold_reads_per_repeat": plan.cold_calls,
    })
}

/// The first `count` indices (of `n`) the cold reads visit: a stride coprime with `n`, so no index
/// comes twice before every one has come once, and neighbours in key order are read far apart.
pub fn cold_order(n: usize, count: usize) -> Vec<usize> {
    let stride = (n / 2 + 1..n).chain(1..n).find(|s| gcd(*s, n) == 1).unwrap_or(1);
    (0..count).map(|k| (k * stride) % n).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn time_raw(calls: usize, mut op: impl FnMut() -> usize) -> f64 {
    mean_us_per_call(calls, || {
        black_box(op());
    })
}

/// p6: `Engine::audit` over the whole large database against a raw scan of the same events.
pub fn replay_ratio(plan: &Plan, engine: &Engine, raw: &RawDb) -> Value {
    let (mut audit_rate, mut scan_rate, mut n_events) = (vec![], vec![], 0);
    for repeat in 0..plan.replay_repeats {
        let start = Instant::now();
        let report = engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit");
        let audit_s = start.elapsed().as_secs_f64();
        assert!(report.ok, "the bench database audits clean: {:?}", report.violations.first());
        n_events = report.events;
        audit_rate.push(report.events as f64 / audit_s);

        let start = Instant::now();
        let scanned = raw.scan_events();
        let scan_s = start.elapsed().as_secs_f64();
        assert_eq!(scanned, report.events, "the raw baseline holds the same events");
        scan_rate.push(scanned as f64 / scan_s);
        log(format!(
            "p6 repeat {repeat}: audit {:.0} events/s, raw scan {:.0} keys/s ({} events)",
            audit_rate[repeat], scan_rate[repeat], report.events
        ));
    }
    json!({
        "p6_replay_vs_raw": round(paired_ratio(&audit_rate, &scan_rate), 3),
        "p6_audit_events_per_s": round(median(&audit_rate), 0),
        "p6_raw_scan_keys_per_s": round(median(&scan_rate), 0),
        "p6_events": n_events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_reads_visit_every_session_once_before_any_twice() {
        for n in [1, 2, 7, 10, 64, 1_000, 50_000] {
            let mut seen = vec![false; n];
            for idx in cold_order(n, n) {
                assert!(!seen[idx], "session {idx} of {n} picked twice");
                seen[idx] = true;
            }
        }
        // Neighbouring picks are far apart in key order, not a sequential scan.
        let order = cold_order(1_000, 3);
        assert!(order[1].abs_diff(order[0]) > 1 && order[2].abs_diff(order[1]) > 1, "{order:?}");
    }
}
