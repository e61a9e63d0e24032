//! The `palimpsest` binary end to end: exit codes, stderr lines, the human and JSON output of
//! `demo` and `show`, the help text, and what every command shares (config, exit codes, locking).

mod common;

use common::{assert_json_error, assert_one_error_line, code, demo_db, palimpsest, stderr, stdout};
use serde_json::Value;

#[test]
fn demo_into_a_new_directory_exits_0_and_prints_the_first_sessions_messages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("db");
    let out = palimpsest(&["demo", "--db", db.to_str().expect("utf-8"), "--sessions", "4"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("session demo-1-coding, last seq "), "{text}");
    // The first session was compacted in the background: its summary comes first.
    assert!(lines[1].starts_with("summary up to #") && lines[1].contains(", blake3 "), "{text}");
    assert!(lines[2].starts_with("    ") && !lines[2].trim().is_empty(), "the summary's text: {text}");
    assert!(lines.iter().any(|l| l.starts_with('#') && l.contains(" user: ")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("    -> ") && l.ends_with(']')), "{text}");
    assert!(lines.iter().any(|l| l.contains(" tool: <- [call_1_")), "{text}");
    let [.., compacted, summary] = lines[..] else { panic!("too short: {text}") };
    let upto = lines[1].strip_prefix("summary up to #").and_then(|r| r.split(',').next()).expect("upto");
    let expected = format!("compacted #1..#{upto} of demo-1-coding into a summary while ");
    assert!(compacted.starts_with(&expected) && compacted.contains(" appended"), "{compacted}");
    assert!(summary.starts_with("demo: 4 sessions, ") && summary.contains(" messages, last seq "), "{summary}");
    assert!(stderr(&out).is_empty(), "stderr: {}", stderr(&out));
}

#[test]
fn demo_refuses_a_non_empty_directory_that_is_not_a_demo_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("notes.txt"), "mine").expect("write");
    let out = palimpsest(&["demo", "--db", tmp.path().to_str().expect("utf-8")]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "not empty");
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).expect("list").collect();
    assert_eq!(entries.len(), 1, "demo must not write next to someone's files");
    assert!(stdout(&out).is_empty());
}

#[test]
fn demo_refuses_an_existing_database_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["demo", "--db", &db]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "not empty");
}

#[test]
fn show_json_of_a_demo_session_has_the_documented_fields() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "3");
    for session in ["demo-1-coding", "demo-2-travel", "demo-3-ops"] {
        let out = palimpsest(&["show", "--db", &db, "--session", session, "--limit", "100", "--json"]);
        assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
        let text = stdout(&out);
        assert_eq!(text.lines().count(), 1, "exactly one JSON object on one line");
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["session"], session);
        let messages = v["messages"].as_array().expect("messages is an array");
        let n = messages.len() as u64;
        let seqs: Vec<u64> = messages.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
        if session == "demo-1-coding" {
            // Compacted by the demo while its conversation went on: one splice event among the
            // messages, the summary in front, and only the messages after it.
            let summary = &v["summary"];
            let upto = summary["upto"].as_u64().expect("upto");
            assert!(summary["hash"].as_str().is_some_and(|h| h.len() == 64), "{summary}");
            assert!(summary["text"].as_str().is_some_and(|t| !t.is_empty()), "{summary}");
            let n_messages = v["n_messages"].as_u64().expect("n_messages");
            assert!((44..=68).contains(&n_messages), "{session}: {n_messages} messages");
            assert_eq!(v["last_seq"].as_u64(), Some(n_messages + 1), "one splice event");
            assert_eq!(n, n_messages - upto, "every message after the summary");
            assert!(seqs[0] > upto && seqs.windows(2).all(|w| w[0] < w[1]), "oldest first: {seqs:?}");
        } else {
            assert!(v["summary"].is_null());
            assert!((40..=60).contains(&n), "{session}: {n} messages");
            assert_eq!(v["n_messages"].as_u64(), Some(n));
            assert_eq!(v["last_seq"].as_u64(), Some(n), "every demo event is a message");
            assert_eq!(messages[0]["role"], "system");
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "oldest first, dense");
        }
        let mut saw_parallel = false;
        for (idx, m) in messages.iter().enumerate() {
            let keys: Vec<&str> = m.as_object().expect("object").keys().map(String::as_str).collect();
            assert!(m["content"].is_string() && m["created_at_ms"].as_u64().is_some_and(|t| t > 0), "{m}");
            match m["role"].as_str().expect("role") {
                "assistant" if m.get("tool_calls").is_some() => {
                    let calls = m["tool_calls"].as_array().expect("tool_calls is an array");
                    assert!(!calls.is_empty(), "present only when non-empty: {m}");
                    saw_parallel |= calls.len() == 2;
                    for c in calls {
                        assert!(c["id"].is_string() && c["name"].is_string() && c["arguments"].is_string(), "{c}");
                        let args: Value = serde_json::from_str(c["arguments"].as_str().expect("str")).expect("json");
                        assert!(args.is_object());
                    }
                    // Its results follow, one per call, in order.
                    for (k, c) in calls.iter().enumerate() {
                        assert_eq!(messages[idx + 1 + k]["tool_call_id"], c["id"]);
                    }
                }
                "tool" => assert!(m["tool_call_id"].is_string(), "{m}"),
                "system" | "user" | "assistant" => {
                    assert!(!keys.contains(&"tool_calls") && !keys.contains(&"tool_call_id"), "{m}");
                }
                other => panic!("unexpected role {other}"),
            }
            assert!(!keys.contains(&"tool_call_id") || m["role"] == "tool", "{m}");
        }
        assert!(saw_parallel, "{session} has two parallel calls somewhere");
    }
}

