//! A real NATS cluster for the JetStream backend's tests, and commit builders.
//!
//! `Cluster::start(n)` runs `n` nats-server processes (the binary named by
//! `PALIMPSEST_NATS_SERVER`, installed by scripts/setup-nats.sh) on loopback ports picked free,
//! each with its own temp store and `sync_interval: always`, waits until every node's `/healthz`
//! says ok, and kills them all by pid when dropped (a panicking test included). A test that needs
//! the server fails loudly when the variable is missing: nothing is skipped.
//!
//! The processes are started and stopped by the `palimpsest-testcluster` crate (tools/testcluster),
//! which `palimpsest-bench` uses too; here its errors become panics, as a test wants, and the
//! cluster gains a NATS client of its own (`raw_client`).
#![allow(dead_code)]

use std::time::Duration;

use palimpsest::{Durability, Event, EventKind, Head, Message, NatsConfig, NatsLog, Seq, SessionId, Version, apply};
pub use palimpsest_testcluster::{ClusterOptions, SERVER_ENV};

/// Most events of one session [`events_on_every_node`] reads (a test's sessions are smaller).
pub const MAX_CHECKED_EVENTS: usize = 10_000;

/// Longest wait for a stream to have a leader (a new stream's first election, or one after a kill).
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Running nats-server processes; killed by pid on drop. Every method panics where the launcher
/// returns an error.
pub struct Cluster {
    launcher: palimpsest_testcluster::Cluster,
}

