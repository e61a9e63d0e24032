//! The tool drains background memory extraction before it exits: a `compact` whose splice hands
//! its span to a slow model-based extractor waits for it, so the memories exist when the process
//! is gone and the next open has nothing to resume.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{code, demo_db, stderr};
use palimpsest::{Config, Engine};

/// Bound on every wait of this test for the other side (the tool or the scripted model).
const WAIT: Duration = Duration::from_secs(120);

/// One scripted chat completion: says when the request has arrived, then answers `reply` only
/// once `release` is signalled.
fn slow_model(reply: &'static str) -> (String, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    let (arrived_tx, arrived_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).expect("read");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            let complete = text.find("\r\n\r\n").is_some_and(|end| {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                buf.len() >= end + 4 + length
            });
            if complete || n == 0 {
                break;
            }
        }
        arrived_tx.send(()).expect("the test listens");
        release_rx.recv_timeout(WAIT).expect("the test releases the reply");
        let body =
            serde_json::json!({"choices": [{"message": {"content": reply}, "finish_reason": "stop"}]}).to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body.as_bytes());
    });
    (base_url, arrived_rx, release_tx)
}

#[test]
fn compact_waits_for_the_extraction_of_its_span_before_exiting() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = demo_db(tmp.path(), "2");
    let (base_url, arrived, release) = slow_model("- The user likes window seats");
    let config = tmp.path().join("config.json");
    let json = serde_json::json!({
        "extraction": {"extractor": "openai"},
        "summarizer": {"openai": {"base_url": base_url, "model": "m", "api_key": "k"}},
    });
    std::fs::write(&config, json.to_string()).expect("write config");
    let config = config.to_str().expect("utf-8 path").to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_palimpsest"))
        .args(["compact", "--db", &db, "--config", &config, "--session", "demo-2-travel", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    arrived.recv_timeout(WAIT).expect("the splice's extraction called the model");
    assert!(child.try_wait().expect("status").is_none(), "the tool waits for the extraction");
    release.send(()).expect("the model thread waits");
    let out = child.wait_with_output().expect("the tool exits");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(!stderr(&out).contains("did not finish"), "stderr: {}", stderr(&out));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let engine = Engine::open(Config::new(&db)).expect("open");
        assert_eq!(engine.guard_stats().extractions_resumed, 0, "nothing was left pending");
        let texts: Vec<_> = engine.memories("demo-2-travel", 10).expect("read").into_iter().map(|m| m.text).collect();
        assert_eq!(texts, ["The user likes window seats"]);
    });
}
