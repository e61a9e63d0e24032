//! Figures of the JetStream backend on a local 3-node cluster (started here, as the tests do):
//! appends per second to 64 sessions and to 1 session through `NatsLog`, beside raw async-nats
//! publishing payloads of the same size with the same headers on the same connection to the same
//! cluster (an R3 stream of its own); and the
//! newest-50 window read (`nats_wm50_us`) on a session of 100 messages and one of 100,000. Then
//! the same through the engine (`Engine::connect` on the same cluster, its own connection, `sync`):
//! `Session::append` per message, and `Session::working_memory(50)` with the window cache on (a
//! head read from the leader, then the cached window) and off (the head, the event search and one
//! batched read).
//!
//! Run: `PALIMPSEST_NATS_SERVER="$(scripts/setup-nats.sh | tail -n 1)" \
//!       cargo run --release --features nats,testing --example nats_figures`
//! Prints one JSON object. Context, not a benchmark: a shared 2-core machine, loopback, fsync on.

#[path = "../tests/nats_common/mod.rs"]
mod nats_common;

use std::sync::Arc;
use std::time::Instant;

use async_nats::HeaderMap;
use nats_common::{Cluster, commit, config, connect};
use palimpsest::{Components, Config, Engine, Head, Message, NatsLog, SessionId, StorageKind, Version};

const APPENDS_64: usize = 6_400;
const APPENDS_1: usize = 1_000;
const WINDOW_READS: usize = 200;

fn text(i: usize) -> String {
    format!("message {i}: {}", "lorem ipsum dolor sit amet ".repeat(6))
}

/// Appends `n` one-message commits to `session`, keeping the head locally as the engine's head
/// cache does (no head read per append).
async fn append_n(log: &NatsLog, session: &SessionId, n: usize, per_commit: usize) {
    let (mut head, mut version) = (Head::default(), Version::NONE);
    for i in 0..n {
        let texts: Vec<String> = (0..per_commit).map(|j| text(i * per_commit + j)).collect();
        let (events, after) = commit(&head, &texts);
        version = log.append(session, version, &events, &after).await.expect("append");
        head = after;
    }
}

