//! Every route, its parameters, its status codes and its error bodies, as agent-memory-server
//! answers them (SPEC.md, "HTTP service"); the extension append; the fallback lookup by session
//! id alone; token truncation and context percentages.

mod common;

use common::{TestServer, msg};
use palimpsest::{AuditOptions, EventKind, Seq};
use serde_json::{Value, json};

#[tokio::test]
async fn health_answers_the_time_in_ms() {
    let mut s = TestServer::start(|_| {}).await;
    let (status, body) = s.call("GET", "/v1/health", None).await;
    assert_eq!(status, 200);
    assert!(body["now"].as_u64().expect("an integer") > 1_600_000_000_000);
    s.stop().await;
}

#[tokio::test]
async fn every_field_round_trips_through_put_and_get() {
    let mut s = TestServer::start(|_| {}).await;
    let body = json!({
        "messages": [msg("m1", "user", "hello"), msg("m2", "tool", "42"), {"role": "assistant", "content": "ok", "id": "m3",
            "created_at": "2024-05-01T10:00:01.250000Z", "persisted_at": "2024-05-02T00:00:00Z", "discrete_memory_extracted": "t"}],
        "memories": [{"id": "mem1", "text": "likes tea", "topics": ["drinks"], "memory_type": "semantic"}],
        "data": {"k": [1, 2, {"x": null}]},
        "context": "earlier talk",
        "user_id": "u1",
        "namespace": "ns1",
        "tokens": 17,
        "long_term_memory_strategy": {"strategy": "summary", "config": {"max": 3}},
        "ttl_seconds": 3600,
        "session_id": "ignored", "new_session": true, "unsaved": false, "context_percentage_total_used": 5.0,
        "unknown_field": {"ignored": true}
    });
    let (status, headers, put) = s.call_full("PUT", "/v1/working-memory/s1", Some(body)).await;
    assert_eq!(status, 200, "{put}");
    assert!(headers.get("x-deprecation-warning").is_none(), "every message had created_at");
    let (status, got) = s.call("GET", "/v1/working-memory/s1?namespace=ns1&user_id=u1", None).await;
    assert_eq!(status, 200, "{got}");
    for answer in [&put, &got] {
        let m = &answer["messages"];
        assert_eq!(m.as_array().map(Vec::len), Some(3));
        assert_eq!(
            m[0],
            json!({"role": "user", "content": "hello", "id": "m1", "created_at": "2024-05-01T10:00:00Z",
            "persisted_at": null, "discrete_memory_extracted": "f"})
        );
        assert_eq!(m[1]["role"], "tool", "a role the library lacks is kept");
        assert_eq!(m[2]["created_at"], "2024-05-01T10:00:01.250000Z");
        assert_eq!(m[2]["persisted_at"], "2024-05-02T00:00:00Z");
        assert_eq!(m[2]["discrete_memory_extracted"], "t");
        assert_eq!(
            answer["memories"],
            json!([{"id": "mem1", "text": "likes tea", "topics": ["drinks"], "memory_type": "semantic"}])
        );
        assert_eq!(answer["data"], json!({"k": [1, 2, {"x": null}]}));
        assert_eq!(answer["context"], "earlier talk");
        assert_eq!((answer["user_id"].as_str(), answer["namespace"].as_str()), (Some("u1"), Some("ns1")));
        assert_eq!(answer["session_id"], "s1");
        assert_eq!(answer["tokens"], 17);
        assert_eq!(answer["long_term_memory_strategy"], json!({"strategy": "summary", "config": {"max": 3}}));
        assert_eq!(answer["ttl_seconds"], 3600);
        for t in ["created_at", "updated_at", "last_accessed"] {
            assert!(answer[t].as_str().is_some_and(|v| v.ends_with('Z')), "{t}: {answer}");
        }
        assert_eq!(answer["context_percentage_total_used"], Value::Null);
    }
    // `data: null` is returned as {}; a message without created_at gets the deprecation header.
    let (status, headers, put) = s
        .call_full("PUT", "/v1/working-memory/s2", Some(json!({"messages": [{"role": "user", "content": "x"}]})))
        .await;
    assert_eq!(status, 200);
    assert!(headers.get("x-deprecation-warning").is_some());
    assert_eq!(put["data"], json!({}));
    assert!(put["messages"][0]["id"].as_str().is_some_and(|id| id.len() == 26), "a ULID is made");
    assert!(s.engine.audit(&AuditOptions::default(), &mut |_| {}).expect("audit").ok);
    s.stop().await;
}

