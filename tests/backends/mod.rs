//! One test, both storage backends: [`on_both_backends!`] turns an `async fn name(store: Store)`
//! into two tests, `name::fjall` (a temp directory) and `name::nats` (fresh streams on a real
//! 3-node JetStream cluster on loopback with `sync_interval: always`; built only with the `nats`
//! feature, and failing loudly without `PALIMPSEST_NATS_SERVER`). The test body opens engines on
//! its [`Store`] as often as it likes: a second open is a reopen (fjall: after the first engine is
//! dropped; JetStream: a new connection, as another process would have).
//!
//! The JetStream tests of one test binary share one cluster (starting one costs seconds); each
//! store has stream prefixes of its own, so tests stay apart. The cluster is stopped (by pid) when
//! the last store holding it is dropped, a panicking test's included, and started again by the
//! next store that needs one.
#![allow(dead_code)]

#[cfg(feature = "nats")]
#[path = "../nats_common/mod.rs"]
pub mod nats_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palimpsest::{Components, Config, Durability, Engine, Summarizer};

/// Which backend a [`Store`] is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fjall,
    #[cfg(feature = "nats")]
    Nats,
}

/// The cluster the JetStream stores of this test binary share while any of them lives.
#[cfg(feature = "nats")]
static SHARED_CLUSTER: tokio::sync::Mutex<std::sync::Weak<nats_common::Cluster>> =
    tokio::sync::Mutex::const_new(std::sync::Weak::new());

/// Stores made by this process, for unique stream prefixes.
static STORES: AtomicU64 = AtomicU64::new(0);

/// Where one test's sessions live: a fresh fjall directory, or fresh streams (prefix of its own)
/// on the shared cluster.
pub struct Store {
    backend: Backend,
    dir: tempfile::TempDir,
    /// The stream prefix of this store's database on JetStream.
    prefix: String,
    #[cfg(feature = "nats")]
    cluster: Option<Arc<nats_common::Cluster>>,
    /// JetStream: whether the streams exist with their first leaders elected.
    #[cfg(feature = "nats")]
    ready: tokio::sync::OnceCell<()>,
}

impl Store {
    /// A fresh store on `backend` (on JetStream, on the shared cluster, started if none runs).
    pub async fn new(backend: Backend) -> Store {
        let dir = fast_tempdir();
        let prefix = format!("t{}", STORES.fetch_add(1, Ordering::Relaxed));
        match backend {
            Backend::Fjall => Store {
                backend,
                dir,
                prefix,
                #[cfg(feature = "nats")]
                cluster: None,
                #[cfg(feature = "nats")]
                ready: tokio::sync::OnceCell::new(),
            },
            #[cfg(feature = "nats")]
            Backend::Nats => {
                let cluster = {
                    let mut shared = SHARED_CLUSTER.lock().await;
                    match shared.upgrade() {
                        Some(cluster) => cluster,
                        None => {
                            let cluster = Arc::new(nats_common::Cluster::start(3).await);
                            *shared = Arc::downgrade(&cluster);
                            cluster
                        }
                    }
                };
                Store { backend, dir, prefix, cluster: Some(cluster), ready: tokio::sync::OnceCell::new() }
            }
        }
    }

