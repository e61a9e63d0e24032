//! The OpenAI-compatible summarizer against a scripted in-process HTTP/1.1 server: what it sends
//! (prompt content, parameters, key) and how it turns every kind of reply (good, provider error,
//! garbage, oversized, none at all) into a result or a typed error, never a panic. A reply full of
//! terminal codes and control characters is cleaned, not refused; and, against a server that
//! echoes the prompt back wrapped in such codes, every kind of real-world tool output compacts.

mod content_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use content_common::{CARGO_LOG, cases, clean_summary, is_clean, turn_with};
use palimpsest::{
    CompactionOutcome, CompactionRequest, Config, Durability, Engine, Error, MAX_PROVIDER_ERROR_BYTES, Message,
    OpenAiConfig, OpenAiSummarizer, RetryConfig, Seq, StoredMessage, Summarizer, SummarizerKind, SummaryInput,
    SummaryTask, ToolCall,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Longest any test waits on its own side (the summarizer has its own, shorter timeouts).
const TEST_WAIT: Duration = Duration::from_secs(20);

/// How the scripted server answers its one request.
enum Reply {
    /// Status, content type, body.
    Send(u16, &'static str, Vec<u8>),
    /// Read the request, then hold the connection open and never answer.
    Hang,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Reply::Send(status, "application/json", body.to_string().into_bytes())
    }
}

/// The request the server saw.
#[derive(Debug)]
struct Recorded {
    request_line: String,
    /// Header names lower-cased.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// Starts a server on 127.0.0.1:0 that serves exactly one request as scripted. Returns its base
/// URL and a receiver for the request it records (sent before it replies, so a hanging server
/// still reports what it got).
async fn serve_once(reply: Reply) -> (String, oneshot::Receiver<Recorded>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let recorded = read_request(&mut stream).await;
        let _ = tx.send(recorded);
        match reply {
            Reply::Send(status, content_type, body) => {
                let length = body.len();
                let head = format!(
                    "HTTP/1.1 {status} Scripted\r\ncontent-type: {content_type}\r\n\
                     content-length: {length}\r\nconnection: close\r\n\r\n"
                );
                // The client may hang up early (an oversized body): write errors are expected then.
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            }
            Reply::Hang => {
                // Keep the stream alive and silent until the test's runtime shuts down.
                std::future::pending::<()>().await;
                drop(stream);
            }
        }
    });
    (base_url, rx)
}

/// Reads one HTTP/1.1 request with a `content-length` body (what reqwest sends for a byte body).
async fn read_request(stream: &mut TcpStream) -> Recorded {
    let mut buf = Vec::new();
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        assert!(buf.len() < 64 << 10, "request head too long");
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before the request head ended");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..header_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before the body ended");
        body.extend_from_slice(&chunk[..n]);
    }
    Recorded { request_line, headers, body }
}

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_string(),
        model: "test-model".to_string(),
        api_key: None,
        // A name no environment sets, so "no key" really means no key.
        api_key_env: "PALIMPSEST_TEST_KEY_THAT_IS_NEVER_SET".to_string(),
        connect_timeout_ms: 5_000,
        request_timeout_ms: 10_000,
        max_tokens: 77,
        temperature: 0.25,
        // One try: these tests pin how each reply maps to a result (retries: tests/model_call_retries.rs).
        retry: RetryConfig { max_retries: 0, ..RetryConfig::default() },
    }
}

fn stored(seq: u64, message: Message) -> StoredMessage {
    StoredMessage { seq: Seq::new(seq), at_ms: 1_700_000_000_000 + seq, message }
}

/// A short agent turn with a tool call and its result.
fn conversation() -> Vec<StoredMessage> {
    vec![
        stored(1, Message::user("Deploy build 4417 of the billing service to staging-eu.")),
        stored(
            2,
            Message::assistant_tool_calls(
                "",
                vec![ToolCall::new("call_7", "deploy_service", r#"{"service":"billing","build":4417}"#)],
            ),
        ),
        stored(3, Message::tool_result("call_7", "deployed billing@4417 to staging-eu in 93 s")),
        stored(4, Message::assistant("Build 4417 is live on staging-eu.")),
    ]
}

fn input(focus: Option<&str>) -> SummaryInput {
    SummaryInput {
        task: SummaryTask::Whole,
        previous_summary: Some("The user maintains the billing service.".to_string()),
        messages: conversation(),
        partials: Vec::new(),
        focus: focus.map(str::to_string),
        max_summary_bytes: 4_096,
    }
}

fn completion(content: Value) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129},
    })
}

