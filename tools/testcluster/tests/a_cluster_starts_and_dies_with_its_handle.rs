//! A real 3-node cluster (the binary named by `PALIMPSEST_NATS_SERVER`; this test fails loudly
//! without it, as every JetStream test does): it starts healthy, a killed node is reported as such
//! and comes back, and dropping the handle kills every process.

use std::net::TcpStream;

use palimpsest_testcluster::{Cluster, ClusterOptions, Error, server_from_env};

fn accepts(url: &str) -> bool {
    let addr = url.strip_prefix("nats://").expect("a nats:// URL");
    TcpStream::connect(addr).is_ok()
}

#[tokio::test]
async fn a_cluster_starts_healthy_restarts_a_node_and_dies_with_its_handle() {
    let server = server_from_env().unwrap_or_else(|e| panic!("{e}"));
    let mut cluster = Cluster::launch(&server, 3, ClusterOptions::default()).await.expect("a healthy cluster");
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert_eq!(cluster.monitor_urls().len(), 3);
    assert!(urls.iter().all(|u| accepts(u)), "every node listens: {urls:?}");
    assert_eq!(cluster.index_of("n2"), Some(2));
    assert_eq!(cluster.name(1).expect("node 1"), "n1");

    cluster.kill(1).expect("kill node 1");
    assert!(!accepts(&urls[1]), "a killed node stops listening");
    assert!(matches!(cluster.kill(1), Err(Error::NotRunning(ref n)) if n == "n1"));
    assert!(matches!(cluster.signal(1, "STOP"), Err(Error::NotRunning(_))));
    cluster.restart(1).await.expect("node 1 back and healthy");
    assert!(matches!(cluster.restart_without_waiting(1), Err(Error::AlreadyRunning(_))));
    assert!(matches!(cluster.name(3), Err(Error::NoNode { index: 3, nodes: 3 })));

    drop(cluster);
    // Killed and reaped in the drop: nothing listens on the client ports any more.
    assert!(urls.iter().all(|u| !accepts(u)), "a dropped cluster leaves no node running: {urls:?}");
}
