//! A PUT of the stored messages plus new ones appends only the new ones (one event each); a PUT
//! that drops, edits or reorders is recorded as a reset plus the new messages, the old history
//! kept and audited; concurrent GET+PUT appends from many clients lose nothing; summarization
//! happens in the background once the messages pass 70% of the window.

mod common;

use std::collections::HashSet;

use common::{TestServer, msg};
use palimpsest::AuditOptions;
use serde_json::{Value, json};

/// Every stored event of the session, from the export (`history` starts at the latest reset).
async fn events(s: &TestServer, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    s.engine.session(id).expect("id").export_jsonl(&mut out).await.expect("export");
    String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            v["type"].as_str().unwrap_or("message_appended").to_string()
        })
        .collect()
}

fn count(kinds: &[String], name: &str) -> usize {
    kinds.iter().filter(|k| *k == name).count()
}

#[tokio::test]
async fn resending_stored_messages_appends_only_the_new_ones() {
    let mut s = TestServer::start(|c| c.summarization = false).await;
    let mut messages = vec![msg("m0", "user", "first")];
    s.call("PUT", "/v1/working-memory/a", Some(json!({"messages": messages}))).await;
    for i in 1..20 {
        // The client's pattern: GET the whole session, PUT it back with one more message.
        let (_, got) = s.call("GET", "/v1/working-memory/a", None).await;
        let mut body = got.clone();
        body["messages"].as_array_mut().expect("list").push(msg(&format!("m{i}"), "assistant", &format!("turn {i}")));
        messages.push(msg(&format!("m{i}"), "assistant", &format!("turn {i}")));
        let (status, put) = s.call("PUT", "/v1/working-memory/a", Some(body)).await;
        assert_eq!(status, 200, "{put}");
        assert_eq!(put["messages"].as_array().map(Vec::len), Some(i + 1));
    }
    let kinds = events(&s, "a::").await;
    assert_eq!(count(&kinds, "message_appended"), 20, "one event per message, never a rewrite");
    assert_eq!(count(&kinds, "messages_reset"), 0);
    assert_eq!(count(&kinds, "metadata_set"), 20, "one document per PUT");
    s.stop().await;
}

