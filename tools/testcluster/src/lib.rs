//! A local NATS cluster on loopback, for palimpsest's JetStream tests (`tests/nats_common`), the
//! operator tool's tests and `palimpsest-bench`: the process part only, no NATS client.
//!
//! [`Cluster::launch`] runs `n` nats-server processes on loopback ports picked free, each with its
//! own store under one temp dir, JetStream on (with `sync_interval: always` unless told otherwise),
//! routes between all of them when `n > 1`, and waits until every node's `/healthz` says ok. The
//! processes are killed by pid when the [`Cluster`] is dropped, a panicking test included, and
//! their temp dir is removed after them. Each node's stderr goes to a log file in that dir; a node
//! that exits or stays unhealthy is reported with the end of its log.
//!
//! Every wait is bounded ([`HEALTH_TIMEOUT`]); every failure is an [`Error`], so a tool can say
//! why it has no cluster instead of stopping. The test helpers in `tests/nats_common` turn the
//! errors into panics, as a test should.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The environment variable naming the nats-server binary (scripts/setup-nats.sh installs
/// nats-server 2.15.1 and prints its path).
pub const SERVER_ENV: &str = "PALIMPSEST_NATS_SERVER";
/// Longest wait for one node to report healthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Most nodes in one cluster (JetStream clusters have an odd size; 9 is far above any test's need).
pub const MAX_NODES: usize = 9;
/// Wait between two health checks of a starting node.
const HEALTH_POLL: Duration = Duration::from_millis(100);
/// Timeout of one health-check request.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of a node's log quoted in an error.
const LOG_TAIL_BYTES: u64 = 2_048;

/// Why a cluster could not be started, or a node not be handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`SERVER_ENV`] is not set: set it to the nats-server binary.
    #[error(
        "{SERVER_ENV} is not set: name the nats-server binary (scripts/setup-nats.sh installs one and prints its path)"
    )]
    ServerNotSet,
    /// The path given for the nats-server binary is not a file.
    #[error("{} is not a file (the nats-server binary was expected there)", .0.display())]
    ServerNotAFile(PathBuf),
    /// A cluster of this many nodes is not started.
    #[error("a cluster has 1 to {MAX_NODES} nodes, not {0}")]
    NodeCount(usize),
    /// There is no node of this index.
    #[error("no node {index} in a cluster of {nodes}")]
    NoNode {
        /// The index asked for.
        index: usize,
        /// The nodes the cluster has.
        nodes: usize,
    },
    /// The node is not running (it was killed), so it cannot be signalled or killed again.
    #[error("node {0} is not running")]
    NotRunning(String),
    /// The node is running, so it cannot be restarted.
    #[error("node {0} is already running")]
    AlreadyRunning(String),
    /// A file, a port or a process could not be had.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error of the operating system.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client of the health checks could not be built.
    #[error("the health-check HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    /// A node's process exited before it reported healthy (a bad binary, a bad config, a port
    /// taken meanwhile).
    #[error("node {name} exited ({status}) before it was healthy; its log ends with:\n{log_tail}")]
    Exited {
        /// The node's name.
        name: String,
        /// How it exited.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// A node did not report healthy within [`HEALTH_TIMEOUT`].
    #[error("node {name} not healthy within {after_s} s; its log ends with:\n{log_tail}")]
    Unhealthy {
        /// The node's name.
        name: String,
        /// The wait, in seconds.
        after_s: u64,
        /// The end of its log.
        log_tail: String,
    },
    /// `kill -SIGNAL pid` failed.
    #[error("kill -{signal} of node {name} failed: {status}")]
    Signal {
        /// The node's name.
        name: String,
        /// The signal's name (`STOP`, `CONT`, ...).
        signal: String,
        /// How `kill` ended.
        status: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Options of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `sync_interval: always` in every node's JetStream block (fsync before every acknowledgement).
    pub sync_always: bool,
    /// An `authorization { token }` every client must give.
    pub token: Option<String>,
    /// Every node's `max_payload`, as nats-server spells sizes (`8MB`, `64KB`).
    pub max_payload: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self { sync_always: true, token: None, max_payload: "8MB".to_string() }
    }
}

/// The nats-server binary named by [`SERVER_ENV`].
pub fn server_from_env() -> Result<PathBuf, Error> {
    let path = PathBuf::from(std::env::var_os(SERVER_ENV).ok_or(Error::ServerNotSet)?);
    if !path.is_file() {
        return Err(Error::ServerNotAFile(path));
    }
    Ok(path)
}

struct Node {
    name: String,
    client_port: u16,
    http_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Running nats-server processes; killed by pid on drop.
pub struct Cluster {
    server: PathBuf,
    // Kept for its drop: the stores, configs and logs go when the cluster does.
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("server", &self.server).field("urls", &self.urls()).finish_non_exhaustive()
    }
}