/// Runs one summarize call against a server scripted with `reply`; returns the result and what
/// the server received.
async fn run(cfg_edit: impl FnOnce(&mut OpenAiConfig), reply: Reply) -> (Result<String, Error>, Option<Recorded>) {
    let (base_url, recorded) = serve_once(reply).await;
    let mut cfg = config(&base_url);
    cfg_edit(&mut cfg);
    let summarizer = OpenAiSummarizer::new(&cfg).unwrap();
    let result =
        tokio::time::timeout(TEST_WAIT, summarizer.summarize(input(None))).await.expect("summarize is bounded");
    let recorded = tokio::time::timeout(TEST_WAIT, recorded).await.ok().and_then(Result::ok);
    (result, recorded)
}

fn provider_error(result: Result<String, Error>) -> (Option<u16>, String) {
    match result {
        Err(Error::Summarizer { status, message }) => (status, message),
        other => panic!("expected Error::Summarizer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_good_reply_is_returned_as_is() {
    // A trailing slash on the base URL must not produce `//v1/...`.
    let (result, recorded) =
        run(|c| c.base_url.push('/'), Reply::json(200, completion(json!("  The user deployed build 4417.\n")))).await;
    // Untrimmed: checking and trimming the text is the compaction driver's job.
    assert_eq!(result.unwrap(), "  The user deployed build 4417.\n");
    let recorded = recorded.unwrap();
    assert_eq!(recorded.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(recorded.headers.get("content-type").map(String::as_str), Some("application/json"));
}

#[tokio::test]
async fn the_request_carries_the_focus_the_transcript_and_the_parameters() {
    let (base_url, recorded) = serve_once(Reply::json(200, completion(json!("ok")))).await;
    let summarizer = OpenAiSummarizer::new(&config(&base_url)).unwrap();
    assert_eq!(summarizer.name(), "openai:test-model");
    let result =
        tokio::time::timeout(TEST_WAIT, summarizer.summarize(input(Some("keep every deploy target")))).await.unwrap();
    assert_eq!(result.unwrap(), "ok");

    let body = tokio::time::timeout(TEST_WAIT, recorded).await.unwrap().unwrap().json();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["max_tokens"], 77);
    assert_eq!(body["temperature"], 0.25);
    assert_eq!(body["stream"], false);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    assert!(!messages[0]["content"].as_str().unwrap().is_empty());
    assert_eq!(messages[1]["role"], "user");
    let user = messages[1]["content"].as_str().unwrap();
    for expected in [
        "keep every deploy target",
        "The user maintains the billing service.",
        "Deploy build 4417 of the billing service to staging-eu.",
        "deploy_service",
        "call_7",
        "deployed billing@4417 to staging-eu in 93 s",
        "Build 4417 is live on staging-eu.",
    ] {
        assert!(user.contains(expected), "the user prompt lacks {expected:?}:\n{user}");
    }
}

#[tokio::test]
async fn the_configured_api_key_is_sent_as_a_bearer_token() {
    let (result, recorded) =
        run(|c| c.api_key = Some("sk-test-123".to_string()), Reply::json(200, completion(json!("ok")))).await;
    assert_eq!(result.unwrap(), "ok");
    assert_eq!(recorded.unwrap().headers.get("authorization").map(String::as_str), Some("Bearer sk-test-123"));
}

#[tokio::test]
async fn without_a_key_no_authorization_header_is_sent() {
    let (result, recorded) = run(|_| {}, Reply::json(200, completion(json!("ok")))).await;
    assert_eq!(result.unwrap(), "ok");
    assert_eq!(recorded.unwrap().headers.get("authorization"), None);
}

#[tokio::test]
async fn a_provider_error_surfaces_its_status_and_message() {
    for status in [400, 401, 429, 500, 503] {
        let error =
            json!({"error": {"message": format!("scripted failure {status}"), "type": "server_error", "code": null}});
        let (result, _) = run(|_| {}, Reply::json(status, error)).await;
        let (got_status, message) = provider_error(result);
        assert_eq!(got_status, Some(status));
        // A passing failure says why it was not retried (this config allows one try).
        let note = if [429, 500, 503].contains(&status) {
            " (gave up after 0 retries: summarizer.openai.retry.max_retries = 0)"
        } else {
            ""
        };
        assert_eq!(message, format!("scripted failure {status}{note}"));
    }
}

#[tokio::test]
async fn a_non_json_error_body_surfaces_as_truncated_text() {
    let body = format!("<html>{}</html>", "gateway exploded ".repeat(600)).into_bytes();
    assert!(body.len() > 10_000);
    let (result, _) = run(|_| {}, Reply::Send(500, "text/html", body)).await;
    let (status, message) = provider_error(result);
    assert_eq!(status, Some(500));
    assert!(message.starts_with("<html>gateway exploded"), "{message}");
    assert!(message.len() <= MAX_PROVIDER_ERROR_BYTES + 4, "{} bytes", message.len());
}

#[tokio::test]
async fn a_long_provider_message_is_truncated() {
    let error = json!({"error": {"message": "é".repeat(3_000)}});
    let (result, _) = run(|_| {}, Reply::json(502, error)).await;
    let (status, message) = provider_error(result);
    assert_eq!(status, Some(502));
    assert!(message.len() <= MAX_PROVIDER_ERROR_BYTES + 4, "{} bytes", message.len());
    assert!(message.starts_with("éé"));
}

#[tokio::test]
async fn malformed_replies_are_typed_errors() {
    let cases: Vec<(&str, Reply)> = vec![
        ("null content", Reply::json(200, completion(Value::Null))),
        ("numeric content", Reply::json(200, completion(json!(42)))),
        ("no message", Reply::json(200, json!({"choices": [{"index": 0, "finish_reason": "stop"}]}))),
        ("no choices", Reply::json(200, json!({"id": "x", "object": "chat.completion"}))),
        ("empty choices", Reply::json(200, json!({"choices": []}))),
        ("a JSON array", Reply::json(200, json!([1, 2, 3]))),
        ("not JSON", Reply::Send(200, "text/plain", b"Service is up!".to_vec())),
        ("empty body", Reply::Send(200, "application/json", Vec::new())),
        ("truncated JSON", Reply::Send(200, "application/json", br#"{"choices":[{"message":{"content":"ha"#.to_vec())),
        ("invalid UTF-8", Reply::Send(200, "application/json", b"{\"choices\":\"\xff\xfe\"}".to_vec())),
    ];
    for (what, reply) in cases {
        let (result, _) = run(|_| {}, reply).await;
        let (status, message) = provider_error(result);
        assert_eq!(status, None, "{what}");
        assert!(message.starts_with("malformed reply: "), "{what}: {message}");
        assert!(message.len() <= MAX_PROVIDER_ERROR_BYTES, "{what}: {} bytes", message.len());
    }
}

#[tokio::test]
async fn an_oversized_reply_is_refused() {
    let huge = completion(json!("x".repeat(5 << 20)));
    let (result, _) = run(|_| {}, Reply::json(200, huge)).await;
    let (status, message) = provider_error(result);
    assert_eq!(status, None);
    assert!(message.starts_with("malformed reply: ") && message.contains("over"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_hits_the_request_timeout() {
    // reqwest's timers run on tokio's clock, so the paused clock jumps to the 300 ms deadline as
    // soon as nothing else can make progress: the test is fast and its elapsed time is exact.
    let started = tokio::time::Instant::now();
    let (result, recorded) = run(|c| c.request_timeout_ms = 300, Reply::Hang).await;
    match result {
        Err(Error::Timeout { what, after_ms }) => {
            assert_eq!(what, "the summarizer request");
            assert_eq!(after_ms, 300);
        }
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    // The request did reach the server: this was the reply that never came, not a connect failure.
    assert!(recorded.is_some());
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_summarizer_error() {
    // Bind then drop, so the port is (almost certainly) closed and the connect is refused.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    // A password in the base URL must not leak into the error.
    let summarizer = OpenAiSummarizer::new(&config(&format!("http://agent:hunter2@{addr}"))).unwrap();
    let result = tokio::time::timeout(TEST_WAIT, summarizer.summarize(input(None))).await.unwrap();
    let (status, message) = provider_error(result);
    assert_eq!(status, None);
    assert!(message.starts_with(&format!("cannot reach http://agent@{addr}/v1/chat/completions: ")), "{message}");
    assert!(message.contains("Connection refused"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn a_bad_base_url_is_refused_at_construction() {
    for url in ["not a url", "ftp://example.com"] {
        match OpenAiSummarizer::new(&config(url)) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "summarizer.openai.base_url"),
            other => panic!("{url}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_reply_with_terminal_codes_and_control_characters_is_cleaned_not_refused() {
    let content = "\x1b[1;32mDeployed\x1b[0m build 4417.\r\n\x1b]0;title\x07\x07Done\0";
    let (result, _) = run(|_| {}, Reply::json(200, completion(json!(content)))).await;
    // Cleaned but not trimmed: trimming is the driver's job, as for any reply.
    assert_eq!(result.unwrap(), "Deployed build 4417.\n Done ");
    // Only a reply that is empty once cleaned is refused, and that by the driver's check.
    let (result, _) = run(|_| {}, Reply::json(200, completion(json!("\x1b[0m\0\x07")))).await;
    assert!(palimpsest::check_summary(&result.unwrap(), 4_096).is_err());
}

#[tokio::test]
async fn the_transcript_sent_to_the_model_is_cleaned() {
    let (base_url, recorded) = serve_once(Reply::json(200, completion(json!("ok")))).await;
    let summarizer = OpenAiSummarizer::new(&config(&base_url)).unwrap();
    let mut input = input(Some("\x1b[1mbuild\x1b[0m\x07 status"));
    input.messages.push(stored(5, Message::tool_result("call_8", CARGO_LOG)));
    tokio::time::timeout(TEST_WAIT, summarizer.summarize(input)).await.unwrap().unwrap();
    let body = tokio::time::timeout(TEST_WAIT, recorded).await.unwrap().unwrap().json();
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(is_clean(user), "the prompt holds control characters: {user:?}");
    assert!(user.contains("Compiling palimpsest v0.1.0") && user.contains("Focus on: build  status"), "{user}");
}

/// Serves every request until the test ends: answers a summary request with the start of its own
/// prompt, wrapped in colour codes, an OSC title, CRLF line ends, NUL and BEL, and kept within the
/// "Stay under N characters" the prompt asks for once those codes are cleaned away. Returns the
/// base URL and a count of the requests served.
async fn serve_echo() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let request = read_request(&mut stream).await.json();
                let prompt = request["messages"][1]["content"].as_str().unwrap().to_string();
                let limit: usize = prompt
                    .split("Stay under ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .expect("the prompt states its size limit");
                let echo = &prompt[..prompt.floor_char_boundary(limit - 64)];
                let mut reply = String::from("\x1b]0;model\x07\x1b[1;32mSummary:\x1b[0m\x07\0\u{85}\r\n");
                for line in echo.lines() {
                    reply.push_str(&format!("\x1b[2m{line}\x1b[0m\r\n"));
                }
                let body = completion(json!(reply)).to_string();
                let head = format!(
                    "HTTP/1.1 200 Scripted\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (base_url, served)
}

#[tokio::test]
async fn every_kind_of_tool_output_compacts_through_the_openai_summarizer() {
    let (base_url, served) = serve_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("db"));
    cfg.durability = Durability::Buffered;
    cfg.summarizer.kind = SummarizerKind::Openai;
    cfg.summarizer.openai = config(&base_url);
    let max_bytes = cfg.compaction.max_summary_bytes as usize;
    let cfg_chunk_bytes = cfg.compaction.chunk_bytes as usize;
    let engine = Engine::open(cfg).unwrap();
    for (n, (case, content)) in cases().into_iter().enumerate() {
        let s = engine.session(format!("content:{n}")).unwrap();
        for round in 0..2 {
            // Three turns of the content: the 1 MB line makes one chunk each, so that case goes
            // through chunks and the merge; the others fit in a single call.
            for i in 0..3 {
                s.append_many(turn_with(round * 3 + i, &content)).await.unwrap();
            }
            let upto = s.head().await.unwrap().unwrap().last_seq();
            let request = CompactionRequest::upto(upto).with_focus("\x1b[1mbuild\x1b[0m\0 results");
            let before = served.load(Ordering::SeqCst);
            let outcome = tokio::time::timeout(TEST_WAIT, s.compact(request)).await.expect("bounded");
            assert!(matches!(outcome, Ok(CompactionOutcome::Spliced { .. })), "{case}, round {round}: {outcome:?}");
            let calls = served.load(Ordering::SeqCst) - before;
            if content.len() > cfg_chunk_bytes {
                assert!(calls >= 4, "{case}: chunks and a merge, got {calls} calls");
            } else {
                assert_eq!(calls, 1, "{case}: a single pass");
            }
            let summary = clean_summary(&s, max_bytes).await;
            assert!(summary.starts_with("Summary:"), "{case}: the model's reply is the summary: {summary:?}");
        }
    }
}