/// Raw publishes of `size`-byte payloads with a Msg-Id and the expected-sequence header on
/// `sessions` subjects, one publish in flight per subject (as the version check requires).
async fn raw(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    sessions: usize,
    per_session: usize,
    size: usize,
) -> f64 {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: format!("{prefix}_raw"),
        subjects: vec![format!("{prefix}.raw.>")],
        num_replicas: 3,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("raw stream");
    let payload = bytes::Bytes::from(vec![7_u8; size]);
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|s| {
            let (js, payload, subject) = (js.clone(), payload.clone(), format!("{prefix}.raw.{s:04x}"));
            tokio::spawn(async move {
                let mut last = 0_u64;
                for i in 0..per_session {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("{s}-{i}").as_str());
                    headers.insert("Nats-Expected-Last-Subject-Sequence", last.to_string().as_str());
                    let ack = js.publish_with_headers(subject.clone(), headers, payload.clone()).await.expect("send");
                    last = ack.await.expect("ack").sequence;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("raw publisher");
    }
    (sessions * per_session) as f64 / started.elapsed().as_secs_f64()
}

async fn ours(log: &Arc<NatsLog>, tag: &str, sessions: usize, per_session: usize) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|s| {
            let log = Arc::clone(log);
            let session = SessionId::new(format!("{tag}-{s}")).expect("valid id");
            tokio::spawn(async move { append_n(&log, &session, per_session, 1).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    (sessions * per_session) as f64 / started.elapsed().as_secs_f64()
}

async fn wm50_us(log: &NatsLog, session: &SessionId) -> f64 {
    let started = Instant::now();
    for _ in 0..WINDOW_READS {
        let window = log.window(session, 50).await.expect("window");
        assert_eq!(window.len(), 50);
    }
    started.elapsed().as_secs_f64() * 1e6 / WINDOW_READS as f64
}

/// Appends/s through the engine: `per_session` one-message appends to each of `sessions` sessions,
/// one task per session.
async fn engine_appends(engine: &Engine, tag: &str, sessions: usize, per_session: usize) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|s| {
            let session = engine.session(format!("{tag}-{s}")).expect("valid id");
            tokio::spawn(async move {
                for i in 0..per_session {
                    session.append(Message::user(text(i))).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    (sessions * per_session) as f64 / started.elapsed().as_secs_f64()
}

/// `n` messages appended to `id` through the engine, 10 per call.
async fn engine_fill(engine: &Engine, id: &str, n: usize) {
    let session = engine.session(id).expect("valid id");
    for i in (0..n).step_by(10) {
        session.append_many((i..i + 10).map(|j| Message::user(text(j))).collect()).await.expect("append");
    }
}

/// Microseconds per `working_memory(50)` of `id`.
async fn engine_wm50_us(engine: &Engine, id: &str) -> f64 {
    let session = engine.session(id).expect("valid id");
    let started = Instant::now();
    for _ in 0..WINDOW_READS {
        assert_eq!(session.working_memory(50).await.expect("working memory").messages.len(), 50);
    }
    started.elapsed().as_secs_f64() * 1e6 / WINDOW_READS as f64
}

async fn engine_on(cluster: &Cluster, prefix: &str, window_cache: bool) -> Engine {
    let mut engine_config = Config::new("unused-on-nats");
    engine_config.storage.kind = StorageKind::Nats;
    engine_config.storage.nats = config(cluster, prefix, 3);
    engine_config.extraction.enabled = false;
    if !window_cache {
        engine_config.cache.window_bytes = 0;
    }
    Engine::connect(engine_config, Components::default()).await.expect("connect the engine")
}

#[tokio::main]
async fn main() {
    let cluster = Cluster::start(3).await;
    let log = Arc::new(connect(&config(&cluster, "fig", 3)).await);
    // Raw publishing shares the backend's connection, so both reach the stream leader the same way.
    let js = async_nats::jetstream::new(log.client());
    // The size of one record as the backend stores it (one message of `text` plus its head).
    let probe = SessionId::new("probe").expect("valid id");
    append_n(&log, &probe, 1, 1).await;
    let mut stream = js.get_stream("fig_s0").await.expect("stream");
    let size = stream.info().await.expect("info").state.bytes as usize;

    let ours_64 = ours(&log, "s64", 64, APPENDS_64 / 64).await;
    let raw_64 = raw(&js, "r64", 64, APPENDS_64 / 64, size).await;
    let raw_1 = raw(&js, "r1", 1, APPENDS_1, size).await;
    let ours_1 = ours(&log, "s1", 1, APPENDS_1).await;

    // Windows: 100 messages and 100,000 messages, both in commits of 10 messages.
    let small = SessionId::new("w100").expect("valid id");
    append_n(&log, &small, 10, 10).await;
    let big = SessionId::new("w100k").expect("valid id");
    append_n(&log, &big, 10_000, 10).await;
    let wm_100 = wm50_us(&log, &small).await;
    let wm_100k = wm50_us(&log, &big).await;

    let engine = engine_on(&cluster, "eng", true).await;
    let engine_64 = engine_appends(&engine, "e64", 64, APPENDS_64 / 64).await;
    let engine_1 = engine_appends(&engine, "e1", 1, APPENDS_1).await;
    engine_fill(&engine, "ew100", 100).await;
    engine_fill(&engine, "ew100k", 100_000).await;
    let engine_wm_100 = engine_wm50_us(&engine, "ew100").await;
    let engine_wm_100k = engine_wm50_us(&engine, "ew100k").await;
    let cold = engine_on(&cluster, "eng", false).await;
    let cold_wm_100 = engine_wm50_us(&cold, "ew100").await;
    let cold_wm_100k = engine_wm50_us(&cold, "ew100k").await;

    println!(
        "{}",
        serde_json::json!({
            "record_bytes_on_disk_approx": size,
            "nats_append_per_s_64_sessions": ours_64.round(),
            "raw_append_per_s_64_sessions": raw_64.round(),
            "ratio_64_sessions": ours_64 / raw_64,
            "nats_append_per_s_1_session": ours_1.round(),
            "raw_append_per_s_1_session": raw_1.round(),
            "ratio_1_session": ours_1 / raw_1,
            "nats_wm50_us_100": wm_100.round(),
            "nats_wm50_us_100k": wm_100k.round(),
            "engine_append_per_s_64_sessions": engine_64.round(),
            "engine_ratio_64_sessions": engine_64 / raw_64,
            "engine_append_per_s_1_session": engine_1.round(),
            "engine_ratio_1_session": engine_1 / raw_1,
            "engine_wm50_us_100": engine_wm_100.round(),
            "engine_wm50_us_100k": engine_wm_100k.round(),
            "engine_wm50_growth": engine_wm_100k / engine_wm_100,
            "engine_wm50_uncached_us_100": cold_wm_100.round(),
            "engine_wm50_uncached_us_100k": cold_wm_100k.round(),
            "engine_wm50_uncached_growth": cold_wm_100k / cold_wm_100,
        })
    );
}
