//! Bearer tokens (on and off), the refusal to serve a non-loopback address without them, the
//! request timeout, the concurrency bound, and shutdown with requests in flight (finished when
//! they can, cut off at the bound when they cannot).

mod common;

use std::net::SocketAddr;

use common::TestServer;
use palimpsest_server::{ServeError, ServeOptions, ServerConfig, hash_token, tokens_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn tokens_are_required_when_configured_and_health_is_free() {
    let mut s = TestServer::start(|c| c.token_sha256 = vec![hash_token("s3cret")]).await;
    let get = |auth: Option<&'static str>, path: &'static str| {
        let mut req = s.client.get(s.url(path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for (auth, detail) in [
        (None, "Missing authorization header"),
        (Some("Basic abc"), "Missing bearer token"),
        (Some("Bearer wrong"), "Invalid token"),
    ] {
        let resp = get(auth, "/v1/working-memory/").await.expect("send");
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body, serde_json::json!({"detail": detail}));
    }
    assert_eq!(get(Some("Bearer s3cret"), "/v1/working-memory/").await.expect("send").status().as_u16(), 200);
    assert_eq!(get(None, "/v1/health").await.expect("send").status().as_u16(), 200);
    assert_eq!(get(None, "/metrics").await.expect("send").status().as_u16(), 401);
    let metrics = get(Some("Bearer s3cret"), "/metrics").await.expect("send").text().await.expect("text");
    assert!(metrics.contains("palimpsest_serve_auth_failures_total 4"), "{metrics}");
    assert!(metrics.contains("route=\"/v1/working-memory/\",method=\"GET\",status=\"401\""), "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn a_public_address_needs_tokens_unless_insecure() {
    let public: SocketAddr = "0.0.0.0:8000".parse().expect("addr");
    let loopback: SocketAddr = "127.0.0.1:8000".parse().expect("addr");
    let none = ServerConfig::default();
    assert!(matches!(tokens_for(&none, public, ServeOptions::default()), Err(ServeError::AuthRequired(_))));
    assert_eq!(tokens_for(&none, public, ServeOptions { insecure_no_auth: true }).expect("allowed").len(), 0);
    assert_eq!(tokens_for(&none, loopback, ServeOptions::default()).expect("loopback").len(), 0);
    let with = ServerConfig { token_sha256: vec![hash_token("t")], ..ServerConfig::default() };
    assert_eq!(tokens_for(&with, public, ServeOptions::default()).expect("tokens").len(), 1);
    // A token file: one hash a line, comments allowed; a bad line is refused.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# ops\n{}\n\n{}\n", hash_token("a"), hash_token("b"))).expect("write");
    let from_file = ServerConfig { token_file: Some(file.clone()), ..ServerConfig::default() };
    assert_eq!(tokens_for(&from_file, public, ServeOptions::default()).expect("file").len(), 2);
    std::fs::write(&file, "not a hash\n").expect("write");
    assert!(tokens_for(&from_file, public, ServeOptions::default()).is_err());
}

/// Opens a connection and sends a PUT whose body is cut short: the request stays in flight until
/// the rest is sent (or the server gives up on it).
async fn stalled_put(addr: SocketAddr, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /v1/working-memory/slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&body.as_bytes()[..body.len() / 2]).await.expect("half a body");
    stream
}

async fn status_of(stream: &mut TcpStream) -> u16 {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "the connection closed without an answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line")
}

#[tokio::test]
async fn a_request_that_takes_too_long_gets_408_and_writes_nothing() {
    let mut s = TestServer::start(|c| c.request_timeout_ms = 300).await;
    let body = r#"{"messages":[{"role":"user","content":"hello"}]}"#;
    let mut stalled = stalled_put(s.addr, body).await;
    assert_eq!(status_of(&mut stalled).await, 408);
    assert_eq!(s.engine.list_sessions(None, 10).await.expect("list").len(), 0, "the timed-out PUT wrote nothing");
    s.stop().await;
}

#[tokio::test]
async fn past_the_concurrency_bound_requests_are_refused_with_503() {
    let mut s = TestServer::start(|c| c.max_concurrent_requests = 1).await;
    let body = r#"{"messages":[{"role":"user","content":"hello","id":"m1"}]}"#;
    let mut stalled = stalled_put(s.addr, body).await;
    // Once the stalled PUT holds the only slot, every other request is refused at once.
    let mut refused = None;
    for _ in 0..1_000 {
        let resp = s.client.get(s.url("/v1/health")).send().await.expect("send");
        if resp.status().as_u16() == 503 {
            refused = Some(resp);
            break;
        }
        tokio::task::yield_now().await;
    }
    let refused = refused.expect("a request past the bound is refused");
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let detail: serde_json::Value = refused.json().await.expect("json");
    assert!(detail["detail"].is_string());
    stalled.write_all(&body.as_bytes()[body.len() / 2..]).await.expect("rest");
    assert_eq!(status_of(&mut stalled).await, 200);
    drop(stalled);
    assert_eq!(
        s.client.get(s.url("/v1/health")).send().await.expect("send").status().as_u16(),
        200,
        "the slot is free again"
    );
    s.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_a_request_in_flight_and_refuses_new_connections() {
    let mut s = TestServer::start(|c| c.shutdown_timeout_ms = 60_000).await;
    let body = r#"{"messages":[{"role":"user","content":"hello","id":"m1"}]}"#;
    let mut stalled = stalled_put(s.addr, body).await;
    s.trigger_stop();
    // Shutdown has begun once the listener refuses connections; the request is still in flight.
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while TcpStream::connect(s.addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener closes");
    assert!(!s.handle.as_ref().expect("running").is_finished(), "serve waits for the request in flight");
    stalled.write_all(&body.as_bytes()[body.len() / 2..]).await.expect("rest of the body");
    assert_eq!(status_of(&mut stalled).await, 200);
    drop(stalled);
    let report = s.handle.take().expect("running").await.expect("no panic").expect("clean");
    assert!(!report.requests_cut);
    let head = s.engine.session("slow::").expect("id").head().await.expect("head").expect("the PUT landed");
    assert_eq!(head.n_messages(), 1);
}

#[tokio::test]
async fn shutdown_cuts_off_a_request_that_never_finishes_at_the_bound() {
    let mut s = TestServer::start(|c| {
        c.shutdown_timeout_ms = 200;
        c.request_timeout_ms = 600_000;
    })
    .await;
    let _stalled = stalled_put(s.addr, r#"{"messages":[]}"#).await;
    // Make sure the server has the connection before stopping (a served request proves it runs).
    assert_eq!(s.client.get(s.url("/v1/health")).send().await.expect("send").status().as_u16(), 200);
    let report = s.stop().await;
    assert!(report.requests_cut, "{report:?}");
    assert_eq!(s.engine.list_sessions(None, 10).await.expect("list").len(), 0);
}
