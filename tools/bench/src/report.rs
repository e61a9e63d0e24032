//! The targets and the two output forms: one JSON object (`--json`) and a human table. The table
//! is printed from the JSON object, so both always show the same figures.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// How a ratio must compare with its bound.
#[derive(Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

/// Each ratio, its target, and the raw figures behind it (shown in the table). Round 1's ratios
/// first, then round 2's (issue 12); `p2_read_vs_raw` now names the cold read (round 1 measured the
/// session read by the previous call, which is `p2w_read_warm_vs_raw` now) and `p6_replay_vs_raw`
/// carries round 2's target.
const TARGETS: &[(&str, Bound, &[&str])] = &[
    ("p1_read_growth", Bound::AtMost(1.5), &["p1_wm50_us_large", "p1_wm50_us_small"]),
    ("p2_read_vs_raw", Bound::AtMost(1.5), &["p2_cold_wm50_us", "p2_cold_raw_head_rev50_us"]),
    ("p2w_read_warm_vs_raw", Bound::AtMost(0.5), &["p2w_wm50_us", "p2_raw_head_rev50_us"]),
    (
        "p3_append_vs_raw",
        Bound::AtLeast(0.5),
        &["p3_engine_appends_per_s", "p3_raw_inserts_per_s", "p3_raw_event_head_batches_per_s"],
    ),
    (
        "p3_append_vs_raw_event_head_batch",
        Bound::AtLeast(0.7),
        &["p3_engine_appends_per_s", "p3_raw_event_head_batches_per_s"],
    ),
    (
        "p4_group_commit_gain",
        Bound::AtLeast(20.0),
        &["p4_sync_appends_per_s_many", "p4_sync_appends_per_s_one", "p4_raw_insert_fsync_per_s"],
    ),
    (
        "p4_group_commit_vs_floor",
        Bound::AtLeast(0.5),
        &["p4_sync_appends_per_s_many", "p4_raw_batch_fsync_events_per_s"],
    ),
    ("p5_compaction_stall", Bound::AtMost(1.5), &["p5_append_p99_us_stalled", "p5_append_p99_us_idle"]),
    (
        "p5_p999_compaction_stall",
        Bound::AtMost(2.0),
        &["p5_append_p999_us_stalled", "p5_append_p999_us_idle", "p5_p999_compaction_ms"],
    ),
    ("p6_replay_vs_raw", Bound::AtLeast(0.5), &["p6_audit_events_per_s", "p6_raw_scan_keys_per_s"]),
    (
        "p7_rss_growth",
        Bound::AtMost(1.5),
        &["p7_peak_rss_kb_large", "p7_peak_rss_kb_small", "p7_diag_peak_rss_kb_large_flushed"],
    ),
    ("p8_open_growth", Bound::AtMost(3.0), &["p8_open_ms_large", "p8_open_ms_small", "p8_large_messages"]),
    ("p8_open_vs_raw", Bound::AtMost(1.2), &["p8_open_ms_large", "p8_raw_open_ms_large"]),
    ("p9_scale_10m_wm50", Bound::AtMost(1.5), &["p9_wm50_us", "p9_p10_small_wm50_us", "p9_messages"]),
    ("p9_scale_10m_append", Bound::AtMost(1.5), &["p9_append_us", "p9_p10_small_append_us", "p9_messages"]),
    ("p10_sessions_100k_wm50", Bound::AtMost(2.0), &["p10_wm50_us", "p9_p10_small_wm50_us", "p10_sessions"]),
    ("p10_sessions_100k_append", Bound::AtMost(2.0), &["p10_append_us", "p9_p10_small_append_us", "p10_sessions"]),
];

impl Bound {
    fn met(self, value: f64) -> bool {
        match self {
            Bound::AtMost(b) => value <= b,
            Bound::AtLeast(b) => value >= b,
        }
    }

    fn describe(self) -> String {
        match self {
            Bound::AtMost(b) => format!("<= {b}"),
            Bound::AtLeast(b) => format!(">= {b}"),
        }
    }
}

/// Adds `targets` (ratio -> met) and `all_targets_met`.
pub fn finish(mut out: Map<String, Value>) -> Value {
    let mut met = Map::new();
    for &(name, bound, _) in TARGETS {
        let value = out.get(name).and_then(Value::as_f64);
        met.insert(name.to_string(), json!(value.is_some_and(|v| bound.met(v))));
    }
    let all = met.values().all(|v| v.as_bool() == Some(true));
    out.insert("targets_met".into(), Value::Object(met));
    out.insert("all_targets_met".into(), json!(all));
    Value::Object(out)
}

/// The human table.
pub fn table(out: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "palimpsest-bench: cores {}, quick {}, large session {} messages, {} repeats, {} s",
        out["cores"], out["quick"], out["large_session_messages"], out["repeats"], out["elapsed_s"]
    );
    let _ = writeln!(s, "{:<34} {:>9} {:>8} {:>4}  raw figures (medians)", "ratio", "value", "target", "met");
    for &(name, bound, raw) in TARGETS {
        let met = if out["targets_met"][name].as_bool() == Some(true) { "yes" } else { "NO" };
        let figures: Vec<String> = raw.iter().map(|r| format!("{r}={}", out[*r])).collect();
        let value = out[name].to_string();
        let _ = writeln!(s, "{name:<34} {value:>9} {:>8} {met:>4}  {}", bound.describe(), figures.join(" "));
    }
    let scaling = &out["scaling"];
    let _ = writeln!(s, "\nscaling (buffered appends, working_memory({})):", scaling["window"]);
    let mut line = |cells: [String; 4]| {
        let _ = writeln!(s, "{:>10} {:>20} {:>12} {:>12}", cells[0], cells[1], cells[2], cells[3]);
    };
    line(["sessions".into(), "messages per session".into(), "append_us".into(), "wm50_us".into()]);
    for row in scaling["by_session_messages"].as_array().into_iter().flatten() {
        line(["1".into(), row["messages"].to_string(), row["append_us"].to_string(), row["wm50_us"].to_string()]);
    }
    for row in scaling["by_session_count"].as_array().into_iter().flatten() {
        let cells = [&row["sessions"], &row["messages_per_session"], &row["append_us"], &row["wm50_us"]];
        line(cells.map(Value::to_string));
    }
    s
}
