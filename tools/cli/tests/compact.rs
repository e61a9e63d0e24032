//! `palimpsest compact` end to end: outcomes as JSON, progress on stderr, exit codes.

mod common;

use common::{assert_json_error, assert_one_error_line, code, demo_db, json, palimpsest, stderr, stdout};

#[test]
fn compact_splices_then_show_serves_the_summary_and_a_second_compact_has_nothing_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let out = palimpsest(&["compact", "--db", &db, "--session", "demo-2-travel", "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["session"], "demo-2-travel");
    assert_eq!(v["outcome"], "spliced", "{v}");
    let upto = v["upto"].as_u64().expect("upto is a number");
    let requested = v["requested_upto"].as_u64().expect("requested_upto is a number");
    assert!(upto >= 1 && upto <= requested, "{v}");
    let hash = v["summary_hash"].as_str().expect("summary_hash is text");
    assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
    assert!(v["reason"].is_null(), "{v}");
    // Stderr is a pipe here: one summary line, not a line per step.
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one summary line on a pipe: {err}");
    assert!(err.starts_with("loaded ") && err.contains("; strategy: single pass ("), "summary line: {err}");

    let show = palimpsest(&["show", "--db", &db, "--session", "demo-2-travel", "--json"]);
    assert_eq!(code(&show), 0, "stderr: {}", stderr(&show));
    let memory = json(&show);
    assert_eq!(memory["summary"]["upto"].as_u64(), Some(upto));
    assert_eq!(memory["summary"]["hash"], hash);
    assert!(memory["summary"]["text"].as_str().is_some_and(|t| !t.is_empty()));
    let first = memory["messages"][0]["seq"].as_u64().expect("a message after the summary");
    assert!(first > upto, "only messages after the summary: {first} <= {upto}");

    let again = palimpsest(&["compact", "--db", &db, "--session", "demo-2-travel", "--json"]);
    assert_eq!(code(&again), 0, "stderr: {}", stderr(&again));
    let v = json(&again);
    assert_eq!(v["outcome"], "nothing_to_compact", "{v}");
    assert!(v["upto"].is_null() && v["summary_hash"].is_null(), "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    let after = palimpsest(&["show", "--db", &db, "--session", "demo-2-travel", "--json"]);
    assert_eq!(json(&after), memory, "nothing to compact changes nothing");
}

#[test]
fn compact_in_human_form_says_what_was_spliced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "3");
    let out = palimpsest(&["compact", "--db", &db, "--session", "demo-3-ops", "--upto", "10", "--focus", "rollback"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("spliced demo-3-ops: "), "{text}");
    assert!(text.contains(" are now read as summary "), "{text}");
}

#[test]
fn compact_of_an_unknown_session_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["compact", "--db", &db, "--session", "no-such-session", "--json"]);
    assert_eq!(code(&out), 1);
    assert_one_error_line(&out, "\"no-such-session\" not found");
    assert_json_error(&out, "not_found");
}

#[test]
fn compact_upto_past_the_end_is_a_usage_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let out = palimpsest(&["compact", "--db", &db, "--session", "demo-2-travel", "--upto", "100000"]);
    assert_eq!(code(&out), 2, "an out-of-range argument, as `show --at`");
    assert_one_error_line(&out, "100000");
    let zero = palimpsest(&["compact", "--db", &db, "--session", "demo-2-travel", "--upto", "0"]);
    assert_eq!(code(&zero), 2);
    assert_one_error_line(&zero, "--upto");
    let focus = "f".repeat(2049);
    let long = palimpsest(&["compact", "--db", &db, "--session", "demo-2-travel", "--focus", &focus]);
    assert_eq!(code(&long), 2);
    assert_one_error_line(&long, "focus");
}

#[test]
fn an_openai_endpoint_needs_a_model_and_its_failure_exits_1_leaving_the_session_unchanged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let base = ["compact", "--db", &db, "--session", "demo-2-travel"];
    let without_model = palimpsest(&[&base[..], &["--openai-base-url", "http://127.0.0.1:9"]].concat());
    assert_eq!(code(&without_model), 2);
    assert_one_error_line(&without_model, "--model");
    let bad_url = palimpsest(&[&base[..], &["--openai-base-url", "ftp://x", "--model", "m"]].concat());
    assert_eq!(code(&bad_url), 2);
    assert_one_error_line(&bad_url, "summarizer.openai.base_url");

    let show = || json(&palimpsest(&["show", "--db", &db, "--session", "demo-2-travel", "--json"]));
    let before = show();
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let out = palimpsest(&[&base[..], &["--openai-base-url", "http://127.0.0.1:9", "--model", "m", "--json"]].concat());
    assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().expect("an error line");
    assert!(last.starts_with("palimpsest: error: summarizer failed"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("palimpsest: error: ")).count(), 1, "{err}");
    assert!(assert_json_error(&out, "summarizer").starts_with("summarizer failed"), "{}", stdout(&out));
    assert_eq!(show(), before, "a failed compaction changes nothing");
}
