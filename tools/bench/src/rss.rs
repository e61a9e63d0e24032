//! p7: peak resident memory serving a large session against a 100-message one. Both databases
//! are built by the parent; each measurement runs in a child process (this binary re-executed
//! with the hidden `rss-probe` subcommand) that opens the database, serves `working_memory(50)`
//! calls and reports its `VmHWM` from `/proc/self/status`, so the build phase never counts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use palimpsest::Durability;
use serde_json::{Value, json};

use crate::Plan;
use crate::reads::{WINDOW, wm_us};
use crate::stats::{median, paired_ratio, round};
use crate::workload::{self, log};

/// Name of the hidden subcommand the parent runs in a child.
pub const PROBE_COMMAND: &str = "rss-probe";

/// A field of `/proc/self/status` in kB (`VmHWM`, `VmRSS`).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("/proc/self/status has no {field} line"))
}

/// The child's side: open, serve `calls` working-memory reads, and with `delete` then delete the
/// session and wait for its purge; print one JSON line.
pub fn probe(db: &Path, session: &str, calls: usize, delete: bool) {
    let runtime = crate::runtime();
    let start = Instant::now();
    let engine = workload::open(db, Durability::Buffered);
    let open_ms = start.elapsed().as_secs_f64() * 1e3;
    let rss_after_open_kb = status_kb("VmRSS");
    let session = workload::session(&engine, session);
    let wm50_us = runtime.block_on(wm_us(&session, calls));
    let (mut delete_ms, mut purge_ms, mut hwm_before_delete_kb) = (0.0, 0.0, 0);
    if delete {
        hwm_before_delete_kb = status_kb("VmHWM");
        let start = Instant::now();
        runtime.block_on(session.delete()).expect("delete");
        delete_ms = start.elapsed().as_secs_f64() * 1e3;
        assert!(engine.wait_for_purges(std::time::Duration::from_secs(600)), "the purge finishes");
        purge_ms = start.elapsed().as_secs_f64() * 1e3;
    }
    let report = json!({
        "delete_ms": round(delete_ms, 2),
        "purge_ms": round(purge_ms, 1),
        "vm_hwm_before_delete_kb": hwm_before_delete_kb,
        "vm_hwm_kb": status_kb("VmHWM"),
        "vm_rss_kb": status_kb("VmRSS"),
        "vm_rss_after_open_kb": rss_after_open_kb,
        "open_ms": round(open_ms, 1),
        "wm50_us": round(wm50_us, 2),
        "window": WINDOW,
    });
    println!("{report}");
}

/// The parent's side: run one child and parse its report.
fn run_child(db: &Path, session: &str, calls: usize) -> Value {
    run_child_with(db, session, calls, false)
}

fn run_child_with(db: &Path, session: &str, calls: usize, delete: bool) -> Value {
    let exe: PathBuf = std::env::current_exe().expect("the path of this binary");
    let mut command = Command::new(exe);
    command.arg(PROBE_COMMAND).arg("--db").arg(db).arg("--session").arg(session).arg("--calls").arg(calls.to_string());
    if delete {
        command.arg("--delete");
    }
    let output = command.output().expect("running the rss probe");
    assert!(output.status.success(), "the rss probe failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the rss probe prints one JSON object")
}

fn field(report: &Value, name: &str) -> f64 {
    report[name].as_f64().unwrap_or_else(|| panic!("the rss probe report lacks {name}: {report}"))
}

/// A diagnostic for p7: the large database's peak RSS again after its memtables were flushed to
/// disk tables (so its next open replays no journal into memory). Run last: it changes the
/// database's state from "just restarted" to "flushed".
pub fn rss_after_flush(plan: &Plan, large: (&Path, &str)) -> Value {
    crate::raw::RawDb::flush_dir(large.0);
    let mut hwm = vec![];
    let mut open_ms = vec![];
    for repeat in 0..plan.rss_repeats {
        let l = run_child(large.0, large.1, plan.rss_calls);
        hwm.push(field(&l, "vm_hwm_kb"));
        open_ms.push(field(&l, "open_ms"));
        log(format!("p7 diagnostic repeat {repeat}: large, flushed {l}"));
    }
    json!({
        "p7_diag_peak_rss_kb_large_flushed": median(&hwm),
        "p7_diag_open_ms_large_flushed": round(median(&open_ms), 1),
    })
}

/// Runs p7 over two closed databases, alternating children of each.
pub fn rss_growth(plan: &Plan, large: (&Path, &str), small: (&Path, &str)) -> Value {
    let (mut hwm_large, mut hwm_small, mut after_open_large, mut after_open_small) = (vec![], vec![], vec![], vec![]);
    let (mut open_large, mut open_small) = (vec![], vec![]);
    for repeat in 0..plan.rss_repeats {
        let l = run_child(large.0, large.1, plan.rss_calls);
        let s = run_child(small.0, small.1, plan.rss_calls);
        hwm_large.push(field(&l, "vm_hwm_kb"));
        hwm_small.push(field(&s, "vm_hwm_kb"));
        after_open_large.push(field(&l, "vm_rss_after_open_kb"));
        after_open_small.push(field(&s, "vm_rss_after_open_kb"));
        open_large.push(field(&l, "open_ms"));
        open_small.push(field(&s, "open_ms"));
        log(format!("p7 repeat {repeat}: large {l}, small {s}"));
    }
    json!({
        "p7_rss_growth": round(paired_ratio(&hwm_large, &hwm_small), 3),
        "p7_peak_rss_kb_large": median(&hwm_large),
        "p7_peak_rss_kb_small": median(&hwm_small),
        "p7_rss_after_open_kb_large": median(&after_open_large),
        "p7_rss_after_open_kb_small": median(&after_open_small),
        "p7_open_ms_large": round(median(&open_large), 1),
        "p7_open_ms_small": round(median(&open_small), 1),
        "p7_wm50_calls": plan.rss_calls,
    })
}

/// Deleting a session records one small batch and purges the dead events in bounded chunks, so the
/// peak RSS of a child that deletes the large session should match one that deletes the small one.
/// One run each (a deletion consumes its database).
pub fn deletion(plan: &Plan, large: (&Path, &str), small: (&Path, &str)) -> Value {
    let l = run_child_with(large.0, large.1, plan.rss_calls, true);
    let s = run_child_with(small.0, small.1, plan.rss_calls, true);
    log(format!("deletion: large {l}, small {s}"));
    json!({
        "delete_rss_growth": round(field(&l, "vm_hwm_kb") / field(&s, "vm_hwm_kb"), 3),
        "delete_peak_rss_kb_large": field(&l, "vm_hwm_kb"),
        "delete_peak_rss_kb_small": field(&s, "vm_hwm_kb"),
        "delete_hwm_before_delete_kb_large": field(&l, "vm_hwm_before_delete_kb"),
        "delete_ms_large": field(&l, "delete_ms"),
        "delete_ms_small": field(&s, "delete_ms"),
        "purge_ms_large": field(&l, "purge_ms"),
    })
}