impl Cluster {
    /// `n` nodes with default options, healthy.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, ClusterOptions::default()).await
    }

    /// `n` nodes (1 means a single server without a cluster block), healthy.
    pub async fn start_with(n: usize, options: ClusterOptions) -> Cluster {
        let server = palimpsest_testcluster::server_from_env().unwrap_or_else(|e| {
            panic!("{e}: run `export {SERVER_ENV}=\"$(scripts/setup-nats.sh | tail -n 1)\"` (scripts/test does)")
        });
        let launcher = palimpsest_testcluster::Cluster::launch(&server, n, options)
            .await
            .unwrap_or_else(|e| panic!("start a {n}-node cluster: {e}"));
        Cluster { launcher }
    }

    /// The launcher itself (what the tests do not need wrapped).
    pub fn launcher(&self) -> &palimpsest_testcluster::Cluster {
        &self.launcher
    }

    /// Waits (bounded) until node `i` answers `/healthz` with ok.
    pub async fn wait_healthy(&self, i: usize) {
        self.launcher.wait_healthy(i).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.launcher.urls()
    }

    /// A plain client of the cluster (for what the tests do beside the backend).
    pub async fn raw_client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self.urls().iter().map(|u| u.parse().expect("a server URL")).collect();
        // Short pings, so a frozen node is left within seconds (the default is a minute). JetStream
        // API requests (a stream's info, a stream created on 3 nodes) wait this long for the
        // answer, which a loaded machine can take seconds to give; the polls around them are
        // bounded by their own deadlines.
        async_nats::ConnectOptions::new()
            .ping_interval(Duration::from_secs(1))
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(addrs)
            .await
            .expect("a raw client")
    }

    /// Every node's monitoring URL.
    pub fn monitor_urls(&self) -> Vec<String> {
        self.launcher.monitor_urls()
    }

    /// The index of the node named `name` (`n0`, `n1`, ...).
    pub fn index_of(&self, name: &str) -> usize {
        self.launcher.index_of(name).unwrap_or_else(|| panic!("no node named {name}"))
    }

    /// The name of node `i`.
    pub fn name(&self, i: usize) -> &str {
        self.launcher.name(i).unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGKILL node `i` and reap it (nothing if it is not running).
    pub fn kill(&mut self, i: usize) {
        match self.launcher.kill(i) {
            Ok(()) | Err(palimpsest_testcluster::Error::NotRunning(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to node `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        self.launcher.signal(i, signal).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts node `i` again (after [`Cluster::kill`]) without waiting: a whole cluster must be
    /// started together before any node can be healthy.
    pub fn restart_without_waiting(&mut self, i: usize) {
        self.launcher.restart_without_waiting(i).unwrap_or_else(|e| panic!("restart of node {i}: {e}"));
    }

    /// Starts node `i` again (after [`Cluster::kill`]) and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.launcher.restart(i).await.unwrap_or_else(|e| panic!("restart of node {i}: {e}"));
    }
}

/// A config for `cluster` with `streams` streams and `replicas` replicas, a fresh prefix, and
/// the monitoring endpoints listed so `sync` durability checks every server.
pub fn config(cluster: &Cluster, prefix: &str, replicas: u64) -> NatsConfig {
    NatsConfig {
        urls: cluster.urls(),
        stream_prefix: prefix.to_string(),
        streams: 1,
        replicas,
        monitor_urls: cluster.monitor_urls(),
        connect_timeout_ms: 2_000,
        ..NatsConfig::default()
    }
}

/// Connects in `sync` durability, panicking with the error.
pub async fn connect(config: &NatsConfig) -> NatsLog {
    NatsLog::connect(config, Durability::Sync).await.unwrap_or_else(|e| panic!("connect: {e}"))
}

/// The commit that appends user messages `texts` after `head`: its events and the head after them.
pub fn commit(head: &Head, texts: &[String]) -> (Vec<Event>, Head) {
    let mut after = head.clone();
    let mut seq = head.last_seq();
    let events: Vec<Event> = texts
        .iter()
        .map(|text| {
            seq = seq.next();
            Event { seq, at_ms: 1, kind: EventKind::MessageAppended(Message::user(text.clone())) }
        })
        .collect();
    for event in &events {
        apply(&mut after, event);
    }
    (events, after)
}

/// The text of a message event.
pub fn text_of(event: &Event) -> String {
    match &event.kind {
        EventKind::MessageAppended(m) => m.content.clone(),
        other => panic!("not a message: {other:?}"),
    }
}

/// Appends `text` to `session` until it is stored once, as an engine would: build the commit on
/// the head, append; after an unknown outcome (`Timeout`, or `Storage` from the connection) append
/// the very same commit at the same version again, which the backend deduplicates, so no read is
/// needed to learn whether it landed; after a `Conflict` (certainly not stored) re-read the head
/// and rebuild. Returns the seq it landed at.
pub async fn append_until_stored(log: &NatsLog, session: &SessionId, text: &str) -> Seq {
    let mut pending: Option<(Version, Vec<Event>, Head)> = None;
    for _ in 0..1_000 {
        let (version, events, after) = match pending.take() {
            Some(commit) => commit,
            None => {
                let (head, version) = match log.head(session).await {
                    Ok(found) => found.unwrap_or((Head::default(), Version::NONE)),
                    Err(_) => {
                        // No leader yet (an election): back off, bounded by the attempt count.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (events, after) = commit(&head, &[text.to_string()]);
                (version, events, after)
            }
        };
        match log.append(session, version, &events, &after).await {
            Ok(_) => return after.last_seq(),
            Err(palimpsest::Error::Conflict { .. }) => continue,
            Err(palimpsest::Error::Timeout { .. } | palimpsest::Error::Storage { .. }) => {
                pending = Some((version, events, after));
            }
            Err(e) => panic!("append {text}: {e}"),
        }
    }
    panic!("{text} not stored after 1,000 attempts");
}

/// Creates stream `config` beside the backend's (a test's raw stream), asking again while the
/// cluster does not answer in time or has not yet seen enough peers (a loaded machine, a cluster
/// just started), bounded by [`LEADER_TIMEOUT`]. Creating a stream that exists with the same
/// config succeeds, so a request that timed out after it landed is harmless to repeat.
pub async fn create_stream(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
) -> async_nats::jetstream::stream::Stream {
    use async_nats::jetstream::context::CreateStreamErrorKind;
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    loop {
        match js.create_stream(config.clone()).await {
            Ok(stream) => return stream,
            Err(e) => {
                let unanswered = match e.kind() {
                    CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
                    CreateStreamErrorKind::JetStream(j) => {
                        j.error_code() == async_nats::jetstream::ErrorCode::CLUSTER_NO_PEERS
                    }
                    _ => false,
                };
                assert!(unanswered, "create stream {}: {e}", config.name);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "create stream {}: still unanswered after {LEADER_TIMEOUT:?}: {e}",
                    config.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The leader of stream `name`, by node index, if it has one now.
pub async fn stream_leader(cluster: &Cluster, js: &async_nats::jetstream::Context, name: &str) -> Option<usize> {
    let mut stream = js.get_stream(name).await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.as_ref()?.leader.as_deref().map(|leader| cluster.index_of(leader))
}

/// Waits (bounded by [`LEADER_TIMEOUT`]) until stream `name` has a leader, and returns it: a
/// stream just created, or whose leader was just killed, refuses publishes until then.
pub async fn wait_stream_leader(cluster: &Cluster, js: &async_nats::jetstream::Context, name: &str) -> usize {
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    loop {
        if let Some(i) = stream_leader(cluster, js, name).await {
            return i;
        }
        assert!(tokio::time::Instant::now() < deadline, "stream {name}: no leader within {LEADER_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `write` at most `polls` times, yielding between polls, then drops it: a caller that
/// gives up on a write at that await. A write that finished within them must have succeeded.
pub async fn poll_then_drop<T, E: std::fmt::Debug>(write: impl std::future::Future<Output = Result<T, E>>, polls: u32) {
    let mut write = Box::pin(write);
    for _ in 0..polls {
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(outcome) = polled {
            outcome.expect("a write that finished succeeded");
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Makes node `i` the leader of stream `name` (asking for it until it is, bounded by
/// [`LEADER_TIMEOUT`]).
pub async fn make_leader(cluster: &Cluster, client: &async_nats::Client, name: &str, i: usize) {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    while stream_leader(cluster, &js, name).await != Some(i) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {i} did not become leader of {name} within {LEADER_TIMEOUT:?}"
        );
        let body = serde_json::json!({ "placement": { "preferred": cluster.name(i) } }).to_string();
        // The answer does not matter: the loop checks the outcome.
        let _ = client.request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"), body.into()).await;
        // Polling an election in another process; there is nothing to wait on instead.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What each node holds: every node of `cluster` is made the leader of stream `name` in turn and
/// each of `sessions` is read whole (up to [`MAX_CHECKED_EVENTS`] events) through leader-only reads
/// (`NatsLog::with_leader_reads`) of a fresh connection with `config`, so each answer is that
/// node's own copy. Indexed `[node][session]`.
pub async fn events_on_every_node(
    cluster: &Cluster,
    config: &NatsConfig,
    name: &str,
    sessions: &[SessionId],
) -> Vec<Vec<Vec<Event>>> {
    let client = cluster.raw_client().await;
    let reader = NatsLog::connect(config, Durability::Sync).await.expect("a reading connection").with_leader_reads();
    let mut nodes = Vec::new();
    for node in 0..cluster.launcher().nodes() {
        make_leader(cluster, &client, name, node).await;
        let mut held = Vec::new();
        for session in sessions {
            let last = Seq::new(MAX_CHECKED_EVENTS as u64);
            let events = reader
                .events(session, Seq::new(1), last, MAX_CHECKED_EVENTS)
                .await
                .unwrap_or_else(|e| panic!("node {node}, {session}: read from the leader: {e}"));
            assert!(events.len() < MAX_CHECKED_EVENTS, "{session} is larger than a check reads");
            held.push(events);
        }
        nodes.push(held);
    }
    nodes
}
