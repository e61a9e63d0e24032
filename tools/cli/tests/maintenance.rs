//! `audit`, `rebuild`, `stats` and `gc` end to end: report shapes, exit codes, and orphan blobs
//! left by a deleted session being listed and collected.

mod common;

use common::{assert_one_error_line, code, demo_db, json, palimpsest, stderr, stdout};
use serde_json::Value;

fn assert_clean_report(v: &Value, sessions: u64) {
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["sessions"].as_u64(), Some(sessions), "{v}");
    assert!(v["events"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["splices"].as_u64().is_some() && v["blobs"].as_u64().is_some(), "{v}");
    assert_eq!(v["violations"], Value::Array(Vec::new()), "{v}");
    assert!(v["orphan_blobs"].is_array(), "{v}");
}

#[test]
fn audit_of_a_demo_database_is_clean_in_both_forms() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "3");
    let out = palimpsest(&["audit", "--db", &db, "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_clean_report(&v, 3);
    assert_eq!(v["splices"], 1, "the demo compacts its first session");
    assert_eq!(v["blobs"], 1);
    assert_eq!(v["orphan_blobs"], Value::Array(Vec::new()));
    assert!(stderr(&out).is_empty(), "no progress when stderr is not a terminal: {}", stderr(&out));

    let human = palimpsest(&["audit", "--db", &db]);
    assert_eq!(code(&human), 0);
    let text = stdout(&human);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "audit: ok", "{text}");
    assert!(lines[1].starts_with("3 sessions, ") && lines[1].ends_with(" checked"), "{text}");
    assert_eq!(lines.last(), Some(&"0 orphan blobs"), "{text}");
}

#[test]
fn audit_of_one_session_checks_only_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "3");
    let all = json(&palimpsest(&["audit", "--db", &db, "--json"]));
    let out = palimpsest(&["audit", "--db", &db, "--session", "demo-1-coding", "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let one = json(&out);
    assert_clean_report(&one, 1);
    assert!(one["events"].as_u64() < all["events"].as_u64(), "{one} vs {all}");
    let human = stdout(&palimpsest(&["audit", "--db", &db, "--session", "demo-2-travel"]));
    assert!(human.starts_with("audit: ok\n1 session, "), "{human}");

    let missing = palimpsest(&["audit", "--db", &db, "--session", "no-such-session"]);
    assert_eq!(code(&missing), 1);
    assert_one_error_line(&missing, "\"no-such-session\" not found");
}

#[test]
fn rebuild_of_a_clean_database_changes_nothing_and_reports_the_audit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let out = palimpsest(&["rebuild", "--db", &db, "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_clean_report(&v, 2);
    assert_eq!(v["rebuild"]["sessions"], 2, "{v}");
    assert_eq!(v["rebuild"]["heads_rewritten"], 0, "{v}");
    assert_eq!(v["rebuild"]["index_entries_fixed"], 0, "{v}");
    let human = palimpsest(&["rebuild", "--db", &db, "--session", "demo-1-coding"]);
    assert_eq!(code(&human), 0);
    let text = stdout(&human);
    assert!(
        text.starts_with("rebuild: 1 session replayed, 0 heads rewritten, 0 splice-index entries fixed\naudit: ok\n"),
        "{text}"
    );
}

#[test]
fn stats_json_counts_sessions_and_lists_their_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "3");
    let out = palimpsest(&["stats", "--db", &db, "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["sessions"], 3);
    assert_eq!(v["session_ids"], serde_json::json!(["demo-1-coding", "demo-2-travel", "demo-3-ops"]));
    let audit = json(&palimpsest(&["audit", "--db", &db, "--json"]));
    assert_eq!(v["events"], audit["events"]);
    assert!(v["event_bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    assert_eq!((&v["splices"], &v["blobs"]), (&Value::from(1), &Value::from(1)), "{v}");
    let keyspaces = v["keyspace_bytes"].as_object().expect("keyspace_bytes is an object");
    for name in ["events", "heads", "splices", "blobs", "meta"] {
        assert!(keyspaces.get(name).is_some_and(Value::is_u64), "{name}: {v}");
    }
    let human = stdout(&palimpsest(&["stats", "--db", &db]));
    assert!(human.starts_with("sessions     3\n"), "{human}");
    assert!(human.contains("\n  demo-2-travel\n"), "{human}");
}

#[test]
fn gc_lists_nothing_on_a_clean_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["gc", "--db", &db, "--dry-run"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "gc: would remove 0 orphan blobs (dry run)\n");
}

#[test]
fn a_deleted_sessions_summary_is_an_orphan_that_gc_lists_then_removes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let summary_hash =
        json(&palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--json"]))["summary"]["hash"]
            .as_str()
            .expect("the demo compacted session 1")
            .to_string();
    {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let engine = palimpsest::Engine::open(palimpsest::Config::new(&db)).expect("open");
        let session = engine.session("demo-1-coding").expect("valid id");
        runtime.block_on(session.delete()).expect("delete");
    }

    let audit = palimpsest(&["audit", "--db", &db, "--json"]);
    assert_eq!(code(&audit), 0, "an orphan is harmless: {}", stdout(&audit));
    assert_eq!(json(&audit)["orphan_blobs"], serde_json::json!([summary_hash]));
    let human = stdout(&palimpsest(&["audit", "--db", &db]));
    assert!(human.ends_with("1 orphan blob (`palimpsest gc` collects them)\n"), "{human}");

    let dry = palimpsest(&["gc", "--db", &db, "--dry-run"]);
    assert_eq!(code(&dry), 0, "stderr: {}", stderr(&dry));
    assert_eq!(stdout(&dry), format!("{summary_hash}\ngc: would remove 1 orphan blob (dry run)\n"));
    let gc = palimpsest(&["gc", "--db", &db]);
    assert_eq!(code(&gc), 0, "stderr: {}", stderr(&gc));
    assert_eq!(stdout(&gc), format!("{summary_hash}\ngc: removed 1 orphan blob\n"));
    let after = palimpsest(&["gc", "--db", &db, "--dry-run"]);
    assert_eq!(stdout(&after), "gc: would remove 0 orphan blobs (dry run)\n");
    let audit = json(&palimpsest(&["audit", "--db", &db, "--json"]));
    assert_eq!((&audit["ok"], &audit["blobs"]), (&Value::Bool(true), &Value::from(0)), "{audit}");
}

#[test]
fn commands_on_a_missing_database_exit_2_and_create_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("typo");
    let db_arg = db.to_str().expect("utf-8");
    for command in [&["audit"][..], &["rebuild"][..], &["gc"][..], &["stats"][..], &["export", "--session", "s"][..]] {
        let mut args = command.to_vec();
        args.extend_from_slice(&["--db", db_arg]);
        let out = palimpsest(&args);
        assert_eq!(code(&out), 2, "{args:?}");
        assert_one_error_line(&out, "does not exist");
        assert!(!db.exists(), "{args:?} must not create a database");
    }
}