#[tokio::test]
async fn errors_have_upstream_status_and_shape_and_change_nothing() {
    let mut s = TestServer::start(|c| c.max_body_bytes = 4096).await;
    let (status, body) = s.call("GET", "/v1/working-memory/missing", None).await;
    assert_eq!((status, body), (404, json!({"detail": "Session missing not found"})));
    let (status, body) =
        s.call("PUT", "/v1/working-memory/s", Some(json!({"messages": [msg("b1", "user", " \n")]}))).await;
    assert_eq!((status, body), (400, json!({"detail": "Message content cannot be empty (message ID: b1)"})));
    let future = json!({"messages": [{"role": "user", "content": "x", "created_at": "2099-01-01T00:00:00Z"}]});
    let cases = [
        (future, vec![json!("body"), json!("messages"), json!(0), json!("created_at")]),
        (json!({"memories": [{"text": "no id"}]}), vec![json!("body"), json!("memories"), json!(0)]),
        (json!({"memories": [{"id": "no text"}]}), vec![json!("body"), json!("memories"), json!(0)]),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            vec![json!("body"), json!("messages"), json!(0), json!("content")],
        ),
        (json!({"data": [1]}), vec![json!("body"), json!("data")]),
        (
            json!({"long_term_memory_strategy": {"strategy": "bogus"}}),
            vec![json!("body"), json!("long_term_memory_strategy"), json!("strategy")],
        ),
        (json!({"namespace": "bad namespace"}), vec![json!("body"), json!("namespace")]),
    ];
    for (body, loc) in cases {
        let (status, answer) = s.call("PUT", "/v1/working-memory/s", Some(body.clone())).await;
        assert_eq!(status, 422, "{body}: {answer}");
        let detail = &answer["detail"][0];
        assert_eq!(detail["loc"], Value::Array(loc), "{body}: {answer}");
        for field in ["type", "msg", "input"] {
            assert!(detail.get(field).is_some(), "{field} in {answer}");
        }
    }
    // Not JSON, too deep, too large: 4xx, nothing written.
    let (client, url) = (s.client.clone(), s.url("/v1/working-memory/s"));
    let raw = |text: String| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.put(url).body(text).send().await.expect("send").status().as_u16() }
    };
    assert_eq!(raw("{not json".to_string()).await, 422);
    assert_eq!(raw(format!("{{\"data\":{}{}}}", "[".repeat(200), "]".repeat(200))).await, 422);
    assert_eq!(raw(format!("{{\"context\":\"{}\"}}", "x".repeat(5000))).await, 413);
    assert_eq!(s.engine.list_sessions(None, 10).await.expect("list").len(), 0, "no refused request wrote anything");
    // Path and query validation.
    assert_eq!(s.call("GET", "/v1/working-memory/a%20b", None).await.0, 422);
    assert_eq!(s.call("GET", "/v1/working-memory/s?namespace=a:b", None).await.0, 422);
    assert_eq!(s.call("GET", "/v1/working-memory/s?context_window_max=x", None).await.0, 422);
    for q in ["limit=0", "limit=101", "limit=x", "offset=-1"] {
        let (status, body) = s.call("GET", &format!("/v1/working-memory/?{q}"), None).await;
        assert_eq!(status, 422, "{q}");
        assert_eq!(body["detail"][0]["loc"][0], "query");
    }
    // Delete is always ok, even when missing.
    assert_eq!(s.call("DELETE", "/v1/working-memory/never", None).await, (200, json!({"status": "ok"})));
    assert_eq!(s.call("GET", "/nowhere", None).await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn list_filters_pages_and_counts() {
    let mut s = TestServer::start(|_| {}).await;
    for (sid, ns, user) in [("a", "n1", "u1"), ("b", "n1", "u2"), ("c", "n2", "u1"), ("d", "", "")] {
        let body = json!({"namespace": ns, "user_id": user, "messages": [msg("x", "user", "hi")]});
        assert_eq!(s.call("PUT", &format!("/v1/working-memory/{sid}"), Some(body)).await.0, 200);
    }
    s.call("DELETE", "/v1/working-memory/d", None).await;
    let list = |q: &'static str| s.call("GET", q, None);
    assert_eq!(list("/v1/working-memory/").await.1, json!({"sessions": ["a", "b", "c"], "total": 3}));
    assert_eq!(list("/v1/working-memory/?namespace=n1").await.1, json!({"sessions": ["a", "b"], "total": 2}));
    assert_eq!(list("/v1/working-memory/?user_id=u1").await.1, json!({"sessions": ["a", "c"], "total": 2}));
    assert_eq!(list("/v1/working-memory/?limit=1&offset=1").await.1, json!({"sessions": ["b"], "total": 3}));
    assert_eq!(list("/v1/working-memory/?offset=5").await.1, json!({"sessions": [], "total": 3}));
    s.stop().await;
}

#[tokio::test]
async fn a_session_is_found_by_its_id_alone_when_unique() {
    let mut s = TestServer::start(|_| {}).await;
    let body = json!({"namespace": "n1", "user_id": "u1", "messages": [msg("x", "user", "hi")]});
    s.call("PUT", "/v1/working-memory/only", Some(body.clone())).await;
    let (status, got) = s.call("GET", "/v1/working-memory/only", None).await;
    assert_eq!(status, 200);
    assert_eq!(got["namespace"], "n1");
    assert_eq!(s.call("GET", "/v1/working-memory/only?namespace=n1", None).await.0, 200);
    assert_eq!(s.call("GET", "/v1/working-memory/only?namespace=n2", None).await.0, 404);
    // Two sessions with the id: ambiguous without the filters.
    let other = json!({"namespace": "n2", "messages": [msg("y", "user", "yo")]});
    s.call("PUT", "/v1/working-memory/only", Some(other)).await;
    assert_eq!(s.call("GET", "/v1/working-memory/only", None).await.0, 404);
    assert_eq!(s.call("GET", "/v1/working-memory/only?namespace=n2", None).await.1["messages"][0]["id"], "y");
    s.stop().await;
}

#[tokio::test]
async fn recent_messages_truncation_and_percentages_follow_upstream() {
    let mut s = TestServer::start(|c| c.summarization = false).await;
    let messages: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("m{i}"), "role": "user", "content": "x".repeat(34), "created_at": format!("2024-05-01T10:00:{:02}Z", 10 - i)}))
        .collect();
    s.call("PUT", "/v1/working-memory/t", Some(json!({"messages": messages}))).await;
    // The last 3 by seq, sorted by created_at (oldest first).
    let (_, got) = s.call("GET", "/v1/working-memory/t?recent_messages_limit=3", None).await;
    let ids: Vec<&str> = got["messages"].as_array().expect("list").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["m9", "m8", "m7"]);
    assert_eq!(
        s.call("GET", "/v1/working-memory/t?recent_messages_limit=0", None).await.1["messages"]
            .as_array()
            .map(Vec::len),
        Some(10)
    );
    // "user: " + 34 x = 40 bytes = 10 tokens each; a window of 35 keeps 3 (30 tokens).
    let (_, got) = s.call("GET", "/v1/working-memory/t?context_window_max=35", None).await;
    assert_eq!(got["messages"].as_array().map(Vec::len), Some(3));
    let total = got["context_percentage_total_used"].as_f64().expect("set");
    assert!((total - 30.0 / 35.0 * 100.0).abs() < 1e-9, "{total}");
    assert_eq!(got["context_percentage_until_summarization"].as_f64(), Some(100.0), "30 / int(24.5) capped");
    // At least one message is kept, whatever the window.
    assert_eq!(
        s.call("GET", "/v1/working-memory/t?context_window_max=1", None).await.1["messages"].as_array().map(Vec::len),
        Some(1)
    );
    s.stop().await;
}

