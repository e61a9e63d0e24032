//! The operator's commands end to end: delete, memories, guards, show's paging, completions,
//! JSON errors, logs and progress.

mod common;

use std::path::Path;

use common::{
    assert_json_error, assert_one_error_line, code, demo_db, json, palimpsest, palimpsest_with_env, stderr, stdout,
};

/// A config file limiting reads to `max_read` messages, next to the database.
fn read_limited_config(tmp: &Path, max_read: u64) -> String {
    let config = tmp.join("limited.json");
    std::fs::write(&config, format!(r#"{{"limits": {{"max_read_messages": {max_read}}}}}"#)).expect("write");
    config.to_str().expect("utf-8").to_string()
}

#[test]
fn delete_with_yes_deletes_waits_for_the_purge_and_the_session_is_gone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let out = palimpsest(&["delete", "--db", &db, "--session", "demo-2-travel", "--yes", "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["session"], "demo-2-travel");
    assert_eq!(v["purged"], true, "a small purge finishes within the wait: {v}");
    let deleted_at = v["deleted_at"].as_u64().expect("deleted_at is a seq");
    assert_eq!(v["n_events"].as_u64(), Some(deleted_at - 1), "{v}");

    let show = palimpsest(&["show", "--db", &db, "--session", "demo-2-travel"]);
    assert_eq!(code(&show), 1);
    assert_one_error_line(&show, "not found");
    let other = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--json"]);
    assert_eq!(code(&other), 0, "the other session is untouched: {}", stderr(&other));
    let audit = palimpsest(&["audit", "--db", &db]);
    assert_eq!(code(&audit), 0, "audit after a delete: {}", stdout(&audit));
    let human = palimpsest(&["delete", "--db", &db, "--session", "demo-1-coding", "-y"]);
    assert_eq!(code(&human), 0, "stderr: {}", stderr(&human));
    assert!(stdout(&human).starts_with("deleted demo-1-coding (") && stdout(&human).contains("purge finished"));
}

#[test]
fn delete_of_a_missing_session_exits_1_in_both_forms() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["delete", "--db", &db, "--session", "nobody", "--yes"]);
    assert_eq!(code(&out), 1);
    assert_one_error_line(&out, "not found");
    assert!(stdout(&out).is_empty(), "no JSON without --json: {}", stdout(&out));
    let out = palimpsest(&["delete", "--db", &db, "--session", "nobody", "--yes", "--json"]);
    assert_eq!(code(&out), 1);
    assert_one_error_line(&out, "not found");
    assert!(assert_json_error(&out, "not_found").contains("nobody"));
}

#[test]
fn delete_without_a_terminal_or_yes_refuses_and_deletes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["delete", "--db", &db, "--session", "demo-1-coding", "--json"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "--yes");
    assert_json_error(&out, "unusable");
    let show = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding"]);
    assert_eq!(code(&show), 0, "still there: {}", stderr(&show));
}

#[test]
fn show_from_pages_through_the_log_and_says_where_the_next_page_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--from", "3", "--limit", "4", "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    let seqs: Vec<u64> = v["events"].as_array().expect("events").iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    assert_eq!(v["next_from"], 7);
    assert_eq!(v["events"][0]["type"], "message_appended");
    assert!(v["events"][0]["message"]["role"].is_string(), "{v}");
    let last = v["last_seq"].as_u64().expect("last_seq");

    let tail = last.to_string();
    let out = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--from", &tail, "--json"]);
    let v = json(&out);
    assert_eq!(v["events"].as_array().map(Vec::len), Some(1));
    assert!(v["next_from"].is_null(), "the last page has no next: {v}");

    let human = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--from", "1", "--limit", "2"]);
    let text = stdout(&human);
    assert!(text.starts_with("#1 ") && text.ends_with("next page: --from 3\n"), "{text}");
    // The demo compacts its first session: its splice is in the log.
    let all = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--all"]);
    assert!(stdout(&all).lines().any(|l| l.contains(" [compaction: ")), "{}", stdout(&all));
}

#[test]
fn show_all_streams_a_session_longer_than_the_read_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let config = read_limited_config(tmp.path(), 5);
    // One read of more than the limit is refused, so the tool must page to show everything.
    let over = palimpsest(&[
        "show",
        "--db",
        &db,
        "--config",
        &config,
        "--session",
        "demo-1-coding",
        "--from",
        "1",
        "--limit",
        "6",
    ]);
    assert_eq!(code(&over), 2, "stderr: {}", stderr(&over));
    assert_one_error_line(&over, "max_read_messages");

    let out = palimpsest(&["show", "--db", &db, "--config", &config, "--session", "demo-1-coding", "--all", "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object per line"))
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(seqs.len() > 5 * 4, "a demo session is several pages long: {}", seqs.len());
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "every event once, in order");
    let page =
        palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--from", "1", "--limit", "1000", "--json"]);
    assert_eq!(json(&page)["last_seq"].as_u64(), seqs.last().copied(), "up to the last event");

    let from =
        palimpsest(&["show", "--db", &db, "--config", &config, "--session", "demo-1-coding", "--all", "--from", "9"]);
    assert!(stdout(&from).starts_with("#9 "), "{}", stdout(&from));
}

