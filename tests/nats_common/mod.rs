//! A real NATS cluster for the JetStream backend's tests, and commit builders.
//!
//! `Cluster::start(n)` runs `n` nats-server processes (the binary named by
//! `PALIMPSEST_NATS_SERVER`, installed by scripts/setup-nats.sh) on loopback ports picked free,
//! each with its own temp store and `sync_interval: always`, waits until every node's `/healthz`
//! says ok, and kills them all by pid when dropped (a panicking test included). A test that needs
//! the server fails loudly when the variable is missing: nothing is skipped.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palimpsest::{Durability, Event, EventKind, Head, Message, NatsConfig, NatsLog, Seq, SessionId, Version, apply};

/// Most events of one session [`events_on_every_node`] reads (a test's sessions are smaller).
pub const MAX_CHECKED_EVENTS: usize = 10_000;

/// The variable naming the nats-server binary.
pub const SERVER_ENV: &str = "PALIMPSEST_NATS_SERVER";
/// Longest wait for a node to report healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a stream to have a leader (a new stream's first election, or one after a kill).
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `sync_interval: always` in every node's JetStream block.
    pub sync_always: bool,
    /// An `authorization { token }` every client must give.
    pub token: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self { sync_always: true, token: None }
    }
}

struct Node {
    name: String,
    client_port: u16,
    http_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

/// Running nats-server processes; killed by pid on drop.
pub struct Cluster {
    server: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    http: reqwest::Client,
}

fn server_binary() -> PathBuf {
    let path = std::env::var_os(SERVER_ENV).unwrap_or_else(|| {
        panic!("{SERVER_ENV} is not set: run `export {SERVER_ENV}=\"$(scripts/setup-nats.sh | tail -n 1)\"` (scripts/test does)")
    });
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{SERVER_ENV}={} is not a file", path.display());
    path
}

/// The lowest port [`free_port`] draws from.
const LOWEST_PORT: u16 = 10_000;
/// Most ports [`free_port`] tries before it gives up.
const PORT_TRIES: usize = 1_000;

/// A loopback port free now, drawn at random below the kernel's ephemeral range and never handed
/// out twice by this process. Not a port-0 bind: the kernel hands those out again (to another
/// test's cluster, or as the local port of an outgoing connection), and a node killed for a
/// restart leaves its ports free until it is back. Seen: a whole-cluster restart whose route
/// port had meanwhile become another cluster's monitoring port, so the node never found its
/// meta leader.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse::<u16>().ok()))
        .unwrap_or(32_768);
    let highest = ephemeral_low.max(LOWEST_PORT + 1_000);
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Randomly keyed hashes of a counter: std only (the CLI's tests include this file too).
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..PORT_TRIES {
        let draw = std::hash::BuildHasher::hash_one(&random, attempt) % u64::from(highest - LOWEST_PORT);
        let port = LOWEST_PORT + u16::try_from(draw).expect("below highest - LOWEST_PORT");
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST_PORT}..{highest} after {PORT_TRIES} tries");
}

impl Cluster {
    /// `n` nodes with default options, healthy.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, ClusterOptions::default()).await
    }

    /// `n` nodes (1 means a single server without a cluster block), healthy.
    pub async fn start_with(n: usize, options: ClusterOptions) -> Cluster {
        let server = server_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let mut nodes = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{i}");
            let (client_port, http_port) = (free_port(), free_port());
            let store = dir.path().join(&name);
            let sync = if options.sync_always { "sync_interval: always," } else { "" };
            let mut conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{http_port}\nmax_payload: 8MB\n\
                 jetstream {{ store_dir: {:?}, {sync} max_file_store: 1GB, max_memory_store: 64MB }}\n",
                store.display().to_string()
            );
            if n > 1 {
                conf.push_str(&format!(
                    "cluster {{ name: ps, listen: 127.0.0.1:{route_port}, routes: [{}] }}\n",
                    routes.join(", ")
                ));
            }
            if let Some(token) = &options.token {
                conf.push_str(&format!("authorization {{ token: {token:?} }}\n"));
            }
            let path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&path, conf).expect("write a node's config");
            nodes.push(Node { name, client_port, http_port, conf: path, child: None });
        }
        // reqwest is built with `rustls-no-provider`; an error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
        let mut cluster = Cluster { server, dir, nodes, http };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        // Appended to, so a restarted node's log follows its earlier life's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", self.nodes[i].name)))
            .expect("log file");
        let child = Command::new(&self.server)
            .arg("-c")
            .arg(&self.nodes[i].conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.nodes[i].child = Some(child);
    }

    /// Waits (bounded) until node `i` answers `/healthz` with ok.
    pub async fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].http_port);
        let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let answer = match self.http.get(&url).send().await {
                    Ok(response) => format!("{} {}", response.status(), response.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                panic!(
                    "node {i} not healthy within {HEALTH_TIMEOUT:?} (/healthz: {answer}); its log ends:\n{}",
                    self.log_tail(i)
                );
            }
            // Polling an outside process's readiness; there is nothing to wait on instead.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of node `i`'s log (for a failure's message).
    pub fn log_tail(&self, i: usize) -> String {
        let path = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect()
    }

    /// A plain client of the cluster (for what the tests do beside the backend).
    pub async fn raw_client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self.urls().iter().map(|u| u.parse().expect("a server URL")).collect();
        // Short pings, so a frozen node is left within seconds (the default is a minute).
        async_nats::ConnectOptions::new()
            .ping_interval(Duration::from_secs(1))
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(addrs)
            .await
            .expect("a raw client")
    }

    /// Every node's monitoring URL.
    pub fn monitor_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://127.0.0.1:{}", n.http_port)).collect()
    }

    /// The index of the node named `name` (`n0`, `n1`, ...).
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node named {name}"))
    }

    /// The name of node `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    fn pid(&self, i: usize) -> u32 {
        self.nodes[i].child.as_ref().expect("the node is running").id()
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().expect("SIGKILL a node");
            child.wait().expect("reap a killed node");
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to node `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.pid(i).to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Starts node `i` again (after [`Cluster::kill`]) without waiting: a whole cluster must be
    /// started together before any node can be healthy.
    pub fn restart_without_waiting(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "restart of a running node");
        self.spawn(i);
    }

    /// Starts node `i` again (after [`Cluster::kill`]) and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "restart of a running node");
        self.spawn(i);
        self.wait_healthy(i).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A stopped process ignores nothing but SIGKILL, which is what is sent.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
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
    for node in 0..cluster.nodes.len() {
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
