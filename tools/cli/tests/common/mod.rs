//! Helpers shared by the end-to-end tests: run the binary, read its output, make a demo database.

#![allow(dead_code, reason = "each test binary uses a different subset of the helpers")]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `palimpsest` with `args` (stdin empty, `RUST_LOG` unset) and waits for it.
pub fn palimpsest(args: &[&str]) -> Output {
    palimpsest_with_env(args, &[])
}

/// Runs `palimpsest` with `args` and the environment variables `env` (others as the test's, but
/// `RUST_LOG` unset unless given), stdin empty.
pub fn palimpsest_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_palimpsest"));
    command.args(args).env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the binary runs")
}

/// Runs `palimpsest` with `args`, feeding `input` on stdin.
pub fn palimpsest_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_palimpsest"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child.stdin.take().expect("piped stdin").write_all(input).expect("write stdin");
    child.wait_with_output().expect("the binary finishes")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

/// Parses stdout as exactly one JSON object on one line.
pub fn json(out: &Output) -> Value {
    let text = stdout(out);
    assert_eq!(text.lines().count(), 1, "exactly one JSON object on one line: {text}");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Plays a demo of `sessions` sessions into `<tmp>/db` and returns that path.
pub fn demo_db(tmp: &Path, sessions: &str) -> String {
    let db = tmp.join("db");
    let db = db.to_str().expect("utf-8 temp path").to_string();
    let out = palimpsest(&["demo", "--db", &db, "--sessions", sessions]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    db
}

/// Asserts one stderr line of the documented form that mentions `needle`.
pub fn assert_one_error_line(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with("palimpsest: error: "), "stderr: {err}");
    assert!(err.contains(needle), "stderr should mention {needle:?}: {err}");
}

/// Asserts that with `--json` an error is also one JSON object on stdout, `{"error": {"kind",
/// "message"}}`, of `kind`; returns its message.
pub fn assert_json_error(out: &Output, kind: &str) -> String {
    let v = json(out);
    assert_eq!(v["error"]["kind"], kind, "{v}");
    let message = v["error"]["message"].as_str().expect("the message is text").to_string();
    assert!(!message.is_empty() && !message.contains('\n'), "{v}");
    message
}

/// Starts `palimpsest serve` with `args` (add `--listen 127.0.0.1:0`), killed when dropped, and
/// waits (at most 120 s) for the line that says where it listens; returns it with the URL. Its
/// stderr keeps being drained so the server never blocks on a full pipe.
pub async fn serve(args: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palimpsest"))
        .arg("serve")
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start palimpsest serve");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let url = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(url) = line.strip_prefix("palimpsest serve: listening on ") {
                return url.trim().to_string();
            }
        }
        panic!("palimpsest serve exited before listening");
    })
    .await
    .expect("the server starts");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}