    /// Another, empty database beside this one, on the same backend (a new directory, or new
    /// streams on the same cluster): where a test imports copies.
    pub async fn sibling(&self) -> Store {
        let dir = fast_tempdir();
        let prefix = format!("t{}", STORES.fetch_add(1, Ordering::Relaxed));
        Store {
            backend: self.backend,
            dir,
            prefix,
            #[cfg(feature = "nats")]
            cluster: self.cluster.clone(),
            #[cfg(feature = "nats")]
            ready: tokio::sync::OnceCell::new(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether this store is on JetStream (false without the `nats` feature).
    pub fn is_nats(&self) -> bool {
        self.backend != Backend::Fjall
    }

    /// "fjall" or "nats", for assertion messages.
    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Fjall => "fjall",
            #[cfg(feature = "nats")]
            Backend::Nats => "nats",
        }
    }

    /// The cluster of a JetStream store. Shared with this binary's other JetStream tests: a test
    /// that stops or kills nodes starts a cluster of its own (`nats_common::Cluster`).
    #[cfg(feature = "nats")]
    pub fn cluster(&self) -> Option<&nats_common::Cluster> {
        self.cluster.as_deref()
    }

    /// The stream prefix of this store's database (JetStream).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The config every engine of this store starts from: the defaults, as `tests/common` has
    /// them (memory extraction on, as on both backends by default), on this store's directory or
    /// streams.
    pub fn config(&self) -> Config {
        #[allow(unused_mut)]
        let mut config = Config::new(self.dir.path().join("db"));
        #[cfg(feature = "nats")]
        if let Some(cluster) = &self.cluster {
            config.storage.kind = palimpsest::StorageKind::Nats;
            config.storage.nats = nats_common::config(cluster, &self.prefix, 3);
        }
        config
    }

    /// An engine on this store with the default config.
    pub async fn open(&self) -> Engine {
        self.open_with(Components::default(), |_| {}).await
    }

    /// An engine on this store with `components` and `tune` applied to [`Store::config`].
    pub async fn open_with(&self, components: Components, tune: impl FnOnce(&mut Config)) -> Engine {
        let mut config = self.config();
        tune(&mut config);
        self.try_open(config, components).await.unwrap_or_else(|e| panic!("open on {}: {e}", self.name()))
    }

    /// What `tests/common::engine_with` is on fjall: an engine with `summarizer`, buffered
    /// durability (on tokio's paused clock a test must not wait on the group-commit thread) and
    /// `tune` applied.
    pub async fn open_with_summarizer(
        &self,
        summarizer: Arc<dyn Summarizer>,
        tune: impl FnOnce(&mut Config),
    ) -> Engine {
        let components = Components { summarizer: Some(summarizer), ..Components::default() };
        self.open_with(components, |config| {
            config.durability = Durability::Buffered;
            tune(config);
        })
        .await
    }

    /// `Engine::connect` with `config` (a JetStream store's streams get their first leaders
    /// before the engine is handed out: a new stream refuses publishes until then).
    pub async fn try_open(&self, config: Config, components: Components) -> Result<Engine, palimpsest::Error> {
        let engine = Engine::connect(config, components).await?;
        #[cfg(feature = "nats")]
        if let Some(cluster) = &self.cluster {
            self.ready
                .get_or_init(|| async {
                    let js = async_nats::jetstream::new(cluster.raw_client().await);
                    nats_common::wait_stream_leader(cluster, &js, &format!("{}_s0", self.prefix)).await;
                    nats_common::wait_stream_leader(cluster, &js, &format!("{}_meta", self.prefix)).await;
                })
                .await;
        }
        Ok(engine)
    }
}

/// A temp dir on tmpfs (/dev/shm) when the machine has one, else the usual temp dir: creating a
/// database costs several fsyncs, free on tmpfs. Tests of durability itself do not run here.
fn fast_tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("palimpsest-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

/// (from, upto, n_memories) of every `MemoriesExtracted` event in `history`.
pub fn extracted_events(history: &[palimpsest::Event]) -> Vec<(palimpsest::Seq, palimpsest::Seq, u64)> {
    history
        .iter()
        .filter_map(|e| match &e.kind {
            palimpsest::EventKind::MemoriesExtracted { from, upto, n_memories, .. } => {
                Some((*from, *upto, *n_memories))
            }
            _ => None,
        })
        .collect()
}

/// [`extracted_events`] of session `id`'s history (its first 1,000 events).
pub async fn extracted(engine: &Engine, id: &str) -> Vec<(palimpsest::Seq, palimpsest::Seq, u64)> {
    let history = engine.session(id).expect("id").history(palimpsest::Seq::new(1), 1_000).await.expect("history");
    extracted_events(&history)
}

/// `on_both_backends!(a, b)` makes, for each `async fn a(store: Store)` in scope, a module `a`
/// with the tests `fjall` and (with the `nats` feature) `nats`, each on a fresh [`Store`] and a
/// two-thread runtime.
///
/// `on_both_backends!(paused: a, b)` runs `fjall` on tokio's paused clock (a current-thread
/// runtime, as `#[tokio::test(start_paused = true)]`), for bodies whose timeouts should cost no
/// wall time, and `nats` on a current-thread runtime too, on the real clock: a paused clock jumps
/// to the next timer whenever the runtime waits, and a test waiting on the network would see every
/// request time out at once. Such bodies must not assert times.
#[macro_export]
macro_rules! on_both_backends {
    (paused: $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn fjall() {
                super::$name(super::backends::Store::new(super::backends::Backend::Fjall).await).await;
            }

            #[cfg(feature = "nats")]
            #[tokio::test]
            async fn nats() {
                super::$name(super::backends::Store::new(super::backends::Backend::Nats).await).await;
            }
        }
    )*};
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fjall() {
                super::$name(super::backends::Store::new(super::backends::Backend::Fjall).await).await;
            }

            #[cfg(feature = "nats")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                super::$name(super::backends::Store::new(super::backends::Backend::Nats).await).await;
            }
        }
    )*};
}
