//! One test, both storage backends: [`on_both_backends!`] turns an `async fn name(store: Store)`
//! into two tests, `name::fjall` (a temp directory) and `name::nats` (a real 3-node JetStream
//! cluster on loopback with `sync_interval: always`, fresh streams; built only with the `nats`
//! feature, and failing loudly without `PALIMPSEST_NATS_SERVER`). The test body opens engines on
//! its [`Store`] as often as it likes: a second open is a reopen (fjall: after the first engine is
//! dropped; JetStream: a new connection, as another process would have).
#![allow(dead_code)]

#[cfg(feature = "nats")]
#[path = "../nats_common/mod.rs"]
pub mod nats_common;

use palimpsest::{Components, Config, Engine};

/// Which backend a [`Store`] is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fjall,
    #[cfg(feature = "nats")]
    Nats,
}

/// Where one test's sessions live: a fresh fjall directory, or fresh streams on a cluster of
/// its own (stopped by pid when the store is dropped).
pub struct Store {
    backend: Backend,
    dir: tempfile::TempDir,
    #[cfg(feature = "nats")]
    cluster: Option<nats_common::Cluster>,
    /// JetStream: whether the streams exist with their first leaders elected.
    #[cfg(feature = "nats")]
    ready: tokio::sync::OnceCell<()>,
}

impl Store {
    /// A fresh store on `backend` (starts the cluster for JetStream).
    pub async fn new(backend: Backend) -> Store {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Fjall => Store {
                backend,
                dir,
                #[cfg(feature = "nats")]
                cluster: None,
                #[cfg(feature = "nats")]
                ready: tokio::sync::OnceCell::new(),
            },
            #[cfg(feature = "nats")]
            Backend::Nats => Store {
                backend,
                dir,
                cluster: Some(nats_common::Cluster::start(3).await),
                ready: tokio::sync::OnceCell::new(),
            },
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// "fjall" or "nats", for assertion messages.
    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Fjall => "fjall",
            #[cfg(feature = "nats")]
            Backend::Nats => "nats",
        }
    }

    /// The cluster of a JetStream store.
    #[cfg(feature = "nats")]
    pub fn cluster(&self) -> Option<&nats_common::Cluster> {
        self.cluster.as_ref()
    }

    /// The config every engine of this store starts from: the defaults (extraction off, as
    /// `tests/common` has it for fjall too), on this store's directory or streams.
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.dir.path().join("db"));
        config.extraction.enabled = false;
        #[cfg(feature = "nats")]
        if let Some(cluster) = &self.cluster {
            config.storage.kind = palimpsest::StorageKind::Nats;
            config.storage.nats = nats_common::config(cluster, "t", 3);
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

    /// `Engine::connect` with `config` (a JetStream store's streams get their first leaders
    /// before the engine is handed out: a new stream refuses publishes until then).
    pub async fn try_open(&self, config: Config, components: Components) -> Result<Engine, palimpsest::Error> {
        let engine = Engine::connect(config, components).await?;
        #[cfg(feature = "nats")]
        if let Some(cluster) = &self.cluster {
            self.ready
                .get_or_init(|| async {
                    let js = async_nats::jetstream::new(cluster.raw_client().await);
                    nats_common::wait_stream_leader(cluster, &js, "t_s0").await;
                    nats_common::wait_stream_leader(cluster, &js, "t_meta").await;
                })
                .await;
        }
        Ok(engine)
    }
}

/// `on_both_backends!(a, b)` makes, for each `async fn a(store: Store)` in scope, a module `a`
/// with the tests `fjall` and (with the `nats` feature) `nats`, each on a fresh [`Store`] and a
/// two-thread runtime.
#[macro_export]
macro_rules! on_both_backends {
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
