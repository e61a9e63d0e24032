//! Quickcheck properties on a real JetStream cluster: an engine connected to a fresh 3-node
//! cluster (`nats_common`), driven from quickcheck's synchronous loop with fewer cases than on
//! fjall, since every step reads over the network.
#![allow(dead_code)]

use crate::nats_common::{Cluster, config, wait_stream_leader};

/// An engine connected to a fresh 3-node cluster, with the runtime it runs on, for properties
/// that drive it from quickcheck's synchronous loop. Dropped in field order: the engine, its
/// runtime, then the cluster (killed by pid).
pub struct EngineOnCluster {
    pub engine: palimpsest::Engine,
    pub runtime: tokio::runtime::Runtime,
    _cluster: Cluster,
}

impl EngineOnCluster {
    /// A cluster, and an engine on streams `prefix` (see [`connect`]) once they have their leaders.
    pub fn start(
        prefix: &str,
        summarizer: std::sync::Arc<dyn palimpsest::Summarizer>,
        tune: impl FnOnce(&mut palimpsest::Config),
    ) -> EngineOnCluster {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let (engine, cluster) = runtime.block_on(async {
            let (cluster, nats) = streams(prefix).await;
            (connect(&nats, summarizer, tune).await, cluster)
        });
        EngineOnCluster { engine, runtime, _cluster: cluster }
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

/// An engine on the cluster's streams `nats` names, with `summarizer`, extraction off and `tune`
/// applied: what a property's "open" (or reopen) is on JetStream.
pub async fn connect(
    nats: &palimpsest::NatsConfig,
    summarizer: std::sync::Arc<dyn palimpsest::Summarizer>,
    tune: impl FnOnce(&mut palimpsest::Config),
) -> palimpsest::Engine {
    let mut config = palimpsest::Config::new("/unused-on-nats");
    config.storage.kind = palimpsest::StorageKind::Nats;
    config.storage.nats = nats.clone();
    config.extraction.enabled = false;
    tune(&mut config);
    let components = palimpsest::Components { summarizer: Some(summarizer), ..Default::default() };
    palimpsest::Engine::connect(config, components).await.expect("connect")
}

/// A cluster, and the config of streams `prefix` on it, made (by a first connect) and with their
/// leaders elected, for properties that connect engines of their own.
pub async fn streams(prefix: &str) -> (Cluster, palimpsest::NatsConfig) {
    let cluster = Cluster::start(3).await;
    let nats = config(&cluster, prefix, 3);
    let none: std::sync::Arc<dyn palimpsest::Summarizer> = std::sync::Arc::new(palimpsest::ExtractiveSummarizer);
    let made = connect(&nats, none, |_| {}).await;
    let js = async_nats::jetstream::new(cluster.raw_client().await);
    wait_stream_leader(&cluster, &js, &format!("{prefix}_s0")).await;
    wait_stream_leader(&cluster, &js, &format!("{prefix}_meta")).await;
    drop(made);
    (cluster, nats)
}

/// Runs `property` `cases` times (quickcheck's generator size `size`) with the config of fresh
/// streams `prefix` on a fresh cluster set into `slot` for the run's length (each case connects
/// its own engines), and stops the cluster before a failure is reported.
pub fn quickcheck_with_streams<A: quickcheck::Testable>(
    slot: &parking_lot::Mutex<Option<palimpsest::NatsConfig>>,
    prefix: &str,
    cases: u64,
    size: usize,
    property: A,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (cluster, config) = runtime.block_on(streams(prefix));
    *slot.lock() = Some(config);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        quickcheck::QuickCheck::new().tests(cases).rng(quickcheck::Gen::new(size)).quickcheck(property);
    }));
    slot.lock().take();
    drop(cluster);
    drop(runtime);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
