//! Two processes append to one session on a real 3-node cluster at the same time: their appends
//! serialize through the version check, so the session ends dense, with every acknowledged
//! append of both exactly once. The test binary runs itself twice as the writers.

mod nats_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use nats_common::{Cluster, append_until_stored, config, connect, text_of};
use palimpsest::{NatsConfig, Seq, SessionId};

const PER_WRITER: usize = 150;
const CHILD_ENV: &str = "PALIMPSEST_NATS_TEST_WRITER";
const URLS_ENV: &str = "PALIMPSEST_NATS_TEST_URLS";
const MONITOR_ENV: &str = "PALIMPSEST_NATS_TEST_MONITORS";
/// Longest wait for a writer process.
const WRITER_TIMEOUT: Duration = Duration::from_secs(120);

fn session() -> SessionId {
    SessionId::new("shared.session").expect("valid id")
}

fn cfg(urls: Vec<String>, monitors: Vec<String>) -> NatsConfig {
    NatsConfig { urls, monitor_urls: monitors, stream_prefix: "two".to_string(), ..NatsConfig::default() }
}

/// As a writer process: append `PER_WRITER` texts named after the writer, each until stored.
async fn write_as(writer: &str) {
    let split = |v: &str| std::env::var(v).expect("set by the parent").split(',').map(str::to_string).collect();
    let log = connect(&cfg(split(URLS_ENV), split(MONITOR_ENV))).await;
    for i in 0..PER_WRITER {
        append_until_stored(&log, &session(), &format!("{writer}-{i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_session_stay_dense_without_loss_or_duplicates() {
    if let Ok(writer) = std::env::var(CHILD_ENV) {
        write_as(&writer).await;
        return;
    }
    let cluster = Cluster::start(3).await;
    // Make the streams before the writers race to.
    let log = connect(&NatsConfig { stream_prefix: "two".to_string(), ..config(&cluster, "two", 3) }).await;
    let exe = std::env::current_exe().expect("the test binary");
    let mut children: Vec<_> = ["a", "b"]
        .iter()
        .map(|writer| {
            Command::new(&exe)
                .args(["--exact", "two_processes_on_one_session_stay_dense_without_loss_or_duplicates", "--nocapture"])
                .env(CHILD_ENV, writer)
                .env(URLS_ENV, cluster.urls().join(","))
                .env(MONITOR_ENV, cluster.monitor_urls().join(","))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("start a writer process")
        })
        .collect();
    let deadline = std::time::Instant::now() + WRITER_TIMEOUT;
    for child in &mut children {
        loop {
            if let Some(status) = child.try_wait().expect("poll a writer") {
                assert!(status.success(), "a writer process failed: {status}");
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("a writer process did not finish within {WRITER_TIMEOUT:?}");
            }
            // Polling an outside process; there is nothing to wait on instead.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let events = log.events(&session(), Seq::new(1), Seq::new(10_000), 10_000).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.get()).collect();
    assert_eq!(seqs, (1..=2 * PER_WRITER as u64).collect::<Vec<_>>(), "dense");
    let mut texts: Vec<String> = events.iter().map(text_of).collect();
    texts.sort();
    let mut want: Vec<String> =
        ["a", "b"].iter().flat_map(|w| (0..PER_WRITER).map(move |i| format!("{w}-{i}"))).collect();
    want.sort();
    assert_eq!(texts, want, "every append of both writers, once");
    // Each writer's own appends stay in its order.
    for w in ["a", "b"] {
        let mine: Vec<String> = events.iter().map(text_of).filter(|t| t.starts_with(&format!("{w}-"))).collect();
        assert_eq!(mine, (0..PER_WRITER).map(|i| format!("{w}-{i}")).collect::<Vec<_>>());
    }
}