#[test]
fn show_at_a_past_seq_is_time_travel_with_an_unknown_count() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--at", "5", "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("valid JSON");
    assert_eq!(v["last_seq"], 5);
    assert!(v["n_messages"].is_null());
    let seqs: Vec<u64> = v["messages"].as_array().expect("array").iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);

    let human = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--at", "5"]);
    assert_eq!(code(&human), 0);
    assert!(stdout(&human).starts_with("session demo-1-coding, as of seq 5"), "{}", stdout(&human));

    let past_end = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--at", "100000"]);
    assert_eq!(code(&past_end), 2, "a seq outside the log is a bad argument");
    assert_one_error_line(&past_end, "100000");
}

#[test]
fn show_human_form_limits_the_window() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    // Session 2: not compacted, and every event is a message, so the window is the last 3 seqs.
    let out = palimpsest(&["show", "--db", &db, "--session", "demo-2-travel", "--limit", "3"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let blocks = text.lines().filter(|l| l.starts_with('#')).count();
    assert!(blocks <= 3 && blocks > 0, "{text}");
    let header = text.lines().next().expect("header");
    let last: u64 = header
        .strip_prefix("session demo-2-travel, last seq ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("header names the last seq");
    let window = format!("3 messages in working memory, #{}..#{last}:", last - 2);
    assert_eq!(text.lines().nth(1), Some(window.as_str()), "{text}");
}

#[test]
fn show_of_an_unknown_session_exits_1_saying_not_found() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    for extra in [&[][..], &["--json"][..], &["--at", "3"][..]] {
        let mut args = vec!["show", "--db", &db, "--session", "no-such-session"];
        args.extend_from_slice(extra);
        let out = palimpsest(&args);
        assert_eq!(code(&out), 1, "{args:?}");
        assert_one_error_line(&out, "\"no-such-session\" not found");
        if extra.contains(&"--json") {
            assert_json_error(&out, "not_found");
        } else {
            assert!(stdout(&out).is_empty());
        }
    }
}

#[test]
fn show_of_a_missing_database_exits_2_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("typo");
    let out = palimpsest(&["show", "--db", db.to_str().expect("utf-8"), "--session", "s"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "does not exist");
    assert!(!db.exists(), "show must not create a database");
}

#[test]
fn a_bad_config_exits_2_naming_the_field_before_anything_is_opened() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("db");
    let db_arg = db.to_str().expect("utf-8");
    let json = tmp.path().join("bad.json");
    std::fs::write(&json, r#"{"limits":{"max_message_bytes":0}}"#).expect("write");
    let toml = tmp.path().join("bad.toml");
    std::fs::write(&toml, "[writes]\ntimeout_ms = \"soon\"\n").expect("write");
    let cases = [(&json, "limits.max_message_bytes"), (&toml, "writes.timeout_ms")];
    for (config, field) in cases {
        let config = config.to_str().expect("utf-8");
        let commands: [&[&str]; 10] = [
            &["demo"],
            &["show", "--session", "s"],
            &["compact", "--session", "s"],
            &["audit"],
            &["rebuild"],
            &["gc"],
            &["stats"],
            &["export", "--session", "s"],
            &["import", "--session", "s", "-"],
            &["compact", "--session", "s", "--openai-base-url", "http://127.0.0.1:9", "--model", "m"],
        ];
        for command in commands {
            let mut args = command.to_vec();
            args.extend_from_slice(&["--db", db_arg, "--config", config]);
            let out = palimpsest(&args);
            assert_eq!(code(&out), 2, "{args:?}");
            assert_one_error_line(&out, field);
            assert!(!db.exists(), "a bad config is refused before the database is touched");
        }
    }
}

#[test]
fn a_good_config_is_used_and_db_overrides_its_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let elsewhere = tmp.path().join("from-config");
    let config = tmp.path().join("ok.toml");
    let text = format!("path = {:?}\ndurability = \"buffered\"\n[limits]\nmax_batch_messages = 1\n", elsewhere);
    std::fs::write(&config, text).expect("write");
    let db = tmp.path().join("db");
    let (db, config) = (db.to_str().expect("utf-8"), config.to_str().expect("utf-8"));
    let out = palimpsest(&["demo", "--db", db, "--config", config, "--sessions", "2"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(!elsewhere.exists(), "--db wins over the config's path");
    let out = palimpsest(&["show", "--db", db, "--config", config, "--session", "demo-2-travel", "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let out = palimpsest(&["show", "--db", "/nonexistent", "--session", "a b"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "invalid session id");
    let out = palimpsest(&["show", "--session", "s"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "--db");
    let out = palimpsest(&["demo", "--db", "/nonexistent", "--sessions", "0"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "--sessions");
}

#[test]
fn help_of_every_command_has_an_example_and_the_exit_codes() {
    let commands = listed_commands();
    assert!(commands.len() >= 13 && commands.contains(&"delete".to_string()), "{commands:?}");
    let mut cases: Vec<Vec<&str>> = vec![vec!["--help"], vec!["help", "show"]];
    cases.extend(commands.iter().map(|c| vec![c.as_str(), "--help"]));
    for args in &cases {
        let out = palimpsest(args);
        assert_eq!(code(&out), 0, "{args:?}");
        let text = stdout(&out);
        assert!(text.contains("Example"), "{args:?}: {text}");
        assert!(text.contains("Exit codes"), "{args:?}: {text}");
    }
    let show = stdout(&palimpsest(&["show", "--help"]));
    for field in ["\"session\"", "\"last_seq\"", "\"n_messages\"", "\"summary\"", "\"tool_calls\"", "\"tool_call_id\""]
    {
        assert!(show.contains(field), "show --help documents {field}");
    }
}

#[test]
fn a_database_held_by_another_process_exits_2_saying_locked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let held = palimpsest::Engine::open(palimpsest::Config::new(&db)).expect("open the demo database");
    let out = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "locked");
    for command in
        [&["audit"][..], &["stats"][..], &["gc", "--dry-run"][..], &["compact", "--session", "demo-1-coding"][..]]
    {
        let mut args = command.to_vec();
        args.extend_from_slice(&["--db", &db]);
        let out = palimpsest(&args);
        assert_eq!(code(&out), 2, "{args:?}");
        assert_one_error_line(&out, "locked");
    }
    drop(held);
    let out = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
}

/// The commands `palimpsest --help` lists, in its order (`help` left out).
fn listed_commands() -> Vec<String> {
    let help = stdout(&palimpsest(&["--help"]));
    let section = help.split("Commands:\n").nth(1).expect("a Commands section");
    section
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_lists_the_commands_help_lists() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README.md");
    let line = readme
        .split("`palimpsest --help` lists the commands:")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .expect("the README names the commands after \"`palimpsest --help` lists the commands:\"");
    let in_readme: Vec<String> = line
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|c| c.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(in_readme, listed_commands(), "README's command list, in the order of --help");
}