#[tokio::test]
async fn the_append_extension_appends_atomically_and_once() {
    let mut s = TestServer::start(|_| {}).await;
    let put = json!({"namespace": "n", "data": {"keep": 1}, "ttl_seconds": 600, "messages": [msg("m1", "user", "hi")]});
    s.call("PUT", "/v1/working-memory/e", Some(put)).await;
    let append = json!({"messages": [msg("m2", "assistant", "hello"), msg("m3", "user", "next")]});
    let (status, body) = s.call("POST", "/v1/working-memory/e/messages?namespace=n", Some(append.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["appended"], 2);
    // A retry of the same request appends nothing twice.
    let (_, again) = s.call("POST", "/v1/working-memory/e/messages", Some(append)).await;
    assert_eq!((again["appended"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(2)));
    let (_, got) = s.call("GET", "/v1/working-memory/e", None).await;
    assert_eq!(got["messages"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        (got["data"].clone(), got["ttl_seconds"].clone()),
        (json!({"keep": 1}), json!(600)),
        "the document is kept"
    );
    // Missing session: 404; bad message: nothing appended.
    assert_eq!(s.call("POST", "/v1/working-memory/none/messages", Some(json!({"messages": []}))).await.0, 404);
    let bad = json!({"messages": [msg("m4", "user", "fine"), msg("m5", "user", "")]});
    assert_eq!(s.call("POST", "/v1/working-memory/e/messages", Some(bad)).await.0, 400);
    assert_eq!(s.call("GET", "/v1/working-memory/e", None).await.1["messages"].as_array().map(Vec::len), Some(3));
    s.stop().await;
}

#[tokio::test]
async fn the_memory_prompt_puts_summary_messages_and_query_in_order() {
    let mut s = TestServer::start(|_| {}).await;
    let body =
        json!({"context": "we planned a trip", "messages": [msg("a", "user", "book it"), msg("b", "tool", "booked")]});
    s.call("PUT", "/v1/working-memory/p", Some(body)).await;
    let (status, out) = s
        .call(
            "POST",
            "/v1/memory/prompt",
            Some(json!({"query": "what now?", "session": {"session_id": "p", "context_window_max": "1000"}})),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let text = |m: &Value| (m["role"].as_str().map(str::to_string), m["content"]["text"].as_str().map(str::to_string));
    let got: Vec<_> = out["messages"].as_array().expect("list").iter().map(text).collect();
    let want = [
        ("system", "## A summary of the conversation so far:\nwe planned a trip"),
        ("user", "book it"),
        ("assistant", "booked"),
        ("user", "what now?"),
    ];
    assert_eq!(got, want.map(|(r, t)| (Some(r.to_string()), Some(t.to_string()))));
    assert_eq!(
        out["messages"][0]["content"],
        json!({"type": "text", "text": want[0].1, "annotations": null, "_meta": null})
    );
    assert_eq!(out["long_term_memories"], Value::Null);
    // A missing session counts as empty; neither session nor long_term_search is 400.
    let (_, out) =
        s.call("POST", "/v1/memory/prompt", Some(json!({"query": "q", "session": {"session_id": "none"}}))).await;
    assert_eq!(out["messages"].as_array().map(Vec::len), Some(1));
    let (status, out) = s.call("POST", "/v1/memory/prompt", Some(json!({"query": "q"}))).await;
    assert_eq!(status, 400, "{out}");
    assert!(out["detail"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn an_expired_session_reads_as_missing_and_the_sweep_deletes_it_as_an_event() {
    let (engine, _dir) = common::engine();
    let mut s = TestServer::start_on(engine.clone(), |_| {}).await;
    s.call("PUT", "/v1/working-memory/old", Some(json!({"ttl_seconds": 0, "messages": [msg("a", "user", "hi")]})))
        .await;
    s.call("PUT", "/v1/working-memory/live", Some(json!({"ttl_seconds": 3600, "messages": [msg("a", "user", "hi")]})))
        .await;
    assert_eq!(s.call("GET", "/v1/working-memory/old", None).await.0, 404);
    assert_eq!(
        s.call("POST", "/v1/working-memory/old/messages", Some(json!({"messages": [msg("b", "user", "x")]}))).await.0,
        404
    );
    assert_eq!(s.call("GET", "/v1/working-memory/live", None).await.0, 200);
    s.stop().await;
    // A new server's first sweep (at start) deletes the expired session, as a deletion event.
    let mut s = TestServer::start_on(engine.clone(), |_| {}).await;
    let old = engine.session("old::").expect("id");
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !old.head().await.expect("head").is_some_and(|h| h.is_deleted()) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the sweep deletes the expired session");
    let events = old.history(Seq::new(1), 10).await.expect("history");
    assert!(matches!(events.first().map(|e| &e.kind), Some(EventKind::SessionDeleted { .. })));
    assert!(engine.session("live::").expect("id").head().await.expect("head").is_some_and(|h| !h.is_deleted()));
    // A PUT to an expired session starts it afresh.
    assert_eq!(s.call("GET", "/v1/working-memory/live", None).await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn a_body_up_to_the_configured_limit_is_accepted() {
    // 3 MB: past axum's own 2 MB default, within the server's 8 MiB.
    let mut s = TestServer::start(|c| c.summarization = false).await;
    let messages: Vec<Value> = (0..1_000).map(|i| msg(&format!("m{i}"), "user", &"y".repeat(3_000))).collect();
    let (status, body) = s.call("PUT", "/v1/working-memory/big", Some(json!({"messages": messages}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        s.call("GET", "/v1/working-memory/big?recent_messages_limit=5", None).await.1["messages"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    s.stop().await;
}
