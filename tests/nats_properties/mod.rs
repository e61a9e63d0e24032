//! Quickcheck properties on a real JetStream cluster: an engine connected to a fresh 3-node
//! cluster (`nats_common`), driven from quickcheck's synchronous loop with fewer cases than on
//! fjall, since every step reads over the network.
#![allow(dead_code)]

use crate::nats_common::{Cluster, config, wait_stream_leader};

/// An engine connected to a fresh 3-node cluster, with the runtime it runs on, for properties
/// that drive it from quickcheck's synchronous loop. Dropped in field order: the engine, its
/// runtime, then the cluster (killed by pid) and the directory.
pub struct EngineOnCluster {
    pub engine: palimpsest::Engine,
    pub runtime: tokio::runtime::Runtime,
    _cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl EngineOnCluster {
    /// A cluster, and an engine on streams `prefix` with `summarizer`, extraction off (it keeps
    /// state beside the log) and `tune` applied, once both streams have their leaders.
    pub fn start(
        prefix: &str,
        summarizer: std::sync::Arc<dyn palimpsest::Summarizer>,
        tune: impl FnOnce(&mut palimpsest::Config),
    ) -> EngineOnCluster {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut engine_config = palimpsest::Config::new(dir.path().join(prefix));
        engine_config.storage.kind = palimpsest::StorageKind::Nats;
        engine_config.extraction.enabled = false;
        tune(&mut engine_config);
        let (engine, cluster) = runtime.block_on(async {
            let cluster = Cluster::start(3).await;
            engine_config.storage.nats = config(&cluster, prefix, 3);
            let components = palimpsest::Components { summarizer: Some(summarizer), ..Default::default() };
            let engine = palimpsest::Engine::connect(engine_config, components).await.expect("connect");
            let js = async_nats::jetstream::new(cluster.raw_client().await);
            wait_stream_leader(&cluster, &js, &format!("{prefix}_s0")).await;
            wait_stream_leader(&cluster, &js, &format!("{prefix}_meta")).await;
            (engine, cluster)
        });
        EngineOnCluster { engine, runtime, _cluster: cluster, _dir: dir }
    }
}

/// Cases of a quickcheck property on a cluster: a tenth of `QUICKCHECK_TESTS` (every step of a
/// case reads over the network), at least 10 and at most 100.
pub fn cluster_cases() -> u64 {
    let asked = std::env::var("QUICKCHECK_TESTS").ok().and_then(|n| n.parse::<u64>().ok()).unwrap_or(100);
    (asked / 10).clamp(10, 100)
}

/// Runs `property` `cases` times with the engine on a cluster set into `slot` for the run's
/// length, and takes it out (stopping the cluster) before a failure is reported.
pub fn quickcheck_on_cluster<A: quickcheck::Testable>(
    slot: &parking_lot::Mutex<Option<std::sync::Arc<EngineOnCluster>>>,
    fixture: EngineOnCluster,
    cases: u64,
    property: A,
) {
    *slot.lock() = Some(std::sync::Arc::new(fixture));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        quickcheck::QuickCheck::new().tests(cases).quickcheck(property);
    }));
    drop(slot.lock().take());
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
