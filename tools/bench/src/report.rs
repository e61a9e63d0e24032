//! The targets and the two output forms: one JSON object (`--json`) and a human table. The table
//! is printed from the JSON object, so both always show the same figures.
//!
//! The JetStream targets ([`NATS_TARGETS`]) count only in a run that was given a nats-server:
//! without one their `targets_met` entries are null and `all_targets_met` speaks for the rest. A
//! run given one whose cluster failed counts them as not met.

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
        &[
            "p3_engine_appends_per_s",
            "p3_raw_event_head_batches_per_s",
            "p3_engine_no_extraction_appends_per_s",
            "p3_no_extraction_vs_raw_event_head_batch",
            "p3_raw_event_head_batches_from_bytes_per_s",
            "p3_append_vs_raw_batch_from_bytes",
        ],
    ),
    (
        "p4_group_commit_gain",
        Bound::AtLeast(20.0),
        &["p4_sync_appends_per_s_many", "p4_sync_appends_per_s_one", "p4_raw_insert_fsync_per_s"],
    ),
    (
        "p4_group_commit_vs_floor",
        Bound::AtLeast(0.5),
        &[
            "p4_sync_appends_per_s_many",
            "p4_raw_batch_fsync_events_per_s",
            "p4_raw_batch_with_heads_fsync_events_per_s",
            "p4_vs_floor_with_heads",
        ],
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
    (
        "p10_sessions_100k_wm50",
        Bound::AtMost(2.0),
        &[
            "p10_wm50_us",
            "p9_p10_small_wm50_us",
            "p10_sessions",
            "p10_raw_wm50_growth",
            "p10_raw_many_head_rev50_us",
            "p10_raw_one_head_rev50_us",
        ],
    ),
    (
        "p10_sessions_100k_append",
        Bound::AtMost(2.0),
        &[
            "p10_append_us",
            "p9_p10_small_append_us",
            "p10_sessions",
            "p10_raw_append_growth",
            "p10_raw_many_append_us",
            "p10_raw_one_append_us",
        ],
    ),
];

/// The JetStream targets (issue 11), measured by `nats` when a nats-server binary is given.
const NATS_TARGETS: &[(&str, Bound, &[&str])] = &[
    (
        "nats_append_vs_raw_64_sessions",
        Bound::AtLeast(0.7),
        &["nats_append_per_s_64_sessions", "nats_raw_append_per_s_64_sessions"],
    ),
    (
        "nats_append_vs_raw_1_session",
        Bound::AtLeast(0.7),
        &["nats_append_per_s_1_session", "nats_raw_append_per_s_1_session"],
    ),
    ("nats_wm50_growth", Bound::AtMost(1.5), &["nats_wm50_us_100k", "nats_wm50_us_100"]),
];

/// Whether the JetStream figures were left out on purpose (no nats-server given).
fn nats_skipped(out: &Map<String, Value>) -> bool {
    out.get("nats_skipped").is_some_and(Value::is_string)
}

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

/// Adds `targets_met` (ratio -> met, or null for a JetStream target not measured on purpose) and
/// `all_targets_met`.
pub fn finish(mut out: Map<String, Value>) -> Value {
    let mut met = Map::new();
    let skipped = nats_skipped(&out);
    for &(name, bound, _) in TARGETS.iter().chain(NATS_TARGETS) {
        let value = out.get(name).and_then(Value::as_f64);
        let counted = !(skipped && NATS_TARGETS.iter().any(|t| t.0 == name));
        met.insert(name.to_string(), if counted { json!(value.is_some_and(|v| bound.met(v))) } else { Value::Null });
    }
    // Null entries (skipped on purpose) neither meet nor miss.
    let all = met.values().all(|v| v.as_bool() != Some(false));
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
    for &(name, bound, raw) in TARGETS.iter().chain(NATS_TARGETS) {
        let met = match out["targets_met"][name].as_bool() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let figures: Vec<String> = raw.iter().map(|r| format!("{r}={}", out[*r])).collect();
        let value = out[name].to_string();
        let _ = writeln!(s, "{name:<34} {value:>9} {:>8} {met:>4}  {}", bound.describe(), figures.join(" "));
    }
    if let Some(why) = out["nats_skipped"].as_str() {
        let _ = writeln!(s, "nats_* not measured: {why}");
    } else if let Some(why) = out["nats_failed"].as_str() {
        let _ = writeln!(s, "nats_* not measured, the cluster failed: {why}");
    } else {
        let c = &out["nats_cluster"];
        let _ = writeln!(
            s,
            "nats: {} nodes of nats-server {} on loopback (sync_interval: always), clients on {}, stream leader {}; \
             records {} bytes; working memory with the window cache off: {} us at 100 messages, {} us at 100k \
             (growth {}); 100k messages written in {} s",
            c["nodes"],
            c["server_version"].as_str().unwrap_or("?"),
            c["client_node"].as_str().unwrap_or("?"),
            c["stream_leader"].as_str().unwrap_or("?"),
            out["nats_record_bytes_mean"],
            out["nats_wm50_uncached_us_100"],
            out["nats_wm50_uncached_us_100k"],
            out["nats_wm50_uncached_growth"],
            out["nats_fill_100k_s"],
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn met_all_but_nats() -> Map<String, Value> {
        let mut out = Map::new();
        for &(name, bound, _) in TARGETS {
            let value = match bound {
                Bound::AtMost(b) => b,
                Bound::AtLeast(b) => b,
            };
            out.insert(name.to_string(), json!(value));
        }
        out
    }

    #[test]
    fn nats_targets_skipped_on_purpose_neither_meet_nor_miss() {
        let mut out = met_all_but_nats();
        out.extend(crate::nats::unmeasured_for_tests("nats_skipped"));
        let out = finish(out);
        assert_eq!(out["targets_met"]["nats_wm50_growth"], Value::Null);
        assert_eq!(out["all_targets_met"], json!(true));
        assert!(table(&out).contains("nats_* not measured: no nats-server given"));
    }

    #[test]
    fn nats_targets_of_a_failed_cluster_count_as_missed() {
        let mut out = met_all_but_nats();
        out.extend(crate::nats::unmeasured_for_tests("nats_failed"));
        let out = finish(out);
        assert_eq!(out["targets_met"]["nats_append_vs_raw_64_sessions"], json!(false));
        assert_eq!(out["all_targets_met"], json!(false));
    }

    #[test]
    fn every_nats_target_and_its_figures_are_nats_fields() {
        for &(name, _, raw) in NATS_TARGETS {
            for field in std::iter::once(&name).chain(raw) {
                assert!(crate::nats::FIELDS.contains(field), "{field} is not in nats::FIELDS");
            }
        }
    }
}