#[tokio::test]
async fn drops_edits_and_reorders_are_replacements_that_keep_the_old_history() {
    let mut s = TestServer::start(|c| c.summarization = false).await;
    let base = vec![msg("a", "user", "1"), msg("b", "assistant", "2"), msg("c", "user", "3")];
    s.call("PUT", "/v1/working-memory/r", Some(json!({"messages": base}))).await;
    let variants = [
        vec![msg("b", "assistant", "2"), msg("c", "user", "3")],
        vec![msg("b", "assistant", "2"), msg("c", "user", "edited")],
        vec![msg("c", "user", "edited"), msg("b", "assistant", "2")],
    ];
    for (n, body) in variants.iter().enumerate() {
        let (status, put) = s.call("PUT", "/v1/working-memory/r", Some(json!({"messages": body}))).await;
        assert_eq!(status, 200);
        let (_, got) = s.call("GET", "/v1/working-memory/r", None).await;
        assert_eq!(got["messages"], put["messages"]);
        let contents: Vec<&str> =
            got["messages"].as_array().expect("list").iter().filter_map(|m| m["content"].as_str()).collect();
        let want: Vec<&str> = body.iter().filter_map(|m| m["content"].as_str()).collect();
        assert_eq!(contents, want);
        assert_eq!(count(&events(&s, "r::").await, "messages_reset"), n + 1);
    }
    // Every message ever written is still in the log, audited clean.
    let mut all = Vec::new();
    s.engine.session("r::").expect("id").export_jsonl(&mut all).await.expect("export");
    let text = String::from_utf8(all).expect("utf8");
    assert_eq!(text.lines().filter(|l| l.contains("\"role\"")).count(), 3 + 2 + 2 + 2);
    assert!(s.engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit").ok);
    s.stop().await;
}

#[tokio::test]
async fn concurrent_get_put_appends_lose_nothing() {
    let mut s = TestServer::start(|c| c.summarization = false).await;
    let (sessions, clients, turns) = (3, 4, 8);
    for i in 0..sessions {
        s.call("PUT", &format!("/v1/working-memory/c{i}"), Some(json!({"messages": []}))).await;
    }
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, url) = (s.client.clone(), s.url(""));
        tasks.push(tokio::spawn(async move {
            for t in 0..turns {
                for i in 0..sessions {
                    let path = format!("{url}/v1/working-memory/c{i}");
                    let got: Value = client.get(&path).send().await.expect("get").json().await.expect("json");
                    let mut body = got.clone();
                    body["messages"].as_array_mut().expect("list").push(msg(
                        &format!("c{c}-t{t}"),
                        "user",
                        &format!("from {c} turn {t}"),
                    ));
                    let resp = client.put(&path).json(&body).send().await.expect("put");
                    assert_eq!(resp.status().as_u16(), 200);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    for i in 0..sessions {
        let (_, got) = s.call("GET", &format!("/v1/working-memory/c{i}"), None).await;
        let ids: HashSet<&str> =
            got["messages"].as_array().expect("list").iter().filter_map(|m| m["id"].as_str()).collect();
        assert_eq!(ids.len(), clients * turns, "session c{i}: every client's every append is there");
        let kinds = events(&s, &format!("c{i}::")).await;
        assert_eq!(count(&kinds, "message_appended"), clients * turns, "and each exactly once");
    }
    assert!(s.engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit").ok);
    s.stop().await;
}

#[tokio::test]
async fn summarization_runs_in_the_background_and_the_client_pattern_survives_it() {
    let mut s = TestServer::start(|_| {}).await;
    // 40 messages of 100 tokens against a window of 1,000: past 700, compacted down to what fits 400.
    let messages: Vec<Value> = (0..40).map(|i| msg(&format!("m{i}"), "user", &"w".repeat(394))).collect();
    let (status, put) =
        s.call("PUT", "/v1/working-memory/big?context_window_max=1000", Some(json!({"messages": messages}))).await;
    assert_eq!(status, 200);
    assert_eq!(put["messages"].as_array().map(Vec::len), Some(40), "the PUT answers at once, before summarizing");
    let session = s.engine.session("big::").expect("id");
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while session.head().await.expect("head").and_then(|h| h.splice().cloned()).is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a background compaction splices");
    let (_, got) = s.call("GET", "/v1/working-memory/big", None).await;
    let kept = got["messages"].as_array().expect("list").len();
    assert!(kept <= 4, "the newest messages fitting 40% stay: {kept}");
    assert!(got["context"].as_str().is_some_and(|c| !c.is_empty()), "context is the summary");
    // A client that read before the compaction PUTs the old messages plus one: only the new one lands.
    let mut stale = put.clone();
    stale["messages"].as_array_mut().expect("list").push(msg("new", "user", "after"));
    assert_eq!(s.call("PUT", "/v1/working-memory/big?context_window_max=100000", Some(stale)).await.0, 200);
    let kinds = events(&s, "big::").await;
    assert_eq!(count(&kinds, "messages_reset"), 0, "compacted messages are recognised, not replaced");
    assert_eq!(count(&kinds, "message_appended"), 41);
    assert!(s.engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit").ok);
    s.stop().await;
}

#[tokio::test]
async fn resent_messages_without_created_at_still_match() {
    let mut s = TestServer::start(|c| c.summarization = false).await;
    let bare = |id: &str, text: &str| json!({"id": id, "role": "user", "content": text});
    s.call("PUT", "/v1/working-memory/bare", Some(json!({"messages": [bare("a", "1")]}))).await;
    let (status, put) =
        s.call("PUT", "/v1/working-memory/bare", Some(json!({"messages": [bare("a", "1"), bare("b", "2")]}))).await;
    assert_eq!(status, 200, "{put}");
    let kinds = events(&s, "bare::").await;
    assert_eq!((count(&kinds, "message_appended"), count(&kinds, "messages_reset")), (2, 0));
    s.stop().await;
}