/// The lowest port [`free_port`] draws from.
const LOWEST_PORT: u16 = 10_000;
/// Most ports [`free_port`] tries before it gives up.
const PORT_TRIES: usize = 1_000;

/// A loopback port free now, drawn at random below the kernel's ephemeral range and never handed
/// out twice by this process. Not a port-0 bind: the kernel hands those out again (to another
/// cluster, or as the local port of an outgoing connection), and a node killed for a restart
/// leaves its ports free until it is back. Seen: a whole-cluster restart whose route port had
/// meanwhile become another cluster's monitoring port, so the node never found its meta leader.
fn free_port() -> Result<u16, Error> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse::<u16>().ok()))
        .unwrap_or(32_768);
    let highest = ephemeral_low.max(LOWEST_PORT + 1_000);
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Randomly keyed hashes of a counter: std only.
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..PORT_TRIES {
        let draw = std::hash::BuildHasher::hash_one(&random, attempt) % u64::from(highest - LOWEST_PORT);
        let port = LOWEST_PORT + u16::try_from(draw).expect("below highest - LOWEST_PORT");
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    Err(Error::Io {
        what: format!("find a free loopback port in {LOWEST_PORT}..{highest}"),
        source: std::io::Error::other(format!("none free after {PORT_TRIES} tries")),
    })
}

/// The last [`LOG_TAIL_BYTES`] of a node's log, for an error message.
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    };
    read().unwrap_or_else(|e| format!("(the log {} cannot be read: {e})", path.display()))
}

/// Waits (bounded by [`HEALTH_TIMEOUT`]) until the node answers `/healthz` with ok; with its
/// `child`, fails as soon as the process has exited instead of waiting out the bound.
async fn wait_node(
    http: &reqwest::Client,
    name: &str,
    http_port: u16,
    log: &Path,
    mut child: Option<&mut Child>,
) -> Result<(), Error> {
    let url = format!("http://127.0.0.1:{http_port}/healthz");
    let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if let Some(child) = child.as_deref_mut()
            && let Some(status) = child.try_wait().map_err(io(format!("check whether node {name} runs")))?
        {
            return Err(Error::Exited { name: name.to_string(), status: status.to_string(), log_tail: log_tail(log) });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unhealthy {
                name: name.to_string(),
                after_s: HEALTH_TIMEOUT.as_secs(),
                log_tail: log_tail(log),
            });
        }
        // Polling an outside process's readiness: there is nothing to wait on instead.
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

