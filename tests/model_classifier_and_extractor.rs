//! The model-based episode classifier and memory extractor against a scripted in-process
//! OpenAI-compatible server: how replies become decisions and memories, and that a wedged model
//! delays a turn by `episodes.classify_timeout_ms` at most (on both backends: `on_both_backends!`).

mod backends;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::Store;
use palimpsest::{
    BoundaryReason, ClassifierKind, ClassifyInput, Components, EpisodeClassifier, EpisodeDecision, ExtractInput,
    MemoryExtractor, Message, OpenAiClassifier, OpenAiConfig, OpenAiExtractor, OpenAiSummarizer, Seq, SessionId,
    StoredMessage,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves one scripted chat-completion reply per connection, in order; `None` hangs (never answers).
async fn serve(replies: Vec<Option<&'static str>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        for reply in replies {
            let (mut stream, _) = listener.accept().await.expect("accept");
            tokio::spawn(async move {
                // Read the head and the body's declared length, then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = stream.read(&mut chunk).await.expect("read");
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                    if n == 0 {
                        return;
                    }
                }
                let Some(content) = reply else {
                    std::future::pending::<()>().await;
                    return;
                };
                let body = json!({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]}).to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    base_url
}

fn client(base_url: String) -> Arc<OpenAiSummarizer> {
    let cfg = OpenAiConfig { base_url, api_key: Some("k".to_string()), ..OpenAiConfig::default() };
    Arc::new(OpenAiSummarizer::new(&cfg).expect("client"))
}

fn input(message: &str) -> ClassifyInput {
    ClassifyInput {
        session: SessionId::new("alice:1").expect("id"),
        episode: 0,
        episode_turns: 1,
        recent: vec![StoredMessage { seq: Seq::new(1), at_ms: 0, message: Message::user("book a flight") }],
        message: Message::user(message),
    }
}

#[tokio::test]
async fn the_model_classifier_reads_continue_or_new_and_refuses_anything_else() {
    let url = serve(vec![Some("NEW"), Some("Continue."), Some("maybe?")]).await;
    let classifier = OpenAiClassifier::new(client(url));
    assert_eq!(classifier.classify(input("write a poem")).await.expect("reply"), EpisodeDecision::NewTask);
    assert_eq!(classifier.classify(input("and a hotel")).await.expect("reply"), EpisodeDecision::Continue);
    assert!(classifier.classify(input("hm")).await.is_err(), "an unclear reply is an error (a fallback)");
}

#[tokio::test]
async fn replies_decorated_with_terminal_codes_are_read_like_plain_ones() {
    let url = serve(vec![
        Some("\u{1b}[1mNEW\u{1b}[0m"),
        Some("\u{1b}[32m- The user likes tea.\u{1b}[0m\r\n- Oslo\u{7} is home."),
    ])
    .await;
    let c = client(url);
    let classifier = OpenAiClassifier::new(Arc::clone(&c));
    assert_eq!(classifier.classify(input("write a poem")).await.expect("reply"), EpisodeDecision::NewTask);
    let extractor = OpenAiExtractor::new(c);
    let span = ExtractInput {
        session: SessionId::new("alice:1").expect("id"),
        namespace: "alice".to_string(),
        messages: vec![StoredMessage { seq: Seq::new(1), at_ms: 0, message: Message::user("I like tea") }],
    };
    assert_eq!(extractor.extract(span).await.expect("reply"), ["The user likes tea.", "Oslo  is home."]);
}

#[tokio::test]
async fn the_model_extractor_reads_one_memory_per_line() {
    let url = serve(vec![Some("- The user likes tea.\n- The user lives in Oslo.\nnot a memory"), Some("NONE")]).await;
    let extractor = OpenAiExtractor::new(client(url));
    let span = ExtractInput {
        session: SessionId::new("alice:1").expect("id"),
        namespace: "alice".to_string(),
        messages: vec![StoredMessage { seq: Seq::new(1), at_ms: 0, message: Message::user("I like tea") }],
    };
    let memories = extractor.extract(span.clone()).await.expect("reply");
    assert_eq!(memories, ["The user likes tea.", "The user lives in Oslo."]);
    assert!(extractor.extract(span).await.expect("reply").is_empty());
}

on_both_backends!(a_wedged_model_classifier_delays_a_turn_by_the_timeout_at_most);

async fn a_wedged_model_classifier_delays_a_turn_by_the_timeout_at_most(store: Store) {
    let url = serve(vec![None]).await;
    let engine = store
        .open_with(Components::default(), |config| {
            config.episodes.classifier = ClassifierKind::Openai;
            config.episodes.classify_timeout_ms = 1_000;
            config.summarizer.openai.base_url = url;
            config.summarizer.openai.api_key = Some("k".to_string());
        })
        .await;
    let s = engine.session("alice:1").expect("id");
    s.append_turn(Message::user("book a flight")).await.expect("first turn asks no model");
    let start = Instant::now();
    let turn = s.append_turn(Message::user("and a hotel")).await.expect("turn");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(1_000) && waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(turn.boundary.map(|b| b.reason), Some(BoundaryReason::ClassifierFallback));
}