#[test]
fn show_refuses_at_with_from_and_a_missing_session_with_all() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--at", "3", "--from", "2", "--json"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "--at");
    assert_json_error(&out, "usage");
    let out = palimpsest(&["show", "--db", &db, "--session", "nobody", "--all", "--json"]);
    assert_eq!(code(&out), 1);
    assert_json_error(&out, "not_found");
    let out = palimpsest(&["show", "--db", &db, "--session", "demo-1-coding", "--from", "0"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "--from");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_lists_what_extraction_wrote_by_namespace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("db");
    {
        let engine = palimpsest::Engine::open(palimpsest::Config::new(&path)).expect("open");
        let session = engine.session("alice:chat-1").expect("valid id");
        for i in 0..30 {
            let text = if i == 2 { "I prefer window seats on long flights.".to_string() } else { format!("turn {i}") };
            session.append(palimpsest::Message::user(text)).await.expect("append");
            session.append(palimpsest::Message::assistant(format!("ok {i}"))).await.expect("append");
        }
        session.compact(palimpsest::CompactionRequest::default()).await.expect("compact");
        let drained = engine.drain(std::time::Duration::from_secs(60), false).await;
        assert_eq!(drained.left, 0, "extraction finished");
    }
    let db = path.to_str().expect("utf-8");
    let out = palimpsest(&["memories", "--db", db, "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    let memories = v["memories"].as_array().expect("memories");
    assert_eq!(memories.len(), 1, "{v}");
    assert_eq!(memories[0]["namespace"], "alice");
    assert_eq!(memories[0]["session"], "alice:chat-1");
    assert!(memories[0]["text"].as_str().is_some_and(|t| t.contains("window seats")), "{v}");
    let named = palimpsest(&["memories", "--db", db, "--namespace", "alice", "--limit", "5"]);
    assert!(stdout(&named).starts_with("[alice] ") && stdout(&named).ends_with("1 memory\n"), "{}", stdout(&named));
    let other = palimpsest(&["memories", "--db", db, "--namespace", "bob", "--json"]);
    assert_eq!(json(&other)["memories"].as_array().map(Vec::len), Some(0));

    let over = palimpsest(&["memories", "--db", db, "--limit", "100000000", "--json"]);
    assert_eq!(code(&over), 2);
    assert_one_error_line(&over, "max_read_messages");
    assert_json_error(&over, "invalid_argument");
    let bad = palimpsest(&["memories", "--db", db, "--limit", "many"]);
    assert_eq!(code(&bad), 2);
    assert_one_error_line(&bad, "--limit");
}

#[test]
fn guards_prints_every_counter_and_the_pending_purges() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let out = palimpsest(&["guards", "--db", &db, "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["purges_pending"], 0);
    for counter in ["lock_retries", "lock_timeouts", "background_permits", "background_waiters", "extractions_pending"]
    {
        assert!(v["guards"][counter].is_u64(), "{counter} in {v}");
    }
    assert_eq!(v["guards"]["background_permits"], 2, "the default budget");
    let human = palimpsest(&["guards", "--db", &db]);
    let text = stdout(&human);
    assert!(text.starts_with("purges_pending ") && text.lines().any(|l| l.starts_with("lock_timeouts ")), "{text}");
    let missing = palimpsest(&["guards", "--db", &format!("{db}-missing"), "--json"]);
    assert_eq!(code(&missing), 2);
    assert_json_error(&missing, "unusable");
}

#[test]
fn completions_are_printed_for_each_shell_and_a_bad_shell_is_a_usage_error() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = palimpsest(&["completions", shell]);
        assert_eq!(code(&out), 0, "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("palimpsest") && stdout(&out).contains("memories"), "{shell}");
    }
    let out = palimpsest(&["completions", "tcsh"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "tcsh");
}

#[test]
fn demo_json_is_one_object_with_the_first_sessions_working_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("db");
    let db = db.to_str().expect("utf-8");
    let out = palimpsest(&["demo", "--db", db, "--sessions", "2", "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["sessions"], 2);
    assert_eq!(v["database"], db);
    assert_eq!(v["working_memory"]["session"], "demo-1-coding");
    let upto = v["compacted_upto"].as_u64().expect("the demo's compaction splices");
    assert_eq!(v["working_memory"]["summary"]["upto"].as_u64(), Some(upto), "{v}");
    let follow_ups = v["appended_during_compaction"].as_u64().zip(v["appended_after"].as_u64()).map(|(a, b)| a + b);
    assert!(follow_ups.is_some_and(|n| n > 0), "{v}");
    let again = palimpsest(&["demo", "--db", db, "--json"]);
    assert_eq!(code(&again), 2, "a used directory is refused");
    assert_json_error(&again, "unusable");
}

#[test]
fn json_flag_turns_usage_errors_into_one_object_on_stdout() {
    let out = palimpsest(&["stats", "--db", "/nonexistent", "--json", "--bogus"]);
    assert_eq!(code(&out), 2);
    assert_one_error_line(&out, "--bogus");
    assert!(assert_json_error(&out, "usage").contains("--bogus"));
    let out = palimpsest(&["gc", "--db", "/nonexistent", "--json"]);
    assert_eq!(code(&out), 2);
    assert_json_error(&out, "unusable");
    let out = palimpsest(&["stats", "--db", "/nonexistent", "--bogus"]);
    assert!(stdout(&out).is_empty(), "no JSON without --json");
}

#[test]
fn rust_log_info_surfaces_engine_events_and_the_default_is_quiet() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "1");
    let args = ["stats", "--db", db.as_str(), "--json"];
    let quiet = palimpsest(&args);
    assert_eq!(code(&quiet), 0);
    assert!(stderr(&quiet).is_empty(), "warn by default, and nothing to warn about: {}", stderr(&quiet));
    let info = palimpsest_with_env(&args, &[("RUST_LOG", "palimpsest=info")]);
    assert_eq!(code(&info), 0);
    assert!(stderr(&info).lines().any(|l| l.contains("INFO") && l.contains("engine open")), "{}", stderr(&info));
    json(&info);

    let as_json = palimpsest_with_env(
        &["--log-format", "json", "stats", "--db", db.as_str()],
        &[("RUST_LOG", "palimpsest=info")],
    );
    let lines: Vec<serde_json::Value> =
        stderr(&as_json).lines().map(|l| serde_json::from_str(l).expect("each log line is one JSON object")).collect();
    assert!(lines.iter().any(|v| v["fields"]["message"] == "engine open"), "{lines:?}");
    let bad = palimpsest(&["--log-format", "xml", "stats", "--db", db.as_str()]);
    assert_eq!(code(&bad), 2);
    assert_one_error_line(&bad, "xml");
}

#[test]
fn on_a_pipe_progress_is_absent_and_only_the_result_is_printed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let out_file = tmp.path().join("travel.jsonl");
    let out_file = out_file.to_str().expect("utf-8");
    for args in [
        vec!["audit", "--db", db.as_str()],
        vec!["rebuild", "--db", db.as_str()],
        vec!["export", "--db", db.as_str(), "--session", "demo-2-travel", "--out", out_file],
    ] {
        let out = palimpsest(&args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: nothing on stderr: {}", stderr(&out));
    }
    let copy = tmp.path().join("copy");
    let out = palimpsest(&["import", "--db", copy.to_str().expect("utf-8"), "--session", "t", out_file, "--json"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(stderr(&out).is_empty(), "import: nothing on stderr: {}", stderr(&out));
    assert_eq!(json(&out)["session"], "t");
}

/// A model endpoint that answers every request with HTTP 503; returns its base URL and the number
/// of requests it has answered so far.
fn overloaded_model() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::Ordering;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the request head and its body (by content-length), then answer.
            while let Ok(n) = stream.read(&mut chunk) {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let complete = text.find("\r\n\r\n").is_some_and(|end| {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                        .unwrap_or(0);
                    buf.len() >= end + 4 + length
                });
                if complete || n == 0 {
                    break;
                }
            }
            let body = r#"{"error":{"message":"overloaded, try later"}}"#;
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (base_url, answered)
}

#[test]
fn an_engine_warning_reaches_the_operator_once_at_the_default_level() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let (base_url, answered) = overloaded_model();
    let out = palimpsest(&[
        "compact",
        "--db",
        &db,
        "--session",
        "demo-2-travel",
        "--openai-base-url",
        &base_url,
        "--model",
        "m",
    ]);
    assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
    let err = stderr(&out);
    let warnings: Vec<&str> =
        err.lines().filter(|l| l.contains("WARN") && l.contains("summarizer provider returned an error")).collect();
    let requests = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(requests >= 1, "the model was asked");
    assert_eq!(warnings.len(), requests, "one warning per failed request, each printed once: {err}");
    assert!(warnings[0].contains("503"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("palimpsest: error: ")).count(), 1, "{err}");
}