impl Cluster {
    /// Starts `n` nodes of `server` (1 means a single server without a cluster block) and waits
    /// until each is healthy. On an error every node started so far is killed.
    ///
    /// Cancel safety: dropping the future kills the nodes started so far (they are owned by the
    /// cluster being built).
    pub async fn launch(server: &Path, n: usize, options: ClusterOptions) -> Result<Cluster, Error> {
        if !server.is_file() {
            return Err(Error::ServerNotAFile(server.to_path_buf()));
        }
        if n == 0 || n > MAX_NODES {
            return Err(Error::NodeCount(n));
        }
        let dir = tempfile::tempdir().map_err(io("make the cluster's temp dir"))?;
        let route_ports = (0..n).map(|_| free_port()).collect::<Result<Vec<u16>, Error>>()?;
        let routes: Vec<String> = route_ports.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{i}");
            let (client_port, http_port) = (free_port()?, free_port()?);
            let store = dir.path().join(&name);
            let sync = if options.sync_always { "sync_interval: always," } else { "" };
            let mut conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{http_port}\nmax_payload: {}\n\
                 jetstream {{ store_dir: {:?}, {sync} max_file_store: 1GB, max_memory_store: 64MB }}\n",
                options.max_payload,
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
            std::fs::write(&path, conf).map_err(io(format!("write {}", path.display())))?;
            let log = dir.path().join(format!("{name}.log"));
            nodes.push(Node { name, client_port, http_port, conf: path, log, child: None });
        }
        // reqwest is built with `rustls-no-provider` (the library's choice); an error means a
        // provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(HEALTH_REQUEST_TIMEOUT).build().map_err(Error::Http)?;
        let mut cluster = Cluster { server: server.to_path_buf(), _dir: dir, nodes, http };
        // Every node is started before any is waited for: a node of a cluster is healthy only once
        // it sees the others.
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_started(i).await?;
        }
        Ok(cluster)
    }

    fn node(&self, i: usize) -> Result<&Node, Error> {
        self.nodes.get(i).ok_or(Error::NoNode { index: i, nodes: self.nodes.len() })
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut Node, Error> {
        let nodes = self.nodes.len();
        self.nodes.get_mut(i).ok_or(Error::NoNode { index: i, nodes })
    }

    fn spawn(&mut self, i: usize) -> Result<(), Error> {
        let server = self.server.clone();
        let node = self.node_mut(i)?;
        if node.child.is_some() {
            return Err(Error::AlreadyRunning(node.name.clone()));
        }
        // Appended to, so a restarted node's log keeps what it said before it was killed.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io(format!("open {}", node.log.display())))?;
        let child = Command::new(&server)
            .arg("-c")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("start {} for node {}", server.display(), node.name)))?;
        node.child = Some(child);
        Ok(())
    }

    /// [`Cluster::wait_healthy`] that also notices the process exiting.
    async fn wait_started(&mut self, i: usize) -> Result<(), Error> {
        let nodes = self.nodes.len();
        let Node { name, http_port, log, child, .. } =
            self.nodes.get_mut(i).ok_or(Error::NoNode { index: i, nodes })?;
        wait_node(&self.http, name, *http_port, log, child.as_mut()).await
    }

    /// Waits (bounded by [`HEALTH_TIMEOUT`]) until node `i` answers `/healthz` with ok.
    ///
    /// Cancel safety: cancel safe (it only reads).
    pub async fn wait_healthy(&self, i: usize) -> Result<(), Error> {
        let node = self.node(i)?;
        wait_node(&self.http, &node.name, node.http_port, &node.log, None).await
    }

    /// The number of nodes (running or not).
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL (`nats://127.0.0.1:port`), in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect()
    }

    /// Every node's monitoring URL (`http://127.0.0.1:port`), in node order.
    pub fn monitor_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://127.0.0.1:{}", n.http_port)).collect()
    }

    /// The index of the node named `name` (`n0`, `n1`, ...), if there is one.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The name of node `i` (`n{i}`, which is also its `server_name`).
    pub fn name(&self, i: usize) -> Result<&str, Error> {
        Ok(&self.node(i)?.name)
    }

    /// The file node `i` writes its log to.
    pub fn log_path(&self, i: usize) -> Result<&Path, Error> {
        Ok(&self.node(i)?.log)
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<(), Error> {
        let node = self.node_mut(i)?;
        let mut child = node.child.take().ok_or_else(|| Error::NotRunning(node.name.clone()))?;
        child.kill().map_err(io(format!("SIGKILL node {}", node.name)))?;
        child.wait().map_err(io(format!("reap node {}", node.name)))?;
        Ok(())
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`, ...) to node `i`.
    pub fn signal(&self, i: usize, signal: &str) -> Result<(), Error> {
        let node = self.node(i)?;
        let child = node.child.as_ref().ok_or_else(|| Error::NotRunning(node.name.clone()))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .map_err(io("run kill"))?;
        if !status.success() {
            return Err(Error::Signal {
                name: node.name.clone(),
                signal: signal.to_string(),
                status: status.to_string(),
            });
        }
        Ok(())
    }

    /// Starts node `i` again (after [`Cluster::kill`]) without waiting: a whole cluster must be
    /// started together before any node can be healthy.
    pub fn restart_without_waiting(&mut self, i: usize) -> Result<(), Error> {
        self.spawn(i)
    }

    /// Starts node `i` again (after [`Cluster::kill`]) and waits until it is healthy.
    ///
    /// Cancel safety: dropping the future leaves the node started (and owned by the cluster).
    pub async fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.spawn(i)?;
        self.wait_started(i).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SIGKILL, which a stopped (SIGSTOP) process obeys too. Nothing to report an
                // error to in a drop: a process already gone is the only likely one.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_server_binary_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("no-such-nats-server");
        let e = Cluster::launch(&missing, 3, ClusterOptions::default()).await.expect_err("no binary");
        assert!(matches!(e, Error::ServerNotAFile(ref p) if *p == missing), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_exits_at_once_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Stands in for a broken binary: prints a complaint and exits 1 whatever it is given.
        let fake = dir.path().join("fake-nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'fake: bad config' >&2\nexit 1\n").expect("write a script");
        let status = Command::new("chmod").arg("+x").arg(&fake).status().expect("run chmod");
        assert!(status.success());
        let e = Cluster::launch(&fake, 1, ClusterOptions::default()).await.expect_err("the node exits");
        match e {
            Error::Exited { name, log_tail, .. } => {
                assert_eq!(name, "n0");
                assert!(log_tail.contains("fake: bad config"), "{log_tail}");
            }
            other => panic!("expected Exited, got {other}"),
        }
    }

    #[tokio::test]
    async fn node_counts_out_of_range_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, "").expect("write");
        for n in [0, MAX_NODES + 1] {
            let e = Cluster::launch(&file, n, ClusterOptions::default()).await.expect_err("bad count");
            assert!(matches!(e, Error::NodeCount(m) if m == n), "{e}");
        }
    }
}
